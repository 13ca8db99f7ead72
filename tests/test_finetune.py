"""LoRA fine-tuning end to end on tiny models: recipes, label masking, frozen base, resumable, reloadable."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness import data
from harness.errors import UserError
from harness.finetune import (Recipe, causal_loss, collate, encode_causal, finetune, list_recipes, load_recipe,
                              prompt_and_target)
from harness.models import load_model


def write_split(name: str, splits: dict[str, list[dict]]) -> None:
    """Prepared splits as harness.data writes them (the tests never read ../shared)."""
    folder = data._data_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (folder / "meta.json").write_text(json.dumps({"format_version": data.FORMAT_VERSION, "name": name,
                                                  "sources": {"fake": "0" * 64}}))


def fake_data():
    sms = [{"id": f"s{i}", "text": (f"WIN a prize {i} now, claim it" if i % 2 else f"see you at {i} mum"),
            "label": "spam" if i % 2 else "ham"} for i in range(24)]
    write_split("sms_spam", {"train": sms[:16], "validation": sms[16:], "test": sms[16:]})
    ins = [{"id": f"i{i}", "instruction": f"Rewrite sentence {i} in passive voice.", "input": "The cat chased the mouse.",
            "output": "The mouse was chased by the cat."} for i in range(12)]
    write_split("instruction", {"train": ins[:8], "validation": ins[8:], "test": ins[8:]})
    poems = [{"id": f"p{i}", "lang": "zh", "form": "五言绝句", "title": "春夜", "prompt": "写一首五言绝句，题目：春夜",
              "poem": "春眠不觉晓，\n处处闻啼鸟。\n夜来风雨声，\n花落知多少。"} for i in range(12)]
    write_split("poems_zh", {"train": poems[:8], "validation": poems[8:], "test": poems[8:]})


def tiny_recipe(base: Path, task: str, **kw) -> Recipe:
    dataset = {"spam": "sms_spam", "chat": "instruction", "poem_zh": "poems_zh"}[task]
    name = f"tiny-{task.replace('_', '-')}"
    if task == "poem_zh":
        task, kw = "poem", {"lang": "zh", **kw}
    if task == "spam":
        kw = {"method": "head", **kw}
    args = dict(name=name, task=task, dataset=dataset, base=str(base), r=4, alpha=8,
                target_modules=["q_proj", "v_proj"], batch_size=4, max_length=128, learning_rate=1e-2, epochs=1,
                save_every=1, modules_to_save=["score"] if task == "spam" else [])
    args.update(kw)
    return Recipe(**args)


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_file_loads_and_validates(name):
    r = load_recipe(name)
    from harness.models import read_registry
    assert r.base in read_registry() and r.epochs >= 1 and r.target_modules
    assert (r.method == "head") == ("score" in r.modules_to_save)
    assert r.method in ("head", "label_text", "sft") and (r.method == "sft") == (r.task_spec.kind == "generate")


def test_bad_recipes_are_rejected(tmp_path):
    with pytest.raises(UserError, match="unknown recipe"):
        load_recipe("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ntask = "chat"\ndataset = "instruction"\nlerning_rate = 0.1\n')
    with pytest.raises(UserError, match="bad.toml:4: unknown keys.*lerning_rate"):
        load_recipe(str(bad))
    bad.write_text('name = "x"\ntask = "chat"\nmax_steps = "many"\n')       # a wrong type names its line
    with pytest.raises(UserError, match="bad.toml:3: .*max_steps"):
        load_recipe(str(bad))
    bad.write_text('name = "x"\ntask = "chat\n')                            # broken TOML: file:line, no traceback
    with pytest.raises(UserError, match="bad.toml:2: not valid TOML"):
        load_recipe(str(bad))
    with pytest.raises(UserError, match="modules_to_save"):
        Recipe(name="x", task="spam", dataset="sms_spam")
    with pytest.raises(ValueError):
        Recipe(name="../x", task="chat", dataset="instruction")


def test_label_masking_covers_exactly_the_response(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    r = tiny_recipe(tiny_llama_dir, "chat", max_length=512)
    item = {"instruction": "Rewrite the sentence.", "input": "The cat chased the mouse.",
            "output": "The mouse was chased by the cat."}
    prompt, target = prompt_and_target(lm, r, item)
    ex = encode_causal(lm.tokenizer, prompt, target, r.max_length)
    labelled = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert lm.tokenizer.decode(labelled) == target + lm.tokenizer.eos_token
    n_prompt = len(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert all(l == -100 for l in ex["labels"][:n_prompt]) and all(l != -100 for l in ex["labels"][n_prompt:])
    assert "### Response" not in prompt and "<|im_start|>assistant" in prompt   # the chat template, not Alpaca


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_target_only_loss_equals_the_models_own_loss(which, request):
    """The training loss runs the LM head from the first target position only; it must be the model's own loss
    (mean over the target tokens), for prompts of different lengths in one right-padded batch, and its gradient."""
    lm = load_model(str(request.getfixturevalue(which)))
    tok = lm.tokenizer
    pairs = [("Name a colour.", "Blue."), ("Rewrite the sentence in the passive voice, please.", "It was done."),
             ("Hi", "Hello there, how are you today?")]
    encs = [encode_causal(tok, lm.render_instruction(p, ""), t, 512) for p, t in pairs]
    b = collate(encs, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    model = lm.model
    ref = model(**b).loss
    ours, n = causal_loss(model, b)
    assert n == sum(sum(1 for l in e["labels"] if l != -100) for e in encs)
    assert torch.allclose(ours, ref, atol=1e-5), (float(ours), float(ref))
    g_ref = torch.autograd.grad(ref, model.get_input_embeddings().weight)[0]
    g_ours = torch.autograd.grad(causal_loss(model, b)[0], model.get_input_embeddings().weight)[0]
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def test_boundary_loss_adds_the_boundary_decision_cross_entropy(tiny_llama_dir):
    """boundary_weight w: loss = CE + w * mean over target positions of BCE(P(next is a boundary token), truth),
    computed here by hand from the model's own logits; w = 0 is plain SFT; the recipe checks the tokens."""
    lm = load_model(str(tiny_llama_dir))
    tok = lm.tokenizer
    b_ids = tok("。", add_special_tokens=False)["input_ids"] + tok("，", add_special_tokens=False)["input_ids"]
    assert len(b_ids) == 2, b_ids
    encs = [encode_causal(tok, lm.render_instruction("写一首五言绝句，题目：春", ""), "春眠不觉晓，\n处处闻啼鸟。", 512),
            encode_causal(tok, lm.render_instruction("写", ""), "花落，知多少。", 512)]
    b = collate(encs, tok.pad_token_id)
    model = lm.model
    plain, n = causal_loss(model, b)
    with_b, _ = causal_loss(model, b, b_ids, 2.0)
    logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits[:, :-1]
    lab = b["labels"][:, 1:]
    m = lab != -100
    lp = torch.log_softmax(logits[m].float(), -1)
    pb = lp[:, b_ids].exp().sum(-1)
    y = torch.isin(lab[m], torch.tensor(b_ids)).float()
    assert 0 < y.sum() < len(y)                              # both kinds of positions are in the batch
    bce = torch.nn.functional.binary_cross_entropy(pb, y)
    assert torch.allclose(with_b, plain + 2.0 * bce, atol=1e-5) and with_b > plain
    assert torch.allclose(causal_loss(model, b, b_ids, 0.0)[0], plain)
    with pytest.raises(UserError, match="boundary_weight"):
        Recipe(name="x", task="poem", dataset="poems_zh", boundary_weight=1.0)
    from harness.finetune import boundary_token_ids
    r = Recipe(name="x", task="poem", dataset="poems_zh", boundary_weight=1.0, boundary_tokens=["。", "春眠不觉晓"])
    with pytest.raises(UserError, match="single-token"):
        boundary_token_ids(tok, r)


@pytest.mark.parametrize("task", ["spam", "chat", "poem_zh"])
def test_finetune_end_to_end(task, tiny_llama_dir, tmp_path):
    fake_data()
    base_before = load_file(str(tiny_llama_dir / "model.safetensors"))
    r = tiny_recipe(tiny_llama_dir, task)
    out = finetune(r, tmp_path / "adapters" / r.name, max_steps=2)
    for f in ("adapter_config.json", "adapter_model.safetensors", "recipe.toml", "README.md", "training.png",
              "history.json"):
        assert (out / f).is_file(), f
    card = (out / "README.md").read_text()
    assert r.name in card and "sha256" in card and "s of training" in card
    assert "## Metrics" in card and "More Information Needed" not in card   # not peft's template
    weights = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero: training changed it"
    if task == "spam":
        assert any(".score." in k for k in weights), "the classification head is saved"
    after = load_file(str(tiny_llama_dir / "model.safetensors"))
    assert all(torch.equal(base_before[k], after[k]) for k in base_before), "base weights unchanged"
    # the saved adapter reloads onto the base with the logits of the trained model
    lm = load_model(str(tiny_llama_dir))
    info = lm.attach(r.name)
    assert info.task == r.task and info.lang == r.lang and info.kind == ("seq_cls" if task == "spam" else "causal")
    enc = lm.tokenizer(["写一首五言绝句 see you at 3 mum"], return_tensors="pt")
    with torch.inference_mode(), lm.using(None) as m:
        base_logits = m(**enc).logits
    with torch.inference_mode(), lm.using(r.name) as m:
        tuned_logits = m(**enc).logits
    assert not torch.allclose(base_logits, tuned_logits)
    lm2 = load_model(str(tiny_llama_dir), adapters=[r.name])
    with torch.inference_mode(), lm2.using(r.name) as m:
        assert torch.allclose(m(**enc).logits, tuned_logits, atol=1e-6)


def test_classifier_template_is_read_the_same_way_in_training_and_inference(tiny_llama_dir, tmp_path):
    """A recipe's input_template (and max_length truncation) is saved with the adapter and applied by classify()."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from harness.finetune import encode_head
    from harness.classify import classifier_ids, classify
    fake_data()
    template = "SMS message: {text}\nIs this SMS spam?"
    frame = len(classifier_ids(load_model(str(tiny_llama_dir)).tokenizer, "", template, 512))
    cap = frame + 6                                   # the template plus 6 tokens of message
    r = tiny_recipe(tiny_llama_dir, "spam", input_template=template, max_length=cap)
    out = finetune(r, tmp_path / "adapters" / r.name, max_steps=2)
    assert "input_template" in (out / "recipe.toml").read_text()
    lm = load_model(str(tiny_llama_dir), adapters=[r.name])
    texts = ["Free entry! Win a prize now, claim your reward at the link. Your parcel is waiting, pay the fee.",
             "see you at noon"]
    ids = [classifier_ids(lm.tokenizer, t, template, cap) for t in texts]
    assert len(ids[0]) == cap and ids[0][-3:] == ids[1][-3:], "long messages are cut before the template's end"
    assert encode_head(lm.tokenizer, {"text": texts[0], "label": "spam"}, ["ham", "spam"], cap,
                       template)["input_ids"] == ids[0]
    got = classify(lm, texts, adapter=r.name)
    plain = AutoModelForSequenceClassification.from_pretrained(str(tiny_llama_dir), num_labels=2)
    plain.config.pad_token_id = lm.tokenizer.pad_token_id
    plain = PeftModel.from_pretrained(plain, str(out)).eval()
    with torch.inference_mode():
        for text_ids, probs in zip(ids, got):
            want = plain(input_ids=torch.tensor([text_ids])).logits.softmax(-1)[0]
            assert abs(float(want[1]) - probs["spam"]) < 1e-4
    with pytest.raises(UserError, match="exactly once"):
        tiny_recipe(tiny_llama_dir, "spam", input_template="no placeholder")


def test_class_balanced_loss(tiny_llama_dir, tmp_path):
    from harness.finetune import class_weights
    w = class_weights([0] * 6 + [1] * 2, 2)
    assert w[1] == 3 * w[0] and abs((6 * w[0] + 2 * w[1]) / 8 - 1) < 1e-9   # equal total weight per class
    fake_data()
    r = tiny_recipe(tiny_llama_dir, "spam", balance_classes=True)
    out = finetune(r, tmp_path / "adapters" / r.name, max_steps=2)
    assert "balance_classes = true" in (out / "recipe.toml").read_text()
    assert len(json.loads((out / "history.json").read_text())["history"]["steps"]) == 2


def test_same_seed_same_adapter_and_resume_after_stop(tiny_llama_dir, tmp_path):
    fake_data()
    r = tiny_recipe(tiny_llama_dir, "chat", dropout=0.1)
    a = finetune(r, tmp_path / "a", max_steps=2)
    b = finetune(r, tmp_path / "b", max_steps=2)
    wa, wb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # stopped after 1 step (a kill leaves the same checkpoint), then resumed to 2: the same adapter
    c = finetune(r, tmp_path / "c", max_steps=1)
    assert (c / "checkpoint" / "state.json").is_file()
    c = finetune(r, tmp_path / "c", max_steps=2)
    wc = load_file(str(c / "adapter_model.safetensors"))
    assert all(torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)
    hist = json.loads((c / "history.json").read_text())
    assert [s["step"] for s in hist["history"]["steps"]] == [1, 2]


def test_card_metrics_come_from_the_evaluate_pipeline(tiny_llama_dir, tmp_path):
    from harness.finetune import measure
    fake_data()
    r = tiny_recipe(tiny_llama_dir, "spam")
    finetune(r, tmp_path / "adapters" / r.name, max_steps=1)
    md = measure(r.name, eval_sets=["sms_own"], limit=6)
    card = (tmp_path / "adapters" / r.name / "README.md").read_text(encoding="utf-8")
    assert "python -m harness run --model" in md and f"--adapter {r.name} --eval-set sms_own" in md
    assert "| sms_own | **tiny-spam** | 6 |" in card and "zero-shot" in card
    assert (tmp_path / "results" / "leaderboard_spam.csv").is_file()


def test_card_measures_an_adapter_served_by_an_engine_and_refuses_a_served_classifier(tiny_llama_dir, tmp_path):
    from harness.testing.fake_openai import FakeOpenAI
    from harness.finetune import measure
    fake_data()
    r = tiny_recipe(tiny_llama_dir, "chat")
    finetune(r, tmp_path / "adapters" / r.name, max_steps=1)
    with FakeOpenAI(models=["tiny-chat-served"], default=lambda body: "Mouse 0 was chased by the cat.") as fake:
        spec = f"openai:tiny-chat-served@{fake.url}"
        md = measure(r.name, judge=None, eval_sets=["instructions_own"], limit=3, max_new_tokens=8, engine=spec)
        asked = fake.count("/v1/chat/completions")
    assert asked == 3                                                   # the adapter's answers came from the server
    card = (tmp_path / "adapters" / r.name / "README.md").read_text(encoding="utf-8")
    assert f"**{r.name}**, served by `{spec}`" in card and "(base)" in card   # the base measured in process
    assert f"python -m harness run --model {spec} --eval-set instructions_own --judge none --limit 3" in md
    assert "--decoding" not in md
    s = tiny_recipe(tiny_llama_dir, "spam")
    finetune(s, tmp_path / "adapters" / s.name, max_steps=1)
    with pytest.raises(UserError, match="no server API returns its per-label probabilities.*drop --engine"):
        measure(s.name, eval_sets=["sms_own"], limit=3, engine="openai:x@http://127.0.0.1:9")
    with pytest.raises(UserError, match="--base-engine 'tiny' is not a server spec"):
        measure(r.name, eval_sets=["instructions_own"], limit=3, base_engine="tiny")


def test_form_counts_pick_that_many_of_each_named_form_and_round_trip(tmp_path):
    """form_counts takes at most n poems of each named form (seeded), drops the forms it does not name, is written
    back to recipe.toml as a TOML table that reads again, and bad tables name the key and the fix."""
    from harness.finetune import load_examples, read_recipe_file, recipe_toml
    forms = ["五言绝句", "七言绝句", "五言律诗"]
    rows = [{"id": f"p{i}", "lang": "zh", "form": forms[i % 3], "title": "春", "prompt": "写一首诗", "poem": "春。"}
            for i in range(60)]                                  # 20 of each form
    write_split("poems_zh", {"train": rows, "validation": rows[:6], "test": rows[:6]})
    r = Recipe(name="x", task="poem", dataset="poems_zh", lang="zh", form_counts={"七言绝句": 12, "五言绝句": 3})
    got = load_examples(r, "train", None, None)
    assert sorted(x["form"] for x in got).count("七言绝句") == 12 and [x["form"] for x in got].count("五言绝句") == 3
    assert len(got) == 15 and got == load_examples(r, "train", None, None)      # deterministic for the seed
    both = Recipe(name="x", task="poem", dataset="poems_zh", lang="zh", per_form=5, form_counts={"七言绝句": 12})
    assert len(load_examples(both, "train", None, None)) == 12              # form_counts overrides per_form
    f = tmp_path / "r.toml"
    f.write_text(recipe_toml(r), encoding="utf-8")
    assert 'form_counts = { "七言绝句" = 12, "五言绝句" = 3 }' in f.read_text(encoding="utf-8")
    assert read_recipe_file(f).form_counts == r.form_counts
    assert "form_counts" not in recipe_toml(Recipe(name="x", task="poem", dataset="poems_zh"))
    f.write_text('name = "x"\ntask = "poem"\nform_counts = { "七言绝句" = "many" }\n', encoding="utf-8")
    with pytest.raises(UserError, match="form_counts must be a table of integers"):
        read_recipe_file(f)
    with pytest.raises(UserError, match="positive integers"):
        Recipe(name="x", task="poem", form_counts={"七言绝句": 0})
    with pytest.raises(UserError, match=r"not in forms"):
        Recipe(name="x", task="poem", forms=["五言绝句"], form_counts={"七言绝句": 3})


def test_bf16_autocast_trains_float32_lora_weights(tiny_llama_dir, tmp_path):
    """autocast = "bf16" runs the training matmuls in bfloat16: the loss differs from the float32 run's (so the
    flag is really used) but not by much, the LoRA weights are saved as a float32 run's (no bfloat16), and a wrong
    value is named."""
    fake_data()
    runs, dtypes = {}, {}
    for mode in ("", "bf16"):
        r = tiny_recipe(tiny_llama_dir, "chat", autocast=mode, dropout=0.0)
        out = finetune(r, tmp_path / (mode or "fp32"), max_steps=2)
        runs[mode] = json.loads((out / "history.json").read_text())["history"]["steps"]
        w = load_file(str(out / "adapter_model.safetensors"))
        assert all(torch.isfinite(v).all() for v in w.values())
        dtypes[mode] = {v.dtype for v in w.values()}
    assert dtypes["bf16"] == dtypes[""] and torch.bfloat16 not in dtypes["bf16"]   # saved as a float32 run's are
    a, b = runs[""][0]["loss"], runs["bf16"][0]["loss"]
    assert a != b and abs(a - b) < 0.05 * a, (a, b)
    with pytest.raises(UserError, match="autocast must be one of"):
        tiny_recipe(tiny_llama_dir, "chat", autocast="fp16")
