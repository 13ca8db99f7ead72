"""The store: content keys, no duplicates, exports, and surviving kill -9.

    python -m pytest tests/test_store.py -q
"""
from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from harness.errors import UserError
from harness.paths import PROJECT_ROOT
from harness.store import Store, default_path, generation_key, judgment_key


def _judgment(key: str, score=70.0, parsed=True) -> dict:
    return {"key": key, "judge": "ollama:llama3", "judge_digest": "d", "prompt_version": "v1", "prompt_sha": "p",
            "options": {"temperature": 0, "seed": 123}, "item": {"id": "1", "response": "漢字 ok"},
            "score": score, "parsed": parsed, "raw": "Score: 70/100", "reason": "", "attempts": 1, "seconds": 0.2}


def test_default_path_is_in_the_cache(tmp_path):
    assert default_path() == tmp_path / "cache" / "store.sqlite"      # FTBENCH_CACHE from conftest
    with Store() as st:
        assert st.path.is_file()


def test_roundtrip_and_no_duplicates(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        st.put("judgments", [_judgment("a"), _judgment("b", score=None, parsed=False)])
        st.put("judgments", [_judgment("a")])                            # a rerun writing the same item
        assert st.count("judgments") == 2
        got = st.get("judgments", ["a", "b", "missing"])
    assert set(got) == {"a", "b"}
    assert got["a"]["options"] == {"temperature": 0, "seed": 123} and got["a"]["item"]["response"] == "漢字 ok"
    assert got["a"]["parsed"] is True and got["b"]["parsed"] is False and got["b"]["score"] is None
    assert got["a"]["created_at"]


def test_put_rejects_unknown_fields(tmp_path):
    with Store(tmp_path / "s.sqlite") as st, pytest.raises(ValueError, match="unknown fields"):
        st.put("generations", [{"key": "k", "respnse": "typo"}])


def test_keys_change_exactly_with_their_inputs():
    base = generation_key("smollm2", "sha-a", {"max_new_tokens": 64, "do_sample": False}, "prompt")
    assert base == generation_key("smollm2", "sha-a", {"do_sample": False, "max_new_tokens": 64}, "prompt")
    assert base != generation_key("smollm2", "sha-b", {"max_new_tokens": 64, "do_sample": False}, "prompt")
    assert base != generation_key("smollm2", "sha-a", {"max_new_tokens": 65, "do_sample": False}, "prompt")
    assert base != generation_key("smollm2", "sha-a", {"max_new_tokens": 64, "do_sample": False}, "prompt ")
    assert base != generation_key("smollm2", "sha-a", {"max_new_tokens": 64, "do_sample": False}, "prompt",
                                  model_digest="new-weights")
    args = ("ollama:llama3", "digest1", "v1", "psha", {"temperature": 0, "seed": 123}, {"response": "x"})
    j = judgment_key(*args)
    for i, other in enumerate(["ollama:mistral", "digest2", "v2", "psha2", {"temperature": 0, "seed": 1},
                               {"response": "y"}]):
        changed = list(args)
        changed[i] = other
        assert judgment_key(*changed) != j


def test_exports_jsonl_and_csv(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        st.put("judgments", [_judgment("a"), _judgment("b", score=None, parsed=False)])
        jl = st.export("judgments", tmp_path / "out" / "j.jsonl")
        cs = st.export("judgments", tmp_path / "out" / "j.csv")
        with pytest.raises(UserError, match=".jsonl or .csv"):
            st.export("judgments", tmp_path / "j.txt")
    lines = [json.loads(x) for x in jl.read_text(encoding="utf-8").splitlines()]
    assert {r["key"] for r in lines} == {"a", "b"} and lines[0]["options"]["seed"] == 123
    with open(cs, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and json.loads(rows[0]["item"])["response"] == "漢字 ok"


def test_the_store_csv_export_escapes_formula_cells(tmp_path):
    """Issue 24: every CSV goes through the one writer; a judge's raw answer '=HYPERLINK(...)' must not become a
    live formula in a spreadsheet (before: csv.DictWriter wrote it as is)."""
    from harness.io import csv_unescape
    with Store(tmp_path / "s.sqlite") as st:
        st.put("judgments", [{**_judgment("a"), "raw": '=HYPERLINK("http://x","click")'}])
        cs = st.export("judgments", tmp_path / "j.csv")
    with open(cs, encoding="utf-8", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["raw"].startswith("'=") and csv_unescape(row["raw"]) == '=HYPERLINK("http://x","click")'


def test_damaged_store_names_the_fix(tmp_path):
    bad = tmp_path / "s.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="move it aside"):
        Store(bad)


WRITER = """
import sys
from harness.store import Store
st = Store(sys.argv[1])
i = 0
while True:
    st.put("generations", [{"key": f"k{i:05d}", "model": "m", "response": "r" * 2000, "response_tokens": i}])
    print(i, flush=True)
    i += 1
"""


def test_kill_9_while_writing_loses_no_committed_row(tmp_path):
    path = tmp_path / "s.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=PROJECT_ROOT)
    acknowledged = -1
    deadline = time.time() + 30
    while acknowledged < 200 and time.time() < deadline:
        acknowledged = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert acknowledged >= 200
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Store(path) as st:
        n = st.count("generations")
        got = st.get("generations", [f"k{i:05d}" for i in range(acknowledged + 1)])
        assert len(got) == acknowledged + 1                  # every acknowledged row survived the kill
        rows = st.rows("generations")
        assert sorted(r["key"] for r in rows) == [f"k{i:05d}" for i in range(n)]   # a gap-free prefix, no dupes
        assert all(r["response"] == "r" * 2000 for r in rows)          # and none is half written
        st.put("generations", [{"key": "after", "model": "m"}])          # and the store is writable again
        assert st.count("generations") == n + 1


# The votes table exactly as the store of commit f71bac0 (before votes had a session) created it.
OLD_VOTES_TABLE = (
    "CREATE TABLE votes (key TEXT PRIMARY KEY, task TEXT, eval_set TEXT, item_id TEXT, prompt TEXT, "
    "response_left TEXT, response_right TEXT, side_a TEXT, model_a TEXT, adapter_a TEXT, model_b TEXT, "
    "adapter_b TEXT, seed_a INTEGER, seed_b INTEGER, sha_a TEXT, sha_b TEXT, len_a INTEGER, len_b INTEGER, "
    "choice TEXT, winner TEXT, reason TEXT, source TEXT, status TEXT, note TEXT, undone_at TEXT, created_at TEXT)")


def test_an_existing_store_gains_the_session_column_and_keeps_its_votes_as_nobodys(tmp_path):
    """Issue 23 part 2: a store.sqlite written before votes had sessions opens, keeps every vote (counted and
    exported, but no visitor's), and takes new votes with a session."""
    from harness.votes import NotYourVote, cast_vote, counted_votes, list_votes, undo_vote

    path = tmp_path / "store.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(OLD_VOTES_TABLE)
    db.execute("INSERT INTO votes (key, item_id, side_a, choice, winner, sha_a, sha_b, len_a, len_b, status, "
               "created_at) VALUES ('old-1', 'q1', 'left', 'left', 'a', ?, ?, 3, 4, 'counted', "
               "'2026-01-01T00:00:00+00:00')", ("a" * 64, "b" * 64))
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with Store(path) as st:
        (old,) = st.rows("votes")
        assert old["key"] == "old-1" and old["session"] is None and old["winner"] == "a"
        assert [v["id"] for v in list_votes(st)] == ["old-1"] and len(counted_votes(st)) == 1
        assert list_votes(st, session="browser-1") == []                 # nobody's
        with pytest.raises(NotYourVote):
            undo_vote(st, "old-1", session="browser-1")
        new = cast_vote(st, session="browser-1", prompt="p", response_left="x", response_right="y", side_a="left",
                        model_a="", adapter_a="", model_b="", adapter_b="", seed_a=0, seed_b=0, choice="tie")
        assert [v["id"] for v in list_votes(st, session="browser-1")] == [new]
    db = sqlite3.connect(path)
    cols = [r[1] for r in db.execute("PRAGMA table_info(votes)")]
    assert cols.count("session") == 1 and db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()
    with Store(path) as st:                  # opening again adds nothing twice
        assert st.count("votes") == 2


def test_rows_can_be_filtered_by_column_values(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        st.put("judgments", [_judgment("a"), _judgment("b", score=None, parsed=False), _judgment("c")])
        assert [r["key"] for r in st.rows("judgments", {"parsed": 1})] == ["a", "c"]
        assert [r["key"] for r in st.rows("judgments", {"score": 70.0, "key": "c"})] == ["c"]
        with pytest.raises(ValueError, match="unknown columns"):
            st.rows("judgments", {"nope": 1})
