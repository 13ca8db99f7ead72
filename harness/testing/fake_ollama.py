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
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness.testing import Hangup, wire_write

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


class FakeOllama:
    """The fake server. `start()` (or `with`) binds 127.0.0.1:0 and serves from a daemon thread."""

    def __init__(self, models: tuple[str, ...] | list[str] = ("llama3:latest",), answers: list | tuple = (),
                 default: Callable[[dict], Any] = auto_answer, delay: float = 0.0, digest: str = FAKE_DIGEST,
                 context_length: int = 8192):
        self.models = [_full(m) for m in models]
        self.answers = list(answers)
        self.default = default
        self.delay = delay
        self.digest = digest
        self.context_length = context_length
        self.requests: list[dict] = []
        self.in_flight = 0               # chat requests being answered now
        self.max_in_flight = 0           # the most answered at once (how parallel the client really was)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> "FakeOllama":
        server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        server.handle_error = lambda request, client_address: None  # a client killed mid-answer is not news
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeOllama":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake server first"
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        """host:port, the form OLLAMA_HOST takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ what was asked
    def count(self, path: str | None = "/api/chat") -> int:
        """Requests received on `path` (None: all requests)."""
        with self._lock:
            return sum(1 for r in self.requests if path is None or r["path"] == path)

    def chat_bodies(self) -> list[dict]:
        with self._lock:
            return [r["body"] for r in self.requests if r["path"] in ("/api/chat", "/v1/chat/completions")]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    # ------------------------------------------------------------ answers
    def _record(self, method: str, path: str, body: Any, agent: str = "") -> None:
        with self._lock:
            self.requests.append({"method": method, "path": path, "body": body, "t": time.time(), "agent": agent})

    def agents(self, path: str | None = None) -> set[str]:
        """The User-Agent headers of the requests on `path` (None: all): which client spoke."""
        with self._lock:
            return {r["agent"] for r in self.requests if path is None or r["path"] == path}

    def _next_answer(self, body: dict) -> dict:
        with self._lock:
            answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            answer = self.default(body)
        if isinstance(answer, str):
            answer = {"content": answer}
        return dict(answer)

    def has_model(self, name: str) -> bool:
        return _full(str(name)) in self.models


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeOllama/0.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    @property
    def fake(self) -> FakeOllama:
        return self.server.fake  # type: ignore[attr-defined]

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        wire_write(self, data)

    def _send_raw(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        wire_write(self, data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return {"_unparsable": raw.decode(errors="replace")}

    def _model_entry(self, name: str) -> dict:
        return {"name": name, "model": name, "modified_at": "2024-05-01T10:00:00.000000+00:00",
                "size": 4661224676, "digest": self.fake.digest,
                "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "8.0B", "quantization_level": "Q4_0"}}

    def _not_found(self, name: str) -> None:
        self._send_json(404, {"error": f"model \"{name}\" not found, try pulling it first"})

    # ------------------------------------------------------------ GET
    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        self.fake._record("GET", path, None, self.headers.get("User-Agent", ""))
        if path == "/api/tags":
            self._send_json(200, {"models": [self._model_entry(m) for m in self.fake.models]})
        elif path == "/api/version":
            self._send_json(200, {"version": "0.6.3-fake"})
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1714557600, "owned_by": "library"}
                for m in self.fake.models]})
        elif path == "/":
            self._send_raw(200, "Ollama is running")
        else:
            self._send_raw(404, "404 page not found")

    # ------------------------------------------------------------ POST
    def do_POST(self):  # noqa: N802
        try:
            self._post()
        except (Hangup, BrokenPipeError, ConnectionResetError):
            self.close_connection = True         # a cut answer, or a client that hung up

    def _post(self) -> None:
        path = self.path.split("?")[0]
        body = self._body()
        self.fake._record("POST", path, body, self.headers.get("User-Agent", ""))
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
        self._send_raw(404, "404 page not found")

    def _chat(self, body: dict, openai: bool) -> None:
        name = str(body.get("model", ""))
        if not self.fake.has_model(name):
            if openai:
                return self._send_json(404, {"error": {"message": f"model \"{name}\" not found, try pulling it first",
                                                       "type": "api_error"}})
            return self._not_found(name)
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
            return self._send_raw(status, answer["raw"])
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
                 "done": True, "done_reason": "stop", "total_duration": int(delay * 1e9) + 1000,
                 "load_duration": 1000, "prompt_eval_count": 10, "prompt_eval_duration": 1000,
                 "eval_count": max(1, len(content.split())), "eval_duration": 1000}
        if body.get("stream", True):
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
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


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m harness.testing.fake_ollama", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--delay", type=float, default=0.0, help="seconds per chat answer")
    p.add_argument("--model", action="append", help="a pulled model (repeatable; default llama3)")
    args = p.parse_args(argv)
    fake = FakeOllama(models=args.model or ("llama3:latest",), delay=args.delay).start(args.port)
    print(f"fake Ollama on {fake.url} (models: {', '.join(fake.models)}); Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
