"""The Poem tab: a poem streamed in a chosen language and form, with the form check in plain words.

    from harness.app.state import AppState
    from harness.app.poem import poem_stream
    for poem, check, info in poem_stream(AppState(), "春夜", "中文", "五言绝句"):
        pass
    check["summary"]     # "Form check: OK. 4 lines × 5 characters, as a 五言绝句 needs."

Under the form constraint (绝句/律诗: on llama.cpp a GBNF grammar, on transformers harness/forms.py) max new tokens
is derived from the form (form_token_budget), so the poem always ends complete; on llama.cpp a sonnet keeps its 14
lines by a grammar too; a free poem is cut at a character boundary (never a broken "�"). A poem adapter trained on
another language than the one asked for, or a poem in the wrong language, gets a warning.
"""

import functools
from collections.abc import Iterator
from typing import Any

from harness.app.state import (BASE, LANGS, POEM_FORMS, AppState, Sampling, chat_stream, form_token_budget,  # noqa: F401
                               require_text, run_info, shown_model)
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
    if code == "en" and form == "sonnet" and str(poem or "").strip():
        return sonnet_report(poem)
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


def sonnet_report(poem: str) -> tuple[str, dict]:
    """A sonnet's rule checks (harness.rules: CMUdict rhymes and syllables, as the leaderboard's poem rows) as
    one Markdown line, and the fields."""
    try:
        r = explained(poem, "sonnet", "en")
    except UserError as e:                # CMUdict missing: said, the form check stands alone
        return f"**Rule check (sonnet):** not available: {e}.", {}
    fields = {k: r.get(k) for k in ("sonnet_lines_ok", "sonnet_scheme_ok", "sonnet_scheme", "sonnet_rhyme_rate",
                                    "syllables_ok_rate", "oov_words")}
    word = {True: "OK", False: "no", None: "unconfirmed"}
    lines = len([x for x in poem.splitlines() if x.strip()])
    parts = [f"lines: {word[r.get('sonnet_lines_ok')]} ({lines} of 14)",
             f"rhyme scheme ABAB CDCD EFEF GG: {word[r.get('sonnet_scheme_ok')]}"
             + (f" (found {r['sonnet_scheme']})" if r.get("sonnet_scheme") else "")]
    if r.get("syllables_ok_rate") is not None:
        parts.append(f"syllables: {r['syllables_ok_rate']:.0%} of the lines have 9-11 (iambic pentameter has 10)")
    parts.append(f"words not in CMUdict: {r.get('oov_words') or 'none'}")
    details = str(r.get("rules_summary") or "").strip().rstrip(".")
    return ("**Rule check (sonnet, CMUdict):** " + " · ".join(parts) + "." + (f" Details: {details}." if details else ""),
            fields)


SONNET_MAX_NEW_TOKENS = 320      # 14 lines of ~10 words: ~200 tokens with punctuation, with room to spare
POEM_MAX_NEW_TOKENS = 160        # a free-verse poem (the Chinese forms derive theirs from the form)


def default_max_new_tokens(form: Any, limit: int) -> int:
    """The Max new tokens slider's value for a form: enough for a whole sonnet, within the app's limit."""
    return min(SONNET_MAX_NEW_TOKENS if str(form or "") == "sonnet" else POEM_MAX_NEW_TOKENS, limit)


def examples_by_lang(examples: list[str]) -> dict[str, list[str]]:
    """The task's example titles split by language (Chinese characters or not), so a language offers only its own."""
    from harness.io import has_cjk
    return {"zh": [x for x in examples if has_cjk(x)], "en": [x for x in examples if not has_cjk(x)]}


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
        return (f"⚠ `{name}` was trained on {LANG_NAMES.get(trained, trained)} poems; you asked for "
                f"{article(LANG_NAMES[code])} {LANG_NAMES[code]} poem. Pick {article(LANG_NAMES[code])} {LANG_NAMES[code]} poem adapter or "
                "the base.")
    return ""


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


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
                sampling: Sampling = Sampling(max_new_tokens=POEM_MAX_NEW_TOKENS), session: str = "",
                enforce_form: bool = True, rhyme: bool = False, tone: bool = False, rhyme_group: Any = ""
                ) -> Iterator[tuple[str, dict, dict]]:
    """Write a poem, streamed: yields (poem so far, form check, transparency info).

    enforce_form: for 五言/七言 绝句/律诗, decode under the form constraint (llama.cpp: its GBNF grammar;
    transformers: harness/forms.py) with max new tokens derived from the form; a sonnet on llama.cpp under its
    grammar (14 non-empty lines; on transformers it is written free, and the notice says so); off (or any other
    form), the model alone decides the shape.
    rhyme / tone / rhyme_group: with the form constraint on a Chinese 近体 form, also keep the 平水韵 rhyme (in
    the group given, or the one the first rhyme line sets) and the 平仄 template (rule_options); the report's
    "rules_line" gives the rule checks (rules_report) and "rule_check" their fields."""
    topic = require_text(topic, "topic", state.limits.topic_chars, "give a title or topic, e.g. 春夜 or the sea")
    form = str(form or "").strip()
    instruction = poem_instruction(topic, lang, form)
    opts = rule_options(lang, form, enforce_form, rhyme, tone, rhyme_group)      # an unknown group: UserError
    name = state.resolve_adapter(adapter, "causal")
    enforced = form if enforce_form and has_fixed_form(form) else ""
    if form == "sonnet" and enforce_form and state.engine == "llama.cpp":
        enforced = "sonnet"     # 14 lines as a grammar on llama.cpp (transformers has no sonnet constraint)
    warning = language_warning(state, name, lang)
    extra = {"form_constrained": bool(enforced), "max_new_tokens_used": sampling.max_new_tokens,
             **({"rules_constrained": rules_words(opts)} if opts else {})}
    poem, stats, prompt = "", None, ""
    # under the form constraint chat_stream derives max new tokens from the form, with the engine's tokenizer
    # (llama.cpp: the GBNF grammar; transformers: FormConstraint); stats.extra says how many
    for poem, stats, prompt, engine, notice in chat_stream(state, [{"role": "user", "content": instruction}], "", name,
                                                           sampling, session, enforced, None, instruction=True,
                                                           rules=opts):
        extra.update(engine=engine, **({"engine_notice": notice} if notice else {}))
        extra["form_constrained"] = bool(enforced) and (enforced != "sonnet" or engine == "llama.cpp")
        extra["max_new_tokens_used"] = stats.extra.get("max_new_tokens_used", sampling.max_new_tokens)
        lm = shown_model(state)
        yield poem, {"summary": "…writing", "warning": warning}, run_info(lm, name, prompt, stats, sampling, **extra)
    report = form_report(poem, form, lang)
    report["rules_line"], report["rule_check"] = rules_report(poem, form, lang, opts)
    report["warning"] = " ".join(w for w in (warning, output_warning(poem, lang)) if w)
    if stats is not None and stats.finish_reason == "length" and not has_fixed_form(enforced):
        report["summary"] += f" (stopped at max new tokens, {sampling.max_new_tokens}: raise it for a longer poem)"
    yield poem.strip(), report, run_info(shown_model(state), name, prompt, stats, sampling, **extra)


def poem_job(state: AppState, session: str, topic: Any, lang: Any, form: Any, adapter: str | None = None,
             sampling: Sampling = Sampling(max_new_tokens=POEM_MAX_NEW_TOKENS), enforce_form: bool = True,
             rhyme: bool = False, tone: bool = False, rhyme_group: Any = "") -> Iterator[tuple[str, dict, dict]]:
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


# ---------------------------------------------------------------- the tab's layout and events

def poem_hint(state: AppState) -> str:
    names = [f"`{default_poem_adapter(state, lang)}` ({label})" for label, lang in LANGS.items()
             if default_poem_adapter(state, lang) != BASE]
    return ("Poem adapters for this base: " + ", ".join(names) + " — pick one in the adapter picker above."
            if names else "No poem adapter for this base yet: the base model writes the poems.")


def language_changed(state: AppState, language: Any) -> dict:
    """What changes with the language: the forms offered, the first form, whether the form box shows, the max new
    tokens for that form, and which example titles show."""
    code = poem_lang(language)
    forms = poem_forms(language)
    return {"forms": list(forms), "form": forms[0], "enforce_visible": has_fixed_form(forms[0]),
            "max_new_tokens": default_max_new_tokens(forms[0], state.limits.max_new_tokens),
            "examples_visible": {lang: lang == code for lang in POEM_FORMS}}


def write_updates(state: AppState, session: str, topic: Any, language: Any, form: Any, adapter: str | None,
                  sampling: Sampling, enforce: Any = True, rhyme: Any = False, tone: Any = False,
                  group: Any = "") -> Iterator[tuple]:
    """poem_job as the tab shows it: yields (poem, form check, rule line, details, prompt or None, info, warning,
    notice)."""
    for poem, report, info in poem_job(state, session, topic, language, form, adapter, sampling,
                                       bool(enforce) if enforce is not None else True, bool(rhyme), bool(tone),
                                       group or ""):
        info = dict(info)
        rendered = info.pop("prompt", None)
        shown = {k: v for k, v in report.items() if k not in ("summary", "warning", "rules_line")} or None
        says = info.get("engine_notice", "")
        yield (poem, report["summary"], report.get("rules_line", ""), shown, rendered, info,
               report.get("warning", ""), f"ℹ {says}" if says else "")


def build(state: AppState, ui: dict) -> None:
    """The Poem tab (the adapter picker is the header's); adds poem_hint and poem_event to ui."""
    import gradio as gr

    from harness.app.state import task_hints
    from harness.app.widgets import GENERATE, guard, paced, sampling_controls, session, stopper, transparency
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
            with gr.Row(elem_id="poem-rules-row"):
                rhyme = gr.Checkbox(value=False, label="Rhyme (平水韵)", elem_id="poem-rhyme",
                                    info="the even lines end in one rhyme group")
                tone = gr.Checkbox(value=False, label="Tone (平仄)", elem_id="poem-tone",
                                   info="the 平仄 template, 一三五不论")
                group = gr.Textbox("", label="Rhyme group (optional, e.g. 东)", max_lines=1, elem_id="poem-rhyme-group",
                                   placeholder="empty: the first rhyme line sets it")
            with gr.Accordion("Sampling", open=False):
                sampling = sampling_controls(Sampling(temperature=0.7, max_new_tokens=default_max_new_tokens(
                    "五言绝句", state.limits.max_new_tokens)), "poem", state.limits)
            with gr.Row():
                write = gr.Button("Write", variant="primary", elem_id="poem-button")
                stop = gr.Button("Stop", variant="stop", elem_id="poem-stop")
        with gr.Column(scale=3):
            warning = gr.Markdown(elem_id="poem-warning")
            out = gr.Textbox(label="Poem", lines=10, max_lines=30, interactive=False, elem_id="poem-output")
            check = gr.Markdown("**Form check:** —", elem_id="poem-check")
            rules = gr.Markdown(elem_id="poem-rules")
            details = gr.JSON(label="Lines × characters", elem_id="poem-details")
    by_lang = examples_by_lang(task_hints("poem").get("examples", []))
    example_boxes = {}
    for code, titles in by_lang.items():
        with gr.Column(visible=code == "zh", elem_id=f"poem-examples-{code}") as box:
            if titles:
                gr.Examples([[x] for x in titles], inputs=[topic], label="Example titles")
        example_boxes[code] = box
    prompt, stats = transparency("poem")

    def forms_fn(language):
        c = language_changed(state, language)
        return (gr.update(choices=c["forms"], value=c["form"]), gr.update(visible=c["enforce_visible"]),
                gr.update(value=c["max_new_tokens"]),
                *[gr.update(visible=c["examples_visible"][code]) for code in example_boxes])

    def form_fn(form_):
        return (gr.update(visible=has_fixed_form(form_)),
                gr.update(value=default_max_new_tokens(form_, state.limits.max_new_tokens)))

    def rules_shown(language, form_, enforce_):
        """The Rhyme/Tone boxes and the group box: only for a Chinese 近体 form under the form constraint."""
        return [gr.update(visible=has_rules(language, form_, enforce_))] * 3

    def warn_fn(adapter, language):
        return language_warning(state, adapter, language)

    def write_fn(topic_, language, form_, adapter, temperature, top_p, max_new_tokens, seed, repetition_penalty,
                 enforce_, rhyme_=False, tone_=False, group_="", request: gr.Request = None):
        sampling_ = state.sampling(temperature, top_p, max_new_tokens, seed, repetition_penalty)
        for shown in write_updates(state, session(request), topic_, language, form_, adapter, sampling_, enforce_,
                                   rhyme_, tone_, group_):
            yield (*shown[:4], gr.skip() if shown[4] is None else shown[4], *shown[5:])

    lang.change(forms_fn, lang, [form, enforce, sampling[2], *example_boxes.values()], queue=False,
                api_visibility="private")
    form.change(form_fn, form, [enforce, sampling[2]], queue=False, api_visibility="private")
    gr.on([lang.change, form.change, enforce.change], rules_shown, [lang, form, enforce], [rhyme, tone, group],
          queue=False, api_visibility="private")
    gr.on([lang.change, ui["adapter_dd"].change], warn_fn, [ui["adapter_dd"], lang], warning, queue=False,
          api_visibility="private")
    notice = gr.Markdown(elem_id="poem-notice", elem_classes="notice")
    ev = write.click(guard(paced(write_fn), 8), [topic, lang, form, ui["adapter_dd"], *sampling, enforce, rhyme, tone,
                                                 group],
                     [out, check, rules, details, prompt, stats, warning, notice], show_progress="minimal",
                     api_visibility="private", **GENERATE)
    stop.click(stopper(state), None, None, queue=False, api_visibility="private")

    def api_poem(topic, language, form, adapter, temperature, top_p, max_new_tokens, seed, repetition_penalty,
                 enforce_form=True, rhyme=False, tone=False, rhyme_group="", request: gr.Request = None):
        sampling_ = state.sampling(temperature, top_p, max_new_tokens, seed, repetition_penalty)
        for poem, report, rules_line, details_, rendered, info, _, _ in write_updates(
                state, session(request), topic, language, form, adapter, sampling_, enforce_form, rhyme, tone,
                rhyme_group):
            if rules_line and isinstance(details_, dict):          # API clients get the rule line in the details
                details_ = {**details_, "rules_line": rules_line}
            yield poem, report, details_, gr.skip() if rendered is None else rendered, info

    api = gr.Button(visible=False)
    api.click(guard(api_poem), [topic, lang, form, ui["adapter_dd"], *sampling, enforce, rhyme, tone, group],
              [out, check, details, prompt, stats], api_name="poem", **GENERATE)
    ui.update(poem_hint=hint, poem_event=ev)
