"""The one HTTP client of the harness: engines (OpenAI-compatible servers, Ollama) and judges speak through it.

    from harness.http import Client, ServerError, parse_url, run_pool
    client = Client("http://127.0.0.1:8080/v1", "the server at http://127.0.0.1:8080/v1", timeout=60)
    data = client.json("GET", "/models", check=lambda d: d["data"])         # retries, total deadline
    for line in client.lines("POST", "/chat/completions", body):              # a stream, same deadline
        ...

What it promises:
- A TOTAL deadline per answer: connecting, sending and every read of the answer (a stream included) end
  within `timeout` seconds. A watchdog shuts the socket at the deadline, so a server that sends its headers and
  then one byte a second fails at `timeout`, not at `timeout` per byte.
- Retries with exponential backoff on transient faults: a refused or reset connection, 429, 5xx, and a 200
  whose body is not what the protocol promises (an HTML "502 Bad Gateway" page from a proxy, JSON of another
  shape). A timeout already cost `timeout` seconds and is not retried.
- One error type, `ServerError` (a UserError: the CLI prints its one sentence and exits 2), with `kind`:
  "down" (cannot connect), "timeout", "status" (an HTTP error status) or "protocol" (a 200 that breaks the
  protocol: never an answer, so never cached and never scored).
- The same policy over a server's own blocking client library (the official `ollama` client, httpx inside):
  Client(..., official=make).call(fn) / .stream(fn) run fn(library client) in a worker thread and wait with
  what is left of the deadline; at the deadline that library client is closed (its connection with it) and the
  caller gets ServerError("timeout"). The library's errors (ollama.ResponseError, httpx errors, a body that is
  not JSON, JSON that pydantic refuses) become the same four kinds, retried the same way.
- A bounded pool: `Client` keeps at most `workers` connections (keep-alive reused), and `run_pool` runs
  requests on `workers` threads. An item whose server fails is reported as failed (`ItemsFailed`, after every
  good item was handed to `on_done`); a server that is down or hung stops the run at once.
"""
from __future__ import annotations

import http.client
import json
import queue
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from harness.errors import UserError

KINDS = ("down", "timeout", "status", "protocol")


class ServerError(UserError):
    """A server that failed, in one sentence. kind: down | timeout | status | protocol; status: the HTTP status."""

    def __init__(self, message: str, kind: str, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body              # the start of what the server sent (a 4xx's reason, a broken answer)

    @property
    def transient(self) -> bool:
        """Worth another attempt: a refused/reset connection, 429, 5xx, a 200 that broke the protocol."""
        if self.kind == "status":
            return self.status == 429 or (self.status or 0) >= 500
        return self.kind in ("down", "protocol")


class ItemsFailed(UserError):
    """Some items of a pooled run failed (the others were handed to on_done). `results[i]` is None for a failed
    item; `failed` maps its index to the reason; `reason` is the first failure's sentence; `partial` is the
    result over the good items where a caller builds one (a PairwiseResult)."""

    def __init__(self, results: list, failed: dict[int, str], what: str = "items", partial: Any = None):
        self.results = results
        self.failed = failed
        self.partial = partial        # what the good items add up to, when the caller has such a thing
        self.reason = next((v for v in failed.values() if not v.startswith("not asked")), "") or \
            next(iter(failed.values()), "")
        n, bad = len(results), len(failed)
        super().__init__(f"{bad} of {n} {what} failed ({self.reason.rstrip('.')})")


class Aborted(Exception):
    """The run was stopped (Ctrl-C, another item's fatal error) before this request was sent."""


# ---------------------------------------------------------------- URLs

def parse_url(url: str, what: str = "the server URL") -> tuple[str, str, int, str]:
    """'http://h:8000/v1' -> ('http', 'h', 8000, '/v1'); one sentence for a URL that cannot work."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UserError(f"{what} {url!r} has a port that is not a number from 1 to 65535: "
                        "write it like http://127.0.0.1:8080") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{what} {url!r} is not an http(s) URL: write it like http://127.0.0.1:8080")
    if port == 0:
        raise UserError(f"{what} {url!r} has port 0: use the port the server listens on, e.g. 8080")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), parts.path.rstrip("/")


# ---------------------------------------------------------------- the client

class Client:
    """One server: a base URL, a total deadline per answer, retries, and at most `workers` open connections."""

    def __init__(self, base: str, where: str = "", *, timeout: float = 60.0, connect_timeout: float = 3.0,
                 retries: int = 3, backoff: float = 0.5, workers: int = 4, headers: dict | None = None,
                 abort: threading.Event | None = None, official: Callable[[], Any] | None = None):
        self.scheme, self.host, self.port, self.prefix = parse_url(base)
        self.base = base.rstrip("/")
        self.where = where or f"the server at {self.base}"
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.retries, self.backoff = retries, backoff
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        self.abort = abort or threading.Event()
        self._tls = ssl.create_default_context() if self.scheme == "https" else None   # once: ~20 ms each
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._official = official     # makes a blocking client of the server's own library (ollama.Client)
        self._handles: queue.LifoQueue = queue.LifoQueue()     # its idle instances (each keeps its connections)
        self._slots = threading.BoundedSemaphore(max(1, workers))

    # -------------------------------------------- connections
    def _connect(self, deadline: float) -> http.client.HTTPConnection:
        left = max(0.001, min(self.connect_timeout, deadline - time.monotonic()))
        if self.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=left, context=self._tls)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=left)
        try:
            conn.connect()
        except (OSError, ValueError) as e:
            conn.close()
            if isinstance(e, socket.timeout):
                raise ServerError(f"cannot reach {self.where}: no connection within {self.connect_timeout:g} s",
                                  "down") from None
            raise ServerError(f"cannot reach {self.where} ({_short(e)})", "down") from None
        return conn

    def _take(self, deadline: float) -> tuple[http.client.HTTPConnection, bool]:
        try:
            return self._idle.get_nowait(), True
        except queue.Empty:
            return self._connect(deadline), False

    def close(self) -> None:
        for idle in (self._idle, self._handles):
            while True:
                try:
                    idle.get_nowait().close()
                except queue.Empty:
                    break

    # -------------------------------------------- one attempt
    def _open(self, method: str, path: str, body: Any, deadline: float):
        """Send one request and read the status and headers: (conn, response, watchdog). The watchdog shuts the
        socket at the deadline; the caller reads the body, then calls _done."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):         # a kept-alive connection the server already closed: one fresh retry
            conn, reused = self._take(deadline)
            fired = threading.Event()
            # the socket itself: http.client drops conn.sock once a closing response is read, the answer's
            # file still reads from it
            dog = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, (conn.sock, fired))
            dog.daemon = True
            dog.start()
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
                conn.request(method, self.prefix + path, body=data, headers=self.headers)
                resp = conn.getresponse()
                return conn, resp, (dog, fired)
            except (OSError, http.client.HTTPException) as e:
                dog.cancel()
                conn.close()
                if fired.is_set() or isinstance(e, socket.timeout) or time.monotonic() >= deadline:
                    raise self._timeout() from None
                if reused and attempt == 0:
                    continue
                raise ServerError(f"{self.where} closed the connection without an answer ({_short(e)})",
                                  "down") from None
        raise AssertionError("unreachable")

    def _timeout(self) -> ServerError:
        return ServerError(f"{self.where} did not answer within {self.timeout:g} s (connected, then too slow or "
                           "stuck): check the server, or raise the timeout for a slow model", "timeout")

    # -------------------------------------------- a blocking library client (the official `ollama` one)
    # The library does the HTTP; this class keeps the policy: each call runs in a worker thread and the caller
    # waits with what is left of the total deadline. At the deadline the library client is closed (its
    # connection with it, so the thread ends) and the caller gets ServerError("timeout"). Its own httpx timeout
    # is a backstop. Errors of the library (ollama.ResponseError, httpx errors, a body that is not JSON, JSON
    # that pydantic refuses) become ServerErrors of the four kinds, retried like json().

    def _handle(self) -> Any:
        try:
            return self._handles.get_nowait()
        except queue.Empty:
            assert self._official is not None, "Client(official=...) makes the library client"
            return self._official()

    def call(self, fn: Callable[[Any], Any], what: str, check: Callable[[Any], Any] | None = None,
             retry_down: bool = True) -> Any:
        """fn(library client) -> its answer through check(answer) (KeyError/TypeError/ValueError/... for an answer
        of the wrong shape: a protocol error), each attempt within the total deadline, with retries like json()."""
        return self.retrying(lambda: self._call_once(fn, what, check), retry_down)

    def _call_once(self, fn: Callable[[Any], Any], what: str, check: Callable[[Any], Any] | None) -> Any:
        self._check_abort()
        with self._slots:
            deadline = time.monotonic() + self.timeout
            handle = self._handle()
            box: queue.Queue = queue.Queue()

            def run():
                try:
                    box.put((True, fn(handle)))
                except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                    box.put((False, e))
            threading.Thread(target=run, daemon=True, name="http-call").start()
            try:
                ok, value = box.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                _close_quietly(handle)              # hangs up: the worker's read fails and the thread ends
                raise self._timeout() from None
            if not ok:
                err = self.library_error(value, what)
                if err.kind == "status" and (err.status or 0) < 500:
                    self._handles.put(handle)       # a clean 4xx: the connection is fine
                else:
                    _close_quietly(handle)
                raise err
            self._handles.put(handle)
        if check is None:
            return value
        try:
            return check(value)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            text = _short_obj(value)
            raise ServerError(f"{self.where} answered {what} with JSON of another shape ({text[:80]!r}): not the "
                              "protocol it promises", "protocol", 200, text) from None

    def stream(self, fn: Callable[[Any], Iterator], what: str) -> Iterator:
        """The items of fn(library client) (a streaming call) as they arrive, all within the one total deadline.
        A failure before the first item is retried like json(); closing the iterator hangs up."""
        self._check_abort()
        self._slots.acquire()
        try:
            deadline = time.monotonic() + self.timeout
            box: queue.Queue = queue.Queue()
            stop = threading.Event()
            state: dict = {}

            def run(handle, box=box):
                it = None
                try:
                    it = iter(fn(handle))
                    for item in it:
                        box.put((True, item))
                        if stop.is_set():
                            return
                    box.put((True, _END))
                except BaseException as e:  # noqa: BLE001 - handed to the reading thread
                    box.put((False, e))
                finally:
                    close = getattr(it, "close", None)
                    if close is not None and stop.is_set():
                        try:
                            close()
                        except Exception:  # noqa: BLE001 - a hung-up stream may fail to close cleanly
                            pass

            def next_item():
                try:
                    return box.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise self._timeout() from None

            def start():
                nonlocal box
                box = queue.Queue()
                handle = self._handle()
                state["handle"] = handle
                threading.Thread(target=run, args=(handle, box), daemon=True, name="http-stream").start()
                try:
                    ok, first = next_item()
                except ServerError:
                    _close_quietly(handle)
                    raise
                if not ok:
                    _close_quietly(handle)
                    raise self.library_error(first, what, mid_stream=True)
                return first

            first = self.retrying(start)
            ok_end = False
            try:
                item = first
                while True:
                    if item is _END:
                        ok_end = True
                        return
                    yield item
                    ok, item = next_item()
                    if not ok:
                        raise self.library_error(item, what, mid_stream=True)
            finally:
                stop.set()
                if ok_end:
                    self._handles.put(state["handle"])
                else:
                    _close_quietly(state["handle"])
        finally:
            self._slots.release()

    def library_error(self, e: BaseException, what: str, mid_stream: bool = False) -> ServerError:
        """An exception of the library client as a ServerError of one of the four kinds, in one sentence."""
        import httpx
        try:
            from ollama import ResponseError
        except ImportError:              # pragma: no cover - ollama is a dependency
            ResponseError = ()  # type: ignore[assignment]
        if isinstance(e, ServerError):
            return e
        if ResponseError and isinstance(e, ResponseError):
            text = str(e.error)[:200]
            if e.status_code and e.status_code >= 400:
                return status_error(self.where, what, e.status_code, json.dumps({"error": text}).encode())
            return ServerError(f"{self.where} failed in the middle of {what}: {text}", "status", None, text)
        if isinstance(e, json.JSONDecodeError) and mid_stream and str(e.doc).lstrip().startswith(("{", "[")):
            return ServerError(f"{self.where} closed the stream before the end of the answer (mid-line): the "
                               "server or a proxy broke off", "protocol")
        if isinstance(e, json.JSONDecodeError):
            text = _snippet(e.doc.encode() if isinstance(e.doc, str) else b"")
            return ServerError(f"{self.where} answered {what} with a body that is not JSON ({text[:80]!r}): a proxy "
                               "error page or not the right server", "protocol", 200, text)
        if isinstance(e, ValueError) and not str(getattr(e, "title", "Response")).endswith("Response"):
            # pydantic refused what we would send (a message the library cannot carry): our fault, not the server's
            raise UserError(f"the request to {self.where} cannot be sent ({_snippet(str(e).encode())[:160]}): "
                            "fix the messages") from None
        if isinstance(e, ValueError):      # pydantic's ValidationError on an answer: JSON of another shape
            try:                           # what the server sent, from pydantic's first complaint
                first = e.errors()[0]       # type: ignore[attr-defined]
                why = f"{'.'.join(map(str, first['loc'])) or 'the answer'}: {first['msg']}"
                text = _snippet(json.dumps(first.get("input"), default=str).encode())
            except (AttributeError, IndexError, KeyError, TypeError, ValueError):
                why, text = "", _snippet(str(e).encode())
            return ServerError(f"{self.where} answered {what} with JSON of another shape ({why.lower() + ' in ' if why else ''}"
                               f"{text[:80]!r}): not the protocol it promises", "protocol", 200, text)
        if isinstance(e, httpx.ConnectTimeout):
            return ServerError(f"cannot reach {self.where}: no connection within {self.connect_timeout:g} s", "down")
        if isinstance(e, httpx.TimeoutException):
            return self._timeout()
        if isinstance(e, ConnectionError) or isinstance(e, (httpx.ConnectError, httpx.WriteError)):
            return ServerError(f"cannot reach {self.where} ({_short(e)})", "down")
        if isinstance(e, httpx.RemoteProtocolError) and "without sending a response" in str(e):
            return ServerError(f"{self.where} closed the connection without an answer ({_short(e)})", "down")
        if isinstance(e, (httpx.HTTPError, httpx.StreamError, OSError)):
            return ServerError(f"{self.where} broke off its answer ({_short(e)})", "protocol")
        raise e

    def _done(self, conn, resp, dog, ok: bool) -> None:
        dog[0].cancel()
        if ok and not resp.will_close and not dog[1].is_set():
            self._idle.put(conn)
        else:
            conn.close()

    def _read_all(self, conn, resp, dog) -> bytes:
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self._done(conn, resp, dog, False)
            if dog[1].is_set() or isinstance(e, socket.timeout):
                raise self._timeout() from None
            raise ServerError(f"{self.where} broke off its answer ({_short(e)})", "protocol") from None
        if dog[1].is_set():
            self._done(conn, resp, dog, False)
            raise self._timeout()
        self._done(conn, resp, dog, True)
        return data

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """One attempt, whole answer read within the deadline: (status, body bytes). No retries, no checks."""
        self._check_abort()
        with self._slots:
            deadline = time.monotonic() + self.timeout
            conn, resp, dog = self._open(method, path, body, deadline)
            return resp.status, self._read_all(conn, resp, dog)

    def _check_abort(self) -> None:
        if self.abort.is_set():
            raise Aborted()

    # -------------------------------------------- JSON with retries
    def json(self, method: str, path: str, body: Any = None, check: Callable[[Any], Any] | None = None,
             retry_down: bool = True) -> Any:
        """The JSON answer of `method path`, through `check(data)` (which raises KeyError/TypeError/ValueError/
        IndexError for an answer of the wrong shape: a protocol error). Retries transient faults with backoff;
        retry_down=False: a server that cannot be reached fails at once (health checks)."""
        return self.retrying(lambda: self._json_once(method, path, body, check), retry_down)

    def _json_once(self, method: str, path: str, body: Any, check: Callable[[Any], Any] | None) -> Any:
        status, data = self.request(method, path, body)
        if status >= 400:
            raise status_error(self.where, f"{method} {path}", status, data)
        return decode(self.where, f"{method} {path}", status, data, check)

    def retrying(self, fn: Callable[[], Any], retry_down: bool = True) -> Any:
        """fn() with up to `retries` extra attempts on transient ServerErrors, backing off 1x, 2x, 4x `backoff`."""
        attempt = 0
        while True:
            self._check_abort()
            try:
                return fn()
            except ServerError as e:
                if not e.transient or attempt >= self.retries or (e.kind == "down" and not retry_down):
                    if attempt:
                        e.args = (f"{e.args[0]}; gave up after {attempt + 1} attempts",)
                    raise
            if self.abort.wait(self.backoff * (2 ** attempt)):
                raise Aborted()
            attempt += 1

    # -------------------------------------------- streams
    def lines(self, method: str, path: str, body: Any = None) -> Iterator[str]:
        """The answer's lines as they arrive (server-sent events, NDJSON), all within the one deadline. An error
        status before the first line is retried like json(); closing the iterator hangs up."""
        self._check_abort()
        self._slots.acquire()
        try:
            deadline = time.monotonic() + self.timeout

            def start():
                conn, resp, dog = self._open(method, path, body, deadline)
                if resp.status >= 400:
                    data = self._read_all(conn, resp, dog)
                    raise status_error(self.where, f"{method} {path}", resp.status, data)
                return conn, resp, dog

            conn, resp, dog = self.retrying(start)
            ok = False
            try:
                while True:
                    try:
                        raw = resp.readline()
                    except (OSError, http.client.HTTPException) as e:
                        if dog[1].is_set() or isinstance(e, socket.timeout):
                            raise self._timeout() from None
                        raise ServerError(f"{self.where} broke off its answer ({_short(e)})", "protocol") from None
                    if dog[1].is_set():
                        raise self._timeout()
                    if not raw:
                        ok = True
                        return
                    if not raw.endswith(b"\n"):       # every line of SSE and NDJSON ends in a newline
                        raise ServerError(f"{self.where} closed the stream before the end of the answer (mid-line): "
                                          "the server or a proxy broke off", "protocol")
                    yield raw.decode("utf-8", errors="replace").rstrip("\r\n")
            finally:
                self._done(conn, resp, dog, ok)
        finally:
            self._slots.release()


def _shut(sock: socket.socket | None, fired: threading.Event) -> None:
    fired.set()
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


_END = object()


def _close_quietly(handle: Any) -> None:
    try:
        handle.close()
    except Exception:  # noqa: BLE001 - closing a client another thread is reading from
        pass


def _short_obj(obj: Any) -> str:
    try:
        return _snippet(json.dumps(obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else obj,
                                   default=str).encode())
    except (TypeError, ValueError):
        return _snippet(str(obj).encode())


def _short(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text[:160]


def _snippet(data: bytes) -> str:
    return " ".join(data.decode("utf-8", errors="replace").split())[:200]


def status_error(where: str, what: str, status: int, data: bytes) -> ServerError:
    text = _snippet(data)
    try:
        obj = json.loads(data)
        err = obj.get("error") if isinstance(obj, dict) else None
        text = str(err.get("message") if isinstance(err, dict) else err or text)[:200]
    except (ValueError, AttributeError):
        pass
    hint = ("check its log (a model that does not fit in memory, a crashed worker)" if status >= 500
            else "it is overloaded: lower --workers" if status == 429 else "")
    return ServerError(f"{where} answered {status} to {what}: {text or 'no reason given'}"
                       + (f"; {hint}" if hint else ""), "status", status, text)


def decode(where: str, what: str, status: int, data: bytes, check: Callable[[Any], Any] | None = None) -> Any:
    """A 2xx body as JSON through check(); a body that is not JSON, or not of the promised shape, is a protocol
    error (never an answer)."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise ServerError(f"{where} answered {status} to {what} with a body that is not JSON "
                          f"({_snippet(data)[:80]!r}): a proxy error page or not the right server", "protocol",
                          status, _snippet(data)) from None
    if check is None:
        return obj
    try:
        return check(obj)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise ServerError(f"{where} answered {status} to {what} with JSON of another shape "
                          f"({_snippet(data)[:80]!r}): not the protocol it promises", "protocol", status,
                          _snippet(data)) from None


# ---------------------------------------------------------------- the pool

def run_pool(fn: Callable[[Any], Any], items: list, workers: int, on_done: Callable[[int, Any], None] | None = None,
             abort: threading.Event | None = None, bar: Any = None, what: str = "items") -> list:
    """fn(item) for every item on `workers` daemon threads; on_done(index, result) runs in the calling thread as
    each completes (save there). A ServerError fails its item only ("status", "protocol"), or stops the run
    ("down", "timeout": the server is gone or hung, so the items not yet asked fail with the same reason). Any
    other exception stops the run and is raised. Failed items -> ItemsFailed at the end (the results list, None
    for each failed item). An interrupted run returns at once (the threads are daemons)."""
    abort = abort or threading.Event()
    results: list = [None] * len(items)
    failed: dict[int, str] = {}
    if not items:
        return results
    todo: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    for pair in enumerate(items):
        todo.put(pair)

    def worker():
        while not abort.is_set():
            try:
                i, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, fn(item), None))
            except Aborted as e:
                done.put((i, None, e))
            except BaseException as e:  # noqa: BLE001 - handed to the calling thread
                done.put((i, None, e))
                if not isinstance(e, ServerError) or e.kind in ("down", "timeout"):
                    abort.set()
                    return

    threads = [threading.Thread(target=worker, daemon=True, name=f"pool-{k}") for k in range(min(workers, len(items)))]
    for t in threads:
        t.start()
    stop_reason = ""
    fatal: BaseException | None = None
    answered: set[int] = set()
    try:
        seen = 0
        while seen < len(items):
            try:
                i, r, err = done.get(timeout=0.2)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and done.empty():
                    break          # the rest were never asked (the run was stopped)
                continue
            seen += 1
            if err is None:
                results[i] = r
                answered.add(i)
                if on_done:
                    on_done(i, r)
            elif isinstance(err, ServerError):
                failed[i] = str(err)
                if err.kind in ("down", "timeout"):
                    stop_reason = stop_reason or str(err)
            elif isinstance(err, Aborted):
                failed[i] = ""
            else:
                fatal = fatal or err
            if bar is not None:
                bar.update(1)
    except BaseException:
        abort.set()
        raise
    if fatal is not None:
        abort.set()
        raise fatal
    for i in range(len(items)):
        if i not in answered:
            failed[i] = failed.get(i) or stop_reason or "not asked: the run was stopped"
    if failed:
        raise ItemsFailed(results, dict(sorted(failed.items())), what)
    return results
