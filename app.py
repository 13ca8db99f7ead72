"""The Gradio demo: chat, spam classifier, poem generator, base-vs-fine-tuned comparison, leaderboard.

    python app.py                          # http://127.0.0.1:7860 with the embedded default model
    python app.py --model /path/to/model_dir --port 7861 --no-warmup
    python app.py --host 0.0.0.0           # listen on every interface (or --share for a gradio.live link)

From Python (gradio_client); stable endpoints /chat, /classify, /poem, /compare:

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/")
    history, _, prompt, info = c.predict("Hi!", [], "", "base", 0.3, 0.9, 128, 0, 1.1, api_name="/chat")
    label, verdict = c.predict("WIN a prize! Claim now", "base", 0.5, api_name="/classify")

Chat history is Gradio 6's messages format, as /chat returns it: pass it back to continue the conversation.
All logic lives in harness/app/ (one module per tab) and harness/leaderboard_view.py (plain functions, tested without a browser); this file only wires it.
"""
import argparse
import functools
import inspect
import logging
import os
import sys
import threading

from harness.app.chat import chat_turn
from harness.app.classify import (classifier_choices, classify_file, classify_message, default_classifier,
                                  spam_examples)
from harness.app.compare import compare, compare_choices, score_text
from harness.app.poem import default_poem_adapter, poem_forms, poem_stream
from harness.app.state import (BASE, LANGS, POEM_FORMS, AppState, Sampling, adapter_choices, auto_threads,
                               base_choices, stats_info, status_line)
from harness.leaderboard_view import leaderboard_view
from harness.errors import UserError

log = logging.getLogger("ftbench.app")
MODEL_QUEUE = dict(concurrency_id="model", concurrency_limit=1)   # one queue for all model work, across tabs
CSS = """
#model-status {padding: 4px 8px; border-radius: 6px; background: var(--background-fill-secondary);}
.score {font-size: 1.1em; font-weight: 600;}
"""


def _error(e: Exception):
    import gradio as gr
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, (UserError, ValueError)):
        return gr.Error(str(e), print_exception=False)
    log.exception("unexpected error in the app")
    return gr.Error(f"Something went wrong ({type(e).__name__}: {str(e)[:300]}). The server log has the details; "
                    "please report it with what you did.", print_exception=False)


def guarded(fn):
    """Turn UserError (and anything unexpected) into gr.Error: the user sees what to do, never a traceback."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every error becomes a message
                raise _error(e) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise _error(e) from None
    return call


def build_demo(state: AppState | None = None):
    """The Blocks app around one AppState (default: the embedded base, loaded on first use)."""
    import gradio as gr

    state = state or AppState()
    limits = state.limits

    def session(request):
        return getattr(request, "session_hash", None) or ""

    def sampling_controls(defaults: Sampling, prefix: str):
        with gr.Row():
            t = gr.Slider(0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)",
                          elem_id=f"{prefix}-temperature")
            p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")
            n = gr.Slider(8, limits.max_new_tokens, value=defaults.max_new_tokens, step=8, label="Max new tokens")
        with gr.Row():
            s = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Seed")
            r = gr.Slider(1.0, 1.5, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty")
        return [t, p, n, s, r]

    def transparency(prefix: str):
        with gr.Accordion("Transparency: the exact prompt, token counts, tokens/s", open=False):
            prompt = gr.Textbox(label="Rendered prompt (exactly what the model sees)", lines=6, max_lines=20,
                                interactive=False, buttons=["copy"], elem_id=f"{prefix}-prompt")
            stats = gr.JSON(label="Tokens and speed", elem_id=f"{prefix}-stats")
        return prompt, stats

    # ------------------------------------------------------------ callbacks (thin: logic is in harness/app/)

    @guarded
    def chat_fn(message, history, system, adapter, temperature, top_p, max_new_tokens, seed, repetition_penalty,
                request: gr.Request):
        sampling = Sampling.from_ui(temperature, top_p, max_new_tokens, seed, repetition_penalty)
        for hist, info in chat_turn(state, message, history, system, adapter, sampling, session(request)):
            prompt = info.pop("prompt")
            yield hist, "", prompt, info

    def stop_fn(request: gr.Request):
        """Stop: the model halts at its next step; the panel then shows where it stopped (the cancelled event
        itself sends no final update)."""
        sid = session(request)
        state.stop(sid, wait=2.0)
        info = stats_info(state.last_stats.get(sid))
        return gr.update() if info is None else info

    def clear_fn(request: gr.Request):
        state.stop(session(request))
        return [], "", "", None

    @guarded
    def classify_fn(text, classifier, threshold):
        return classify_message(state, text, classifier, threshold)

    @guarded
    def classify_file_fn(path, classifier, threshold):
        out, preview, summary = classify_file(state, path, classifier, threshold)
        return out, summary, preview

    @guarded
    def poem_fn(topic, lang, form, adapter, temperature, top_p, max_new_tokens, seed, repetition_penalty,
                enforce_form, request: gr.Request):
        sampling = Sampling.from_ui(temperature, top_p, max_new_tokens, seed, repetition_penalty)
        enforce = True if enforce_form is None else bool(enforce_form)
        for poem, check, info in poem_stream(state, topic, lang, form, adapter, sampling, session(request), enforce):
            prompt = info.pop("prompt")
            details = {k: v for k, v in check.items() if k != "summary"} or None
            yield poem, check["summary"], details, prompt, info

    @guarded
    def compare_fn(prompt, adapter, temperature, top_p, max_new_tokens, seed, repetition_penalty):
        sampling = Sampling.from_ui(temperature, top_p, max_new_tokens, seed, repetition_penalty)
        r = compare(state, prompt, adapter, sampling)
        info = dict(r["info"])
        rendered = info.pop("prompt")
        return (r["base"], r["tuned"], score_text(r["scores"][0]), score_text(r["scores"][1]),
                r["judge_notice"], rendered, info)

    def picker_updates(adapter, classifier, tuned):
        """Choices of every model-dependent dropdown for the current base, keeping valid selections."""
        chat = adapter_choices(state, "causal")
        adapter = adapter if adapter in [v for _, v in chat] else BASE
        cls = classifier_choices(state)
        classifier = classifier if classifier in [v for _, v in cls] else default_classifier(state)
        tuned_choices = compare_choices(state)
        tuned = tuned if tuned in tuned_choices else (tuned_choices[0] if tuned_choices else None)
        return (gr.update(choices=base_choices(state), value=state.base_name),
                gr.update(choices=chat, value=adapter), gr.update(choices=cls, value=classifier),
                gr.update(choices=tuned_choices, value=tuned), status_line(state, adapter), compare_note(),
                poem_hint(), gr.update(interactive=bool(tuned_choices)))

    @guarded
    def refresh_fn(adapter, classifier, tuned):
        return picker_updates(adapter, classifier, tuned)

    @guarded
    def load_base_fn(base, adapter, classifier, tuned):
        state.switch_base(base)
        return picker_updates(adapter, classifier, tuned)

    def compare_note():
        if compare_choices(state):
            return ""
        return ("No fine-tuned chat/poem adapter for this base yet, so there is nothing to compare with: "
                "train one with `python -m harness finetune RECIPE`.")

    def poem_hint():
        names = [f"`{default_poem_adapter(state, lang)}` ({label})" for label, lang in LANGS.items()
                 if default_poem_adapter(state, lang) != BASE]
        return ("Poem adapters for this base: " + ", ".join(names) + " — pick one in the adapter picker above."
                if names else "No poem adapter for this base yet: the base model writes the poems.")

    def forms_fn(lang):
        forms = poem_forms(lang)
        return gr.update(choices=list(forms), value=forms[0])

    def leaderboard_fn(task, eval_set, search, metric):
        v = leaderboard_view(task, eval_set, search, metric, state.results_folder)
        return (gr.update(choices=v["tasks"], value=v["task"]),
                gr.update(choices=["all", *v["eval_sets"]], value=eval_set if eval_set in v["eval_sets"] else "all"),
                gr.update(choices=v["metrics"], value=v["metric"]),
                v["notice"], gr.update(value=v["figure"], visible=v["figure"] is not None),
                gr.update(value=v["table"], visible=v["table"] is not None))

    # ------------------------------------------------------------ layout

    try:
        examples, examples_note = spam_examples()
    except UserError as e:
        examples, examples_note = [], f"(no examples: {e})"
    with gr.Blocks(title="ftbench: small LMs, base vs fine-tuned") as demo:
        gr.Markdown("# ftbench · small language models, base vs LoRA fine-tuned\n"
                    "Chat, classify SMS spam, write poems and compare a base model with its fine-tuned adapter, "
                    "all on this machine's CPU.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=240):
                base_dd = gr.Dropdown(base_choices(state), value=state.base_name, label="Base model",
                                      allow_custom_value=True, elem_id="base-picker")
                load_btn = gr.Button("Load this base (frees the current one)", size="sm", elem_id="load-base")
            with gr.Column(scale=3, min_width=240):
                adapter_dd = gr.Dropdown(adapter_choices(state, "causal"), value=BASE,
                                         label="Adapter for chat and poems (switching never reloads the base)",
                                         allow_custom_value=True, elem_id="adapter-picker")
                refresh_btn = gr.Button("↻ Refresh the adapter lists", size="sm", elem_id="refresh-adapters")
        status = gr.Markdown(status_line(state, BASE), elem_id="model-status")

        with gr.Tabs():
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chatbot = gr.Chatbot(label="Conversation", height=380, elem_id="chatbot", buttons=["copy"],
                                     placeholder="Say hello: the reply streams in as the model writes it.")
                with gr.Row():
                    msg = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6,
                                     max_length=limits.message_chars, elem_id="chat-input", autofocus=True)
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                    stop = gr.Button("Stop", variant="stop", scale=1, elem_id="chat-stop")
                    clear = gr.Button("Clear", scale=1, elem_id="chat-clear")
                with gr.Accordion("Settings: system prompt and sampling", open=False):
                    system = gr.Textbox(label="System prompt (empty = the model's default)", lines=2,
                                        max_length=limits.system_chars, elem_id="chat-system")
                    chat_sampling = sampling_controls(Sampling(), "chat")
                chat_prompt, chat_stats = transparency("chat")

            with gr.Tab("Spam", id="spam", elem_id="tab-spam"):
                with gr.Row():
                    with gr.Column(scale=3):
                        spam_text = gr.Textbox(label="SMS message", lines=4, max_length=limits.message_chars,
                                               placeholder="Paste a text message", elem_id="spam-input")
                        with gr.Row():
                            classifier_dd = gr.Dropdown(classifier_choices(state), value=default_classifier(state),
                                                        label="Classifier", allow_custom_value=True,
                                                        elem_id="spam-classifier")
                            threshold = gr.Slider(0, 1, value=0.5, step=0.01,
                                                  label="Threshold: spam when p(spam) ≥ this")
                        spam_btn = gr.Button("Classify", variant="primary", elem_id="spam-button")
                    with gr.Column(scale=2):
                        spam_label = gr.Label(label="Probabilities", num_top_classes=2, elem_id="spam-label")
                        verdict = gr.Markdown(elem_id="spam-verdict")
                if examples:
                    gr.Examples([[t] for t in examples], inputs=[spam_text], label=examples_note,
                                examples_per_page=8)
                else:
                    gr.Markdown(examples_note)
                with gr.Accordion("Classify a file: a CSV with a `text` column, or one message per line",
                                  open=False):
                    with gr.Row():
                        file_in = gr.File(label="Messages (.csv or .txt)", file_types=[".csv", ".txt"],
                                          type="filepath", elem_id="spam-file")
                        file_out = gr.File(label="Predictions (download)", interactive=False,
                                           elem_id="spam-file-out")
                    file_btn = gr.Button("Classify file", elem_id="spam-file-button")
                    file_summary = gr.Markdown()
                    preview = gr.Dataframe(label="First 50 predictions", interactive=False, wrap=True)

            with gr.Tab("Poem", id="poem", elem_id="tab-poem"):
                poem_note = gr.Markdown(poem_hint())
                with gr.Row():
                    with gr.Column(scale=2):
                        topic = gr.Textbox(label="Title or topic", placeholder="春夜 · the sea · moving house",
                                           max_length=limits.topic_chars, elem_id="poem-topic")
                        with gr.Row():
                            lang = gr.Radio(list(LANGS), value="中文", label="Language", elem_id="poem-lang")
                            form = gr.Dropdown(list(POEM_FORMS["zh"]), value="五言绝句", label="Form",
                                               allow_custom_value=True, elem_id="poem-form")
                        enforce_form = gr.Checkbox(value=True, label="Keep the classical form while decoding "
                                                   "(绝句/律诗: lines × characters enforced; the model picks every "
                                                   "character)", elem_id="poem-enforce")
                        with gr.Accordion("Sampling", open=False):
                            poem_sampling = sampling_controls(Sampling(temperature=0.7, max_new_tokens=160), "poem")
                        with gr.Row():
                            write = gr.Button("Write", variant="primary", elem_id="poem-button")
                            poem_stop = gr.Button("Stop", variant="stop", elem_id="poem-stop")
                    with gr.Column(scale=3):
                        with gr.Row():
                            poem_out = gr.Textbox(label="Poem", lines=10, max_lines=30, interactive=False,
                                                  scale=3, elem_id="poem-output")
                            with gr.Column(scale=2):
                                check_md = gr.Markdown("**Form check:** —", elem_id="poem-check")
                                check_json = gr.JSON(label="Lines × characters")
                poem_prompt, poem_stats = transparency("poem")

            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                tuned_choices = compare_choices(state)
                cmp_note = gr.Markdown(compare_note())
                with gr.Row():
                    cmp_prompt = gr.Textbox(label="Instruction", lines=3, scale=3, max_length=limits.message_chars,
                                            placeholder="Give three tips for staying healthy.",
                                            elem_id="compare-input")
                    cmp_adapter = gr.Dropdown(tuned_choices, value=tuned_choices[0] if tuned_choices else None,
                                              label="Fine-tuned adapter", allow_custom_value=True, scale=2,
                                              elem_id="compare-adapter")
                with gr.Accordion("Sampling (both sides use the same settings and seed)", open=False):
                    cmp_sampling = sampling_controls(Sampling(temperature=0.0), "compare")
                cmp_btn = gr.Button("Compare", variant="primary", elem_id="compare-button",
                                    interactive=bool(tuned_choices))
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### Base model")
                        base_out = gr.Textbox(label="Base", lines=8, interactive=False, elem_id="compare-base")
                        base_score = gr.Markdown("Judge score: —", elem_classes="score")
                    with gr.Column():
                        gr.Markdown("### Fine-tuned")
                        tuned_out = gr.Textbox(label="Fine-tuned", lines=8, interactive=False,
                                               elem_id="compare-tuned")
                        tuned_score = gr.Markdown("Judge score: —", elem_classes="score")
                judge_notice = gr.Markdown(elem_id="compare-judge")
                cmp_prompt_box, cmp_stats = transparency("compare")

            with gr.Tab("Leaderboard", id="leaderboard", elem_id="tab-leaderboard"):
                with gr.Row():
                    lb_task = gr.Dropdown([], label="Task", allow_custom_value=True)
                    lb_set = gr.Dropdown(["all"], value="all", label="Eval set", allow_custom_value=True)
                    lb_search = gr.Textbox(label="Filter model / adapter / judge", placeholder="e.g. alpaca")
                    lb_metric = gr.Dropdown([], label="Plot metric", allow_custom_value=True)
                    lb_refresh = gr.Button("↻ Reload CSVs")
                lb_notice = gr.Markdown(elem_id="leaderboard-notice")
                lb_plot = gr.Plot(label="Scores with 95% CI", elem_id="leaderboard-plot")
                lb_table = gr.Dataframe(label="Leaderboard", interactive=False, wrap=True, elem_id="leaderboard-table")

        # ------------------------------------------------------------ events
        pickers = [base_dd, adapter_dd, classifier_dd, cmp_adapter, status, cmp_note, poem_note, cmp_btn]
        demo.load(guarded(lambda: picker_updates(BASE, None, None)), None, pickers, queue=False,  # fresh defaults
                  api_visibility="undocumented")
        refresh_btn.click(refresh_fn, [adapter_dd, classifier_dd, cmp_adapter], pickers, queue=False,
                          api_name="refresh", api_visibility="undocumented")
        load_btn.click(load_base_fn, [base_dd, adapter_dd, classifier_dd, cmp_adapter], pickers,
                       api_name="load_base", **MODEL_QUEUE)
        adapter_dd.change(lambda a: status_line(state, a), adapter_dd, status, queue=False,
                          api_visibility="private")

        chat_ev = gr.on([msg.submit, send.click], chat_fn, [msg, chatbot, system, adapter_dd, *chat_sampling],
                        [chatbot, msg, chat_prompt, chat_stats], api_name="chat", show_progress="minimal",
                        **MODEL_QUEUE)
        stop.click(stop_fn, None, chat_stats, cancels=[chat_ev], queue=False, api_name="stop")
        clear.click(clear_fn, None, [chatbot, msg, chat_prompt, chat_stats], cancels=[chat_ev], queue=False,
                    api_visibility="private")

        gr.on([spam_btn.click, spam_text.submit], classify_fn, [spam_text, classifier_dd, threshold],
              [spam_label, verdict], api_name="classify", **MODEL_QUEUE)
        file_btn.click(classify_file_fn, [file_in, classifier_dd, threshold], [file_out, file_summary, preview],
                       api_name="classify_file", **MODEL_QUEUE)

        lang.change(forms_fn, lang, form, queue=False, api_visibility="private")
        poem_ev = write.click(poem_fn, [topic, lang, form, adapter_dd, *poem_sampling, enforce_form],
                              [poem_out, check_md, check_json, poem_prompt, poem_stats], api_name="poem",
                              show_progress="minimal", **MODEL_QUEUE)
        poem_stop.click(stop_fn, None, poem_stats, cancels=[poem_ev], queue=False, api_visibility="private")

        cmp_btn.click(compare_fn, [cmp_prompt, cmp_adapter, *cmp_sampling],
                      [base_out, tuned_out, base_score, tuned_score, judge_notice, cmp_prompt_box, cmp_stats],
                      api_name="compare", **MODEL_QUEUE)

        lb_inputs = [lb_task, lb_set, lb_search, lb_metric]
        lb_outputs = [lb_task, lb_set, lb_metric, lb_notice, lb_plot, lb_table]
        demo.load(guarded(leaderboard_fn), lb_inputs, lb_outputs, queue=False, api_visibility="undocumented")
        gr.on([lb_task.input, lb_set.input, lb_metric.input, lb_search.submit, lb_refresh.click],
              guarded(leaderboard_fn), lb_inputs, lb_outputs, queue=False, api_name="leaderboard",
              api_visibility="undocumented")
    demo.queue(max_size=64, default_concurrency_limit=1)
    demo.ftbench_state = state
    return demo


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
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    parser.add_argument("--model", default=None,
                        help="base model: a registry name, a local model directory or a .gguf (default: embedded)")
    parser.add_argument("--judge", default="ollama:llama3", help="judge for the compare tab (default ollama:llama3)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation at start")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0 = the cores not busy with other work, at least 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    threads = args.threads if args.threads > 0 else auto_threads()
    try:
        state = AppState(model=args.model, judge=args.judge)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed: list[BaseException] = []
    # Start-up order, measured on 2 cores (python -m harness bench app): imports are pure Python and hold the
    # GIL, so importing torch/transformers/peft and gradio in two threads at once is ~2 s SLOWER than one after
    # the other. Import the model stack here first; then load and warm the model (mostly native code that
    # releases the GIL) in a thread while gradio is imported and the page is built.
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    def prepare():
        try:
            torch.set_num_threads(threads)
            log.info("torch threads: %d", threads)
            state.get_model()
            if not args.no_warmup:
                log.info("warm-up took %.1f s", state.warmup())
            log.info("model %s ready", state.base_name)
        except BaseException as e:  # noqa: BLE001 - reported below, in the main thread
            failed.append(e)

    loader = threading.Thread(target=prepare, name="ftbench-load", daemon=True)
    loader.start()
    demo = build_demo(state)
    loader.join()
    if failed:
        e = failed[0]
        print(f"error: {e}" if isinstance(e, UserError) else f"error: loading {state.base_name} failed: {e!r}",
              file=sys.stderr)
        return 2
    launch(demo, host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
