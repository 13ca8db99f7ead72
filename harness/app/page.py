"""The page: the header (base and adapter pickers, the status line), the five tabs (one module each), the pickers
that follow the base in use, the once-a-second status tick, and launch().

    from harness.app.state import AppState
    from harness.app.page import build_demo, launch
    demo = build_demo(AppState())
    launch(demo, port=7860)
"""

from harness.app import chat, compare, leaderboard, poem
from harness.app import classify as spam
from harness.app.state import BASE, AppState, adapter_choices, base_choices, base_value, short_name, status_line
from harness.app.widgets import CSS, GENERATE, session
from harness.errors import UserError


def header_notes(state: AppState) -> str:
    """The header's small print, each said once: where votes are kept and whether they survive a restart, the
    engine the app fell back from, the caps of a shared Space."""
    notes = []
    from harness.paths import storage_note
    notes.append(storage_note())
    if state.start_note:
        notes.append(state.start_note)
    if state.spaces:
        notes.append(f"This is a shared demo: answers are capped at {state.limits.max_new_tokens} new tokens and "
                     "requests wait in one queue.")
    return " ".join(notes)


def build_header(state: AppState) -> dict:
    import gradio as gr
    gr.Markdown("# ftbench · small LMs, base vs LoRA fine-tuned", elem_id="app-title")
    gr.Markdown("Chat, classify SMS spam, write poems and compare a base model with its fine-tuned adapter, "
                "all on this machine's CPU. Switching adapters never reloads the base.", elem_id="app-intro")
    with gr.Row(equal_height=False, elem_id="pickers"):
        with gr.Column(scale=3, min_width=200):
            base_dd = gr.Dropdown(base_choices(state), value=base_value(state), label="Base model",
                                  allow_custom_value=True, elem_id="base-picker")
            load_btn = gr.Button("Load this base (frees the current one)", size="sm", elem_id="load-base")
        with gr.Column(scale=3, min_width=200):
            adapter_dd = gr.Dropdown(adapter_choices(state, "causal"), value=BASE,
                                     label="Adapter for chat and poems",
                                     allow_custom_value=True, elem_id="adapter-picker")
            refresh_btn = gr.Button("↻ Refresh the adapter lists", size="sm", elem_id="refresh-adapters")
    status = gr.Markdown(status_line(state, BASE), elem_id="model-status")
    gr.Markdown(header_notes(state), elem_id="header-notes", elem_classes="notice")
    base_notice = gr.Markdown(elem_id="base-notice", elem_classes="notice")
    return dict(base_dd=base_dd, load_btn=load_btn, adapter_dd=adapter_dd, refresh_btn=refresh_btn, status=status,
                base_notice=base_notice)


def picker_values(state: AppState, adapter, classifier, tuned) -> dict:
    """Choices of every model-dependent dropdown for the base IN USE, keeping valid selections."""
    chat_choices = adapter_choices(state, "causal")
    adapter = adapter if adapter in [v for _, v in chat_choices] else BASE
    cls = spam.classifier_choices(state)
    classifier = classifier if classifier in [v for _, v in cls] else spam.default_classifier(state)
    tuned_choices = compare.pair_choices(state)
    values = [v for _, v in tuned_choices]
    tuned = tuned if tuned in values and tuned != BASE else compare.default_pair(state)[1]
    return {"bases": base_choices(state), "base": base_value(state), "adapters": chat_choices, "adapter": adapter,
            "classifiers": cls, "classifier": classifier, "tuned_choices": tuned_choices, "tuned": tuned,
            "status": status_line(state, adapter), "compare_note": compare.compare_note(state),
            "poem_hint": poem.poem_hint(state)}


def load_base(state: AppState, base) -> str:
    """Load another base: the sentence for the header (the picker keeps the base still in use on failure)."""
    try:
        state.switch_base(base)
        return f"Loaded {short_name(state.base_name)}."
    except UserError as e:
        return f"⚠ {e}"


def tick_values(state: AppState, sid: str, adapter, was: str) -> dict:
    """Once a second: the status line while the model prepares (or when its phase changed since `was`), the chat
    while an answer waits its turn, and the comparison while it waits. None = leave that output as it is."""
    data = state.sessions.get(sid, {})
    answers = [m for m in data.get("chat", []) if m["role"] == "assistant"]
    waiting = any(m["meta"]["status"] == chat.WAITING for m in answers)
    writing = any(m["meta"]["status"] == chat.WRITING for m in answers)
    rec = data.get("compare")
    return {"status": status_line(state, adapter) if state.phase in ("preparing", "failed") or was != state.phase
            else None,
            "chat": chat.render(state, sid) if waiting and not writing else None,
            "compare": compare.view(state, rec) if rec and rec["status"] == "waiting" else None,
            "phase": state.phase}


def build_demo(state: AppState | None = None):
    """The Blocks app around one AppState (default: the embedded base, loaded on first use)."""
    import gradio as gr

    state = state or AppState()
    ui: dict = {}
    with gr.Blocks(title="ftbench: small LMs, base vs fine-tuned") as demo:
        ui.update(build_header(state))
        with gr.Tabs():
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat.build(state, ui)
            with gr.Tab("Spam", id="spam", elem_id="tab-spam"):
                spam.build(state, ui)
            with gr.Tab("Poem", id="poem", elem_id="tab-poem"):
                poem.build(state, ui)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                compare.build(state, ui)
            with gr.Tab("Leaderboard", id="leaderboard", elem_id="tab-leaderboard"):
                lb_fn, lb_in, lb_out = leaderboard.build(state, ui)
        wire_pickers(state, ui, demo)
        demo.load(lb_fn, lb_in, lb_out, queue=False, api_visibility="undocumented")
        demo.load(ui["votes_view"][0], None, ui["votes_view"][1], queue=False, api_visibility="private")
        timer = gr.Timer(1.0)
        was = {"phase": state.phase}

        def tick(adapter, request: gr.Request):
            t = tick_values(state, session(request), adapter, was["phase"])
            was["phase"] = t["phase"]
            skip = gr.skip()
            cmp = ui["cmp_view"](t["compare"]) if t["compare"] is not None else [skip] * 7
            return (skip if t["status"] is None else t["status"], skip if t["chat"] is None else t["chat"], *cmp)

        def end_session(request: gr.Request):
            """The page was closed or reloaded: stop its generations and drop its queued work."""
            state.end_session(session(request))
        demo.unload(end_session)
        timer.tick(tick, ui["adapter_dd"], [ui["status"], ui["chatbot"], *ui["cmp_shown"]], queue=False,
                   show_progress="hidden", api_visibility="private")
    from harness.app.state import SPACE_QUEUE
    demo.queue(max_size=SPACE_QUEUE if state.spaces else 64, default_concurrency_limit=1)
    demo.ftbench_state = state
    return demo


def wire_pickers(state: AppState, ui: dict, demo) -> None:
    import gradio as gr
    pickers = [ui["base_dd"], ui["adapter_dd"], ui["classifier_dd"], ui["cmp_adapter"], ui["status"], ui["cmp_note"],
               ui["poem_hint"], ui["cmp_btn"], ui["base_notice"], ui["cmp_against"]]

    def updates(adapter, classifier, tuned, says=""):
        v = picker_values(state, adapter, classifier, tuned)
        return (gr.update(choices=v["bases"], value=v["base"]), gr.update(choices=v["adapters"], value=v["adapter"]),
                gr.update(choices=v["classifiers"], value=v["classifier"]),
                gr.update(choices=v["tuned_choices"], value=v["tuned"]), v["status"], v["compare_note"],
                v["poem_hint"], gr.update(interactive=len(v["tuned_choices"]) > 1), says,
                gr.update(choices=v["tuned_choices"]))

    def load_fn(base, adapter, classifier, tuned):
        return updates(adapter, classifier, tuned, load_base(state, base))

    def refresh_fn(adapter, classifier, tuned):
        return updates(adapter, classifier, tuned)

    def first_fn():
        return updates(BASE, None, None)

    def status_fn(adapter):
        return status_line(state, adapter)

    demo.load(first_fn, None, pickers, queue=False, api_visibility="undocumented")
    ui["refresh_btn"].click(refresh_fn, [ui["adapter_dd"], ui["classifier_dd"], ui["cmp_adapter"]], pickers,
                            queue=False, api_name="refresh", api_visibility="undocumented")
    ui["load_btn"].click(load_fn, [ui["base_dd"], ui["adapter_dd"], ui["classifier_dd"], ui["cmp_adapter"]], pickers,
                         api_name="load_base", show_progress="minimal", **GENERATE)
    ui["adapter_dd"].change(status_fn, ui["adapter_dd"], ui["status"], queue=False, api_visibility="private")


def launch(demo, host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = True,
           quiet: bool = False):
    """Launch with the app's theme and CSS (Gradio 6 takes them in launch(), not Blocks())."""
    import gradio as gr
    system_fonts = ["ui-sans-serif", "system-ui", "sans-serif"]        # no web fonts: the app works offline
    theme = gr.themes.Soft(font=system_fonts, font_mono=["ui-monospace", "monospace"])
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                       theme=theme, css=CSS, max_file_size="2mb", quiet=quiet, show_error=False,
                       footer_links=["api", "gradio"])
