"""Metrics: known values, bootstrap properties, poem form table. Run: python -m pytest tests/test_metrics.py -q"""
import math

import numpy as np
import pytest

from harness.metrics import (bootstrap_mean_ci, classification_metrics, distinct_n, form_check, histogram,
                             looping, mcnemar_exact, paired_bootstrap, pearson, rankdata, repetition_rate,
                             rouge_l, spearman, tokenize)


# ---------------------------------------------------------------- tokenisation and ROUGE-L

def test_tokenize_mixes_words_and_cjk_characters():
    assert tokenize("Don't STOP, 床前明月光! x_y") == ["don't", "stop", "床", "前", "明", "月", "光", "x", "y"]
    assert tokenize("") == [] and tokenize(None) == []


@pytest.mark.parametrize("cand, ref, expected", [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("The cat, sat on the MAT.", "the cat sat on the mat", 1.0),        # case and punctuation ignored
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),         # LCS 5 of 6 both ways
    ("dog", "the cat sat", 0.0),
    ("the cat", "the cat sat on the mat", 2 * (1 * 2 / 6) / (1 + 2 / 6)),  # P=1, R=1/3
    ("床前明月光", "床前明月", 2 * 0.8 * 1.0 / 1.8),                       # per character: LCS 4, P=4/5, R=1
    ("", "the cat", 0.0),
    ("the cat", "", 0.0),
])
def test_rouge_l_known_values(cand, ref, expected):
    assert rouge_l(cand, ref) == pytest.approx(expected)


def test_rouge_l_order_matters_and_is_symmetric_in_f1():
    assert rouge_l("mat the on sat cat the", "the cat sat on the mat") == pytest.approx(0.5)  # LCS the-on-the
    a, b = "paris is the capital of france", "the capital of france is paris"
    assert rouge_l(a, b) == pytest.approx(rouge_l(b, a))


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_mean_ci_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    vals = list(rng.normal(70, 10, size=60))
    mean, lo, hi = bootstrap_mean_ci(vals, seed=3)
    assert mean == pytest.approx(np.mean(vals))
    assert lo < mean < hi
    assert hi - lo < 10  # about 2 * 1.96 * 10 / sqrt(60) = 5
    assert bootstrap_mean_ci(vals, seed=3) == (mean, lo, hi)


def test_bootstrap_mean_ci_narrows_with_more_items_and_skips_missing():
    rng = np.random.default_rng(2)
    small = list(rng.normal(50, 20, size=20))
    big = list(rng.normal(50, 20, size=800))
    _, lo_s, hi_s = bootstrap_mean_ci(small)
    _, lo_b, hi_b = bootstrap_mean_ci(big)
    assert hi_b - lo_b < (hi_s - lo_s) / 3
    assert bootstrap_mean_ci([None, 10.0, float("nan"), 20.0])[0] == 15.0
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))


def test_paired_bootstrap_detects_a_clear_difference():
    rng = np.random.default_rng(0)
    base = rng.uniform(20, 80, size=40)
    a = base + 10 + rng.normal(0, 3, size=40)
    res = paired_bootstrap(list(a), list(base))
    assert res["distinguishable"] and res["ci_low"] > 5
    assert res["ci_low"] <= res["mean_diff"] <= res["ci_high"]
    assert res["wins"] >= 38 and res["wins"] + res["ties"] + res["losses"] == res["n"] == 40


def test_paired_bootstrap_does_not_invent_a_difference():
    rng = np.random.default_rng(5)
    base = rng.uniform(20, 80, size=40)
    a = base + rng.normal(0, 10, size=40)
    b = base + rng.normal(0, 10, size=40)
    res = paired_bootstrap(list(a), list(b))
    assert not res["distinguishable"]
    assert res["ci_low"] < 0 < res["ci_high"]


def test_paired_bootstrap_ties_and_errors():
    res = paired_bootstrap([80, 80, 70, 50], [80, 79, 75, 40], tie_tol=1.0)
    assert (res["wins"], res["ties"], res["losses"]) == (1, 2, 1)
    assert paired_bootstrap([], [])["n"] == 0
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1])


def test_mcnemar_exact():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(1, 10) < 0.02


# ---------------------------------------------------------------- classification

def test_classification_metrics_known_confusion_and_cis():
    y_true = ["spam"] * 40 + ["ham"] * 60
    y_pred = ["spam"] * 30 + ["ham"] * 10 + ["spam"] * 5 + ["ham"] * 55
    m = classification_metrics(y_true, y_pred)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (30, 10, 5, 55)
    assert m["accuracy"] == pytest.approx(0.85)
    assert m["precision"] == pytest.approx(30 / 35)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(2 * (30 / 35) * 0.75 / (30 / 35 + 0.75))
    for k in ("accuracy", "precision", "recall", "f1"):
        assert m[f"{k}_ci_low"] <= m[k] <= m[f"{k}_ci_high"]
        assert m[f"{k}_ci_high"] - m[f"{k}_ci_low"] > 0.02
    assert classification_metrics(y_true, y_pred) == m  # seeded


def test_classification_zero_division_is_zero():
    m = classification_metrics(["ham", "ham", "spam"], ["ham", "ham", "ham"])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == pytest.approx(2 / 3)
    m = classification_metrics(["ham"] * 4, ["ham"] * 4)
    assert m["accuracy"] == 1.0 and m["recall"] == 0.0 and m["recall_ci_high"] == 0.0
    with pytest.raises(ValueError):
        classification_metrics(["spam"], [])
    with pytest.raises(ValueError):
        classification_metrics([], [])


# ---------------------------------------------------------------- poem form

JINGYESI_2_PER_ROW = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"
JINGYESI_1_PER_ROW = "床前明月光，\n疑是地上霜。\n举头望明月，\n低头思故乡。"
ZAOFA = "朝辞白帝彩云间，千里江陵一日还。\n两岸猿声啼不住，轻舟已过万重山。"
CHUNWANG = "国破山河在，城春草木深。\n感时花溅泪，恨别鸟惊心。\n烽火连三月，家书抵万金。\n白头搔更短，浑欲不胜簪。"
DENGGAO = ("风急天高猿啸哀，渚清沙白鸟飞回。\n无边落木萧萧下，不尽长江滚滚来。\n"
           "万里悲秋常作客，百年多病独登台。\n艰难苦恨繁霜鬓，潦倒新亭浊酒杯。")
SONNET = "\n".join(f"line number {i} of a sonnet about the sea" for i in range(14))


@pytest.mark.parametrize("poem, form, lang, ok, lines", [
    (JINGYESI_2_PER_ROW, "五言绝句", "zh", True, 4),
    (JINGYESI_1_PER_ROW, "五言绝句", "zh", True, 4),
    ("床前明月光\n疑是地上霜\n举头望明月\n低头思故乡", "五言绝句", "zh", True, 4),      # no punctuation
    ("床前明月光，疑是地上霜。举头望明月，低头思故乡。", "五言绝句", "zh", True, 4),   # all on one row
    ("\n  " + JINGYESI_2_PER_ROW + "  \n\n", "五言绝句", "zh", True, 4),               # stray whitespace
    ("“床前明月光，疑是地上霜。举头望明月，低头思故乡。”", "五言绝句", "zh", True, 4),  # quotes ignored
    ("床前明月光,疑是地上霜.\n举头望明月,低头思故乡.", "五言绝句", "zh", True, 4),     # ASCII punctuation
    (ZAOFA, "七言绝句", "zh", True, 4),
    (CHUNWANG, "五言律诗", "zh", True, 8),
    (DENGGAO, "七言律诗", "zh", True, 8),
    ("静夜思\n" + JINGYESI_2_PER_ROW, "五言绝句", "zh", False, 5),                   # a title line
    ("《静夜思》\n" + JINGYESI_2_PER_ROW, "五言绝句", "zh", False, 5),
    ("好的，这是一首五言绝句：\n" + JINGYESI_2_PER_ROW, "五言绝句", "zh", False, 6),     # preamble
    ("Here is your poem:\n" + JINGYESI_2_PER_ROW, "五言绝句", "zh", False, 5),          # English preamble
    (ZAOFA, "五言绝句", "zh", False, 4),                                               # 7 chars, asked 5
    (JINGYESI_2_PER_ROW, "五言律诗", "zh", False, 4),                                 # 4 lines, asked 8
    ("床前明月光，疑是地上霜。\n举头望明月。", "五言绝句", "zh", False, 3),
    ("春风春风春风春风春风春风春风春风春风春风", "五言绝句", "zh", False, 1),            # one looping row
    ("床前明月光，疑是地上霜霜。\n举头望明月，低头思故乡。", "五言绝句", "zh", False, 4),
    (SONNET, "sonnet", "en", True, 14),
    (SONNET + "\n\n  \n", "Sonnet", "en", True, 14),
    (" <eos> ".join(f"line {i} of the sonnet" for i in range(14)), "sonnet", "en", True, 14),  # Deep-speare markers
    ("\n".join(SONNET.splitlines()[:13]), "sonnet", "en", False, 13),
    ("the sea\nthe sky", "free verse", "en", True, 2),
    ("just one line of verse", "free verse", "en", False, 1),
    ("海风吹过\n灯塔在等", "free verse", "zh", True, 2),
])
def test_form_check_table(poem, form, lang, ok, lines):
    res = form_check(poem, form, lang)
    assert res["ok"] is ok, res
    assert res["lines"] == lines
    assert len(res["chars_per_line"]) == lines
    assert (res["problem"] == "") is ok


def test_form_check_reports_what_is_wrong():
    res = form_check("静夜思\n" + JINGYESI_2_PER_ROW, "五言绝句", "zh")
    assert res["chars_per_line"] == [3, 5, 5, 5, 5]
    assert (res["expected_lines"], res["expected_chars"]) == (4, 5)
    assert "5 lines, expected 4" in res["problem"] and "line 1 has 3" in res["problem"]
    assert form_check(DENGGAO, "七言律诗", "zh")["chars_per_line"] == [7] * 8
    assert form_check("海风吹过\n灯塔在等", "free verse", "zh")["chars_per_line"] == [4, 4]
    with pytest.raises(ValueError, match="known forms"):
        form_check(JINGYESI_2_PER_ROW, "haiku", "en")


# ---------------------------------------------------------------- diversity, repetition, loops

def test_distinct_n():
    assert distinct_n("a b c d", 2) == 1.0
    assert distinct_n("a a a a", 1) == 0.25
    assert distinct_n(["the cat sat", "the cat sat"], 2) == 0.5   # pooled over texts
    assert distinct_n("春风春风", 2) == pytest.approx(2 / 3)        # 春风 风春 春风
    assert distinct_n("one", 2) == 0.0
    with pytest.raises(ValueError):
        distinct_n("x", 0)


def test_repetition_rate_and_looping():
    loop = "A gentle one, a gentle one, a gentle one, a gentle one, a gentle one"
    fresh = "The river bends where willows lean and evening light forgets the town"
    assert repetition_rate(loop) > 0.6
    assert repetition_rate(fresh) == 0.0
    assert repetition_rate("too short") == 0.0
    assert looping(loop)
    assert looping("春风春风春风春风春风")
    assert not looping(fresh)
    assert not looping("ha ha ha, said the man")
    assert not looping(CHUNWANG)
    assert not looping("Roses are red, violets are blue, roses are red, and so are you")


# ---------------------------------------------------------------- correlation, histogram

def test_correlations():
    x = [1, 2, 3, 4, 5, 6]
    y = [v ** 3 for v in x]
    assert spearman(x, y) == pytest.approx(1.0)
    assert 0.9 < pearson(x, y) < 1.0
    assert spearman(x, y[::-1]) == pytest.approx(-1.0)
    assert list(rankdata([10, 20, 20, 30])) == [1, 2.5, 2.5, 4]
    assert math.isnan(pearson([1, 2], [2, 3]))
    assert math.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4]))
    assert pearson([1, None, 3, 4, 5], [2, 9, 6, 8, 10]) == pytest.approx(pearson([1, 3, 4, 5], [2, 6, 8, 10]))


def test_histogram():
    assert histogram([0, 5, 10, 95, 100, None, 150]) == [2, 1, 0, 0, 0, 0, 0, 0, 0, 3]
