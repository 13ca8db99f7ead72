"""The poem constraints as GBNF grammars for llama.cpp: form, rhyme and tone, built from harness.rules' tables.

    from harness.grammars import gbnf
    text = gbnf("五言绝句", rhyme=True, tone=True)       # any 平声 group, any of the four 平仄 templates
    text = gbnf("七言律诗", rhyme_group="东")             # rhyme in 东
    text = gbnf("sonnet")                                 # 14 non-empty lines of <= 60 characters

    python -m harness.grammars 五言绝句 --rhyme --tone     # print one grammar (and its size)

What a grammar says, position by position, exactly as harness.forms.FormConstraint decodes:
- form: N lines of M characters from the poem character set (harness/poem_chars_zh.txt), each line followed by
  "，\\n" (odd lines) or "。\\n" (even lines), the last by "。" and then the end of the text.
- rhyme: the last character of every even line (and of line 1 with rhyme_first_line) is a 平声 character of one
  平水韵 group: the given group, or any group, the same one throughout (the grammar branches per group at the
  first rhyme position). Not said: that a rhyme character is not used twice (a grammar cannot remember a
  character without one branch per character); harness.rules' checks on the output still report it.
- tone: the constrained positions (一三五不论, harness.rules.constrained_positions) follow one of the four
  templates (or the named one): 平 positions take characters that can be 平, 仄 positions characters that can be
  仄 (a 多音字 fits both, as the checks count it); characters not in the rhyme table are never allowed there.
- sonnet: 14 non-empty lines of at most 60 characters (a pentameter line is 40-55). Its rhyme (ABAB CDCD EFEF GG) and metre are not said: they are properties of
  pronunciations (CMUdict), not of characters; a grammar would need one branch per rhyming word family for every
  pair of lines. The rule checks measure them on the output.

Grammars are cached in memory and on disk (<cache>/grammars/<key>.gbnf, the key includes the rhyme table's and
the character set's versions); a tone grammar with any rhyme group is ~0.3 MB and takes ~1 s to build.
Bad options raise the same one-sentence UserErrors as GenerationConfig's form options.
"""
from __future__ import annotations

import functools
import hashlib
import json

from harness.errors import UserError
from harness.metrics import FIXED_FORMS

GRAMMAR_VERSION = 2
SONNET_LINES = 14
PUNCT_ODD, PUNCT_EVEN, PUNCT_LAST = "，\n", "。\n", "。"


def _ranges(cps) -> str:
    """A GBNF character class body for a set of code points: consecutive runs written as ranges."""
    out: list[list[int]] = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in out)


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def check_options(form: str, rhyme: bool = False, rhyme_group: str | None = None, tone: bool | str = False,
                  rhyme_first_line: bool = False) -> tuple[str, str | None, bool | str]:
    """(form, resolved rhyme group or None, tone) or the form options' one-sentence UserError."""
    f = (form or "").strip()
    if f.lower() == "sonnet":
        if rhyme or rhyme_group or tone or rhyme_first_line:
            raise UserError("rhyme and tone constrain a classical Chinese form (五言绝句 ...); a sonnet's grammar "
                            "says only its 14 lines")
        return "sonnet", None, False
    if f not in FIXED_FORMS:
        if not f and (rhyme or rhyme_group or tone):
            raise UserError("--rhyme, --rhyme-group and --tone constrain a classical form: add --form, e.g. "
                            "--form 五言绝句")
        raise UserError(f"form-constrained decoding supports {', '.join(FIXED_FORMS)}; got {form!r}")
    from harness import rules

    group = rules.resolve_group(rhyme_group) if rhyme_group else None
    if isinstance(tone, str) and tone and tone not in rules.tone_templates(f):
        raise UserError(f"no tone template {tone!r} for {f}; templates: {', '.join(rules.tone_templates(f))}")
    return f, group, tone


def gbnf(form: str, rhyme: bool = False, rhyme_group: str | None = None, tone: bool | str = False,
         rhyme_first_line: bool = False) -> str:
    """The GBNF grammar (root rule `root`) of a form under the constraints (module docstring); cached."""
    f, group, tone = check_options(form, rhyme, rhyme_group, tone, rhyme_first_line)
    return _cached(f, bool(rhyme or group), group, tone or False, bool(rhyme_first_line and (rhyme or group)))


def cache_key(form: str, rhyme: bool, group: str | None, tone: bool | str, first_line: bool) -> str:
    if form == "sonnet":
        versions = ""
    else:
        from harness.forms import charset
        from harness.rules import table_version
        versions = f"{table_version()}-{charset()[0]}"
    raw = json.dumps([GRAMMAR_VERSION, form, rhyme, group, tone, first_line, versions], ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _cached(form: str, rhyme: bool, group: str | None, tone: bool | str, first_line: bool) -> str:
    from harness.paths import cache_dir

    path = cache_dir() / "grammars" / f"{cache_key(form, rhyme, group, tone, first_line)}.gbnf"
    try:
        text = path.read_text(encoding="utf-8")
        if text.startswith("root ::="):
            return text
    except (OSError, UnicodeDecodeError):
        pass
    text = sonnet() if form == "sonnet" else build(form, rhyme, group, tone, first_line)
    try:
        from harness.io import atomic_write
        atomic_write(path, text)
    except (OSError, UserError):      # a read-only cache: the grammar is still right, only not kept
        pass
    return text


def sonnet() -> str:
    line = "line ::= [^\\n\\t ] [^\\n]{0,59}"       # <= 60 characters: 14 lines fit the Poem tab's 320 tokens
    return "root ::= " + " ".join(["line \"\\n\""] * (SONNET_LINES - 1)) + " line \"\\n\"?\n" + line + "\n"


def _classes(form: str) -> dict[str, set[int]]:
    """Code point sets: c (the poem character set), p / z (those that can be 平 / 仄), r-<group> (a 平声 group's
    characters in the set)."""
    from harness import rules
    from harness.forms import charset

    table = rules.rhyme_table()
    allowed = charset()[1]
    chars = {int(c) for c in allowed.nonzero()[0]}
    out: dict[str, set[int]] = {"c": chars, "p": set(), "z": set()}
    ping = [g for g, info in table.groups.items() if info.level == rules.PING]
    for g in ping:
        out[f"r{ping.index(g)}"] = set()
    for ch, gs in table.chars.items():
        o = ord(ch)
        if len(ch) != 1 or o not in chars:
            continue
        for g in gs:
            level = table.groups[g].level
            out["p" if level == rules.PING else "z"].add(o)
            if g in ping:
                out[f"r{ping.index(g)}"].add(o)
    return out


def build(form: str, rhyme: bool, group: str | None, tone: bool | str, first_line: bool) -> str:
    """The grammar's text (uncached; gbnf() caches it)."""
    from harness import rules

    lines, chars = FIXED_FORMS[form]
    table = rules.rhyme_table()
    ping = [g for g, info in table.groups.items() if info.level == rules.PING]
    constrained = set(rules.constrained_positions(chars))
    rhyme_at = set(rules.rhyme_lines(form, first_line)) if rhyme else set()
    if tone:
        templates = rules.tone_templates(form)
        pats = [templates[tone]] if isinstance(tone, str) else list(templates.values())
    else:
        pats = [None]
    seqs = []             # one symbol list per template: class names, "R" (the rhyme class) and literals
    for pat in pats:
        seq: list[str] = []
        ok = True
        for li in range(lines):
            for p in range(chars):
                if li in rhyme_at and p == chars - 1:
                    if pat is not None and pat[li][p] != rules.PING:
                        ok = False          # this template has 仄 where the rhyme must be 平
                    seq.append("R")
                elif pat is not None and p in constrained:
                    seq.append("p" if pat[li][p] == rules.PING else "z")
                else:
                    seq.append("c")
            seq.append(_literal(PUNCT_LAST if li == lines - 1 else PUNCT_ODD if li % 2 == 0 else PUNCT_EVEN))
        if ok:
            seqs.append(seq)
    if not seqs:
        raise UserError(f"the tone template {tone!r} of {form} does not rhyme on line 1: drop rhyme_first_line or "
                        "choose a 首句入韵 template")
    groups = [group] if group else ping if rhyme else []
    rules_out = []
    alts = []
    for t, seq in enumerate(seqs):
        name = f"t{t}"
        alts.append(name)
        if not groups:
            rules_out.append(f"{name} ::= " + " ".join(seq))
            continue
        k = seq.index("R")
        branches = []
        for g in groups:
            gname = f"{name}-r{ping.index(g)}"
            branches.append(gname)
            rules_out.append(f"{gname} ::= " + " ".join(f"r{ping.index(g)}" if s == "R" else s for s in seq[k:]))
        rules_out.append(f"{name} ::= " + " ".join(seq[:k]) + " ( " + " | ".join(branches) + " )")
    classes = _classes(form)
    used = {s for line in rules_out for s in line.split()}
    body = ["root ::= " + " | ".join(alts), *rules_out]
    for cname in ("c", "p", "z", *(f"r{i}" for i in range(len(ping)))):
        if cname in used:
            if not classes[cname]:
                raise UserError(f"the rhyme group {ping[int(cname[1:])]} has no character in the poem character "
                                "set: choose another group")
            body.append(f"{cname} ::= [{_ranges(classes[cname])}]")
    return "\n".join(body) + "\n"


def main(argv: list[str] | None = None) -> int:
    """python -m harness.grammars FORM [--rhyme] [--rhyme-group G] [--tone [TEMPLATE]] [--first-line]"""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m harness.grammars", description=main.__doc__)
    p.add_argument("form")
    p.add_argument("--rhyme", action="store_true")
    p.add_argument("--rhyme-group", default=None)
    p.add_argument("--tone", nargs="?", const=True, default=False)
    p.add_argument("--first-line", action="store_true")
    a = p.parse_args(argv)
    try:
        text = gbnf(a.form, a.rhyme, a.rhyme_group, a.tone, a.first_line)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    print(f"# {len(text.encode('utf-8'))} bytes, {text.count(chr(10))} rules", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
