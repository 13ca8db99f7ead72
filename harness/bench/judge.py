"""bench judge: judge throughput against the fake Ollama server, then the in-process judges.

    python -m harness bench judge                      # 40 items, answers in 0.2 s; then 16 offline items
    python -m harness bench judge --offline-items 0    # the fake-server part only (about 30 s)

Pointwise: 1 vs N workers, cold vs warm cache (the store answers a rerun: 0 requests). Pairwise (both orders of
each item): the same, then the in-process log-prob pairwise judge vs the generating pointwise judge on the same
committed instructions_own answers (items/s). Moved here from harness/evaluate.py and harness/pairwise.py so that
no product module imports the fakes (harness/testing/).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from harness.evaluate import judge_with_store
from harness.io import iter_jsonl
from harness.judge import DEFAULT_OFFLINE_JUDGE, JudgeConfig, JudgeRequest, judge_many, open_judge
from harness.pairwise import pairwise_judge, read_run
from harness.testing import fake_pairwise_answer
from harness.paths import PROJECT_ROOT
from harness.store import Store
from harness.testing.fake_ollama import FakeOllama


def bench_judge(n: int = 40, delay: float = 0.2, workers: int = 4, offline_items: int = 16) -> int:
    """Judge throughput against the fake Ollama server (answers in `delay` s): 1 vs N workers, cold vs warm
    cache, pointwise then pairwise (both orders); then the in-process log-prob pairwise judge vs the generating
    pointwise judge on the same committed answers (items/s ratio).

    n: items to judge
    delay: seconds the fake server takes per answer
    workers: the parallel run's workers
    offline_items: items for the in-process comparison (0 skips it; it loads the embedded model)
    """
    reqs = [JudgeRequest(f"bench-{i}", "chat", {
        "instruction": f"Rewrite sentence {i} in the passive voice.", "input": f"The cat chased mouse number {i}.",
        "output": f"Mouse number {i} was chased by the cat.", "response": f"Mouse {i} was chased by the cat."})
        for i in range(n)]

    def timed(fake: FakeOllama, store: Store, w: int) -> tuple[float, int]:
        before = fake.count("/api/chat")
        t0 = time.perf_counter()
        with open_judge(JudgeConfig("ollama:llama3", host=fake.url, workers=w)) as j:
            rows, _ = judge_with_store(j, reqs, store, progress=False)
        assert len(rows) == n
        return time.perf_counter() - t0, fake.count("/api/chat") - before

    with FakeOllama(delay=delay) as fake, tempfile.TemporaryDirectory() as tmp:
        with Store(Path(tmp) / "one.sqlite") as s1:
            t1, r1 = timed(fake, s1, 1)
        with Store(Path(tmp) / "many.sqlite") as s4:
            t4, r4 = timed(fake, s4, workers)
            tw, rw = timed(fake, s4, workers)
    par, warm = t1 / t4, t4 / tw
    print(f"judge benchmark: {n} items, fake Ollama answering in {delay:.2f} s")
    print(f"  1 worker,  cold: {t1:7.3f} s  ({n / t1:6.1f} items/s, {r1} requests)")
    print(f"  {workers} workers, cold: {t4:7.3f} s  ({n / t4:6.1f} items/s, {r4} requests)")
    print(f"  {workers} workers, warm: {tw:7.3f} s  ({n / tw:6.1f} items/s, {rw} requests)")
    print(f"  {workers} workers vs 1: {par:.2f}x faster (target >= 3.5x: {'met' if par >= 3.5 else 'NOT met'})")
    print(f"  warm vs cold:      {warm:.0f}x faster (target >= 50x: {'met' if warm >= 50 else 'NOT met'})")
    return bench_pairwise(n=n, delay=delay, workers=workers, offline_items=offline_items)


def _bench_items(n: int) -> tuple[list[dict], list[str], list[str]]:
    items = [{"id": f"bench-{i}", "task": "chat", "instruction": f"Rewrite sentence {i} in the passive voice.",
              "input": f"The cat chased mouse number {i}.", "output": f"Mouse number {i} was chased by the cat."}
             for i in range(n)]
    return (items, [f"Mouse {i} was chased by the cat." for i in range(n)],
            [f"The cat chased mouse {i}." for i in range(n)])


def bench_pairwise(n: int = 40, delay: float = 0.2, workers: int = 4, offline_items: int = 16) -> int:
    """Pairwise judge throughput: 4 workers vs 1 against the fake Ollama (answers in `delay` s), a warm re-run
    (0 requests), then the in-process log-prob pairwise judge vs the generating pointwise judge (items/s).

    n: items for the fake-server part (2 requests each: both orders)
    delay: seconds the fake server takes per answer
    workers: the parallel run's workers
    offline_items: items for the in-process comparison (0 skips it; it loads the embedded model)
    """
    items, ra, rb = _bench_items(n)
    print(f"pairwise benchmark: {n} items x 2 orders, fake Ollama answering in {delay:.2f} s")
    with FakeOllama(delay=delay, default=fake_pairwise_answer) as fake, tempfile.TemporaryDirectory() as tmp:
        def timed(store: Store, w: int) -> tuple[float, int]:
            before = fake.count("/api/chat")
            t0 = time.perf_counter()
            with open_judge(JudgeConfig("ollama:llama3", host=fake.url, workers=w)) as j:
                pairwise_judge(j, items, ra, rb, store, progress=False)
            return time.perf_counter() - t0, fake.count("/api/chat") - before
        with Store(Path(tmp) / "one.sqlite") as s1:
            t1, r1 = timed(s1, 1)
        with Store(Path(tmp) / "many.sqlite") as s4:
            t4, r4 = timed(s4, workers)
            tw, rw = timed(s4, workers)
    par = t1 / t4
    print(f"  1 worker,  cold: {t1:7.3f} s  ({n / t1:6.2f} items/s, {r1} requests)")
    print(f"  {workers} workers, cold: {t4:7.3f} s  ({n / t4:6.2f} items/s, {r4} requests)")
    print(f"  {workers} workers, warm: {tw:7.3f} s  ({rw} requests)")
    print(f"  {workers} workers vs 1: {par:.2f}x (target >= 3.5x: {'met' if par >= 3.5 else 'NOT met'}); "
          f"warm re-run sent {rw} requests (target 0: {'met' if rw == 0 else 'NOT met'})")
    if offline_items > 0:
        _bench_offline(offline_items)
    return 0


def _bench_offline(k: int) -> None:
    """Log-prob pairwise vs generating pointwise on the same committed instructions_own answers."""
    runs = PROJECT_ROOT / "results" / "runs" / "chat"
    base = read_run(runs / "instructions_own__smollm2-135m-instruct__base__transformers-smollm2-135m-instruct.jsonl")
    alp = read_run(runs / "instructions_own__smollm2-135m-instruct__smollm2-135m-alpaca__"
                          "transformers-smollm2-135m-instruct.jsonl")
    own = {str(r["id"]): r for _, r in iter_jsonl(PROJECT_ROOT / "eval_sets" / "own" / "instructions_own.jsonl")}
    base, alp = base[:k], {r["item_id"]: r["response"] for r in alp}
    items = [{"task": "chat", **own[r["item_id"]]} for r in base]
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "s.sqlite") as store:
        t0 = time.perf_counter()
        judge = open_judge(JudgeConfig(DEFAULT_OFFLINE_JUDGE))
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        pairwise_judge(judge, items, [alp[r["item_id"]] for r in base], [r["response"] for r in base], store,
                       progress=False)
        t_pair = time.perf_counter() - t0
        reqs = [JudgeRequest(r["item_id"], "chat", {**{f: own[r["item_id"]].get(f, "") for f in
                                                        ("instruction", "input", "output")},
                                                     "response": r["response"]}) for r in base]
        t0 = time.perf_counter()
        judge_many(judge, reqs, progress=False)
        t_point = time.perf_counter() - t0
    print(f"offline judge {DEFAULT_OFFLINE_JUDGE} on {k} committed instructions_own items (model load {load:.1f} s):")
    print(f"  log-prob pairwise (both orders, 1 forward pass per batch): {t_pair:6.1f} s  ({k / t_pair:5.2f} items/s)")
    print(f"  generating pointwise (one response per item):              {t_point:6.1f} s  ({k / t_point:5.2f} items/s)")
    print(f"  log-prob pairwise vs generating pointwise: {(k / t_pair) / (k / t_point):.2f}x items/s "
          f"(100 items pairwise ~ {100 * t_pair / k:.0f} s)")
