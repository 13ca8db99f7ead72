"""Benchmark the demo app: cold start of `python app.py` to a ready page, and time to first token of a chat message.

    python -m harness bench app                    # the embedded default model, port 7861
    python -m harness bench app --model /path/to/model --port 7862

Cold start: from spawning `python app.py` until GET / answers 200 and the Gradio config is served (the app
loads and warms up its model before it listens, so a ready page is a ready model). Time to first token: a
short message through gradio_client's /chat endpoint, from submit until the first update that holds reply
text (the client's view, network and queue included); the server-side model figure (first_token_s of the
transparency info) is printed beside it. Targets on a 2-core CPU: cold start <= 10 s, first token <= 1 s.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.errors import UserError
from harness.paths import PROJECT_ROOT

COLD_START_TARGET = 10.0
TTFT_TARGET = 1.0
MESSAGES = ("Hi!", "What is the capital of France?", "Name a colour.")


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> float:
    """Poll GET / and GET /config until both answer 200; returns the seconds waited."""
    import requests

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise UserError(f"the app exited with code {proc.returncode} before it was ready")
        try:
            if requests.get(url, timeout=2).status_code == 200 and \
                    requests.get(url.rstrip("/") + "/config", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise UserError(f"the app at {url} was not ready after {timeout:.0f} s")


def first_token(client, message: str, max_new_tokens: int = 32, adapter: str = "base"
                ) -> tuple[float, float | None, str]:
    """(client-side seconds to the first reply text, server-side model first_token_s, the reply)."""
    t0 = time.perf_counter()
    job = client.submit(message, [], "", adapter, 0.0, 0.9, max_new_tokens, 0, 1.1, api_name="/chat")
    ttft = None
    for update in job:
        history = update[0]
        reply = _text(history[-1]["content"]) if history and history[-1]["role"] == "assistant" else ""
        if reply and ttft is None:
            ttft = time.perf_counter() - t0
    out = job.outputs()[-1]
    reply = _text(out[0][-1]["content"])
    return (ttft if ttft is not None else float("nan")), (out[3] or {}).get("first_token_s"), reply


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(c.get("text", "") for c in content if isinstance(c, dict))


def _cold_start(cmd: list[str], url: str) -> tuple[float, subprocess.Popen, str]:
    log = tempfile.NamedTemporaryFile("w+", prefix="ftbench-app-", suffix=".log", delete=False)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(url, proc)
    except UserError as e:
        _stop(proc)
        log.flush()
        tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-15:]
        raise UserError(f"{e}; log {log.name}:\n" + "\n".join(tail)) from None
    finally:
        log.close()
    return time.perf_counter() - t0, proc, log.name


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_app(model: str | None = None, port: int = 7861, runs: int = 3, adapter: str = "smollm2-135m-alpaca") -> int:
    """Cold start of `python app.py` to a ready page, and time to first token of a short chat message.

    model: base model for the app (default: the embedded one)
    port: port the app listens on (127.0.0.1)
    runs: cold starts to time (the app is started this many times; the median is compared with the target)
    adapter: a chat adapter to time the first token with as well (after the base model; "" to skip)
    """
    from gradio_client import Client

    import socket
    if runs < 1:
        raise UserError("--runs must be at least 1")
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise UserError(f"port {port} is already in use (another app?): stop it or pass --port")
    cmd = [sys.executable, str(PROJECT_ROOT / "app.py"), "--port", str(port)]
    if model:
        cmd += ["--model", model]
    url = f"http://127.0.0.1:{port}/"
    colds: list[float] = []
    for i in range(runs):
        cold, proc, log = _cold_start(cmd, url)
        colds.append(cold)
        if i < runs - 1:
            _stop(proc)
    try:   # the first tokens: right after the last cold start, in the still fresh process
        client = Client(url, verbose=False)
        base_runs = [first_token(client, m) for m in MESSAGES]
        tuned_runs = [first_token(client, m, adapter=adapter) for m in MESSAGES] if adapter else []
    finally:
        _stop(proc)
    cold = statistics.median(colds)
    print(f"app: {' '.join(cmd[1:])}  (last log: {log})")
    print(f"cold start to a ready page: {cold:6.2f} s   target <= {COLD_START_TARGET:.0f} s   "
          f"{'OK' if cold <= COLD_START_TARGET else 'MISSED'}   (median of {runs}: "
          f"{', '.join(f'{c:.2f}' for c in colds)} s; the model is loaded and warmed up before the page answers)")
    for label, got in (("base", base_runs), (adapter, tuned_runs)):
        if not got:
            continue
        ttfts = [r[0] for r in got]
        server = [r[1] for r in got if r[1] is not None]
        median = statistics.median(ttfts)
        print(f"time to first token ({label}): {median:6.2f} s   target <= {TTFT_TARGET:.0f} s   "
              f"{'OK' if median <= TTFT_TARGET else 'MISSED'}   (median of {len(got)}: "
              f"{', '.join(f'{t:.2f}' for t in ttfts)} s; model alone: "
              f"{', '.join(f'{t:.2f}' for t in server) or 'n/a'} s)")
        for m, (_, _, reply) in zip(MESSAGES, got):
            print(f"  {m!r} -> {reply[:70]!r}")
    return 0
