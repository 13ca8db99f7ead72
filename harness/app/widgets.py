"""What every tab shares: the queues, the page's CSS, the one error guard, the sampling controls and the
transparency panel. The tab modules (chat, classify, poem, compare, leaderboard) build their layout with these;
harness/app/page.py puts the tabs together.
"""

import functools
import inspect
import logging

from harness.app.state import Sampling
from harness.app.streaming import throttled
from harness.errors import UserError
from harness.io import hide_paths

log = logging.getLogger("ftbench.app")
GENERATE = dict(concurrency_id="generate", concurrency_limit=1)   # the one model writes one thing at a time
CLASSIFY = dict(concurrency_id="classify", concurrency_limit=1)   # short work, between two generated tokens
JUDGE = dict(concurrency_id="judge", concurrency_limit=2)         # an outside server (or the in-process judge)
CSS = """
#model-status {padding: 4px 8px; border-radius: 6px; background: var(--background-fill-secondary);}
.score {font-size: 1.05em; font-weight: 600;}
.notice p {color: var(--body-text-color-subdued);}
#poem-rules-row {flex-wrap: wrap !important;}
#poem-rules-row > * {min-width: 0 !important; flex: 1 1 140px !important;}
@media (max-width: 600px) {
  #app-title h1 {font-size: 1.15em; margin: 0;}
  #app-intro {display: none;}
  /* the two pickers side by side, small: the header stays under ~300 px of an 844 px phone screen, and the
     model name fits its box (small type, no padding wasted) */
  #pickers {flex-wrap: nowrap !important; gap: 6px !important;}
  #pickers > div {min-width: 0 !important; flex: 1 1 0 !important;}
  #pickers .block {padding: 2px !important;}
  #pickers input {font-size: 0.68em !important; padding-left: 0 !important; padding-right: 0 !important;}
  #pickers .wrap-inner, #pickers .secondary-wrap {padding-left: 2px !important; padding-right: 2px !important;}
  #pickers .icon-wrap {display: none !important;}     /* the arrow: the whole box opens the list anyway */
  #pickers button {padding: 2px 4px; min-height: 0; font-size: 0.75em;}
  #pickers [data-testid="block-info"] {font-size: 0.8em;}
  #model-status {font-size: 0.85em;}
  /* small enough that all five tabs fit a 390 px screen: Gradio moves tabs that do not fit into a "More tabs"
     menu, measuring these same buttons (its hidden copy of the tab bar), so they shrink there too */
  .tab-container button {flex: 0 0 auto; padding: 4px 6px !important; font-size: 0.85em; min-width: 0 !important;}
  #leaderboard-plot {overflow-x: hidden;}
  #leaderboard-plot img, #leaderboard-plot svg {max-width: 100% !important; height: auto !important;}
}
"""
# sentences meant for someone at the command line, never for a visitor of the page
_CLI_ADVICE = ("rerun the same command", "the same command to resume")


def ui_sentence(text: str) -> str:
    """A message as the page shows it: sentences of command-line advice dropped (the CLI prints them)."""
    import re
    text = str(text).strip()
    parts = re.split(r"(?<=[.;])\s+", text)
    kept = [p for p in parts if not any(a in p for a in _CLI_ADVICE)]
    if not kept or kept == parts:
        return text
    out = " ".join(kept).rstrip(" ;:")
    return out if out.endswith((".", "!", "?")) else out + "."


def message(e: Exception, limit: int = 300) -> str:
    """One sentence for the user: a UserError (or ValueError) as it is, anything else named and logged."""
    if isinstance(e, (UserError, ValueError)):
        return hide_paths(ui_sentence(str(e)))
    log.exception("unexpected error in the app")
    return (f"Something went wrong ({type(e).__name__}: {hide_paths(str(e))[:limit]}). The server log has the "
            "details; please report it with what you did.")


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
            raise gr.Error(message(e), print_exception=False) from None
        return tuple([gr.skip()] * (notice_of - 1) + [f"⚠ {message(e, 200)}"])

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


def stopper(state):
    """A Stop button's callback: the session's running generation halts at its next step. (Gradio passes the
    request only to a parameter annotated gr.Request, so this cannot be a lambda.)"""
    import gradio as gr

    def stop(request: gr.Request) -> None:
        state.stop(session(request), wait=2.0)
    return stop


def sampling_controls(defaults: Sampling, prefix: str, limits):
    """The five sampling widgets, in the endpoints' order: temperature, top_p, max_new_tokens, seed,
    repetition_penalty."""
    import gradio as gr
    top = limits.max_new_tokens
    with gr.Row():
        t = gr.Slider(0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)",
                      elem_id=f"{prefix}-temperature")
        p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")
        n = gr.Slider(8, top, value=min(defaults.max_new_tokens, top), step=8, label="Max new tokens",
                      elem_id=f"{prefix}-max-tokens")
    with gr.Row():
        s = gr.Number(value=defaults.seed, precision=0, minimum=0, label="Seed", elem_id=f"{prefix}-seed")
        r = gr.Slider(1.0, 1.5, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty")
    return [t, p, n, s, r]


def default_sampling(state=None, **kw) -> Sampling:
    """A tab's default sampling (the same on both engines: llama.cpp takes the repetition penalty too)."""
    return Sampling(**kw)


def transparency(prefix: str):
    import gradio as gr
    with gr.Accordion("Transparency: the exact prompt, token counts, tokens/s", open=False):
        prompt = gr.Textbox(label="Rendered prompt (exactly what the model sees)", lines=6, max_lines=20,
                            interactive=False, buttons=["copy"], elem_id=f"{prefix}-prompt")
        stats = gr.JSON(label="Tokens and speed", elem_id=f"{prefix}-stats")
    return prompt, stats
