"""The Chat tab: one turn streamed, as plain functions.

    from harness.app.state import AppState, Sampling
    from harness.app.chat import chat_turn
    for history, info in chat_turn(AppState(), "Hi!", [], sampling=Sampling(max_new_tokens=32)):
        pass
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from harness.app.state import (BASE, LANGS, POEM_FORMS, TRAIN_HINT, AppState, Limits, Sampling, optional_text,
                                 normalize_history, require_text, run_info, stream_into)
from harness.errors import UserError


def chat_turn(state: AppState, message: Any, history: Any, system: Any = "", adapter: str | None = None,
              sampling: Sampling = Sampling(), session: str = "") -> Iterator[tuple[list[dict], dict]]:
    """One chat turn, streamed: yields (history including the growing answer, transparency info)."""
    text = require_text(message, "message", state.limits.message_chars, "type a message")
    system = optional_text(system, "system prompt", state.limits.system_chars)
    past = normalize_history(history, state.limits)
    lm = state.get_model()
    name = state.resolve_adapter(adapter, "causal")
    msgs = past + [{"role": "user", "content": text}]
    prompt = lm.render_chat(msgs, system or None, sampling.max_new_tokens)
    trimmed = bool(past) and past[0]["content"] not in prompt      # render_chat drops the oldest turns first
    out = msgs + [{"role": "assistant", "content": ""}]
    for reply, stats in stream_into(state, prompt, name, sampling, session):
        out[-1] = {"role": "assistant", "content": reply}
        yield [dict(m) for m in out], run_info(lm, name, prompt, stats, sampling, history_trimmed=trimmed)

