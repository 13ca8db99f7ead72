"""The two engines side by side (issue 26 part 4): do llama.cpp and transformers write the same thing?

    python -m harness bench equivalence                          # instructions_own: base and alpaca, both engines
    python -m harness bench equivalence --poems 40               # + poems_zh:test_jueju, grammar vs logits processor

- instructions_own, greedy, max_new_tokens 128: ROUGE-L between the two engines' answers and the count of
  identical answers, for the base and the alpaca adapter (llama.cpp computes with the GGUF's Q4_1 weights, the
  in-process model is their dequantised float copy: small differences in logits flip some greedy choices);
- poems_zh:test_jueju (needs `python -m harness data prepare poems_zh --data-dir DIR`), the poem adapter, greedy:
  form / rhyme / tone rates under the form + rhyme constraint as a grammar on llama.cpp and as a logits processor
  on transformers (harness/forms.py), checked by the same rule checks (harness/rules.py).
"""
from __future__ import annotations

import time


def _pair(lm, engine, items: list[dict], adapter: str | None, max_new_tokens: int, gen_kw: dict, grammar=None,
          batch_size: int = 8) -> tuple[list[str], list[str], float, float]:
    """(transformers texts, llama.cpp texts, seconds each) for the items' instructions."""
    from harness.generation import GenerationConfig, generate_batch

    prompts = [lm.render_instruction(it.get("instruction") or it["prompt"], it.get("input", "")) for it in items]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, **gen_kw)
    t0 = time.perf_counter()
    tf = [g.text for g in generate_batch(lm, prompts, cfg, adapter=adapter)]
    t_tf = time.perf_counter() - t0
    convs = [[{"role": "user", "content": (f"{it['instruction']}\n\n{it['input']}" if it.get("input")
                                           else it.get("instruction") or it["prompt"])}] for it in items]
    t0 = time.perf_counter()
    lc = [r["text"] for r in engine.generate_many(convs, adapter, max_new_tokens, parallel=batch_size,
                                                  grammar=grammar)]
    return tf, lc, t_tf, time.perf_counter() - t0


def bench_equivalence(adapter: str = "smollm2-135m-alpaca", max_new_tokens: int = 128, poems: int = 0,
                      poem_adapter: str = "smollm2-135m-poem-zh", limit: int = 0, threads: int = 1, instructions: bool = True) -> int:
    """Greedy outputs of llama.cpp and transformers compared (instructions_own), and poem rule rates under the
    grammar vs the logits processor (poems_zh:test_jueju).

    adapter: the chat adapter compared besides the base
    max_new_tokens: new tokens per answer
    poems: poems of poems_zh:test_jueju to compare (0: skip)
    poem_adapter: the poem adapter
    limit: items of instructions_own (0: all)
    threads: llama.cpp threads (torch follows OMP_NUM_THREADS)
    instructions: compare on instructions_own (--no-instructions: the poems only)
    """
    from harness.data import load_eval_set
    from harness.llamacpp import load_engine, poem_grammar
    from harness.metrics import form_check, rouge_l
    from harness.models import find_adapter, load_model
    from harness.rules import aggregate_rules, explain_poem

    items = load_eval_set("instructions_own").items
    items = items[:limit] if limit else items
    base = find_adapter(adapter).base
    lm = load_model(base, adapters=[adapter]) if instructions else None
    engine = load_engine(base, adapters=[adapter], n_threads=threads)
    if instructions:
        print(f"instructions_own ({len(items)} items), greedy, up to {max_new_tokens} new tokens, base {base}:")
    for who in ((None, adapter) if instructions else ()):
        tf, lc, t_tf, t_lc = _pair(lm, engine, items, who, max_new_tokens, {})
        score = sum(rouge_l(a, b) for a, b in zip(lc, tf)) / len(items)
        same = sum(a.strip() == b.strip() for a, b in zip(lc, tf))
        print(f"  {who or 'base'}: ROUGE-L(llama.cpp, transformers) = {score:.3f}; identical answers {same}/"
              f"{len(items)}; {t_tf:.1f} s transformers, {t_lc:.1f} s llama.cpp")
    if poems:
        info = find_adapter(poem_adapter)
        plm = load_model(info.base, adapters=[poem_adapter])
        peng = engine if info.base == base else load_engine(info.base, adapters=[poem_adapter], n_threads=threads)
        jueju = load_eval_set("poems_zh:test_jueju").items[:poems]
        print(f"poems_zh:test_jueju ({len(jueju)} poems), {poem_adapter}, greedy, form + rhyme:")
        for form in sorted({it["form"] for it in jueju}):
            part = [it for it in jueju if it["form"] == form]
            tf, lc, t_tf, t_lc = _pair(plm, peng, part, poem_adapter, 160, {"form": form, "rhyme": True},
                                       grammar=poem_grammar(form, rhyme=True))
            for name, texts, secs in (("logits processor (transformers)", tf, t_tf),
                                      ("grammar (llama.cpp)", lc, t_lc)):
                rows = [explain_poem(t, form, "zh") for t in texts]
                agg = aggregate_rules(rows)
                ok = sum(form_check(t, form, "zh")["ok"] for t in texts) / len(texts)
                print(f"  {form} x {len(part)}, {name}: form {ok:.1%}, rhyme {agg['rhyme_ok'] or 0:.1%}, tone "
                      f"{agg['tone_ok'] or 0:.1%}, repeated rhyme {agg['repeated_rhyme'] or 0:.1%}; {secs:.1f} s")
    engine.close()
    return 0
