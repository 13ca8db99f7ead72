"""LLMs-from-scratch `GPTModel` state dicts -> standard Hugging Face GPT-2 folders (safetensors).

    python -m harness convert gpt2-medium355M-sft.pth --output converted/gpt2-medium-sft
    python -m harness convert review_classifier.pth --output converted/spam --max-length 120
    python -m harness classify --model converted/spam --input sms.csv --output out.csv   # the book's classify_review

The file is read with torch.load(weights_only=True) only (nothing is unpickled but tensors). The size comes from
the tensor shapes (vocab and embedding from `tok_emb`, context from `pos_emb`, layers from `trf_blocks.N`); heads
from --heads, or the GPT-2 size with that embedding (said when guessed); the qkv bias from the keys. The book's
blocks are GPT-2's: `att.W_query|W_key|W_value` -> `attn.c_attn` (HF's Conv1D stores [in, out]), `att.out_proj`
-> `attn.c_proj`, `ff.layers.0|2` -> `mlp.c_fc|c_proj`, `norm1|norm2` -> `ln_1|ln_2`, `final_norm` -> `ln_f`,
GELU the tanh approximation (`gelu_new`). An `out_head` equal to `tok_emb` is tied; otherwise it is `lm_head`.

A 2-row `out_head` (with its bias) is the ch06 spam classifier: its backbone is written as a GPT-2 LM folder and
the head as `score.safetensors`; config.json's `ftbench_classifier` records the labels (the book's 0 = not spam ->
ham, 1 = spam) and --max-length. Classification is the book's `classify_review`: ids truncated to max_length and
right-padded with <|endoftext|> to it (no attention mask), the head reading the last position.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from pathlib import Path

from harness.errors import UserError

GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}       # GPT-2 small / medium / large / xl
GPT2_TOKENIZER = "openai-community/gpt2"
DEFAULT_MAX_LENGTH = 120        # the book's ch06 training length (the longest SMS of its training split)
HEAD_FILE = "score.safetensors"
SAVE_STATE_DICT = ("save `torch.save(model.state_dict(), PATH)` of the book's GPTModel (ch04-ch07) and convert "
                   "that file")
_BLOCK_KEYS = ("att.W_query.weight", "att.W_key.weight", "att.W_value.weight", "att.out_proj.weight",
               "att.out_proj.bias", "ff.layers.0.weight", "ff.layers.0.bias", "ff.layers.2.weight",
               "ff.layers.2.bias", "norm1.scale", "norm1.shift", "norm2.scale", "norm2.shift")
_TOP_KEYS = ("tok_emb.weight", "pos_emb.weight", "final_norm.scale", "final_norm.shift", "out_head.weight")


def read_state_dict(path: str | Path, mmap: bool = True) -> dict:
    """The tensors of a .pth file, read with torch.load(weights_only=True); every failure is one sentence."""
    import pickle
    import zipfile

    import torch
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "GLOBAL" in str(e):
            raise UserError(f"{path.name} holds a whole pickled model (torch.save(model)), which is never "
                            f"unpickled here: {SAVE_STATE_DICT}") from None
        raise UserError(f"{path.name} is not a readable PyTorch file ({_first_line(e)}): it may be truncated; "
                        f"copy it again, or {SAVE_STATE_DICT}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise UserError(f"{path.name} is truncated or not a PyTorch file ({_first_line(e)}): copy it again, "
                        f"or {SAVE_STATE_DICT}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):   # the book's ch05 checkpoint
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path.name} is not a state dict (a dict of tensors): {SAVE_STATE_DICT}")
    return obj


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def infer_config(sd: dict, heads: int | None = None, name: str = "the file") -> dict:
    """Sizes of the book's GPTModel from its tensor shapes; refuses another architecture and a wrong --heads."""
    missing = [k for k in _TOP_KEYS + tuple(f"trf_blocks.0.{k}" for k in _BLOCK_KEYS) if k not in sd]
    if missing:
        sample = ", ".join(list(sd)[:3])
        raise UserError(f"{name} is not a state dict of the LLMs-from-scratch GPTModel (no {missing[0]}; its keys "
                        f"start {sample}): convert only the book's GPTModel, saved with "
                        "`torch.save(model.state_dict(), PATH)`")
    vocab, emb = sd["tok_emb.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"trf_blocks\.(\d+)\.", k)))
    known = set(_TOP_KEYS) | {"out_head.bias"}
    for i in range(layers):
        known |= {f"trf_blocks.{i}.{k}" for k in _BLOCK_KEYS}
        known |= {f"trf_blocks.{i}.att.{w}.bias" for w in ("W_query", "W_key", "W_value")}
        known.add(f"trf_blocks.{i}.att.mask")
    extra = [k for k in sd if k not in known]
    if extra:
        raise UserError(f"{name} has keys the book's GPTModel does not ({', '.join(extra[:3])}): it is another "
                        "architecture (a LoRA-wrapped model? merge the LoRA weights first) and cannot be converted")
    out_rows = sd["out_head.weight"].shape[0]
    note = ""
    if heads is None:
        if emb not in GPT2_HEADS and emb % 64:
            raise UserError(f"{name}: embedding size {emb} is no GPT-2 size ({', '.join(map(str, GPT2_HEADS))}) "
                            "nor a multiple of GPT-2's 64-dim heads, so the number of attention heads cannot be "
                            "guessed: pass --heads N")
        heads = GPT2_HEADS.get(emb, emb // 64)
        note = (f"heads: {heads}, guessed from the embedding size {emb} (GPT-2's 64 dims per head); pass --heads N "
                "if yours differ")
    if heads < 1 or emb % heads:
        raise UserError(f"--heads {heads} does not divide the embedding size {emb}: pick a divisor of {emb} "
                        f"(GPT-2 uses {GPT2_HEADS.get(emb, 'one head per 64 dims')})")
    return {"vocab": int(vocab), "emb": int(emb), "context": int(sd["pos_emb.weight"].shape[0]), "layers": layers,
            "heads": int(heads), "qkv_bias": "trf_blocks.0.att.W_query.bias" in sd,
            "classes": int(out_rows) if out_rows != vocab else 0, "note": note}


def hf_tensors(sd: dict, cfg: dict) -> tuple[dict, dict]:
    """(GPT-2 LM tensors in Hugging Face names, classifier head tensors or {}). A value is a tensor (a transposed
    view is fine) or (shape, dtype, function making it), so the writer makes each one just before writing it."""
    import torch
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"]}
    for i in range(cfg["layers"]):
        b, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        qkv = [sd[f"{b}att.{w}.weight"] for w in ("W_query", "W_key", "W_value")]
        out[h + "attn.c_attn.weight"] = _lazy_t(qkv)                              # [in, 3 * out]
        if cfg["qkv_bias"]:
            out[h + "attn.c_attn.bias"] = torch.cat([sd[f"{b}att.{w}.bias"] for w in ("W_query", "W_key", "W_value")])
        else:
            out[h + "attn.c_attn.bias"] = torch.zeros(3 * cfg["emb"], dtype=qkv[0].dtype)
        out[h + "attn.c_proj.weight"] = _lazy_t([sd[b + "att.out_proj.weight"]])
        out[h + "attn.c_proj.bias"] = sd[b + "att.out_proj.bias"]
        out[h + "mlp.c_fc.weight"] = _lazy_t([sd[b + "ff.layers.0.weight"]])
        out[h + "mlp.c_fc.bias"] = sd[b + "ff.layers.0.bias"]
        out[h + "mlp.c_proj.weight"] = _lazy_t([sd[b + "ff.layers.2.weight"]])
        out[h + "mlp.c_proj.bias"] = sd[b + "ff.layers.2.bias"]
        for n, m in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[h + f"{m}.weight"], out[h + f"{m}.bias"] = sd[b + f"{n}.scale"], sd[b + f"{n}.shift"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["final_norm.scale"], sd["final_norm.shift"]
    head = {}
    if cfg["classes"]:
        w = sd["out_head.weight"]
        head = {"weight": w, "bias": sd.get("out_head.bias", torch.zeros(w.shape[0], dtype=w.dtype))}
    elif (sd["out_head.weight"].data_ptr() != sd["tok_emb.weight"].data_ptr()      # saved tied: one storage
          and not torch.equal(sd["out_head.weight"], sd["tok_emb.weight"])):
        out["lm_head.weight"] = sd["out_head.weight"]
    return out, head


def _lazy_t(ws: list) -> tuple:
    """(shape, dtype, maker) of the matrices' transposes side by side, [in, sum of outs] (HF's Conv1D layout),
    made by the writer in row tiles (about 1.4x faster than one strided copy)."""
    rows, cols = ws[0].shape[1], sum(w.shape[0] for w in ws)

    def make():
        import torch
        out = torch.empty((rows, cols), dtype=ws[0].dtype)
        at = 0
        for w in ws:
            for i in range(0, w.shape[0], 256):
                out[:, at + i:at + min(i + 256, w.shape[0])].copy_(w[i:i + 256].t())
            at += w.shape[0]
        return out
    return (rows, cols), ws[0].dtype, make


_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def write_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """A safetensors file written straight from the tensors' memory: each transposed view or lazy tensor is made
    contiguous by a second thread while the previous one is written (no serialised buffer of the whole file)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        shape, dtype = (t[0], t[1]) if isinstance(t, tuple) else (tuple(t.shape), t.dtype)
        code = _DTYPES.get(str(dtype).removeprefix("torch."))
        if code is None:
            raise UserError(f"tensor {name} has dtype {dtype}, which the converter does not write")
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def make(t):
        t = t[2]() if isinstance(t, tuple) else t
        return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()

    with open(path, "wb") as f, ThreadPoolExecutor(max_workers=1) as pool:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        values = list(tensors.values())
        pending = [pool.submit(make, t) for t in values[:2]]
        for i in range(len(values)):
            data = pending.pop(0).result()
            if i + 2 < len(values):
                pending.append(pool.submit(make, values[i + 2]))
            f.write(data.data)


def load_tokenizer(name: str):
    """A tokenizer by hub id or folder: the local files first; offline, one sentence saying how to get it."""
    from transformers import AutoTokenizer

    from harness.paths import hub_host, hub_reachable
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError):
        pass
    if Path(name).expanduser().exists():
        raise UserError(f"--tokenizer {name}: no tokenizer files there (tokenizer.json or vocab.json + merges.txt): "
                        "pass a folder saved with tokenizer.save_pretrained, or a hub id")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        raise UserError(f"the tokenizer {name} is not in the local Hugging Face cache and the hub ({hub_host()}) "
                        f"cannot be reached, so get it on a machine with internet with `hf download {name}` (or "
                        "unset HF_HUB_OFFLINE) or pass --tokenizer DIR, a folder with the tokenizer your model uses")
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - unknown id, gated repo, network: one sentence
        raise UserError(f"the tokenizer {name} could not be loaded ({_first_line(e)}): pass --tokenizer with a "
                        "hub id or a folder holding the tokenizer your model uses") from None


def convert(path: str | Path, output: str | Path, tokenizer: str = GPT2_TOKENIZER, heads: int | None = None,
            max_length: int | None = None, quiet: bool = False, sha256: str = "") -> Path:
    """Convert a GPTModel state dict into a Hugging Face folder at `output` (written whole, then moved in place).
    `sha256` of the file, when the caller has it, is recorded in config.json (`ftbench_converted`)."""
    from transformers import GPT2Config

    path, output = Path(path), Path(output)
    sd = read_state_dict(path)
    cfg = infer_config(sd, heads, path.name)
    tok = load_tokenizer(tokenizer)
    if len(tok) != cfg["vocab"]:
        raise UserError(f"{path.name} has a vocabulary of {cfg['vocab']} tokens but the tokenizer {tokenizer} has "
                        f"{len(tok)}: pass --tokenizer with the tokenizer the model was trained with")
    if max_length is not None and not 1 <= max_length <= cfg["context"]:
        raise UserError(f"--max-length must be between 1 and the model's context length {cfg['context']}, "
                        f"got {max_length}")
    tensors, head = hf_tensors(sd, cfg)
    eos = tok.eos_token_id if tok.eos_token_id is not None else cfg["vocab"] - 1
    config = GPT2Config(vocab_size=cfg["vocab"], n_positions=cfg["context"], n_embd=cfg["emb"],
                        n_layer=cfg["layers"], n_head=cfg["heads"], activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                        tie_word_embeddings="lm_head.weight" not in tensors, architectures=["GPT2LMHeadModel"])
    source = {"file": path.name, "size": path.stat().st_size, "format": "LLMs-from-scratch GPTModel state dict",
              "qkv_bias": cfg["qkv_bias"], "heads_guessed": bool(cfg["note"])}
    if sha256:
        source["sha256"] = sha256
    config.ftbench_converted = source
    if head:
        labels = ["ham", "spam"] if cfg["classes"] == 2 else [f"class_{i}" for i in range(cfg["classes"])]
        config.ftbench_classifier = {"labels": labels, "max_length": max_length or DEFAULT_MAX_LENGTH,
                                     "pad_token_id": eos, "head": HEAD_FILE}
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write_safetensors(tensors, tmp / "model.safetensors")
        if head:
            write_safetensors(head, tmp / HEAD_FILE)
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        from harness.io import os_error_message
        raise UserError(os_error_message(e, output)) from None
    if not quiet:
        kind = (f"classifier ({', '.join(config.ftbench_classifier['labels'])}, max length "
                f"{config.ftbench_classifier['max_length']})" if head else "language model")
        print(f"{path.name} -> {output}: GPT-2 {kind}, {cfg['layers']} layers, {cfg['heads']} heads, embedding "
              f"{cfg['emb']}, context {cfg['context']}, vocab {cfg['vocab']}, qkv bias {cfg['qkv_bias']}")
        if cfg["note"]:
            print(f"  {cfg['note']}")
        if head and max_length is None:
            print(f"  max length {DEFAULT_MAX_LENGTH} (the book's ch06 training length); pass --max-length N if "
                  "you trained with another")
    return output


def converted_pth(path: str | Path, tokenizer: str = GPT2_TOKENIZER) -> Path:
    """`--model FILE.pth`: converted once into the model cache, keyed by the file's sha256. The tokenizer is
    GPT-2's, or a `tokenizer/` folder next to the file (for a model trained with another one)."""
    from harness.paths import cache_dir, sha256_file
    path = Path(path).expanduser().resolve()
    if (path.parent / "tokenizer").is_dir():
        tokenizer = str(path.parent / "tokenizer")
    sha = sha256_file(path)
    out = cache_dir() / "models" / f"pth-{path.stem}-{sha[:16]}"
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(path, out, tokenizer=tokenizer, quiet=True, sha256=sha)
        print(f"converted {path.name} once into {out}", flush=True)
    return out


def convert_cmd(file: str, /, output: str, tokenizer: str = GPT2_TOKENIZER, heads: int = 0,
                max_length: int = 0) -> int:
    """Convert a LLMs-from-scratch GPTModel state dict (.pth) into a Hugging Face GPT-2 folder (safetensors).

    file: the .pth saved with torch.save(model.state_dict(), PATH) (the book's ch05-ch07 files)
    output: the folder to write (replaced if it exists)
    tokenizer: a hub id or folder with the tokenizer the model was trained with
    heads: attention heads (default: GPT-2's for the embedding size, said when guessed)
    max_length: classifiers: tokens read per message, as in training (default: the book's 120)
    """
    convert(file, output, tokenizer=tokenizer, heads=heads or None, max_length=max_length or None)
    return 0
