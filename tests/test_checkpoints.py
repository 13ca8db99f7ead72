"""A checkpoint is a registry name, a local HF folder, a .gguf, a .pth, or base + adapter where the adapter is a name
under adapters/ or a path to any trainer's peft folder; checkpoint_hash identifies the weights wherever they live."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
from tiny import build_adapter

from harness.errors import UserError
from harness.models import checkpoint_hash, list_adapters, load_model


def _plain_peft(tiny_dir, out, base_ref, kind="causal", seed=5):
    """An adapter as another trainer leaves it: peft files only, no recipe.toml, the base named in its config."""
    build_adapter(tiny_dir, out, kind=kind, seed=seed)
    (out / "recipe.toml").unlink()
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_ref)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


def _logits(lm, adapter):
    enc = lm.tokenizer(["Hello, how are you today?"], return_tensors="pt")
    with torch.inference_mode(), lm.using(adapter) as m:
        return m(**enc).logits


def test_a_truncated_adapter_is_not_listed_as_ok(tiny_llama_dir, tmp_path):
    folder = tmp_path / "adapters"
    build_adapter(tiny_llama_dir, folder / "good")
    build_adapter(tiny_llama_dir, folder / "cut")
    f = folder / "cut" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    infos = {a.name: a for a in list_adapters(folder)}
    assert infos["good"].problem == ""
    assert "truncated" in infos["cut"].problem and "adapter_model.safetensors" in infos["cut"].problem


def test_models_command_shows_the_truncated_adapter(tiny_llama_dir, tmp_path, capsys):
    from harness.commands import models
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "cut")
    f = tmp_path / "adapters" / "cut" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    models()
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("cut "))
    assert not line.rstrip().endswith(" ok") and "truncated" in line


def test_adapter_model_bin_is_refused_with_the_one_line_that_converts_it(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file
    ad = _plain_peft(tiny_llama_dir, tmp_path / "trainer-out" / "lora", tiny_llama_dir)
    torch.save(load_file(ad / "adapter_model.safetensors"), ad / "adapter_model.bin")
    (ad / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError) as e:
        load_model(adapters=[str(ad)])
    msg = str(e.value)
    assert "adapter_model.bin" in msg and "save_file" in msg and "weights_only=True" in msg
    one_liner = msg.split("convert it once with: ", 1)[1]
    assert one_liner.startswith('python -c "') and one_liner.endswith('"')
    subprocess.run(one_liner, shell=True, check=True)           # the line works as printed
    lm = load_model(adapters=[str(ad)])
    assert not torch.allclose(_logits(lm, str(ad)), _logits(lm, None), atol=1e-4)


def test_an_adapter_path_from_any_trainer_loads_on_the_base_it_names(tiny_llama_dir, tmp_path):
    ad = _plain_peft(tiny_llama_dir, tmp_path / "elsewhere" / "checkpoint-500", tiny_llama_dir)
    cls = _plain_peft(tiny_llama_dir, tmp_path / "elsewhere" / "cls", tiny_llama_dir, kind="seq_cls", seed=6)
    lm = load_model(adapters=[str(ad), str(cls)])        # no --model: the base named in adapter_config.json
    assert lm.spec.location == str(tiny_llama_dir.resolve())
    assert set(lm.adapters) == {"checkpoint-500", "cls"}
    with_path, with_name = _logits(lm, str(ad)), _logits(lm, "checkpoint-500")
    assert torch.equal(with_path, with_name) and not torch.allclose(with_path, _logits(lm, None), atol=1e-4)
    assert lm.adapters["cls"].kind == "seq_cls" and "cls" in lm.heads          # its modules_to_save head
    with pytest.raises((UserError, ValueError)):        # the app's names never become paths
        lm.attach(str(tmp_path / "elsewhere" / "other"))


def test_an_adapter_whose_base_cannot_be_found_is_one_sentence(tiny_llama_dir, tmp_path):
    ad = _plain_peft(tiny_llama_dir, tmp_path / "a", "someorg/not-downloaded-model")
    with pytest.raises(UserError) as e:
        load_model(adapters=[str(ad)])
    msg = str(e.value)
    assert "someorg/not-downloaded-model" in msg and "hf download someorg/not-downloaded-model" in msg
    assert "--model" in msg and msg.count(". ") == 0
    gone = _plain_peft(tiny_llama_dir, tmp_path / "b", tmp_path / "deleted-base")
    with pytest.raises(UserError, match=r"needs its base .*deleted-base.*--model"):
        load_model(adapters=[str(gone)])


def test_checkpoint_hash_is_the_same_for_the_same_weights_anywhere(tiny_llama_dir, tmp_path):
    copy = tmp_path / "moved" / "renamed-model"
    shutil.copytree(tiny_llama_dir, copy)
    assert checkpoint_hash(str(copy)) == checkpoint_hash(str(tiny_llama_dir))
    a = build_adapter(tiny_llama_dir, tmp_path / "x" / "a", seed=1)
    b = build_adapter(tiny_llama_dir, tmp_path / "x" / "b", seed=2)
    a2 = shutil.copytree(a, tmp_path / "y" / "a-copy")
    ha = checkpoint_hash(str(tiny_llama_dir), str(a))
    assert ha == checkpoint_hash(str(copy), str(a2))
    assert ha != checkpoint_hash(str(tiny_llama_dir), str(b)) != checkpoint_hash(str(tiny_llama_dir))
    other = tmp_path / "other"
    shutil.copytree(tiny_llama_dir, other)
    from safetensors.torch import load_file, save_file
    sd = load_file(other / "model.safetensors")
    k = next(iter(sd))
    sd[k] = sd[k] + 1
    save_file(sd, other / "model.safetensors", metadata={"format": "pt"})
    assert checkpoint_hash(str(other)) != checkpoint_hash(str(tiny_llama_dir))


def test_checkpoint_hash_of_a_pth_equals_its_converted_folder(tmp_path, monkeypatch):
    from test_convert import book_model
    from tiny import build_tokenizer

    import harness.convert as conv
    tok_dir = tmp_path / "tok"
    tok = build_tokenizer(chat=False)
    tok.save_pretrained(tok_dir)
    torch.save(book_model(len(tok), emb=64, heads=1, layers=1, context=8).state_dict(), tmp_path / "m.pth")
    monkeypatch.setattr(conv.converted_pth, "__defaults__", (str(tok_dir),))
    shutil.copy(tmp_path / "m.pth", tmp_path / "same-weights.pth")
    assert checkpoint_hash(str(tmp_path / "m.pth")) == checkpoint_hash(str(tmp_path / "same-weights.pth"))
    folder = conv.convert(tmp_path / "m.pth", tmp_path / "hf", tokenizer=str(tok_dir), heads=1, quiet=True)
    assert checkpoint_hash(str(folder)) == checkpoint_hash(str(tmp_path / "m.pth"))


def test_a_causal_adapter_with_a_modules_to_save_head_loads_by_path(tiny_gpt2_dir, tmp_path):
    """Another trainer's adapter that also trains the LM head (modules_to_save): loaded whole, head included."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["c_attn"],
                                                  modules_to_save=["ln_f"], init_lora_weights=False))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "modules_to_save" in n:
                p.add_(0.5)
    out = tmp_path / "unsloth-out"
    peft_model.save_pretrained(out)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), out).eval()
    lm = load_model(adapters=[str(out)])
    enc = lm.tokenizer(["Hello, how are you today?"], return_tensors="pt")
    with torch.inference_mode():
        expected = ref(**enc).logits
    assert torch.allclose(_logits(lm, str(out)), expected, atol=1e-5)
    assert not torch.allclose(_logits(lm, None), expected, atol=1e-3)


def test_an_adapter_truncated_after_the_base_loaded_is_refused_naming_the_file(tiny_llama_dir, tmp_path):
    folder = tmp_path / "adapters"
    build_adapter(tiny_llama_dir, folder / "cut")
    lm = load_model(str(tiny_llama_dir), adapters_folder=folder)
    f = folder / "cut" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    for load in (lambda: lm.attach("cut"), lambda: load_model(str(tiny_llama_dir), ["cut"], adapters_folder=folder)):
        with pytest.raises(UserError) as e:
            load()
        msg = str(e.value)
        assert msg.startswith("adapter 'cut' cannot be used: ") and f"{f} is corrupt or truncated" in msg
        assert "restore it with `git checkout --" in msg and "python -m harness finetune" in msg
    assert "cut" not in lm.adapters
