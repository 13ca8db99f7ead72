"""The Gradio demo: chat, spam classifier, poem generator, base-vs-fine-tuned comparison, leaderboard.

    python app.py                          # http://127.0.0.1:7860 with the embedded default model
    python app.py --port 7861 --judge transformers:smollm2-135m-instruct    # an offline judge for Compare
    python app.py --model /path/to/model_dir --no-warmup
    python app.py --host 0.0.0.0           # listen on every interface (or --share for a gradio.live link)
    python app.py --engine openai:smol@http://127.0.0.1:8080     # chat and free poems through a server

The URL is printed first; the page is up within seconds, and the model loads (on an empty cache: converts,
one-time, about a minute) in the background while the header says so.

From Python (gradio_client); stable endpoints /chat, /classify, /poem, /compare:

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/")
    history, _, prompt, info = c.predict("Hi!", [], "", "base", 0.3, 0.9, 128, 0, 1.1, api_name="/chat")
    label, verdict = c.predict("WIN a prize! Claim now", "base", 0.5, api_name="/classify")

Chat history is Gradio 6's messages format, as /chat returns it: pass it back to continue the conversation.
All logic lives in harness/app/ (one module per tab) and harness/leaderboard_view.py; this file lays out one
function per tab and wires events. Queues: "generate" (chat, poem, compare: one at a time on the one model),
"classify" (short: runs between two tokens of a running generation) and "judge" (outside the model queue);
the UI steps that only show or store something (the user's message, votes, the leaderboard) are not queued.
"""

import argparse
import functools
import inspect
import logging
import os
import sys
import threading

from harness.app import chat as C
from harness.app import compare as K
from harness.app import poem as P
from harness.app.classify import classifier_choices, classify_file, classify_message, default_classifier, spam_examples
from harness.app.server import app_engine, is_server_spec
from harness.app.state import (BASE, LANGS, POEM_FORMS, AppState, Sampling, adapter_choices, auto_threads,
                               base_choices, stats_info, status_line, task_hints)
from harness.app.streaming import run_ahead, throttled
from harness.errors import UserError
from harness.judge import DEFAULT_JUDGE, DEFAULT_OFFLINE_JUDGE
from harness import leaderboard_view as LB

log = logging.getLogger("ftbench.app")
GENERATE = dict(concurrency_id="generate", concurrency_limit=1)   # the one model writes one thing at a time
CLASSIFY = dict(concurrency_id="classify", concurrency_limit=1)   # short work, between two generated tokens
JUDGE = dict(concurrency_id="judge", concurrency_limit=2)         # an outside server (or the in-process judge)
CSS = """
#model-status {padding: 4px 8px; border-radius: 6px; background: var(--background-fill-secondary);}
.score {font-size: 1.05em; font-weight: 600;}
.notice p {color: var(--body-text-color-subdued);}
@media (max-width: 600px) {
  #app-title h1 {font-size: 1.15em; margin: 0;}
  #app-intro {display: none;}
  /* the two pickers side by side, small: the header stays under ~300 px of an 844 px phone screen */
  #pickers {flex-wrap: nowrap !important; gap: 6px !important;}
  #pickers > div {min-width: 0 !important; flex: 1 1 0 !important;}
  #pickers .block {padding: 4px !important;}
  #pickers button {padding: 2px 4px; min-height: 0; font-size: 0.75em;}
  #pickers [data-testid="block-info"] {font-size: 0.8em;}
  #model-status {font-size: 0.85em;}
  /* small enough that all five tabs fit a 390 px screen: Gradio moves tabs that do not fit into a "More tabs"
     menu, measuring these same buttons (its hidden copy of the tab bar), so they shrink there too */
  .tab-container button {flex: 0 0 auto; padding: 4px 6px !important; font-size: 0.85em; min-width: 0 !important;}
}
"""


def _message(e: Exception, limit: int = 300) -> str:
    """One sentence for the user: a UserError (or ValueError) as it is, anything else named and logged."""
    if isinstance(e, (UserError, ValueError)):
        return str(e)
    log.exception("unexpected error in the app")
    return (f"Something went wrong ({type(e).__name__}: {str(e)[:limit]}). The server log has the details; "
            "please report it with what you did.")


def guard(fn, notice_of: int | None = None):
    """The one error guard of every event, so no traceback ever reaches the page.

    notice_of=None (API endpoints): an error becomes gr.Error with one sentence (a UserError's own text).
    notice_of=N (UI events with N outputs): an error becomes "⚠ ..." in the LAST output (the event's notice)
    and every other output is left as it is, so an error never hides a conversation, a poem or a picker
    behind an error badge."""
    import gradio as gr

    def fail(e: Exception):
        if isinstance(e, gr.Error):
            e = UserError(str(e.message))
        if notice_of is None:
            raise gr.Error(_message(e), print_exception=False) from None
        return tuple([gr.skip()] * (notice_of - 1) + [f"⚠ {_message(e, 200)}"])

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every error becomes a message
                yield fail(e)
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every error becomes a message
            return fail(e)
    return call


def paced(fn):
    """A streaming UI handler whose updates reach the page at most 10 times a second (streaming.throttled); API
    endpoints call the handler itself and get every update."""
    @functools.wraps(fn)
    def gen(*args, **kwargs):
        yield from throttled(fn(*args, **kwargs))
    return gen


def session(request) -> str:
    return getattr(request, "session_hash", None) or ""


def stopper(state: AppState):
    """A Stop button's callback: the session's running generation halts at its next step. (Gradio passes the
    request only to a parameter annotated gr.Request, so this cannot be a lambda.)"""
    import gradio as gr

    def stop(request: gr.Request) -> None:
        state.stop(session(request), wait=2.0)
    return stop


def sampling_controls(defaults: Sampling, prefix: str, limits):
    import gradio as gr
    with gr.Row():
        t = gr.Slider(0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)",
                      elem_id=f"{prefix}-temperature")
        p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")
        n = gr.Slider(8, limits.max_new_tokens, value=defaults.max_new_tokens, step=8, label="Max new tokens",
                      elem_id=f"{prefix}-max-tokens")
    with gr.Row():
        s = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Seed")
        r = gr.Slider(1.0, 1.5, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty")
    return [t, p, n, s, r]


def default_sampling(state: AppState, **kw) -> Sampling:
    """A tab's default sampling (the same on both engines: llama.cpp takes the repetition penalty too)."""
    return Sampling(**kw)


def transparency(prefix: str):
    import gradio as gr
    with gr.Accordion("Transparency: the exact prompt, token counts, tokens/s", open=False):
        prompt = gr.Textbox(label="Rendered prompt (exactly what the model sees)", lines=6, max_lines=20,
                            interactive=False, buttons=["copy"], elem_id=f"{prefix}-prompt")
        stats = gr.JSON(label="Tokens and speed", elem_id=f"{prefix}-stats")
    return prompt, stats


# ---------------------------------------------------------------- header: base and adapter pickers

def build_header(state: AppState) -> dict:
    import gradio as gr
    gr.Markdown("# ftbench · small LMs, base vs LoRA fine-tuned", elem_id="app-title")
    gr.Markdown("Chat, classify SMS spam, write poems and compare a base model with its fine-tuned adapter, "
                "all on this machine's CPU. Switching adapters never reloads the base.", elem_id="app-intro")
    with gr.Row(equal_height=False, elem_id="pickers"):
        with gr.Column(scale=3, min_width=200):
            base_dd = gr.Dropdown(base_choices(state), value=state.base_name, label="Base model",
                                  allow_custom_value=True, elem_id="base-picker")
            load_btn = gr.Button("Load this base (frees the current one)", size="sm", elem_id="load-base")
        with gr.Column(scale=3, min_width=200):
            adapter_dd = gr.Dropdown(adapter_choices(state, "causal"), value=BASE,
                                     label="Adapter for chat and poems",
                                     allow_custom_value=True, elem_id="adapter-picker")
            refresh_btn = gr.Button("↻ Refresh the adapter lists", size="sm", elem_id="refresh-adapters")
    status = gr.Markdown(status_line(state, BASE), elem_id="model-status")
    base_notice = gr.Markdown(elem_id="base-notice", elem_classes="notice")
    return dict(base_dd=base_dd, load_btn=load_btn, adapter_dd=adapter_dd, refresh_btn=refresh_btn, status=status,
                base_notice=base_notice)


# ---------------------------------------------------------------- Chat

def build_chat_tab(state: AppState, ui: dict) -> None:
    import gradio as gr
    limits = state.limits
    chatbot = gr.Chatbot(label="Conversation", height=380, elem_id="chatbot", buttons=["copy"],
                         placeholder="Say hello: your message shows at once, the reply streams in as the model "
                                     "writes it, labelled with the model, adapter and decoding that wrote it.")
    with gr.Row():
        hints = task_hints("chat")
        msg = gr.Textbox(placeholder=hints.get("placeholder") or "Type a message and press Enter",
                         show_label=False, scale=6, elem_id="chat-input", autofocus=True)
        send = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="chat-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=70, elem_id="chat-stop")
    with gr.Row():
        regen = gr.Button("↻ Regenerate", size="sm", elem_id="chat-regenerate")
        undo = gr.Button("↶ Undo last turn", size="sm", elem_id="chat-undo")
        edit = gr.Button("✎ Edit last message", size="sm", elem_id="chat-edit")
        clear = gr.Button("Clear", size="sm", elem_id="chat-clear")
        export_json = gr.Button("Export JSON", size="sm", elem_id="chat-export-json")
        export_md = gr.Button("Export Markdown", size="sm", elem_id="chat-export-md")
    notice = gr.Markdown(elem_id="chat-notice", elem_classes="notice")
    if hints.get("examples"):
        gr.Examples([[x] for x in hints["examples"]], inputs=[msg], label="Examples (harness/tasks/chat.toml)")
    export_file = gr.File(label="Conversation export (with the settings of every answer)", visible=False,
                          interactive=False, elem_id="chat-export-file")
    with gr.Accordion("Settings: system prompt and sampling", open=False):
        system = gr.Textbox(label=f"System prompt (empty = the model's default; up to {limits.system_chars:,} "
                                  "characters)", lines=2, elem_id="chat-system")
        sampling = sampling_controls(default_sampling(state), "chat", limits)
    prompt, stats = transparency("chat")

    def submit_fn(text, system_text, adapter, t, p, n, s, r, request: gr.Request):
        C.submit(state, session(request), text, system_text, adapter, Sampling.from_ui(t, p, n, s, r))
        return C.render(state, session(request)), "", ""

    def generate_fn(request: gr.Request):
        # the notice is left alone unless the engine has something to say: submit_fn already cleared it, or put
        # its "⚠ ..." there (this runs after it either way, and must not erase that sentence)
        for shown, info in throttled(C.generate_pending(state, session(request))):
            info = dict(info)
            says = info.get("engine_notice", "")
            yield shown, info.pop("prompt", gr.skip()), info or gr.skip(), f"ℹ {says}" if says else gr.skip()

    def regen_fn(adapter, system_text, t, p, n, s, r, request: gr.Request):
        C.regenerate(state, session(request), adapter, Sampling.from_ui(t, p, n, s, r), system_text)
        return C.render(state, session(request)), ""

    def undo_fn(request: gr.Request):
        C.undo(state, session(request))
        return C.render(state, session(request)), ""

    def edit_fn(request: gr.Request):
        text = C.edit_last(state, session(request))
        return C.render(state, session(request)), text, "Your last message is back in the box: edit it and press Enter."

    def clear_fn(request: gr.Request):
        C.clear(state, session(request))
        return [], "", None, ""

    def export_fn(fmt):
        def run(request: gr.Request):
            return gr.update(value=str(C.export(state, session(request), fmt)), visible=True), ""
        return run

    def stop_fn(request: gr.Request):
        """Stop: the model halts at its next step; the reply is kept and marked as stopped."""
        sid = session(request)
        state.stop(sid, wait=2.0)
        info = stats_info(state.last_stats.get(sid))
        return gr.skip() if info is None else info

    sampling_in = [*sampling]
    sub = gr.on([msg.submit, send.click], guard(submit_fn, 3), [msg, system, ui["adapter_dd"], *sampling_in],
                [chatbot, msg, notice], queue=False, trigger_mode="multiple", api_visibility="private")
    gen_args = dict(fn=guard(generate_fn, 4), inputs=None, outputs=[chatbot, prompt, stats, notice],
                    show_progress="hidden", trigger_mode="multiple", api_visibility="private", **GENERATE)
    sub.then(**gen_args)
    regen.click(guard(regen_fn, 2), [ui["adapter_dd"], system, *sampling_in], [chatbot, notice], queue=False,
                api_visibility="private").then(**gen_args)
    undo.click(guard(undo_fn, 2), None, [chatbot, notice], queue=False, api_visibility="private")
    edit.click(guard(edit_fn, 3), None, [chatbot, msg, notice], queue=False, api_visibility="private")
    clear.click(guard(clear_fn, 4), None, [chatbot, prompt, stats, notice], queue=False, api_visibility="private")
    export_json.click(guard(export_fn("json"), 2), None, [export_file, notice], queue=False, api_visibility="private")
    export_md.click(guard(export_fn("md"), 2), None, [export_file, notice], queue=False, api_visibility="private")
    stop.click(stop_fn, None, stats, queue=False, api_name="stop")

    # the stateless API endpoint /chat (history in, history out); hidden from the page
    def api_chat(message, history, system_text, adapter, t, p, n, s, r, request: gr.Request):
        sampling_ = Sampling.from_ui(t, p, n, s, r)
        # the model runs ahead of the client: a client slower than the model gets the newest text at each update
        for hist, info in run_ahead(C.chat_turn(state, message, history, system_text, adapter, sampling_,
                                                session(request))):
            info = dict(info)
            yield hist, "", info.pop("prompt"), info

    api = gr.Button(visible=False, elem_id="api-chat")
    api.click(guard(api_chat), [msg, chatbot, system, ui["adapter_dd"], *sampling_in], [chatbot, msg, prompt, stats],
              api_name="chat", **GENERATE)
    ui.update(chatbot=chatbot, chat_notice=notice)


# ---------------------------------------------------------------- Spam (classification)

def build_classify_tab(state: AppState, ui: dict) -> None:
    import gradio as gr
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
                    label=f"{note} The first {len(hinted)} come from harness/tasks/spam.toml." if hinted else note,
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

    def classify_fn(message, name, t):
        probs, says = classify_message(state, message, name, t)
        return probs, says

    def file_fn(path, name, t):
        out, table, says = classify_file(state, path, name, t)
        return out, table, says

    gr.on([button.click, text.submit], guard(classify_fn, 2), [text, classifier, threshold], [label, verdict],
          api_visibility="private", **CLASSIFY)
    file_btn.click(guard(file_fn, 3), [file_in, classifier, threshold], [file_out, preview, summary],
                   api_visibility="private", **CLASSIFY)
    api = gr.Button(visible=False)
    api.click(guard(classify_fn), [text, classifier, threshold], [label, verdict], api_name="classify", **CLASSIFY)
    api2 = gr.Button(visible=False)
    api2.click(guard(lambda p, n, t: (lambda r: (r[0], r[2], r[1]))(classify_file(state, p, n, t))),
               [file_in, classifier, threshold], [file_out, summary, preview], api_name="classify_file", **CLASSIFY)
    ui.update(classifier_dd=classifier)


# ---------------------------------------------------------------- Poem

def build_poem_tab(state: AppState, ui: dict) -> None:
    import gradio as gr
    hint = gr.Markdown(poem_hint(state), elem_id="poem-hint")
    with gr.Row():
        with gr.Column(scale=2):
            topic = gr.Textbox(label=f"Title or topic (up to {state.limits.topic_chars} characters)",
                               placeholder=task_hints("poem").get("placeholder", ""), elem_id="poem-topic")
            with gr.Row():
                lang = gr.Radio(list(LANGS), value="中文", label="Language", elem_id="poem-lang")
                form = gr.Dropdown(list(POEM_FORMS["zh"]), value="五言绝句", label="Form", allow_custom_value=True,
                                   elem_id="poem-form")
            enforce = gr.Checkbox(value=True, label="Keep the classical form while decoding (lines × characters "
                                  "enforced; the model picks every character; max new tokens follows the form)",
                                  elem_id="poem-enforce")
            with gr.Row():
                rhyme = gr.Checkbox(value=False, label="Rhyme (平水韵)", elem_id="poem-rhyme",
                                    info="the even lines end in one rhyme group")
                tone = gr.Checkbox(value=False, label="Tone (平仄)", elem_id="poem-tone",
                                   info="the 平仄 template, 一三五不论")
                group = gr.Textbox("", label="Rhyme group (optional, e.g. 东)", max_lines=1, elem_id="poem-rhyme-group",
                                   placeholder="empty: the first rhyme line sets it")
            with gr.Accordion("Sampling", open=False):
                sampling = sampling_controls(default_sampling(state, temperature=0.7, max_new_tokens=160), "poem",
                                             state.limits)
            with gr.Row():
                write = gr.Button("Write", variant="primary", elem_id="poem-button")
                stop = gr.Button("Stop", variant="stop", elem_id="poem-stop")
        with gr.Column(scale=3):
            warning = gr.Markdown(elem_id="poem-warning")
            out = gr.Textbox(label="Poem", lines=10, max_lines=30, interactive=False, elem_id="poem-output")
            check = gr.Markdown("**Form check:** —", elem_id="poem-check")
            rules = gr.Markdown(elem_id="poem-rules")
            details = gr.JSON(label="Lines × characters", elem_id="poem-details")
    poem_examples = task_hints("poem").get("examples", [])
    if poem_examples:
        gr.Examples([[x] for x in poem_examples], inputs=[topic], label="Example titles (harness/tasks/poem.toml)")
    prompt, stats = transparency("poem")

    def forms_fn(language):
        forms = P.poem_forms(language)
        return gr.update(choices=list(forms), value=forms[0]), gr.update(visible=P.has_fixed_form(forms[0]))

    def rules_shown(language, form_, enforce_):
        """The Rhyme/Tone boxes and the group box: only for a Chinese 近体 form under the form constraint."""
        return [gr.update(visible=P.has_rules(language, form_, enforce_))] * 3

    def warn_fn(adapter, language):
        return P.language_warning(state, adapter, language)

    def write_fn(topic_, language, form_, adapter, t, p, n, s, r, enforce_, rhyme_=False, tone_=False, group_="",
                 request: gr.Request = None):
        sampling_ = Sampling.from_ui(t, p, n, s, r)
        for poem, report, info in P.poem_job(state, session(request), topic_, language, form_, adapter, sampling_,
                                             bool(enforce_) if enforce_ is not None else True, bool(rhyme_),
                                             bool(tone_), group_ or ""):
            info = dict(info)
            rendered = info.pop("prompt", gr.skip())
            shown = {k: v for k, v in report.items() if k not in ("summary", "warning", "rules_line")} or None
            says = info.get("engine_notice", "")
            yield (poem, report["summary"], report.get("rules_line", ""), shown, rendered, info,
                   report.get("warning", ""), f"ℹ {says}" if says else "")

    lang.change(forms_fn, lang, [form, enforce], queue=False, api_visibility="private")
    form.change(lambda f: gr.update(visible=P.has_fixed_form(f)), form, enforce, queue=False, api_visibility="private")
    gr.on([lang.change, form.change, enforce.change], rules_shown, [lang, form, enforce], [rhyme, tone, group],
          queue=False, api_visibility="private")
    gr.on([lang.change, ui["adapter_dd"].change], warn_fn, [ui["adapter_dd"], lang], warning, queue=False,
          api_visibility="private")
    notice = gr.Markdown(elem_id="poem-notice", elem_classes="notice")
    ev = write.click(guard(paced(write_fn), 8), [topic, lang, form, ui["adapter_dd"], *sampling, enforce, rhyme, tone,
                                                 group],
                     [out, check, rules, details, prompt, stats, warning, notice], show_progress="minimal",
                     api_visibility="private", **GENERATE)
    stop.click(stopper(state), None, None, queue=False,
               api_visibility="private")

    def api_poem(topic_, language, form_, adapter, t, p, n, s, r, enforce_=True, rhyme_=False, tone_=False,
                 group_="", request: gr.Request = None):
        for poem, report, rules_line, details_, rendered, info, _, _ in write_fn(
                topic_, language, form_, adapter, t, p, n, s, r, enforce_, rhyme_, tone_, group_, request):
            if rules_line and isinstance(details_, dict):          # API clients get the rule line in the details
                details_ = {**details_, "rules_line": rules_line}
            yield poem, report, details_, rendered, info

    api = gr.Button(visible=False)
    api.click(guard(api_poem), [topic, lang, form, ui["adapter_dd"], *sampling, enforce, rhyme, tone, group],
              [out, check, details, prompt, stats], api_name="poem", **GENERATE)
    ui.update(poem_hint=hint, poem_event=ev)


def poem_hint(state: AppState) -> str:
    names = [f"`{P.default_poem_adapter(state, lang)}` ({label})" for label, lang in LANGS.items()
             if P.default_poem_adapter(state, lang) != BASE]
    return ("Poem adapters for this base: " + ", ".join(names) + " — pick one in the adapter picker above."
            if names else "No poem adapter for this base yet: the base model writes the poems.")


# ---------------------------------------------------------------- Compare

def build_compare_tab(state: AppState, ui: dict) -> None:
    import gradio as gr
    from harness.metrics import FIXED_FORMS
    choices = K.compare_choices(state)
    note = gr.Markdown(compare_note(state), elem_id="compare-note")
    with gr.Row():
        prompt = gr.Textbox(label="Instruction", lines=3, scale=3, placeholder=task_hints("chat").get("placeholder", ""),
                            elem_id="compare-input")
        with gr.Column(scale=2):
            adapter = gr.Dropdown(choices, value=choices[0] if choices else None, label="Fine-tuned adapter",
                                  allow_custom_value=True, elem_id="compare-adapter")
            form = gr.Dropdown([K.AUTO, K.NO_FORM, *FIXED_FORMS], value=K.AUTO,
                               label="Classical form kept while decoding (poem adapters)", elem_id="compare-form",
                               visible=K.keeps_forms(state, choices[0] if choices else None))
            blind = gr.Checkbox(value=False, label="Blind: shuffle the sides and hide the names until you vote",
                                elem_id="compare-blind")
    examples = K.examples()
    with gr.Row():
        for task, (eval_set, prompts) in examples.items():
            gr.Examples([[p] for p in prompts], inputs=[prompt], label=f"Examples ({task}, from the eval set "
                        f"{eval_set}: ROUGE-L against its reference where it has one)", examples_per_page=4)
    with gr.Accordion("Sampling (both sides use the same settings and seed)", open=False):
        sampling = sampling_controls(Sampling(temperature=0.0), "compare", state.limits)
    with gr.Row():
        button = gr.Button("Compare", variant="primary", elem_id="compare-button", interactive=bool(choices))
        stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
    status = gr.Markdown(elem_id="compare-status")
    with gr.Row():
        with gr.Column(min_width=280):
            left_head = gr.Markdown("### Left", elem_id="compare-left-head")
            left = gr.Textbox(label="Left answer", lines=8, interactive=False, elem_id="compare-left")
            left_fig = gr.Markdown(elem_id="compare-left-figures")
            left_score = gr.Markdown("Judge score: —", elem_classes="score", elem_id="compare-left-score")
        with gr.Column(min_width=280):
            right_head = gr.Markdown("### Right", elem_id="compare-right-head")
            right = gr.Textbox(label="Right answer", lines=8, interactive=False, elem_id="compare-right")
            right_fig = gr.Markdown(elem_id="compare-right-figures")
            right_score = gr.Markdown("Judge score: —", elem_classes="score", elem_id="compare-right-score")
    judge_notice = gr.Markdown(elem_id="compare-judge")
    with gr.Row():
        vote_btns = {c: gr.Button(label, size="sm", elem_id=f"vote-{c}") for c, label in K.VOTE_BUTTONS.items()}
    vote_msg = gr.Markdown(K.VOTING_MISSING if K.votes_module() is None else "", elem_id="vote-message")
    tally = gr.Markdown(K.vote_tally(state), elem_id="votes-tally")
    with gr.Accordion("Your votes: review and undo", open=False):
        votes_table = gr.Dataframe(headers=["id", "when", "choice", "winner", "status", "prompt"],
                                   value=K.vote_table(state) or None, interactive=False, wrap=True,
                                   elem_id="votes-table")
        with gr.Row():
            undo_id = gr.Textbox(label="Vote id to undo (click a row)", scale=3, elem_id="vote-undo-id")
            undo_btn = gr.Button("Undo this vote", scale=1, elem_id="vote-undo")
    rendered, stats = transparency("compare")
    notice = gr.Markdown(elem_id="compare-notice", elem_classes="notice")
    shown = [left, right, left_head, right_head, left_fig, right_fig, status]

    def as_outputs(v: dict):
        return (v["left"], v["right"], f"### {v['headings'][0]}", f"### {v['headings'][1]}", v["figures"][0],
                v["figures"][1], v["status"])

    def start_fn(text, name, form_, blind_, t, p, n, s, r, request: gr.Request):
        rec = K.start(state, session(request), text, name, Sampling.from_ui(t, p, n, s, r), form_, bool(blind_))
        return (*as_outputs(K.view(state, rec)), "Judge score: —", "Judge score: —", "", "", "")

    def stream_fn(request: gr.Request):
        for v in throttled(K.stream(state, session(request))):     # the notice stays start_fn's
            info = dict(v["info"] or {})
            yield (*as_outputs(v), info.pop("prompt", gr.skip()), info or gr.skip(), gr.skip())

    def judge_fn(request: gr.Request):
        return K.judge(state, session(request))

    def vote_fn(choice):
        def run(request: gr.Request):
            says = K.vote(state, session(request), choice)
            v = K.view(state, state.session_data(session(request)).get("compare"))
            return (f"### {v['headings'][0]}", f"### {v['headings'][1]}", K.vote_table(state) or None,
                    K.vote_tally(state), says)
        return run

    def undo_fn(vote_id):
        says = K.undo(state, vote_id)
        return K.vote_table(state) or None, K.vote_tally(state), says

    def pick_vote(evt: gr.SelectData):
        row = evt.row_value if hasattr(evt, "row_value") else None
        return row[0] if row else gr.skip()

    adapter.change(lambda a: gr.update(visible=K.keeps_forms(state, a)), adapter, form, queue=False,
                   api_visibility="private")
    ev = button.click(guard(start_fn, len(shown) + 5), [prompt, adapter, form, blind, *sampling],
                      [*shown, left_score, right_score, judge_notice, vote_msg, notice], queue=False,
                      api_visibility="private")
    ev = ev.then(guard(stream_fn, len(shown) + 3), None, [*shown, rendered, stats, notice], show_progress="hidden",
                 api_visibility="private", **GENERATE)
    ev.then(guard(judge_fn, 3), None, [left_score, right_score, judge_notice], show_progress="minimal",
            api_visibility="private", **JUDGE)
    stop.click(stopper(state), None, None, queue=False,
               api_visibility="private")
    for choice, btn in vote_btns.items():
        btn.click(guard(vote_fn(choice), 5), None, [left_head, right_head, votes_table, tally, vote_msg],
                  queue=False, api_visibility="private")
    votes_table.select(pick_vote, None, undo_id, queue=False, api_visibility="private")
    undo_btn.click(guard(undo_fn, 3), undo_id, [votes_table, tally, vote_msg], queue=False, api_visibility="private")

    def api_compare(text, name, t, p, n, s, r, request: gr.Request):
        base, tuned, sb, st, says, prompt_, info = K.compare_once(state, text, name, Sampling.from_ui(t, p, n, s, r),
                                                                 session(request) + "-api")
        return base, tuned, sb, st, says, prompt_, info

    api = gr.Button(visible=False)
    api.click(guard(api_compare), [prompt, adapter, *sampling],
              [left, right, left_score, right_score, judge_notice, rendered, stats], api_name="compare", **GENERATE)
    ui.update(cmp_adapter=adapter, cmp_note=note, cmp_btn=button, cmp_shown=shown, cmp_view=as_outputs,
              votes_view=(lambda: (K.vote_table(state) or None, K.vote_tally(state)), [votes_table, tally]))


def compare_note(state: AppState) -> str:
    if K.compare_choices(state):
        return ""
    return ("No fine-tuned chat/poem adapter for this base yet, so there is nothing to compare with: "
            "train one with `python -m harness finetune RECIPE`.")


# ---------------------------------------------------------------- Leaderboard

def build_leaderboard_tab(state: AppState, ui: dict):
    import gradio as gr
    folder = state.results_folder
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
    items = gr.Dataframe(label="Items of the selected row (from its rows file)", interactive=False, wrap=True,
                         visible=False, elem_id="leaderboard-items")
    with gr.Accordion("Diff two runs: the items where two rows disagree most", open=False):
        with gr.Row():
            run_a = gr.Dropdown([], label="Run A", elem_id="diff-a")
            run_b = gr.Dropdown([], label="Run B", elem_id="diff-b")
            diff_btn = gr.Button("Diff", elem_id="diff-button")
        diff_note = gr.Markdown(elem_id="diff-note")
        diff_table = gr.Dataframe(interactive=False, wrap=True, visible=False, elem_id="diff-table")
    agreement = gr.Markdown(elem_id="leaderboard-agreement")

    def view_fn(task_, set_, search_, metric_):
        v = LB.leaderboard_view(task_, set_, search_, metric_, folder)
        labels = v["labels"]
        return (gr.update(choices=v["tasks"], value=v["task"]),
                gr.update(choices=["all", *v["eval_sets"]], value=set_ if set_ in v["eval_sets"] else "all"),
                gr.update(choices=v["metrics"], value=v["metric"]),
                v["notice"], gr.update(value=v["figure"], visible=v["figure"] is not None), v["caption"],
                gr.update(value=v["table"], visible=v["table"] is not None),
                gr.update(choices=labels, value=labels[0] if labels else None),
                gr.update(choices=labels, value=labels[1] if len(labels) > 1 else None), K.agreement(state))

    def row_fn(task_, set_, search_, evt: gr.SelectData):
        v = LB.leaderboard_view(task_, set_, search_, None, folder)
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        row = v["rows"][index]
        found = LB.row_items(v["task"], row, folder)
        header, rows = LB.item_table(found)
        import pandas as pd
        return (gr.update(value=pd.DataFrame(rows, columns=header), visible=True),
                f"**{LB.row_label(row)}**: {len(rows)} items from results/runs/{v['task']}/")

    def diff_fn(task_, set_, search_, a, b):
        v = LB.leaderboard_view(task_, set_, search_, None, folder)
        by = dict(zip(v["labels"], v["rows"]))
        if a not in by or b not in by:
            raise UserError("choose two rows (Run A and Run B) of the table above")
        header, rows, summary = LB.diff_runs(v["task"], by[a], by[b], folder)
        import pandas as pd
        return gr.update(value=pd.DataFrame(rows, columns=header), visible=bool(rows)), summary

    inputs = [task, eval_set, search, metric]
    outputs = [task, eval_set, metric, notice, plot, caption, table, run_a, run_b, agreement]
    gr.on([task.input, eval_set.input, metric.input, search.submit, refresh.click], guard(view_fn, len(outputs)),
          inputs, outputs, queue=False, api_name="leaderboard", api_visibility="undocumented")
    table.select(guard(row_fn, 2), [task, eval_set, search], [items, items_note], queue=False,
                 api_visibility="private")
    diff_btn.click(guard(diff_fn, 2), [task, eval_set, search, run_a, run_b], [diff_table, diff_note], queue=False,
                   api_visibility="private")
    return guard(view_fn, len(outputs)), inputs, outputs


# ---------------------------------------------------------------- the page

def build_demo(state: AppState | None = None):
    """The Blocks app around one AppState (default: the embedded base, loaded on first use)."""
    import gradio as gr

    state = state or AppState()
    ui: dict = {}
    with gr.Blocks(title="ftbench: small LMs, base vs fine-tuned") as demo:
        ui.update(build_header(state))
        with gr.Tabs():
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                build_chat_tab(state, ui)
            with gr.Tab("Spam", id="spam", elem_id="tab-spam"):
                build_classify_tab(state, ui)
            with gr.Tab("Poem", id="poem", elem_id="tab-poem"):
                build_poem_tab(state, ui)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                build_compare_tab(state, ui)
            with gr.Tab("Leaderboard", id="leaderboard", elem_id="tab-leaderboard"):
                lb_fn, lb_in, lb_out = build_leaderboard_tab(state, ui)
        wire_pickers(state, ui, demo)
        demo.load(lb_fn, lb_in, lb_out, queue=False, api_visibility="undocumented")
        demo.load(ui["votes_view"][0], None, ui["votes_view"][1], queue=False, api_visibility="private")
        timer = gr.Timer(1.0)

        def tick(adapter, request: gr.Request):
            """Once a second: the status line while the model prepares, and queue positions of waiting work."""
            sid = session(request)
            data = state.sessions.get(sid, {})
            waiting_chat = any(m["role"] == "assistant" and m["meta"]["status"] == C.WAITING for m in data.get("chat", []))
            writing_chat = any(m["role"] == "assistant" and m["meta"]["status"] == C.WRITING for m in data.get("chat", []))
            rec = data.get("compare")
            status = status_line(state, adapter) if state.phase in ("preparing", "failed") or tick.was != state.phase \
                else gr.skip()
            tick.was = state.phase
            chat_view = C.render(state, sid) if waiting_chat and not writing_chat else gr.skip()
            cmp = ui["cmp_view"](K.view(state, rec)) if rec and rec["status"] == "waiting" else [gr.skip()] * 7
            return status, chat_view, *cmp
        tick.was = state.phase

        def end_session(request: gr.Request):
            """The page was closed or reloaded: stop its generations and drop its queued work, so nobody
            else's "waiting for N requests ahead" counts a request that will never run."""
            state.end_session(session(request))
        demo.unload(end_session)
        timer.tick(tick, ui["adapter_dd"], [ui["status"], ui["chatbot"], *ui["cmp_shown"]], queue=False,
                   show_progress="hidden", api_visibility="private")
    demo.queue(max_size=64, default_concurrency_limit=1)
    demo.ftbench_state = state
    return demo


def wire_pickers(state: AppState, ui: dict, demo) -> None:
    import gradio as gr
    pickers = [ui["base_dd"], ui["adapter_dd"], ui["classifier_dd"], ui["cmp_adapter"], ui["status"], ui["cmp_note"],
               ui["poem_hint"], ui["cmp_btn"], ui["base_notice"]]

    def updates(adapter, classifier, tuned, says=""):
        """Choices of every model-dependent dropdown for the base IN USE, keeping valid selections."""
        chat = adapter_choices(state, "causal")
        adapter = adapter if adapter in [v for _, v in chat] else BASE
        cls = classifier_choices(state)
        classifier = classifier if classifier in [v for _, v in cls] else default_classifier(state)
        tuned_choices = K.compare_choices(state)
        tuned = tuned if tuned in tuned_choices else (tuned_choices[0] if tuned_choices else None)
        return (gr.update(choices=base_choices(state), value=state.base_name),
                gr.update(choices=chat, value=adapter), gr.update(choices=cls, value=classifier),
                gr.update(choices=tuned_choices, value=tuned), status_line(state, adapter), compare_note(state),
                poem_hint(state), gr.update(interactive=bool(tuned_choices)), says)

    def load_base(base, adapter, classifier, tuned):
        """Load another base; on failure the picker shows the base still in use and a sentence says why."""
        try:
            state.switch_base(base)
            says = f"Loaded {state.base_name}."
        except UserError as e:
            says = f"⚠ {e}"
        return updates(adapter, classifier, tuned, says)

    demo.load(lambda: updates(BASE, None, None), None, pickers, queue=False, api_visibility="undocumented")
    ui["refresh_btn"].click(lambda a, c, t: updates(a, c, t), [ui["adapter_dd"], ui["classifier_dd"], ui["cmp_adapter"]],
                            pickers, queue=False, api_name="refresh", api_visibility="undocumented")
    ui["load_btn"].click(load_base, [ui["base_dd"], ui["adapter_dd"], ui["classifier_dd"], ui["cmp_adapter"]], pickers,
                         api_name="load_base", show_progress="minimal", **GENERATE)
    ui["adapter_dd"].change(lambda a: status_line(state, a), ui["adapter_dd"], ui["status"], queue=False,
                            api_visibility="private")


def launch(demo, host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = True,
           quiet: bool = False):
    """Launch with the app's theme and CSS (Gradio 6 takes them in launch(), not Blocks())."""
    import gradio as gr
    system_fonts = ["ui-sans-serif", "system-ui", "sans-serif"]        # no web fonts: the app works offline
    theme = gr.themes.Soft(font=system_fonts, font_mono=["ui-monospace", "monospace"])
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                       theme=theme, css=CSS, max_file_size="2mb", quiet=quiet, show_error=False,
                       footer_links=["api", "gradio"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The ftbench Gradio demo (see the module docstring).")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to bind (default 127.0.0.1, or $GRADIO_SERVER_NAME as on Spaces); "
                             "0.0.0.0 exposes the app to the network")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (default 7860, or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    parser.add_argument("--model", default=None,
                        help="base model: a registry name, a local model directory or a .gguf (default: embedded)")
    parser.add_argument("--judge", default=DEFAULT_JUDGE,
                        help=f"judge for the compare tab (default {DEFAULT_JUDGE}; offline: {DEFAULT_OFFLINE_JUDGE})")
    parser.add_argument("--judge-timeout", type=float, default=60.0,
                        help="seconds to wait for one judge answer (default 60)")
    parser.add_argument("--engine", default="transformers", metavar="ENGINE",
                        help="chat engine: transformers (default), llama.cpp (harness.llamacpp, when installed), "
                             "openai:<model>@<url> (vLLM, llama.cpp's server) or ollama:<model>; chat and free "
                             "poems go there, and fall back to transformers with a one-line notice for the form "
                             "constraint, an adapter the engine cannot serve, or a server that is down")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation at start")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0 = the cores not busy with other work, at least 1)")
    return parser.parse_args(argv)


def pick_engine(engine: str) -> str:
    """The chat engine to use: a server spec as given (checked by app_engine; reached on first use), llama.cpp
    only when harness.llamacpp says it is available (one line otherwise)."""
    if is_server_spec(engine):
        return engine
    if engine != "llama.cpp":
        return "transformers"
    try:
        from harness import llamacpp
    except ImportError:
        print("note: --engine llama.cpp needs harness.llamacpp, which this version lacks; using transformers",
              file=sys.stderr)
        return "transformers"
    ok, why = llamacpp.is_available()
    if not ok:
        print(f"note: {why}; the app uses transformers", file=sys.stderr)
        return "transformers"
    return "llama.cpp"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        args.engine = app_engine(args.engine)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    print(f"ftbench app: http://{shown_host}:{args.port}/  (the page is up in seconds; the model loads behind it)",
          flush=True)
    threads = args.threads if args.threads > 0 else auto_threads()
    try:
        state = AppState(model=args.model, judge=args.judge, judge_timeout=args.judge_timeout,
                         engine=pick_engine(args.engine), threads=threads)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from harness.models import base_status
    converting = base_status(state.spec) == "needs conversion"
    # Start-up order, measured on 2 cores (python -m harness bench app): imports are pure Python and hold the
    # GIL, so the model stack is imported first; then the model loads (native code, releases the GIL) in a thread
    # while gradio is imported and the page is built. On an empty cache the one-time GGUF conversion waits until
    # the page is up, so the page never waits for it.
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    def prepare():
        try:
            torch.set_num_threads(threads)
            log.info("torch threads: %d", threads)
            seconds = state.prepare(warmup=not args.no_warmup)
            if not args.no_warmup:
                log.info("warm-up took %.1f s", seconds)
            log.info("model %s ready", state.base_name)
        except BaseException as e:  # noqa: BLE001 - shown in the page's status line
            log.error("loading %s failed: %s", state.base_name, e)

    loader = threading.Thread(target=prepare, name="ftbench-load", daemon=True)
    state.begin_prepare()
    if not converting:
        loader.start()
    demo = build_demo(state)
    launch(demo, host=args.host, port=args.port, share=args.share, block=False)
    if converting:
        log.info("preparing the model (one-time, about a minute): converting the embedded GGUF in the background")
        loader.start()
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
