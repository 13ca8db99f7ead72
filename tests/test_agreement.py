"""Judges against human votes: MT-bench agreement, Cohen's kappa with a CI, the two baselines, the sentence.

    python -m pytest tests/test_agreement.py -q
"""
from __future__ import annotations

import math

import pytest

from harness.agreement import (MIN_PAIRS, agreement_markdown, agreement_summary, judge_vs_humans, kappa,
                               kappa_ci, pointwise_predictions)
from harness.testing.fake_ollama import FakeOllama
from harness.judge import JudgeConfig, open_judge
from harness.pairwise import pairwise_judge
from harness.store import Store
from harness.votes import cast_vote


def test_kappa_against_the_formula():
    h = ["a", "a", "b", "b", "tie", "a"]
    j = ["a", "b", "b", "b", "tie", "tie"]
    po = 4 / 6
    pe = (3 / 6) * (1 / 6) + (2 / 6) * (3 / 6) + (1 / 6) * (2 / 6)     # human a,b,tie = 3,2,1; judge 1,3,2
    assert kappa(h, j) == pytest.approx((po - pe) / (1 - pe))
    assert kappa(h, h) == pytest.approx(1.0)
    k, lo, hi = kappa_ci(h * 5, j * 5)
    assert lo <= k <= hi and hi - lo > 0


def _labels(n: int):
    """n labels where the human always picks the shorter answer, which is alternately a and b."""
    out = []
    for i in range(n):
        short_is_a = i % 2 == 0
        out.append({"key": f"l{i}", "item_id": f"q{i}", "sha_a": f"{i:064x}", "sha_b": f"{i + 1000:064x}",
                    "winner": "a" if short_is_a else "b", "len_a": 5 if short_is_a else 50,
                    "len_b": 50 if short_is_a else 5, "side_a": "left" if i % 3 else "right"})
    return out


def _preds(labels, fn):
    return {(lab["item_id"], lab["sha_a"], lab["sha_b"]): {"winner": fn(lab), "consistent": True} for lab in labels}


def test_a_judge_that_agrees_with_humans_adds_information():
    labels = _labels(24)
    r = judge_vs_humans(labels, _preds(labels, lambda lab: lab["winner"]), "good-judge")
    assert r["n"] == 24 and r["agree"] == 1.0 and r["kappa"] == pytest.approx(1.0)
    assert r["longer_agree"] == 0.0 and r["flip_rate"] == 0.0 and r["longer_pref"] == 0.0
    assert r["sentence"].startswith("good-judge agrees with your 24 votes 100% of the time (κ 1.00, CI")
    assert r["sentence"].endswith("'longer wins' 0%: the judge adds information")


def test_a_judge_that_just_picks_the_longer_answer_is_not_trusted():
    labels = _labels(24)
    for lab in labels[:8]:                 # the humans pick the longer answer on a third of the pairs
        lab["winner"] = "b" if lab["winner"] == "a" else "a"
    longer = lambda lab: "a" if lab["len_a"] > lab["len_b"] else "b"  # noqa: E731
    r = judge_vs_humans(labels, _preds(labels, longer), "length-judge")
    assert r["agree"] == pytest.approx(r["longer_agree"]) and r["longer_pref"] == 1.0
    assert "does not beat 'longer wins' on this set: do not trust its scores here" in r["sentence"]


def test_ties_are_counted_as_mt_bench_counts_them():
    labels = _labels(20)
    labels[0]["winner"] = "both_bad"      # a human "both bad" is a tie
    labels[1]["winner"] = "tie"
    preds = _preds(labels, lambda lab: lab["winner"] if lab["winner"] in ("a", "b") else "a")
    preds[(labels[2]["item_id"], labels[2]["sha_a"], labels[2]["sha_b"])] = {"winner": "tie", "consistent": False}
    r = judge_vs_humans(labels, preds, "j")
    assert r["agree"] == pytest.approx(17 / 20)                   # 3 pairs differ: 2 human ties, 1 judge tie
    assert r["n_no_ties"] == 17 and r["agree_no_ties"] == 1.0     # without ties: only decided pairs on both sides
    assert r["flip_rate"] == pytest.approx(1 / 20)


def test_fewer_than_20_pairs_in_common_says_so():
    labels = _labels(MIN_PAIRS + 5)
    preds = _preds(labels[:MIN_PAIRS - 1], lambda lab: lab["winner"])
    r = judge_vs_humans(labels, preds, "sparse")
    assert r["n"] == MIN_PAIRS - 1 and not r["enough"]
    assert "shares only 19 of your voted pairs (at least 20 are needed)" in r["sentence"]


def test_pointwise_verdicts_side_with_the_higher_score():
    labels = _labels(3)
    scores = {("q0", labels[0]["sha_a"]): 80, ("q0", labels[0]["sha_b"]): 20,
              ("q1", labels[1]["sha_a"]): 50, ("q1", labels[1]["sha_b"]): 50,
              ("q2", labels[2]["sha_a"]): 10}                     # q2's b unscored: no verdict
    preds = pointwise_predictions(scores, labels)
    assert [p["winner"] for p in preds.values()] == ["a", "tie"] and len(preds) == 2


def test_summary_matches_votes_to_stored_pairwise_and_pointwise_judgments(tmp_path):
    n = 22
    items = [{"id": f"instr-own-{i:03d}", "task": "chat", "instruction": f"Q{i}", "input": "", "output": "x"}
             for i in range(1, n + 1)]
    ra = [f"short {i}" for i in range(n)]
    rb = [f"a much longer answer number {i}" for i in range(n)]
    # the fake judge: A wins in both orders -> always the first answer -> every item an inconsistent tie
    with Store(tmp_path / "s.sqlite") as st:
        with FakeOllama(default=lambda body: '{"winner": "A", "reason": "r"}') as fake:
            with open_judge(JudgeConfig("ollama:llama3", host=fake.url)) as judge:
                pairwise_judge(judge, items, ra, rb, st, progress=False)
        for i, (it, a, b) in enumerate(zip(items, ra, rb)):
            # a real eval set item id (instructions_own has 34): the votes are counted, from three browser
            # sessions: the agreement is shared, so all 22 count
            cast_vote(st, session=f"browser-{i % 3}", prompt=it["instruction"], response_left=a, response_right=b,
                      side_a="left", model_a="smollm2-135m-instruct", adapter_a="", model_b="smollm2-135m-instruct",
                      adapter_b="", seed_a=0, seed_b=0, choice="left", eval_set="instructions_own",
                      item_id=it["id"])
            st.put("judgments", [{"key": f"k{i}{s}", "judge": "ollama:llama3", "prompt_version": "v1",
                                  "item": {"task": "chat", "id": it["id"], "response": resp}, "score": score,
                                  "parsed": True} for s, resp, score in (("a", a, 90), ("b", b, 10))])
        rows = agreement_summary(st)
    by_kind = {r["kind"]: r for r in rows}
    pw, pt = by_kind["pairwise"], by_kind["pointwise"]
    assert pw["n"] == n and pw["flip_rate"] == 1.0 and pw["agree"] == 0.0       # always a tie; humans chose a
    assert pt["n"] == n and pt["agree"] == 1.0 and pt["longer_agree"] == 0.0 and pt["first_agree"] == 1.0
    assert "does not beat 'always the first answer'" in pt["sentence"]
    md = agreement_markdown(rows)
    assert "| ollama:llama3 (pointwise v1) | 22 |" in md and md.count("\n- ") == 2


def test_no_votes_gives_an_empty_summary_and_a_hint(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        assert agreement_summary(st) == []
    assert "No judge shares a voted pair yet" in agreement_markdown([])
    assert math.isnan(kappa_ci([], [])[0])


def test_the_agreement_module_imports_no_test_fake():
    """Issue 24 part 6: product code (the app imports harness.agreement) never imports the fakes, not even inside
    a function; the report that runs the fake Ollama lives in harness/bench/agreement.py."""
    import ast

    from harness.paths import PROJECT_ROOT
    tree = ast.parse((PROJECT_ROOT / "harness" / "agreement.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and ("fake" in m or "testing" in m or "bench" in m)}
    from harness.bench.agreement import bench_agreement, own_pairs_report
    assert callable(bench_agreement) and callable(own_pairs_report)
