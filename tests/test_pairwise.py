"""Pairwise judging: verdict parsing, both orders, flips as ties, unparsed kept, the store cache, baselines.

    python -m pytest tests/test_pairwise.py -q
"""
from __future__ import annotations

import json

import pytest

from harness.errors import UserError
from harness.testing.fake_ollama import FakeOllama
from harness.judge import JudgeConfig, open_judge
from harness.pairwise import (COLUMNS, VERDICT_SCHEMA, check_baseline, combine, load_pairwise_prompt,
                              pairwise_columns, pairwise_judge, pairwise_markdown, parse_verdict)
from harness.testing import fake_pairwise_answer
from harness.store import Store

VERDICTS = [
    ('{"winner": "A", "reason": "More accurate."}', "A"),
    ('{"winner": "B", "reason": "x"}', "B"),
    ('{"winner": "tie", "reason": "x"}', "tie"),
    ('{"winner": "Response B"}', "B"),
    ('Here you go:\n```json\n{"winner": "A", "reason": "ok"}\n```', "A"),
    ("[[B]]", "B"),
    ("After comparing both, my final verdict is [[C]].", "tie"),
    ("A", "A"),
    ("**B**", "B"),
    ("Response A is better because it answers the question.", "A"),
    ("The winner is B.", "B"),
    ("I prefer Response B: it is correct.", "B"),
    ("It's a tie: both are equally good.", "tie"),
    # neither named, or both: unparsed (kept, counted)
    ("Both responses have merits and drawbacks.", None),
    ("I cannot decide.", None),
    ("", None),
    ('{"winner": "C-3PO"}', None),
    ("Response A is better in tone, but the winner is B.", None),
]


@pytest.mark.parametrize("text,expected", VERDICTS)
def test_parse_verdict_table(text, expected):
    verdict, reason = parse_verdict(text)
    assert verdict == expected
    if expected is None:
        assert reason                      # why it is unparsed is kept


def test_combine_counts_a_flip_as_an_inconsistent_tie():
    assert combine("A", "B") == ("a", True)           # a first and wins; b first and loses
    assert combine("B", "A") == ("b", True)
    assert combine("tie", "tie") == ("tie", True)
    assert combine("A", "A") == ("tie", False)        # the first position won both times: a flip
    assert combine("A", "tie") == ("tie", False)
    assert combine(None, "A") == (None, None)


def test_prompt_files_are_versioned_and_checked():
    for task in ("chat", "poem"):
        p = load_pairwise_prompt(task, "v1")
        assert "{response_a}" in p.text and "{response_b}" in p.text and len(p.sha256) == 64
    with pytest.raises(UserError, match="pairwise_chat_v9.txt.*Available: pairwise_chat_v1"):
        load_pairwise_prompt("chat", "v9")
    with pytest.raises(UserError, match="no pairwise prompt for task 'spam'"):
        load_pairwise_prompt("spam")


def _items(n: int):
    items = [{"id": f"q{i}", "task": "chat", "instruction": f"Say the number {i}.", "input": "",
              "output": f"{i}"} for i in range(n)]
    return items, [f"The number is {i}." for i in range(n)], [f"No idea ({i})." for i in range(n)]


def _cfg(fake, **kw):
    return JudgeConfig("ollama:llama3", host=fake.url, backoff=0.01, **kw)


def test_both_orders_are_asked_and_flips_become_ties(tmp_path):
    items, ra, rb = _items(3)
    # item q0: A then B -> a wins both ways; q1: A then A -> flip; q2: B then A -> b wins both ways
    answers = ['{"winner": "A", "reason": "r"}', '{"winner": "B", "reason": "r"}',
               '{"winner": "A", "reason": "r"}', '{"winner": "A", "reason": "r"}',
               '{"winner": "B", "reason": "r"}', '{"winner": "A", "reason": "r"}']
    with FakeOllama(answers=answers) as fake, Store(tmp_path / "s.sqlite") as st:
        with open_judge(_cfg(fake, workers=1)) as judge:
            res = pairwise_judge(judge, items, ra, rb, st, progress=False)
        bodies = fake.chat_bodies()
        stored = st.rows("pairwise")
    assert len(bodies) == 6 and bodies[0]["format"] == VERDICT_SCHEMA
    first, second = bodies[0]["messages"][0]["content"], bodies[1]["messages"][0]["content"]
    assert first.index("The number is 0.") < first.index("No idea (0).")        # order ab: candidate first
    assert second.index("No idea (0).") < second.index("The number is 0.")      # order ba: baseline first
    assert [(it.winner, it.consistent) for it in res.items] == [("a", True), ("tie", False), ("b", True)]
    cols = res.columns()
    assert set(cols) == set(COLUMNS)
    assert cols["pw_win_rate"] == pytest.approx(0.5) and cols["pw_n"] == 3 and cols["pw_unparsed"] == 0
    assert cols["pw_consistency"] == pytest.approx(2 / 3, abs=1e-3) and cols["pw_ties"] == pytest.approx(1 / 3, abs=1e-3)
    assert cols["pw_first_wins"] == pytest.approx(4 / 6, abs=1e-3)
    assert cols["pw_win_ci_low"] <= cols["pw_win_rate"] <= cols["pw_win_ci_high"]
    assert len(stored) == 6 and {r["order_shown"] for r in stored} == {"ab", "ba"}
    md = pairwise_markdown(res, "adapter", "base")
    assert "50.0%" in md and "1 / 1 / 1" in md and "(1 flipped)" in md


def test_unparsed_verdicts_are_kept_and_counted(tmp_path):
    items, ra, rb = _items(2)
    answers = ["I like both.", "Still both.", '{"winner": "A", "reason": "r"}',
               '{"winner": "A", "reason": "r"}', '{"winner": "B", "reason": "r"}']
    with FakeOllama(answers=answers) as fake, Store(tmp_path / "s.sqlite") as st:
        with open_judge(_cfg(fake, workers=1, parse_retries=1)) as judge:
            res = pairwise_judge(judge, items, ra, rb, st, progress=False)
        rows = {(r["item_id"], r["order_shown"]): r for r in st.rows("pairwise")}
    bad = rows[("q0", "ab")]
    assert bad["parsed"] is False and bad["verdict"] is None and "Still both." in bad["raw"]
    assert "neither A nor B" in bad["reason"] and bad["attempts"] == 2
    assert res.items[0].winner is None and res.items[1].winner == "a"
    cols = pairwise_columns(res)
    assert cols["pw_unparsed"] == 1 and cols["pw_n"] == 1 and cols["pw_win_rate"] == 1.0


def test_warm_rerun_sends_nothing_and_a_changed_answer_reasks_only_its_item(tmp_path):
    items, ra, rb = _items(4)
    with FakeOllama(default=fake_pairwise_answer) as fake, Store(tmp_path / "s.sqlite") as st:
        with open_judge(_cfg(fake, workers=4)) as judge:
            cold = pairwise_judge(judge, items, ra, rb, st, progress=False)
            n_cold = fake.count("/api/chat")
            warm = pairwise_judge(judge, items, ra, rb, st, progress=False)
            n_warm = fake.count("/api/chat") - n_cold
            ra2 = list(ra)
            ra2[2] = "A different answer."
            again = pairwise_judge(judge, items, ra2, rb, st, progress=False)
            n_again = fake.count("/api/chat") - n_cold - n_warm
    assert cold.asked == 8 and n_cold == 8
    assert warm.asked == 0 and n_warm == 0
    assert [(i.ab, i.ba) for i in warm.items] == [(i.ab, i.ba) for i in cold.items]
    assert again.asked == 2 and n_again == 2


def test_the_judge_digest_and_prompt_version_are_part_of_the_key(tmp_path):
    items, ra, rb = _items(1)
    with Store(tmp_path / "s.sqlite") as st:
        with FakeOllama(default=fake_pairwise_answer) as fake, open_judge(_cfg(fake)) as judge:
            pairwise_judge(judge, items, ra, rb, st, progress=False)
        with FakeOllama(default=fake_pairwise_answer, digest="f" * 64) as fake, open_judge(_cfg(fake)) as judge:
            res = pairwise_judge(judge, items, ra, rb, st, progress=False)
            assert res.asked == 2 and fake.count("/api/chat") == 2
        assert {r["judge_digest"] for r in st.rows("pairwise")} == {"f" * 64,
                                                                     "365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1"}


def test_workers_run_requests_in_parallel(tmp_path):
    items, ra, rb = _items(6)
    with FakeOllama(default=fake_pairwise_answer, delay=0.1) as fake, Store(tmp_path / "s.sqlite") as st:
        with open_judge(_cfg(fake, workers=4)) as judge:
            pairwise_judge(judge, items, ra, rb, st, progress=False)
        assert 2 <= fake.max_in_flight <= 4


def test_responses_by_id_must_cover_every_item(tmp_path):
    items, ra, _ = _items(2)
    with FakeOllama() as fake, Store(tmp_path / "s.sqlite") as st, open_judge(_cfg(fake)) as judge:
        with pytest.raises(UserError, match="the baseline has no response for item.*q1"):
            pairwise_judge(judge, items, ra, {"q0": "x"}, st, progress=False)
        assert fake.count("/api/chat") == 0


def _rows(eval_set, ids, adapter):
    return [{"eval_set": eval_set, "item_id": i, "model": "m", "adapter": adapter, "response": "r"} for i in ids]


def test_a_baseline_on_another_eval_set_or_other_items_is_refused():
    run = _rows("instructions_own", ["a", "b", "c"], "alpaca")
    with pytest.raises(UserError, match="baseline is on eval set other_set but the run is on instructions_own"):
        check_baseline(run, _rows("other_set", ["a", "b", "c"], ""))
    with pytest.raises(UserError, match=r"different items: 1 item\(s\) only in the run \(c\); 1 only in the baseline \(d\)"):
        check_baseline(run, _rows("instructions_own", ["a", "b", "d"], ""))
    with pytest.raises(UserError, match="same model and adapter"):
        check_baseline(run, _rows("instructions_own", ["a", "b", "c"], "alpaca"))
    check_baseline(run, _rows("instructions_own", ["c", "b", "a"], ""))       # same items, any order: fine


def test_logprob_judge_in_process_one_forward_pass(tiny_llama_dir, tmp_path):
    items, ra, rb = _items(3)
    cfg = JudgeConfig(f"transformers:{tiny_llama_dir}", batch_size=8)
    with open_judge(cfg) as judge, Store(tmp_path / "s.sqlite") as st:
        calls = []
        model = judge.lm.model
        handle = model.register_forward_hook(lambda mod, args, kw_out: calls.append(1))
        try:
            res = pairwise_judge(judge, items, ra, rb, st, progress=False)
        finally:
            handle.remove()
        rows = st.rows("pairwise")
        again = pairwise_judge(judge, items, ra, rb, st, progress=False)
    assert len(calls) == 1                              # 3 items x 2 orders in ONE batched forward pass
    assert res.method == "logprob" and res.asked == 6 and again.asked == 0
    for r in rows:
        la, lb = r["logp_a"], r["logp_b"]
        assert la < 0 and lb < 0 and r["parsed"] is True
        expected = "tie" if abs(la - lb) < 0.1 else ("A" if la > lb else "B")
        assert r["verdict"] == expected and json.loads(r["raw"])["logp_A"] == pytest.approx(la, abs=1e-3)
    assert all(it.winner in ("a", "b", "tie") for it in res.items)
    by = {(r["item_id"], r["order_shown"]): r for r in rows}
    for it in res.items:                              # the debiased verdict: mean log-odds for a over both orders
        ab, ba = by[(it.item_id, "ab")], by[(it.item_id, "ba")]
        score = ((ab["logp_a"] - ab["logp_b"]) + (ba["logp_b"] - ba["logp_a"])) / 2
        assert it.debiased == ("tie" if abs(score) <= 0.1 else "a" if score > 0 else "b")


def test_debias_cancels_a_fixed_preference_for_the_first_slot():
    from harness.pairwise import debias
    # the judge likes slot A by 2 nats whatever it sees, and the candidate by 0.5 nats on top
    ab, ba = {"logp_a": -1.0, "logp_b": -3.5}, {"logp_a": -1.5, "logp_b": -3.0}
    assert combine("A", "A") == ("tie", False)            # the strict rule: a flip is an inconsistent tie
    assert debias(ab, ba) == "a"                          # the debiased mean still sees the 0.5-nat preference
    assert debias(ba, ab) == "b" and debias(ab, ab) == "tie"
    assert debias({"logp_a": None, "logp_b": -1.0}, ba) is None


def test_row_fields_give_the_same_columns_back(tmp_path):
    from harness.pairwise import columns_from_rows, row_fields
    items, ra, rb = _items(5)
    with FakeOllama(default=fake_pairwise_answer) as fake, Store(tmp_path / "s.sqlite") as st:
        with open_judge(_cfg(fake)) as judge:
            res = pairwise_judge(judge, items, ra, rb, st, progress=False)
    fields = row_fields(res, "instructions_own__m__base__x")
    rows = [{"item_id": it["id"], **fields[it["id"]]} for it in items]
    assert columns_from_rows(rows) == res.columns()
    assert columns_from_rows([{"item_id": "x"}]) == {}
