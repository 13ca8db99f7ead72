"""Benchmarks that print ratios measured in one run (this machine is noisy; never timed assertions in tests).

    python -m harness bench generation           # sequential vs batch-16 tokens/s; GGUF cold load vs cached load
    python -m harness bench generation --skip-load --server openai:smol@http://127.0.0.1:8080   # + a server
    python -m harness bench generation --skip-load --no-fixed --parallel 8    # + llama.cpp batched (default on)

Natural length is continuously batched (a row that reaches EOS leaves the batch, the next prompt takes its
place: harness/generation.py). With --server, 64 prompts go through `run`'s generation path twice, the
server's (harness/engines.py, --workers concurrent requests) and in process (continuous batching), each into a
fresh store; the ratio of tokens/s is printed, whatever it is. With llama.cpp installed, the same 64 prompts go
through harness.llamacpp's batched decoding (--parallel sequences per llama_decode, continuous: a finished
sequence's slot takes the next prompt) and the faster engine for `run` is named, by this measurement.
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
                     skip_load: bool = False, server: str = "", workers: int = 4, server_prompts: int = 64,
                     fixed: bool = True, llamacpp: bool = True, parallel: str = "8,16,32") -> int:
    """16 short chat prompts, greedy: tokens/s one prompt at a time vs one batch; cold vs cached load; a server.

    model: base model (default: the embedded one)
    max_new_tokens: new tokens per prompt
    skip_load: skip the cold/cached load measurement
    server: also time a generation server, e.g. openai:smol@http://127.0.0.1:8080 or ollama:smollm2
    workers: concurrent requests to the server
    server_prompts: prompts for the refill comparison and the server (more than batch_size)
    fixed: also measure fixed length (--no-fixed: natural length only)
    llamacpp: also time llama.cpp's batched decoding on the same prompts (--no-llamacpp: skip)
    parallel: llama.cpp sequences per decode to try, comma-separated
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
    modes = (("fixed length: every prompt gets exactly %d new tokens (as the target is defined)" % max_new_tokens,
              True),
             ("natural length: stop at EOS (continuous batching: a finished row leaves the batch at once)", False))
    r_seq = 0.0
    for label, ignore_eos in modes[0 if fixed else 1:]:
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
        if not ignore_eos:
            n_st, t_st, same_st = _static_natural(lm, prompts, cfgb, seq)
            print(f"  static batches (before continuous batching): {n_st} tokens in {t_st:.1f} s = "
                  f"{n_st / t_st:.1f} tokens/s = {n_st / t_st / r_seq:.1f}x sequential; continuous / static = "
                  f"{r_bat / (n_st / t_st):.2f}x; identical: {same_st}/{len(seq)}")
    local = _bench_refill(lm, server_prompts, max_new_tokens, batch_size, r_seq)
    if llamacpp:
        _bench_llamacpp_batched(lm, local, server_prompts, max_new_tokens,
                                [int(x) for x in str(parallel).split(",") if x.strip()])
    if server:
        _bench_server(lm, server, workers, local, max_new_tokens, batch_size)
    return 0


def _many_prompts(n: int) -> list[str]:
    return [f"{CHAT_PROMPTS[k % len(CHAT_PROMPTS)]} (question {k + 1})" for k in range(n)]


def _bench_refill(lm, n: int, max_new_tokens: int, batch_size: int, r_seq: float) -> tuple[list, float]:
    """n distinct prompts (more than a batch, so finished rows are refilled): continuous vs static batches."""
    import torch

    from harness.generation import GenerationConfig, run_batch, generate_batch
    prompts = [lm.render_chat([{"role": "user", "content": t}]) for t in _many_prompts(n)]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    t0 = time.perf_counter()
    cont = generate_batch(lm, prompts, cfg)
    t_cont = time.perf_counter() - t0
    order = sorted(range(n), key=lambda i: lm.count_tokens(prompts[i]))    # generate_batch's static order
    static: list = [None] * n
    t0 = time.perf_counter()
    with lm.lock, torch.inference_mode(), lm.using(None) as m:
        for start in range(0, n, batch_size):
            chunk = order[start:start + batch_size]
            for i, g in zip(chunk, run_batch(lm, m, [prompts[i] for i in chunk], cfg)):
                static[i] = g
    t_st = time.perf_counter() - t0
    n_c, n_s = sum(g.new_tokens for g in cont), sum(g.new_tokens for g in static)
    same = sum(a.text == b.text for a, b in zip(cont, static))
    print(f"{n} chat prompts, natural length, batch {batch_size} (rows are refilled):")
    print(f"  continuous: {n_c} tokens in {t_cont:.1f} s = {n_c / t_cont:.1f} tokens/s"
          + (f" = {n_c / t_cont / r_seq:.1f}x the sequential rate above" if r_seq else ""))
    print(f"  static batches: {n_s} tokens in {t_st:.1f} s = {n_s / t_st:.1f} tokens/s; "
          f"continuous / static = {(n_c / t_cont) / (n_s / t_st):.2f}x; identical: {same}/{n}")
    return cont, t_cont


def _bench_llamacpp_batched(lm, local: tuple[list, float], n: int, max_new_tokens: int,
                            parallels: list[int]) -> None:
    """The refill prompts through harness.llamacpp.generate_many (several sequences per llama_decode)."""
    from harness.llamacpp import PARALLEL, is_available, load_engine

    ok, why = is_available()
    if not ok:
        print(f"llama.cpp batched: skipped ({why})")
        return
    gens, t_tf = local
    n_tf = sum(g.new_tokens for g in gens)
    r_tf = n_tf / t_tf
    convs = [[{"role": "user", "content": t}] for t in _many_prompts(n)]
    print(f"llama.cpp batched decoding, the same {n} chat prompts, greedy, natural length (up to {max_new_tokens}):")
    best = (0.0, 0)
    engine = load_engine(lm.name)
    engine.generate_many(convs[:2], None, 8, parallel=2)                      # warm-up
    for par in parallels:
        t0 = time.perf_counter()
        out = engine.generate_many(convs, None, max_new_tokens, parallel=par)
        t = time.perf_counter() - t0
        toks, prompt = sum(r["new_tokens"] for r in out), sum(r["prompt_tokens"] for r in out)
        same = sum(a["text"].strip() == b.text.strip() for a, b in zip(out, gens))
        print(f"  parallel {par:2d}: {toks} tokens in {t:.1f} s = {toks / t:.1f} tokens/s = {toks / t / r_tf:.2f}x "
              f"transformers' continuous batching ({r_tf:.1f} tokens/s); {(toks + prompt) / t:.0f} tokens/s with the "
              f"{prompt} prompt tokens; identical texts {same}/{n}", flush=True)
        best = max(best, (toks / t, par))
    engine.close()
    faster = "llama.cpp" if best[0] > r_tf else "transformers"
    print(f"  faster for `run` by this measurement: {faster} ({max(best[0], r_tf):.1f} vs {min(best[0], r_tf):.1f} "
          f"tokens/s = {best[0] / r_tf:.2f}x; llama.cpp best at parallel {best[1]}, `run --engine llama.cpp` uses "
          f"{PARALLEL}; target >= 1.5x)")


def _static_natural(lm, prompts: list[str], cfg, seq) -> tuple[int, float, int]:
    """The same batch through transformers' generate() (static batching: finished rows idle)."""
    import torch

    from harness.generation import run_batch
    t0 = time.perf_counter()
    with lm.lock, torch.inference_mode(), lm.using(None) as m:
        out = run_batch(lm, m, prompts, cfg)
    return sum(g.new_tokens for g in out), time.perf_counter() - t0, sum(a.text == b.text for a, b in zip(seq, out))


def _bench_server(lm, server: str, workers: int, local: tuple[list, float], max_new_tokens: int,
                  batch_size: int) -> None:
    """The same prompts as `run` generates them: through the server (harness.evaluate's remote path: the engine
    pool with `workers` concurrent requests, each answer stored) vs in process (continuous batching, stored),
    each into a fresh store so nothing comes from a cache."""
    from harness.engines import EngineConfig, open_engine
    from harness.evaluate import generate_remote_with_store, generate_with_store
    from harness.generation import GenerationConfig
    from harness.store import Store
    from harness.tasks import get_task

    gens, _ = local
    texts = _many_prompts(len(gens))
    n = len(texts)
    task = get_task("chat")
    items = [{"id": f"bench-{k}", "instruction": t, "input": "", "output": ""} for k, t in enumerate(texts)]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    engine = open_engine(EngineConfig(server, workers=workers))
    with tempfile.TemporaryDirectory() as tmp:
        with Store(os.path.join(tmp, "warm.sqlite")) as st:                              # warm-up
            generate_remote_with_store(engine, None, items[:2], task, cfg, st, False)
        with Store(os.path.join(tmp, "server.sqlite")) as st:
            t0 = time.perf_counter()
            remote, _ = generate_remote_with_store(engine, None, items, task, cfg, st, False)
            t_srv = time.perf_counter() - t0
        prompts = [lm.render_instruction(t) for t in texts]
        with Store(os.path.join(tmp, "local.sqlite")) as st:
            t0 = time.perf_counter()
            mine, _ = generate_with_store(lm, None, "", prompts, cfg, st, False)
            t_loc = time.perf_counter() - t0
    n_srv, n_loc = sum(g.response_tokens for g in remote), sum(g.response_tokens for g in mine)
    failed = sum((g.extra or {}).get("finish_reason") == "error" for g in remote)
    same = sum(a.text.strip() == b.text.strip() for a, b in zip(remote, mine))
    r_srv, r_loc = n_srv / t_srv, n_loc / t_loc
    print(f"`run`'s generation of {n} chat prompts, greedy, natural length, each answer stored:")
    print(f"  server {engine.model} at {engine.where}, {workers} workers: {n_srv} tokens in {t_srv:.1f} s = "
          f"{r_srv:.1f} tokens/s, {n / t_srv:.2f} items/s" + (f" ({failed} failed)" if failed else ""))
    print(f"  in process, continuous batch {batch_size}: {n_loc} tokens in {t_loc:.1f} s = {r_loc:.1f} tokens/s, "
          f"{n / t_loc:.2f} items/s")
    print(f"  server / in process = {r_srv / r_loc:.2f}x tokens/s, {t_loc / t_srv:.2f}x items/s; identical answers: "
          f"{same}/{n} (llama.cpp computes with the Q4_1 kernels; the in-process model is the dequantised GGUF)")
    engine.close()
