"""The Leaderboard tab: results/leaderboard_<task>.csv as a plot and a table, a row's items, two rows diffed, and
the judges' agreement with the votes. The figures and tables come from harness/leaderboard_view.py; this module
holds the tab's layout and handlers a test can call.

    from harness.app import leaderboard as L
    v = L.view(state, "chat", "all", "", None)          # what the tab shows (tables, labels, the default Diff pair)
    L.items(state, "chat", "all", "", 0)               # (header, rows, caption) of the first row's items
    L.diff(state, "chat", "all", "", label_a, label_b)  # (header, rows, summary)
"""

from harness import leaderboard_view as LB
from harness.app.state import AppState
from harness.errors import UserError


def view(state: AppState, task: str | None, eval_set: str | None, search: str, metric: str | None) -> dict:
    """leaderboard_view() plus the Diff menus' first pair (two rows that share an eval set)."""
    v = LB.leaderboard_view(task, eval_set, search, metric, state.results_folder)
    a, b = sharing_pair(state, v)
    labels = v["labels"]
    v["diff_a"] = labels[a] if a is not None else None
    v["diff_b"] = labels[b] if b is not None else None
    return v


def sharing_pair(state: AppState, v: dict) -> tuple[int | None, int | None]:
    """The Diff menus' first pair: the first two rows on one eval set whose rows files share items (so the first
    click on Diff shows something), else leaderboard_view's pair."""
    rows, ids = v["rows"], {}

    def items_of(i: int) -> set:
        if i not in ids:
            try:
                ids[i] = {str(x["item_id"]) for x in LB.row_items(v["task"], rows[i], state.results_folder)}
            except UserError:
                ids[i] = set()
        return ids[i]
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if rows[i].get("eval_set") == rows[j].get("eval_set") and items_of(i) and items_of(i) & items_of(j):
                return i, j
    return v.get("pair", (None, None))


def items(state: AppState, task: str | None, eval_set: str | None, search: str, index: int
          ) -> tuple[list[str], list[list], str]:
    """The items of the table's row `index`: (header, rows, caption)."""
    v = LB.leaderboard_view(task, eval_set, search, None, state.results_folder)
    if not 0 <= int(index) < len(v["rows"]):
        raise UserError("click a row of the table to see its items")
    found = LB.row_items(v["task"], v["rows"][int(index)], state.results_folder)
    header, rows = LB.item_table(found)
    return header, rows, LB.items_caption(v["labels"][int(index)], found)


def diff(state: AppState, task: str | None, eval_set: str | None, search: str, a: str | None, b: str | None
         ) -> tuple[list[str], list[list], str]:
    v = LB.leaderboard_view(task, eval_set, search, None, state.results_folder)
    by = dict(zip(v["labels"], v["rows"]))
    if a not in by or b not in by:
        raise UserError("choose two rows (Run A and Run B) of the table above")
    if a == b:
        raise UserError("Run A and Run B are the same row: choose two different rows")
    return LB.diff_runs(v["task"], by[a], by[b], state.results_folder)


def build(state: AppState, ui: dict):
    """The Leaderboard tab; returns (handler, inputs, outputs) of its view, which the page also runs on load."""
    import gradio as gr

    from harness.app.compare import agreement
    from harness.app.widgets import guard
    with gr.Row():
        task = gr.Dropdown([], label="Task", allow_custom_value=True, elem_id="leaderboard-task")
        eval_set = gr.Dropdown(["all"], value="all", label="Eval set", allow_custom_value=True)
        search = gr.Textbox(label="Filter model / adapter / judge / decoding", placeholder="e.g. alpaca")
        metric = gr.Dropdown([], label="Plot metric", allow_custom_value=True, elem_id="leaderboard-metric")
        refresh = gr.Button("↻ Reload CSVs")
    notice = gr.Markdown(elem_id="leaderboard-notice")
    plot = gr.Plot(label="Scores (error bars where a CI exists)", elem_id="leaderboard-plot")
    caption = gr.Markdown(elem_id="leaderboard-caption")
    table = gr.Dataframe(label="Leaderboard (click a row to see its items)", interactive=False, wrap=True,
                         elem_id="leaderboard-table")
    items_note = gr.Markdown(elem_id="leaderboard-items-note")
    items_table = gr.Dataframe(label="Items of the selected row (from its rows file)", interactive=False, wrap=True,
                               visible=False, elem_id="leaderboard-items")
    with gr.Accordion("Diff two runs: the items where two rows disagree most", open=False):
        with gr.Row():
            run_a = gr.Dropdown([], label="Run A", elem_id="diff-a")
            run_b = gr.Dropdown([], label="Run B", elem_id="diff-b")
            diff_btn = gr.Button("Diff", elem_id="diff-button")
        diff_note = gr.Markdown(elem_id="diff-note")
        diff_table = gr.Dataframe(interactive=False, wrap=True, visible=False, elem_id="diff-table")
    agreement_md = gr.Markdown(elem_id="leaderboard-agreement")

    def view_fn(task_, set_, search_, metric_):
        v = view(state, task_, set_, search_, metric_)
        labels = v["labels"]
        return (gr.update(choices=v["tasks"], value=v["task"]),
                gr.update(choices=["all", *v["eval_sets"]], value=set_ if set_ in v["eval_sets"] else "all"),
                gr.update(choices=v["metrics"], value=v["metric"]),
                v["notice"], gr.update(value=v["figure"], visible=v["figure"] is not None), v["caption"],
                gr.update(value=v["table"], visible=v["table"] is not None),
                gr.update(choices=labels, value=v["diff_a"]), gr.update(choices=labels, value=v["diff_b"]),
                agreement(state))

    def row_fn(task_, set_, search_, evt: gr.SelectData):
        import pandas as pd
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        header, rows, says = items(state, task_, set_, search_, index)
        return gr.update(value=pd.DataFrame(rows, columns=header), visible=True), says

    def diff_fn(task_, set_, search_, a, b):
        import pandas as pd
        header, rows, summary = diff(state, task_, set_, search_, a, b)
        return gr.update(value=pd.DataFrame(rows, columns=header), visible=bool(rows)), summary

    inputs = [task, eval_set, search, metric]
    outputs = [task, eval_set, metric, notice, plot, caption, table, run_a, run_b, agreement_md]
    gr.on([task.input, eval_set.input, metric.input, search.submit, refresh.click], guard(view_fn, len(outputs)),
          inputs, outputs, queue=False, api_name="leaderboard", api_visibility="undocumented")
    table.select(guard(row_fn, 2), [task, eval_set, search], [items_table, items_note], queue=False,
                 api_visibility="private")
    diff_btn.click(guard(diff_fn, 2), [task, eval_set, search, run_a, run_b], [diff_table, diff_note], queue=False,
                   api_visibility="private")
    return guard(view_fn, len(outputs)), inputs, outputs
