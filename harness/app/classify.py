"""The Spam tab (classification): one message, or a whole file, through a classifier adapter or the base zero-shot.

    from harness.app.state import AppState
    from harness.app.classify import classify_message, classify_file
    state = AppState()
    classify_message(state, "WIN a prize now!", "base")     # ({'ham': .., 'spam': ..}, verdict)
    classify_file(state, "messages.csv")                     # (predictions CSV path, preview, summary)

A predictions file keeps every column of the uploaded CSV, in order, and adds the CLI's columns (`python -m
harness classify`): `label` (the decision) and one `p_<label>` per class. A `label` column already in the upload
(the true labels) is kept as `label_given`, with `correct` beside it.
Classification is short work: it runs under AppState.short_work(), so a long generation pauses at its next
token while it runs (see harness/app/streaming.py).
"""

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from harness.app.state import BASE, AppState, require_text
from harness.errors import UserError

PREDICTIONS_MAX_AGE = 3600.0     # seconds a predictions CSV is kept for download


def classifier_choices(state: AppState) -> list[tuple[str, str]]:
    """(label, value) pairs: this base's classifier adapters (a head, or label-as-text), then the base model
    zero-shot."""
    how = {"label_text": "fine-tuned, writes the label"}
    return [(f"{a.name} ({how.get(getattr(a, 'method', ''), 'fine-tuned classifier')})", a.name)
            for a in state.adapters("classifier")] + [("base model, zero-shot", BASE)]


def default_classifier(state: AppState) -> str:
    found = state.adapters("classifier")
    return found[0].name if found else BASE


def spam_verdict(probs: dict[str, float], threshold: float) -> str:
    """The decided label: spam when p(spam) >= threshold (argmax for label sets without "spam")."""
    if "spam" in probs:
        others = [k for k in probs if k != "spam"]
        return "spam" if probs["spam"] >= threshold else (others[0] if others else "ham")
    return max(probs, key=probs.get)


def check_threshold(value: Any) -> float:
    try:
        t = 0.5 if value is None else float(value)
    except (TypeError, ValueError):
        raise UserError(f"threshold must be a number between 0 and 1, got {value!r}") from None
    if not 0 <= t <= 1:
        raise UserError(f"threshold must be between 0 and 1, got {t}")
    return t


def classify_texts(state: AppState, texts: list[str], classifier: str | None) -> tuple[list[dict], str | None]:
    """Per-class probabilities of each text, by the same road as `python -m harness classify` and the leaderboard
    (harness.classify: a head, label-as-text, or the base zero-shot on the task's own prompt); a running
    generation pauses meanwhile (short work first)."""
    from harness.classify import classify
    from harness.tasks import get_task
    lm = state.get_model()
    name = state.resolve_adapter(classifier, "classifier")
    info = next((a for a in state.adapters("classifier") if a.name == name), None)
    task = get_task(str(info.task) if info is not None else "spam")
    with state.short_work():
        return classify(lm, texts, name, task), name


def classify_message(state: AppState, text: Any, classifier: str | None = None, threshold: Any = 0.5
                     ) -> tuple[dict[str, float], str]:
    """One SMS -> ({label: probability}, a one-line verdict with the threshold and the classifier used)."""
    text = require_text(text, "message", state.limits.message_chars, "paste an SMS to classify")
    t = check_threshold(threshold)
    classifier = default_classifier(state) if classifier is None else classifier
    [probs], name = classify_texts(state, [text], classifier)
    label = spam_verdict(probs, t)
    p = probs.get("spam")
    how = f"p(spam) = {p:.3f} {'≥' if p >= t else '<'} threshold {t:.2f}" if p is not None else "highest probability"
    who = f"fine-tuned classifier `{name}`" if name else "the base model zero-shot"
    return probs, f"**{label}** ({how}; {who})"


def read_upload(path: Any, limits) -> tuple[list[str], list[dict], str]:
    """An uploaded file -> (input columns, one dict per message, a note on skipped blank rows).

    A CSV needs a `text` column (every column is kept); any other file is one message per line (column `text`).
    Reading goes through the project's readers: harness.io.read_table for CSV, harness.commands.read_messages
    for plain text."""
    from harness.commands import read_messages
    from harness.io import read_table

    if not path:
        raise UserError("no file uploaded: upload a CSV with a `text` column or a .txt with one message per line")
    p = Path(str(path))
    if not p.is_file():
        raise UserError(f"no file {p.name!r} arrived: upload a CSV with a `text` column or a .txt with one message per line")
    if p.stat().st_size > limits.csv_bytes:
        raise UserError(f"{p.name} is {p.stat().st_size:,} bytes; the limit is {limits.csv_bytes:,}: split it")
    if p.suffix.lower() == ".csv":
        try:
            table = read_table(p, required=("text",), what="uploaded file")
        except UserError as e:              # the upload's name, never the server's temporary path
            raise UserError(str(e).replace(str(p.parent) + "/", "").replace(str(p), p.name)) from None
        columns = list(table[0][1]) if table else ["text"]
        rows = [r for _, r in table if str(r.get("text", "")).strip()]
        skipped = len(table) - len(rows)
    else:
        columns = ["text"]
        rows = [{"text": t} for t in read_messages(str(p))]
        skipped = 0
    for r in rows:
        r["text"] = str(r["text"]).strip()
    if not rows:
        raise UserError(f"{p.name} has no messages: the `text` column (or every line) is empty")
    if len(rows) > limits.csv_rows:
        raise UserError(f"{p.name} has {len(rows):,} messages; the limit is {limits.csv_rows:,}: split the file")
    too_long = next((i for i, r in enumerate(rows) if len(r["text"]) > limits.message_chars), None)
    if too_long is not None:
        n = len(rows[too_long]["text"])
        raise UserError(f"{p.name}: message {too_long + 1} has {n:,} characters; the limit is "
                        f"{limits.message_chars:,} ({n - limits.message_chars:,} too many): shorten or remove it")
    return columns, rows, (f"; {skipped} blank row(s) skipped" if skipped else "")


def classify_file(state: AppState, path: Any, classifier: str | None = None, threshold: Any = 0.5
                  ) -> tuple[str, Any, str]:
    """Classify every message of an uploaded file -> (predictions CSV path, preview table, summary)."""
    import pandas as pd

    from harness.io import write_csv

    t = check_threshold(threshold)
    columns, rows, skipped = read_upload(path, state.limits)
    classifier = default_classifier(state) if classifier is None else classifier
    probs, name = classify_texts(state, [r["text"] for r in rows], classifier)
    labels = list(probs[0])
    preds = [spam_verdict(pr, t) for pr in probs]
    given = "label" in columns
    kept = [("label_given" if c == "label" else c) for c in columns]
    header = kept + ["label"] + [f"p_{lab}" for lab in labels] + (["correct"] if given else [])
    out_rows = []
    for r, pred, pr in zip(rows, preds, probs):
        # formula-looking cells: write_csv escapes them (harness.io.csv_escape)
        row = [r.get(c, "") for c in columns] + [pred] + [f"{pr[lab]:.6f}" for lab in labels]
        if given:
            row.append(str(pred == str(r.get("label", "")).strip().lower()))
        out_rows.append(row)
    counts = ", ".join(f"{preds.count(lab)} {lab}" for lab in labels)
    summary = (f"{len(rows)} messages: {counts} (threshold {t:.2f}; "
               f"{'classifier `' + name + '`' if name else 'base model zero-shot'}){skipped}. The download keeps "
               f"your columns ({', '.join(columns)}) and adds `label` and {', '.join('`p_' + x + '`' for x in labels)}")
    if given:
        acc = sum(p == str(r.get("label", "")).strip().lower() for p, r in zip(preds, rows)) / len(rows)
        summary += f"; your `label` column is kept as `label_given`: accuracy against it {acc:.3f}"
    out = predictions_path(Path(str(path)).stem)
    write_csv(out, header, out_rows)
    preview = pd.DataFrame(out_rows[:50], columns=header)
    return str(out), preview, summary


def prune_downloads(folder: Path, max_age: float = PREDICTIONS_MAX_AGE) -> Path:
    """The app's ONE download folder under the temp dir (Gradio copies a file into its own cache when it serves
    it), created if needed; its files older than `max_age` seconds are removed, so a long-running app does not
    pile up files."""
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in [p for pattern in ("*.csv", "*.json", "*.md") for p in folder.glob(pattern)]:
        try:
            if now - old.stat().st_mtime > max_age:
                old.unlink()
        except OSError:      # another request removed it first
            pass
    return folder


def predictions_path(stem: str, folder: Path | None = None, max_age: float = PREDICTIONS_MAX_AGE) -> Path:
    """A fresh file name for a predictions CSV in the download folder (prune_downloads)."""
    import re
    folder = prune_downloads(folder or Path(tempfile.gettempdir()) / "ftbench-predictions", max_age)
    safe = re.sub(r"[^\w.-]+", "_", stem)[:60] or "messages"
    return folder / f"{safe}-predictions-{uuid.uuid4().hex[:8]}.csv"


def spam_examples(n: int = 8) -> tuple[list[str], str]:
    """Example messages from the project's own SMS eval set (half spam, half ham) and a note on where from.
    Raises UserError when the set cannot be read (a broken install, not a reason to hide the tab)."""
    from harness.data import load_eval_set
    try:
        items = load_eval_set("sms_own").items
    except Exception as e:  # noqa: BLE001 - named in one sentence
        raise UserError(f"the project's SMS eval set sms_own could not be read: {e}") from None
    spam = [i["text"] for i in items if i["label"] == "spam"][: n // 2]
    ham = [i["text"] for i in items if i["label"] == "ham"][: n - len(spam)]
    mixed = [x for pair in zip(spam, ham) for x in pair] + spam[len(ham):] + ham[len(spam):]
    return mixed, "Examples from the project's own SMS eval set (sms_own)."


# ---------------------------------------------------------------- the tab's layout and events

def build(state: AppState, ui: dict) -> None:
    """The Spam tab; adds classifier_dd to ui."""
    import gradio as gr

    from harness.app.state import task_hints
    from harness.app.widgets import CLASSIFY, guard
    limits = state.limits
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(label=f"SMS message (up to {limits.message_chars:,} characters; longer is refused, "
                                    "never cut)", lines=4, placeholder=task_hints("spam").get("placeholder", ""),
                              elem_id="spam-input")
            with gr.Row():
                classifier = gr.Dropdown(classifier_choices(state), value=default_classifier(state),
                                         label="Classifier", allow_custom_value=True, elem_id="spam-classifier")
                threshold = gr.Slider(0, 1, value=0.5, step=0.01, label="Threshold: spam when p(spam) ≥ this")
            button = gr.Button("Classify", variant="primary", elem_id="spam-button")
        with gr.Column(scale=2):
            label = gr.Label(label="Probabilities", num_top_classes=2, elem_id="spam-label")
            verdict = gr.Markdown(elem_id="spam-verdict")
    try:
        examples, note = spam_examples()
        hinted = task_hints("spam").get("examples", [])
        gr.Examples([[t] for t in dict.fromkeys(hinted + examples)], inputs=[text],
                    label=f"{note} The first {len(hinted)} are the task's own examples." if hinted else note,
                    examples_per_page=8)
    except UserError as e:
        gr.Markdown(f"⚠ No examples: {e}")
    with gr.Accordion("Classify a file: a CSV with a `text` column (every column is kept), or one message per line",
                      open=False):
        with gr.Row():
            file_in = gr.File(label="Messages (.csv or .txt)", file_types=[".csv", ".txt"], type="filepath",
                              elem_id="spam-file")
            file_out = gr.File(label="Predictions: your columns + label, p_<label> (download)", interactive=False,
                               elem_id="spam-file-out")
        file_btn = gr.Button("Classify file", elem_id="spam-file-button")
        summary = gr.Markdown(elem_id="spam-file-summary")
        preview = gr.Dataframe(label="First 50 predictions", interactive=False, wrap=True, elem_id="spam-preview")

    def classify_fn(message, classifier, threshold):
        return classify_message(state, message, classifier, threshold)

    def file_fn(path, classifier, threshold):
        return classify_file(state, path, classifier, threshold)

    def api_file(path, classifier, threshold):
        out, table, says = classify_file(state, path, classifier, threshold)
        return out, says, table

    gr.on([button.click, text.submit], guard(classify_fn, 2), [text, classifier, threshold], [label, verdict],
          api_visibility="private", **CLASSIFY)
    file_btn.click(guard(file_fn, 3), [file_in, classifier, threshold], [file_out, preview, summary],
                   api_visibility="private", **CLASSIFY)
    api = gr.Button(visible=False)
    api.click(guard(classify_fn), [text, classifier, threshold], [label, verdict], api_name="classify", **CLASSIFY)
    api2 = gr.Button(visible=False)
    api2.click(guard(api_file), [file_in, classifier, threshold], [file_out, summary, preview],
               api_name="classify_file", **CLASSIFY)
    ui.update(classifier_dd=classifier)
