"""Benchmark the demo app as a user meets it: the page on an empty and a warm cache, chat time to first token,
a spam check while another tab runs Compare, Compare's wall time vs one side alone, and --engine llama.cpp.

    python -m harness bench app                   # every figure below (about 5 minutes on 2 cores)
    python -m harness bench app --skip-empty-cache --skip-llamacpp --port 7862

Every figure is taken from outside, as a browser or gradio_client sees the app (network and queues included):
- page up: from spawning `python app.py` until GET / and /config answer 200; model ready: until the console
  says "model ... ready" (the page is up before that: the model loads, or on an empty cache converts, in the
  background while the header says "preparing the model"). The empty cache is a fresh $FTBENCH_CACHE.
- chat time to first token: a short message through /chat, from submit to the first update holding reply text.
- classify latency: /classify alone (median of 3), then while a Compare of 256 tokens is writing (median of 3).
- Compare wall time: /compare (base + adapter in one mixed-adapter batch, greedy) vs /chat with the same
  instruction on each side alone (greedy, same settings: the texts are checked to be the same).
- llama.cpp: tokens/s of one chat stream on the base (server-side, the transparency info; up to 128 new tokens) in
  `python app.py --engine llama.cpp` vs the default app, same prompt, greedy, repetition penalty 1 on both; and the rate after the
  first token (the tokens/s count the prompt processing, which dominates a short answer).
Targets (issue 14 / 15): empty-cache page <= 20 s, warm page <= 10 s, TTFT <= 1 s, classify during Compare
<= 2x alone, Compare <= 1.3x one side, llama.cpp >= 4x the default chat's tokens/s.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.errors import UserError
from harness.paths import PROJECT_ROOT

TARGETS = {"empty_page": 20.0, "warm_page": 10.0, "ttft": 1.0, "classify_ratio": 2.0, "compare_ratio": 1.3,
           "llamacpp_ratio": 4.0}
MESSAGES = ("Hi!", "What is the capital of France?", "Name a colour.")
SPAM = "URGENT! You have won a 1,000 GBP prize. Claim now at http://win-prize.top/claim"
LONG_PROMPT = "Write a long essay about the history of the sea, with many details."
COMPARE_PROMPT = "Give three tips for staying healthy."
# the speed prompt: one stream on the base, long enough that the rate is decoding, not the prompt's processing
# (the alpaca adapter answers it in ~14 tokens, which made the figure mostly llama.cpp's first token)
SPEED_PROMPT = "Explain in a few sentences why the sky is blue."
SPEED_TOKENS = 128


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


READY = re.compile(r"INFO model \S+ ready")       # app.py's log line once the model is loaded and warm


def wait_log(log: Path, needle: re.Pattern, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if needle.search(log.read_text(errors="replace")):
            return
        if proc.poll() is not None:
            raise UserError(f"the app exited with code {proc.returncode} before its log said "
                            f"{needle.pattern!r} ({log})")
        time.sleep(0.1)
    raise UserError(f"the app's log {log} did not say {needle.pattern!r} within {timeout:.0f} s")


class App:
    """`python app.py ARGS` in a subprocess, timed from spawn to a page (page_s) and to a ready model (ready_s)."""

    def __init__(self, port: int, args: list[str] = (), env: dict | None = None):
        self.url = f"http://127.0.0.1:{port}/"
        self.cmd = [sys.executable, str(PROJECT_ROOT / "app.py"), "--port", str(port), *args]
        self.log = Path(tempfile.mkstemp(prefix="ftbench-app-", suffix=".log")[1])
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise UserError(f"port {port} is already in use (another app?): stop it or pass --port")
        t0 = time.perf_counter()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            wait_ready(self.url, self.proc, timeout=300)
            self.page_s = time.perf_counter() - t0
            wait_log(self.log, READY, self.proc)
            self.ready_s = time.perf_counter() - t0
        except BaseException as e:
            self.stop()
            if isinstance(e, UserError):
                tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
                raise UserError(f"{e}; log {self.log}:\n" + "\n".join(tail)) from None
            raise
        text = self.log.read_text(errors="replace")
        self.first_line = (text.splitlines() or [""])[0]
        found = re.search(r"torch threads: (\d+)", text)
        self.threads = int(found.group(1)) if found else None

    def client(self):
        from gradio_client import Client
        return Client(self.url, verbose=False)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def chat_args(message: str, adapter: str = "base", max_new_tokens: int = 32, repetition_penalty: float = 1.1):
    return (message, [], "", adapter, 0.0, 0.9, max_new_tokens, 0, repetition_penalty)


def first_token(client, message: str, max_new_tokens: int = 32, adapter: str = "base",
                repetition_penalty: float = 1.1) -> tuple[float, dict, str]:
    """(client-side seconds to the first reply text, the final transparency info, the reply)."""
    t0 = time.perf_counter()
    job = client.submit(*chat_args(message, adapter, max_new_tokens, repetition_penalty), api_name="/chat")
    ttft = None
    for update in job:
        history = update[0]
        if ttft is None and history and history[-1]["role"] == "assistant" and _text(history[-1]["content"]):
            ttft = time.perf_counter() - t0
    out = job.outputs()[-1]
    return (ttft if ttft is not None else float("nan")), (out[3] or {}), _text(out[0][-1]["content"])


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(c.get("text", "") for c in content if isinstance(c, dict))


def decode_rate(infos: list[dict]) -> float:
    """Median tokens/s after the first token (the prompt's processing left out), from the transparency infos."""
    rates = [(i["new_tokens"] - 1) / (i["seconds"] - i["first_token_s"]) for i in infos
             if i.get("first_token_s") is not None and i["new_tokens"] > 1 and i["seconds"] > i["first_token_s"]]
    return statistics.median(rates) if rates else float("nan")


def _median(runs: list, key: str) -> float:
    vals = [r[1][key] for r in runs if r[1].get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def classify_seconds(client) -> float:
    t0 = time.perf_counter()
    client.predict(SPAM, None, 0.5, api_name="/classify")
    return time.perf_counter() - t0


def compare_args(prompt: str, adapter: str, max_new_tokens: int):
    return (prompt, adapter, 0.0, 0.9, max_new_tokens, 0, 1.1)


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def bench_app(model: str | None = None, port: int = 7861, adapter: str = "smollm2-135m-alpaca",
              skip_empty_cache: bool = False, skip_llamacpp: bool = False, runs: int = 3) -> int:
    """The app's figures as a user meets them (see the module docstring); prints each with its target.

    model: base model for the app (default: the embedded one)
    port: port the app listens on (127.0.0.1; the next port is used for the --engine llama.cpp app)
    adapter: the chat adapter for the first token and Compare figures (the llama.cpp speed runs on the base)
    skip_empty_cache: do not time the first start on an empty cache (the one-time GGUF conversion, ~1 min)
    skip_llamacpp: do not time --engine llama.cpp
    runs: warm starts to time (median)
    """
    if runs < 1:
        raise UserError("--runs must be at least 1")
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # a timeout still stops the apps (finally blocks)
    base_args = ["--model", model] if model else []
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    # 1. the first start on an empty cache: the page comes first, the conversion runs behind it
    if not skip_empty_cache:
        empty = Path(tempfile.mkdtemp(prefix="ftbench-empty-cache-"))
        try:
            app = App(port, base_args, env={"FTBENCH_CACHE": str(empty)})
            app.stop()
            say(f"empty cache: page up {app.page_s:6.2f} s (target <= {TARGETS['empty_page']:.0f} s, "
                f"{_verdict(app.page_s <= TARGETS['empty_page'])}); model converted and ready {app.ready_s:6.2f} s; "
                f"first console line: {app.first_line[:90]!r}")
        finally:
            shutil.rmtree(empty, ignore_errors=True)

    # 2. warm starts (the cache holds the converted model)
    warm = []
    for _ in range(runs):
        warm.append(App(port, base_args))
        if len(warm) < runs:
            warm[-1].stop()
    pages = [a.page_s for a in warm]
    readies = [a.ready_s for a in warm]
    page, ready = statistics.median(pages), statistics.median(readies)
    say(f"warm cache: page up {page:6.2f} s, model ready {ready:6.2f} s (target <= {TARGETS['warm_page']:.0f} s, "
        f"{_verdict(ready <= TARGETS['warm_page'])}; median of {runs}: page "
        f"{', '.join(f'{x:.2f}' for x in pages)} s, ready {', '.join(f'{x:.2f}' for x in readies)} s; "
        f"torch threads {warm[-1].threads})")
    app = warm[-1]
    try:
        client = app.client()
        # 3. chat time to first token
        for who in ("base", adapter):
            got = [first_token(client, m, adapter=who) for m in MESSAGES]
            ttft = statistics.median(g[0] for g in got)
            say(f"chat time to first token ({who}): {ttft:5.2f} s (target <= {TARGETS['ttft']:.0f} s, "
                f"{_verdict(ttft <= TARGETS['ttft'])}; {', '.join(f'{g[0]:.2f}' for g in got)} s; model alone "
                f"{', '.join(str(g[1].get('first_token_s')) for g in got)} s)")
        # 4. a spam check alone, then while another tab's Compare is writing
        classify_seconds(client)                            # the classifier's first use (attach) not counted
        alone = statistics.median(classify_seconds(client) for _ in range(3))
        other = app.client()
        job = other.submit(*compare_args(LONG_PROMPT, adapter, 256), api_name="/compare")
        time.sleep(3.0)                                     # Compare is writing by now
        during = [classify_seconds(client) for _ in range(3)]
        still = not job.done()
        job.result()
        ratio = statistics.median(during) / alone
        say(f"classify: alone {alone:5.2f} s, during Compare {statistics.median(during):5.2f} s = {ratio:4.2f}x "
            f"(target <= {TARGETS['classify_ratio']:.0f}x, {_verdict(ratio <= TARGETS['classify_ratio'])}; "
            f"{', '.join(f'{x:.2f}' for x in during)} s; Compare still writing after them: {still})")
        # 5. Compare wall time vs one side alone (the same instruction, greedy, same settings)
        timings = {}
        for rnd in range(2):                                # round 0 warms both paths up
            t0 = time.perf_counter()
            base_text, tuned_text, *_rest = client.predict(*compare_args(COMPARE_PROMPT, adapter, 128),
                                                           api_name="/compare")
            timings["compare"] = time.perf_counter() - t0
            for who in ("base", adapter):
                t0 = time.perf_counter()
                _, info, reply = first_token(client, COMPARE_PROMPT, 128, who)
                timings[who] = (time.perf_counter() - t0, reply)
        one = max(timings["base"][0], timings[adapter][0])
        same = timings["base"][1].strip() == base_text.strip() and timings[adapter][1].strip() == tuned_text.strip()
        ratio = timings["compare"] / one
        say(f"compare wall {timings['compare']:5.2f} s vs the slower side alone {one:5.2f} s = {ratio:4.2f}x "
            f"(target <= {TARGETS['compare_ratio']}x, {_verdict(ratio <= TARGETS['compare_ratio'])}; base alone "
            f"{timings['base'][0]:.2f} s, {adapter} alone {timings[adapter][0]:.2f} s; same texts as alone: {same})")
        # 6. the default engine's chat speed, for the llama.cpp comparison
        default_runs = [first_token(client, SPEED_PROMPT, SPEED_TOKENS, "base", 1.0) for _ in range(2)]
        default_tps = statistics.median(r[1]["tokens_per_s"] for r in default_runs)
    finally:
        app.stop()

    if not skip_llamacpp:
        fast = App(port + 1, [*base_args, "--engine", "llama.cpp"])
        try:
            client = fast.client()
            runs_ = [first_token(client, SPEED_PROMPT, SPEED_TOKENS, "base", 1.0) for _ in range(3)]
            engines = {r[1].get("engine") for r in runs_}
            tps = statistics.median(r[1]["tokens_per_s"] for r in runs_[1:])
            ratio = tps / default_tps if default_tps else float("nan")
            say(f"--engine llama.cpp: page up {fast.page_s:5.2f} s, ready {fast.ready_s:5.2f} s; chat (base) "
                f"{tps:6.1f} tokens/s vs default {default_tps:6.1f} = {ratio:4.1f}x (target >= "
                f"{TARGETS['llamacpp_ratio']:.0f}x, {_verdict(ratio >= TARGETS['llamacpp_ratio'])}; engine "
                f"{', '.join(sorted(map(str, engines)))}; first token {runs_[-1][0]:.2f} s)")
            fast_d, slow_d = decode_rate([r[1] for r in runs_[1:]]), decode_rate([r[1] for r in default_runs])
            say(f"  where the time goes (server side, median): first token {_median(runs_[1:], 'first_token_s'):.2f} "
                f"vs {_median(default_runs, 'first_token_s'):.2f} s, new tokens {_median(runs_[1:], 'new_tokens'):.0f} "
                f"vs {_median(default_runs, 'new_tokens'):.0f}; after the first token {fast_d:5.1f} vs {slow_d:5.1f} "
                f"tokens/s = {fast_d / slow_d if slow_d else float('nan'):4.1f}x (the tokens/s above count the first "
                "token's time: a short answer is mostly prompt processing)")
        finally:
            fast.stop()
    say(f"threads: each app uses the cores not busy at its start (app.py --threads 0; os.cpu_count() = "
        f"{os.cpu_count()})")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench-app"
    sys.exit(bench_app())
