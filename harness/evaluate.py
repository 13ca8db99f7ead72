"""The evaluation pipeline: eval set -> batched greedy generation (or classification) -> judge -> rows -> leaderboard.

    python -m harness run --model smollm2-135m-instruct --eval-set instructions_own --judge ollama:llama3
    python -m harness run --model smollm2-135m-instruct --adapter smollm2-135m-alpaca --eval-set instructions_own \\
        --judge transformers:smollm2-135m-instruct          # fully offline
    python -m harness run --eval-set sms_own --adapter smollm2-135m-spam                      # classify: no judge
    python -m harness generate-set --eval-set poems_own --output poems.jsonl
    python -m harness judge --responses instruction-data-with-response.json --output scored.jsonl
    python -m harness bench judge             # harness/bench/judge.py

What differs between tasks (prompts, metrics, classification or generation) comes from the task registry
(harness/tasks). Every generation and judgment goes to the store (harness.store) as it completes, keyed by
content: a rerun generates and judges only what is missing (kill -9 at any point, rerun the same command,
nothing is lost, duplicated or redone). Rows land in results/runs/<task>/<run_id>.jsonl (rewritten atomically):
TEXT-FREE for dataset splits (item id, content hashes of prompt and response, scores, parse status, token counts,
identities) so they can be committed; the project's own sets also keep their text. The leaderboard CSVs are then
rebuilt from all rows files (`python -m harness leaderboard` does the same from a fresh clone).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.engines import EngineConfig
from harness.errors import UserError
from harness.generation import GenerationConfig
from harness.http import ItemsFailed
from harness.io import check_writable_dir, check_writable_file, read_text, slug, text_sha, write_jsonl
from harness.judge import DEFAULT_JUDGE, Judge, JudgeConfig, JudgeRequest, judge_many, open_judge
from harness.models import model_fingerprint
from harness.paths import PROJECT_ROOT, cache_dir, results_dir
from harness.store import Store, generation_key, judgment_key, now_iso

__all__ = ["slug", "run", "RunConfig", "RunResult", "RunIncomplete", "run_cmd", "judge_file", "load_items",
           "item_set_id", "judge_with_store", "generate_with_store", "generate_remote_with_store"]


# ---------------------------------------------------------------- small helpers

def run_id_for(eval_set: str, model: str, adapter: str | None, judge: str | None, part: str = "",
               decoding: str = "free", engine: str = "") -> str:
    """The rows file's name (without .jsonl). A partial run (a --limit run, or one with failed items) is
    <run id>__part-<item_set>, so it never overwrites the full run's rows; a form-constrained run has its own,
    and so has a run on another in-process engine than transformers (__llama.cpp)."""
    rid = "__".join(slug(x) for x in (eval_set, model_slug(model), adapter or "base", judge or "nojudge"))
    if decoding != "free":
        rid += f"__{decoding}"
    if engine not in ("", "transformers"):
        rid += f"__{slug(engine)}"
    return f"{rid}__part-{part}" if part else rid


def item_set_id(ids) -> str:
    """A run's item set: the first 12 hex of sha256 over its sorted item ids, one per line."""
    import hashlib
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()[:12]


class RunIncomplete(UserError):
    """A run with failed items: the good ones are saved (store, and a partial rows file); rerun to finish."""

    def __init__(self, message: str, result: "RunResult"):
        super().__init__(message)
        self.result = result


def model_slug(model: str) -> str:
    """A model spec for a file name: a server spec (openai:<model>@<url>) as kind-model-<hash of the spec>."""
    from harness.engines import parse_engine_spec
    kind, name, _ = parse_engine_spec(model or "")
    if kind == "transformers":
        return model
    return f"{kind}-{name.replace('/', '-')}-{text_sha(model)[:8]}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5)


# ---------------------------------------------------------------- judging through the store

def request_key(judge: Judge, req: JudgeRequest) -> str:
    prompt = judge.prompt(req.task)
    return judgment_key(judge.name, judge.digest, prompt.version, prompt.sha256, judge.options,
                        {"task": req.task, **req.fields})


def judge_with_store(judge: Judge, reqs: list[JudgeRequest], store: Store, retry_unparsed: bool = False,
                     progress: bool = True) -> tuple[list[dict], int]:
    """Judgment rows (store rows) for every request, asking the judge only for the missing ones (each stored
    as it completes). retry_unparsed: ask again for stored answers that held no score. Returns (rows, asked).
    Requests the judge failed on (an outage, a page that is not its protocol) are not stored: after the others
    are, http.ItemsFailed is raised with `.results` = the rows, None for each failed request (`.failed`)."""
    keys = [request_key(judge, r) for r in reqs]
    have = store.get("judgments", keys)
    todo: dict[str, JudgeRequest] = {}
    for k, r in zip(keys, reqs):
        if k not in todo and (k not in have or (retry_unparsed and not have[k]["parsed"])):
            todo[k] = r
    key_of = {id(r): k for k, r in todo.items()}

    def save(req: JudgeRequest, j) -> None:
        prompt = judge.prompt(req.task)
        store.put("judgments", [{
            "key": key_of[id(req)], "judge": judge.name, "judge_digest": judge.digest,
            "prompt_version": prompt.version, "prompt_sha": prompt.sha256, "options": judge.options,
            "item": {"task": req.task, "id": req.id, **req.fields}, "score": j.score, "parsed": j.parsed,
            "raw": j.raw, "reason": j.reason, "attempts": j.attempts, "seconds": j.seconds}])

    failed: dict[str, str] = {}
    if todo:
        asked = list(todo)
        try:
            judge_many(judge, list(todo.values()), on_done=save, progress=progress)
        except ItemsFailed as e:
            failed = {asked[i]: why for i, why in e.failed.items()}
        have = store.get("judgments", keys)
    if failed:
        raise ItemsFailed([have.get(k) for k in keys],
                          {i: failed.get(k) or "not judged" for i, k in enumerate(keys) if k not in have}, "judgments")
    return [have[k] for k in keys], len(todo)


# ---------------------------------------------------------------- generation through the store

@dataclass
class _Gen:
    text: str
    response_tokens: int
    seconds: float
    extra: dict = field(default_factory=dict)
    prompt_tokens: int = 0


def generate_with_store(lm, adapter: str | None, adapter_sha: str, prompts: list[str], gcfg, store: Store,
                         progress: bool) -> tuple[list[_Gen], int]:
    from harness.generation import generate_batch

    digest = model_fingerprint(lm.spec)
    cfg_key = gcfg.as_key()
    keys = [generation_key(lm.name, adapter_sha, cfg_key, p, digest) for p in prompts]
    have = store.get("generations", keys)
    missing = list(dict.fromkeys(k for k in keys if k not in have))
    if missing:
        prompt_of = dict(zip(keys, prompts))
        # sort by length once, so each batch_size chunk is one batch of similar lengths; commit per batch
        missing.sort(key=lambda k: len(prompt_of[k]))
        bar = _bar(len(missing), "generating", progress)
        try:
            for start in range(0, len(missing), gcfg.batch_size):
                chunk = missing[start:start + gcfg.batch_size]
                gens = generate_batch(lm, [prompt_of[k] for k in chunk], gcfg, adapter=adapter)
                store.put("generations", [{
                    "key": k, "model": lm.name, "adapter": adapter or "", "adapter_sha": adapter_sha,
                    "config": cfg_key, "prompt": g.prompt, "response": g.text, "prompt_tokens": g.prompt_tokens,
                    "response_tokens": g.new_tokens, "seconds": g.seconds,
                    "extra": {"finish_reason": g.finish_reason, "model_digest": digest}}
                    for k, g in zip(chunk, gens)])
                bar.update(len(chunk))
        finally:
            bar.close()
        have = store.get("generations", keys)
    return [_Gen(have[k]["response"], int(have[k]["response_tokens"] or 0), float(have[k]["seconds"] or 0.0),
                 have[k].get("extra") or {}, int(have[k]["prompt_tokens"] or 0)) for k in keys], len(missing)


def item_messages(task, item: dict) -> list[dict]:
    """A generate item as chat messages for a server (it applies its own chat template): the instruction and
    its input in one user message, as LoadedModel.render_instruction does for a chat model in process."""
    ins, inp = task.instruction(item)
    return [{"role": "user", "content": f"{ins}\n\n{inp}" if inp else ins}]


def generate_remote_with_store(engine, adapter: str | None, items: list[dict], task, gcfg, store: Store,
                                progress: bool, failed: dict[int, str] | None = None) -> tuple[list[_Gen], int]:
    """Generate through a server (harness.engines: bounded pool, retries, timeouts), each answer stored as it
    arrives. The key holds the served model's own identity (what /v1/models or Ollama reports), not the URL:
    a server that moved still answers from the cache, a different served model never does. An item the server
    failed (a 200 that is not its protocol, an error after the retries) is no answer and is not stored: a rerun
    asks again. `failed` given: such items are None in the result and their reasons go there (item index ->
    sentence); otherwise http.ItemsFailed is raised. An item's seconds are its share of the run's wall time
    (time since the previous answer), as in process."""
    from harness.engines import EngineRequest, engine_generate, prompt_text

    served = adapter or engine.model
    identity = engine.identity_of(adapter)
    cfg_key = {"engine": engine.kind, **gcfg.as_key()}
    reqs = [EngineRequest(item_messages(task, it), max_new_tokens=gcfg.max_new_tokens, temperature=0.0,
                          seed=gcfg.seed, stop=gcfg.stop, adapter=adapter) for it in items]
    prompts = [prompt_text(r) for r in reqs]
    name = f"{engine.kind}:{served}"
    keys = [generation_key(name, "", cfg_key, p, identity) for p in prompts]
    have = store.get("generations", keys)
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in have:
            first.setdefault(k, i)
    missing = list(first)
    lost: dict[str, str] = {}
    if missing:
        last = [time.perf_counter()]

        def save(j: int, g) -> None:
            now = time.perf_counter()
            share, last[0] = now - last[0], now
            k = missing[j]
            store.put("generations", [{
                "key": k, "model": name, "adapter": adapter or "", "adapter_sha": "", "config": cfg_key,
                "prompt": g.prompt, "response": g.text, "prompt_tokens": g.prompt_tokens,
                "response_tokens": g.new_tokens, "seconds": share,
                "extra": {"finish_reason": g.finish_reason, "model_digest": identity, "engine": engine.where}}])

        try:
            engine_generate(engine, [reqs[first[k]] for k in missing], on_done=save, progress=progress)
        except ItemsFailed as e:
            lost = {missing[j]: why for j, why in e.failed.items()}
        have = store.get("generations", keys)
    out: list = []
    bad: dict[int, str] = {}
    for i, k in enumerate(keys):
        if k in have:
            h = have[k]
            out.append(_Gen(h["response"], int(h["response_tokens"] or 0), float(h["seconds"] or 0.0),
                            h.get("extra") or {}, int(h["prompt_tokens"] or 0)))
        else:
            out.append(None)
            bad[i] = lost.get(k) or "not generated"
    if bad and failed is None:
        raise ItemsFailed(out, bad, "generations")
    if failed is not None:
        failed.update(bad)
    return out, len(missing)


def classify_key(lm, adapter: str | None, task) -> dict:
    """What a classification answer depends on besides the model, the adapter's weights and the text."""
    key: dict = {"mode": "classify", "labels": list(task.labels)}
    if adapter:
        info = lm.adapters[adapter]
        key.update(method=info.method, labels=list(info.labels), input_template=info.input_template,
                   max_length=info.max_length, prompt=info.prompt if info.method == "label_text" else "")
    elif getattr(lm, "head", None) is not None:       # a converted classifier answers with its own head
        key.update(method="own_head", labels=list(lm.head_labels), max_length=lm.head_max_length)
    else:
        key.update(method="zero_shot", prompt=task.prompt)
    return key


def _classify_with_store(lm, adapter: str | None, adapter_sha: str, texts: list[str], batch_size: int,
                         store: Store, progress: bool, task) -> tuple[list[_Gen], int]:
    from harness.classify import classify

    digest = model_fingerprint(lm.spec)
    cfg_key = classify_key(lm, adapter, task)
    keys = [generation_key(lm.name, adapter_sha, cfg_key, t, digest) for t in texts]
    have = store.get("generations", keys)
    missing = list(dict.fromkeys(k for k in keys if k not in have))
    if missing:
        text_of = dict(zip(keys, texts))
        bar = _bar(len(missing), "classifying", progress)
        try:
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                t0 = time.perf_counter()
                probs = classify(lm, [text_of[k] for k in chunk], adapter, task, batch_size=batch_size)
                per = (time.perf_counter() - t0) / len(chunk)
                store.put("generations", [{
                    "key": k, "model": lm.name, "adapter": adapter or "", "adapter_sha": adapter_sha,
                    "config": cfg_key, "prompt": text_of[k], "response": max(p, key=p.get), "prompt_tokens": None,
                    "response_tokens": 0, "seconds": per, "extra": {"probs": p, "model_digest": digest}}
                    for k, p in zip(chunk, probs)])
                bar.update(len(chunk))
        finally:
            bar.close()
        have = store.get("generations", keys)
    return [_Gen(have[k]["response"], 0, float(have[k]["seconds"] or 0.0), have[k].get("extra") or {})
            for k in keys], len(missing)


# ---------------------------------------------------------------- the pipeline

# --decoding -> the GenerationConfig fields it sets on classical-form items (besides form)
DECODING_RULES: dict[str, dict] = {"free": {}, "form": {}, "rhyme": {"rhyme": True},
                                   "rhyme+tone": {"rhyme": True, "tone": True}}


JUDGE_MODES = ("pointwise", "pairwise")


def check_judge_mode(mode: str, baseline: str | None) -> None:
    if mode not in JUDGE_MODES:
        raise UserError(f"--judge-mode must be one of {', '.join(JUDGE_MODES)}, got {mode!r}")
    if mode == "pairwise" and not baseline:
        raise UserError("--judge-mode pairwise needs --baseline RUN: the run id (a file name under results/runs/"
                        "<task>/, without .jsonl) or rows file of another model or adapter on the same eval set")
    if mode == "pointwise" and baseline:
        raise UserError("--baseline only applies with --judge-mode pairwise: add it, or drop --baseline")


@dataclass
class RunConfig:
    """One evaluation run: which checkpoint, which eval set, which judge. The CLI's `run` flags are these fields."""
    eval_set: str = ""               # eval set name (see `python -m harness data list`)
    model: str = ""                  # base model (registry name, local directory or .gguf); default the embedded one
    adapter: str = ""                # LoRA adapter name under adapters/ (default: the base alone)
    limit: int | None = None         # only the first N items
    decoding: Literal["free", "form", "rhyme", "rhyme+tone"] = "free"   # poems: form = classical forms under the form constraint; rhyme(+tone) adds 平水韵 rhyme (and 平仄)
    no_judge: bool = False           # skip the judge (task metrics only); same as --judge none
    retry_unparsed: bool = False     # ask the judge again for stored answers that held no score
    store: str = ""                  # the store file (default $FTBENCH_CACHE/store.sqlite)
    judge_mode: Literal["pointwise", "pairwise"] = "pointwise"   # pairwise: A/B verdicts vs --baseline, both orders
    baseline: str = ""               # pairwise: the run id (results/runs/<task>/) or rows file to compare against
    engine: Literal["auto", "transformers", "llama.cpp"] = "auto"   # in process: auto = llama.cpp when the base has a GGUF and llama-cpp-python is installed

    def __post_init__(self):
        check_judge_mode(self.judge_mode, self.baseline)
        if not self.eval_set:
            from harness.data import list_eval_sets
            raise UserError("--eval-set is required; available eval sets: " + ", ".join(list_eval_sets()))
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        if self.decoding not in DECODING_RULES:
            raise UserError(f"--decoding must be one of {', '.join(DECODING_RULES)}, got {self.decoding!r}")


@dataclass
class RunResult:
    run_id: str
    task: str
    path: Path
    rows: list[dict]
    generated: int            # items generated (or classified) in this run; the rest came from the store
    judged: int               # items sent to the judge in this run
    leaderboards: list[Path]
    responses: list[str] = field(default_factory=list)   # the response (or predicted label) of each row
    failed: dict[int, str] = field(default_factory=dict)  # index among the requested items -> why it failed
    requested: int = 0                                    # items asked for (rows + failed)


def load_items(eval_set: str, limit: int | None):
    """(the eval set, its first `limit` items or all of them)."""
    from harness.data import load_eval_set

    es = load_eval_set(eval_set)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    return es, es.items[:limit] if limit else list(es.items)


def judge_fields(task, item: dict, response: str) -> dict:
    """What the judge prompt of a generate task sees: the item's fields and the response."""
    return {**{k: (item.get(k) or "") for k in task.fields if k != "id"}, "response": response}


def responses_task(row: dict):
    """The judged task whose fields a responses-file row carries (poem rows: prompt, form, lang; else chat)."""
    from harness.tasks import all_tasks
    judged = [t for t in all_tasks() if t.kind == "generate" and t.judge_prompt]
    for t in sorted(judged, key=lambda t: -len(t.fields)):
        need = [f for f in t.fields if f not in ("id", t.input_field, "title")]
        if all(isinstance(row.get(f), str) for f in need):
            return t
    return next(t for t in judged if t.name == "chat")


def check_adapter_for(info, task) -> None:
    """Refuse an adapter that cannot answer this task (a classifier on a generation task, or vice versa)."""
    if task.kind == "classify":
        if info.method not in ("head", "label_text") or info.task != task.name:
            raise UserError(f"adapter {info.name!r} is a {info.task} {info.method} adapter; the {task.name} eval sets "
                            f"need a {task.name} classifier (see `python -m harness models`)")
    elif info.method != "sft":
        raise UserError(f"adapter {info.name!r} is a {info.task} classifier; use it with a {info.task} eval set, "
                        f"or pick a chat/poem adapter for this {task.name} set")


def _adapter_sha(lm, adapter: str | None, task) -> str:
    if not adapter:
        return ""
    info = lm.attach(adapter)
    check_adapter_for(info, task)
    return info.sha256


def _check_remote(task, eval_set: str, decoding: str, adapter: str | None) -> None:
    """What a server cannot do, refused before anything starts: classification (no per-label probabilities),
    the form constraint (token by token, in process), a local classifier adapter."""
    if task.kind == "classify":
        raise UserError(f"{eval_set} is a {task.name} classification set, which runs in process only (no server API "
                        "returns per-label probabilities): pass a base model instead of openai:/ollama:")
    if decoding != "free":
        raise UserError(f"--decoding {decoding} constrains decoding token by token, which runs in process only: drop "
                        "--decoding or pass a base model instead of openai:/ollama:")
    if adapter:
        from harness.models import list_adapters
        local = {a.name: a for a in list_adapters() if not a.problem}
        if adapter in local:
            check_adapter_for(local[adapter], task)


def check_outputs(store: str | None = None) -> None:
    """Before any model loads: the cache, the store's folder and the results folder must be writable."""
    check_writable_dir(cache_dir(), "FTBENCH_CACHE (the cache folder)")
    check_writable_dir(Path(store).parent if store else cache_dir(), "--store")
    check_writable_dir(results_dir(), "FTBENCH_RESULTS (the results folder)")


def run(model: str | None, adapter: str | None, eval_set: str, judge: str | None = DEFAULT_JUDGE,
        limit: int | None = None, batch_size: int = 16, max_new_tokens: int = 256, workers: int = 4, *,
        judge_config: JudgeConfig | None = None, store: Store | None = None, lm: Any = None,
        retry_unparsed: bool = False, progress: bool = True, write: bool = True,
        run_dir: Path | None = None, decoding: str = "free", gen_config: Any = None,
        engine_config: Any = None, judge_mode: str = "pointwise", baseline: str | None = None,
        engine_name: str = "auto") -> RunResult:
    """Generate (batched, greedy, cached) or classify, judge (cached), score and write one rows file; update
    the leaderboards. (The CLI's `run` builds the arguments from RunConfig, GenerationConfig and JudgeConfig.)

    decoding "form": poems in a classical Chinese form are decoded under harness/forms.py's constraint (the
    app's default); other items are generated freely. Its rows carry decoding="form" and their own run id.

    model "openai:<model>@<url>" or "ollama:<model>": generate through that server (harness.engines, with
    engine_config's workers, timeouts and retries); the adapter is then the model id the server serves it as.
    Rows and leaderboard columns are the same as in process; the rows' model is the spec.

    judge_mode "pairwise": instead of a 0-100 score per answer, the judge compares each answer with the
    `baseline` run's answer to the same item, in both orders (harness.pairwise); the rows carry both verdicts
    and the leaderboard the pw_* columns. The baseline must be another model or adapter on the same items.

    engine_name (in process): "auto" = llama.cpp when harness.llamacpp.pick_engine says so for the base (a GGUF,
    llama-cpp-python installed, not a classification set), else transformers with a one-line notice on stderr;
    "transformers" forces it; "llama.cpp" that cannot be had is a UserError. Rows record `engine`; a llama.cpp
    run has its own run id (__llama.cpp) and cache keys (its Q4 GGUF answers differ from float32 transformers).

    judge None or "" = no judge (classify tasks never have one). lm: an already loaded model to reuse.
    write=False: only fill the store and return the rows. run_dir: where <task>/<run_id>.jsonl goes (default
    results/runs; the leaderboard CSVs go to its parent).
    """
    from harness.generation import GenerationConfig
    from harness.models import default_base, find_adapter, load_model
    from harness.tasks import get_task

    es, items = load_items(eval_set, limit)
    task = get_task(es.task)
    if decoding not in task.decodings:
        raise UserError(f"--decoding {decoding} does not apply to {eval_set} (a {task.name} set); "
                        f"it allows {', '.join(task.decodings)}")
    from harness.engines import EngineConfig, open_engine, parse_engine_spec
    remote = parse_engine_spec(model or "")[0] != "transformers"
    if remote:
        _check_remote(task, eval_set, decoding, adapter)
    elif adapter:
        info = find_adapter(adapter, allow_path=True)       # a name under adapters/ or a peft folder's path
        check_adapter_for(info, task)                       # before any model loads
    inproc = ("" if remote else "transformers" if lm is not None and (engine_name or "auto") == "auto"
              else choose_engine(engine_name, model, task, adapter))     # a model passed in runs where it is
    jcfg = None
    if task.kind == "generate" and task.judge_prompt and (judge or judge_config):
        jcfg = judge_config or JudgeConfig(spec=judge or DEFAULT_JUDGE, workers=workers)
    check_judge_mode(judge_mode, baseline)
    pairwise = judge_mode == "pairwise"
    base_rows: list[dict] = []
    base_name = ""
    if pairwise:
        from harness.pairwise import check_baseline, find_run, load_pairwise_prompt, read_run
        if task.kind != "generate":
            raise UserError(f"--judge-mode pairwise compares generated answers; {eval_set} is a {task.name} "
                            f"(classify) set: drop --judge-mode")
        if jcfg is None:
            raise UserError("--judge-mode pairwise needs a judge: drop --judge none / --no-judge, or pass --judge")
        load_pairwise_prompt(task.name, jcfg.prompt_version)         # the prompt file exists and is valid
        base_path = find_run(str(baseline))
        base_rows, base_name = read_run(base_path), f"baseline {base_path.stem}"

        def check_against_baseline(model_name: str | None = None) -> None:
            """Same eval set and items (before anything loads), then not the same checkpoint (once the model's
            name is known, before any generation)."""
            ident = {} if model_name is None else {"model": model_name, "adapter": adapter or "",
                                                   "decoding": "" if decoding == "free" else decoding}
            check_baseline([{"eval_set": es.name, "item_id": it["id"], **ident} for it in items], base_rows,
                           "this run", base_name)

        check_against_baseline()
    gcfg = gen_config or GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size)
    own_store = store is None
    store = store or Store()
    the_judge: Judge | None = None
    engine = None
    failed: dict[int, str] = {}          # item index -> why it has no answer (a server's or the judge's failure)
    try:
        if pairwise:
            from harness.pairwise import responses_of
            base_texts = responses_of(base_rows, store, base_name)    # before any generation: fail fast
        if remote:
            from dataclasses import replace
            engine = open_engine(replace(engine_config or EngineConfig(), spec=model))   # health check first
            engine.identity_of(adapter)                        # the adapter's model id is served
        if jcfg is not None and jcfg.backend != "transformers":
            the_judge = open_judge(jcfg)                       # health check before any generation
        ckpt = ""
        if engine is not None:
            model_name, adapter_sha, method = engine.config.spec, "", ""
            if pairwise:
                check_against_baseline(model_name)
            outs, generated = generate_remote_with_store(engine, adapter or None, items, task, gcfg, store,
                                                          progress, failed)
        if engine is None and inproc == "llama.cpp":
            from harness.models import is_adapter_path, resolve_base
            model_name = resolve_base(model or default_base()).name
            adapter_sha, method = "", ""
            if adapter:
                info = find_adapter(adapter, allow_path=True)
                adapter_sha, method = info.sha256, info.method
            if pairwise:
                check_against_baseline(model_name)
            ckpt = _checkpoint_hash(model or default_base(), str(info.path) if adapter else "")
            try:
                if adapter and is_adapter_path(adapter):
                    raise UserError(f"adapter {info.name!r} is given by path; llama.cpp exports adapters by name "
                                    "from the adapters folder: it runs on transformers")
                outs, generated = generate_llamacpp_items(model or default_base(), adapter or None, adapter_sha,
                                                          ckpt, items, task, gcfg, store, progress, decoding)
                adapter = info.name if adapter else adapter
            except UserError as e:                  # the GGUF or the adapter cannot run on llama.cpp
                why = str(e).splitlines()[0]
                if (engine_name or "auto") != "auto":
                    why = re.sub(r"[:;,.]?\s*(it )?runs on transformers.*$", "", why, flags=re.I).rstrip(". ")
                    raise UserError(f"--engine llama.cpp cannot run this: {why}; drop --engine or pass --engine "
                                    "transformers") from None
                print(f"note: {why}", file=sys.stderr)
                inproc = "transformers"
        if engine is None and inproc == "transformers":
            if lm is None:
                lm = load_model(model or default_base())
            model_name = lm.name
            if adapter:
                info = lm.attach(adapter, allow_path=True)
                check_adapter_for(info, task)
                adapter = info.name                  # a path's adapter is known by its folder name
            if pairwise:
                check_against_baseline(model_name)
            adapter_sha = lm.adapters[adapter].sha256 if adapter else ""
            method = lm.adapters[adapter].method if adapter else (
                "own_head" if getattr(lm, "head", None) is not None else
                "zero_shot" if task.kind == "classify" else "")
            base_ref = lm.spec.location if lm.spec.source in ("local", "gguf") else lm.spec.name
            ckpt = _checkpoint_hash(base_ref, str(lm.adapters[adapter].path) if adapter else "")
            if task.kind == "classify":
                outs, generated = _classify_with_store(lm, adapter or None, adapter_sha,
                                                       [it["text"] for it in items], gcfg.batch_size, store,
                                                       progress, task)
            else:
                outs, generated = _generate_items(lm, adapter or None, adapter_sha, items, task, gcfg, store,
                                                  progress, decoding)

        judged_rows: list[dict | None] = [None] * len(items)
        asked = 0
        pw = None
        ok = [i for i in range(len(items)) if i not in failed]     # the items with an answer to judge
        if jcfg is not None and ok:
            if the_judge is None:
                the_judge = open_judge(jcfg, lm=lm)
            if pairwise:
                from harness.pairwise import pairwise_judge
                try:
                    pw = pairwise_judge(the_judge, [{"task": task.name, **items[i]} for i in ok],
                                        [outs[i].text for i in ok], base_texts, store, progress, retry_unparsed)
                except ItemsFailed as e:
                    pw = e.partial
                    failed.update({ok[k]: why for k, why in e.failed.items()})
                asked = pw.asked
            else:
                reqs = [JudgeRequest(items[i]["id"], task.judge_prompt, judge_fields(task, items[i], outs[i].text))
                        for i in ok]
                try:
                    got, asked = judge_with_store(the_judge, reqs, store, retry_unparsed, progress)
                except ItemsFailed as e:         # the judge's outage is no verdict: not stored, not scored
                    got, asked = e.results, sum(1 for r in e.results if r is not None)
                    failed.update({ok[k]: why for k, why in e.failed.items()})
                for i, j in zip(ok, got):
                    judged_rows[i] = j

        keep = [i for i in range(len(items)) if i not in failed]    # never a row for an item without an answer
        rows = make_rows(es, task, model_name, adapter or "", adapter_sha, method, [items[i] for i in keep],
                         [outs[i] for i in keep], [judged_rows[i] for i in keep], the_judge, jcfg,
                         "" if decoding == "free" else decoding)
        if pw is not None:
            from harness.pairwise import row_fields
            fields = row_fields(pw, base_path.stem)
            for r in rows:
                r.update(fields[str(r["item_id"])])
    finally:
        if the_judge is not None:
            the_judge.close()
        if engine is not None:
            engine.close()
        if own_store:
            store.close()

    judge_part = jcfg.spec if jcfg else None
    if pairwise:    # its own file: a pointwise run with the same judge, or another baseline, is kept
        judge_part = f"pairwise-{jcfg.spec}-vs-{text_sha(base_path.stem)[:8]}"
    item_set = item_set_id(r["item_id"] for r in rows)
    partial = bool(failed) or len(items) < len(es.items)
    for r in rows:
        r.update(item_set=item_set, partial=partial, n_failed=len(failed))
        r.update(engine=inproc, checkpoint_hash=ckpt)    # a server's rows: "" (their model spec names the server)
    full_id = run_id_for(es.name, model_name, adapter, judge_part, "", decoding, inproc)
    rid = run_id_for(es.name, model_name, adapter, judge_part, item_set if partial else "", decoding, inproc)
    runs = run_dir or results_dir() / "runs"
    path = runs / task.name / f"{rid}.jsonl"
    boards: list[Path] = []
    if write and rows:
        from harness.leaderboard import write_leaderboards
        write_jsonl(path, rows)
        _drop_stale_parts(runs / task.name, full_id, path, {str(r["item_id"]) for r in rows})
        boards = write_leaderboards(runs, runs.parent, task=task.name)
    res = RunResult(rid, task.name, path if write and rows else None, rows, generated, asked, boards,
                    [outs[i].text for i in range(len(items)) if i not in failed], failed, len(items))
    if failed:
        first = next((why for why in failed.values() if not why.startswith("not ")), "") or next(iter(failed.values()))
        saved = (f"the {len(rows)} answered are saved in the store" +
                 (f" and in the partial rows file {path}" if write and rows else ""))
        raise RunIncomplete(f"{len(failed)} of {len(items)} items failed ({first.rstrip('.')}); {saved}: rerun the "
                            f"same command to ask only for the failed ones (answered items are not asked again)", res)
    return res


def _checkpoint_hash(base: str, adapter_path: str) -> str:
    """models.checkpoint_hash, or "" when the weights cannot be read (the run goes on; rows just lack it)."""
    from harness.models import checkpoint_hash
    try:
        return checkpoint_hash(base, adapter_path)
    except (UserError, OSError):
        return ""


# the engine `run` / `generate` use under --engine auto, picked by measurement (issue 26 part 5; python -m harness
# bench generation --skip-load --no-fixed --max-new-tokens 128 --server-prompts 64, idle, 2026-12-06 09:17): 64 chat
# prompts, greedy, natural length: transformers continuous batching (batch 16) 98.7 tokens/s vs llama.cpp
# generate_many 73.6 (parallel 16, the shipped Q4_1 GGUF). llama.cpp's CPU kernels here process ~180 tokens/s
# (prompt + new) at any batch size; a Q8_0 / F16 / F32 copy gave 82 / 82 / 75, a Q4_0 one 139 but another model
# (its answers 58% longer). --engine llama.cpp still runs it (parallel 16).
BATCHED_AUTO = "transformers"


def choose_engine(requested: str, base: str | None, task, adapter: str | None) -> str:
    """The in-process engine for a run: pick_engine's choice for this base; a fallback's notice goes to stderr
    (one line); an explicit --engine llama.cpp that cannot be had is a UserError."""
    import sys

    from harness.llamacpp import pick_engine
    from harness.models import default_base
    req = (requested or "auto").strip().lower()
    if req == "auto" and BATCHED_AUTO == "transformers":
        return "transformers"
    name, notice = pick_engine(req, needs_head=task.kind == "classify", base=base or default_base())
    if name != "llama.cpp" and req not in ("auto", "transformers"):
        why = re.sub(r"[.:]?\s*using transformers\.?$", "", notice.strip(), flags=re.I).rstrip(". ")
        raise UserError(f"--engine llama.cpp cannot run this: {why}; drop --engine or pass --engine transformers")
    if notice and req == "auto" and task.kind != "classify":
        print(f"note: {notice}", file=sys.stderr)
    return name


def generate_llamacpp_items(base: str, adapter: str | None, adapter_sha: str, ckpt: str, items: list[dict], task,
                            gcfg, store: Store, progress: bool, decoding: str) -> tuple[list[_Gen], int]:
    """Generate on llama.cpp (LlamaCppEngine.generate_many: several sequences per llama_decode), cached like
    generate_with_store but under keys that name the engine and the GGUF's content (ckpt); under --decoding
    the classical forms decode under harness.llamacpp.poem_grammar."""
    from dataclasses import replace

    from harness.llamacpp import PARALLEL, load_engine, poem_grammar
    from harness.metrics import FIXED_FORMS
    convs = [item_messages(task, it) for it in items]
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.get("form", "") if decoding != "free" else "", []).append(i)
    outs: list[_Gen | None] = [None] * len(items)
    generated = 0
    eng = None
    try:
        for form, idx in groups.items():
            cfg = replace(gcfg, form=form, **DECODING_RULES.get(decoding, {})) if form in FIXED_FORMS else gcfg
            cfg_key = {**cfg.as_key(), "engine": "llama.cpp"}
            keys = [generation_key(base, adapter_sha, cfg_key, json.dumps(convs[i], ensure_ascii=False), ckpt)
                    for i in idx]
            have = store.get("generations", keys)
            todo = [j for j, k in enumerate(keys) if k not in have]
            if todo:
                if eng is None:
                    eng = load_engine(base, adapters=[adapter] if adapter else None)
                grammar = poem_grammar(cfg.form, cfg.rhyme, cfg.rhyme_group or None, cfg.tone) if cfg.form else None
                bar = _bar(len(todo), "generating (llama.cpp)", progress)
                t0 = time.perf_counter()
                try:
                    got = eng.generate_many([convs[idx[j]] for j in todo], adapter, cfg.max_new_tokens,
                                            parallel=PARALLEL, grammar=grammar,
                                            progress=lambda d, t: bar.update(1))
                finally:
                    bar.close()
                per = (time.perf_counter() - t0) / len(todo)
                store.put("generations", [{
                    "key": keys[j], "model": base, "adapter": adapter or "", "adapter_sha": adapter_sha,
                    "config": cfg_key, "prompt": json.dumps(convs[idx[j]], ensure_ascii=False),
                    "response": g["text"], "prompt_tokens": g["prompt_tokens"], "response_tokens": g["new_tokens"],
                    "seconds": per, "extra": {"finish_reason": g["finish_reason"], "model_digest": ckpt,
                                              "engine": "llama.cpp"}}
                    for j, g in zip(todo, got)])
                generated += len(todo)
                have = store.get("generations", keys)
            for i, k in zip(idx, keys):
                h = have[k]
                outs[i] = _Gen(h["response"], int(h["response_tokens"] or 0), float(h["seconds"] or 0.0),
                               h.get("extra") or {}, int(h["prompt_tokens"] or 0))
    finally:
        if eng is not None:
            eng.close()
    return outs, generated  # type: ignore[return-value]


def _drop_stale_parts(folder: Path, full_id: str, written: Path, ids: set[str]) -> None:
    """Remove this run's earlier rows files that had failed items (<run id>__part-*.jsonl with n_failed > 0)
    whose items the file just written covers: they were attempts of the same command, now superseded. A
    --limit run's file without failures is its own run and stays."""
    from harness.io import iter_jsonl
    for f in folder.glob(f"{full_id}__part-*.jsonl"):
        if f == written:
            continue
        try:
            rows = [r for _, r in iter_jsonl(f, "")]
        except (UserError, OSError):
            continue
        if rows and all(int(r.get("n_failed") or 0) > 0 for r in rows) and {str(r["item_id"]) for r in rows} <= ids:
            f.unlink(missing_ok=True)


def _generate_items(lm, adapter, adapter_sha, items, task, gcfg, store, progress, decoding) -> tuple[list[_Gen], int]:
    """Generate for a task's items; under decoding "form", one call per classical form (the constraint is part of
    the generation config, hence of the cache key)."""
    from dataclasses import replace

    from harness.metrics import FIXED_FORMS
    prompts = [lm.render_instruction(*task.instruction(it)) for it in items]
    if decoding == "free":
        return generate_with_store(lm, adapter, adapter_sha, prompts, gcfg, store, progress)
    outs: list[_Gen | None] = [None] * len(items)
    generated = 0
    for form in dict.fromkeys(it.get("form", "") for it in items):
        idx = [i for i, it in enumerate(items) if it.get("form", "") == form]
        cfg = replace(gcfg, form=form, **DECODING_RULES.get(decoding, {})) if form in FIXED_FORMS else gcfg
        got, n = generate_with_store(lm, adapter, adapter_sha, [prompts[i] for i in idx], cfg, store, progress)
        generated += n
        for i, g in zip(idx, got):
            outs[i] = g
    return outs, generated  # type: ignore[return-value]


def make_rows(es, task, model, adapter, adapter_sha, method, items, outs, judged, judge, jcfg,
              decoding: str = "") -> list[dict]:
    """One row per item. Rows of dataset splits are text-free (content hashes instead of text) so they can be
    committed; rows of the project's own sets also carry the prompt, response and the judge's answer."""
    created, commit = now_iso(), git_commit()
    rows = []
    for it, o, j in zip(items, outs, judged):
        prompt = task.request_text(it)
        status = "" if j is None else ("ok" if j["parsed"] else "unparsed")
        row: dict[str, Any] = {
            "task": task.name, "eval_set": es.name, "item_id": it["id"], "model": model, "adapter": adapter,
            "adapter_sha": adapter_sha, "adapter_method": method, "decoding": decoding,
            "judge": jcfg.spec if jcfg else "", "judge_digest": judge.digest if judge else "",
            "judge_prompt_version": jcfg.prompt_version if jcfg else "",
            "prompt_sha": text_sha(prompt), "response_sha": text_sha(o.text),
            "prompt_tokens": o.prompt_tokens, "response_tokens": o.response_tokens,
            "gen_seconds": round(o.seconds, 4), "finish_reason": (o.extra or {}).get("finish_reason", ""),
            "score": j["score"] if j else None, "parsed": bool(j["parsed"]) if j else False, "parse_status": status,
            "parse_problem": (j.get("reason") or "") if j and not j["parsed"] else "",
        }
        if task.kind == "classify":
            probs = o.extra.get("probs") or {}
            row.update(label=it["label"], pred=o.text, correct=o.text == it["label"],
                       **{f"p_{lab}": round(float(probs.get(lab, 0.0)), 6) for lab in task.labels})
        else:
            row.update(task.row_metrics(it, o.text))
        if es.own:
            row.update(prompt=prompt, response=o.text, judge_raw=j["raw"] if j else "")
        row.update(created_at=created, git_commit=commit)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- reading responses files

BOOK_FIELDS = ("instruction", "output", "model_response")


def read_responses(path: str | Path) -> list[dict]:
    """Rows with instruction, input, output (reference) and model_response, as in the book's
    instruction-data-with-response.json: a JSON array file or JSONL. Poem rows (prompt, form, lang,
    model_response) are accepted too. Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"responses file {path} not found")
    text = read_text(path, "responses file")
    fix = "each row needs instruction, input (may be empty), output and model_response"
    entries: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        # line of each element: count newlines before each top-level object start
        decoder, pos, lines = json.JSONDecoder(), text.index("[") + 1, []
        for _ in data:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            lines.append(text.count("\n", 0, pos) + 1)
            _, pos = decoder.raw_decode(text, pos)
        entries = list(zip(lines, data))
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); {fix}, "
                                "one JSON object per line (or a JSON array file)") from None
    rows = []
    for lineno, row in entries:
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}; {fix}")
        poem = "form" in row and "prompt" in row
        need = ("prompt", "form", "lang", "model_response") if poem else BOOK_FIELDS
        missing = [k for k in need if not isinstance(row.get(k), str)]
        if missing:
            raise UserError(f"{path}:{lineno}: missing or non-string {', '.join(missing)}; {fix}"
                            + (" (poem rows: prompt, form, lang, title, model_response)" if poem else ""))
        if not poem and not isinstance(row.get("input", ""), str):
            raise UserError(f"{path}:{lineno}: input must be a string (use \"\" for none)")
        rows.append({**row, "_line": lineno})
    if not rows:
        raise UserError(f"{path} holds no rows; {fix}")
    return rows


def judge_file(responses: str | Path, output: str | Path, judge: str = DEFAULT_JUDGE, workers: int = 4, *,
               judge_config: JudgeConfig | None = None, store: Store | None = None, retry_unparsed: bool = False,
               progress: bool = True) -> list[dict]:
    """Score a responses file; write `output` (JSONL: each input row + score, parsed, judge_raw, judge...)."""
    check_writable_file(output)
    rows = read_responses(responses)
    cfg = judge_config or JudgeConfig(spec=judge, workers=workers)
    reqs = []
    for row in rows:
        task = responses_task(row)
        reqs.append(JudgeRequest(str(row.get("id", row["_line"])), task.judge_prompt,
                                 judge_fields(task, row, row["model_response"])))
    own_store = store is None
    store = store or Store()
    lost: ItemsFailed | None = None
    try:
        with open_judge(cfg) as the_judge:
            digest = the_judge.digest
            try:
                judged, _ = judge_with_store(the_judge, reqs, store, retry_unparsed, progress)
            except ItemsFailed as e:       # the judge's failures are no verdicts: left out, never cached
                judged, lost = e.results, e
    finally:
        if own_store:
            store.close()
    verdicts = [None if j is None else dict(score=j["score"], parsed=bool(j["parsed"]), judge_raw=j["raw"])
                for j in judged]
    return finish_judged(rows, verdicts, cfg, digest, output, lost, "responses were not judged")


def finish_judged(rows: list[dict], verdicts: list[dict | None], cfg: JudgeConfig, digest: str, output,
                  lost: ItemsFailed | None, missing: str) -> list[dict]:
    """The judged rows (each row with its verdict's fields and the judge's identity; a row without a verdict is
    left out), written to `output`; then, if the judge failed some, the one sentence saying what was saved."""
    out = []
    for row, v in zip(rows, verdicts):
        if v is None:
            continue
        row = {k: val for k, val in row.items() if k != "_line"}
        row.update(v, judge=cfg.spec, judge_digest=digest, judge_prompt_version=cfg.prompt_version)
        out.append(row)
    if out:
        write_jsonl(output, out)
    if lost is not None:
        raise UserError(f"{len(lost.failed)} of {len(rows)} {missing} ({lost.reason.rstrip('.')}); "
                        + (f"{output} holds the {len(out)} judged, " if out else "nothing was written, ")
                        + "and they are saved in the store: rerun the same command to ask only for the others")
    return out


def _keyed_responses(path: str | Path, store: Store, name: str) -> dict[str, str]:
    """{id: response} of a responses file (the book's format, keyed by its `id` or line number) or of a run
    (a rows file written by `run`, or a run id under results/runs/, keyed by item_id)."""
    from harness.pairwise import find_run, read_run, responses_of
    p = Path(path)
    if p.is_file():
        first = next((line for line in read_text(p, name).splitlines() if line.strip()), "")
        if p.suffix != ".jsonl" or '"item_id"' not in first:       # not a run's rows: a responses file
            return {str(r.get("id", r["_line"])): r["model_response"] for r in read_responses(p)}
    return responses_of(read_run(find_run(str(path))), store, name)


def judge_pairwise_file(responses: str | Path, baseline: str | Path, output: str | Path,
                        judge_config: JudgeConfig, store: Store, retry_unparsed: bool = False,
                        progress: bool = True) -> tuple[list[dict], Any]:
    """Pairwise-judge a responses file against a baseline (another responses file, a rows file or a run id),
    item by item (matched by `id`, else by line number), in both orders. Writes `output`: each input row +
    pw_ab, pw_ba, pw_winner, pw_baseline, pw_judge, judge_digest. Returns (rows, PairwiseResult)."""
    from harness.pairwise import pairwise_judge, row_fields
    check_writable_file(output)
    rows = read_responses(responses)
    base = _keyed_responses(baseline, store, f"baseline {baseline}")
    ids = [str(r.get("id", r["_line"])) for r in rows]
    only, bonly = sorted(set(ids) - set(base)), sorted(set(base) - set(ids))
    if only or bonly:
        raise UserError(f"{responses} and the baseline {baseline} cover different items: "
                        + "; ".join(x for x in (
                            f"{len(only)} id(s) only in {responses} ({', '.join(only[:5])})" if only else "",
                            f"{len(bonly)} only in the baseline ({', '.join(bonly[:5])})" if bonly else "") if x)
                        + ". Give both files the same `id` values (or the same rows in the same order)")
    items = []
    for row, i in zip(rows, ids):
        task = responses_task(row)
        fields = {k: v for k, v in judge_fields(task, row, "").items() if k != "response"}
        items.append({"id": i, "task": task.name, **fields})
    lost: ItemsFailed | None = None
    with open_judge(judge_config) as the_judge:
        digest = the_judge.digest
        try:
            res = pairwise_judge(the_judge, items, [r["model_response"] for r in rows], base, store, progress,
                                 retry_unparsed)
        except ItemsFailed as e:         # no verdict for those items: left out, never cached
            res, lost = e.partial, e
    fields = row_fields(res, str(baseline))
    out = finish_judged(rows, [fields.get(i) for i in ids], judge_config, digest, output, lost,
                        "items got no pairwise verdict")
    return out, res


# ---------------------------------------------------------------- CLI

def _judge_or_none(judge: JudgeConfig, no_judge: bool) -> JudgeConfig | None:
    return None if no_judge or judge.spec.strip().lower() in ("", "none", "no") else judge


def run_cmd(run: RunConfig, gen: GenerationConfig, judge: JudgeConfig, engine: EngineConfig) -> int:
    """Generate (or classify), judge and score an eval set; write results/runs/<task>/<run_id>.jsonl and the
    leaderboard. --model openai:<model>@<url> or ollama:<model> generates through that server (--workers
    concurrent requests, --timeout, --retries).

    Generations and judgments are cached in the store: a rerun (or a run killed and restarted) only does
    what is missing.
    """
    import dataclasses
    t0 = time.perf_counter()
    cfg = run
    check_outputs(cfg.store or None)
    jcfg = _judge_or_none(judge, cfg.no_judge)
    gen = dataclasses.replace(gen, do_sample=False)
    st = Store(cfg.store) if cfg.store else None
    incomplete = None
    try:
        res = globals()["run"](cfg.model or None, cfg.adapter or None, cfg.eval_set, jcfg.spec if jcfg else None,
                               cfg.limit, gen.batch_size, gen.max_new_tokens, judge.workers, judge_config=jcfg,
                               store=st, retry_unparsed=cfg.retry_unparsed, decoding=cfg.decoding, gen_config=gen,
                               engine_config=engine, judge_mode=cfg.judge_mode, baseline=cfg.baseline or None,
                               engine_name=cfg.engine)
    except RunIncomplete as e:
        incomplete, res = e, e.result
    finally:
        if st:
            st.close()
    if res.rows:
        _print_summary(res, time.perf_counter() - t0)
    if incomplete is not None:
        raise incomplete          # the CLI prints its sentence and exits 2
    return 0


# the flags of `run` (see harness.cli): GenerationConfig's sampling knobs do not apply to evaluation runs
run_cmd.cli_skip = {"gen": ("do_sample", "temperature", "top_p", "seed", "stop", "ignore_eos", "form",
                            "repetition_penalty", "rhyme", "rhyme_group", "tone"),      # --decoding sets these
                    "engine": ("spec", "host", "batch_size")}       # the engine's spec is --model


def _print_summary(res: RunResult, seconds: float) -> None:
    from harness.tasks import get_task
    task = get_task(res.task)
    rows = res.rows
    n = len(rows)
    print(f"{res.run_id}: {n} items ({res.generated} generated, {max(0, n - res.generated)} from the store; "
          f"{res.judged} sent to the judge) in {seconds:.1f} s"
          + (f"; PARTIAL: {len(res.failed)} of {res.requested} items failed and are not in the rows" if res.failed
             else ""))
    if task.kind == "classify":
        acc = sum(r["pred"] == r["label"] for r in rows) / n
        print(f"  accuracy {acc:.3f}")
    elif rows and rows[0].get("pw_baseline"):
        print("  " + _pairwise_line(rows[0]["judge"], rows[0]["pw_baseline"], rows))
    else:
        judged = [r for r in rows if r["judge"]]
        if judged:
            scores = [r["score"] for r in judged if r["parsed"] and r["score"] is not None]
            mean = f"{sum(scores) / len(scores):.1f}" if scores else "n/a"
            print(f"  judge {judged[0]['judge']}: score mean {mean}, parsed {len(scores)}/{len(judged)}"
                  + ("  (unparsed answers are kept in the store; --retry-unparsed asks again)"
                     if len(scores) < len(judged) else ""))
        summary = task.summarize(rows, n_boot=200)
        shown = [c for c in task.columns() if not c.endswith(("_ci_low", "_ci_high"))][:4]
        print("  " + ", ".join(f"{c} {summary[c]:.3f}" for c in shown if isinstance(summary[c], (int, float))))
    if res.path:
        print(f"  rows: {res.path}")
    for p in res.leaderboards:
        print(f"  leaderboard: {p}")


def _pairwise_line(judge: str, baseline: str, rows: list[dict]) -> str:
    from harness.pairwise import columns_from_rows
    c = columns_from_rows(rows)
    if not c.get("pw_n"):
        return (f"pairwise judge {judge} vs {baseline}: no item has both orders parsed "
                f"({c.get('pw_unparsed', 0)} unparsed verdicts kept; --retry-unparsed asks again)")
    return (f"pairwise judge {judge} vs {baseline}: win rate {c['pw_win_rate']:.3f} "
            f"(95% CI {c['pw_win_ci_low']:.3f}-{c['pw_win_ci_high']:.3f}, ties = 1/2), ties {c['pw_ties']:.3f}, "
            f"position consistency {c['pw_consistency']:.3f}, first position wins {c['pw_first_wins']:.3f}, "
            f"{c['pw_n']} items, {c['pw_unparsed']} unparsed verdicts")


def generate_set_cmd(model: str | None = None, eval_set: str | None = None, adapter: str | None = None,
                     limit: int | None = None, batch_size: int = 16, max_new_tokens: int = 256,
                     output: str | None = None, store: str | None = None) -> int:
    """Generate responses for an eval set (batched, greedy, cached, resumable) and write them as JSONL rows
    with the item's fields and model_response (the book's format; classify sets: pred and p_<label>).

    model: base model (default the embedded smollm2-135m-instruct)
    eval_set: eval set name (see `python -m harness data list`)
    adapter: LoRA adapter name (default: the base alone)
    limit: only the first N items
    batch_size: generation batch size
    max_new_tokens: generation budget per response
    output: the JSONL file to write (default $FTBENCH_CACHE/responses/<run_id>.jsonl)
    store: the store file (default $FTBENCH_CACHE/store.sqlite)
    """
    from harness.data import list_eval_sets, load_eval_set
    if not eval_set:
        raise UserError("--eval-set is required; available eval sets: " + ", ".join(list_eval_sets()))
    if output:
        check_writable_file(output)
    check_outputs(store)
    st = Store(store) if store else None
    t0 = time.perf_counter()
    incomplete = None
    try:
        res = run(model, adapter, eval_set, None, limit, batch_size, max_new_tokens, store=st, write=False)
    except RunIncomplete as e:
        incomplete, res = e, e.result
    finally:
        if st:
            st.close()
    es = load_eval_set(eval_set)
    items = {it["id"]: it for it in es.items}
    out = []
    for r, text in zip(res.rows, res.responses):
        it = items[r["item_id"]]
        base = {"id": it["id"], **{k: v for k, v in it.items() if k != "id"}}
        if "pred" in r:
            base.update({k: v for k, v in r.items() if k == "pred" or k.startswith("p_")})
        else:
            base["model_response"] = text
        out.append(base)
    path = Path(output) if output else cache_dir() / "responses" / f"{res.run_id}.jsonl"
    if out:
        write_jsonl(path, out)
        print(f"{len(out)} responses ({res.generated} generated, {max(0, len(out) - res.generated)} from the store) "
              f"in {time.perf_counter() - t0:.1f} s -> {path}")
    if incomplete is not None:      # the failed items are not in the output (never an empty answer)
        raise UserError(f"{incomplete}; {path if out else 'no output was written'}"
                        + (" holds only the answered items" if out else "")) from None
    return 0


def judge_cmd(responses: str, output: str, judge: JudgeConfig = JudgeConfig(), retry_unparsed: bool = False,
              store: str | None = None, judge_mode: str = "pointwise", baseline: str | None = None) -> int:
    """Score a responses file made elsewhere with a judge (cached, resumable): rows with instruction, input,
    output (reference) and model_response, as in the book's instruction-data-with-response.json.

    responses: a JSON array file or JSONL
    output: the JSONL to write (each row + score, parsed, judge_raw, judge, judge_digest)
    retry_unparsed: ask the judge again for stored answers that held no score
    store: the store file (default $FTBENCH_CACHE/store.sqlite)
    judge_mode: pointwise (a 0-100 score per answer) or pairwise (A/B verdicts vs --baseline, in both orders)
    baseline: pairwise: another responses file with the same ids, a rows file, or a run id under results/runs/
    """
    t0 = time.perf_counter()
    check_judge_mode(judge_mode, baseline)
    st = Store(store) if store else None
    try:
        if judge_mode == "pairwise":
            st = st or Store()                     # closed below, like a store named by --store
            rows, res = judge_pairwise_file(responses, str(baseline), output, judge, st, retry_unparsed)
            print(_pairwise_line(judge.spec, str(baseline), rows))
            print(f"{len(rows)} items, {res.asked} single-order verdicts asked [{time.perf_counter() - t0:.1f} s] "
                  f"-> {output}")
            return 0
        rows = judge_file(responses, output, judge_config=judge, store=st,
                          retry_unparsed=retry_unparsed)
    finally:
        if st:
            st.close()
    scores = [r["score"] for r in rows if r["parsed"]]
    mean = f"{sum(scores) / len(scores):.2f}" if scores else "n/a"
    print(f"Number of scores: {len(scores)} of {len(rows)} (unparsed kept with parsed=false)")
    print(f"Average score: {mean}   [{rows[0]['judge']}, {time.perf_counter() - t0:.1f} s] -> {output}")
    return 0


# the old private names, until harness/bench/generation.py imports the public ones (then delete these two lines)
_generate_with_store, _generate_remote_with_store = generate_with_store, generate_remote_with_store
