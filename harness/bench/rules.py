"""The poem rules' measurement (docs/notes/poem_rules.md): the rule checks on an eval set's reference poems, and
greedy decoding under each constraint with what it costs in the model's own likelihood. Loads the real model (slow).

    python -m harness bench rules --n 40 --output logs/measure.json --adapter smollm2-135m-poem-zh

Moved here from harness/rules.py, which holds pure rule checks and loads no model.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.metrics import form_check, is_cjk
from harness.rules import aggregate_rules, explain_poem, table_version

MEASURE_CONFIGS = {"form": {}, "form+rhyme": {"rhyme": True}, "form+rhyme+tone": {"rhyme": True, "tone": True}}


def _generate_scored(lm, model, prompts: list[str], form: str, opts: dict, max_new_tokens: int) -> list[tuple[str, float]]:
    """Greedy decoding under FormConstraint(**opts): (text, summed log p of the chosen tokens under the
    UNconstrained model) per prompt. The raw logits (before any processor) give the model's own distribution."""
    import torch
    from transformers import LogitsProcessorList

    from harness.forms import FormConstraint
    tok = lm.tokenizer
    eos = tok.eos_token_id
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    proc = FormConstraint(tok, form, eos, **opts)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                         top_k=None, pad_token_id=tok.pad_token_id, logits_processor=LogitsProcessorList([proc]),
                         output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    logp = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in out.logits], dim=1)  # [rows, steps, V]
    res = []
    for r in range(new.shape[0]):
        ids = new[r].tolist()
        end = ids.index(eos) if eos in ids else len(ids)
        lp = float(logp[r, torch.arange(end), new[r, :end]].sum()) if end else 0.0
        res.append((tok.decode(ids[:end], skip_special_tokens=True), lp))
    return res


def measure_rules(n: int = 40, eval_set: str = "poems_zh:test_jueju", adapter: str = "smollm2-135m-poem-zh",
                  model: str | None = None, batch_size: int = 8, max_new_tokens: int = 160,
                  configs: dict | None = None, log=print) -> dict:
    """The figures of docs/notes/poem_rules.md: (1) the rule checks on the eval set's reference poems (all of
    them: validates the table) and (2) for the first `n` prompts, greedy decoding under each constraint of
    `configs` (default MEASURE_CONFIGS): form / rhyme / tone rates and the mean log p per character of the
    chosen tokens under the unconstrained model (the constraint's cost). Slow: loads the real model."""
    import time

    import torch

    from harness.data import load_eval_set
    from harness.models import load_model
    items = load_eval_set(eval_set).items
    ref = [explain_poem(it["poem"], it["form"], it.get("lang", "zh")) for it in items]
    form_ok = [form_check(it["poem"], it["form"], "zh")["ok"] for it in items]
    result: dict = {"eval_set": eval_set, "adapter": adapter, "n": min(n, len(items)), "table": table_version(),
                    "reference": {"n": len(items), "form_ok": sum(form_ok) / len(items), **aggregate_rules(ref)}}
    log(f"reference poems: {json.dumps(result['reference'], ensure_ascii=False)}")
    if model is None and adapter:           # the adapter's own base (SmolLM2 or Gemma)
        from harness.models import find_adapter
        model = find_adapter(adapter).base
    lm = load_model(model, adapters=[adapter] if adapter else None)
    result["model"] = lm.name
    items = items[:n]
    prompts = [lm.render_instruction(it["prompt"]) for it in items]
    result["configs"] = {}
    with lm.lock, torch.inference_mode(), lm.using(adapter or None) as m:
        for name, opts in (configs or MEASURE_CONFIGS).items():
            t0 = time.perf_counter()
            rows = []
            by_form: dict[str, list[int]] = {}
            for i, it in enumerate(items):
                by_form.setdefault(it["form"], []).append(i)
            outs: dict[int, tuple[str, float]] = {}
            for form, idx in by_form.items():
                for k in range(0, len(idx), batch_size):
                    part = idx[k:k + batch_size]
                    for i, o in zip(part, _generate_scored(lm, m, [prompts[i] for i in part], form, opts,
                                                           max_new_tokens)):
                        outs[i] = o
            for i, it in enumerate(items):
                text, lp = outs[i]
                chars = sum(1 for ch in text if is_cjk(ch))
                row = {"title": it["title"], "form": it["form"], "text": text, "logp": lp,
                       "logp_per_char": lp / chars if chars else None,
                       "form_ok": form_check(text, it["form"], "zh")["ok"], **explain_poem(text, it["form"], "zh")}
                rows.append(row)
            lps = [r["logp_per_char"] for r in rows if r["logp_per_char"] is not None]
            summary = {"form_ok": sum(r["form_ok"] for r in rows) / len(rows), **aggregate_rules(rows),
                       "logp_per_char": sum(lps) / len(lps) if lps else None,
                       "seconds": round(time.perf_counter() - t0, 1)}
            result["configs"][name] = {"options": opts, "summary": summary, "rows": rows}
            log(f"{name}: {json.dumps(summary, ensure_ascii=False)}")
    return result


def bench_rules(n: int = 40, output: str = "", adapter: str = "smollm2-135m-poem-zh",
                eval_set: str = "poems_zh:test_jueju") -> int:
    """Rule checks of the reference poems and form/rhyme/tone rates under each constraint (slow: a real model).

    n: prompts decoded under each constraint
    output: also write every row and summary to this JSON file
    adapter: the poem adapter (its own base is loaded)
    eval_set: the poems (needs `python -m harness data prepare poems_zh --data-dir DIR`)
    """
    res = measure_rules(n=n, eval_set=eval_set, adapter=adapter)
    if output:
        from harness.io import atomic_write
        atomic_write(Path(output), json.dumps(res, ensure_ascii=False, indent=1))
    return 0
