"""A fake OpenAI-compatible server (vLLM, llama.cpp server) on 127.0.0.1 with real sockets, for tests and demos.

    python -m harness.testing.fake_openai --port 8000 --delay 0.2 --model smol     # stand-alone, until Ctrl-C
    python -m harness generate ... --engine openai:smol@http://127.0.0.1:8000

    from harness.testing.fake_openai import FakeOpenAI
    with FakeOpenAI(models=["smol"], delay=0.1) as fake:
        ...  # http://127.0.0.1:<port>/v1 is fake.base
        fake.count("/v1/chat/completions"), fake.max_in_flight, fake.chat_bodies()[0]["max_tokens"]

Endpoints: GET /v1/models, POST /v1/chat/completions (JSON, or with "stream": true server-sent events, one
word per chunk, `chunk_delay` seconds apart, then a usage chunk when stream_options.include_usage is set, then
`data: [DONE]`). Every request is recorded.

`models`: served model ids, or dicts {"id": ..., any other fields} for what /v1/models reports about each
(vLLM's root/max_model_len, llama.cpp's meta, a digest); `fake.models` may be changed while serving, as a
restarted server with another model would. `models_status`, `models_delay`, `models_raw` make the model
list answer an error status, hang, or send a body that is not JSON.

Chat answers come from `answers` in order, then from `default(body)`. An answer is a string (the content) or
a dict with any of content, status (>= 400 sends an OpenAI error body), error, raw (a body sent as-is, e.g. not
JSON), delay, finish_reason, and the wire options of harness.testing (drip: seconds per byte; cut: bytes sent
before the connection closes). The default answer is deterministic: the words of the last message reversed,
cut at `max_tokens` words (finish_reason "length") or at the first `stop` string ("stop"). A model that is not
served gets vLLM's 404 "The model `x` does not exist."
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness.testing import Hangup, wire_write

CREATED = 1714557600


def echo_answer(body: dict) -> dict:
    """The default: the last message's words reversed, honouring max_tokens (1 word = 1 token) and stop."""
    messages = body.get("messages") or [{}]
    words = str(messages[-1].get("content", "")).split()[::-1] or ["ok"]
    limit = int(body.get("max_tokens") or 1 << 30)
    reason = "length" if len(words) > limit else "stop"
    text = " ".join(words[:limit])
    stops = body.get("stop") or []
    for s in [stops] if isinstance(stops, str) else stops:
        if s and s in text:
            text, reason = text[:text.index(s)], "stop"
    return {"content": text, "finish_reason": reason}


class FakeOpenAI:
    """The fake server. `start()` (or `with`) binds 127.0.0.1:0 and serves from a daemon thread."""

    def __init__(self, models: list | tuple = ("smol",), answers: list | tuple = (),
                 default: Callable[[dict], Any] = echo_answer, delay: float = 0.0, models_status: int = 200,
                 models_delay: float = 0.0, models_raw: str | None = None):
        self.models = list(models)
        self.answers = list(answers)
        self.default = default
        self.delay = delay
        self.models_status = models_status
        self.models_delay = models_delay
        self.models_raw = models_raw
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.chunk_delay = 0.0           # seconds between streamed chunks
        self.streamed = 0                # chunks sent so far (a client that stops early gets fewer)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self, port: int = 0) -> "FakeOpenAI":
        server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        server.handle_error = lambda request, client_address: None  # a client that gave up is not news
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake server first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def spec(self, model: str | None = None) -> str:
        """The engine spec for one of the served models (default: the first)."""
        return f"openai:{model or self.entries()[0]['id']}@{self.url}"

    def entries(self) -> list[dict]:
        out = []
        for m in self.models:
            entry = {"id": m} if isinstance(m, str) else dict(m)
            out.append({"object": "model", "created": CREATED, "owned_by": "fake", **entry})
        return out

    def count(self, path: str | None = "/v1/chat/completions") -> int:
        with self._lock:
            return sum(1 for r in self.requests if path is None or r["path"] == path)

    def reset(self) -> None:
        """Forget the recorded requests (the served models and pending answers stay)."""
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    def chat_bodies(self) -> list[dict]:
        with self._lock:
            return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions"]

    def _record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append({"method": method, "path": path, "body": body, "t": time.time()})

    def _next_answer(self, body: dict) -> dict:
        with self._lock:
            answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            answer = self.default(body)
        return {"content": answer} if isinstance(answer, str) else dict(answer)


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeOpenAI/0.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    @property
    def fake(self) -> FakeOpenAI:
        return self.server.fake  # type: ignore[attr-defined]

    def _send(self, status: int, body: str, kind: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        wire_write(self, data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"object": "error", "message": message, "type": "BadRequestError"
                                       if status < 500 else "InternalServerError", "code": status}))

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        self.fake._record("GET", path, None)
        if path != "/v1/models":
            return self._send(404, '{"detail": "Not Found"}')
        if self.fake.models_delay:
            time.sleep(self.fake.models_delay)
        if self.fake.models_raw is not None:
            return self._send(self.fake.models_status, self.fake.models_raw, "text/plain")
        if self.fake.models_status >= 400:
            return self._error(self.fake.models_status, "fake failure listing models")
        self._send(200, json.dumps({"object": "list", "data": self.fake.entries()}))

    def do_POST(self):  # noqa: N802
        try:
            self._post()
        except (Hangup, BrokenPipeError, ConnectionResetError):
            self.close_connection = True         # a cut answer, or a client that hung up

    def _post(self) -> None:
        path = self.path.split("?")[0]
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
        except json.JSONDecodeError:
            body = {}
        self.fake._record("POST", path, body)
        if path != "/v1/chat/completions":
            return self._send(404, '{"detail": "Not Found"}')
        name = str(body.get("model", ""))
        if name not in [e["id"] for e in self.fake.entries()]:
            return self._error(404, f"The model `{name}` does not exist.")
        answer = self.fake._next_answer(body)
        self.wire = {k: answer[k] for k in ("drip", "cut") if k in answer}     # harness.testing: drip, cut
        delay = answer.get("delay", self.fake.delay)
        with self.fake._lock:
            self.fake.in_flight += 1
            self.fake.max_in_flight = max(self.fake.max_in_flight, self.fake.in_flight)
        try:
            if delay:
                time.sleep(delay)
        finally:
            with self.fake._lock:
                self.fake.in_flight -= 1
        status = int(answer.get("status", 200))
        if "raw" in answer:
            return self._send(status, answer["raw"], "text/plain")
        if status >= 400:
            return self._error(status, answer.get("error") or f"fake error {status}")
        content = str(answer.get("content", ""))
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
        if body.get("stream"):
            return self._stream(name, content, answer.get("finish_reason", "stop"), prompt_words, body)
        self._send(200, json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": answer.get("finish_reason", "stop")}],
            "usage": {"prompt_tokens": prompt_words + 4, "completion_tokens": len(content.split()),
                      "total_tokens": prompt_words + 4 + len(content.split())}}))


    def _stream(self, name: str, content: str, reason: str, prompt_words: int, body: dict) -> None:
        """Server-sent events as vLLM and llama.cpp send them; a client that hangs up ends the stream."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = content.split(" ") if content else []

        def event(delta: dict, finish: str | None = None, usage: dict | None = None) -> None:
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": name, "choices": [] if usage else [{"index": 0, "delta": delta,
                                                                   "finish_reason": finish}]}
            if usage:
                chunk["usage"] = usage
            wire_write(self, f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        try:
            event({"role": "assistant", "content": ""})
            for k, w in enumerate(words):
                if self.fake.chunk_delay:
                    time.sleep(self.fake.chunk_delay)
                event({"content": (" " if k else "") + w})
                with self.fake._lock:
                    self.fake.streamed += 1
            event({}, reason)
            if (body.get("stream_options") or {}).get("include_usage"):
                event({}, usage={"prompt_tokens": prompt_words + 4, "completion_tokens": len(words),
                                 "total_tokens": prompt_words + 4 + len(words)})
            wire_write(self, b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m harness.testing.fake_openai", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--delay", type=float, default=0.0, help="seconds per chat answer")
    p.add_argument("--model", action="append", help="a served model id (repeatable; default smol)")
    args = p.parse_args(argv)
    fake = FakeOpenAI(models=args.model or ("smol",), delay=args.delay).start(args.port)
    print(f"fake OpenAI-compatible server on {fake.base} (models: {', '.join(args.model or ['smol'])}); "
          "Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
