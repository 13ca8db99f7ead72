"""The Poem tab: a poem streamed in a chosen language and form, with the form check.

    from harness.app.state import AppState
    from harness.app.poem import poem_stream
    for poem, check, info in poem_stream(AppState(), "春夜", "中文", "五言绝句"):
        pass
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from harness.app.state import BASE, LANGS, POEM_FORMS, TRAIN_HINT, AppState, Sampling, require_text, run_info, stream_into
from harness.errors import UserError


def poem_lang(lang: Any) -> str:
    value = str(lang or "").strip()
    code = LANGS.get(value, value.lower())
    code = {"chinese": "zh", "english": "en"}.get(code, code)
    if code not in POEM_FORMS:
        raise UserError(f"language must be one of {', '.join(LANGS)} (or zh / en), got {lang!r}")
    return code


def poem_forms(lang: Any) -> tuple[str, ...]:
    return POEM_FORMS[poem_lang(lang)]


def poem_instruction(topic: str, lang: Any, form: str) -> str:
    """The request as the project's eval sets phrase it (so a poem adapter sees its training format)."""
    code = poem_lang(lang)
    if form not in POEM_FORMS[code]:
        raise UserError(f"form {form!r} is not a {code} form; choose one of {', '.join(POEM_FORMS[code])}")
    if code == "zh":
        return f"写一首{form}，题目：{topic}"
    return f"Write a sonnet about {topic}." if form == "sonnet" else f"Write a free verse poem about {topic}."


def default_poem_adapter(state: AppState, lang: Any) -> str:
    """This base's poem adapter for the language (task poem_zh / poem_en), or "base"."""
    task = f"poem_{poem_lang(lang)}"
    return next((a.name for a in state.adapters("causal") if a.task == task), BASE)


def form_report(poem: str, form: str, lang: Any) -> dict:
    """harness.metrics.form_check plus a one-line summary for the UI."""
    from harness.metrics import form_check
    code = poem_lang(lang)
    if not poem.strip():
        return {"ok": False, "lines": 0, "chars_per_line": [], "problem": "no poem yet", "summary": "—"}
    check = form_check(poem, form, code)
    exp = f"{check.get('expected_lines')} lines" + (
        f" × {check['expected_chars']} characters" if check.get("expected_chars") else "")
    if check["ok"]:
        summary = f"**Form check: OK.** {form}: {check['lines']} lines, as expected ({exp})"
    else:
        summary = f"**Form check: not right.** {form}: {check['problem']} (expected {exp})"
    return {**check, "summary": summary}


def poem_stream(state: AppState, topic: Any, lang: Any, form: Any, adapter: str | None = None,
                sampling: Sampling = Sampling(max_new_tokens=160), session: str = "", enforce_form: bool = True
                ) -> Iterator[tuple[str, dict, dict]]:
    """Write a poem, streamed: yields (poem so far, form check, transparency info).

    enforce_form: for 五言/七言 绝句/律诗, decode under the form constraint (harness/forms.py): the model picks
    every character but cannot break the lines × characters; off, the model alone decides the shape."""
    from harness.metrics import FIXED_FORMS
    topic = require_text(topic, "topic", state.limits.topic_chars, "give a title or topic, e.g. 春夜 or the sea")
    form = str(form or "").strip()
    instruction = poem_instruction(topic, lang, form)
    lm = state.get_model()
    name = state.resolve_adapter(adapter, "causal")
    prompt = lm.render_instruction(instruction)
    enforced = form if enforce_form and form in FIXED_FORMS else ""
    extra = {"form_constrained": bool(enforced)}
    poem = ""
    for poem, stats in stream_into(state, prompt, name, sampling, session, enforced):
        yield poem, {"summary": "…writing"}, run_info(lm, name, prompt, stats, sampling, **extra)
    yield poem.strip(), form_report(poem, form, lang), run_info(lm, name, prompt, stats, sampling, **extra)

