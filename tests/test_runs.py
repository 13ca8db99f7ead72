"""Runs are what they say: a --limit run is its own partial rows file, a run with failed items saves the good ones
and ends with exit 2, the judge's outage is never stored as its verdict, and `generate-set` / `judge` never write
an empty or failed item as answered. Real sockets: the fake OpenAI server generates, the fake Ollama judges.

    python -m pytest -q tests/test_runs.py
"""
from __future__ import annotations

import json

import pytest

from harness.__main__ import COMMANDS
from harness.cli import main
from harness.evaluate import RunIncomplete, item_set_id, run
from harness.engines import EngineConfig
from harness.judge import JudgeConfig
from harness.store import Store
from harness.testing import HTML_PAGE
from harness.testing.fake_ollama import FakeOllama
from harness.testing.fake_openai import FakeOpenAI

FAST = ["--retries", "1", "--backoff", "0.01", "--workers", "2"]
JFAST = ["--judge-retries", "1", "--judge-backoff", "0.01", "--judge-workers", "2"]


def cli(*argv) -> int:
    return main(COMMANDS, [str(a) for a in argv])


def rows_of(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def html_for(marker: str, good):
    """A judge (or server) answering a proxy's HTML page, with status 200, for the items whose prompt holds
    `marker`, and `good(body)` for the others."""
    def answer(body):
        text = json.dumps(body.get("messages"))
        return {"raw": HTML_PAGE} if marker in text else good(body)
    return answer


def judge_json(body) -> str:
    return '{"score": 60, "reason": "fine"}'


def test_a_limit_run_is_its_own_partial_rows_file_and_never_touches_the_full_run(tmp_path):
    with FakeOpenAI() as server:
        full = run(server.spec(), None, "instructions_own", None, progress=False)
        before = full.path.read_bytes()
        part = run(server.spec(), None, "instructions_own", None, limit=10, progress=False)
    assert len(full.rows) == 50 and not any(r["partial"] for r in full.rows)
    assert len(part.rows) == 10 and all(r["partial"] and r["n_failed"] == 0 for r in part.rows)
    ids = [r["item_id"] for r in part.rows]
    assert {r["item_set"] for r in part.rows} == {item_set_id(ids)} != {full.rows[0]["item_set"]}
    assert part.path != full.path and part.path.name == f"{full.run_id}__part-{item_set_id(ids)}.jsonl"
    assert full.path.read_bytes() == before                          # the full run's file is untouched
    assert len(rows_of(full.path)) == 50 and len(rows_of(part.path)) == 10


def test_the_judges_outage_is_never_stored_as_its_verdict(tmp_path, capsys):
    with FakeOpenAI() as server, FakeOllama(default=lambda body: {"raw": HTML_PAGE}) as judge:
        rc = cli("run", "--model", server.spec(), "--eval-set", "instructions_own", "--limit", "4",
                 "--judge", "ollama:llama3", "--judge-host", judge.url, *FAST, *JFAST)
        err = capsys.readouterr().err
        with Store() as st:
            stored = st.count("judgments")
    assert rc == 2 and "4 of 4 items failed" in err and "rerun the same command" in err, err
    assert "Traceback" not in err and stored == 0                    # no verdict was kept for the outage
    assert not list((tmp_path / "results").rglob("*.jsonl"))         # and no row claims an answer
    with FakeOpenAI() as server, FakeOllama(default=judge_json) as judge:
        rc = cli("run", "--model", server.spec(), "--eval-set", "instructions_own", "--limit", "4",
                 "--judge", "ollama:llama3", "--judge-host", judge.url, *FAST, *JFAST)
        asked = judge.count("/api/chat")
    assert rc == 0 and asked == 4                                    # a healthy judge is asked again


def test_a_run_with_failed_judge_items_keeps_the_good_ones_and_counts_no_failed_item(tmp_path, capsys):
    with FakeOpenAI() as server, FakeOllama(default=html_for("passive voice", judge_json)) as judge:
        kw = dict(limit=6, progress=False, judge_config=JudgeConfig("ollama:llama3", host=judge.url, retries=1,
                                                                     backoff=0.01),
                  engine_config=EngineConfig(retries=1, backoff=0.01))
        with pytest.raises(RunIncomplete) as e:
            run(server.spec(), None, "instructions_own", "ollama:llama3", **kw)
        res = e.value.result
        assert list(res.failed) == [1] and len(res.rows) == 5                     # instr-own-002 failed
        assert "instr-own-002" not in {r["item_id"] for r in res.rows}
        assert all(r["parsed"] and r["score"] == 60 for r in res.rows)          # every row has a real verdict
        assert all(r["partial"] and r["n_failed"] == len(res.failed) for r in res.rows)
        assert rows_of(res.path) == res.rows and "__part-" in res.path.name
        with Store() as st:
            assert st.count("judgments") == len(res.rows)                       # failures are not cached
        asked = judge.count("/api/chat")
        judge.default = judge_json                                               # the judge recovers
        again = run(server.spec(), None, "instructions_own", "ollama:llama3", **kw)
        assert judge.count("/api/chat") - asked == len(res.failed)               # only the failed ones
    assert len(again.rows) == 6 and not again.failed and not res.path.exists()   # the failed attempt's file goes


def test_generate_set_never_writes_a_failed_item_as_an_empty_answer(tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    with FakeOpenAI(default=html_for("Africa and Australia", lambda b: {"content": "an answer"})) as server:
        rc = cli("generate-set", "--model", server.spec(), "--eval-set", "instructions_own", "--limit", "5",
                 "--output", out)
    err = capsys.readouterr().err
    rows = rows_of(out)
    assert rc == 2 and "items failed" in err and "holds only the answered items" in err, err
    assert len(rows) == 4 and "instr-own-003" not in {r["id"] for r in rows} and all(r["model_response"] == "an answer" for r in rows)   # no empty answer


def test_judge_command_writes_the_judged_rows_and_asks_only_for_the_failed_ones_again(tmp_path, capsys):
    rows = [{"instruction": f"Say {w}.", "input": "", "output": w, "model_response": w} for w in
            ("red", "green", "blue", "black")]
    responses = tmp_path / "r.jsonl"
    responses.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    with FakeOllama(default=html_for("Say blue", judge_json)) as judge:
        rc = cli("judge", "--responses", responses, "--output", out, "--judge", "ollama:llama3",
                 "--judge-host", judge.url, *JFAST)
        err = capsys.readouterr().err
        assert rc == 2 and "1 of 4 responses were not judged" in err and "rerun the same command" in err, err
        assert [r["model_response"] for r in rows_of(out)] == ["red", "green", "black"]
        asked = judge.count("/api/chat")
        judge.default = judge_json
        rc = cli("judge", "--responses", responses, "--output", out, "--judge", "ollama:llama3",
                 "--judge-host", judge.url, *JFAST)
        assert rc == 0 and judge.count("/api/chat") - asked == 1 and len(rows_of(out)) == 4


def test_a_limit_run_with_a_judge_never_merges_into_the_full_leaderboard_row(tmp_path):
    from harness.leaderboard import build_leaderboard
    with FakeOpenAI() as server, FakeOllama(default=judge_json) as judge:
        jcfg = JudgeConfig("ollama:llama3", host=judge.url)
        full = run(server.spec(), None, "instructions_own", "ollama:llama3", judge_config=jcfg, progress=False)
        created = full.rows[0]["created_at"]
        part = run(server.spec(), None, "instructions_own", "ollama:llama3", limit=10, judge_config=jcfg,
                   progress=False)
    board = build_leaderboard(tmp_path / "results" / "runs", "chat")["chat"]
    mine = board[board["model"] == full.rows[0]["model"]]
    assert sorted(mine["n"]) == [10, 50] and list(mine["n_duplicates"]) == [0, 0]
    whole = mine[mine["n"] == 50].iloc[0]
    assert not whole["partial"] and whole["created_at"] == created         # the full row is untouched
    assert mine[mine["n"] == 10].iloc[0]["partial"] and part.rows[0]["item_set"] != full.rows[0]["item_set"]
