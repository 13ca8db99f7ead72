"""CLI commands over models and generation: `models`, `generate`, `classify`.

    python -m harness models
    python -m harness generate --model smollm2-135m-instruct --input prompts.txt --output out.jsonl
    python -m harness generate --model openai:smol@http://127.0.0.1:8080 --input prompts.txt --output out.jsonl
    python -m harness classify --adapter smollm2-135m-spam --input sms.csv --output p.csv

Every check that can fail on the user's input (an empty or unreadable input, an output that is a folder, an
unwritable cache, an unknown or wrong-kind adapter, a server that is down) runs before any model loads.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Literal

from harness.engines import EngineConfig, parse_engine_spec
from harness.errors import UserError
from harness.generation import GenerationConfig
from harness.io import check_writable_dir, check_writable_file, read_table, read_text, write_csv, write_jsonl


def read_text_file(path: str) -> str:
    """A UTF-8 input file (harness.io.read_text: missing files and non-UTF-8 bytes are one sentence)."""
    return read_text(path, "input file")


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
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); write one JSON object per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise UserError(f"{path}:{n}: a JSONL line needs a string field \"prompt\"")
            prompts.append(row["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise UserError(f"input file {path} holds no prompts: write one prompt per line "
                        "(or JSONL lines with a \"prompt\" field)")
    return prompts


def read_messages(path: str) -> list[str]:
    """The messages of a file: one per line, or the `text` column of a CSV / JSONL (blank ones skipped)."""
    return [r["text"] for r in read_message_rows(path)[0]]


def read_message_rows(path: str) -> tuple[list[dict], list[str]]:
    """(rows, input columns): a CSV or JSONL with a `text` field keeps every column of each row; any other file
    is one message per line (column `text`). Blank messages are skipped; no message at all is an error."""
    p = Path(path)
    if p.suffix.lower() in (".csv", ".jsonl"):
        table = read_table(p, required=("text",), what="input file")
        columns = list(dict.fromkeys(k for _, row in table for k in row))
        rows = []
        for line, row in table:
            if not isinstance(row["text"], str):
                raise UserError(f"{p}:{line}: `text` must be a string, got {type(row['text']).__name__}")
            if row["text"].strip():
                rows.append(row)
    else:
        columns = ["text"]
        rows = [{"text": line} for line in read_text_file(path).splitlines() if line.strip()]
    if not rows:
        raise UserError(f"input file {path} holds no messages: write one message per line, or a CSV / JSONL "
                        "with a non-empty `text` column")
    return rows, columns


def check_cache_writable() -> None:
    """The model cache (where an embedded GGUF is converted once) must be writable before any model loads."""
    from harness.paths import cache_dir
    check_writable_dir(cache_dir(), "FTBENCH_CACHE (the cache folder)")


# ---------------------------------------------------------------- resumable outputs

NOTHING_SAVED = "interrupted before any item finished; nothing is saved"


def partial_path(output: str | Path) -> Path:
    """The resumable progress file of an output: one JSON line per finished item, beside the output
    (`out.jsonl` -> `out.jsonl.partial`). It is removed once the output is written."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def item_key(*parts) -> str:
    """The identity of one item's answer: everything that changes it (model, adapter, settings, the input)."""
    import hashlib
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_partial(path: Path) -> dict[str, dict]:
    """key -> saved result of a progress file; a line cut short by a crash (the last one) is ignored."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str) and "result" in rec:
            done[rec["key"]] = rec["result"]
    return done


class Progress:
    """The finished items of one command, appended to its progress file as they finish (so Ctrl-C, a crash or a
    full disk while writing the output loses nothing), and the honest sentence to print when interrupted."""

    def __init__(self, output: str, keys: list[str]):
        from harness.io import append_lines
        self.path, self.keys, self._append = partial_path(output), keys, append_lines
        saved = load_partial(self.path)
        if self.path.is_file() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            append_lines(self.path, [""])      # a crash cut the last line: new lines start on their own
        self.results: dict[str, dict] = {k: saved[k] for k in keys if k in saved}
        self.resumed = len(self.results)

    def todo(self) -> list[int]:
        """Indices of the items not finished yet (one per distinct key)."""
        seen, out = set(self.results), []
        for i, k in enumerate(self.keys):
            if k not in seen:
                seen.add(k)
                out.append(i)
        return out

    def save(self, i: int, result: dict) -> None:
        self.save_many([(i, result)])

    def save_many(self, done: list[tuple[int, dict]]) -> None:
        """Record finished items (index, result) and append them to the progress file in one write."""
        lines = []
        for i, result in done:
            self.results[self.keys[i]] = result
            lines.append(json.dumps({"key": self.keys[i], "result": result}, ensure_ascii=False))
        self._append(self.path, lines)

    def done_count(self) -> int:
        return sum(k in self.results for k in self.keys)

    def interrupted(self) -> str:
        n, total = self.done_count(), len(self.keys)
        if not n:
            return NOTHING_SAVED
        return (f"interrupted: {n} of {total} items are saved in {self.path}; rerun the same command to resume "
                f"(the finished ones are not computed again)")

    def kept(self) -> str:
        n = self.done_count()
        return (f"; the {n} finished item(s) are kept in {self.path}: rerun the same command to resume"
                if n else "")

    def finish(self, write) -> None:
        """Write the output with `write()`; the progress file goes only when the output is written."""
        try:
            write()
        except UserError as e:
            raise UserError(f"{e}{self.kept()}") from None
        self.path.unlink(missing_ok=True)


def models() -> int:
    """List base models and adapters with their status (cached / needs conversion / downloadable / missing)."""
    from harness.models import base_note, base_status, list_adapters, list_bases
    from harness.paths import adapters_dir, cache_dir

    print(f"{'base model':28} {'status':17} {'prompt style':14} description")
    for s in list_bases():
        star = " (default)" if s.default else ""
        status = base_status(s)
        print(f"{s.name:28} {status:17} {s.prompt_style:14} {s.description}{star}")
        note = base_note(s, status)
        if note:
            print(f"{'':28} to get it: {note}")
    print(f"\ncache: {cache_dir()}  (set FTBENCH_CACHE to move it)")
    adapters = list_adapters()
    print(f"\n{'adapter':28} {'task':8} {'kind':8} {'base':24} status")
    for a in adapters:
        status = a.problem or "ok"
        print(f"{a.name:28} {a.task:8} {a.kind:8} {a.base:24} {status}")
    if not adapters:
        print(f"(none in {adapters_dir()}: train one with `python -m harness finetune spam`)")
    return 0


def _local_adapter(name: str):
    """The adapter folder `name` (UserError listing the available ones), checked before any model loads."""
    from harness.models import find_adapter
    return find_adapter(name)


def check_generation_adapter(name: str) -> None:
    """Refuse a classifier where text is generated (as `run` does), before the base loads."""
    info = _local_adapter(name)
    if info.method != "sft":
        raise UserError(f"adapter {name!r} is a {info.task} classifier ({info.method}): it does not write "
                        f"responses; classify with `python -m harness classify --adapter {name}`, or pick a "
                        "chat/poem adapter (see `python -m harness models`)")


def generate(model: str, input: str, output: str, gen: GenerationConfig, server: EngineConfig,
             adapter: str = "", raw: bool = False,
             engine: Literal["auto", "transformers", "llama.cpp"] = "auto") -> int:
    """Generate a response for each prompt of a file, in batches (or concurrently through a server); one JSON
    object per prompt in the output.

    model: a registry name, a model directory, a .gguf file, or a server: openai:<model>@<url> or ollama:<model>
    input: one prompt per line, or JSONL with a "prompt" field
    output: the JSONL file to write
    adapter: an adapter under adapters/ (default: the base); with a server, the model id it serves the adapter as
    raw: send prompts as they are instead of wrapping each in the model's prompt format (in process only)
    engine: in process, auto = llama.cpp (batched) when the base has a GGUF and llama-cpp-python is installed
    """
    prompts = read_prompts(input)
    check_writable_file(output)
    check_cache_writable()
    kind = parse_engine_spec(model)[0]
    if kind != "transformers":
        return _generate_remote(model, prompts, output, gen, server, adapter, raw)
    if adapter:
        check_generation_adapter(adapter)
    if _generate_engine(engine, model, raw, gen) == "llama.cpp":
        rc = _generate_llamacpp(model, prompts, output, gen, adapter, explicit=engine == "llama.cpp")
        if rc is not None:
            return rc
    from harness.generation import generate_batch
    from harness.models import load_model

    try:
        lm = load_model(model, adapters=[adapter] if adapter else None)
    except KeyboardInterrupt:
        print(NOTHING_SAVED, file=sys.stderr)
        return 130
    rendered = prompts if raw else [lm.render_instruction(p) for p in prompts]
    prog = Progress(output, [item_key("generate", lm.name, _adapter_sha(lm, adapter), adapter, raw,
                                      gen.as_key(), r) for r in rendered])
    todo = prog.todo()
    _resuming(prog, len(prompts))
    try:
        generate_batch(lm, [rendered[i] for i in todo], gen, adapter=adapter or None, progress=True,
                       on_done=lambda j, g: prog.save(todo[j], _generation_dict(g)))
    except KeyboardInterrupt:
        print(prog.interrupted(), file=sys.stderr)
        return 130
    outs = [_generation_of(prog.results[k]) for k in prog.keys]
    prog.finish(lambda: _write_generations(output, prompts, outs, lm.name, adapter))
    return 0


def _adapter_sha(lm, adapter: str) -> str:
    """The adapter's weights hash (a retrained adapter never reuses saved answers)."""
    info = lm.adapters.get(adapter) if adapter else None
    return getattr(info, "sha256", "") if info is not None else ""


def _resuming(prog: Progress, total: int) -> None:
    if prog.resumed:
        print(f"resuming: {prog.resumed} of {total} items already finished in {prog.path}", file=sys.stderr)


def _generation_dict(g) -> dict:
    return {"text": g.text, "prompt_tokens": g.prompt_tokens, "new_tokens": g.new_tokens, "seconds": g.seconds,
            "finish_reason": g.finish_reason}


def _generation_of(d: dict):
    from harness.generation import Generation
    return Generation("", d["text"], d["prompt_tokens"], d["new_tokens"], d["seconds"], d["finish_reason"])


# `generate`'s flags (harness.cli): the engine's spec is --model, its batch size is GenerationConfig's
generate.cli_skip = {"gen": ("ignore_eos",), "server": ("spec", "host", "batch_size")}


def _generate_engine(requested: str, model: str, raw: bool, gen: GenerationConfig) -> str:
    """`generate`'s in-process engine: harness.llamacpp.pick_engine's choice for the base, except what the llama.cpp
    chat path cannot do (--raw prompts, --stop strings). A fallback under auto is one notice line on stderr; an
    explicit --engine llama.cpp that cannot run is a UserError."""
    from harness.llamacpp import pick_engine
    from harness.evaluate import BATCHED_AUTO
    req = (requested or "auto").strip().lower()
    if req == "auto" and BATCHED_AUTO == "transformers":       # by measurement: see harness.evaluate.BATCHED_AUTO
        return "transformers"
    name, why = pick_engine(req, base=model or None)
    if name == "llama.cpp" and (raw or gen.stop):
        name, why = "transformers", ("--raw prompts go to the model as they are, which llama.cpp's chat path "
                                     "cannot do" if raw else "--stop strings are not supported on llama.cpp")
    if name != "llama.cpp" and req == "llama.cpp":
        why = re.sub(r"[.:]?\s*using transformers\.?$", "", why.strip(), flags=re.I).rstrip(". ")
        raise UserError(f"--engine llama.cpp cannot run this: {why}; drop --engine or pass --engine transformers")
    if why and req == "auto":
        print(f"note: {why.rstrip('.')}" + ("" if "transformers" in why.lower() else ": using transformers"),
              file=sys.stderr)
    return name


def _generate_llamacpp(model: str, prompts: list[str], output: str, gen: GenerationConfig, adapter: str,
                       explicit: bool) -> int | None:
    """`generate` on llama.cpp: batched (LlamaCppEngine.generate_many), resumable like the transformers path
    (OUT.partial, keys naming the engine). None = the GGUF or adapter cannot run there and auto falls back
    (the notice printed)."""
    from harness.llamacpp import PARALLEL, load_engine, poem_grammar
    from harness.models import resolve_base
    base = resolve_base(model).name
    sha = _local_adapter(adapter).sha256 if adapter else ""
    cfg_key = {**gen.as_key(), "engine": "llama.cpp"}
    try:
        eng = load_engine(model, adapters=[adapter] if adapter else None)
    except UserError as e:
        why = str(e).splitlines()[0]
        if explicit:
            why = re.sub(r"[:;,.]?\s*(it )?runs on transformers.*$", "", why, flags=re.I).rstrip(". ")
            raise UserError(f"--engine llama.cpp cannot run this: {why}; drop --engine or pass --engine "
                            "transformers") from None
        print(f"note: {why}", file=sys.stderr)
        return None
    try:
        prog = Progress(output, [item_key("generate", base, sha, adapter, False, cfg_key, p) for p in prompts])
        todo = prog.todo()
        _resuming(prog, len(prompts))
        grammar = poem_grammar(gen.form, gen.rhyme, gen.rhyme_group or None, gen.tone) if gen.form else None
        step = max(4 * PARALLEL, gen.batch_size)     # saved after each step (the resume point)
        try:
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                t0 = time.perf_counter()
                got = eng.generate_many([[{"role": "user", "content": prompts[i]}] for i in chunk], adapter or None,
                                        gen.max_new_tokens, parallel=PARALLEL,
                                        temperature=gen.temperature if gen.do_sample else 0.0, top_p=gen.top_p,
                                        seed=[gen.seed + i for i in chunk], repeat_penalty=gen.repetition_penalty,
                                        grammar=grammar)
                per = (time.perf_counter() - t0) / len(chunk)
                prog.save_many([(i, {"text": g["text"], "prompt_tokens": g["prompt_tokens"],
                                     "new_tokens": g["new_tokens"], "seconds": per,
                                     "finish_reason": g["finish_reason"]}) for i, g in zip(chunk, got)])
        except KeyboardInterrupt:
            print(prog.interrupted(), file=sys.stderr)
            return 130
    finally:
        eng.close()
    outs = [_generation_of(prog.results[k]) for k in prog.keys]
    prog.finish(lambda: _write_generations(output, prompts, outs, base, adapter))
    return 0


def _generate_remote(model: str, prompts: list[str], output: str, gen: GenerationConfig, engine: EngineConfig,
                     adapter: str, raw: bool) -> int:
    import dataclasses

    from harness.engines import EngineRequest, engine_generate, open_engine

    if raw:
        raise UserError("--raw sends prompts without a chat template, which a chat server cannot do: drop --raw "
                        "(the server applies its own template) or generate in process")
    if gen.form:
        raise UserError("--form constrains decoding token by token, which runs in process only: drop --form or "
                        "use an in-process model")
    from harness.models import list_adapters
    if adapter in {a.name for a in list_adapters()}:
        check_generation_adapter(adapter)
    cfg = dataclasses.replace(engine, spec=model)
    reqs = [EngineRequest([{"role": "user", "content": p}], max_new_tokens=gen.max_new_tokens,
                          temperature=gen.temperature if gen.do_sample else 0.0, seed=gen.seed, stop=gen.stop,
                          adapter=adapter or None) for p in prompts]
    prog = Progress(output, [item_key("generate", cfg.spec, adapter, dataclasses.asdict(r)) for r in reqs])
    todo = prog.todo()
    _resuming(prog, len(prompts))
    try:
        with open_engine(cfg) as eng:
            engine_generate(eng, [reqs[i] for i in todo], progress=True,
                            on_done=lambda j, g: prog.save(todo[j], _generation_dict(g)))
    except KeyboardInterrupt:
        print(prog.interrupted(), file=sys.stderr)
        return 130
    except UserError as e:          # a server that failed some items: the good ones are saved
        raise UserError(f"{e}{prog.kept()}") from None
    outs = [_generation_of(prog.results[k]) for k in prog.keys]
    prog.finish(lambda: _write_generations(output, prompts, outs, cfg.spec, adapter))
    return 0


def _write_generations(output: str, prompts: list[str], outs: list, model: str, adapter: str) -> None:
    write_jsonl(output, [{"prompt": p, "response": g.text, "model": model, "adapter": adapter or "",
                          "prompt_tokens": g.prompt_tokens, "new_tokens": g.new_tokens,
                          "seconds": round(g.seconds, 4), "finish_reason": g.finish_reason}
                         for p, g in zip(prompts, outs)])
    toks, secs = sum(g.new_tokens for g in outs), sum(g.seconds for g in outs)
    failed = sum(g.finish_reason == "error" for g in outs)
    print(f"{len(outs)} responses -> {output} ({toks} new tokens, {toks / secs if secs else 0:.1f} tokens/s)"
          + (f"; {failed} failed (the server's answer was not valid JSON: finish_reason \"error\")" if failed else ""))


def classify_task(adapter: str, task: str):
    """(adapter info or None, the classify task): from the adapter's recipe, from --task, or the only
    registered classify task. All before any model loads."""
    from harness.tasks import all_tasks, get_task

    info = None
    if adapter:
        info = _local_adapter(adapter)
        if info.method not in ("head", "label_text"):
            raise UserError(f"adapter {adapter!r} is a {info.task} generation adapter, not a classifier; pick a "
                            "classifier (see `python -m harness models`) or classify zero-shot without --adapter")
        if task and task != info.task:
            raise UserError(f"adapter {adapter!r} was trained for task {info.task!r}, not {task!r}: drop --task "
                            f"or pick a {task} adapter")
        task = info.task
    if not task:
        names = [t.name for t in all_tasks() if t.kind == "classify"]
        if len(names) != 1:
            raise UserError(f"name the task to classify zero-shot with --task: one of {', '.join(names) or 'none'}")
        task = names[0]
    t = get_task(task)
    if t.kind != "classify":
        classifiers = [x.name for x in all_tasks() if x.kind == "classify"]
        raise UserError(f"task {task!r} generates text; classify needs a classify task: "
                        f"{', '.join(classifiers) or 'none registered'}")
    return info, t


def classify(input: str, output: str, model: str = "", adapter: str = "", task: str = "",
             batch_size: int = 16) -> int:
    """Classify each message of a file with a classification adapter (a head or label-as-text), or the base
    zero-shot; the output CSV keeps every input column and adds `label` and `p_<label>` for each label.

    input: one message per line, or a CSV / JSONL with a `text` column (a `label` column is kept as label_given)
    output: the CSV file to write
    model: a registry name, a local model directory, or a .gguf file (default: the embedded base)
    adapter: a classification adapter (default: the base zero-shot on the task's prompt)
    task: the classify task (default: the adapter's, or the only registered one; see `python -m harness tasks`)
    batch_size: messages scored together
    """
    rows, columns = read_message_rows(input)
    check_writable_file(output)
    check_cache_writable()
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if model and parse_engine_spec(model)[0] != "transformers":
        raise UserError(f"classification runs in process only: no server API returns per-label probabilities; "
                        f"drop {model.split(':', 1)[0]}: and pass a base model")
    info, t = classify_task(adapter, task)
    from harness.classify import classify as classify_texts
    from harness.models import default_base, load_model

    try:
        lm = load_model(model or default_base(), adapters=[adapter] if adapter else None)
    except KeyboardInterrupt:
        print(NOTHING_SAVED, file=sys.stderr)
        return 130
    texts = [r["text"] for r in rows]
    who = (lm.name, adapter, _adapter_sha(lm, adapter), t.name,
           list(t.labels), t.prompt)
    prog = Progress(output, [item_key("classify", *who, text) for text in texts])
    todo = prog.todo()
    _resuming(prog, len(texts))
    from tqdm import tqdm
    step = max(batch_size * 4, 16)        # saved to the progress file after every chunk
    try:
        with tqdm(total=len(texts), initial=len(texts) - len(todo), desc="classify", unit="msg",
                  file=sys.stderr) as bar:
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                prog.save_many(list(zip(chunk, classify_texts(lm, [texts[i] for i in chunk], adapter or None, t,
                                                              batch_size=batch_size))))
                bar.update(len(chunk))
    except KeyboardInterrupt:
        print(prog.interrupted(), file=sys.stderr)
        return 130
    probs = [prog.results[k] for k in prog.keys]
    labels = list(probs[0]) if probs else list(t.labels)
    given = "label" in columns
    header = [("label_given" if c == "label" else c) for c in columns] + ["label"] + [f"p_{lab}" for lab in labels]
    header += ["correct"] if given else []
    out_rows = []
    preds = []
    for r, p in zip(rows, probs):
        pred = max(p, key=p.get)
        preds.append(pred)
        cells = [_cell(r.get(c, "")) for c in columns] + [pred] + [f"{p[lab]:.6f}" for lab in labels]
        out_rows.append(cells + ([str(pred == str(r.get("label", "")).strip())] if given else []))
    prog.finish(lambda: write_csv(output, header, out_rows))
    counts = ", ".join(f"{lab}: {preds.count(lab)}" for lab in labels)
    how = (f"adapter {adapter} ({info.method})" if info else
           f"{lm.name}'s own head (a converted LLMs-from-scratch classifier)" if getattr(lm, "head", None) is not None
           else f"{lm.name} zero-shot")
    print(f"{len(rows)} messages -> {output} ({counts}; task {t.name}, {how})")
    if given:
        acc = sum(p == str(r.get("label", "")).strip() for p, r in zip(preds, rows)) / len(rows)
        print(f"  accuracy against the input's `label` column (kept as label_given): {acc:.3f}")
    return 0


def _cell(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
