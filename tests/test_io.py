"""The one writer (harness.io.atomic_writer): every OSError is one sentence, temp files go on signals, CSV cells are
escaped; the one CSV reader: file:line for broken rows, no field size limit. Real tmpfs, read-only mounts, /proc
and real signals to a subprocess (no mocks)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.io import (atomic_write, check_writable_dir, csv_escape, csv_unescape, read_table,
                        write_csv)

ROOT = Path(__file__).resolve().parents[1]


def _mount(tmp_path: Path, name: str, opts: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()}); needs root")
    return d


@pytest.fixture
def tiny_disk(tmp_path):
    d = _mount(tmp_path, "tiny", "size=64k")
    yield d
    subprocess.run(["umount", str(d)], check=False)


@pytest.fixture
def readonly_disk(tmp_path):
    d = _mount(tmp_path, "ro", "ro,size=64k")
    yield d
    subprocess.run(["umount", str(d)], check=False)


def test_full_disk_is_one_sentence_and_keeps_the_old_file(tiny_disk):
    target = tiny_disk / "leaderboard_chat.csv"
    atomic_write(target, "old\n")
    with pytest.raises(UserError) as e:
        atomic_write(target, "x" * 200_000)
    msg = str(e.value)
    assert "disk is full" in msg and str(target) in msg and "\n" not in msg
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["leaderboard_chat.csv"]     # no temp file left


def test_full_disk_in_write_csv_is_one_sentence(tiny_disk):
    with pytest.raises(UserError, match="disk is full"):
        write_csv(tiny_disk / "p.csv", ["text"], [["y" * 1000]] * 200)
    assert list(tiny_disk.iterdir()) == []


def test_read_only_file_system_is_one_sentence(readonly_disk):
    with pytest.raises(UserError, match="read-only") as e:
        atomic_write(readonly_disk / "out.jsonl", "{}\n")
    assert str(readonly_disk / "out.jsonl") in str(e.value)
    with pytest.raises(UserError, match="read-only"):
        check_writable_dir(readonly_disk / "sub", "--output")


def test_parent_that_is_a_file_and_proc_paths(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(UserError, match="not a folder|is a file"):
        atomic_write(f / "out.csv", "a\n")
    for bad in ("/proc/x/out.csv", "/proc/out.csv"):
        with pytest.raises(UserError, match=r"cannot (write|create the folder) /proc"):
            atomic_write(bad, "a\n")
    for folder in ("/proc/x", "/proc"):      # os.access says yes to root here; the probe does not
        with pytest.raises(UserError, match="cannot write in"):
            check_writable_dir(folder, "FTBENCH_RESULTS")


@pytest.mark.parametrize("env", ["FTBENCH_RESULTS", "FTBENCH_CACHE"])
def test_cli_with_a_proc_folder_is_one_sentence(tmp_path, env):
    runs = tmp_path / "runs" / "spam"
    runs.mkdir(parents=True)
    (runs / "r.jsonl").write_text('{"task": "spam", "eval_set": "e", "item_id": "1", "model": "m", '
                                  '"label": "spam", "pred": "spam", "correct": true}\n')
    msgs = tmp_path / "m.txt"
    msgs.write_text("hello\n")
    cmd = (["leaderboard", "--runs-dir", str(tmp_path / "runs")] if env == "FTBENCH_RESULTS" else
           ["classify", "--input", str(msgs), "--output", str(tmp_path / "o.csv")])
    r = subprocess.run([sys.executable, "-m", "harness", *cmd], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, env: "/proc/x", "OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and "/proc/x" in r.stderr


_WRITER = """
import sys, time
from harness.io import atomic_writer
with atomic_writer(sys.argv[1]) as f:
    f.write("half a file")
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_write_leaves_no_temp_file(tmp_path, sig):
    target = tmp_path / "leaderboard_chat.csv"
    target.write_text("old\n")
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    assert any(x.name.endswith(".tmp") for x in tmp_path.iterdir())       # mid-write: the temp file exists
    p.send_signal(sig)
    p.wait(timeout=30)
    assert p.returncode != 0
    if sig == signal.SIGTERM:
        assert p.returncode == -signal.SIGTERM         # still dies of SIGTERM, as without the handler
    assert sorted(x.name for x in tmp_path.iterdir()) == ["leaderboard_chat.csv"]
    assert target.read_text() == "old\n"


def test_csv_escape_is_reversible_and_keeps_numbers():
    cells = ["=HYPERLINK(\"http://x\")", "=cmd|' /C calc'!A0", "+1+2", "-2+3", "@SUM(A1)", "\t=1", "\r=1",
             "'=already", "''+x", "plain", "'tis", "", "-0.5", "+3", "1e-3", "-", "don't"]
    for c in cells:
        e = csv_escape(c)
        assert csv_unescape(e) == c
        assert not e[:1] in ("=", "+", "@", "\t", "\r") or e == c
    assert csv_escape("=1+1") == "'=1+1" and csv_escape("-0.5") == "-0.5" and csv_escape("'tis") == "'tis"
    assert csv_escape("-") == "'-" and csv_escape(None) == ""


def test_write_csv_escapes_every_cell(tmp_path):
    p = write_csv(tmp_path / "o.csv", ["text", "n"], [["=cmd|' /C calc'!A0", -1], ["ok", "@x"]])
    rows = read_table(p)
    assert [r for _, r in rows] == [{"text": "'=cmd|' /C calc'!A0", "n": "-1"}, {"text": "ok", "n": "'@x"}]


def test_leaderboard_csv_escapes_formula_cells(tmp_path):
    from harness.leaderboard import write_leaderboards
    runs = tmp_path / "runs" / "spam"
    runs.mkdir(parents=True)
    (runs / "r.jsonl").write_text('{"task": "spam", "eval_set": "e", "item_id": "1", "model": "=HYPERLINK(1)", '
                                  '"label": "spam", "pred": "spam", "correct": true}\n')
    [path] = write_leaderboards(tmp_path / "runs", tmp_path / "out")
    text = path.read_text()
    assert ",'=HYPERLINK(1)," in text and ",=HYPERLINK" not in text


# ---------------------------------------------------------------- the CSV reader

def _csv(tmp_path, text: str) -> Path:
    p = tmp_path / "in.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_unquoted_comma_is_an_error_with_file_and_line(tmp_path):
    p = _csv(tmp_path, "text,label\nfine,ham\nWIN a prize, call now,spam\n")
    with pytest.raises(UserError, match=rf"{p}:3: 3 fields where the header has 2.*double quotes"):
        read_table(p, ("text",))


def test_missing_field_is_an_error_with_file_and_line(tmp_path):
    p = _csv(tmp_path, "text,label\nfine,ham\n\nno label here\n")
    with pytest.raises(UserError, match=rf"{p}:4: 1 fields where the header has 2"):
        read_table(p, ("text",))


def test_unterminated_quote_is_an_error_naming_its_line(tmp_path):
    p = _csv(tmp_path, 'text,label\nfine,ham\n"never closed, ham\nnext,spam\n')
    with pytest.raises(UserError, match=rf"{p}:3: a quoted field is never closed"):
        read_table(p, ("text",))


def test_quoted_newlines_keep_line_numbers_and_big_fields_are_fine(tmp_path):
    big = "x" * 300_000              # over csv's default 128 KB field limit
    p = _csv(tmp_path, f'text,label\n"two\nlines",ham\n\n{big},spam\n')
    rows = read_table(p, ("text",))
    assert [(line, r["label"]) for line, r in rows] == [(2, "ham"), (5, "spam")]
    assert rows[1][1]["text"] == big
