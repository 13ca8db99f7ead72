"""The Compare tab: the same prompt through the base and a fine-tuned adapter, with judge scores when reachable.

    from harness.app.state import AppState, Sampling
    from harness.app.compare import compare
    r = compare(AppState(), "Name three colors.", "smollm2-135m-alpaca", Sampling(temperature=0))
"""
from __future__ import annotations

import time
from typing import Any

from harness.app.state import BASE, TRAIN_HINT, AppState, Sampling, require_text
from harness.errors import UserError


def compare_choices(state: AppState) -> list[str]:
    return [a.name for a in state.adapters("causal")]


def judge_pair(state: AppState, task: str, fields: dict, responses: list[str]) -> tuple[list[float | None], str]:
    """Judge scores (0-100) for each response when the judge is reachable; otherwise Nones and a plain notice."""
    none = [None] * len(responses)
    try:
        from harness.judge import JudgeConfig, JudgeRequest, judge_many, open_judge
    except ImportError as e:
        return none, f"No judge scores: the judge module is not available ({e})."
    try:
        cfg = JudgeConfig(state.judge, host=state.judge_host, connect_timeout=1.0, retries=0, timeout=60.0,
                          workers=1)   # two requests: in order, one after the other
        with open_judge(cfg, lm=state.lm) as judge:
            reqs = [JudgeRequest(f"compare-{i}", task, {**fields, "response": r}) for i, r in enumerate(responses)]
            scores = [j.score for j in judge_many(judge, reqs, progress=False)]
    except UserError as e:
        return none, f"No judge scores: {str(e).split(' [')[0]}"
    except Exception as e:  # noqa: BLE001 - a judge problem must never break the comparison itself
        return none, f"No judge scores: the judge failed ({type(e).__name__}: {str(e)[:200]})."
    if any(s is None for s in scores):
        return scores, f"Judge {state.judge}: some answers held no score (shown as —)."
    return scores, f"Scores 0-100 by {state.judge} (temperature 0, fixed seed; no reference answer)."


def compare(state: AppState, prompt: Any, adapter: str | None = None, sampling: Sampling = Sampling(),
            judge: bool = True) -> dict:
    """The same prompt through the base and a fine-tuned adapter in ONE batch with the same seed, plus judge
    scores when the judge is reachable. Returns dict(base, tuned, adapter, prompt, judge_notice, scores, info)."""
    from harness.generation import generate_pair

    text = require_text(prompt, "prompt", state.limits.message_chars, "type an instruction to compare")
    lm = state.get_model()
    if not adapter or str(adapter).strip().lower() in (BASE, "none"):
        found = compare_choices(state)
        if not found:
            raise UserError(f"no fine-tuned chat/poem adapter for base {lm.name} to compare with: {TRAIN_HINT}")
        adapter = found[0]
    name = state.resolve_adapter(adapter, "causal")
    rendered = lm.render_instruction(text)
    t0 = time.perf_counter()
    base, tuned = generate_pair(lm, rendered, name, sampling.config())
    seconds = time.perf_counter() - t0
    info = state.adapters("causal")
    task = next((a.task for a in info if a.name == name), "chat")
    scores, notice = [None, None], "Judge not asked."
    if judge:
        if task.startswith("poem"):
            lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"
            fields = {"prompt": text, "lang": lang, "form": "(as requested)", "title": ""}
            scores, notice = judge_pair(state, "poem", fields, [base.text, tuned.text])
        else:
            fields = {"instruction": text, "input": "",
                      "output": "(no reference answer: judge the response on its own merits)"}
            scores, notice = judge_pair(state, "chat", fields, [base.text, tuned.text])
    return {"base": base.text, "tuned": tuned.text, "adapter": name, "prompt": rendered, "scores": scores,
            "judge_notice": notice,
            "info": {"model": lm.name, "adapter": name, "prompt": rendered, "prompt_tokens": base.prompt_tokens,
                     "new_tokens": {"base": base.new_tokens, "tuned": tuned.new_tokens},
                     "seconds": round(seconds, 3),
                     "tokens_per_s": round((base.new_tokens + tuned.new_tokens) / seconds, 1) if seconds else 0.0,
                     "finish_reason": {"base": base.finish_reason, "tuned": tuned.finish_reason},
                     "sampling": sampling.as_dict()}}


def score_text(score: float | None) -> str:
    return "Judge score: —" if score is None else f"Judge score: {score:g} / 100"

