"""CLI commands over models and generation: `models`, `generate`, `classify`.

    python -m harness models
    python -m harness generate --model smollm2-135m-instruct --input prompts.txt --output out.jsonl
    python -m harness classify --model smollm2-135m-instruct --adapter smollm2-135m-spam --input sms.txt --output p.csv
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from harness.errors import UserError


def read_text_file(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"input file {p} not found")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"{p}:{line}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None


def read_prompts(path: str) -> list[str]:
    """One prompt per line, or JSONL with a `prompt` field (blank lines skipped)."""
    text = read_text_file(path)
    prompts = []
    is_jsonl = path.endswith(".jsonl") or text.lstrip().startswith("{")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if is_jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise UserError(f"{path}:{n}: a JSONL line needs a string field \"prompt\"")
            prompts.append(row["prompt"])
        else:
            prompts.append(line)
    return prompts


def read_messages(path: str) -> list[str]:
    """One message per line, or a CSV with a `text` column."""
    text = read_text_file(path)
    if path.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise UserError(f"{path}:1: a CSV needs a `text` column; found columns {reader.fieldnames}")
        return [row["text"] for row in reader if (row.get("text") or "").strip()]
    return [line for line in text.splitlines() if line.strip()]


def _write_atomic(path: str, text: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)


def models() -> int:
    """List base models and adapters with their status (cached / needs conversion / downloadable / missing)."""
    from harness.models import base_status, list_adapters, list_bases
    from harness.paths import adapters_dir, cache_dir

    print(f"{'base model':28} {'status':17} {'prompt style':14} description")
    for s in list_bases():
        star = " (default)" if s.default else ""
        print(f"{s.name:28} {base_status(s):17} {s.prompt_style:14} {s.description}{star}")
    print(f"\ncache: {cache_dir()}  (set FTBENCH_CACHE to move it)")
    adapters = list_adapters()
    print(f"\n{'adapter':28} {'task':8} {'kind':8} {'base':24} status")
    for a in adapters:
        status = a.problem or "ok"
        print(f"{a.name:28} {a.task:8} {a.kind:8} {a.base:24} {status}")
    if not adapters:
        print(f"(none in {adapters_dir()}: train one with `python -m harness finetune spam`)")
    return 0


def generate(model: str, input: str, output: str, adapter: str | None = None, max_new_tokens: int = 256,
             batch_size: int = 16, seed: int = 0, sample: bool = False, temperature: float = 0.7,
             top_p: float = 0.9, raw: bool = False, form: str = "") -> int:
    """Generate a response for each prompt of a file, in batches; one JSON object per prompt in the output.

    model: a registry name (see `models`), a local model directory, or a .gguf file
    input: one prompt per line, or JSONL with a "prompt" field
    output: the JSONL file to write
    adapter: an adapter name from adapters/ (default: the base alone)
    sample: sample instead of greedy decoding (with --seed, --temperature, --top-p)
    raw: send prompts as they are instead of wrapping each in the model's prompt format
    form: keep every response in this classical Chinese form while decoding (五言绝句, 七言绝句, 五言律诗, 七言律诗)
    """
    from harness.generation import GenerationConfig, generate_batch
    from harness.models import load_model

    prompts = read_prompts(input)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, do_sample=sample,
                           temperature=temperature, top_p=top_p, form=form)
    lm = load_model(model, adapters=[adapter] if adapter else None)
    rendered = prompts if raw else [lm.render_instruction(p) for p in prompts]
    outs = generate_batch(lm, rendered, cfg, adapter=adapter, progress=True)
    lines = [json.dumps({"prompt": p, "response": g.text, "model": lm.name, "adapter": adapter or "",
                         "prompt_tokens": g.prompt_tokens, "new_tokens": g.new_tokens,
                         "seconds": round(g.seconds, 4), "finish_reason": g.finish_reason}, ensure_ascii=False)
             for p, g in zip(prompts, outs)]
    _write_atomic(output, "".join(line + "\n" for line in lines))
    toks, secs = sum(g.new_tokens for g in outs), sum(g.seconds for g in outs)
    print(f"{len(outs)} responses -> {output} ({toks} new tokens, {toks / secs if secs else 0:.1f} tokens/s)")
    return 0


def classify(model: str, input: str, output: str, adapter: str | None = None, batch_size: int = 16) -> int:
    """Classify each message of a file; write a CSV text,label,p_<class>... (p_spam for the spam adapter).

    model: a registry name, a local model directory, or a .gguf file
    input: one message per line, or a CSV with a `text` column
    output: the CSV file to write
    adapter: a classification adapter (default: the base model zero-shot, spam vs ham)
    """
    from harness.generation import classify as run
    from harness.models import load_model

    texts = read_messages(input)
    lm = load_model(model, adapters=[adapter] if adapter else None)
    probs = run(lm, texts, adapter=adapter, batch_size=batch_size)
    labels = list(probs[0]) if probs else ["ham", "spam"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"] + [f"p_{l}" for l in labels])
    for text, p in zip(texts, probs):
        w.writerow([text, max(p, key=p.get)] + [f"{p[l]:.6f}" for l in labels])
    _write_atomic(output, buf.getvalue())
    counts = {l: sum(1 for p in probs if max(p, key=p.get) == l) for l in labels}
    print(f"{len(texts)} messages -> {output} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    return 0
