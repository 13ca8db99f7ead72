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
import time
from collections.abc import Callable
from typing import Any

from harness.testing.fake_server import FakeHandler, FakeServer, serve_standalone, wire_write

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


class _Handler(FakeHandler):
    server_version = "FakeOpenAI/0.1"

    def _error(self, status: int, message: str) -> None:
        self.send(status, json.dumps({"object": "error", "message": message, "type": "BadRequestError"
                                      if status < 500 else "InternalServerError", "code": status}))

    def do_GET(self):  # noqa: N802
        path = self.record("GET")
        if path != "/v1/models":
            return self.send(404, '{"detail": "Not Found"}')
        if self.fake.models_delay:
            time.sleep(self.fake.models_delay)
        if self.fake.models_raw is not None:
            return self.send(self.fake.models_status, self.fake.models_raw, "text/plain")
        if self.fake.models_status >= 400:
            return self._error(self.fake.models_status, "fake failure listing models")
        self.send(200, json.dumps({"object": "list", "data": self.fake.entries()}))

    def post(self) -> None:
        body = self.read_json()
        path = self.record("POST", body)
        if path != "/v1/chat/completions":
            return self.send(404, '{"detail": "Not Found"}')
        name = str(body.get("model", ""))
        if name not in [e["id"] for e in self.fake.entries()]:
            return self._error(404, f"The model `{name}` does not exist.")
        answer = self.take_answer(body)
        status = int(answer.get("status", 200))
        if "raw" in answer:
            return self.send(status, answer["raw"], "text/plain")
        if status >= 400:
            return self._error(status, answer.get("error") or f"fake error {status}")
        content = str(answer.get("content", ""))
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
        if body.get("stream"):
            return self._stream(name, content, answer.get("finish_reason", "stop"), prompt_words, body)
        self.send(200, json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": answer.get("finish_reason", "stop")}],
            "usage": {"prompt_tokens": prompt_words + 4, "completion_tokens": len(content.split()),
                      "total_tokens": prompt_words + 4 + len(content.split())}}))

    def _stream(self, name: str, content: str, reason: str, prompt_words: int, body: dict) -> None:
        """Server-sent events as vLLM and llama.cpp send them; a client that hangs up ends the stream."""
        self.start_stream("text/event-stream")
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


class FakeOpenAI(FakeServer):
    """The fake server. `start()` (or `with`) binds 127.0.0.1:0 and serves from a daemon thread."""

    handler = _Handler
    chat_paths = ("/v1/chat/completions",)

    def __init__(self, models: list | tuple = ("smol",), answers: list | tuple = (),
                 default: Callable[[dict], Any] = echo_answer, delay: float = 0.0, models_status: int = 200,
                 models_delay: float = 0.0, models_raw: str | None = None):
        super().__init__(answers, default, delay)
        self.models = list(models)
        self.models_status = models_status
        self.models_delay = models_delay
        self.models_raw = models_raw
        self.chunk_delay = 0.0           # seconds between streamed chunks
        self.streamed = 0                # chunks sent so far (a client that stops early gets fewer)

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


def main(argv: list[str] | None = None) -> int:
    return serve_standalone(
        lambda a: FakeOpenAI(models=a.model or ("smol",), delay=a.delay), argv,
        "python -m harness.testing.fake_openai", __doc__.splitlines()[0], 8000,
        "a served model id (repeatable; default smol)",
        lambda f: f"fake OpenAI-compatible server on {f.base} (models: {', '.join(e['id'] for e in f.entries())}); "
                  "Ctrl-C to stop")


if __name__ == "__main__":
    raise SystemExit(main())
