"""Human votes and labels files: blind sides, undo kept for review, orphans, all-or-nothing imports, and votes
that belong to the browser session that cast them (issue 23 part 2).

    python -m pytest tests/test_votes.py -q
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.io import iter_jsonl, text_sha
from harness.paths import PROJECT_ROOT
from harness.store import Store
from harness.votes import (NotYourVote, VoteKept, cast_vote, counted_votes, get_vote, labels_export_cmd,
                           labels_import_cmd, list_votes, read_labels, session_hash, tally, undo_vote)

ITEM = "instr-own-003"
BASE = "smollm2-135m-instruct"


def _vote(st, choice="left", side_a="right", item_id=ITEM, adapter_a="", eval_set="instructions_own",
          session="browser-1", **kw):
    return cast_vote(st, session=session, prompt="Which ocean lies between Africa and Australia?",
                     response_left="The Indian Ocean.",
                     response_right="The Pacific.", side_a=side_a, model_a=BASE, adapter_a=adapter_a,
                     model_b=BASE, adapter_b="", seed_a=1, seed_b=2, choice=choice, task="chat",
                     eval_set=eval_set, item_id=item_id, **kw)


def test_a_vote_is_stored_with_both_answers_sides_and_time(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        vid = _vote(st, choice="left", side_a="right")           # A was on the right, the voter chose left = B
        (row,) = st.rows("votes")
    assert row["key"] == vid and row["winner"] == "b" and row["choice"] == "left" and row["status"] == "counted"
    assert row["sha_a"] == text_sha("The Pacific.") and row["sha_b"] == text_sha("The Indian Ocean.")
    assert row["len_a"] == len("The Pacific.") and row["seed_a"] == 1 and row["seed_b"] == 2
    assert row["created_at"][:4].isdigit() and row["prompt"].startswith("Which ocean")


@pytest.mark.parametrize("choice,side_a,winner", [("left", "left", "a"), ("right", "left", "b"),
                                                   ("right", "right", "a"), ("tie", "left", "tie"),
                                                   ("both_bad", "right", "both_bad")])
def test_sides_map_to_a_and_b(tmp_path, choice, side_a, winner):
    with Store(tmp_path / "s.sqlite") as st:
        _vote(st, choice=choice, side_a=side_a)
        assert st.rows("votes")[0]["winner"] == winner


def test_bad_choice_or_side_is_refused_and_nothing_stored(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        with pytest.raises(UserError, match="choice must be one of left, right, tie, both_bad"):
            _vote(st, choice="A")
        with pytest.raises(UserError, match="side_a must be left or right"):
            _vote(st, side_a="top")
        assert st.count("votes") == 0


def test_list_newest_first_and_undo_is_a_soft_delete(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        ids = [_vote(st) for _ in range(3)]
        st._db.execute("UPDATE votes SET created_at = '2000-01-01T00:00:00+00:00' WHERE key = ?", (ids[0],))
        listed = list_votes(st, limit=2)
        assert len(listed) == 2 and ids[0] not in [v["id"] for v in listed]
        assert undo_vote(st, ids[1]) is True
        assert undo_vote(st, ids[1]) is False and undo_vote(st, "no-such-vote") is False
        by_id = {v["id"]: v for v in list_votes(st)}
        assert by_id[ids[1]]["status"] == "undone" and by_id[ids[1]]["undone_at"]
        assert len(by_id) == 3                                   # kept for review
        assert sorted(v["key"] for v in counted_votes(st)) == sorted([ids[0], ids[2]])


@pytest.mark.parametrize("kw,what", [({"item_id": "instr-own-999"}, "item 'instr-own-999' is no longer in eval set"),
                                     ({"eval_set": "gone_set"}, "eval set 'gone_set' no longer exists"),
                                     ({"adapter_a": "deleted-adapter"}, "adapter 'deleted-adapter' no longer exists")])
def test_a_vote_for_something_gone_is_kept_for_review_with_a_message(tmp_path, kw, what):
    with Store(tmp_path / "s.sqlite") as st:
        with pytest.raises(VoteKept, match=what) as err:
            _vote(st, **kw)
        (row,) = st.rows("votes")
    assert row["key"] == err.value.vote_id and row["status"] == "review" and what in row["note"]
    assert "kept for review, not counted" in str(err.value)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


SHA = "a" * 64


def test_a_bad_labels_file_names_each_line_and_imports_nothing(tmp_path):
    bad = _write_csv(tmp_path / "labels.csv", ["eval_set", "item_id", "winner", "sha_a", "sha_b", "seed_a"], [
        ["instructions_own", "instr-own-001", "a", SHA, SHA, ""],           # fine
        ["instructions_own", "instr-own-999", "a", SHA, SHA, ""],           # line 3: unknown id
        ["instructions_own", "instr-own-002", "maybe", SHA, SHA, ""],       # line 4: bad value
        ["instructions_own", "instr-own-002", "b", "xyz", SHA, "ten"],      # line 5: bad sha, bad seed
        ["nope", "instr-own-002", "b", SHA, "", ""],                        # line 6: unknown set, missing sha_b
    ])
    store = tmp_path / "s.sqlite"
    with pytest.raises(UserError) as err:
        labels_import_cmd(str(bad), store=str(store))
    msg = str(err.value)
    assert msg.startswith("nothing imported")
    for expected in (f"{bad}:3: unknown item id 'instr-own-999'", f"{bad}:4: winner 'maybe' must be one of",
                     f"{bad}:5: sha_a 'xyz' is not a sha256", f"{bad}:5: seed_a 'ten' must be an integer",
                     f"{bad}:6: unknown eval set 'nope'", f"{bad}:6: missing sha_b"):
        assert expected in msg
    with Store(store) as st:
        assert st.count("votes") == 0


def test_a_missing_column_is_a_file_line_error(tmp_path):
    bad = _write_csv(tmp_path / "labels.csv", ["eval_set", "item_id", "sha_a", "sha_b"],
                     [["instructions_own", "instr-own-001", SHA, SHA]])
    with pytest.raises(UserError, match=r"labels.csv:1: missing column\(s\) winner"):
        labels_import_cmd(str(bad), store=str(tmp_path / "s.sqlite"))
    jl = tmp_path / "labels.jsonl"
    jl.write_text(json.dumps({"eval_set": "instructions_own", "item_id": "instr-own-001", "winner": "a"}) + "\n"
                  + json.dumps({"eval_set": "instructions_own", "winner": "a"}) + "\n")
    with pytest.raises(UserError, match=r"labels.jsonl:2: missing field\(s\) item_id"):
        labels_import_cmd(str(jl), store=str(tmp_path / "s.sqlite"))


def test_export_then_import_roundtrip_and_reimport_does_not_duplicate(tmp_path, capsys):
    src, dst = tmp_path / "src.sqlite", tmp_path / "dst.sqlite"
    with Store(src) as st:
        _vote(st, choice="right", side_a="left")
        _vote(st, choice="tie", side_a="right")
    for ext in ("csv", "jsonl"):
        out = tmp_path / f"votes.{ext}"
        assert labels_export_cmd(str(out), store=str(src)) == 0
        assert labels_import_cmd(str(out), store=str(dst)) == 0
        assert labels_import_cmd(str(out), store=str(dst)) == 0
    with Store(src) as a, Store(dst) as b:
        before = {r["key"]: r for r in a.rows("votes")}
        after = {r["key"]: r for r in b.rows("votes")}
    assert set(after) == set(before)                                  # same ids: replaced, not duplicated
    for k, r in before.items():
        for col in ("winner", "sha_a", "sha_b", "side_a", "choice", "item_id", "model_a", "seed_a"):
            assert after[k][col] == r[col], col
        assert after[k]["response_left"] == r["response_left"]


def test_the_cli_reports_a_bad_file_in_one_sentence(tmp_path):
    bad = _write_csv(tmp_path / "l.csv", ["eval_set", "item_id", "winner", "sha_a", "sha_b"],
                     [["instructions_own", "nope-1", "a", SHA, SHA]])
    env_store = tmp_path / "s.sqlite"
    p = subprocess.run([sys.executable, "-m", "harness", "labels", "import", str(bad), "--store", str(env_store)],
                       cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{bad}:2: unknown item id 'nope-1'" in p.stderr


def test_the_committed_labels_are_valid_and_match_the_committed_answers():
    path = PROJECT_ROOT / "eval_sets" / "own" / "instructions_own_pairs.jsonl"
    labels = read_labels(path)
    answers = {(r["item_id"], r["adapter"], text_sha(r["response"]))
               for task in ("chat", "poem") for f in (PROJECT_ROOT / "results" / "runs" / task).glob("*_own__*.jsonl")
               for _, r in iter_jsonl(f)}
    assert len(labels) >= 40 and sum(lab["eval_set"] == "instructions_own" for lab in labels) == 50
    for lab in labels:
        assert lab["adapter_a"] in ("smollm2-135m-alpaca", "smollm2-135m-poem-zh") and lab["adapter_b"] == ""
        assert (lab["item_id"], lab["adapter_a"], lab["sha_a"]) in answers
        assert (lab["item_id"], "", lab["sha_b"]) in answers
        assert lab["reason"] and lab["side_a"] in ("left", "right")
    raw = [row for _, row in iter_jsonl(path)]
    assert all(set(r) >= {"label_id", "item_id", "sha_a", "sha_b", "winner", "reason"} for r in raw)
    assert not any("response" in k or k == "prompt" for r in raw for k in r)    # hashes only, no answer text


# ---------------------------------------------------------------- votes belong to their browser session

def _snapshot(st) -> list[tuple]:
    return [tuple(sorted(r.items())) for r in st.rows("votes")]


def test_a_visitor_sees_only_the_votes_their_session_cast(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        mine = {_vote(st, session="browser-1"), _vote(st, session="browser-1", choice="tie")}
        theirs = _vote(st, session="browser-2")
        assert {v["id"] for v in list_votes(st, session="browser-1")} == mine
        assert [v["id"] for v in list_votes(st, session="browser-2")] == [theirs]
        assert list_votes(st, session="browser-3") == [] and list_votes(st, session="") == []
        assert {v["id"] for v in list_votes(st)} == mine | {theirs}          # the CLI export sees every vote
        assert get_vote(st, theirs, session="browser-2")["winner"] == "b"


def test_the_store_keeps_a_hash_of_the_session_never_the_id(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        _vote(st, session="gradio-session-hash-abc")
        (row,) = st.rows("votes")
    assert row["session"] == session_hash("gradio-session-hash-abc") != "gradio-session-hash-abc"
    assert len(row["session"]) == 32
    out = tmp_path / "votes.jsonl"
    labels_export_cmd(str(out), store=str(tmp_path / "s.sqlite"))
    assert "gradio-session-hash-abc" not in out.read_text() and row["session"] in out.read_text()


@pytest.mark.parametrize("action", ["undo", "review"])
def test_undo_or_review_of_another_sessions_vote_is_refused_in_one_sentence_and_nothing_changes(tmp_path, action):
    """Issue 23, Bad input: a review or undo naming another session's vote (or one nobody owns) is refused."""
    with Store(tmp_path / "s.sqlite") as st:
        theirs = _vote(st, session="browser-2")
        nobodys = theirs + "-imported"
        st.put("votes", [{**st.get("votes", [theirs])[theirs], "key": nobodys, "session": None}])
        before = _snapshot(st)
        for vid, session in ((theirs, "browser-1"), (theirs, ""), (nobodys, "browser-1"), (nobodys, "browser-2")):
            with pytest.raises(NotYourVote) as err:
                if action == "undo":
                    undo_vote(st, vid, session=session)
                else:
                    get_vote(st, vid, session=session)
            msg = str(err.value)
            assert isinstance(err.value, UserError) and err.value.vote_id == vid
            assert msg.count(". ") == 0 and msg.endswith(".") and "another browser session" in msg
        assert _snapshot(st) == before                                   # nothing changed
        assert undo_vote(st, theirs, session="browser-2") is True         # its owner can
        assert undo_vote(st, nobodys) is True                             # and the CLI (no session) can


def test_a_vote_needs_a_session_and_an_unknown_vote_is_one_sentence(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        for bad in ("", "  "):
            with pytest.raises(UserError, match="needs the browser session"):
                _vote(st, session=bad)
        assert st.count("votes") == 0
        with pytest.raises(UserError, match="there is no vote 'nope'") as err:
            get_vote(st, "nope", session="browser-1")
        assert not isinstance(err.value, NotYourVote)
        assert undo_vote(st, "nope", session="browser-1") is False


def test_the_tally_and_the_counted_votes_are_shared_by_every_session(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        a = _vote(st, session="browser-1", choice="right", side_a="right")     # A wins
        _vote(st, session="browser-2", choice="left", side_a="right")          # B wins
        _vote(st, session="browser-3", choice="tie")
        undone = _vote(st, session="browser-2", choice="both_bad")
        undo_vote(st, undone, session="browser-2")
        with pytest.raises(VoteKept):
            _vote(st, session="browser-1", item_id="instr-own-999")            # kept for review
        assert tally(st) == {"counted": 3, "a": 1, "b": 1, "tie": 1, "both_bad": 0, "review": 1, "undone": 1}
        assert len(counted_votes(st)) == 3 and a in {r["key"] for r in counted_votes(st)}


def test_an_exported_session_survives_a_reimport_and_a_bad_one_is_a_file_line_error(tmp_path):
    src, dst = tmp_path / "src.sqlite", tmp_path / "dst.sqlite"
    with Store(src) as st:
        vid = _vote(st, session="browser-1")
    out = tmp_path / "votes.jsonl"
    labels_export_cmd(str(out), store=str(src))
    labels_import_cmd(str(out), store=str(dst))
    assert [v["id"] for v in list_votes(dst, session="browser-1")] == [vid]
    row = json.loads(out.read_text())
    out.write_text(json.dumps({**row, "session": "browser-1"}) + "\n")    # a raw id, not a hash
    with pytest.raises(UserError, match=r"votes.jsonl:1: session 'browser-1' must be empty or a session hash"):
        labels_import_cmd(str(out), store=str(tmp_path / "other.sqlite"))
