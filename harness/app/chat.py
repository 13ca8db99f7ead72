"""The Chat tab: a conversation kept per session on the server, each answer labelled with who wrote it.

    from harness.app.state import AppState, Sampling
    from harness.app import chat
    state = AppState()
    chat.submit(state, "s1", "Hi!", adapter="base", sampling=Sampling(max_new_tokens=32))   # shown at once
    for messages, info in chat.generate_pending(state, "s1"):                                # then streamed
        pass
    chat.render(state, "s1")[-1]["content"]     # the reply, with "smollm2-135m-instruct · no adapter · greedy"
    chat.export(state, "s1", "md")              # a Markdown file of the conversation with its settings

Why a server-side conversation: every update (a streamed token, a queued message, a Stop) renders the same
list, so a message typed while another reply streams is never lost and the textbox is never touched by a
stream. Each assistant message carries the model, adapter and decoding fixed when it was sent; a stopped
reply is marked as stopped. `chat_turn` is the stateless form for API clients (history in, history out).
"""

import json
import time
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.app.state import (AppState, Sampling, chat_stream, normalize_history, optional_text, require_text,
                               run_info, shown_model)
from harness.errors import UserError

WAITING, WRITING, DONE, STOPPED, FAILED = "waiting", "writing", "done", "stopped", "failed"


def messages(state: AppState, session: str) -> list[dict]:
    """This session's conversation: [{"role", "content", "meta"}] (meta only on assistant messages)."""
    return state.session_data(session).setdefault("chat", [])


def label(meta: dict) -> str:
    """Who wrote an answer and how, as fixed when it was sent."""
    adapter = meta.get("adapter") or ""
    parts = [meta.get("model", "?"), f"adapter {adapter}" if adapter else "no adapter", meta.get("decoding", "")]
    if meta.get("engine", "transformers") != "transformers":
        parts.append(meta["engine"])
    elif meta.get("engine_note"):
        parts.append(f"transformers ({meta.get('asked_engine') or 'llama.cpp'} fallback)")
    if meta.get("new_tokens"):
        parts.append(f"{meta['new_tokens']} tokens")
    if meta.get("status") == STOPPED:
        parts.append("⏹ stopped by you")
    if meta.get("status") == FAILED:
        parts.append(f"⚠ failed: {meta.get('error', '')}")
    return " · ".join(p for p in parts if p)


def decoding_text(sampling: Sampling) -> str:
    if sampling.temperature > 0:
        return (f"sampling t={sampling.temperature:g} top-p={sampling.top_p:g} seed={sampling.seed}, "
                f"max {sampling.max_new_tokens} tokens")
    return f"greedy, max {sampling.max_new_tokens} tokens"


def render(state: AppState, session: str) -> list[dict]:
    """The conversation as Gradio's Chatbot shows it (messages format), with labels and queue positions."""
    out = []
    for m in messages(state, session):
        if m["role"] == "user":
            out.append({"role": "user", "content": m["content"]})
            continue
        meta = m["meta"]
        body = m["content"]
        if meta["status"] == WAITING:
            n = state.ahead(meta.get("job", ""))
            body = ("⏳ waiting: next in line" if n == 0 else
                    f"⏳ waiting for {n} request{'s' if n != 1 else ''} ahead" if n else "⏳ waiting")
            if state.phase == "preparing":
                body += f" ({state.phase_note}; it starts when the model is ready)"
        elif meta["status"] == WRITING:
            body = (body or "") + " ▍"
        out.append({"role": "assistant", "content": f"{body}\n\n*— {label(meta)}*"})
    return out


def history_before(msgs: list[dict], index: int) -> list[dict]:
    """The turns the model sees for the answer at `index`: earlier answers that hold text, and the users'."""
    return [{"role": m["role"], "content": m["content"]} for m in msgs[:index]
            if m["content"].strip() and (m["role"] == "user" or m["meta"]["status"] in (DONE, STOPPED))]


def _pending(state: AppState, session: str, adapter: str | None, sampling: Sampling, system: str) -> dict:
    lm_name = state.base_name
    name = state.resolve_adapter(adapter, "causal")
    return {"role": "assistant", "content": "", "meta": {
        "status": WAITING, "job": state.enqueue("chat", session), "model": lm_name, "adapter": name or "",
        "decoding": decoding_text(sampling), "sampling": sampling.as_dict(), "system": system,
        "engine": state.engine, "asked_engine": state.engine, "sent_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}


def submit(state: AppState, session: str, text: Any, system: Any = "", adapter: str | None = None,
           sampling: Sampling = Sampling()) -> None:
    """Add the user's message and a waiting answer (shown at once); generate_pending() then writes it.
    Raises UserError (nothing added) for an empty or too long message, or an adapter that cannot be used."""
    text = require_text(text, "message", state.limits.message_chars, "type a message")
    system = optional_text(system, "system prompt", state.limits.system_chars)
    pending = _pending(state, session, adapter, sampling, system)
    msgs = messages(state, session)
    msgs.append({"role": "user", "content": text})
    msgs.append(pending)
    del msgs[:-state.limits.history_messages * 2]


def generate_pending(state: AppState, session: str) -> Iterator[tuple[list[dict], dict]]:
    """Write the oldest waiting answer of this session, streamed: yields (rendered conversation, info).
    Yields the conversation once and returns when nothing waits (a message that was undone or cleared)."""
    msgs = messages(state, session)
    index = next((i for i, m in enumerate(msgs) if m["role"] == "assistant" and m["meta"]["status"] == WAITING), None)
    if index is None:
        yield render(state, session), {}
        return
    m = msgs[index]
    meta = m["meta"]
    if not state.queued(meta["job"]):       # its page went away while it waited: nobody to write it for
        meta["status"] = STOPPED
        yield render(state, session), {}
        return
    state.start_job(meta["job"])
    info: dict = {}
    try:
        sampling = Sampling(**{k: v for k, v in meta["sampling"].items() if k != "decoding"})
        turns = history_before(msgs, index)
        meta["status"] = WRITING
        for reply, stats, prompt, engine, notice in chat_stream(state, turns, meta["system"], meta["adapter"] or None,
                                                                sampling, session):
            m["content"] = reply
            meta["new_tokens"] = stats.new_tokens
            meta["engine"], meta["engine_note"] = engine, notice       # fixed when the answer is written
            trimmed = len(turns) > 1 and turns[0]["content"] not in prompt
            info = run_info(shown_model(state), meta["adapter"] or None, prompt, stats, sampling, history_trimmed=trimmed,
                            engine=engine, **({"engine_notice": notice} if notice else {}))
            yield render(state, session), info
        meta["status"] = STOPPED if info.get("finish_reason") == "cancelled" else DONE
        meta["finish_reason"] = info.get("finish_reason", "")
        meta["prompt_tokens"] = info.get("prompt_tokens")
    except UserError as e:
        meta["status"], meta["error"] = FAILED, str(e)
    finally:
        state.finish_job(meta["job"])
        if meta["status"] in (WAITING, WRITING):      # closed half-way (the page went away)
            meta["status"] = STOPPED
    yield render(state, session), info


def _last_answer(msgs: list[dict]) -> int | None:
    return next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i]["role"] == "assistant"), None)


def _busy(msgs: list[dict]) -> bool:
    return any(m["role"] == "assistant" and m["meta"]["status"] in (WAITING, WRITING) for m in msgs)


def regenerate(state: AppState, session: str, adapter: str | None = None, sampling: Sampling = Sampling(),
               system: Any = "") -> str:
    """Write the last answer again; the old one is replaced. Returns a notice for the page.

    Regenerate asks for ANOTHER answer: under sampling it draws with the next seed (the replaced answer's seed + 1,
    unless a different seed was chosen since), and the answer's label shows the seed, so any answer can be
    reproduced. Greedy decoding has one answer per prompt: it is written again, and the notice says so."""
    msgs = messages(state, session)
    if _busy(msgs):
        raise UserError("an answer is still being written: wait for it or press Stop first")
    i = _last_answer(msgs)
    if i is None:
        raise UserError("nothing to regenerate yet: send a message first")
    system = optional_text(system, "system prompt", state.limits.system_chars)
    says = ""
    asked = sampling.seed
    if sampling.temperature > 0:
        meta = msgs[i]["meta"]
        used = int(meta.get("sampling", {}).get("seed", sampling.seed))
        if sampling.seed == meta.get("asked_seed", used):          # the Seed box is as it was: the next seed
            sampling = replace(sampling, seed=(used + 1) % 2 ** 32)
        says = f"A new answer with seed {sampling.seed} (the label shows it; set that seed to get it again)."
    else:
        says = ("Greedy decoding (temperature 0) gives the same answer every time: raise the temperature for "
                "a different one.")
    msgs[i] = _pending(state, session, adapter, sampling, system)
    msgs[i]["meta"]["asked_seed"] = asked
    return says


def undo(state: AppState, session: str) -> str:
    """Remove the last turn (the user's message and its answer); returns the removed message's text."""
    msgs = messages(state, session)
    if _busy(msgs):
        state.stop(session, wait=2.0)
    for m in msgs:
        if m["role"] == "assistant" and m["meta"]["status"] == WAITING:
            state.finish_job(m["meta"]["job"])
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users:
        raise UserError("nothing to undo: the conversation is empty")
    text = msgs[users[-1]]["content"]
    del msgs[users[-1]:]
    return text


def edit_last(state: AppState, session: str) -> str:
    """Take the last message back for editing: its turn is removed and its text returned for the textbox."""
    return undo(state, session)


def clear(state: AppState, session: str) -> None:
    state.stop(session, wait=2.0)
    for m in messages(state, session):
        if m["role"] == "assistant":
            state.finish_job(m["meta"].get("job", ""))
    messages(state, session).clear()


def export(state: AppState, session: str, fmt: str = "json", folder: Path | None = None) -> Path:
    """The conversation as a file: JSON (every message with its settings) or Markdown (readable, settings in
    each answer's label and the system prompt at the top)."""
    import tempfile

    from harness.io import atomic_write
    msgs = [m for m in messages(state, session) if m["role"] == "user" or m["meta"]["status"] in (DONE, STOPPED)]
    if not msgs:
        raise UserError("nothing to export yet: the conversation is empty")
    if fmt not in ("json", "md"):
        raise UserError(f"export format must be json or md, got {fmt!r}")
    rows = []
    for m in msgs:
        row = {"role": m["role"], "content": m["content"]}
        if m["role"] == "assistant":
            meta = m["meta"]
            row.update({k: meta.get(k) for k in ("model", "adapter", "decoding", "sampling", "system", "engine",
                                                  "finish_reason", "new_tokens", "prompt_tokens", "sent_at")})
            row["stopped"] = meta["status"] == STOPPED
        rows.append(row)
    folder = folder or Path(tempfile.gettempdir()) / "ftbench-predictions"
    out = export_path(folder, fmt)
    if fmt == "json":
        atomic_write(out, json.dumps({"app": "ftbench", "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "messages": rows}, ensure_ascii=False, indent=2) + "\n")
        return out
    lines = ["# ftbench conversation", "", f"Exported {time.strftime('%Y-%m-%d %H:%M')}."]
    systems = {r.get("system") for r in rows if r["role"] == "assistant" and r.get("system")}
    if systems:
        lines += ["", "System prompt: " + " / ".join(sorted(systems))]
    for r in rows:
        lines += ["", f"**{'You' if r['role'] == 'user' else 'Assistant'}:**", "", r["content"]]
        if r["role"] == "assistant":       # who wrote it, then its settings: each said once
            meta = {**r, "decoding": "", "status": STOPPED if r["stopped"] else DONE}
            lines += ["", f"*— {label(meta)} · {settings_text(r.get('sampling') or {})}*"]
    atomic_write(out, "\n".join(lines) + "\n")
    return out


def settings_text(sampling: dict) -> str:
    """An answer's decoding settings, each once: "greedy, max 256 new tokens, repetition penalty 1.1"."""
    if not sampling:
        return ""
    head = ("greedy" if float(sampling.get("temperature", 0)) == 0 else
            f"sampling: temperature {sampling['temperature']:g}, top-p {sampling.get('top_p', 1):g}, "
            f"seed {sampling.get('seed', 0)}")
    return (f"{head}, max {sampling.get('max_new_tokens')} new tokens, repetition penalty "
            f"{sampling.get('repetition_penalty', 1):g}")


def export_path(folder: Path, fmt: str) -> Path:
    """ftbench-chat-<date>-<time>-<4 hex>.<fmt> in the app's download folder (old files pruned with the
    predictions CSVs)."""
    import uuid

    from harness.app.classify import prune_downloads
    return prune_downloads(folder) / f"ftbench-chat-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}.{fmt}"


def chat_turn(state: AppState, message: Any, history: Any, system: Any = "", adapter: str | None = None,
              sampling: Sampling = Sampling(), session: str = "") -> Iterator[tuple[list[dict], dict]]:
    """One chat turn for API clients, streamed: yields (history including the growing answer, info)."""
    text = require_text(message, "message", state.limits.message_chars, "type a message")
    system = optional_text(system, "system prompt", state.limits.system_chars)
    past = normalize_history(history, state.limits)
    name = state.resolve_adapter(adapter, "causal")
    msgs = past + [{"role": "user", "content": text}]
    out = msgs + [{"role": "assistant", "content": ""}]
    for i, (reply, stats, prompt, engine, notice) in enumerate(chat_stream(state, msgs, system, name, sampling,
                                                                           session)):
        if i == 0 and not reply:
            continue     # the empty answer before the model runs: its trip through Gradio would delay the first token
        trimmed = bool(past) and past[0]["content"] not in prompt      # the oldest turns are dropped first
        out[-1] = {"role": "assistant", "content": reply}
        yield [dict(m) for m in out], run_info(shown_model(state), name, prompt, stats, sampling, history_trimmed=trimmed,
                                               engine=engine, **({"engine_notice": notice} if notice else {}))


# ---------------------------------------------------------------- the tab's layout and events

def build(state: AppState, ui: dict) -> None:
    """The Chat tab. The adapter picker is the header's (ui["adapter_dd"]); adds chatbot and chat_notice to ui."""
    import gradio as gr

    from harness.app.state import stats_info, task_hints
    from harness.app.streaming import run_ahead, throttled
    from harness.app.widgets import GENERATE, default_sampling, guard, sampling_controls, session, transparency
    limits = state.limits
    chatbot = gr.Chatbot(label="Conversation", height=380, elem_id="chatbot", buttons=["copy"],
                         placeholder="Say hello: your message shows at once, the reply streams in as the model "
                                     "writes it, labelled with the model, adapter and decoding that wrote it.")
    with gr.Row():
        hints = task_hints("chat")
        msg = gr.Textbox(placeholder=hints.get("placeholder") or "Type a message and press Enter",
                         show_label=False, scale=6, elem_id="chat-input")
        send = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="chat-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=70, elem_id="chat-stop")
    with gr.Row():
        regen = gr.Button("↻ Regenerate", size="sm", elem_id="chat-regenerate")
        undo_btn = gr.Button("↶ Undo last turn", size="sm", elem_id="chat-undo")
        edit = gr.Button("✎ Edit last message", size="sm", elem_id="chat-edit")
        clear_btn = gr.Button("Clear", size="sm", elem_id="chat-clear")
        export_json = gr.Button("Export JSON", size="sm", elem_id="chat-export-json")
        export_md = gr.Button("Export Markdown", size="sm", elem_id="chat-export-md")
    notice = gr.Markdown(elem_id="chat-notice", elem_classes="notice")
    if hints.get("examples"):
        gr.Examples([[x] for x in hints["examples"]], inputs=[msg], label="Examples")
    export_file = gr.File(label="Conversation export (with the settings of every answer)", visible=False,
                          interactive=False, elem_id="chat-export-file")
    with gr.Accordion("Settings: system prompt and sampling", open=False):
        system = gr.Textbox(label=f"System prompt (empty = the model's default; up to {limits.system_chars:,} "
                                  "characters)", lines=2, elem_id="chat-system")
        sampling = sampling_controls(default_sampling(state), "chat", limits)
    prompt, stats = transparency("chat")

    def submit_fn(text, system_text, adapter, temperature, top_p, max_new_tokens, seed, repetition_penalty,
                  request: gr.Request):
        submit(state, session(request), text, system_text, adapter,
               state.sampling(temperature, top_p, max_new_tokens, seed, repetition_penalty))
        return render(state, session(request)), "", ""

    def generate_fn(request: gr.Request):
        # the notice is left alone unless the engine has something to say: submit_fn already cleared it, or put
        # its "⚠ ..." there (this runs after it either way, and must not erase that sentence)
        for shown, info in throttled(generate_pending(state, session(request))):
            info = dict(info)
            says = info.get("engine_notice", "")
            yield shown, info.pop("prompt", gr.skip()), info or gr.skip(), f"ℹ {says}" if says else gr.skip()

    def regen_fn(adapter, system_text, temperature, top_p, max_new_tokens, seed, repetition_penalty,
                 request: gr.Request):
        says = regenerate(state, session(request), adapter,
                          state.sampling(temperature, top_p, max_new_tokens, seed, repetition_penalty), system_text)
        return render(state, session(request)), says

    def undo_fn(request: gr.Request):
        undo(state, session(request))
        return render(state, session(request)), ""

    def edit_fn(request: gr.Request):
        text = edit_last(state, session(request))
        return render(state, session(request)), text, "Your last message is back in the box: edit it and press Enter."

    def clear_fn(request: gr.Request):
        clear(state, session(request))
        return [], "", None, ""

    def export_fn(fmt):
        def run(request: gr.Request):
            return gr.update(value=str(export(state, session(request), fmt)), visible=True), ""
        return run

    def stop_fn(request: gr.Request):
        """Stop: the model halts at its next step; the reply is kept and marked as stopped."""
        sid = session(request)
        state.stop(sid, wait=2.0)
        info = stats_info(state.last_stats.get(sid))
        return gr.skip() if info is None else info

    sub = gr.on([msg.submit, send.click], guard(submit_fn, 3), [msg, system, ui["adapter_dd"], *sampling],
                [chatbot, msg, notice], queue=False, trigger_mode="multiple", api_visibility="private")
    gen_args = dict(fn=guard(generate_fn, 4), inputs=None, outputs=[chatbot, prompt, stats, notice],
                    show_progress="hidden", trigger_mode="multiple", api_visibility="private", **GENERATE)
    sub.then(**gen_args)
    regen.click(guard(regen_fn, 2), [ui["adapter_dd"], system, *sampling], [chatbot, notice], queue=False,
                api_visibility="private").then(**gen_args)
    undo_btn.click(guard(undo_fn, 2), None, [chatbot, notice], queue=False, api_visibility="private")
    edit.click(guard(edit_fn, 3), None, [chatbot, msg, notice], queue=False, api_visibility="private")
    clear_btn.click(guard(clear_fn, 4), None, [chatbot, prompt, stats, notice], queue=False, api_visibility="private")
    export_json.click(guard(export_fn("json"), 2), None, [export_file, notice], queue=False, api_visibility="private")
    export_md.click(guard(export_fn("md"), 2), None, [export_file, notice], queue=False, api_visibility="private")
    stop.click(stop_fn, None, stats, queue=False, api_name="stop")

    # the stateless API endpoint /chat (history in, history out); hidden from the page
    def api_chat(message, history, system_prompt, adapter, temperature, top_p, max_new_tokens, seed,
                 repetition_penalty, request: gr.Request):
        sampling_ = state.sampling(temperature, top_p, max_new_tokens, seed, repetition_penalty)
        # the model runs ahead of the client: a client slower than the model gets the newest text at each update
        for hist, info in run_ahead(chat_turn(state, message, history, system_prompt, adapter, sampling_,
                                              session(request))):
            info = dict(info)
            yield hist, "", info.pop("prompt"), info

    api = gr.Button(visible=False, elem_id="api-chat")
    api.click(guard(api_chat), [msg, chatbot, system, ui["adapter_dd"], *sampling], [chatbot, msg, prompt, stats],
              api_name="chat", **GENERATE)
    ui.update(chatbot=chatbot, chat_notice=notice)
