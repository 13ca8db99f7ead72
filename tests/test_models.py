"""Model registry and adapters on one base, with tiny models built in the tests."""
from __future__ import annotations

import json

import pytest
import torch
from tiny import build_adapter

from harness.errors import UserError
from harness.models import base_status, list_adapters, list_bases, load_model, resolve_base


def _logits(lm, text="Hello, how are you today?", adapter=...):
    enc = lm.tokenizer([text], return_tensors="pt")
    with torch.inference_mode(), lm.using(adapter) as model:
        return model(**enc).logits


@pytest.fixture
def adapters(tiny_llama_dir, tmp_path, monkeypatch):
    folder = tmp_path / "adapters"
    build_adapter(tiny_llama_dir, folder / "chat-a", seed=1)
    build_adapter(tiny_llama_dir, folder / "chat-b", seed=2)
    build_adapter(tiny_llama_dir, folder / "spam-c", kind="seq_cls", seed=3)
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(folder))
    return folder


def test_registry_has_embedded_default_and_hub_models():
    names = {s.name: s for s in list_bases()}
    assert names["smollm2-135m-instruct"].source == "embedded" and names["smollm2-135m-instruct"].default
    for hub in ("gpt2", "gpt2-medium", "dialogpt-medium", "gpt2-chinese-poem", "qwen2.5-0.5b-instruct"):
        assert names[hub].source == "hub"
    assert names["dialogpt-medium"].prompt_style == "dialogpt"
    assert resolve_base("openai-community/gpt2").name == "gpt2"


def test_unknown_model_lists_available():
    with pytest.raises(UserError) as e:
        resolve_base("no-such-model")
    assert "smollm2-135m-instruct" in str(e.value) and "gpt2" in str(e.value)


def test_hub_model_offline_error_is_one_clear_sentence():
    with pytest.raises(UserError) as e:
        load_model("gpt2-medium")
    msg = str(e.value)
    assert "gpt2-medium" in msg and "hf download" in msg and "Traceback" not in msg


def test_switching_adapters_changes_logits_and_base_is_raw(tiny_llama_dir, adapters):
    from transformers import AutoModelForCausalLM
    raw = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    enc = load_model(str(tiny_llama_dir)).tokenizer(["Hello, how are you today?"], return_tensors="pt")
    with torch.inference_mode():
        raw_logits = raw(**enc).logits
    lm = load_model(str(tiny_llama_dir), adapters=["chat-a", "chat-b", "spam-c"])
    base_model_id = id(lm.model.get_base_model())
    a, b, base = _logits(lm, adapter="chat-a"), _logits(lm, adapter="chat-b"), _logits(lm, adapter=None)
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, base, atol=1e-4)
    assert torch.allclose(base, raw_logits, atol=1e-5)
    assert torch.allclose(_logits(lm, adapter="chat-a"), a)          # switching back reproduces
    lm.set_active("chat-b")
    assert torch.allclose(_logits(lm), b)
    lm.set_active("base")
    assert torch.allclose(_logits(lm), raw_logits, atol=1e-5)
    assert id(lm.model.get_base_model()) == base_model_id             # never reloaded


def test_classifier_and_causal_adapters_coexist(tiny_llama_dir, adapters):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification
    from harness.classify import classify

    lm = load_model(str(tiny_llama_dir), adapters=["chat-a", "spam-c"])
    probs = classify(lm, ["Free entry! Win a prize now", "Hi mum, see you at noon"], adapter="spam-c")
    # the same adapter through plain peft on AutoModelForSequenceClassification
    ref = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=2)
    ref = PeftModel.from_pretrained(ref, adapters / "spam-c").eval()
    tok = lm.tokenizer
    for text, p in zip(["Free entry! Win a prize now", "Hi mum, see you at noon"], probs):
        with torch.inference_mode():
            expected = ref(**tok([text], return_tensors="pt")).logits.softmax(-1)[0]
        assert p["spam"] == pytest.approx(float(expected[1]), abs=1e-4)
        assert p["ham"] + p["spam"] == pytest.approx(1.0)
    # the causal adapter still works and differs from the base after the classifier was loaded
    assert not torch.allclose(_logits(lm, adapter="chat-a"), _logits(lm, adapter=None), atol=1e-4)


def test_adapter_listing_and_status(tiny_llama_dir, adapters):
    infos = {a.name: a for a in list_adapters()}
    assert infos["spam-c"].kind == "seq_cls" and infos["spam-c"].labels == ("ham", "spam")
    assert infos["chat-a"].kind == "causal" and len(infos["chat-a"].sha256) == 64
    assert infos["chat-a"].sha256 != infos["chat-b"].sha256
    assert base_status(resolve_base(str(tiny_llama_dir))) == "local"


def test_mismatched_base_is_rejected(tiny_llama_dir, tiny_gpt2_dir, adapters):
    build_adapter(tiny_gpt2_dir, adapters / "gpt2-chat", seed=4)
    lm = load_model(str(tiny_llama_dir))
    with pytest.raises(UserError) as e:
        lm.attach("gpt2-chat")
    assert "trained on base" in str(e.value) and "--model" in str(e.value)


def test_adapter_whose_weights_do_not_fit_is_a_clear_error(tiny_llama_dir, adapters):
    cfg = json.loads((adapters / "chat-a" / "adapter_config.json").read_text())
    cfg["r"] = 8  # weights saved with r=4
    (adapters / "chat-a" / "adapter_config.json").write_text(json.dumps(cfg))
    lm = load_model(str(tiny_llama_dir))
    with pytest.raises(UserError) as e:
        lm.attach("chat-a")
    assert "does not fit" in str(e.value)


@pytest.mark.parametrize("bad", ["../etc", "a/b", "a\\b", "..", "x/../y", ""])
def test_adapter_names_with_path_parts_are_rejected(tiny_llama_dir, adapters, bad):
    lm = load_model(str(tiny_llama_dir))
    with pytest.raises((UserError, ValueError)):
        lm.attach(bad)


def test_unknown_adapter_lists_available(tiny_llama_dir, adapters):
    lm = load_model(str(tiny_llama_dir))
    with pytest.raises(UserError) as e:
        lm.attach("nope")
    assert "chat-a" in str(e.value) and "spam-c" in str(e.value)


def test_prompt_styles(tiny_llama_dir, tiny_gpt2_dir):
    chat = load_model(str(tiny_llama_dir))
    p = chat.render_chat([{"role": "user", "content": "Hi"}], system="Be brief.")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in p and p.endswith("<|im_start|>assistant\n")
    gpt2 = load_model(str(tiny_gpt2_dir))
    assert gpt2.spec.prompt_style == "alpaca"
    p = gpt2.render_instruction("Rewrite it.", "The cat chased the mouse.")
    assert "### Instruction:\nRewrite it." in p and "### Input:\nThe cat" in p and p.endswith("### Response:\n")


def test_history_is_trimmed_to_the_context(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    long = [{"role": r, "content": "Hello how are you today " * 20} for r in ("user", "assistant") * 6]
    long.append({"role": "user", "content": "last question"})
    prompt = lm.render_chat(long, max_new_tokens=64)
    assert lm.count_tokens(prompt) + 64 <= lm.context_length
    assert "last question" in prompt
    with pytest.raises(UserError):
        lm.render_chat([{"role": "user", "content": "Hello " * 2000}], max_new_tokens=64)


def test_hub_model_without_network_fails_in_seconds(monkeypatch):
    import time
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")   # nothing listens: like a machine offline
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        load_model("gpt2")
    assert "cannot be reached" in str(e.value) and "hf download openai-community/gpt2" in str(e.value)
    assert time.perf_counter() - t0 < 30
