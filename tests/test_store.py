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
