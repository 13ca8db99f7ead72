"""The Poem tab: a poem streamed in a chosen language and form, with the form check in plain words.

    from harness.app.state import AppState
    from harness.app.poem import poem_stream
    for poem, check, info in poem_stream(AppState(), "春夜", "中文", "五言绝句"):
        pass
    check["summary"]     # "Form check: OK. 4 lines × 5 characters, as a 五言绝句 needs."

Under the form constraint (绝句/律诗) max new tokens is derived from the form (form_token_budget), so the poem
always ends complete; a free poem is cut at a character boundary (never a broken "�"). A poem adapter trained on
another language than the one asked for, or a poem in the wrong language, gets a warning.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from harness.app.state import BASE, LANGS, POEM_FORMS, AppState, Sampling, chat_stream, require_text, run_info
from harness.errors import UserError

LANG_NAMES = {"zh": "Chinese", "en": "English"}


def poem_lang(lang: Any) -> str:
    value = str(lang or "").strip()
    code = LANGS.get(value, value.lower())
    code = {"chinese": "zh", "english": "en"}.get(code, code)
    if code not in POEM_FORMS:
        raise UserError(f"language must be one of {', '.join(LANGS)} (or zh / en), got {lang!r}")
    return code


def poem_forms(lang: Any) -> tuple[str, ...]:
    return POEM_FORMS[poem_lang(lang)]


def has_fixed_form(form: Any) -> bool:
    """Can this form be kept while decoding (五言/七言 绝句/律诗)? The checkbox shows only then."""
    from harness.metrics import FIXED_FORMS
    return str(form or "") in FIXED_FORMS


def has_rules(lang: Any, form: Any, enforce: Any = True) -> bool:
    """Are the Rhyme (平水韵) and Tone (平仄) boxes offered? Only for a Chinese 近体 form (绝句/律诗) decoded under
    the form constraint: rhyme and tone are kept by extending that constraint (harness/forms.py)."""
    try:
        code = poem_lang(lang)
    except UserError:
        return False
    return code == "zh" and has_fixed_form(form) and bool(enforce)


def rule_options(lang: Any, form: Any, enforce: Any = True, rhyme: Any = False, tone: Any = False,
                 rhyme_group: Any = "") -> dict:
    """The rhyme/tone decoding options of a poem request, as GenerationConfig takes them ({rhyme, rhyme_group,
    tone}, only those set). A rhyme group implies rhyme; an unknown group is the library's UserError (it names
    the nearest groups). {} where the boxes are not offered (has_rules): a hidden box's value is ignored."""
    if not has_rules(lang, form, enforce):
        return {}
    group = str(rhyme_group or "").strip()
    opts: dict = {}
    if group:
        from harness.rules import resolve_group
        opts.update(rhyme=True, rhyme_group=resolve_group(group))
    elif rhyme:
        opts["rhyme"] = True
    if tone:
        opts["tone"] = True
    return opts


def rules_words(opts: dict) -> str:
    """What the decoding kept besides the form, in words ("" when nothing): "rhyme in 东, tone"."""
    parts = []
    if opts.get("rhyme"):
        parts.append(f"rhyme in {opts['rhyme_group']}" if opts.get("rhyme_group") else "rhyme")
    if opts.get("tone"):
        parts.append("tone (平仄)")
    return ", ".join(parts)


@functools.lru_cache(maxsize=16)
def explained(poem: str, form: str, lang: str) -> dict:
    """harness.rules.explain_poem, kept for the last few poems: the tab's form report and its rule-check line
    read the same result (callers never change the dict)."""
    from harness.rules import explain_poem
    return explain_poem(poem, form, lang)


def rules_report(poem: str, form: str, lang: Any, opts: dict | None = None) -> tuple[str, dict]:
    """The rule checks of a poem (harness.rules.explain_poem: the same checks as the leaderboard's poem rows) as
    one Markdown line for the tab, and the fields: rhyme (平水韵 group), tone (平仄 template), a repeated rhyme
    character, characters not in the table (counted, never guessed). ("", {}) where no rule applies."""
    code = poem_lang(lang)
    if code != "zh" or not has_fixed_form(form) or not str(poem or "").strip():
        return "", {}
    r = explained(poem, form, code)
    fields = {k: r[k] for k in ("rhyme_ok", "rhyme_group", "tone_ok", "tone_rate", "tone_template", "repeated_rhyme",
                                "unknown_chars", "unknown_list")}
    kept = rules_words(opts or {})
    head = "**Rule check (平水韵, 平仄):** " + (f"decoded keeping {kept}. " if kept else "")
    if r["rhyme_group"] == "" and r["tone_ok"] is None and r["unknown_chars"] is None:
        return head + r["rules_summary"] + ".", fields            # not in its form: nothing was checked
    word = {True: "OK", False: "no", None: "unconfirmed"}
    rhyme = f"rhyme: {word[r['rhyme_ok']]}" + (f" ({r['rhyme_group']})" if r["rhyme_group"] else "")
    tone = f"tone: {word[r['tone_ok']]}" + (f" ({r['tone_rate']:.0%} of the 平仄 positions match {r['tone_template']})"
                                           if r["tone_rate"] is not None else "")
    repeated = f"repeated rhyme character: {'yes' if r['repeated_rhyme'] else 'none'}"
    unknown = "characters not in the rhyme table: " + (f"{r['unknown_chars']} ({r['unknown_list']})"
                                                       if r["unknown_chars"] else "none")
    return f"{head}{rhyme} · {tone} · {repeated} · {unknown}. Details: {r['rules_summary']}.", fields


def poem_instruction(topic: str, lang: Any, form: str) -> str:
    """The request as the project's eval sets phrase it (so a poem adapter sees its training format)."""
    code = poem_lang(lang)
    if form not in POEM_FORMS[code]:
        raise UserError(f"form {form!r} is not a {code} form; choose one of {', '.join(POEM_FORMS[code])}")
    if code == "zh":
        return f"写一首{form}，题目：{topic}"
    return f"Write a sonnet about {topic}." if form == "sonnet" else f"Write a free verse poem about {topic}."


def adapter_lang(info) -> str:
    """The language a poem adapter writes ("" if it is not a poem adapter)."""
    lang = getattr(info, "lang", "") or ""
    if not lang and str(info.task).startswith("poem_"):
        lang = info.task.split("_", 1)[1]
    return lang if (lang or str(info.task).startswith("poem")) else ""


def default_poem_adapter(state: AppState, lang: Any) -> str:
    """This base's poem adapter for the language, or "base"."""
    code = poem_lang(lang)
    return next((a.name for a in state.adapters("causal") if adapter_lang(a) == code), BASE)


def language_warning(state: AppState, adapter: str | None, lang: Any) -> str:
    """A warning when the chosen adapter was trained to write poems in another language ("" otherwise)."""
    code = poem_lang(lang)
    name = (adapter or "").strip()
    info = next((a for a in state.adapters("causal") if a.name == name), None)
    if info is None:
        return ""
    trained = adapter_lang(info)
    if trained and trained != code:
        return (f"⚠ `{name}` was trained on {LANG_NAMES.get(trained, trained)} poems; you asked for a "
                f"{LANG_NAMES[code]} poem. Pick a {LANG_NAMES[code]} poem adapter or the base.")
    return ""


def output_warning(poem: str, lang: Any) -> str:
    from harness.io import has_cjk
    code = poem_lang(lang)
    if not poem.strip():
        return ""
    if code == "zh" and not has_cjk(poem):
        return "⚠ the poem is not in Chinese: this model or adapter did not follow the language asked for."
    if code == "en" and has_cjk(poem):
        return "⚠ the poem is not in English: this model or adapter wrote Chinese characters."
    return ""


def form_token_budget(tok, form: str) -> int:
    """Max new tokens that always fit a poem in `form` under the constraint: every character at most 3 tokens
    (a 3-byte UTF-8 ideograph split byte by byte), each line's forced punctuation, and the end of text."""
    from harness.metrics import FIXED_FORMS
    lines, chars = FIXED_FORMS[form]
    punct = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in ("，\n", "。\n", "。"))
    return lines * (chars * 3 + punct) + 2


def form_report(poem: str, form: str, lang: Any) -> dict:
    """harness.metrics.form_check plus a one-line summary in plain words for the UI."""
    from harness.metrics import form_check
    code = poem_lang(lang)
    if not poem.strip():
        return {"ok": False, "lines": 0, "chars_per_line": [], "problem": "no poem yet", "summary": "—"}
    check = form_check(poem, form, code)
    lines = check["lines"]
    if form == "free verse":
        summary = f"**Form check: OK.** Free verse: {lines} line{'s' if lines != 1 else ''} (any shape is fine)."
        return {**check, "summary": summary}
    need = f"{check.get('expected_lines')} lines" + (
        f" × {check['expected_chars']} characters" if check.get("expected_chars") else "")
    if check["ok"]:
        summary = f"**Form check: OK.** {need}, as a {form} needs."
    else:
        summary = f"**Form check: not a {form}.** {check['problem']}; a {form} has {need}."
    rules = rules_summary(poem, form, code)       # the rule checks have their own line in the tab (rules_report)
    return {**check, "summary": summary, "rules": rules}


def rules_summary(poem: str, form: str, lang: str) -> str:
    """harness.rules' one sentence on rhyme and tones (平水韵, 平仄) or a sonnet's rhyme scheme; "" when no rule
    applies to the form or the checks cannot run."""
    try:
        text = str(explained(poem, form, lang).get("rules_summary") or "").strip().rstrip(".")
    except Exception:  # noqa: BLE001 - the rule checks are extra information; the form check stands alone
        return ""
    return "" if text.startswith("no rule checks") else text


def poem_stream(state: AppState, topic: Any, lang: Any, form: Any, adapter: str | None = None,
                sampling: Sampling = Sampling(max_new_tokens=160), session: str = "", enforce_form: bool = True,
                rhyme: bool = False, tone: bool = False, rhyme_group: Any = ""
                ) -> Iterator[tuple[str, dict, dict]]:
    """Write a poem, streamed: yields (poem so far, form check, transparency info).

    enforce_form: for 五言/七言 绝句/律诗, decode under the form constraint (harness/forms.py) with max new
    tokens derived from the form; off (or any other form), the model alone decides the shape.
    rhyme / tone / rhyme_group: with the form constraint on a Chinese 近体 form, also keep the 平水韵 rhyme (in
    the group given, or the one the first rhyme line sets) and the 平仄 template (rule_options); the report's
    "rules_line" gives the rule checks (rules_report) and "rule_check" their fields."""
    topic = require_text(topic, "topic", state.limits.topic_chars, "give a title or topic, e.g. 春夜 or the sea")
    form = str(form or "").strip()
    instruction = poem_instruction(topic, lang, form)
    opts = rule_options(lang, form, enforce_form, rhyme, tone, rhyme_group)      # an unknown group: UserError
    lm = state.get_model()
    name = state.resolve_adapter(adapter, "causal")
    enforced = form if enforce_form and has_fixed_form(form) else ""
    budget = form_token_budget(lm.tokenizer, enforced) if enforced else None
    warning = language_warning(state, name, lang)
    extra = {"form_constrained": bool(enforced), "max_new_tokens_used": budget or sampling.max_new_tokens,
             **({"rules_constrained": rules_words(opts)} if opts else {})}
    poem, stats, prompt = "", None, ""
    for poem, stats, prompt, engine, notice in chat_stream(state, [{"role": "user", "content": instruction}], "", name,
                                                           sampling, session, enforced, budget, instruction=True,
                                                           rules=opts):
        extra.update(engine=engine, **({"engine_notice": notice} if notice else {}))
        yield poem, {"summary": "…writing", "warning": warning}, run_info(lm, name, prompt, stats, sampling, **extra)
    report = form_report(poem, form, lang)
    report["rules_line"], report["rule_check"] = rules_report(poem, form, lang, opts)
    report["warning"] = " ".join(w for w in (warning, output_warning(poem, lang)) if w)
    if stats is not None and stats.finish_reason == "length" and not enforced:
        report["summary"] += f" (stopped at max new tokens, {sampling.max_new_tokens}: raise it for a longer poem)"
    yield poem.strip(), report, run_info(lm, name, prompt, stats, sampling, **extra)


def poem_job(state: AppState, session: str, topic: Any, lang: Any, form: Any, adapter: str | None = None,
             sampling: Sampling = Sampling(max_new_tokens=160), enforce_form: bool = True, rhyme: bool = False,
             tone: bool = False, rhyme_group: Any = "") -> Iterator[tuple[str, dict, dict]]:
    """poem_stream as one request of the generation queue: the first update says how many requests are ahead.
    The request is checked (topic, form, rhyme group) before it queues, so a mistake is said at once."""
    rule_options(lang, form, enforce_form, rhyme, tone, rhyme_group)
    token = state.enqueue("poem", session)
    try:
        n = state.ahead(token)
        if n:
            yield "", {"summary": f"⏳ waiting for {n} request{'s' if n != 1 else ''} ahead"}, {}
        state.start_job(token)
        yield from poem_stream(state, topic, lang, form, adapter, sampling, session, enforce_form, rhyme, tone,
                               rhyme_group)
    finally:
        state.finish_job(token)
