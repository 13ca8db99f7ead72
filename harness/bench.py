"""Benchmarks that print ratios measured in one run (this machine is noisy; never timed assertions in tests).

    python -m harness bench generation           # sequential vs batch-16 tokens/s; GGUF cold load vs cached load
"""
from __future__ import annotations

import os
import tempfile
import time

CHAT_PROMPTS = [
    "What is the capital of France?", "Name three primary colors.", "Give me a synonym for happy.",
    "How many days are in a week?", "What is 12 times 12?", "Translate 'good morning' into Spanish.",
    "Write one sentence about the sea.", "What is the boiling point of water?", "Who wrote Hamlet?",
    "Suggest a name for a pet cat.", "What is the opposite of cold?", "List two fruits that are red.",
    "What does a thermometer measure?", "Give an example of a mammal.", "What color is the sky on a clear day?",
    "Explain what a noun is in one sentence.",
]


def bench_generation(model: str | None = None, max_new_tokens: int = 48, batch_size: int = 16,
                     skip_load: bool = False) -> int:
    """16 short chat prompts, greedy: tokens/s one prompt at a time vs one batch; cold vs cached load.

    model: base model (default: the embedded one)
    max_new_tokens: new tokens per prompt
    skip_load: skip the cold/cached load measurement
    """
    import torch

    from harness.generation import GenerationConfig, generate_batch
    from harness.models import default_base, load_model, resolve_base

    name = model or default_base()
    print(f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, model {name}")
    if not skip_load and resolve_base(name).source in ("embedded", "gguf"):
        saved = os.environ.get("FTBENCH_CACHE")
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["FTBENCH_CACHE"] = tmp
            try:
                t0 = time.perf_counter()
                load_model(name)
                cold = time.perf_counter() - t0
                t0 = time.perf_counter()
                load_model(name)
                cached = time.perf_counter() - t0
            finally:
                if saved is None:
                    os.environ.pop("FTBENCH_CACHE", None)
                else:
                    os.environ["FTBENCH_CACHE"] = saved
        print(f"load: cold from GGUF (dequantise + write safetensors cache) {cold:.1f} s; "
              f"from the safetensors cache {cached:.1f} s (target <= 3 s); {cold / cached:.1f}x faster")

    lm = load_model(name)
    prompts = [lm.render_chat([{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
    generate_batch(lm, prompts[:2], GenerationConfig(max_new_tokens=8, batch_size=batch_size))  # warm-up
    for label, ignore_eos in (("fixed length: every prompt gets exactly %d new tokens (as the target is defined)"
                               % max_new_tokens, True),
                              ("natural length: stop at EOS (a finished row idles until its batch ends)", False)):
        cfg1 = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=1, ignore_eos=ignore_eos)
        cfgb = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, ignore_eos=ignore_eos)
        t0 = time.perf_counter()
        seq = generate_batch(lm, prompts, cfg1)
        t_seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        bat = generate_batch(lm, prompts, cfgb)
        t_bat = time.perf_counter() - t0
        n_seq, n_bat = sum(g.new_tokens for g in seq), sum(g.new_tokens for g in bat)
        same = sum(a.text == b.text for a, b in zip(seq, bat))
        r_seq, r_bat = n_seq / t_seq, n_bat / t_bat
        print(f"{label}:")
        print(f"  sequential: {n_seq} tokens in {t_seq:.1f} s = {r_seq:.1f} tokens/s")
        print(f"  batch {batch_size}:   {n_bat} tokens in {t_bat:.1f} s = {r_bat:.1f} tokens/s")
        print(f"  batched / sequential = {r_bat / r_seq:.1f}x (target >= 8x); "
              f"identical greedy outputs: {same}/{len(seq)}")
    return 0
