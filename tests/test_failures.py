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
    assert str(weights) in err and "corrupt" in err and "git checkout" in err and "finetune" in err
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
    with ctx.Pool(30) as pool:
        errors = pool.map(_rebuild, [(runs, tmp_path)] * 30)
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
