"""llama.cpp in process: its speed against llama_cpp.Llama's own loop and against transformers, and what the poem
grammars cost. Ratios measured in one run (this machine is noisy).

    python -m harness bench llamacpp                      # all figures, about a minute on 2 cores
    python -m harness bench llamacpp --skip-transformers

Figures:
- one 128-token greedy chat stream on the base: harness.llamacpp's engine vs llama_cpp.Llama.generate on the same
  GGUF (target >= 80%), time to first token (target <= 0.5 s), and vs harness.generation.stream (transformers);
- a 五言绝句 under the form + rhyme + tone grammar vs the same prompt decoded free (tokens/s, target >= 70%).
"""
from __future__ import annotations

import os
import statistics
import time

SPEED_MESSAGES = [{"role": "user", "content": "Explain in a few sentences why the sky is blue."}]
POEM_MESSAGES = [{"role": "user", "content": "写一首五言绝句，题目：春夜"}]
TARGETS = {"own_ratio": 0.8, "ttft": 0.5, "grammar_ratio": 0.7}


def llama_own_speed(engine, messages: list[dict], max_new_tokens: int = 128, runs: int = 3) -> dict:
    """llama_cpp.Llama's own generate() on the engine's GGUF (greedy, EOS ignored: exactly max_new_tokens):
    median tokens/s and first-token seconds over `runs`."""
    with engine.lock:
        engine.switch_adapter(None)
        ids = engine.render(messages, max_new_tokens)
        rates, firsts = [], []
        for _ in range(runs):
            engine.llm.reset()
            t0 = time.perf_counter()
            first = None
            n = 0
            for _tok in engine.llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                            reset=True):
                if first is None:
                    first = time.perf_counter() - t0
                n += 1
                if n >= max_new_tokens:
                    break
            seconds = time.perf_counter() - t0
            rates.append(n / seconds)
            firsts.append(first or 0.0)
        engine.llm.reset()
    return {"tokens_per_s": statistics.median(rates), "first_token_s": statistics.median(firsts)}


def engine_speed(engine, messages: list[dict], max_new_tokens: int = 128, runs: int = 3, grammar: str | None = None,
                 adapter: str | None = None, ignore_eos: bool = True) -> dict:
    """harness.llamacpp's stream_chat: median tokens/s, first-token seconds, new tokens and the last text."""
    from harness.generation import StreamStats

    rates, firsts, news, text = [], [], [], ""
    for _ in range(runs):
        st = StreamStats()
        text = "".join(engine.stream_chat(messages, adapter, max_new_tokens, stats=st, ignore_eos=ignore_eos,
                                          grammar=grammar))
        rates.append(st.tokens_per_s)
        firsts.append(st.first_token_seconds or 0.0)
        news.append(st.new_tokens)
    return {"tokens_per_s": statistics.median(rates), "first_token_s": statistics.median(firsts),
            "new_tokens": statistics.median(news), "text": text}


def grammar_cost(engine, runs: int = 3) -> dict:
    """A 五言绝句 under form + rhyme + tone vs the same prompt free, same number of tokens (tokens/s)."""
    from harness.llamacpp import poem_grammar

    grammar = poem_grammar("五言绝句", rhyme=True, tone=True)
    ruled = engine_speed(engine, POEM_MESSAGES, 96, runs, grammar=grammar, ignore_eos=False)
    free = engine_speed(engine, POEM_MESSAGES, int(ruled["new_tokens"]) or 48, runs)
    return {"grammar": ruled, "free": free, "ratio": ruled["tokens_per_s"] / free["tokens_per_s"]}


def _ok(good: bool) -> str:
    return "OK" if good else "MISSED"


def bench_llamacpp(max_new_tokens: int = 128, runs: int = 3, skip_transformers: bool = False,
                   threads: int = 0) -> int:
    """llama.cpp's chat speed vs llama_cpp.Llama's own and transformers'; the poem grammar's cost.

    max_new_tokens: tokens per chat stream (EOS ignored)
    runs: runs per figure (median; one warm-up first)
    skip_transformers: do not time the transformers stream
    threads: llama.cpp threads (0: every core)
    """
    from harness.llamacpp import load_engine

    engine = load_engine(n_threads=threads or None)
    engine_speed(engine, SPEED_MESSAGES, 8, 1)                   # warm-up
    own = llama_own_speed(engine, SPEED_MESSAGES, max_new_tokens, runs)
    ours = engine_speed(engine, SPEED_MESSAGES, max_new_tokens, runs)
    ratio = ours["tokens_per_s"] / own["tokens_per_s"]
    print(f"one {max_new_tokens}-token greedy chat stream on {engine.base} ({engine.n_threads} threads):")
    print(f"  harness.llamacpp {ours['tokens_per_s']:6.1f} tokens/s vs llama_cpp.Llama's own {own['tokens_per_s']:6.1f} "
          f"= {ratio:.0%} (target >= {TARGETS['own_ratio']:.0%}, {_ok(ratio >= TARGETS['own_ratio'])}); first token "
          f"{ours['first_token_s']:.3f} s vs {own['first_token_s']:.3f} s (target <= {TARGETS['ttft']} s, "
          f"{_ok(ours['first_token_s'] <= TARGETS['ttft'])})")
    g = grammar_cost(engine, runs)
    print(f"五言绝句 under form + rhyme + tone: {g['grammar']['tokens_per_s']:6.1f} tokens/s vs free "
          f"{g['free']['tokens_per_s']:6.1f} = {g['ratio']:.0%} (target >= {TARGETS['grammar_ratio']:.0%}, "
          f"{_ok(g['ratio'] >= TARGETS['grammar_ratio'])}); {g['grammar']['new_tokens']:.0f} tokens: "
          f"{g['grammar']['text']!r}")
    if not skip_transformers:
        from harness.generation import GenerationConfig, StreamStats, stream
        from harness.models import load_model
        lm = load_model(engine.base)
        prompt = lm.render_chat(SPEED_MESSAGES, max_new_tokens=max_new_tokens)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
        rates = []
        for k in range(runs + 1):
            st = StreamStats()
            for _chunk in stream(lm, prompt, cfg, adapter=None, stats=st):
                pass
            if k:
                rates.append(st.tokens_per_s)
        tf = statistics.median(rates)
        print(f"  transformers (harness.generation.stream) {tf:6.1f} tokens/s: llama.cpp is "
              f"{ours['tokens_per_s'] / tf:.1f}x")
    print(f"machine: {os.cpu_count()} cores")
    engine.close()
    return 0
