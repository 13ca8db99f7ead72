"""Export a LoRA adapter to a serving engine: a GGUF LoRA for llama.cpp, a Modelfile for Ollama, a vLLM line.

    python -m harness export smollm2-135m-alpaca                  # ~/.cache/ftbench/exports/<name>/<name>.gguf
    python -m harness export smollm2-135m-alpaca --to ollama      # + Modelfile; prints `ollama create ...`
    python -m harness export smollm2-135m-alpaca --to vllm        # prints `vllm serve ... --lora-modules ...`

    python -m llama_cpp.server --model <base.gguf> --lora_path <name>.gguf --model_alias <name> --host 127.0.0.1 --port 8080
    python -m harness run --model openai:<name>@http://127.0.0.1:8080 --eval-set instructions_own --judge none

The GGUF adapter is written the way llama.cpp's own convert_lora_to_gguf.py writes one: general.type=adapter,
adapter.type=lora, adapter.lora.alpha, the base's architecture, tensors `blk.N.attn_q.weight.lora_a` / `.lora_b`
named by gguf's tensor-name map, lora_a as peft's A (rank x in), lora_b as peft's B (out x rank), and for the
llama architecture the rows of q/k's B permuted exactly as convert_hf_to_gguf.py permutes the base's q/k weights
(its GGUF RoPE layout), so base and adapter line up. llama.cpp scales every pair by alpha / rank, as peft does;
per-module ranks or alphas (rank_pattern, alpha_pattern) and rsLoRA are folded into B so the product is the same.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import UserError
from harness.models import AdapterInfo, BaseSpec, base_note, embedded_gguf, find_adapter, resolve_base
from harness.paths import cache_dir

# Architectures whose HF -> GGUF conversion permutes the rows of q/k (convert_hf_to_gguf.py LlamaModel.permute).
PERMUTED_QK = {"llama"}
# Architectures whose converter writes q/k as they are (same converter, no permutation). Only llama is tested
# end to end against llama.cpp here; these follow the converter's code.
PLAIN_QK = {"qwen2", "qwen3", "gemma", "gemma2", "gemma3", "mistral3", "olmo", "phi3", "starcoder2", "granite"}
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


@dataclass(frozen=True)
class BaseGGUF:
    """What the export needs from the base's GGUF: architecture, heads, tensor shapes, chat template."""
    path: Path
    arch: str
    n_layers: int
    n_head: int
    n_head_kv: int
    shapes: dict[str, tuple[int, ...]]      # tensor name -> ne (GGUF order: row size first)
    chat_template: str


def base_gguf(base: str, adapter: str = "") -> Path:
    """The GGUF file llama.cpp and Ollama load for a base (registry name or .gguf path), or a UserError saying why
    there is none; `adapter` names the adapter that needs it (its error then says how to get a GGUF base). The one
    road: harness.llamacpp loads this file, the export reads its architecture and chat template."""
    spec = resolve_base(base)
    whose = f" of adapter {adapter!r}" if adapter else ""
    if spec.source == "embedded":
        path = embedded_gguf(spec)
        if path is None:
            raise UserError(f"the embedded base {spec.name!r}{whose} is not installed: "
                            f"{base_note(spec, 'missing')} (it ships {spec.file})")
        return Path(path)
    if spec.source == "gguf":
        return Path(spec.location)
    if not adapter:
        raise UserError(f"{spec.name} has no GGUF file for llama.cpp (a {spec.source} base).")
    raise UserError(f"adapter {adapter!r} was trained on {spec.name!r}, a {spec.source} base with no GGUF file "
                    "that llama.cpp or Ollama could load: convert the base with llama.cpp's convert_hf_to_gguf.py and "
                    "train on that .gguf (--model path/to/base.gguf), or export with --to vllm, which loads the "
                    "peft folder itself")


def base_gguf_path(info: AdapterInfo) -> tuple[BaseSpec, Path]:
    """An adapter's base and its GGUF file (base_gguf)."""
    return resolve_base(info.base), base_gguf(info.base, info.name)


def read_base_gguf(path: Path) -> BaseGGUF:
    import gguf

    reader = gguf.GGUFReader(path)

    def field(key: str, default=None):
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    arch = str(field("general.architecture", ""))
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    return BaseGGUF(path, arch, int(field(f"{arch}.block_count", 0)), int(field(f"{arch}.attention.head_count", 0)),
                    int(field(f"{arch}.attention.head_count_kv", 0) or field(f"{arch}.attention.head_count", 0)),
                    shapes, str(field("tokenizer.chat_template", "") or ""))


def permute_rows(b, n_head: int, n_head_kv: int | None):
    """convert_hf_to_gguf.py's LlamaModel.permute on the output rows (a LoRA B matrix, or a weight)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (b.reshape(n_head, 2, b.shape[0] // n_head // 2, *b.shape[1:])
            .swapaxes(1, 2)
            .reshape(b.shape))


def _refuse_unsupported(info: AdapterInfo, cfg: dict) -> None:
    if info.kind == "seq_cls":
        raise UserError(f"adapter {info.name!r} is a classification head (kind seq_cls): no serving engine's API "
                        "(llama.cpp, Ollama, vLLM) returns that head's class probabilities, so it cannot be "
                        "exported; classify in-process with `python -m harness classify`")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserError(f"adapter {info.name!r} is a {cfg.get('peft_type')} adapter: only LoRA exports to GGUF")
    for key, why in (("use_dora", "DoRA magnitudes"), ("lora_bias", "LoRA biases"),
                     ("modules_to_save", f"fully trained modules ({cfg.get('modules_to_save')})"),
                     ("fan_in_fan_out", "fan_in_fan_out (Conv1D) weights"), ("layer_replication", "layer replication")):
        if cfg.get(key):
            raise UserError(f"adapter {info.name!r} has {why}: a GGUF LoRA adapter carries only lora_a/lora_b "
                            "pairs, so llama.cpp cannot apply it; retrain without them to export")


def _scaling(cfg: dict, module: str, r_default: int) -> tuple[int, float]:
    """(rank, peft's scaling) of one module, honouring rank_pattern / alpha_pattern / rsLoRA."""
    import math

    def pick(pattern: dict, default):
        for key, value in (pattern or {}).items():   # peft: the key matches the module name's end
            if re.search(rf"(^|\.){key}$", module) or re.fullmatch(key, module):
                return value
        return default

    r = int(pick(cfg.get("rank_pattern"), r_default))
    alpha = float(pick(cfg.get("alpha_pattern"), cfg.get("lora_alpha", r)))
    return r, alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def export_gguf(info: AdapterInfo, out: Path) -> Path:
    """Write adapters/<name>/ as a GGUF LoRA adapter for the base's GGUF; returns the path written."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((info.path / "adapter_config.json").read_text(encoding="utf-8"))
    _refuse_unsupported(info, cfg)
    base_path = base_gguf(info.base, info.name)
    base = read_base_gguf(base_path)
    if base.arch not in PERMUTED_QK | PLAIN_QK:
        raise UserError(f"the base GGUF {base_path.name} has architecture {base.arch!r}; ftbench exports LoRA "
                        f"adapters for {', '.join(sorted(PERMUTED_QK | PLAIN_QK))} (whether q/k rows are permuted "
                        "depends on the architecture), use llama.cpp's convert_lora_to_gguf.py for others")
    try:
        arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == base.arch)
    except StopIteration:
        raise UserError(f"the installed gguf package does not know architecture {base.arch!r}: "
                        "pip install -U gguf") from None
    names = gguf.get_tensor_name_map(arch_id, base.n_layers)
    state = load_file(str(info.path / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        m = LORA_KEY.match(key)
        if not m:
            raise UserError(f"{info.path / 'adapter_model.safetensors'}: tensor {key!r} is not a LoRA A/B weight "
                            "(embedding LoRA, norms or saved modules): a GGUF LoRA adapter cannot carry it")
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    if not pairs:
        raise UserError(f"{info.path / 'adapter_model.safetensors'} has no LoRA weights: retrain the adapter")
    unnamed = sorted({m.rsplit(".", 1)[-1] for m in pairs if names.get_name(m + ".weight", try_suffixes=(".weight",)) is None})
    if unnamed:
        raise UserError(f"adapter {info.name!r} targets {', '.join(unnamed)}, which gguf's tensor map for "
                        f"{base.arch} cannot name, so llama.cpp could not apply them; retrain with target_modules "
                        "among the attention and MLP projections (q_proj, k_proj, v_proj, o_proj, gate_proj, "
                        "up_proj, down_proj)")
    r_default = int(cfg.get("r", 8))
    alpha = float(cfg.get("lora_alpha", r_default))
    tensors: list[tuple[str, np.ndarray]] = []
    for module in sorted(pairs, key=_module_order):
        ab = pairs[module]
        if set(ab) != {"A", "B"}:
            raise UserError(f"{info.path / 'adapter_model.safetensors'}: {module} has only lora_{''.join(ab)}: "
                            "the file is incomplete; restore it from git or retrain the adapter")
        a, b = ab["A"], ab["B"]
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        target = base.shapes.get(name)
        if target is None:
            raise UserError(f"adapter {info.name!r}: {module} maps to {name}, which the base GGUF {base_path.name} "
                            "does not have (tied embeddings?); retrain without that target module")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or (target[0], target[1]) != (a.shape[1], b.shape[0]):
            raise UserError(f"adapter {info.name!r} does not fit the base GGUF {base_path.name}: {module} has "
                            f"A {a.shape} and B {b.shape}, the base's {name} is {target[1]} x {target[0]}")
        rank, scale = _scaling(cfg, module, r_default)
        fold = scale / (alpha / a.shape[0])         # llama.cpp applies alpha / rank(B); the rest goes into B
        if abs(fold - 1.0) > 1e-6:
            b = (b.astype(np.float32) * fold).astype(b.dtype)
        if base.arch in PERMUTED_QK and module.endswith("q_proj"):
            b = permute_rows(b, base.n_head, base.n_head)
        elif base.arch in PERMUTED_QK and module.endswith("k_proj"):
            b = permute_rows(b, base.n_head, base.n_head_kv)
        dtype = np.float16 if a.dtype == np.float16 and b.dtype == np.float16 else np.float32
        tensors.append((name + ".lora_a", np.ascontiguousarray(a, dtype=dtype)))
        tensors.append((name + ".lora_b", np.ascontiguousarray(b, dtype=dtype)))
    import tempfile

    from harness.io import atomic_write

    with tempfile.TemporaryDirectory(prefix="ftbench-export-") as tmp:   # GGUFWriter opens its own path
        staging = Path(tmp) / "adapter.gguf"
        w = gguf.GGUFWriter(str(staging), base.arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_name(info.name)
        w.add_string("ftbench.adapter_sha256", info.sha256)   # lets harness.llamacpp reuse a current export
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if tensors[0][1].dtype == np.float16
                        else gguf.LlamaFileType.ALL_F32)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, arr in tensors:
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        out = atomic_write(Path(out).expanduser(), staging.read_bytes())
    return out


def _module_order(module: str) -> tuple[int, str]:
    m = re.search(r"\.layers\.(\d+)\.", module)
    return (int(m.group(1)) if m else -1, module)


# ---------------------------------------------------------------- Ollama

def ollama_template(chat_template: str) -> tuple[str, str, list[str]]:
    """(TEMPLATE in Ollama's Go syntax, default system prompt, stop strings) for a ChatML chat template;
    ("", "", []) for others (Ollama then derives the template from the GGUF's own tokenizer.chat_template)."""
    if "<|im_start|>" not in chat_template:
        return "", "", []
    m = re.search(r"<\|im_start\|>system\\?n?\n?(.*?)<\|im_end\|>", chat_template, re.S)
    system = m.group(1).strip() if m and "message" not in m.group(1) else ""
    template = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
                "{{ end }}<|im_start|>assistant\n")
    return template, system, ["<|im_end|>", "<|im_start|>"]


def write_modelfile(info: AdapterInfo, adapter_gguf: Path, out: Path) -> Path:
    from harness.io import atomic_write

    base_path = base_gguf(info.base, info.name)
    template, system, stops = ollama_template(read_base_gguf(base_path).chat_template)
    lines = [f"# ftbench export of adapter {info.name} (base {info.base})",
             f"FROM {base_path.resolve()}", f"ADAPTER {adapter_gguf.resolve()}"]
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return atomic_write(out, "\n".join(lines) + "\n")


# ---------------------------------------------------------------- vLLM

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)     # vLLM's accepted --max-lora-rank values


def vllm_command(info: AdapterInfo) -> str:
    cfg = json.loads((info.path / "adapter_config.json").read_text(encoding="utf-8"))
    _refuse_unsupported(info, dict(cfg, fan_in_fan_out=False))
    spec = resolve_base(info.base)
    model = spec.upstream if spec.source == "embedded" else spec.location
    if not model or spec.source == "gguf":
        raise UserError(f"adapter {info.name!r} was trained on the GGUF file {spec.location}; vLLM serves LoRA "
                        "adapters on Hugging Face weights: train on the model's hub id or a local HF directory")
    ranks = [int(cfg.get("r", 8)), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]]
    rank = next((v for v in VLLM_RANKS if v >= max(ranks)), max(ranks))
    return (f"vllm serve {shlex.quote(model)} --enable-lora "
            f"--lora-modules {shlex.quote(info.name + '=' + str(info.path.resolve()))} --max-lora-rank {rank}")


# ---------------------------------------------------------------- command

def default_export_path(name: str) -> Path:
    return cache_dir() / "exports" / name / f"{name}.gguf"


def export_cmd(adapter: str, /, to: Literal["gguf", "ollama", "vllm"] = "gguf", output: str | None = None) -> int:
    """Export an adapter for a serving engine: a GGUF LoRA (llama.cpp), an Ollama Modelfile, or a vLLM command.

    adapter: an adapter under adapters/ (python -m harness models lists them)
    to: gguf writes a GGUF LoRA adapter; ollama also writes a Modelfile; vllm prints the vllm serve line
    output: output file (gguf: the .gguf; ollama: the Modelfile); default ~/.cache/ftbench/exports/<adapter>/
    """
    from harness.io import check_writable_file

    info = find_adapter(adapter)
    if to == "vllm":
        if output:
            raise UserError("--output is not used with --to vllm: vLLM loads the peft folder "
                            f"{info.path} itself; run the printed command")
        print(vllm_command(info))
        return 0
    if to == "gguf":
        target = check_writable_file(output) if output else default_export_path(info.name)
        path = export_gguf(info, target)
        base_path = base_gguf(info.base, info.name)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        # llama-cpp-python's /v1/models reports only the alias: a distinct one per base + adapter keeps the
        # generation cache of this adapter apart from the base's (harness.evaluate keys by the served identity)
        print(f"serve it: python -m llama_cpp.server --model {shlex.quote(str(base_path))} "
              f"--lora_path {shlex.quote(str(path))} --model_alias {shlex.quote(info.name)} "
              "--host 127.0.0.1 --port 8080")
        print(f"evaluate it: python -m harness run --model openai:{shlex.quote(info.name)}@http://127.0.0.1:8080 "
              "--eval-set instructions_own --judge none")
        return 0
    modelfile = check_writable_file(output) if output else default_export_path(info.name).with_name("Modelfile")
    path = export_gguf(info, modelfile.with_name(f"{info.name}.gguf"))
    write_modelfile(info, path, modelfile)
    print(f"wrote {path} and {modelfile}")
    print(f"ollama create {info.name.lower()} -f {shlex.quote(str(modelfile))}")
    return 0
