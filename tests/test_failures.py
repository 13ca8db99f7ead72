"""Every failure is one sentence (issue "Tasks as data", part 6): exit 2, a message naming the fix, no traceback,
nothing half-written. Commands run in-process through the CLI (harness.cli.main), as `python -m harness` does.

    python -m pytest -q tests/test_failures.py
"""
import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from harness.__main__ import COMMANDS
from harness.cli import main
from harness.paths import PROJECT_ROOT


def cli(*argv) -> int:
    return main(COMMANDS, [str(a) for a in argv])


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def one_sentence(err: str) -> str:
    assert "Traceback" not in err and err.startswith("error: "), err
    return err


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path nobody (root included) can create a folder at: its parent is a regular file."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return f / "sub"


@pytest.mark.parametrize("where", ["FTBENCH_CACHE", "FTBENCH_RESULTS", "--store"])
def test_unwritable_outputs_are_refused_before_any_model_loads(where, blocked, monkeypatch, capsys, tmp_path):
    args = ["run", "--model", tmp_path / "no-such-model", "--eval-set", "sms_own", "--judge", "none"]
    if where == "--store":
        args += ["--store", blocked / "store.sqlite"]
    else:
        monkeypatch.setenv(where, str(blocked))
    before = files_under(tmp_path)
    assert cli(*args) == 2
    err = one_sentence(capsys.readouterr().err)
    assert where in err and "cannot write in" in err and "no-such-model" not in err   # before the model
    assert files_under(tmp_path) == before


def test_output_that_is_a_folder_is_refused_before_judging(tmp_path, capsys):
    responses = tmp_path / "r.jsonl"
    responses.write_text(json.dumps({"instruction": "x", "input": "", "output": "y", "model_response": "y"}) + "\n")
    assert cli("judge", "--responses", responses, "--output", tmp_path, "--judge", "ollama:llama3") == 2
    err = one_sentence(capsys.readouterr().err)
    assert "is a folder" in err and "out.jsonl" in err


def test_non_utf8_judge_responses_name_file_and_line(tmp_path, capsys):
    responses = tmp_path / "r.jsonl"
    good = json.dumps({"instruction": "x", "input": "", "output": "y", "model_response": "y"}).encode()
    responses.write_bytes(good + b"\n" + b'{"instruction": "caf\xe9", "output": "y", "model_response": "y"}\n')
    assert cli("judge", "--responses", responses, "--output", tmp_path / "o.jsonl") == 2
    err = one_sentence(capsys.readouterr().err)
    assert "r.jsonl:2" in err and "UTF-8" in err
    assert not (tmp_path / "o.jsonl").exists()


RECIPE = """name = "tiny-chat"
task = "chat"
dataset = "instruction"
base = "{base}"
"""


@pytest.mark.parametrize("line,key,expected", [
    ('seed = "abc"', "seed", "an integer"),
    ('warmup_steps = "ten"', "warmup_steps", "an integer"),
    ('target_modules = "q_proj"', "target_modules", "a list of strings"),
    ('r = "8"', "r", "an integer"),
    ('learning_rate = "fast"', "learning_rate", "a number"),
])
def test_a_recipe_value_of_the_wrong_type_names_key_and_type(line, key, expected, tmp_path, capsys, tiny_llama_dir):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(base=tiny_llama_dir) + line + "\n")
    assert cli("finetune", recipe) == 2
    err = one_sentence(capsys.readouterr().err)
    assert str(recipe) in err and f"{key} must be {expected}" in err
    assert not (tmp_path / "adapters").exists()


def _tiny_adapter(tiny_llama_dir, tmp_path) -> Path:
    from harness.finetune import Recipe, finetune
    r = Recipe(name="tiny-chat", task="chat", dataset="", train_split="instructions_own",
               eval_split="instructions_own", test_split="instructions_own", base=str(tiny_llama_dir), r=2, alpha=4,
               target_modules=["q_proj"], batch_size=2, max_length=64, save_every=1)
    return finetune(r, tmp_path / "adapters" / r.name, max_steps=1)


def test_card_on_a_recipe_with_a_typo_gives_the_finetune_sentence(tiny_llama_dir, tmp_path, capsys):
    out = _tiny_adapter(tiny_llama_dir, tmp_path)
    recipe = out / "recipe.toml"
    recipe.write_text(recipe.read_text() + "lerning_rate = 0.1\n")
    capsys.readouterr()
    assert cli("finetune", recipe) == 2
    want = one_sentence(capsys.readouterr().err)
    assert cli("card", "tiny-chat") == 2
    got = one_sentence(capsys.readouterr().err)
    assert "unknown keys ['lerning_rate']" in got and str(recipe) in got
    assert got == want or want.rstrip() in got


def test_corrupt_adapter_names_the_file_and_how_to_restore_it(tiny_llama_dir, tmp_path, capsys):
    out = _tiny_adapter(tiny_llama_dir, tmp_path)
    weights = out / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert cli("run", "--model", tiny_llama_dir, "--adapter", "tiny-chat", "--eval-set", "instructions_own",
               "--judge", "none") == 2
    err = one_sentence(capsys.readouterr().err)
    assert str(weights) in err and "corrupt" in err
    assert ("git checkout" in err or "restore" in err) and ("finetune" in err or "retrain" in err)   # the fix
    assert "does not fit" not in err


@pytest.mark.parametrize("command", ["run", "generate"])
def test_unknown_adapter_is_named_before_the_base_loads(command, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    args = (["--eval-set", "instructions_own", "--judge", "none"] if command == "run"
            else ["--input", prompts, "--output", tmp_path / "o.jsonl"])
    # the model does not exist either: the adapter must be reported first, without trying to load a base
    assert cli(command, "--model", tmp_path / "no-such-model", "--adapter", "nope", *args) == 2
    err = one_sentence(capsys.readouterr().err)
    assert "'nope'" in err and "no-such-model" not in err and "finetune" in err


def _rebuild(args) -> str:
    runs, out = args
    from harness.leaderboard import write_leaderboards
    try:
        write_leaderboards(Path(runs), Path(out))
        return ""
    except Exception as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"


def test_30_concurrent_leaderboard_rebuilds_never_crash_and_agree(tmp_path):
    runs = PROJECT_ROOT / "results" / "runs"
    ctx = mp.get_context("fork")
    pool = ctx.Pool(30)
    try:
        errors = pool.map(_rebuild, [(runs, tmp_path)] * 30)
    finally:
        pool.close()          # the workers end by themselves: no SIGTERM into whatever handlers they inherited
        pool.join()
    assert errors == [""] * 30
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in (PROJECT_ROOT / "results").glob("leaderboard_*.csv")), names
    for p in tmp_path.iterdir():
        assert p.read_bytes() == (PROJECT_ROOT / "results" / p.name).read_bytes(), p.name


def _one_run(args) -> str:
    model, store, results = args
    os.environ["FTBENCH_RESULTS"] = results
    from harness.evaluate import run
    from harness.store import Store
    try:
        with Store(store) as st:
            run(model, None, "sms_own", None, limit=8, store=st, progress=False)
        return ""
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


def test_concurrent_runs_on_one_store_never_crash(tiny_llama_dir, tmp_path):
    store = tmp_path / "store.sqlite"
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        errors = pool.map(_one_run, [(str(tiny_llama_dir), str(store), str(tmp_path / f"res{i}")) for i in range(4)])
    assert errors == [""] * 4
    rows = [json.loads(x) for i in range(4) for p in (tmp_path / f"res{i}" / "runs" / "spam").glob("*.jsonl")
            for x in p.read_text().splitlines()]
    assert len(rows) == 32 and len({(r["item_id"], r["pred"]) for r in rows}) == 8   # same answers in every run


# ---------------------------------------------------------------- resumable generate / classify (issue 24, part 5)

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def _interrupt_when_saving(cmd: list[str], partial: Path, sig=signal.SIGINT, timeout: float = 120):
    """Start `python -m harness CMD`, wait until its progress file has a line, send `sig`; (rc, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "harness", *cmd], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    end = time.monotonic() + timeout
    while time.monotonic() < end and p.poll() is None:
        if partial.is_file() and partial.read_text(encoding="utf-8").count("\n") >= 2:
            break
        time.sleep(0.05)
    assert p.poll() is None, f"finished before it could be interrupted: {p.stderr.read()}"
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    return p.returncode, err


def test_ctrl_c_during_classify_keeps_what_it_says_and_resumes(tiny_llama_dir, tmp_path, capsys):
    src = tmp_path / "sms.txt"
    src.write_text("".join(f"message number {i}: win a prize or see you at noon\n" for i in range(3000)))
    out = tmp_path / "p.csv"
    cmd = ["classify", "--model", str(tiny_llama_dir), "--input", str(src), "--output", str(out),
           "--batch-size", "1"]
    partial = out.with_name(out.name + ".partial")
    rc, err = _interrupt_when_saving(cmd, partial)
    assert rc == 130 and "Traceback" not in err
    saved = partial.read_text(encoding="utf-8").count("\n")
    assert saved >= 2 and f"{partial}" in err and "items are saved" in err
    n = int(err.split("interrupted: ")[1].split(" of ")[0])
    assert n >= saved - 64          # the sentence counts what is in the file (a chunk may land after the print)
    assert not out.exists()
    # the rerun computes only the rest: it says how many were already finished, then writes everything
    small = tmp_path / "small.txt"      # keep the rerun short: the same first messages (already finished)
    small.write_text("".join(src.read_text().splitlines(True)[:saved]))
    partial.rename(tmp_path / "small.csv.partial")
    assert cli("classify", "--model", tiny_llama_dir, "--input", small, "--output", tmp_path / "small.csv",
               "--batch-size", "1") == 0
    captured = capsys.readouterr()
    assert f"resuming: {saved} of {saved} items already finished" in captured.err
    assert len((tmp_path / "small.csv").read_text().splitlines()) == saved + 1
    assert not (tmp_path / "small.csv.partial").exists()


def test_ctrl_c_during_generate_keeps_what_it_says(tiny_llama_dir, tmp_path):
    src = tmp_path / "prompts.txt"
    src.write_text("".join(f"Write line {i}\n" for i in range(2000)))
    out = tmp_path / "o.jsonl"
    partial = out.with_name(out.name + ".partial")
    rc, err = _interrupt_when_saving(["generate", "--model", str(tiny_llama_dir), "--input", str(src), "--output",
                                      str(out), "--max-new-tokens", "4", "--batch-size", "1"], partial)
    assert rc == 130 and "Traceback" not in err and "completed items are saved" not in err
    assert f"items are saved in {partial}" in err and partial.read_text().count("\n") >= 2
    assert not out.exists()


def test_a_full_disk_while_writing_the_output_loses_no_answers(tiny_llama_dir, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); needs root")
    try:
        src = tmp_path / "sms.csv"
        src.write_text("text\n" + "".join(f"{'x' * 150} message {i}\n" for i in range(300)))
        filler = disk / "filler"
        filler.write_bytes(b"\0" * 75_000)
        out = disk / "p.csv"
        assert cli("classify", "--model", tiny_llama_dir, "--input", src, "--output", out) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        err = one_sentence(err[err.index("error: "):])
        partial = disk / "p.csv.partial"
        assert "disk is full" in err and f"300 finished item(s) are kept in {partial}" in err
        assert partial.read_text().count("\n") == 300 and not out.exists()
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "p.csv.partial"]     # no temp file left
        filler.unlink()
        assert cli("classify", "--model", tiny_llama_dir, "--input", src, "--output", out) == 0
        assert "resuming: 300 of 300" in capsys.readouterr().err
        assert len(out.read_text().splitlines()) == 301 and not partial.exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_progress_file_cut_by_a_crash_still_resumes(tmp_path):
    """A crash mid-append leaves half a line; the finished items before it count, new ones start on a new line."""
    from harness.commands import Progress, partial_path
    out = tmp_path / "o.jsonl"
    partial_path(out).write_text(json.dumps({"key": "a", "result": {"x": 1}}) + '\n{"key": "b", "resu')
    prog = Progress(str(out), ["a", "b", "c"])
    assert prog.resumed == 1 and prog.todo() == [1, 2]
    prog.save(1, {"y": 2})
    again = Progress(str(out), ["a", "b", "c"])
    assert again.resumed == 2 and again.todo() == [2] and again.results["b"] == {"y": 2}
