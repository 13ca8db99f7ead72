"""The Compare tab: one prompt through the base and a fine-tuned adapter in ONE mixed-adapter batch, both sides
streamed at once, with offline figures, judge scores when a judge answers, and blind human votes.

    from harness.app.state import AppState, Sampling
    from harness.app import compare as C
    state = AppState()
    C.start(state, "s1", "Name three colors.", "smollm2-135m-alpaca", Sampling(temperature=0))
    for view in C.stream(state, "s1"):          # {"left": ..., "right": ..., "figures": [...], "info": {...}}
        pass
    C.judge(state, "s1")                         # judge scores (outside the model queue), or why there are none
    C.vote(state, "s1", "left")                  # a blind vote (harness.votes), then the names are revealed

Blind mode shuffles the sides and hides which is which until the vote. Offline figures need no judge: the
length of each answer, ROUGE-L against the reference when the prompt is an eval-set item with one (the
example prompts are), and the form check when a poem form is asked for.
"""

import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from harness.app.state import (BASE, TRAIN_HINT, AppState, Sampling, model_memory, require_text, short_name,
                               stats_info)
from harness.errors import UserError
from harness.io import hide_paths

VOTE_BUTTONS = {"left": "left better", "right": "right better", "tie": "tie", "both_bad": "both bad"}
AUTO, NO_FORM = "auto (from the prompt)", "none"
NO_REFERENCE = "(no reference answer: judge the response on its own merits)"


def compare_choices(state: AppState) -> list[str]:
    return [a.name for a in state.adapters("causal")]


def pair_choices(state: AppState) -> list[tuple[str, str]]:
    """(label, value) of every checkpoint the A and B pickers offer: the base in use, the other bases that load
    here, every chat/poem adapter (on any base) and the checkpoints in the checkpoints root."""
    from harness.models import base_status, resolve_base
    out = [(f"{short_name(state.base_name)} (base in use)", BASE)]
    for name in state.allowed_bases():
        try:
            spec = resolve_base(name)
        except UserError:
            continue
        if spec.name != state.base_name and base_status(spec) in ("cached", "local", "needs conversion"):
            out.append((f"{short_name(name)} (base)", name))
    out += [(a.name if a.base == state.base_name else f"{a.name} (on {short_name(a.base)})", a.name)
            for a in state.all_adapters()
            if not a.problem and a.kind == "causal" and getattr(a, "method", "") != "label_text"]
    out += [(f"{rel} (checkpoints folder)", rel) for rel in state.root_checkpoints()]
    return out


def default_pair(state: AppState) -> tuple[str, str | None]:
    """The pickers' first values: the base in use against its first adapter, else the first other checkpoint."""
    found = compare_choices(state)
    if found:
        return BASE, found[0]
    others = [v for _, v in pair_choices(state) if v != BASE]
    return BASE, (others[0] if others else None)


def checkpoint(state: AppState, value: Any) -> dict:
    """A picker value -> {"value", "model" (the base's resolved name), "adapter" (None: the model alone), "label"
    (what the page shows: never a server path)}. A value is the base in use ("base"), a base the app allows, an
    adapter name (on any base) or a folder/file inside the checkpoints root (state.root_checkpoint)."""
    import os

    from harness.models import resolve_base
    v = str(value or "").strip()
    if v.lower() in ("", BASE, "none"):
        return {"value": BASE, "model": state.base_name, "adapter": None, "label": short_name(state.base_name)}
    if v in state.allowed_bases():
        return {"value": v, "model": resolve_base(v).name, "adapter": None, "label": short_name(v)}
    pathlike = any(c in v for c in "/\\:~") or ".." in v or v.endswith((".gguf", ".pth"))
    info = None if pathlike else next((a for a in state.all_adapters() if a.name == v), None)
    if info is not None and info.base != state.base_name and not info.problem and info.kind == "causal":
        try:
            model = resolve_base(info.base).name
        except UserError:
            from harness.models import base_not_found
            raise base_not_found(info) from None
        return {"value": v, "model": model, "adapter": info.name,
                "label": f"{short_name(model)} + {info.name}"}
    if pathlike or os.path.lexists(state.checkpoints_root / v):
        path = state.root_checkpoint(v)      # a .pth converts when it loads (in the queue), not here
        return {"value": v, "model": path if path.endswith(".pth") else resolve_base(path).name, "adapter": None,
                "label": v}
    name = state.resolve_adapter(v, "causal")      # an adapter of the base in use (or the sentence why not)
    return {"value": v, "model": state.base_name, "adapter": name, "label": f"{short_name(state.base_name)} + {name}"}


def classic(rec: dict) -> bool:
    """Is this comparison today's: a base alone (A, left) against one of its adapters (B, right)?"""
    a, b = rec["sides"]["base"], rec["sides"]["tuned"]
    return a["adapter"] is None and a["model"] == b["model"] and b["adapter"] is not None


def add_checkpoint(state: AppState, name: Any) -> tuple[list[tuple[str, str]], str, str]:
    """A visitor adds a folder or file inside the checkpoints root: (the pickers' choices, its value, a sentence).
    Nothing outside the root is reachable, and a refusal never echoes the path."""
    v = str(name or "").strip()
    state.root_checkpoint(v)
    choices = pair_choices(state)
    if v not in [c for _, c in choices]:
        choices.append((f"{v} (checkpoints folder)", v))
    return choices, v, f"Added {v!r}: it is picked as B; it loads when you compare."


def task_of(name: str | None):
    """The registered task (harness.tasks) of that name, or None."""
    from harness.tasks import get_task
    try:
        return get_task(str(name or ""))
    except UserError:
        return None


def adapter_task(state: AppState, name: str | None) -> str:
    """The task an adapter was trained for (its card's task; "chat" for an unknown adapter)."""
    info = next((a for a in state.adapters("causal") if a.name == name), None)
    return str(info.task) if info is not None else "chat"


def keeps_forms(state: AppState, adapter: str | None) -> bool:
    """Does the adapter's task decode under a form constraint (its task declares the "form" decoding)?"""
    task = task_of(adapter_task(state, adapter))
    return task is not None and "form" in task.decodings


def eval_items() -> dict[str, dict]:
    """Prompt text -> {task, eval_set, item_id, reference, form, lang, item} for the own eval sets of every
    generate task in the registry (task.card_eval_sets); a missing set gives no examples, typed prompts work."""
    from harness.data import load_eval_set
    from harness.tasks import all_tasks
    out: dict[str, dict] = {}
    for task in all_tasks():
        if task.kind != "generate":
            continue
        for name in task.card_eval_sets:
            try:
                items = load_eval_set(name).items
            except UserError:
                continue
            for it in items:
                ref = it.get(task.target_field) if task.target_field else ""
                out.setdefault(task.request_text(it), {
                    "task": task.name, "eval_set": name, "item_id": str(it["id"]),
                    "reference": ref if isinstance(ref, str) else "", "form": str(it.get("form", "") or ""),
                    "lang": str(it.get("lang", "") or ""), "item": dict(it)})
    return out


def examples(n: int = 4) -> dict[str, tuple[str, list[str]]]:
    """task -> (eval set, a few example prompts), from the own eval sets of the registry's generate tasks."""
    out: dict[str, tuple[str, list[str]]] = {}
    for text, it in eval_items().items():
        _, found = out.setdefault(it["task"], (it["eval_set"], []))
        if len(found) < n:
            found.append(text)
    return out


def form_for(state: AppState, prompt: str, adapter: str | None, choice: str = AUTO) -> str:
    """The classical form to keep while decoding: a chosen one, or (auto) the form a poem prompt names when the
    adapter is a poem adapter; "" for none."""
    from harness.metrics import FIXED_FORMS
    if choice in FIXED_FORMS:
        return choice
    if choice == NO_FORM or not keeps_forms(state, adapter):
        return ""
    return next((f for f in FIXED_FORMS if f in prompt), "")


def start(state: AppState, session: str, prompt: Any, adapter: str | None = None, sampling: Sampling = Sampling(),
          form: str = AUTO, blind: bool = False, against: str | None = None) -> dict:
    """Check the request and queue it (shown at once as waiting); returns the comparison's record. `adapter` is
    the B (right, "tuned") checkpoint, `against` the A (left, "base") one: default the base in use. Any two
    checkpoints (see checkpoint()); adapters on one base run in one mixed-adapter batch, two models side by side."""
    text = require_text(prompt, "prompt", state.limits.message_chars, "type an instruction to compare")
    found = compare_choices(state)
    a_given = str(against or "").strip().lower() not in ("", BASE, "none")
    if str(adapter or "").strip().lower() in (BASE, "none") and not a_given:
        raise UserError(f"Compare sets the base against a fine-tuned adapter, and {adapter!r} is the base itself: "
                        f"choose one of {', '.join(found) or 'none yet'}, or a checkpoint")
    if not str(adapter or "").strip():            # not given (an API client): the first one, named in the headings
        adapter = default_pair(state)[1]
        if adapter is None:
            raise UserError(f"no fine-tuned chat/poem adapter for base {state.base_name} to compare with: {TRAIN_HINT}")
    side_a, side_b = checkpoint(state, against), checkpoint(state, adapter)
    if (side_a["model"], side_a["adapter"]) == (side_b["model"], side_b["adapter"]):
        raise UserError("A and B are the same checkpoint: choose two different ones")
    if side_a["model"] != side_b["model"] and state.max_models < 2:
        raise UserError("this app holds one model at a time (--max-models 1), so it compares adapters of one base "
                        "only: pick two adapters of the same base, or restart it with --max-models 2")
    name = side_b["adapter"] or side_a["adapter"]
    base_left = secrets.randbelow(2) == 0 if blind else True
    if blind:
        sampling = blind_sampling(sampling)
    rec = {"job": state.enqueue("compare", session), "prompt": text, "adapter": side_b["adapter"],
           "sampling": sampling, "form": form_for(state, text, name, form), "blind": bool(blind),
           "base_left": base_left, "model": side_a["model"], "sides": {"base": side_a, "tuned": side_b},
           "texts": {"base": "", "tuned": ""}, "status": "waiting", "vote": None,
           "item": eval_items().get(text), "task": adapter_task(state, name), "scores": None}
    state.session_data(session)["compare"] = rec
    return rec


BLIND_TEMPERATURE = 0.7


def blind_sampling(sampling: Sampling) -> Sampling:
    """The decoding of a blind comparison: sampled (at least BLIND_TEMPERATURE) with a fresh random seed, so its
    answers are new to the voter. Greedy answers are the same every time: any open comparison or chat of the same
    prompt just before would tell which side is which. The seed and temperature are shown after the vote and
    stored with it."""
    return replace(sampling, temperature=max(sampling.temperature, BLIND_TEMPERATURE),
                   seed=secrets.randbelow(2 ** 31))


def side_names(rec: dict, revealed: bool | None = None) -> tuple[str, str]:
    """The headings of the left and right answers: names, or "Answer 1/2" while a blind comparison is unvoted."""
    if revealed is None:
        revealed = not rec["blind"] or rec.get("vote") is not None
    if not revealed:
        return "Answer 1 (hidden until you vote)", "Answer 2 (hidden until you vote)"
    if "sides" not in rec or classic(rec):
        base, tuned = f"Base: {short_name(rec['model'])}", f"Fine-tuned: {rec['adapter']}"
    else:
        base, tuned = f"A: {rec['sides']['base']['label']}", f"B: {rec['sides']['tuned']['label']}"
    return (base, tuned) if rec["base_left"] else (tuned, base)


def view(state: AppState, rec: dict | None) -> dict:
    """What the tab shows for a comparison record (left/right texts, headings, figures, status)."""
    if rec is None:
        return {"left": "", "right": "", "headings": ("Left", "Right"), "figures": ("", ""), "status": "",
                "info": None}
    if rec["status"] == "waiting":
        n = state.ahead(rec["job"])
        wait = "⏳ waiting: next in line" if n == 0 else f"⏳ waiting for {n} requests ahead" if n else "⏳ waiting"
        return {"left": wait, "right": wait, "headings": side_names(rec), "figures": ("", ""), "status": wait,
                "info": None}
    base, tuned = rec["texts"]["base"], rec["texts"]["tuned"]
    left, right = (base, tuned) if rec["base_left"] else (tuned, base)
    figs = rec.get("figures") or {}
    fl, fr = (figs.get("base", ""), figs.get("tuned", "")) if rec["base_left"] else (figs.get("tuned", ""),
                                                                                      figs.get("base", ""))
    writing = "✍ both sides are writing (one batch)"
    if rec.get("on_server"):
        writing = f"✍ both sides are writing (two concurrent requests to {rec.get('on_server')})"
    if rec.get("pair"):
        writing = "✍ both sides are writing (two models, side by side)"
    if rec.get("on_llama"):
        writing = "✍ both sides are writing (llama.cpp: two contexts on one base)"
    status = {"writing": writing, "done": "done", "stopped": "⏹ stopped by you",
              "loading": "⏳ loading the models (first use of a checkpoint: seconds to a minute)",
              "failed": f"⚠ {rec.get('error', '')}"}.get(rec["status"], rec["status"])
    if rec.get("memory") and rec["status"] != "failed":
        status += f" · {rec['memory']}"
    if rec.get("engine_notice") and rec["status"] != "failed":
        status += f" · ℹ {rec['engine_notice']}"
    if rec["blind"] and rec["status"] != "failed":
        status += (f" · blind: sampled at temperature {rec['sampling'].temperature:g} with a fresh seed, so these "
                   "answers are new to you (the seed shows after your vote)")
    return {"left": left, "right": right, "headings": side_names(rec), "figures": (fl, fr), "status": status,
            "info": rec.get("info")}


def stream(state: AppState, session: str) -> Iterator[dict]:
    """Write both sides of this session's waiting comparison at once, streamed: yields view() dicts. On llama.cpp
    (the app's engine, both sides the base it holds or its adapters) two contexts of that base, one thread each;
    on a server engine (--engine openai:/ollama:) two concurrent requests; otherwise in process on transformers,
    one mixed-adapter batch (two models: side by side). A fallback says why in rec["engine_notice"]."""
    rec = state.session_data(session).get("compare")
    if rec is None or rec["status"] != "waiting":
        yield view(state, rec)
        return
    if not state.queued(rec["job"]):        # its page went away while it waited
        rec["status"] = "stopped"
        yield view(state, rec)
        return
    state.start_job(rec["job"])
    try:
        a, b = rec["sides"]["base"], rec["sides"]["tuned"]
        engine, rec["engine_notice"] = llama_route(state, rec)
        if engine is not None:                        # llama.cpp: two contexts on the one base it holds
            yield from _llama_stream(state, session, rec, engine)
        elif a["model"] == b["model"]:                # adapters on one base: one mixed-adapter batch
            lm = state.model_for(a["model"])
            srv, notice = compare_route(state, rec) if classic(rec) else (None, "")
            rec["engine_notice"] = rec["engine_notice"] or notice
            if srv is not None:
                yield from _server_stream(state, session, rec, srv, lm)
            else:
                yield from _batch_stream(state, session, rec, lm)
        else:                                         # two models: both held (LRU), written side by side
            rec["status"], rec["pair"] = "loading", True
            yield view(state, rec)
            try:
                lms = [state.model_for(a["model"], keep=(b["model"],)),
                       state.model_for(b["model"], keep=(a["model"],))]
            except Exception as e:  # noqa: BLE001 - one sentence, never the server's folders
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise UserError(state.hide_root(f"could not load {a['label']} / {b['label']}: {reason}")) from None
            rec["memory"] = model_memory(lms)
            yield from _pair_stream(state, session, rec, lms)
    except UserError as e:
        rec["status"], rec["error"] = "failed", str(e)
    finally:
        state.finish_job(rec["job"])
        if rec["status"] in ("waiting", "writing"):
            rec["status"] = "stopped"
    yield view(state, rec)


def llama_route(state: AppState, rec: dict):
    """(engine, "") when the app runs on llama.cpp and both sides are the base its engine holds or adapters of it
    that llama.cpp can run (exported to GGUF on first use); (None, notice) when the comparison must run on
    transformers instead (notice: one line, why); (None, "") when the app is not on llama.cpp."""
    if state.engine != "llama.cpp":
        return None, ""
    engine = state.llama_engine()
    if engine is None:
        return None, f"Compare on transformers: {state.engine_note}"
    sides = (rec["sides"]["base"], rec["sides"]["tuned"])
    if any(side["model"] != engine.base for side in sides):
        return None, hide_paths(f"Compare on transformers: llama.cpp holds {short_name(engine.base)} only, not "
                                f"{' / '.join(side['label'] for side in sides if side['model'] != engine.base)}")
    try:
        with engine.lock:
            for side in sides:
                if side["adapter"]:
                    engine.add_adapter(side["adapter"])      # exports the adapter's GGUF once
    except (UserError, RuntimeError, OSError, ValueError) as e:
        return None, hide_paths(f"Compare on transformers: {str(e).splitlines()[0][:300]}")
    return engine, ""


def _llama_stream(state: AppState, session: str, rec: dict, engine) -> Iterator[dict]:
    """Both sides on llama.cpp: two contexts of the one base, one adapter each (engine.decode_alone), decoded at
    once by merge_sides with half the engine's threads each, streamed: yields view() dicts. A form chosen is
    kept by its grammar (state.form_grammar: the form only, as the transformers path keeps it). No
    transformers model is loaded here. Stop (one event) halts both; short work (a classify) runs between two
    tokens, as on the transformers path."""
    from harness.app.state import engine_token_count, form_grammar, form_token_budget
    from harness.generation import StreamStats

    count = engine_token_count(engine)
    sides = (rec["sides"]["base"], rec["sides"]["tuned"])
    s = rec["sampling"]
    grammar, budget = None, s.max_new_tokens
    if rec["form"]:
        grammar = form_grammar(s, rec["form"])
        budget = form_token_budget(count, rec["form"])
    with engine.lock:
        ids = engine.render([{"role": "user", "content": rec["prompt"]}], budget)
    rendered = engine.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
    stats = [StreamStats(), StreamStats()]
    threads = max(1, engine.n_threads // len(sides))
    rec["status"], rec["on_llama"] = "writing", True
    t0 = time.perf_counter()
    with state.running(session) as (event, _):
        def producer(i: int):
            def texts() -> Iterator[str]:
                text = ""
                for piece in engine.decode_alone(ids, sides[i]["adapter"], budget, s.temperature, s.top_p, s.seed,
                                                 s.repetition_penalty, grammar, threads, event, stats[i]):
                    text += piece
                    yield text
                    if state.short_waiting:           # short work (classify) first, as on transformers
                        state.wait_for_short_work()
            return texts

        yield from merged_views(state, rec, [producer(0), producer(1)], event, "the comparison failed on llama.cpp")
        stopped = getattr(event, "requested", False)
    rec["status"] = "stopped" if stopped else "done"
    rec["texts"] = {k: v.rstrip("\ufffd") for k, v in rec["texts"].items()}
    rec["figures"] = {k: figures(rec["texts"][k], rec, count) for k in ("base", "tuned")}
    rec["info"] = {"engine": "llama.cpp", "model": engine.base, "adapter": rec["adapter"],
                   "adapters": [side["adapter"] for side in sides], "prompt": rendered, "one_batch": False,
                   "contexts": 2, "threads_per_side": threads, "form_constrained": rec["form"] or False,
                   "grammar": bool(grammar), "seconds": round(time.perf_counter() - t0, 3),
                   "base": stats_info(stats[0]), "tuned": stats_info(stats[1]), "sampling": s.as_dict()}


def _batch_stream(state: AppState, session: str, rec: dict, lm) -> Iterator[dict]:
    """Both sides in one mixed-adapter batch in process (peft adapter_names), streamed: yields view() dicts."""
    from harness.app.state import form_token_budget
    from harness.app.streaming import stream_rows
    from harness.generation import StreamStats

    rendered = lm.render_instruction(rec["prompt"])
    cfg = rec["sampling"].config()
    if rec["form"]:
        cfg = replace(cfg, form=rec["form"], max_new_tokens=form_token_budget(lm.tokenizer, rec["form"]))
    stats = [StreamStats(), StreamStats()]
    rec["status"] = "writing"
    t0 = time.perf_counter()
    with state.running(session) as (event, _):
        gen = stream_rows(state, lm, rendered, [rec["sides"]["base"]["adapter"], rec["adapter"]], cfg, event, stats)
        try:
            for base, tuned in gen:
                rec["texts"] = {"base": base, "tuned": tuned}
                yield view(state, rec)
        finally:
            gen.close()
        stopped = getattr(event, "requested", False)
    seconds = time.perf_counter() - t0
    rec["status"] = "stopped" if stopped else "done"
    rec["figures"] = {side: figures(rec["texts"][side], rec, lm.count_tokens) for side in ("base", "tuned")}
    rec["info"] = {"model": lm.name, "adapter": rec["adapter"], "prompt": rendered, "one_batch": True,
                   "form_constrained": rec["form"] or False, "seconds": round(seconds, 3),
                   "base": stats_info(stats[0]), "tuned": stats_info(stats[1]),
                   "sampling": rec["sampling"].as_dict()}


def merged_views(state: AppState, rec: dict, producers: list, event, failed: str) -> Iterator[dict]:
    """Both sides through merge_sides under the session's Stop event (a side's error halts the other): yields
    view() dicts as either grows; an error that is not already one sentence becomes "<failed> (<kind>: <first
    line>)", never a traceback."""
    def halt() -> None:
        event.requested = True
        event.set()

    try:
        for base, tuned in merge_sides(producers, halt):
            rec["texts"] = {"base": base, "tuned": tuned}
            yield view(state, rec)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - one sentence, never a traceback
        raise UserError(f"{failed} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})") from None


def merge_sides(producers: list, halt) -> Iterator[list[str]]:
    """Run each side's producer (a function returning an iterator of that side's text so far) in a thread of its
    own and yield [left text, right text] whenever either grows, until both end. A side that fails halts the
    other (halt()) and its error is raised here once both threads ended; closed half-way (Stop is the producers'
    own business; this is the page going away) both sides halt and their threads are joined, so no decoding
    outlives the comparison. The one merge loop of Compare's paths (two models, a server, llama.cpp)."""
    import queue
    import threading

    updates: queue.Queue = queue.Queue()

    def side(i: int) -> None:
        try:
            for text in producers[i]():
                updates.put((i, text, None))
            updates.put((i, None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
            updates.put((i, None, e))

    threads = [threading.Thread(target=side, args=(i,), daemon=True, name=f"ftbench-compare-side-{i}")
               for i in range(len(producers))]
    for t in threads:
        t.start()
    texts, ended, error, finished = [""] * len(producers), 0, None, False
    try:
        while ended < len(producers):
            i, text, err = updates.get()
            if text is None:
                ended += 1
                if err is not None and error is None:
                    error = err
                    halt()                        # the comparison fails: the other side need not finish
                continue
            texts[i] = text
            yield list(texts)
        finished = True
    finally:
        if not finished:                          # closed half-way (the page went away): both sides halt
            halt()
        for t in threads:
            t.join(timeout=30)
    if error is not None:
        raise error


def _pair_stream(state: AppState, session: str, rec: dict, lms: list) -> Iterator[dict]:
    """Two different models (bases, or a full fine-tune and its base), each with its own prompt rendering, written
    at the same time in two threads (torch releases the GIL: on 2 cores the pair costs about the slower side),
    merged as they stream (merge_sides): yields view() dicts. Stop (one event) halts both."""
    from harness.app.state import form_token_budget
    from harness.app.streaming import stream_rows
    from harness.generation import StreamStats
    sides = [rec["sides"]["base"], rec["sides"]["tuned"]]
    rendered = [lm.render_instruction(rec["prompt"]) for lm in lms]
    cfgs = []
    for lm in lms:
        cfg = rec["sampling"].config()
        if rec["form"]:
            cfg = replace(cfg, form=rec["form"], max_new_tokens=form_token_budget(lm.tokenizer, rec["form"]))
        cfgs.append(cfg)
    stats = [StreamStats(), StreamStats()]
    rec["status"] = "writing"
    t0 = time.perf_counter()
    with state.running(session) as (event, _):
        def producer(i: int):
            def texts() -> Iterator[str]:
                gen = stream_rows(state, lms[i], rendered[i], [sides[i]["adapter"]], cfgs[i], event, [stats[i]])
                try:
                    for row in gen:
                        yield row[0]
                finally:
                    gen.close()
            return texts

        yield from merged_views(state, rec, [producer(0), producer(1)], event, "the comparison failed")
        stopped = getattr(event, "requested", False)
    rec["status"] = "stopped" if stopped else "done"
    rec["memory"] = model_memory(lms)
    rec["figures"] = {s: figures(rec["texts"][s], rec, lm.count_tokens) for s, lm in zip(("base", "tuned"), lms)}
    rec["info"] = {"models": [sd["label"] for sd in sides], "adapters": [sd["adapter"] for sd in sides],
                   "prompt": rendered[0] if rendered[0] == rendered[1] else "\n\n---\n\n".join(rendered),
                   "one_batch": False, "side_by_side": True, "form_constrained": rec["form"] or False,
                   "seconds": round(time.perf_counter() - t0, 3), "memory": rec["memory"],
                   "base": stats_info(stats[0]), "tuned": stats_info(stats[1]), "sampling": rec["sampling"].as_dict()}


def compare_route(state: AppState, rec: dict):
    """(server, "") when the app's engine is a server (--engine openai:/ollama:) that serves both sides (its
    model and the adapter as a model id) and no form is kept; (None, notice) when the comparison must run in
    process; (None, "") on the in-process engines (llama.cpp: llama_route)."""
    from harness.app.server import is_server_spec, server_route
    if not is_server_spec(state.engine):
        return None, ""
    srv, notice = server_route(state.engine, rec["adapter"], rec["form"])
    return (srv, "") if srv is not None else (None, f"Compare: {notice} (one mixed-adapter batch)")


def _server_stream(state: AppState, session: str, rec: dict, srv, lm) -> Iterator[dict]:
    """Both sides as two concurrent requests to the server (its base model and the adapter's model id), merged
    as they stream (merge_sides): yields view() dicts. Stop ends both; a failing side fails the comparison in one
    sentence."""
    from harness.app.server import server_stream
    turns = [{"role": "user", "content": rec["prompt"]}]
    stats: list = [None, None]
    shown = [""]

    def producer(i: int, adapter: str | None):
        def texts() -> Iterator[str]:
            for text, st, sent, _, _ in server_stream(state, srv, turns, None, adapter, rec["sampling"], session):
                stats[i], shown[0] = st, sent
                yield text
        return texts

    rec["status"], rec["on_server"] = "writing", srv.config.spec
    rec["model"] = srv.config.spec           # the base side is the server's model: headings and votes name it
    t0 = time.perf_counter()
    try:
        for base, tuned in merge_sides([producer(0, None), producer(1, rec["adapter"])],
                                       lambda: state.stop(session)):
            rec["texts"] = {"base": base, "tuned": tuned}
            yield view(state, rec)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - one sentence, never a traceback
        raise UserError(f"{srv.where} failed during the comparison ({type(e).__name__}: {str(e)[:200]})") from None
    stopped = any(st is not None and st.finish_reason == "cancelled" for st in stats)
    rec["status"] = "stopped" if stopped else "done"
    rec["figures"] = {side_: figures(rec["texts"][side_], rec, lm.count_tokens) for side_ in ("base", "tuned")}
    rec["info"] = {"model": srv.model, "adapter": rec["adapter"], "prompt": shown[0], "engine": srv.config.spec,
                   "one_batch": False, "concurrent_requests": 2, "form_constrained": False,
                   "seconds": round(time.perf_counter() - t0, 3), "base": stats_info(stats[0]),
                   "tuned": stats_info(stats[1]), "sampling": rec["sampling"].as_dict()}


def figures(text: str, rec: dict, count_tokens=None) -> str:
    """Offline figures of one answer: length (in tokens too when given the model's count_tokens), ROUGE-L vs the
    eval-set reference, the form check."""
    from harness.metrics import rouge_l
    parts = [f"{len(text.split())} words, {len(text)} characters" +
             (f", {count_tokens(text)} tokens" if count_tokens is not None and text else "")]
    item = rec.get("item") or {}
    if item.get("reference"):
        parts.append(f"ROUGE-L {rouge_l(text, item['reference']):.3f} vs the reference of "
                     f"{item['eval_set']}/{item['item_id']}")
    form = rec.get("form") or item.get("form", "")
    if form:
        from harness.app.poem import form_report, rules_report
        lang = item.get("lang") or "zh"
        try:
            parts.append(form_report(text, form, lang)["summary"].replace("**", ""))
            rules = rules_report(text, form, lang)[0]
            if rules:
                parts.append(rules.replace("**", ""))
        except (UserError, ValueError):
            pass
    return " · ".join(parts)


def judge(state: AppState, session: str, offline: bool = False) -> tuple[str, str, str]:
    """Judge scores for both sides of the last comparison -> (left text, right text, notice). Runs outside the
    model queue, with the judge timeout; a judge that is down or slow is one sentence, never a failure, and the
    notice then offers the offline judge (offline=True: judge with state.offline_judge, in process)."""
    rec = state.session_data(session).get("compare")
    if rec is None or rec["status"] not in ("done", "stopped") or not (rec["texts"]["base"] or rec["texts"]["tuned"]):
        if offline:
            raise UserError("compare two answers first: the judge scores a finished comparison")
        return "", "", ""
    spec = state.offline_judge if offline else state.judge
    scores, notice = judge_pair(state, rec["task"], judge_item(rec), [rec["texts"]["base"], rec["texts"]["tuned"]],
                                spec)
    rec["scores"] = scores
    sb, st = score_text(scores[0]), score_text(scores[1])
    return (sb, st, notice) if rec["base_left"] else (st, sb, notice)


def offers_offline_judge(state: AppState, notice: str) -> bool:
    """Show the "Score with the offline judge" button: the app's judge gave no scores and is not that judge."""
    return notice.startswith("No judge scores") and state.judge != state.offline_judge


def judge_item(rec: dict) -> dict:
    """The item a judge sees for a comparison: the eval-set item when the prompt is one, else the typed prompt
    in the task's instruction field, with the asked-for form and language and no reference."""
    from harness.io import has_cjk
    task = task_of(rec["task"]) or task_of("chat")
    item = dict((rec.get("item") or {}).get("item") or {task.instruction_field: rec["prompt"]})
    if task.target_field and not item.get(task.target_field):
        item[task.target_field] = NO_REFERENCE
    if "lang" in task.fields and not item.get("lang"):
        item["lang"] = "zh" if has_cjk(rec["prompt"]) else "en"
    if "form" in task.fields and not item.get("form"):
        item["form"] = rec.get("form") or "(as requested)"
    return item


def judge_pair(state: AppState, task_name: str, item: dict, responses: list[str], spec: str | None = None
               ) -> tuple[list[float | None], str]:
    """Judge scores (0-100) for each response when the judge (`spec`, default the app's) answers; otherwise
    Nones and a plain notice."""
    from harness.evaluate import judge_fields
    from harness.judge import JudgeConfig, JudgeRequest, judge_many, open_judge
    spec = spec or state.judge
    task = task_of(task_name) or task_of("chat")
    none = [None] * len(responses)
    offer = (f" Or score them with the offline judge ({state.offline_judge}, a small model on this CPU: a smoke "
             "test, not a verdict)." if spec != state.offline_judge else "")
    by = f" from the offline judge {spec}" if spec == state.offline_judge and spec != state.judge else ""
    try:
        cfg = JudgeConfig(spec, host=state.judge_host, connect_timeout=1.0, retries=0,
                          timeout=state.judge_timeout, workers=1)
        with open_judge(cfg, lm=state.lm) as j:
            reqs = [JudgeRequest(f"compare-{i}", task.judge_prompt or "chat", judge_fields(task, item, r))
                    for i, r in enumerate(responses)]
            scores = [x.score for x in judge_many(j, reqs, progress=False)]
    except UserError as e:
        from harness.app.widgets import ui_sentence
        return none, f"No judge scores{by}: {ui_sentence(str(e).split(' [')[0])} The offline figures above need no judge.{offer}"
    except Exception as e:  # noqa: BLE001 - a judge problem must never break the comparison itself
        return none, f"No judge scores{by}: the judge failed ({type(e).__name__}: {str(e)[:200]}).{offer}"
    if any(s is None for s in scores):
        return scores, f"Judge {spec}: some answers held no score (shown as —)."
    return scores, f"Scores 0-100 by {spec} (temperature 0, fixed seed)."


def score_text(score: float | None) -> str:
    return "Judge score: —" if score is None else f"Judge score: {score:g} / 100"


# ---------------------------------------------------------------- blind votes (harness.votes)

def votes_module():
    """harness.votes, or None while it is not installed in this checkout."""
    try:
        from harness import votes
        return votes
    except ImportError:
        return None


VOTING_MISSING = "Voting is not available yet (harness.votes is not in this version of ftbench)."


def vote(state: AppState, session: str, choice: str) -> str:
    """Store a vote on the last comparison (harness.votes.cast_vote) and reveal the sides; returns a message."""
    votes = votes_module()
    if votes is None:
        return VOTING_MISSING
    rec = state.session_data(session).get("compare")
    if rec is None or rec["status"] != "done":
        raise UserError("compare two answers first: a vote needs a finished comparison")
    if not rec["blind"]:
        raise UserError("votes count only when the names were hidden: tick Blind, compare again, then vote")
    if rec.get("vote"):
        raise UserError(f"you already voted on this comparison (vote {rec['vote']}); undo it below to vote again")
    if choice not in VOTE_BUTTONS:
        raise UserError(f"choice must be one of {', '.join(VOTE_BUTTONS)}, got {choice!r}")
    left, right = view(state, rec)["left"], view(state, rec)["right"]
    item = rec.get("item") or {}
    seed = rec["sampling"].seed
    # A = the fine-tuned side, B = the base
    try:
        a_side, b_side = rec["sides"]["tuned"], rec["sides"]["base"]     # by checkpoint: model + adapter
        vid = votes.cast_vote(state.store, session=session, prompt=rec["prompt"], response_left=left, response_right=right,
                              side_a="right" if rec["base_left"] else "left", model_a=a_side["model"],
                              adapter_a=a_side["adapter"] or "", model_b=b_side["model"],
                              adapter_b=b_side["adapter"] or "", seed_a=seed,
                              seed_b=seed, choice=choice, task=rec["task"], eval_set=item.get("eval_set", ""),
                              item_id=item.get("item_id", ""), checkpoint_a=weights_id(a_side),
                              checkpoint_b=weights_id(b_side))
        note = "counted"
    except UserError as e:               # VoteKept: stored for review, not counted
        vid, note = getattr(e, "vote_id", "") or (e.args[1] if len(e.args) > 1 else ""), str(e)
    rec["vote"] = vid or "review"
    lname, rname = side_names(rec, revealed=True)
    return (f"Vote stored ({VOTE_BUTTONS[choice]}; {note}). Left was **{lname}**, right was **{rname}** "
            f"(both sampled at temperature {rec['sampling'].temperature:g}, seed {seed}).")


def weights_id(side: dict) -> str:
    """A side's checkpoint by content (models.checkpoint_hash; remembered per file, so hashing is once); "" when
    its weights cannot be read (the vote is still stored, by name)."""
    from harness.models import checkpoint_hash
    try:
        return checkpoint_hash(side["model"], side["adapter"] or "")
    except (UserError, OSError):
        return ""


def vote_table(state: AppState, session: str, limit: int = 50) -> list[list]:
    """This browser session's recent votes as table rows: id, when, choice, winner, status, prompt. Every
    visitor sees, reviews and undoes only their own votes; the tally is everyone's."""
    votes = votes_module()
    if votes is None:
        return []
    rows = votes.list_votes(state.store, limit=limit, session=session)
    return [[r["id"], str(r.get("created_at", ""))[:19], r.get("choice", ""), r.get("winner", ""),
             r.get("status", ""), str(r.get("prompt", ""))[:80]] for r in rows]


def vote_tally(state: AppState) -> str:
    """One line: how many votes (of every visitor) are counted and how they split, plus those kept for review
    or undone."""
    votes = votes_module()
    if votes is None:
        return ""
    t = votes.tally(state.store)
    if not any(t.values()):
        return "**Votes counted: 0.** Tick Blind, compare, then vote."
    extra = ", ".join(f"{t[s]} {s}" for s in ("review", "undone") if t.get(s))
    return (f"**Votes counted (every visitor): {t['counted']}** (fine-tuned better {t['a']}, base better {t['b']}, "
            f"tie {t['tie']}, both bad {t['both_bad']})" + (f"; not counted: {extra}" if extra else "") + ".")


def undo(state: AppState, session: str, vote_id: Any) -> str:
    """Undo one of this session's votes (another session's: refused, nothing changed)."""
    votes = votes_module()
    if votes is None:
        return VOTING_MISSING
    vid = str(vote_id or "").strip()
    if not vid:
        raise UserError("pick a vote to undo: click its row in the table, or paste its id")
    if not votes.undo_vote(state.store, vid, session=session):
        raise UserError(f"no counted vote {vid[:40]!r} to undo (already undone, or not a vote id)")
    return f"Vote {vid} undone (kept for review, no longer counted)."


def agreement(state: AppState) -> str:
    """The leaderboard tab's "judges vs your votes" section (harness.agreement), as Markdown."""
    try:
        from harness.agreement import agreement_summary
    except ImportError:
        return "Judges vs the votes: not available yet (harness.agreement is not in this version of ftbench)."
    results = agreement_summary(state.store)
    votes = votes_module()
    n = votes.tally(state.store)["counted"] if votes is not None else 0
    if not results:
        return (f"**Judges vs the votes:** {n} vote(s) counted; no judge has judged the same pairs yet. Vote in the "
                "Compare tab; the app's owner then runs a judge on the same items.")
    return "**Judges vs the votes (every visitor's)**\n\n" + "\n".join(f"- {r['sentence']}" for r in results)


def compare_once(state: AppState, prompt: Any, adapter: str | None = None, sampling: Sampling = Sampling(),
                 session: str = "api", judge_it: bool = True, against: str | None = None) -> tuple:
    """One whole comparison for API clients, not blind: (A's answer, B's answer, A's score, B's score, judge notice,
    rendered prompt, info). A (`against`) defaults to the base in use, B (`adapter`) to its first adapter."""
    start(state, session, prompt, adapter, sampling, against=against)
    last = None
    for last in stream(state, session):
        pass
    rec = state.session_data(session)["compare"]
    if rec["status"] == "failed":
        raise UserError(rec.get("error", "the comparison failed"))
    sb, st, notice = judge(state, session) if judge_it else ("Judge score: —", "Judge score: —", "Judge not asked.")
    info = dict(rec.get("info") or {})
    rendered = info.pop("prompt", "")
    if not rec["base_left"]:
        sb, st = st, sb
    return rec["texts"]["base"], rec["texts"]["tuned"], sb, st, notice, rendered, info


# ---------------------------------------------------------------- the tab's layout and events

def compare_note(state: AppState) -> str:
    """The note above the pickers: what there is to compare, and the memory when more than one model is held."""
    held = state.held_models()
    memory = f"Models held (at most {state.max_models}): {model_memory(held)}." if len(held) > 1 else ""
    if compare_choices(state) or len(pair_choices(state)) > 1:
        return memory
    return ("No fine-tuned chat/poem adapter for this base yet, so there is nothing to compare with: "
            f"{TRAIN_HINT}, or copy a full fine-tune folder into the app's checkpoints folder.")


def shown_outputs(v: dict) -> tuple:
    """A view() as the tab's seven outputs: left, right, their headings and figures, the status."""
    return (v["left"], v["right"], f"### {v['headings'][0]}", f"### {v['headings'][1]}", v["figures"][0],
            v["figures"][1], v["status"])


def vote_updates(state: AppState, session: str, choice: str) -> tuple:
    """A vote as the tab shows it: (left heading, right heading, your votes, the tally, message)."""
    says = vote(state, session, choice)
    v = view(state, state.session_data(session).get("compare"))
    return (f"### {v['headings'][0]}", f"### {v['headings'][1]}", vote_table(state, session) or None,
            vote_tally(state), says)


def build(state: AppState, ui: dict) -> None:
    """The Compare tab; adds cmp_adapter, cmp_note, cmp_btn, cmp_shown, cmp_view and votes_view to ui."""
    import gradio as gr

    from harness.app.state import task_hints
    from harness.app.streaming import throttled
    from harness.app.widgets import GENERATE, JUDGE, guard, sampling_controls, session, stopper, transparency
    from harness.metrics import FIXED_FORMS
    choices = pair_choices(state)
    first_a, first_b = default_pair(state)
    note = gr.Markdown(compare_note(state), elem_id="compare-note")
    with gr.Row():
        prompt = gr.Textbox(label="Instruction", lines=3, scale=3, placeholder=task_hints("chat").get("placeholder", ""),
                            elem_id="compare-input")
        with gr.Column(scale=2):
            against = gr.Dropdown(choices, value=first_a, label="A (left): base, adapter or checkpoint",
                                  allow_custom_value=True, elem_id="compare-a")
            adapter = gr.Dropdown(choices, value=first_b, label="B (right): fine-tuned adapter or checkpoint",
                                  allow_custom_value=True, elem_id="compare-adapter")
            form = gr.Dropdown([AUTO, NO_FORM, *FIXED_FORMS], value=AUTO,
                               label="Classical form kept while decoding (poem adapters)", elem_id="compare-form",
                               visible=keeps_forms(state, first_b))
            blind = gr.Checkbox(value=False, label="Blind: shuffle the sides and hide the names until you vote "
                                "(sampled with a fresh seed, so the answers are new to you)", elem_id="compare-blind")
    with gr.Accordion("Add a checkpoint from the app's checkpoints folder", open=False, elem_id="compare-add"):
        with gr.Row():
            add_name = gr.Textbox(label="Folder or file name inside the checkpoints folder (a full fine-tune "
                                  "folder, a .gguf or a LLMs-from-scratch .pth)", scale=3, elem_id="compare-add-name")
            add_btn = gr.Button("Add as B", scale=1, elem_id="compare-add-button")
    with gr.Row():
        for task, (eval_set, prompts) in examples().items():
            gr.Examples([[p] for p in prompts], inputs=[prompt], label=f"Examples ({task}, from the eval set "
                        f"{eval_set}: ROUGE-L against its reference where it has one)", examples_per_page=4)
    with gr.Accordion("Sampling (both sides use the same settings and seed)", open=False):
        sampling = sampling_controls(Sampling(temperature=0.0), "compare", state.limits)
    with gr.Row():
        button = gr.Button("Compare", variant="primary", elem_id="compare-button", interactive=len(choices) > 1)
        stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
    status = gr.Markdown(elem_id="compare-status")
    with gr.Row():
        with gr.Column(min_width=280):
            left_head = gr.Markdown("### Left", elem_id="compare-left-head")
            left = gr.Textbox(label="Left answer", lines=8, interactive=False, elem_id="compare-left")
            left_fig = gr.Markdown(elem_id="compare-left-figures")
            left_score = gr.Markdown("Judge score: —", elem_classes="score", elem_id="compare-left-score")
        with gr.Column(min_width=280):
            right_head = gr.Markdown("### Right", elem_id="compare-right-head")
            right = gr.Textbox(label="Right answer", lines=8, interactive=False, elem_id="compare-right")
            right_fig = gr.Markdown(elem_id="compare-right-figures")
            right_score = gr.Markdown("Judge score: —", elem_classes="score", elem_id="compare-right-score")
    judge_notice = gr.Markdown(elem_id="compare-judge")
    offline_btn = gr.Button(f"Score with the offline judge ({state.offline_judge})", size="sm", visible=False,
                            elem_id="compare-offline-judge")
    with gr.Row():
        vote_btns = {c: gr.Button(label, size="sm", elem_id=f"vote-{c}") for c, label in VOTE_BUTTONS.items()}
    vote_msg = gr.Markdown(VOTING_MISSING if votes_module() is None else "", elem_id="vote-message")
    tally = gr.Markdown(vote_tally(state), elem_id="votes-tally")
    with gr.Accordion("Your votes (this browser session's): review and undo", open=False):
        votes_table = gr.Dataframe(headers=["id", "when", "choice", "winner", "status", "prompt"], value=None,
                                   interactive=False, wrap=True, elem_id="votes-table")
        with gr.Row():
            undo_id = gr.Textbox(label="Vote id to undo (click a row)", scale=3, elem_id="vote-undo-id")
            undo_btn = gr.Button("Undo this vote", scale=1, elem_id="vote-undo")
    rendered, stats = transparency("compare")
    notice = gr.Markdown(elem_id="compare-notice", elem_classes="notice")
    shown = [left, right, left_head, right_head, left_fig, right_fig, status]

    def start_fn(text, a_name, name, form_, blind_, temperature, top_p, max_new_tokens, seed, repetition_penalty,
                 request: gr.Request):
        rec = start(state, session(request), text, name,
                    state.sampling(temperature, top_p, max_new_tokens, seed, repetition_penalty), form_, bool(blind_),
                    against=a_name)
        return (*shown_outputs(view(state, rec)), "Judge score: —", "Judge score: —", "", "", "")

    def stream_fn(request: gr.Request):
        for v in throttled(stream(state, session(request))):     # the notice stays start_fn's
            info = dict(v["info"] or {})
            yield (*shown_outputs(v), info.pop("prompt", gr.skip()), info or gr.skip(), gr.skip())

    def judge_fn(offline: bool):
        def run(request: gr.Request):
            left_, right_, says = judge(state, session(request), offline)
            return left_, right_, gr.update(visible=not offline and offers_offline_judge(state, says)), says
        return run

    def vote_fn(choice):
        def run(request: gr.Request):
            return vote_updates(state, session(request), choice)
        return run

    def undo_fn(vote_id, request: gr.Request):
        says = undo(state, session(request), vote_id)
        return vote_table(state, session(request)) or None, vote_tally(state), says

    def votes_fn(request: gr.Request):
        return vote_table(state, session(request)) or None, vote_tally(state)

    def pick_vote(evt: gr.SelectData):
        row = evt.row_value if hasattr(evt, "row_value") else None
        return row[0] if row else gr.skip()

    adapter.change(lambda a: gr.update(visible=keeps_forms(state, a)), adapter, form, queue=False,
                   api_visibility="private")
    def add_fn(name):
        found, value, says = add_checkpoint(state, name)
        return gr.update(choices=found), gr.update(choices=found, value=value), says

    add_btn.click(guard(add_fn, 3), add_name, [against, adapter, notice], queue=False, api_visibility="private")
    ev = button.click(guard(start_fn, len(shown) + 5), [prompt, against, adapter, form, blind, *sampling],
                      [*shown, left_score, right_score, judge_notice, vote_msg, notice], queue=False,
                      api_visibility="private")
    ev = ev.then(guard(stream_fn, len(shown) + 3), None, [*shown, rendered, stats, notice], show_progress="hidden",
                 api_visibility="private", **GENERATE)
    ev.then(guard(judge_fn(False), 4), None, [left_score, right_score, offline_btn, judge_notice],
            show_progress="minimal", api_visibility="private", **JUDGE)
    offline_btn.click(guard(judge_fn(True), 4), None, [left_score, right_score, offline_btn, judge_notice],
                      show_progress="minimal", api_visibility="private", **GENERATE)
    stop.click(stopper(state), None, None, queue=False, api_visibility="private")
    for choice, btn in vote_btns.items():
        btn.click(guard(vote_fn(choice), 5), None, [left_head, right_head, votes_table, tally, vote_msg],
                  queue=False, api_visibility="private")
    votes_table.select(pick_vote, None, undo_id, queue=False, api_visibility="private")
    undo_btn.click(guard(undo_fn, 3), undo_id, [votes_table, tally, vote_msg], queue=False, api_visibility="private")

    def api_compare(instruction, adapter, temperature, top_p, max_new_tokens, seed, repetition_penalty,
                    request: gr.Request):
        return compare_once(state, instruction, adapter,
                            state.sampling(temperature, top_p, max_new_tokens, seed, repetition_penalty),
                            session(request) + "-api")

    api = gr.Button(visible=False)
    api.click(guard(api_compare), [prompt, adapter, *sampling],
              [left, right, left_score, right_score, judge_notice, rendered, stats], api_name="compare", **GENERATE)
    ui.update(cmp_adapter=adapter, cmp_against=against, cmp_note=note, cmp_btn=button, cmp_shown=shown, cmp_view=shown_outputs,
              votes_view=(votes_fn, [votes_table, tally]))
