"""harness/sweep.py: every checkpoint of a folder scored on one eval set, cached per checkpoint, resumable, with a
table, a plot and one sentence about the best checkpoint against the last. Tiny models only."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny import build_adapter

from harness.errors import UserError
from harness.sweep import find_checkpoints, sweep


def _steps(tiny_llama_dir, folder, kind="seq_cls", seeds=(1, 2, 3)):
    """A finetune-like output: steps/step-N adapters and the final adapter in the folder itself."""
    for n, seed in zip((50, 100, 150), seeds):
        build_adapter(tiny_llama_dir, folder / "steps" / f"step-{n:06d}", kind=kind, seed=seed)
    build_adapter(tiny_llama_dir, folder / "_final", kind=kind, seed=seeds[-1])
    for f in (folder / "_final").iterdir():
        shutil.move(str(f), folder / f.name)
    (folder / "_final").rmdir()
    (folder / "history.json").write_text(json.dumps({"steps": 180}))
    return folder


def test_an_empty_folder_is_one_sentence_listing_what_it_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    with pytest.raises(UserError) as e:
        sweep(tmp_path / "empty", "sms_own")
    msg = str(e.value)
    assert "no checkpoints" in msg and "adapter_config.json" in msg and "config.json" in msg and ".pth" in msg
    assert "\n" not in msg


def test_checkpoints_are_found_and_ordered_by_step(tiny_llama_dir, tmp_path):
    folder = _steps(tiny_llama_dir, tmp_path / "run")
    torch.save({}, folder / "epoch2.pth")
    found = find_checkpoints(folder)
    assert [(c["name"], c["step"]) for c in found] == [
        ("epoch2.pth", 2), ("step-000050", 50), ("step-000100", 100), ("step-000150", 150), ("run (final)", 180)]
    from harness.sweep import _step
    assert _step("smollm2-135m-spam") is None and _step("checkpoint-500") == 500 and _step("1200") == 1200


def test_sweep_scores_every_step_caches_and_resumes(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    import harness.sweep as sw
    folder = _steps(tiny_llama_dir, tmp_path / "spam-run")
    res = sweep(folder, "sms_own", limit=12, progress=False, n_boot=200)
    names = [r["checkpoint"] for r in res["checkpoints"]]
    assert names == ["step-000050", "step-000100", "step-000150", "spam-run (final)"]
    assert res["metric"] == "accuracy" and all(r["n"] == 12 for r in res["checkpoints"])
    # the same weights (step 150 and the final adapter) score the same and share one content hash
    s150, final = res["checkpoints"][2], res["checkpoints"][3]
    assert s150["hash"] == final["hash"] and s150["values"] == final["values"]
    # every accuracy is the adapter's own: recomputed here with the harness's classifier
    from harness.evaluate import load_items
    from harness.models import load_model
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(folder / "steps"))
    lm = load_model(str(tiny_llama_dir), adapters=["step-000050"])
    from harness.classify import classify
    from harness.tasks import get_task
    es, items = load_items("sms_own", 12)
    probs = classify(lm, [it["text"] for it in items], "step-000050", get_task("spam"))
    acc = sum(max(p, key=p.get) == it["label"] for p, it in zip(probs, items)) / 12
    assert res["checkpoints"][0]["mean"] == pytest.approx(acc)
    # the sentence: the best checkpoint, and a paired comparison with the last
    best = max(res["checkpoints"], key=lambda r: r["mean"])
    assert res["best"] == best["checkpoint"] and res["best"] in res["sentence"]
    assert "The best checkpoint is" in res["sentence"] and "last checkpoint" in res["sentence"]
    assert res["sentence"].count(". ") == 0
    for key in ("csv", "png", "md"):
        assert res["paths"][key].is_file()
    assert res["paths"]["png"].read_bytes()[:4] == b"\x89PNG"
    header = res["paths"]["csv"].read_text().splitlines()[0]
    assert header.startswith("checkpoint,step,kind,n,accuracy,ci_low,ci_high")
    # resume: a rerun with one more checkpoint scores only the new one
    build_adapter(tiny_llama_dir, folder / "steps" / "step-000200", kind="seq_cls", seed=9)
    scored = []
    real = sw._score
    monkeypatch.setattr(sw, "_score", lambda ck, *a, **k: scored.append(ck["name"]) or real(ck, *a, **k))
    again = sweep(folder, "sms_own", limit=12, progress=False, n_boot=200)
    assert scored == ["step-000200"] and len(again["checkpoints"]) == 5
    assert [r["mean"] for r in again["checkpoints"] if r["checkpoint"] != "step-000200"] == \
        [r["mean"] for r in res["checkpoints"]]


def test_sweep_of_generation_adapters_uses_the_tasks_metric(tiny_llama_dir, tmp_path):
    folder = tmp_path / "chat-run"
    for n, seed in ((10, 1), (20, 2)):
        build_adapter(tiny_llama_dir, folder / f"checkpoint-{n}", seed=seed)
    build_adapter(tiny_llama_dir, folder / "spam-head", kind="seq_cls", seed=3)     # another task: skipped
    res = sweep(folder, "instructions_own", limit=3, progress=False, n_boot=100)
    assert res["skipped"] == ["spam-head (spam)"]
    assert res["metric"] == "rouge_l" and [r["step"] for r in res["checkpoints"]] == [10, 20]
    assert all(0.0 <= r["mean"] <= 1.0 for r in res["checkpoints"])


def test_sweep_command_prints_the_table_and_sentence(tiny_llama_dir, tmp_path, capsys):
    from test_convert import cli
    folder = tmp_path / "two"
    for n, seed in ((1, 1), (2, 2)):
        build_adapter(tiny_llama_dir, folder / f"step-{n}", kind="seq_cls", seed=seed)
    assert cli(["sweep", str(folder), "--eval-set", "sms_own", "--limit", "6"]) == 0
    out = capsys.readouterr().out
    assert "step-1" in out and "step-2" in out and "The best checkpoint is" in out
    assert cli(["sweep", str(tmp_path / "nothing"), "--eval-set", "sms_own"]) == 2


def test_finetune_keep_steps_then_sweep_its_folder(tiny_llama_dir, tmp_path):
    from test_finetune import fake_data, tiny_recipe

    from harness.finetune import finetune
    fake_data()
    r = tiny_recipe(tiny_llama_dir, "spam")
    out = finetune(r, tmp_path / "adapters" / r.name, max_steps=3, keep_steps=True)
    steps = sorted(p.name for p in (out / "steps").iterdir())
    assert steps == ["step-000001", "step-000002", "step-000003"]
    for s in steps:
        assert {"adapter_config.json", "adapter_model.safetensors", "recipe.toml"} <= \
            {f.name for f in (out / "steps" / s).iterdir()}
    res = sweep(out, "sms_own", limit=8, progress=False, n_boot=100)
    rows = res["checkpoints"]
    assert [r_["step"] for r_ in rows] == [1, 2, 3, 3] and rows[-1]["checkpoint"].endswith("(final)")
    assert rows[2]["hash"] == rows[3]["hash"]          # the last step is the final adapter, byte for byte


def test_sweep_of_book_pth_files_converts_each_once(tmp_path):
    """A folder of LLMs-from-scratch classifier .pth files (a tokenizer/ folder beside them): each converted once
    into the cache, classified with its own head."""
    import inspect

    import harness.classify
    from test_convert import book_model
    from tiny import build_tokenizer
    if "head_probs(texts" not in inspect.getsource(harness.classify.classify):
        pytest.skip("needs classify() to use a converted model's own head (requested from H4)")
    folder = tmp_path / "book"
    tok = build_tokenizer(chat=False)
    tok.save_pretrained(folder / "tokenizer")
    for epoch, seed in ((1, 1), (2, 2)):
        m = book_model(len(tok), emb=64, heads=1, layers=1, context=32, seed=seed)
        m.out_head = torch.nn.Linear(64, 2)
        torch.save(m.state_dict(), folder / f"review_classifier_epoch{epoch}.pth")
    res = sweep(folder, "sms_own", limit=6, progress=False, n_boot=100)
    assert [r["step"] for r in res["checkpoints"]] == [1, 2] and res["metric"] == "accuracy"
    assert len({r["hash"] for r in res["checkpoints"]}) == 2


def test_sweep_of_full_fine_tune_folders(tmp_path):
    """HF Trainer-style full checkpoints (config.json + safetensors), each loaded as its own model."""
    from tiny import build_llama
    folder = tmp_path / "full"
    for n in (100, 200):
        build_llama(folder / f"checkpoint-{n}", seed=n)
    res = sweep(folder, "instructions_own", limit=2, progress=False, n_boot=100)
    assert [(r["checkpoint"], r["kind"], r["step"]) for r in res["checkpoints"]] == [
        ("checkpoint-100", "model", 100), ("checkpoint-200", "model", 200)]
    assert res["checkpoints"][0]["hash"] != res["checkpoints"][1]["hash"]
