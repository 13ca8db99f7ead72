"""`python -m harness bench convert`: converting a GPT-2-medium-shaped LLMs-from-scratch state dict against reading
the file (issue 25's target: <= 2x the read)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from harness.convert import GPT2_TOKENIZER, convert, load_tokenizer
from harness.errors import UserError


def bench_convert(layers: int = 24, emb: int = 1024, vocab: int = 50257, context: int = 1024,
                  folder: str = "") -> float:
    """Time converting a GPT-2-medium-shaped random state dict against reading it with torch.load; prints and
    returns the ratio (issue 25's target: <= 2). Uses GPT-2's tokenizer if cached, else a stand-in of the same size.

    layers: transformer blocks (GPT-2 medium: 24)
    emb: embedding size (GPT-2 medium: 1024)
    vocab: vocabulary size
    context: context length
    folder: scratch folder (default: a new temp folder; removed at the end)
    """
    import tempfile

    import torch
    torch.manual_seed(0)
    folder = Path(folder or tempfile.mkdtemp(prefix="bench-convert-"))
    sd = {"tok_emb.weight": torch.randn(vocab, emb), "pos_emb.weight": torch.randn(context, emb)}
    for i in range(layers):
        for w in ("W_query", "W_key", "W_value", "out_proj"):
            sd[f"trf_blocks.{i}.att.{w}.weight"] = torch.randn(emb, emb)
            sd[f"trf_blocks.{i}.att.{w}.bias"] = torch.randn(emb)
        sd[f"trf_blocks.{i}.ff.layers.0.weight"] = torch.randn(4 * emb, emb)
        sd[f"trf_blocks.{i}.ff.layers.0.bias"] = torch.randn(4 * emb)
        sd[f"trf_blocks.{i}.ff.layers.2.weight"] = torch.randn(emb, 4 * emb)
        sd[f"trf_blocks.{i}.ff.layers.2.bias"] = torch.randn(emb)
        for n in ("norm1", "norm2"):
            sd[f"trf_blocks.{i}.{n}.scale"], sd[f"trf_blocks.{i}.{n}.shift"] = torch.ones(emb), torch.zeros(emb)
    sd["final_norm.scale"], sd["final_norm.shift"] = torch.ones(emb), torch.zeros(emb)
    sd["out_head.weight"] = sd["tok_emb.weight"]
    pth = folder / "gpt2-medium-random.pth"
    torch.save(sd, pth)
    del sd
    try:
        load_tokenizer(GPT2_TOKENIZER)
        tokenizer = GPT2_TOKENIZER
    except UserError:
        tokenizer = str(_stand_in_tokenizer(folder / "tokenizer", vocab))
    read_s, convert_s = [], []
    for _ in range(3):                     # the best of 3: both from a warm page cache, least disturbed
        t0 = time.perf_counter()
        torch.load(pth, map_location="cpu", weights_only=True)
        read_s.append(time.perf_counter() - t0)
        shutil.rmtree(folder / "out", ignore_errors=True)     # a first conversion: nothing to replace
        t0 = time.perf_counter()
        convert(pth, folder / "out", tokenizer=tokenizer, quiet=True)
        convert_s.append(time.perf_counter() - t0)
    ratio = min(convert_s) / min(read_s)
    size = pth.stat().st_size / 1e9
    print(f"GPT-2-medium-shaped state dict ({size:.2f} GB): read {min(read_s):.2f} s, convert {min(convert_s):.2f} s "
          f"(read + map + write safetensors): {ratio:.2f}x the read (target <= 2)")
    shutil.rmtree(folder, ignore_errors=True)
    return ratio


def _stand_in_tokenizer(out: Path, vocab: int) -> Path:
    """A tokenizer with exactly `vocab` entries (the timing does not depend on which), for an offline bench."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = {f"w{i}": i for i in range(vocab - 1)}
    words["<|endoftext|>"] = vocab - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    return out
