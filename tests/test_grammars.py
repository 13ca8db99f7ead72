"""The poem grammars (harness/grammars.py) accept exactly what harness.rules' checks pass.

A small GBNF matcher below (rules, alternation, sequences, groups, literals, character classes with ranges and
negation, repetition * + ?) runs each grammar on real poems: famous regular poems and their broken variants here,
and, when ../shared/datasets/poems_zh exists, 400 全唐诗 poems read at test time (never committed).
For every poem whose characters are in the poem character set, the grammar's verdict equals the rule checks':
form grammar: always; rhyme: rhyme_ok in a 平声 group; tone: tone_ok; rhyme + tone: both. Every grammar is also
parsed by llama.cpp itself (llama_sampler_init_grammar on the embedded GGUF's vocabulary) when it is installed.
"""
from __future__ import annotations

import bisect
import functools
import json
import os
import re
from pathlib import Path

import pytest

import tiny

from harness.errors import UserError
from harness.grammars import PUNCT_EVEN, PUNCT_LAST, PUNCT_ODD, gbnf
from harness.metrics import FIXED_FORMS

DENGGUAN = "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"       # 王之涣 (public domain)
JUEJU = "两个黄鹂鸣翠柳，一行白鹭上青天。\n窗含西岭千秋雪，门泊东吴万里船。"   # 杜甫
CHUNWANG = "国破山河在，城春草木深。\n感时花溅泪，恨别鸟惊心。\n烽火连三月，家书抵万金。\n白头搔更短，浑欲不胜簪。"
JINGYESI = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"   # rhymes, not regular in tone
WENGUANJUN = ("剑外忽传收蓟北，初闻涕泪满衣裳。\n却看妻子愁何在，漫卷诗书喜欲狂。\n"
              "白日放歌须纵酒，青春作伴好还乡。\n即从巴峡穿巫峡，便下襄阳向洛阳。")    # 杜甫
CHUSAI = "秦时明月汉时关，万里长征人未还。\n但使龙城飞将在，不教胡马度阴山。"   # 王昌龄《出塞》, 首句入韵
SONNET_18 = tiny.SONNET_18
DATASETS = Path(os.environ.get("FTBENCH_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


# ------------------------------------------------------------------------------------------ a GBNF matcher

_TOKEN = re.compile(r'\s*(?:(?P<name>[A-Za-z0-9-]+)|(?P<lit>"(?:\\.|[^"\\])*")|(?P<cls>\[(?:\\.|[^\]\\])*\])'
                    r'|(?P<op>[()|*+?]|\{\d+,\d*\}))')
_ESC = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "]": "]", "[": "[", "-": "-", "^": "^"}


def _unescape(body: str) -> list[str]:
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\":
            out.append(_ESC[body[i + 1]])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return out


def parse_gbnf(text: str) -> dict:
    """{rule: node}; node = ("alt", [seq...]) | ("seq", [node...]) | ("lit", str) | ("cls", neg, [(lo, hi)])
    | ("ref", name) | ("rep", node, min, max)."""
    rules: dict = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0] if not re.search(r'["\[]', line) else line
        if not line.strip():
            continue
        name, _, body = line.partition("::=")
        toks = [(m.lastgroup, m.group(m.lastgroup)) for m in _TOKEN.finditer(body)]
        assert "".join(v for _, v in toks).replace(" ", "") == body.replace(" ", ""), f"unparsed: {line[:80]}"
        node, rest = _alt(toks)
        assert not rest, f"trailing {rest[:3]} in {line[:80]}"
        rules[name.strip()] = node
    return rules


def _alt(toks):
    seqs = []
    seq, toks = _seq(toks)
    seqs.append(seq)
    while toks and toks[0] == ("op", "|"):
        seq, toks = _seq(toks[1:])
        seqs.append(seq)
    return ("alt", seqs), toks


def _seq(toks):
    items = []
    while toks and toks[0] not in (("op", "|"), ("op", ")")):
        kind, val = toks[0]
        toks = toks[1:]
        if kind == "name":
            node = ("ref", val)
        elif kind == "lit":
            node = ("lit", "".join(_unescape(val[1:-1])))
        elif kind == "cls":
            chars = _unescape(val[1:-1])
            neg = bool(chars) and val[1] == "^"
            chars = chars[1:] if neg else chars
            ranges, i = [], 0
            while i < len(chars):
                if i + 2 < len(chars) and chars[i + 1] == "-":
                    ranges.append((ord(chars[i]), ord(chars[i + 2])))
                    i += 3
                else:
                    ranges.append((ord(chars[i]), ord(chars[i])))
                    i += 1
            ranges.sort()
            node = ("cls", neg, ranges, [lo for lo, _ in ranges])
        elif val == "(":
            node, toks = _alt(toks)
            assert toks[0] == ("op", ")")
            toks = toks[1:]
        else:
            raise AssertionError(f"unexpected {val}")
        while toks and toks[0][0] == "op" and (toks[0][1] in "*+?" or toks[0][1].startswith("{")):
            op = toks[0][1]
            if op.startswith("{"):                                  # {m,n} / {m,}
                lo, hi = op[1:-1].split(",")
                node = ("rep", node, int(lo), int(hi) if hi else None)
            else:
                node = ("rep", node, 0 if op in "*?" else 1, 1 if op == "?" else None)
            toks = toks[1:]
        items.append(node)
    return ("seq", items), toks


def accepts(rules: dict, text: str, root: str = "root") -> bool:
    """Does the whole text match the grammar? (sets of end positions, memoised per rule and position)"""
    memo: dict = {}

    def ends(node, pos: int) -> frozenset:
        kind = node[0]
        if kind == "ref":
            key = (node[1], pos)
            if key not in memo:
                memo[key] = frozenset()
                memo[key] = ends(rules[node[1]], pos)
            return memo[key]
        if kind == "lit":
            return frozenset([pos + len(node[1])]) if text.startswith(node[1], pos) else frozenset()
        if kind == "cls":
            if pos >= len(text):
                return frozenset()
            k = bisect.bisect_right(node[3], ord(text[pos])) - 1   # ranges starting at or before it (the last 64)
            inside = k >= 0 and any(lo <= ord(text[pos]) <= hi for lo, hi in node[2][:k + 1][-64:])
            return frozenset([pos + 1]) if inside != node[1] else frozenset()
        if kind == "alt":
            return frozenset().union(*(ends(s, pos) for s in node[1]))
        if kind == "seq":
            cur = frozenset([pos])
            for item in node[1]:
                cur = frozenset().union(*(ends(item, p) for p in cur)) if cur else cur
            return cur
        _, inner, lo, hi = node
        out, cur, n = set(), {pos}, 0
        if lo == 0:
            out.add(pos)
        while cur and (hi is None or n < hi):
            cur = set().union(*(ends(inner, p) for p in cur)) - ({pos} if n else set())
            n += 1
            if n >= lo:
                out |= cur
        return frozenset(out)

    return len(text) in ends(rules[root], 0)


def test_the_matcher_itself():
    g = parse_gbnf('root ::= "a" ( b | [x-z]+ ) c? [^\\n]* "\\n"\nb ::= "b" "b"*\nc ::= [0-9]\n')
    assert accepts(g, "abbb1?\n") and accepts(g, "axyz\n") and accepts(g, "ab\n")
    assert not accepts(g, "a\n") and not accepts(g, "abq\nx") and not accepts(g, "bb\n")
    g = parse_gbnf('root ::= "a" [0-9]{1,3}\n')
    assert accepts(g, "a1") and accepts(g, "a123") and not accepts(g, "a") and not accepts(g, "a1234")


# ------------------------------------------------------------------------------------------ poems

def canonical(poem: str) -> str:
    """A poem as the form constraint writes it: lines of ideographs with ，\\n / 。\\n after them, 。 at the end."""
    from harness.rules import zh_lines
    lines = zh_lines(poem)
    return "".join(line + (PUNCT_LAST if i == len(lines) - 1 else PUNCT_ODD if i % 2 == 0 else PUNCT_EVEN)
                   for i, line in enumerate(lines))


@functools.lru_cache(maxsize=None)
def grammar(form: str, rhyme: bool = False, group: str | None = None, tone: bool | str = False,
            first: bool = False) -> dict:
    return parse_gbnf(gbnf(form, rhyme, group, tone, first))


def in_charset(poem: str) -> bool:
    from harness.forms import charset
    allowed = charset()[1]
    return all(ord(ch) < len(allowed) and allowed[ord(ch)] for ch in "".join(canonical(poem).split()) if ch not in "，。")


def expected(poem: str, form: str) -> dict:
    """What each grammar should say, from harness.rules' checks."""
    from harness.rules import PING, explain_poem, rhyme_table
    r = explain_poem(poem, form, "zh")
    g = rhyme_table().groups.get(r["rhyme_group"])
    rhyme = r["rhyme_ok"] is True and g is not None and g.level == PING
    return {"form": True, "rhyme": rhyme, "tone": r["tone_ok"] is True, "both": rhyme and r["tone_ok"] is True,
            "group": r["rhyme_group"] if rhyme else None}


def verdicts(poem: str, form: str) -> dict:
    text = canonical(poem)
    out = {"form": accepts(grammar(form), text), "rhyme": accepts(grammar(form, True), text),
           "tone": accepts(grammar(form, tone=True), text), "both": accepts(grammar(form, True, tone=True), text)}
    exp = expected(poem, form)
    out["group"] = exp["group"] if exp["group"] and accepts(grammar(form, True, exp["group"]), text) else None
    return out


FAMOUS = [(DENGGUAN, "五言绝句"), (JUEJU, "七言绝句"), (CHUNWANG, "五言律诗"), (WENGUANJUN, "七言律诗"), (CHUSAI, "七言绝句"),
          (JINGYESI, "五言绝句")]


@pytest.mark.parametrize("poem,form", FAMOUS)
def test_famous_poems_get_the_rule_checks_verdict(poem, form):
    assert in_charset(poem)
    assert verdicts(poem, form) == expected(poem, form)


def test_regular_poems_are_accepted_and_broken_ones_rejected():
    assert verdicts(DENGGUAN, "五言绝句") == {"form": True, "rhyme": True, "tone": True, "both": True, "group": "尤"}
    assert verdicts(WENGUANJUN, "七言律诗")["both"] and verdicts(CHUNWANG, "五言律诗")["both"]
    assert accepts(grammar("七言绝句", True, "删", tone=True, first=True), canonical(CHUSAI))    # 关 rhymes too
    assert not accepts(grammar("七言绝句", True, tone=True, first=True), canonical(JUEJU))       # 柳 does not
    text = canonical(DENGGUAN)
    assert not accepts(grammar("五言绝句", True, "东"), text)                      # another group
    assert not accepts(grammar("五言绝句", True), text.replace("楼", "天"))       # 天 (先) vs 流 (尤)
    assert not accepts(grammar("五言绝句", tone=True), text.replace("白日", "白云"))   # position 2 turns 平
    assert accepts(grammar("五言绝句", tone=True), text.replace("白日", "黄日"))       # position 1 is free
    assert not accepts(grammar("五言绝句"), text.replace("依山尽", "依山"))          # four characters
    assert not accepts(grammar("五言绝句"), text.replace("，\n", "，"))            # the constraint's layout only
    assert not accepts(grammar("五言绝句"), text + "\n")
    assert not accepts(grammar("五言绝句"), text.replace("白", "A"))
    assert not accepts(grammar("七言绝句"), text)
    j = verdicts(JINGYESI, "五言绝句")
    assert j["rhyme"] and not j["tone"] and not j["both"]


def test_bad_options_give_the_form_options_sentences():
    with pytest.raises(UserError, match="form-constrained decoding supports 五言绝句"):
        gbnf("六言绝句")
    with pytest.raises(UserError, match="no rhyme group 'dong'; nearest: 东"):
        gbnf("五言绝句", rhyme_group="dong")
    with pytest.raises(UserError, match="仄声"):
        gbnf("五言绝句", rhyme_group="董")
    with pytest.raises(UserError, match="no tone template"):
        gbnf("五言绝句", tone="平起首句乱韵")
    with pytest.raises(UserError, match="add --form"):
        gbnf("", rhyme=True)


def test_sonnet_is_fourteen_lines():
    g = parse_gbnf(gbnf("sonnet"))
    assert accepts(g, SONNET_18) and accepts(g, SONNET_18 + "\n")
    assert not accepts(g, SONNET_18.rsplit("\n", 1)[0])                 # 13 lines
    assert not accepts(g, SONNET_18 + "\nA fifteenth line.")
    assert not accepts(g, SONNET_18.replace("\n", "\n\n", 1))            # an empty line
    assert not accepts(g, SONNET_18.replace("\n", " and on and on, a line that never ends at all\n", 1))  # > 60


def test_grammars_are_cached_on_disk(tmp_path, monkeypatch):
    from harness import grammars
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path))
    grammars._cached.cache_clear()
    text = gbnf("七言绝句", rhyme=True, tone=True)
    files = list((tmp_path / "grammars").glob("*.gbnf"))
    assert len(files) == 1 and files[0].read_text(encoding="utf-8") == text
    files[0].write_text("root ::= \"cached\"\n", encoding="utf-8")
    grammars._cached.cache_clear()
    assert gbnf("七言绝句", rhyme=True, tone=True) == "root ::= \"cached\"\n"      # read back, not rebuilt
    assert gbnf("七言绝句", rhyme=True, tone=True) is gbnf("七言绝句", rhyme=True, tone=True)   # in memory
    grammars._cached.cache_clear()


def _dataset_poems(limit_files: int = 2) -> list[tuple[str, str]]:
    """Regular 绝句/律诗 of the first files of ../shared/datasets/poems_zh (the data recipe's filter), simplified."""
    import opencc
    folder = DATASETS / "poems_zh"
    files = sorted(folder.glob("poet.tang.*.json"), key=lambda p: int(p.name.split(".")[2]))[:limit_files]
    t2s = opencc.OpenCC("t2s")
    shapes = {(lines, chars): form for form, (lines, chars) in FIXED_FORMS.items()}
    out = []
    for f in files:
        for rec in json.loads(f.read_text(encoding="utf-8")):
            text = "".join(rec.get("paragraphs") or [])
            parts = re.findall(r"([^，。]+)([，。])", text)
            if not parts or "".join(a + b for a, b in parts) != text:
                continue
            if any(p != ("，" if i % 2 == 0 else "。") for i, (_, p) in enumerate(parts)):
                continue
            if not all(re.fullmatch(r"[\u4e00-\u9fff]+", a) for a, _ in parts):
                continue
            form = shapes.get((len(parts), len(parts[0][0])))
            if form and all(len(a) == len(parts[0][0]) for a, _ in parts):
                out.append((t2s.convert(text), form))
    return out


@pytest.mark.skipif(not (DATASETS / "poems_zh").is_dir(), reason="../shared/datasets/poems_zh is not here")
def test_real_tang_poems_get_the_rule_checks_verdict():
    poems = [(p, f) for p, f in _dataset_poems() if in_charset(p)][:400]
    assert len(poems) == 400
    counts = {k: 0 for k in ("form", "rhyme", "tone", "both")}
    for poem, form in poems:
        got, exp = verdicts(poem, form), expected(poem, form)
        assert got == exp, (poem, form, got, exp)
        for k in counts:
            counts[k] += got[k]
    # both kinds occur: the grammars accept many real poems and reject many
    assert counts["form"] == len(poems) and 0 < counts["both"] < counts["rhyme"] < len(poems)
    assert 0 < counts["tone"] < len(poems)


def _llama_vocab():
    llama_cpp = pytest.importorskip("llama_cpp")
    from harness.models import embedded_gguf, resolve_base
    path = embedded_gguf(resolve_base("smollm2-135m-instruct"))
    if path is None:
        pytest.skip("the embedded GGUF is not installed")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
    assert model
    return llama_cpp, model


GRAMMAR_OPTIONS = [(f, r, t) for f in FIXED_FORMS for r in (False, True) for t in (False, True)]


def test_llama_cpp_parses_every_grammar():
    llama_cpp, model = _llama_vocab()
    vocab = llama_cpp.llama_model_get_vocab(model)
    try:
        texts = [gbnf(f, r, None, t) for f, r, t in GRAMMAR_OPTIONS]
        texts += [gbnf("五言律诗", rhyme_group="东", tone=True), gbnf("七言绝句", True, tone=True, rhyme_first_line=True),
                  gbnf("sonnet")]
        for text in texts:
            # LlamaGrammar.from_string (0.3.x) only keeps the text; llama.cpp parses it when the sampler is made
            assert llama_cpp.LlamaGrammar.from_string(text)._grammar == text
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
            assert sampler, text[:200]
            llama_cpp.llama_sampler_free(sampler)
        bad = llama_cpp.llama_sampler_init_grammar(vocab, b'root ::= "a" (', b"root")
        assert not bad                                        # the check can fail
    finally:
        llama_cpp.llama_model_free(model)
