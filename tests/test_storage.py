"""Where votes live on a Space and how its owner collects them (issue 23 part 2, issue 24 part 2's write check).

    python -m pytest tests/test_storage.py -q

Read-only storage is a real read-only tmpfs mount where the test may mount one (root in a container usually
can); else a path under /proc, where nothing can be created; as root `os.access` says yes to both.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import paths
from harness.errors import UserError
from harness.paths import PROJECT_ROOT
from harness.store import Store
from harness.votes import (cast_vote, is_repo_id, labels_import_cmd, labels_push_cmd, list_votes, read_labels,
                           session_hash)


def _vote(store, session="browser-1", left="The Indian Ocean.", right="The Pacific.", choice="left"):
    return cast_vote(store, session=session, prompt="Which ocean lies between Africa and Australia?",
                     response_left=left, response_right=right, side_a="left", model_a="", adapter_a="",
                     model_b="", adapter_b="", seed_a=1, seed_b=2, choice=choice, task="chat",
                     eval_set="instructions_own", item_id="instr-own-003")


@pytest.fixture
def space(monkeypatch, tmp_path):
    """SYSTEM=spaces with the persistent-storage folder at tmp_path/data (not created)."""
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("FTBENCH_PERSISTENT", str(tmp_path / "data"))
    monkeypatch.delenv("FTBENCH_RESULTS", raising=False)
    return tmp_path / "data"


def _read_only_mount(tmp_path: Path):
    """A read-only tmpfs mounted in tmp_path (unmounted afterwards), or None where the test cannot mount one."""
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                                           capture_output=True).returncode != 0:
        return None
    return target


@pytest.fixture(params=["read-only mount", "/proc"])
def read_only_dir(request, tmp_path):
    """A folder nobody can write in, root included: a read-only tmpfs mount, and /proc (where nothing can be
    created, although as root os.access says it can)."""
    if request.param == "/proc":
        if not Path("/proc").is_dir():
            pytest.skip("no /proc on this system")
        yield Path("/proc"), "cannot be written (no folder can be made in it)"
        return
    target = _read_only_mount(tmp_path)
    if target is None:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights); /proc covers the case")
    try:
        yield target, "is read-only"
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_off_a_space_votes_use_the_cache_store_and_results_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("SYSTEM", raising=False)
    assert not paths.on_spaces()
    assert paths.votes_store_path() == tmp_path / "cache" / "store.sqlite"
    assert paths.storage_note() == "Votes are kept in the ftbench store on this machine and survive a restart."
    assert paths.writable_results_dir() == paths.results_dir()


def test_on_a_space_with_persistent_storage_votes_go_there_and_survive_a_restart(space, tmp_path):
    space.mkdir()
    assert paths.on_spaces()
    store = paths.votes_store_path()
    assert store == space / "ftbench" / "store.sqlite"
    assert sorted(p.name for p in (space / "ftbench").iterdir()) == []          # the probe file is gone
    note = paths.storage_note()
    assert note == "Votes are kept in this Space's persistent storage and survive a restart."
    # a vote cast by one process (store=None: the app's default) is seen by the next one, as after a restart
    code = textwrap.dedent("""
        import sys
        from harness.votes import cast_vote, list_votes
        if sys.argv[1] == "cast":
            print(cast_vote(None, session="browser-1", prompt="p", response_left="x", response_right="y",
                            side_a="left", model_a="", adapter_a="", model_b="", adapter_b="", seed_a=0,
                            seed_b=0, choice="tie"))
        else:
            print(",".join(v["id"] for v in list_votes(None, session="browser-1")))
    """)
    env = {**os.environ}
    run = lambda what: subprocess.run([sys.executable, "-c", code, what], cwd=PROJECT_ROOT,  # noqa: E731
                                      env=env, capture_output=True, text=True, timeout=120)
    cast = run("cast")
    assert cast.returncode == 0, cast.stderr
    listed = run("list")
    assert listed.returncode == 0 and listed.stdout.strip() == cast.stdout.strip() != ""
    assert not (tmp_path / "cache" / "store.sqlite").exists()                  # nothing in the wiped cache


def test_on_a_space_without_persistent_storage_the_note_says_votes_are_lost_on_restart(space, tmp_path):
    assert paths.votes_store_path() == tmp_path / "cache" / "store.sqlite"
    note = paths.storage_note()
    assert note.startswith("Votes will not survive a restart: this Space has no persistent storage")
    assert str(tmp_path) not in note and "/data" not in note


def test_read_only_persistent_storage_is_found_by_a_probe_not_os_access(space, monkeypatch, tmp_path,
                                                                         read_only_dir):
    """Issue 23, Bad input: persistent storage that cannot be written -> the cache store, and one sentence
    saying votes will not survive a restart and why. As root, os.access says the folder is writable."""
    folder, why = read_only_dir
    monkeypatch.setenv("FTBENCH_PERSISTENT", str(folder))
    if os.geteuid() == 0 and str(folder) == "/proc":
        assert os.access(folder, os.W_OK)                  # the lie the probe exists for
    assert paths.votes_store_path() == tmp_path / "cache" / "store.sqlite"
    note = paths.storage_note()
    assert note == (f"Votes will not survive a restart: the Space's persistent storage {why}, so they are kept on "
                    f"the Space's own disk, which a restart wipes.")
    assert str(folder) not in note
    assert paths.writable_results_dir() == tmp_path / "cache" / "results"


def test_on_a_space_results_are_never_written_into_the_repository(space, monkeypatch, tmp_path):
    assert paths.results_dir() == PROJECT_ROOT / "results"                 # reading the committed leaderboards
    assert paths.writable_results_dir() == tmp_path / "cache" / "results"   # no persistent storage
    space.mkdir()
    assert paths.writable_results_dir() == space / "ftbench" / "results"
    monkeypatch.setenv("FTBENCH_RESULTS", str(tmp_path / "mine"))
    assert paths.writable_results_dir() == tmp_path / "mine"               # an explicit choice is kept


# ---------------------------------------------------------------- labels push

def test_push_to_a_folder_writes_a_labels_file_that_imports_back(tmp_path, capsys):
    src = tmp_path / "src.sqlite"
    with Store(src) as st:
        ids = {_vote(st, session="browser-1"), _vote(st, session="browser-2", choice="tie")}
    out = tmp_path / "collected"
    assert labels_push_cmd(str(out), store=str(src)) == 0
    assert f"2 votes (2 counted) -> {out / 'votes.jsonl'}" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "votes.jsonl").read_text().splitlines()]
    assert {r["label_id"] for r in rows} == ids and {r["session"] for r in rows} == {
        session_hash("browser-1"), session_hash("browser-2")}
    labels_import_cmd(str(out / "votes.jsonl"), store=str(tmp_path / "dst.sqlite"))
    assert {v["id"] for v in list_votes(tmp_path / "dst.sqlite")} == ids
    assert labels_push_cmd(str(out), store=str(src)) == 0                     # a second push replaces the file
    assert len((out / "votes.jsonl").read_text().splitlines()) == 2


def test_pushed_csv_escapes_formula_cells_and_still_imports(tmp_path):
    """Issue 24 part 2: labels files written as CSV carry no live spreadsheet formula, and read back exactly."""
    src = tmp_path / "src.sqlite"
    evil_a, evil_b = "=HYPERLINK(\"http://x\",\"click\")", "@SUM(1+1)*cmd|' /C calc'!A0"
    with Store(src) as st:
        _vote(st, left=evil_a, right=evil_b)
    assert labels_push_cmd(str(tmp_path / "out"), filename="votes.csv", store=str(src)) == 0
    text = (tmp_path / "out" / "votes.csv").read_text()
    import csv
    cells = [c for row in csv.reader(text.splitlines()) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")]
    (label,) = read_labels(tmp_path / "out" / "votes.csv")
    assert label["response_left"] == evil_a and label["response_right"] == evil_b


def test_push_target_is_a_repo_id_only_when_it_looks_like_one_and_is_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_repo_id("someone/ftbench-votes")
    for folder in ("./someone/votes", "/tmp/votes", "votes", "a/b/c", "~/votes"):
        assert not is_repo_id(folder), folder
    (tmp_path / "someone" / "votes").mkdir(parents=True)
    assert not is_repo_id("someone/votes")                                     # an existing folder wins


@pytest.mark.parametrize("filename", ["votes.txt", "../votes.jsonl", "sub/votes.csv", ".votes.jsonl"])
def test_push_refuses_a_bad_file_name_before_writing(tmp_path, filename):
    with pytest.raises(UserError, match="--filename .*: use a plain file name ending in .jsonl or .csv"):
        labels_push_cmd(str(tmp_path / "out"), filename=filename, store=str(tmp_path / "s.sqlite"))
    assert not (tmp_path / "out").exists()


def test_push_into_a_read_only_folder_is_one_sentence(tmp_path, read_only_dir):
    folder, _ = read_only_dir
    with Store(tmp_path / "s.sqlite") as st:
        _vote(st)
    with pytest.raises(UserError) as err:
        labels_push_cmd(str(folder / "votes"), store=str(tmp_path / "s.sqlite"))
    assert "\n" not in str(err.value) and "--to" in str(err.value)


def _push_cli(tmp_path, to: str, **env) -> subprocess.CompletedProcess:
    """`labels push` through the CLI built from labels_push_cmd's signature, in a fresh process."""
    code = ("import sys; from harness.cli import main; sys.exit(main({'labels push': "
            "('harness.votes:labels_push_cmd', 'push')}, sys.argv[1:]))")
    with Store(tmp_path / "s.sqlite") as st:
        _vote(st)
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code, "labels", "push", "--to", to, "--store",
                           str(tmp_path / "s.sqlite")], cwd=PROJECT_ROOT, env=full, capture_output=True, text=True,
                          timeout=120)


def test_push_to_an_unreachable_hub_is_one_sentence_and_quick(tmp_path, closed_port):
    start = time.monotonic()
    p = _push_cli(tmp_path, "someone/ftbench-votes", HF_HUB_OFFLINE="0", HF_TOKEN="hf_not_a_real_token",
                  HF_ENDPOINT=f"http://127.0.0.1:{closed_port}")
    took = time.monotonic() - start
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("error: cannot reach the Hugging Face Hub") and p.stderr.count("\n") == 1
    assert "push to a folder with --to DIR" in p.stderr and took < 30


def test_push_to_the_hub_offline_names_the_variable(tmp_path):
    p = _push_cli(tmp_path, "someone/ftbench-votes", HF_HUB_OFFLINE="1")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "HF_HUB_OFFLINE is set" in p.stderr and p.stderr.count("\n") == 1


def test_the_cli_flags_come_from_the_signature():
    from harness.cli import build_parser
    parser = build_parser({"labels push": ("harness.votes:labels_push_cmd", "push")},
                          ["labels", "push", "--to", "x/y"])
    ns = vars(parser.parse_args(["labels", "push", "--to", "x/y", "--no-private", "--filename", "v.csv"]))
    assert ns["to"] == "x/y" and ns["private"] is False and ns["filename"] == "v.csv" and ns["store"] is None
    with contextlib.redirect_stderr(None), pytest.raises(SystemExit):
        parser.parse_args(["labels", "push"])                                   # --to is required
