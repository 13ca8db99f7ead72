"""Token-by-token decoding for the app: one prompt through one or more adapters in ONE batch, streamed.

    from harness.app.streaming import stream_rows
    for texts in stream_rows(state, lm, prompt, [None, "smollm2-135m-alpaca"], cfg, stop_event, stats):
        print(texts)          # [base text so far, adapter text so far]

Why not generation.stream / generate_pair: the app must interleave work. This loop takes the model's lock for
ONE forward pass at a time and, between two tokens, lets short work (classify, AppState.short_work) run first,
so a 1 s spam check never waits behind a 60 s Compare. Each row gets its adapter through peft's mixed-adapter
`adapter_names` on every forward pass (no global adapter switch, so the short work in between may use any
adapter). Greedy output equals generate_batch / generate_pair token for token (same logits processors in the
same order: repetition penalty, the form constraint, then temperature and top-p when sampling).
A row's text never ends in half a character: a trailing U+FFFD (a multi-byte character cut by the token
budget) is held back while streaming and dropped at the end.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from harness.errors import UserError
from harness.generation import eos_ids, rules_kw

BROKEN = "\ufffd"
CACHE_ARG = "cache"          # transformers 5.x: the KV cache argument (was past_key_values)


def clean_tail(text: str) -> str:
    """Drop the replacement characters a byte-level tokenizer leaves when a character is cut mid-way."""
    return text.rstrip(BROKEN)


def throttled(updates, every: float = 0.1):
    """Pass on a stream of page updates (each a whole snapshot) at most once per `every` seconds: the first at
    once (time to first token), then the newest one when `every` has passed, and always the last.

    Why: the tiny test models and llama.cpp write a token in a few ms, and every update re-renders the whole
    conversation in the browser. On 2 cores the browser and the model share the CPU, so hundreds of updates a
    second slowed the generation itself and let updates pile up. Nothing is lost: a skipped update is an older
    snapshot of what the next one shows."""
    last, pending, held = 0.0, False, None
    try:
        for item in updates:
            now = time.monotonic()
            if now - last >= every:
                last, pending = now, False
                yield item
            else:
                pending, held = True, item
        if pending:
            yield held
    finally:
        close = getattr(updates, "close", None)
        if close is not None:        # closed early (Stop, the page went away): the generation halts too
            close()


def run_ahead(updates):
    """Run a stream of page updates (each a whole snapshot) in its own thread and pass on the newest one each time
    the consumer asks for the next: the model never waits while an update travels to the client. Measured through
    /chat on 2 cores: each update costs Gradio ~25 ms, which halved llama.cpp's ~48 tokens/s when the generator
    waited for it. The first and the last snapshot are always passed on; an error in the stream is raised here
    after the snapshots before it; closing this closes the stream at its next step (Stop still works at once)."""
    cond = threading.Condition()
    box = {"item": None, "n": 0, "taken": 0, "done": False, "error": None, "closing": False}

    def produce():
        try:
            for item in updates:
                with cond:
                    box["item"], box["n"] = item, box["n"] + 1
                    cond.notify_all()
                    if box["n"] == 1:        # the first snapshot is always passed on: wait until it is taken
                        cond.wait_for(lambda: box["taken"] >= 1 or box["closing"])
                    if box["closing"]:
                        break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            box["error"] = e
        finally:
            close = getattr(updates, "close", None)
            if close is not None:
                close()
            with cond:
                box["done"] = True
                cond.notify_all()

    threading.Thread(target=produce, name="ftbench-stream", daemon=True).start()
    seen = 0
    try:
        while True:
            with cond:
                cond.wait_for(lambda: box["n"] > seen or box["done"])
                if box["n"] > seen:
                    seen, item = box["n"], box["item"]
                    box["taken"] = seen
                    cond.notify_all()
                elif box["error"] is not None:
                    raise box["error"]
                else:
                    return
            yield item
    finally:
        with cond:
            box["closing"] = True
            cond.notify_all()


def _processors(lm, cfg):
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopPLogitsWarper)
    procs = LogitsProcessorList()
    if cfg.repetition_penalty and cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if cfg.form:
        from harness.forms import FormConstraint
        procs.append(FormConstraint(lm.tokenizer, cfg.form, min(eos_ids(lm)), **rules_kw(cfg)))
    if cfg.do_sample:
        procs.append(TemperatureLogitsWarper(cfg.temperature))
        procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def stream_rows(state, lm, prompt: str, adapters: list[str | None], cfg, stop_event: threading.Event | None = None,
                stats: list | None = None) -> Iterator[list[str]]:
    """Yield the texts of every row (one per adapter; None = the base) after each new token.

    stats: a list of harness.generation.StreamStats, one per row, filled in as it runs (finish_reason stop |
    length | cancelled). Setting stop_event halts the model at its next step."""
    import torch
    from peft import PeftModel

    from harness.generation import StreamStats

    stop_event = stop_event or threading.Event()
    n = len(adapters)
    stats = stats if stats is not None else [StreamStats() for _ in adapters]
    tok = lm.tokenizer
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False)
    prompt_ids = enc["input_ids"].to(lm.device)
    width = prompt_ids.shape[1]
    if width + cfg.max_new_tokens > lm.context_length:
        raise UserError(f"the prompt has {width} tokens; with {cfg.max_new_tokens} new tokens it exceeds the context "
                        f"of {lm.name} ({lm.context_length}): shorten it or lower max new tokens")
    with lm.lock:
        for a in adapters:
            if a:
                info = lm.attach(a)
                if info.kind != "causal":
                    raise UserError(f"adapter {a!r} is a classifier; generation needs a chat or poem adapter")
    names = [a or "__base__" for a in adapters] if isinstance(lm.model, PeftModel) else None
    stops = tuple(dict.fromkeys(cfg.stop + lm.stop_strings))
    eos = eos_ids(lm)
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
    procs = _processors(lm, cfg)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    for s in stats:
        s.prompt_tokens = width
    all_ids = prompt_ids.repeat(n, 1)
    new: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    texts = [""] * n
    past = None
    active = list(range(n))          # the rows still in the batch (original indices)
    # Finished rows are dropped from the batch (and its KV cache) unless the form constraint keeps per-row state
    # by batch position: Compare's base + adapter then costs one row's steps once the shorter answer has ended.
    compact = not cfg.form
    t0 = time.perf_counter()
    cur = all_ids
    try:
        for step in range(cfg.max_new_tokens):
            if stop_event.is_set():
                break
            if state is not None and state.short_waiting:
                state.wait_for_short_work()             # short work first, without holding the model's lock
            with lm.lock, torch.inference_mode():
                kw = dict(input_ids=cur, attention_mask=torch.ones_like(all_ids), use_cache=True, logits_to_keep=1)
                if past is not None:
                    kw[CACHE_ARG] = past
                if names:
                    kw["adapter_names"] = names
                out = lm.model(**kw)
                past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                compact = compact and hasattr(past, "batch_select_indices")
                scores = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
                scores = procs(all_ids, scores)
                if cfg.do_sample:
                    probs = torch.softmax(scores, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
                else:
                    nxt = scores.argmax(-1)
            elapsed = time.perf_counter() - t0
            ids = nxt.tolist()
            for j, r in enumerate(active):
                if done[r]:
                    ids[j] = pad
                    continue
                st = stats[r]
                st.forward_passes += 1
                st.seconds = elapsed
                if st.first_token_seconds is None:
                    st.first_token_seconds = elapsed
                if ids[j] in eos:
                    done[r], st.finish_reason = True, "stop"
                    continue
                new[r].append(ids[j])
                st.new_tokens = len(new[r])
                text, stopped = _cut(tok.decode(new[r], skip_special_tokens=True), stops)
                texts[r] = text
                if stopped:
                    done[r], st.finish_reason = True, "stop"
            if all(done):
                yield [t[:-1] if t.endswith(BROKEN) else t for t in texts]
                break
            keep = [j for j, r in enumerate(active) if not done[r]]
            if compact and len(keep) < len(active):      # a finished row leaves the batch: later steps are cheaper
                index = torch.tensor(keep, device=lm.device)
                past.batch_select_indices(index)
                all_ids, active, ids = all_ids[index], [active[j] for j in keep], [ids[j] for j in keep]
                if names:
                    names = [names[j] for j in keep]
            cur = torch.tensor(ids, device=lm.device).unsqueeze(1)
            all_ids = torch.cat([all_ids, cur], dim=1)
            yield [t[:-1] if t.endswith(BROKEN) else t for t in texts]
    finally:
        elapsed = time.perf_counter() - t0
        for r, st in enumerate(stats):
            if not st.finish_reason:
                st.finish_reason = ("cancelled" if stop_event.is_set() or len(new[r]) < cfg.max_new_tokens
                                    else "length")
            if not st.seconds:
                st.seconds = elapsed
    yield [clean_tail(t) for t in texts]
