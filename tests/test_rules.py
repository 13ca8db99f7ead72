"""Poem rule checks (harness/rules.py): famous regular poems pass, broken variants fail where they were broken."""
from __future__ import annotations

import pytest

import tiny

from harness.errors import UserError
from harness.metrics import FIXED_FORMS
from harness.rules import (AGGREGATE, RULE_FIELDS, aggregate_rules, check_poem, constrained_positions,
                           explain_poem, resolve_group, rhyme_table, tone_templates)

# 王之涣《登鹳雀楼》, 杜甫《绝句》, 杜甫《春望》: regular 近体诗 (public domain)
DENGGUAN = "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"
DENGGUAN_TRAD = "白日依山盡，黃河入海流。\n欲窮千里目，更上一層樓。"
JUEJU = "两个黄鹂鸣翠柳，一行白鹭上青天。\n窗含西岭千秋雪，门泊东吴万里船。"
CHUNWANG = ("国破山河在，城春草木深。\n感时花溅泪，恨别鸟惊心。\n烽火连三月，家书抵万金。\n白头搔更短，浑欲不胜簪。")
JINGYESI = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"   # rhymes, but not regular in tone

SONNET_130 = """My mistress' eyes are nothing like the sun;
Coral is far more red than her lips' red;
If snow be white, why then her breasts are dun;
If hairs be wires, black wires grow on her head.
I have seen roses damask'd, red and white,
But no such roses see I in her cheeks;
And in some perfumes is there more delight
Than in the breath that from my mistress reeks.
I love to hear her speak, yet well I know
That music hath a far more pleasing sound;
I grant I never saw a goddess go;
My mistress, when she walks, treads on the ground:
And yet, by heaven, I think my love as rare
As any she belied with false compare."""

SONNET_18 = tiny.SONNET_18


def test_regular_quatrains_pass():
    r = explain_poem(DENGGUAN, "五言绝句", "zh")
    assert (r["rhyme_ok"], r["rhyme_group"], r["tone_ok"], r["tone_rate"]) == (True, "尤", True, 1.0)
    assert r["repeated_rhyme"] is False and r["unknown_chars"] == 0
    assert r["rules_summary"].startswith("rhymes in 尤 (lines 2, 4); tone 12/12")
    r = explain_poem(JUEJU, "七言绝句", "zh")
    assert (r["rhyme_ok"], r["rhyme_group"], r["tone_ok"]) == (True, "先", True)
    assert "16/16" in r["rules_summary"]
    r = explain_poem(CHUNWANG, "五言律诗", "zh")
    assert (r["rhyme_ok"], r["rhyme_group"], r["tone_ok"]) == (True, "侵", True)


def test_traditional_characters_give_the_same_checks():
    a, b = explain_poem(DENGGUAN, "五言绝句", "zh"), explain_poem(DENGGUAN_TRAD, "五言绝句", "zh")
    assert a == b


def test_broken_variants_fail_where_broken():
    r = explain_poem(DENGGUAN.replace("楼", "天"), "五言绝句", "zh")          # 天 (先) does not rhyme with 流 (尤)
    assert r["rhyme_ok"] is False and r["tone_ok"] is True and "not on 4" in r["rules_summary"]
    r = explain_poem(DENGGUAN.replace("白日", "白云"), "五言绝句", "zh")     # position 2 of line 1 becomes 平
    assert r["rhyme_ok"] is True and r["tone_ok"] is False and r["tone_rate"] < 1
    r = explain_poem(JUEJU.replace("万里船", "万里天"), "七言绝句", "zh")     # the rhyme character repeats
    assert r["rhyme_ok"] is True and r["repeated_rhyme"] is True
    r = explain_poem(JUEJU.replace("鸣翠柳", "鸣翠"), "七言绝句", "zh")       # form broken: no rule checks
    assert r["rhyme_ok"] is None and r["tone_ok"] is None and "not checked" in r["rules_summary"]
    r = explain_poem(JINGYESI, "五言绝句", "zh")
    assert r["rhyme_ok"] is True and r["rhyme_group"] == "阳" and r["tone_ok"] is False


def test_unknown_characters_are_counted_never_guessed():
    assert rhyme_table().groups_of("䬓") is None
    r = explain_poem(DENGGUAN.replace("楼", "䬓"), "五言绝句", "zh")
    assert r["unknown_chars"] == 1 and r["unknown_list"] == "䬓"
    assert r["rhyme_ok"] is None                      # unconfirmed, neither passed nor failed
    assert "1 character not in the rhyme table: 䬓" in r["rules_summary"]
    assert "unknown on 4" in r["rules_summary"]


def test_polyphonic_characters_match_either_reading():
    t = rhyme_table()
    assert t.levels_of("看") == {"平", "仄"} and {"寒", "翰"} <= set(t.groups_of("看"))
    assert t.groups_of("東") == t.groups_of("东") == ("东",)
    assert t.groups_of("疎") == t.groups_of("疏")            # a listed variant (rules_data/variants.txt)


@pytest.mark.parametrize("form", list(FIXED_FORMS))
def test_templates_follow_the_dui_and_nian_rules(form):
    lines, chars = FIXED_FORMS[form]
    temps = tone_templates(form)
    assert len(temps) == 4 and len(set(temps.values())) == 4
    for name, pats in temps.items():
        assert len(pats) == lines and all(len(p) == chars for p in pats)
        assert name[0] == pats[0][1] and ("不入韵" in name) == (pats[0][-1] == "仄")
        for i in range(0, lines, 2):
            assert pats[i][1] != pats[i + 1][1] and pats[i + 1][-1] == "平"     # 对: a couplet's lines oppose
            if i:
                assert pats[i][1] == pats[i - 1][1]                           # 粘: the next couplet sticks
        assert all(p[-1] == "仄" for p in pats[2::2])                        # unrhymed odd lines end in 仄
    assert constrained_positions(chars) == ((1, 3, 4) if chars == 5 else (1, 3, 5, 6))


def test_rhyme_group_names():
    assert resolve_group("東") == resolve_group("一东") == resolve_group("上平一東") == resolve_group("东韵") == "东"
    with pytest.raises(UserError, match="仄声.*nearest 东"):
        resolve_group("董")
    with pytest.raises(UserError, match="中 is a character of 东"):
        resolve_group("中")
    with pytest.raises(UserError, match="东冬江支微"):
        resolve_group("xyz")


def test_sonnets():
    r = explain_poem(SONNET_130, "sonnet", "en")
    assert r["sonnet_lines_ok"] and r["sonnet_scheme_ok"] is True and r["sonnet_rhyme_rate"] == 1.0
    assert r["sonnet_scheme"] == "ABABCDCDEFEFGG" and r["syllables_ok_rate"] >= 0.9
    assert r["rhyme_ok"] is None and r["tone_ok"] is None
    r = explain_poem(SONNET_18, "sonnet", "en")                # temperate/date no longer rhyme in CMUdict
    assert r["sonnet_scheme_ok"] is False and "temperate/date" in r["rules_summary"]
    assert r["oov_words"] >= 2 and "ow'st" in r["rules_summary"]
    lines = SONNET_130.split("\n")
    shuffled = "\n".join(lines[:12] + [lines[13], lines[12]])  # the couplet still rhymes ...
    assert explain_poem(shuffled, "sonnet", "en")["sonnet_scheme_ok"] is True
    broken = "\n".join([lines[0], lines[1], lines[3], lines[2]] + lines[4:])   # ... the first quatrain does not
    r = explain_poem(broken, "sonnet", "en")
    assert r["sonnet_scheme_ok"] is False and r["sonnet_rhyme_rate"] < 1
    r = explain_poem("\n".join(lines[:13]), "sonnet", "en")
    assert r["sonnet_lines_ok"] is False and r["sonnet_scheme_ok"] is None
    r = explain_poem(SONNET_130.replace("nothing like", "zorblaxing"), "sonnet", "en")
    assert r["oov_words"] == 2 and "zorblaxing" in r["rules_summary"]
    # the Deep-speare layout: lowercased, punctuation and clitics split off
    # rhyme by sound, not by stress: dyed (AY1 D) and dignified (AY2 D) rhyme
    assert explain_poem("both truth and beauty dyed\nand therein dignified", "sonnet", "en")["sonnet_scheme"] == "AA"
    tokenized = "shall i compare thee to a summer 's day ?\nthou art more lovely and more temperate :"
    r = explain_poem(tokenized, "sonnet", "en")
    assert r["oov_words"] == 0 and r["syllables_ok_rate"] == 1.0


def test_other_forms_and_aggregation():
    r = explain_poem("a\nb", "free verse", "en")
    assert all(r[k] in (None, 0) for k in AGGREGATE) and "no rule checks" in r["rules_summary"]
    rows = [explain_poem(p, f, "zh") for p, f in ((DENGGUAN, "五言绝句"), (JINGYESI, "五言绝句"),
                                                (DENGGUAN.replace("楼", "天"), "五言绝句"))]
    rows.append(explain_poem(SONNET_130, "sonnet", "en"))
    agg = aggregate_rules(rows)
    assert agg["rhyme_ok"] == pytest.approx(2 / 3) and agg["rhyme_ok_n"] == 3
    assert agg["tone_ok"] == pytest.approx(2 / 3) and agg["sonnet_scheme_ok"] == 1.0 and agg["sonnet_scheme_ok_n"] == 1
    assert agg["tone_rate"] == pytest.approx(sum(r["tone_rate"] for r in rows[:3]) / 3)


def test_check_poem_returns_exactly_the_rules_metric_fields():
    from harness.tasks import METRICS
    assert set(RULE_FIELDS) == {f for f, _, _ in METRICS["rules"].aggregates}
    for text, form, lang in ((DENGGUAN, "五言绝句", "zh"), (SONNET_130, "sonnet", "en"), ("a\nb", "free verse", "en"),
                             ("白日依山", "五言绝句", "zh")):
        r = check_poem(text, form, lang)
        assert tuple(r) == RULE_FIELDS
        assert {k: explain_poem(text, form, lang)[k] for k in RULE_FIELDS} == r
    zh, en = check_poem(DENGGUAN, "五言绝句", "zh"), check_poem(SONNET_130, "sonnet", "en")
    assert zh == {"rhyme_ok": True, "tone_ok": True, "repeated_rhyme": False, "sonnet_scheme_ok": None,
                  "syllables_ok_rate": None, "unknown_chars": 0, "oov_words": None}
    assert en["rhyme_ok"] is None and en["unknown_chars"] is None and en["oov_words"] == 1   # damask'd
    assert en["sonnet_scheme_ok"] is True and en["syllables_ok_rate"] >= 0.9
    broken = check_poem("白日依山，黄河入海流。", "五言绝句", "zh")       # no rule was checked: nothing to count
    assert all(v is None for v in broken.values())
    assert all(v is None for v in check_poem("a\nb", "free verse", "en").values())


def test_the_rules_metric_is_on_every_poem_row_and_in_the_leaderboard_columns():
    from harness.tasks import get_task
    task = get_task("poem")
    assert "rules" in task.metrics and {"rhyme_rate", "tone_rate", "sonnet_scheme_rate"} <= set(task.columns())
    items = [{"id": "a", "lang": "zh", "form": "五言绝句", "title": "t", "prompt": "p"},
             {"id": "b", "lang": "zh", "form": "五言绝句", "title": "t", "prompt": "p"},
             {"id": "c", "lang": "en", "form": "sonnet", "title": "t", "prompt": "p"}]
    texts = [DENGGUAN, DENGGUAN.replace("楼", "天"), SONNET_130]
    rows = [task.row_metrics(it, t) for it, t in zip(items, texts)]
    assert all(set(RULE_FIELDS) <= set(r) for r in rows)
    assert rows[0]["form_ok"] and rows[0]["rhyme_ok"] is True and rows[1]["rhyme_ok"] is False
    s = task.summarize(rows, n_boot=50)
    assert s["rhyme_rate"] == 0.5 and s["tone_rate"] == 1.0 and s["sonnet_scheme_rate"] == 1.0
    assert s["unknown_chars"] == 0 and s["oov_words"] == 1


def test_a_rhyme_group_that_does_not_exist_is_named_with_the_nearest():
    with pytest.raises(UserError, match=r"no rhyme group 'dong'; nearest: 东 \(dong\), 冬 \(dong\)"):
        resolve_group("dong")
    with pytest.raises(UserError, match=r"nearest: 江 \(jiang\)"):
        resolve_group("jang")
    with pytest.raises(UserError, match=r"no rhyme group '东冬'; nearest: 东 \(dong\), 冬 \(dong\)"):
        resolve_group("东冬")
    with pytest.raises(UserError, match="䬓 is not in the 平水韵 table"):
        resolve_group("䬓")


def test_an_opening_quote_is_not_a_clitic():
    from harness.rules import _words
    assert _words("surface: 'the golden") == ["surface", "the", "golden"]
    assert _words("summer 's day") == ["summer's", "day"]
    assert _words("My mistress' eyes") == ["my", "mistress", "eyes"]
