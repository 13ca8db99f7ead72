"""A fake Ollama HTTP server on 127.0.0.1 (real sockets, a port chosen by the OS), for tests and `bench judge`.

    python -m harness.testing.fake_ollama --port 11434 --delay 0.2      # stand-alone, until Ctrl-C, for demos:
    OLLAMA_HOST=127.0.0.1:11434 python -m harness run --eval-set instructions_own --limit 5

    from harness.testing.fake_ollama import FakeOllama
    with FakeOllama(answers=["**Score:** 72/100", {"status": 500}], delay=0.2) as fake:
        # OLLAMA_HOST=fake.host, or JudgeConfig(host=fake.url), EngineConfig("ollama:llama3", host=fake.url)
        ...
        fake.count("/api/chat"), fake.chat_bodies()[0]["options"]

Every request is recorded with its User-Agent (fake.agents(path): the official client says
"ollama-python/<version> (...)").

Endpoints: GET /api/tags, GET /api/version, POST /api/show, POST /api/chat (streamed NDJSON or one JSON,
like Ollama: `stream` defaults to true), and the OpenAI-compatible GET /v1/models and POST
/v1/chat/completions that Ollama also serves. Every request is recorded (method, path, JSON body).

Chat answers come from `answers` in order (shared by /api/chat and /v1/chat/completions), then from
`default(body)`. An answer is a string (the message content) or a dict with any of
    content: str      the message content
    status: int       HTTP status (default 200); >= 400 sends Ollama's {"error": ...} body
    error: str        the error text for a status >= 400
    raw: str          a body sent as-is (e.g. not JSON at all)
    delay: float      seconds to wait before answering (default: the server's `delay`)
    drip: float       send the body one byte every `drip` seconds (harness.testing.drip)
    cut: int          send only the body's first `cut` bytes, then close (harness.testing.cut)
A model that is not in `models` gets Ollama's 404: {"error": "model \"x\" not found, try pulling it first"}.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from harness.testing.fake_server import FakeHandler, FakeServer, serve_standalone, wire_write

FAKE_DIGEST = "365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1"


def _full(name: str) -> str:
    return name if ":" in name else name + ":latest"


def auto_answer(body: dict) -> str:
    """A deterministic judge answer: JSON when the request asks for structured output, llama3-style prose
    otherwise. The score (40-99) is a hash of the last message, so the same prompt always gets the same score."""
    messages = body.get("messages") or [{}]
    text = str(messages[-1].get("content", ""))
    score = 40 + int(hashlib.sha256(text.encode()).hexdigest(), 16) % 60
    if body.get("format") or body.get("response_format"):
        return json.dumps({"score": score, "reason": "Mostly correct and clearly written."})
    return (f"I'd rate the model response an {score} out of 100.\n\n"
            "The response addresses the instruction but misses some detail of the correct output.")


class _Handler(FakeHandler):
    server_version = "FakeOllama/0.1"

    def _send_json(self, status: int, obj: Any) -> None:
        self.send(status, json.dumps(obj))

    def _model_entry(self, name: str) -> dict:
        return {"name": name, "model": name, "modified_at": "2024-05-01T10:00:00.000000+00:00",
                "size": 4661224676, "digest": self.fake.digest,
                "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "8.0B", "quantization_level": "Q4_0"}}

    def _not_found(self, name: str) -> None:
        self._send_json(404, {"error": f"model \"{name}\" not found, try pulling it first"})

    # ------------------------------------------------------------ GET
    def do_GET(self):  # noqa: N802
        path = self.record("GET")
        if path == "/api/tags":
            self._send_json(200, {"models": [self._model_entry(m) for m in self.fake.models]})
        elif path == "/api/version":
            self._send_json(200, {"version": "0.6.3-fake"})
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1714557600, "owned_by": "library"}
                for m in self.fake.models]})
        elif path == "/":
            self.send(200, "Ollama is running", "text/plain")
        else:
            self.send(404, "404 page not found", "text/plain")

    # ------------------------------------------------------------ POST
    def post(self) -> None:
        body = self.read_json()
        path = self.record("POST", body)
        if path == "/api/show":
            name = body.get("model") or body.get("name") or ""
            if not self.fake.has_model(name):
                return self._not_found(name)
            return self._send_json(200, {
                "modelfile": f"FROM {name}", "parameters": "stop \"<|eot_id|>\"",
                "template": "{{ .Prompt }}", "details": self._model_entry(_full(name))["details"],
                "model_info": {"general.architecture": "llama",
                               "llama.context_length": self.fake.context_length},
                "modified_at": "2024-05-01T10:00:00.000000+00:00"})
        if path == "/api/chat":
            return self._chat(body, openai=False)
        if path == "/v1/chat/completions":
            return self._chat(body, openai=True)
        self.send(404, "404 page not found", "text/plain")

    def _chat(self, body: dict, openai: bool) -> None:
        name = str(body.get("model", ""))
        if not self.fake.has_model(name):
            if openai:
                return self._send_json(404, {"error": {"message": f"model \"{name}\" not found, try pulling it first",
                                                       "type": "api_error"}})
            return self._not_found(name)
        answer = self.take_answer(body)
        status = int(answer.get("status", 200))
        if "raw" in answer:
            return self.send(status, answer["raw"], "text/plain")
        if status >= 400:
            error = answer.get("error") or f"fake error {status}"
            return self._send_json(status, {"error": {"message": error, "type": "api_error"}} if openai
                                   else {"error": error})
        content = str(answer.get("content", ""))
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        if openai:
            return self._send_json(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(content.split()), "total_tokens": 10}})
        final = {"model": name, "created_at": now, "message": {"role": "assistant", "content": ""},
                 "done": True, "done_reason": "stop", "total_duration": int(answer["delay"] * 1e9) + 1000,
                 "load_duration": 1000, "prompt_eval_count": 10, "prompt_eval_duration": 1000,
                 "eval_count": max(1, len(content.split())), "eval_duration": 1000}
        if body.get("stream", True):
            self.start_stream("application/x-ndjson")
            words = content.split(" ")
            for i, w in enumerate(words):
                piece = w if i == len(words) - 1 else w + " "
                chunk = {"model": name, "created_at": now, "message": {"role": "assistant", "content": piece},
                         "done": False}
                wire_write(self, (json.dumps(chunk) + "\n").encode())
                self.wfile.flush()
            wire_write(self, (json.dumps(final) + "\n").encode())
            self.wfile.flush()
            return
        final["message"]["content"] = content
        self._send_json(200, final)


class FakeOllama(FakeServer):
    """The fake server. `start()` (or `with`) binds 127.0.0.1:0 and serves from a daemon thread."""

    handler = _Handler
    chat_paths = ("/api/chat", "/v1/chat/completions")

    def __init__(self, models: tuple[str, ...] | list[str] = ("llama3:latest",), answers: list | tuple = (),
                 default: Callable[[dict], Any] = auto_answer, delay: float = 0.0, digest: str = FAKE_DIGEST,
                 context_length: int = 8192):
        super().__init__(answers, default, delay)
        self.models = [_full(m) for m in models]
        self.digest = digest
        self.context_length = context_length

    @property
    def host(self) -> str:
        """host:port, the form OLLAMA_HOST takes."""
        return f"127.0.0.1:{self.port}"

    def has_model(self, name: str) -> bool:
        return _full(str(name)) in self.models


def main(argv: list[str] | None = None) -> int:
    return serve_standalone(
        lambda a: FakeOllama(models=a.model or ("llama3:latest",), delay=a.delay), argv,
        "python -m harness.testing.fake_ollama", __doc__.splitlines()[0], 11434,
        "a pulled model (repeatable; default llama3)",
        lambda f: f"fake Ollama on {f.url} (models: {', '.join(f.models)}); Ctrl-C to stop")


if __name__ == "__main__":
    raise SystemExit(main())
