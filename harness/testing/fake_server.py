"""The skeleton both fake servers share (harness.testing.fake_ollama, harness.testing.fake_openai): a threaded HTTP
server on 127.0.0.1 (a port chosen by the OS), start/stop and `with`, the request log, the queue of chat answers,
the in-flight count, and the faults any answer may carry on the wire (an HTML page, drip, cut, a delay).
Each fake keeps only its protocol: its handler's do_GET and post(), and what its answers look like.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HTML_PAGE = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def drip(seconds: float = 1.0) -> dict:
    """An answer option: send the body one byte every `seconds` (after the headers)."""
    return {"drip": seconds}


def cut(n: int) -> dict:
    """An answer option: send only the body's first `n` bytes, then close the connection."""
    return {"cut": n}


class Hangup(Exception):
    """Raised by wire_write once a cut answer has sent its bytes: the handler stops and the socket closes."""


def wire_write(handler, data: bytes) -> None:
    """handler.wfile.write(data) as the current answer's wire options say (handler.wire: drip / cut)."""
    wire = getattr(handler, "wire", None) or {}
    if wire.get("cut") is not None:
        left = int(wire["cut"]) - handler.__dict__.get("_sent", 0)
        handler.wfile.write(data[:max(0, left)])
        handler.wfile.flush()
        handler._sent = handler.__dict__.get("_sent", 0) + min(len(data), max(0, left))
        if left <= len(data):
            handler.close_connection = True
            raise Hangup()
        return
    if wire.get("drip"):
        for i in range(len(data)):
            handler.wfile.write(data[i:i + 1])
            handler.wfile.flush()
            time.sleep(float(wire["drip"]))
        return
    handler.wfile.write(data)


class FakeServer:
    """What both fakes share. A fake sets `handler` (its FakeHandler subclass) and `chat_paths` (the paths whose
    bodies chat_bodies() returns; the first is count()'s default)."""

    handler: type[BaseHTTPRequestHandler]
    chat_paths: tuple[str, ...] = ()

    def __init__(self, answers: list | tuple = (), default: Callable[[dict], Any] | None = None, delay: float = 0.0):
        self.answers = list(answers)
        self.default = default
        self.delay = delay
        self.requests: list[dict] = []
        self.in_flight = 0               # chat requests being answered now
        self.max_in_flight = 0           # the most answered at once (how parallel the client really was)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self, port: int = 0):
        """Bind 127.0.0.1:port (0: the OS picks) and serve from a daemon thread."""
        server = ThreadingHTTPServer(("127.0.0.1", port), self.handler)
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

    def __enter__(self):
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

    # ------------------------------------------------------------ what was asked
    def count(self, path: str | None = "") -> int:
        """Requests received on `path` (default: the first chat path; None: all requests)."""
        path = self.chat_paths[0] if path == "" else path
        with self._lock:
            return sum(1 for r in self.requests if path is None or r["path"] == path)

    def chat_bodies(self) -> list[dict]:
        with self._lock:
            return [r["body"] for r in self.requests if r["path"] in self.chat_paths]

    def agents(self, path: str | None = None) -> set[str]:
        """The User-Agent headers of the requests on `path` (None: all): which client spoke."""
        with self._lock:
            return {r["agent"] for r in self.requests if path is None or r["path"] == path}

    def reset(self) -> None:
        """Forget the recorded requests (the served models and pending answers stay)."""
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    def _record(self, method: str, path: str, body: Any, agent: str = "") -> None:
        with self._lock:
            self.requests.append({"method": method, "path": path, "body": body, "t": time.time(), "agent": agent})

    def _next_answer(self, body: dict) -> dict:
        with self._lock:
            answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            answer = self.default(body)
        return {"content": answer} if isinstance(answer, str) else dict(answer)


class FakeHandler(BaseHTTPRequestHandler):
    """The request handler both fakes share: quiet, JSON bodies in, bytes out through the wire faults. A fake's
    handler defines do_GET and post() (POST; a cut answer or a client that hung up just closes the socket)."""

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    @property
    def fake(self) -> Any:
        return self.server.fake  # type: ignore[attr-defined]

    def send(self, status: int, body: str, kind: str = "application/json") -> None:
        """One whole answer, through the current answer's wire faults."""
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        wire_write(self, data)

    def start_stream(self, kind: str) -> None:
        """The headers of a streamed answer (no length); its chunks follow with wire_write."""
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.end_headers()

    def path_only(self) -> str:
        return self.path.split("?")[0]

    def record(self, method: str, body: Any = None) -> str:
        """Log this request; returns its path without the query."""
        path = self.path_only()
        self.fake._record(method, path, body, self.headers.get("User-Agent", ""))
        return path

    def read_json(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return {"_unparsable": raw.decode(errors="replace")}

    def take_answer(self, body: dict) -> dict:
        """The next chat answer (a dict), with its wire faults set and its delay (answer["delay"]) waited out while
        it counts as in flight."""
        fake = self.fake
        answer = fake._next_answer(body)
        self.wire = {k: answer[k] for k in ("drip", "cut") if k in answer}
        answer["delay"] = answer.get("delay", fake.delay)
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            if answer["delay"]:
                time.sleep(answer["delay"])
        finally:
            with fake._lock:
                fake.in_flight -= 1
        return answer

    def do_POST(self):  # noqa: N802
        try:
            self.post()
        except (Hangup, BrokenPipeError, ConnectionResetError):
            self.close_connection = True         # a cut answer, or a client that hung up

    def post(self) -> None:
        raise NotImplementedError


def serve_standalone(make: Callable[[argparse.Namespace], FakeServer], argv: list[str] | None, prog: str,
                     description: str, port: int, model_help: str, banner: Callable[[FakeServer], str]) -> int:
    """`python -m harness.testing.fake_X`: parse --port/--delay/--model, serve until Ctrl-C."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--delay", type=float, default=0.0, help="seconds per chat answer")
    p.add_argument("--model", action="append", help=model_help)
    args = p.parse_args(argv)
    fake = make(args).start(args.port)
    print(banner(fake), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
    return 0
