"""Generation engines behind one interface, chosen by a model spec.

    from harness.engines import EngineConfig, EngineRequest, open_engine, engine_generate
    engine = open_engine(EngineConfig("openai:smollm2@http://127.0.0.1:8080"))   # health check, identity
    gens = engine_generate(engine, [EngineRequest([{"role": "user", "content": "Hi"}], max_new_tokens=48)],
                           on_done=lambda i, g: save(i, g))
    engine.identity            # what the server says it serves: part of the generation cache key

Specs:
  "" or <base> or transformers:<base>   in process (harness.models + harness.generation: exact, continuous
                                        batching, mixed adapters, the form constraint, classification heads)
  openai:<model>@<url>                  any OpenAI-compatible /v1/chat/completions: vLLM, llama.cpp's server
                                        (`python -m llama_cpp.server --model FILE`), Ollama's /v1
  ollama:<model>                        the official `ollama` client (OLLAMA_HOST respected, or `host`)

An adapter is addressed as the server knows it (EngineRequest.adapter): for openai the served model id (vLLM
`--lora-modules name=path` serves `name`; llama.cpp's server: its --model_alias), for Ollama a model made
with `ollama create` from a Modelfile with ADAPTER, in process the adapter's name. Remote requests run through
a bounded pool of `workers` threads with per-request timeouts and retries (connection errors, 429, 5xx, with
exponential backoff; a read timeout is not retried); a 200 answer that is not valid JSON fails that item only
(finish_reason "error", text ""). The server applies its own chat template to `messages`.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UserError
from harness.generation import Generation

KINDS = ("transformers", "openai", "ollama")
START_HINT = ("start one, e.g. `python -m llama_cpp.server --model FILE.gguf --host 127.0.0.1 --port 8080`, "
              "`vllm serve MODEL` or `ollama serve`")


def parse_engine_spec(spec: str) -> tuple[str, str, str]:
    """(kind, model, url): 'openai:m@http://h:8000' -> ('openai', 'm', 'http://h:8000/v1');
    'ollama:llama3' -> ('ollama', 'llama3', ''); '' / 'smollm2-135m-instruct' / 'transformers:x' -> in process."""
    spec = (spec or "").strip()
    kind, sep, rest = spec.partition(":")
    if kind == "openai":
        model, _, url = rest.partition("@")
        if not model or not url.startswith(("http://", "https://")):
            raise UserError(f"engine {spec!r}: write openai:<model>@<server url>, e.g. "
                            "openai:smollm2@http://127.0.0.1:8080 (llama.cpp) or openai:MODEL@http://127.0.0.1:8000 (vLLM)")
        url = url.rstrip("/")
        return kind, model, url if re.search(r"/v\d+$", url) else url + "/v1"
    if kind == "ollama":
        if not rest:
            raise UserError(f"engine {spec!r}: name the model, e.g. ollama:smollm2:135m")
        return kind, rest, ""
    if kind == "transformers":
        return kind, rest, ""
    if sep and "/" not in kind and "\\" not in kind and len(kind) > 1:   # 'vllm:x' and the like; not C:\ paths
        raise UserError(f"unknown engine {kind!r} in {spec!r}: use openai:<model>@<url>, ollama:<model>, "
                        "or a base model name (in process)")
    return "transformers", spec, ""


@dataclass
class EngineConfig:
    """Which engine and how hard to try. workers/timeouts/retries apply to servers; batch_size in process."""
    spec: str = ""
    host: str | None = None           # Ollama host; None = $OLLAMA_HOST or 127.0.0.1:11434
    workers: int = 4                  # concurrent requests to a server
    timeout: float = 60.0             # seconds for one answer
    connect_timeout: float = 3.0      # seconds to reach the server: a down server fails fast
    retries: int = 3                  # extra attempts on connection errors, 429 and 5xx
    backoff: float = 0.5              # first backoff in seconds (then x2)
    batch_size: int = 16              # in process: rows decoded together

    def __post_init__(self):
        kind, model, url = parse_engine_spec(self.spec)
        self.spec = f"openai:{model}@{url}" if kind == "openai" else f"ollama:{model}" if kind == "ollama" else model
        bad = [msg for ok, msg in [
            (1 <= self.workers <= 64, f"workers must be between 1 and 64, got {self.workers}"),
            (self.timeout > 0 and self.connect_timeout > 0, "timeouts must be > 0 seconds"),
            (0 <= self.retries <= 10, f"retries must be between 0 and 10, got {self.retries}"),
            (self.backoff >= 0, "backoff must be >= 0"),
            (1 <= self.batch_size <= 256, f"batch_size must be between 1 and 256, got {self.batch_size}"),
        ] if not ok]
        if bad:
            raise UserError(f"engine config: {'; '.join(bad)}")

    @property
    def kind(self) -> str:
        return parse_engine_spec(self.spec)[0]


@dataclass
class EngineRequest:
    """One generation. `messages` are chat turns (the server applies its chat template); in process `prompt`,
    when set, is used as the already rendered prompt instead. temperature 0 = greedy. `form` (a classical
    Chinese form for constrained decoding) runs in process only."""
    messages: list[dict]
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    adapter: str | None = None        # None: the engine's own model
    prompt: str = ""
    form: str = ""


@dataclass
class Engine:
    """An opened (health-checked) engine. Remote engines set `complete` (one request -> Generation, called from
    worker threads); the in-process engine sets `lm` (a harness.models.LoadedModel)."""
    config: EngineConfig
    kind: str
    model: str                        # the served model id (or the base's name in process)
    where: str                        # the server's URL or host, or "in process"
    identity: str                     # the served model's own identity (for the cache key)
    served: dict[str, str] = field(default_factory=dict)   # every served model id -> its identity
    complete: Callable[["EngineRequest"], Generation] | None = None
    stream: Callable[["EngineRequest", threading.Event, dict], Iterator[str]] | None = None
    lm: Any = None
    close: Callable[[], None] = lambda: None
    abort: threading.Event = field(default_factory=threading.Event)

    def identity_of(self, adapter: str | None = None) -> str:
        """The identity of what answers a request with `adapter` (a served model id remotely)."""
        if not adapter:
            return self.identity
        if self.kind == "transformers":
            return f"{self.identity}+{self.lm.attach(adapter).sha256}"
        if adapter not in self.served:
            raise UserError(not_served(adapter, self.where, list(self.served)))
        return self.served[adapter]

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- messages

def not_served(model: str, where: str, served: list[str]) -> str:
    return f"model {model!r} is not served at {where}; it serves: {', '.join(served) or 'nothing'}"


def _down(where: str, kind: str) -> str:
    if kind == "ollama":
        return (f"cannot reach Ollama at {where}: start it with `ollama serve` "
                "(or set OLLAMA_HOST to where it listens)")
    return f"cannot reach a server at {where}: {START_HINT}"


def _hang(where: str, seconds: float) -> str:
    return (f"the server at {where} connected but did not answer within {seconds:g} s; "
            "raise --timeout or check the server")


def _failing(where: str, status: int | None, what: str) -> str:
    return (f"the server at {where} answered {status or 'an error'} to {what}: check its log "
            "(a model that does not fit in memory, a crashed worker)")


# ---------------------------------------------------------------- retries (mirrors harness/judge.py)

class _HTTPError(Exception):
    def __init__(self, status_code: int, text: str):
        super().__init__(f"HTTP {status_code}: {text[:300]}")
        self.status_code = status_code
        self.error = text


class _BadAnswer(Exception):
    """A 200 answer that is not the JSON the protocol promises: that item fails, the run goes on."""


class _Unavailable(Exception):
    def __init__(self, cause: BaseException, attempts: int):
        super().__init__(str(cause))
        self.cause = f"{type(cause).__name__}: {str(cause)[:200]}"
        self.attempts = attempts
        status = getattr(cause, "status_code", None)
        self.status = status if isinstance(status, int) and status > 0 else None
        self.timed_out = _read_timeout(cause)


class _Aborted(Exception):
    pass


def _read_timeout(e: BaseException) -> bool:
    name = type(e).__name__
    if name in ("ConnectTimeout", "ConnectError"):
        return False
    return name in ("ReadTimeout", "WriteTimeout", "PoolTimeout", "Timeout") or isinstance(e, TimeoutError)


def _transient(e: BaseException) -> bool:
    status = getattr(e, "status_code", None)
    if isinstance(status, int) and status > 0:
        return status >= 500 or status == 429
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    for mod, names in (("httpx", ("TransportError",)), ("requests", ("ConnectionError", "Timeout"))):
        m = sys.modules.get(mod)
        if m and any(isinstance(e, getattr(m, n)) for n in names):
            return True
    return False


def _with_retries(cfg: EngineConfig, fn: Callable[[], Any], abort: threading.Event, connect_retries: bool = True):
    """fn() with up to cfg.retries extra attempts on connection errors, 429 and 5xx. A read timeout already
    cost `timeout` seconds: never retried. connect_retries=False: a refused connection fails at once."""
    attempt = 0
    while True:
        if abort.is_set():
            raise _Aborted()
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not _transient(e):
                raise
            refused = isinstance(e, ConnectionError) or type(e).__name__ in ("ConnectError", "ConnectTimeout")
            if attempt >= cfg.retries or (refused and not connect_retries) or _read_timeout(e):
                raise _Unavailable(e, attempt + 1) from None
            if abort.wait(cfg.backoff * (2 ** attempt)):
                raise _Aborted() from None
            attempt += 1


def _health(cfg: EngineConfig, where: str, fn: Callable[[], Any], what: str):
    try:
        return _with_retries(cfg, fn, threading.Event(), connect_retries=False)
    except _Unavailable as e:
        if e.timed_out:
            raise UserError(_hang(where, cfg.timeout)) from None
        if e.status is not None:
            raise UserError(_failing(where, e.status, what)) from None
        raise UserError(_down(where, cfg.kind)) from None


# ---------------------------------------------------------------- opening

def open_engine(cfg: EngineConfig, lm: Any = None) -> Engine:
    """Health-check and open `cfg.spec`: the server is up and serves the model. lm: a loaded harness model the
    in-process engine reuses when it is the same base."""
    kind = cfg.kind
    if kind == "openai":
        return _open_openai(cfg)
    if kind == "ollama":
        return _open_ollama(cfg)
    return _open_local(cfg, lm)


def _stable_entry(entry: dict, asked_at: float) -> dict:
    """A /v1/models entry without what changes on every call: vLLM's and llama-server's `created` (the time of
    the answer, not of the model) and vLLM's `permission` (fresh random ids)."""
    out = {k: v for k, v in entry.items() if k not in ("permission", "permissions")}
    if isinstance(out.get("created"), (int, float)) and out["created"] >= asked_at - 2:
        out.pop("created")
    return out


def _open_openai(cfg: EngineConfig) -> Engine:
    import requests

    _, model, base = parse_engine_spec(cfg.spec)
    session = requests.Session()
    if os.environ.get("OPENAI_API_KEY"):
        session.headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    timeout = (cfg.connect_timeout, cfg.timeout)

    def get_models():
        r = session.get(f"{base}/models", timeout=timeout)
        if r.status_code >= 400:
            raise _HTTPError(r.status_code, r.text)
        try:
            return r.json()
        except ValueError:
            raise _BadAnswer(r.text[:200]) from None

    asked_at = time.time()
    try:
        listing = _health(cfg, base, get_models, "the model list")
    except (_HTTPError, _BadAnswer) as e:
        session.close()
        raise UserError(f"{base}/models did not answer like an OpenAI-compatible server ({str(e)[:120]}): "
                        "check the URL (it ends in /v1)") from None
    except UserError:
        session.close()
        raise
    entries = [m for m in (listing.get("data") or []) if isinstance(m, dict) and m.get("id")] \
        if isinstance(listing, dict) else []
    served = {str(m["id"]): json.dumps(_stable_entry(m, asked_at), sort_keys=True) for m in entries}
    if model not in served:
        session.close()
        raise UserError(not_served(model, base, list(served)))

    def complete(req: EngineRequest) -> Generation:
        if req.form:
            raise UserError("the form constraint runs in process only: drop the engine or the form")
        body: dict[str, Any] = {"model": req.adapter or model, "messages": req.messages, "stream": False,
                                "max_tokens": req.max_new_tokens, "temperature": req.temperature, "seed": req.seed}
        if req.stop:
            body["stop"] = list(req.stop)
        t0 = time.perf_counter()
        r = session.post(f"{base}/chat/completions", json=body, timeout=timeout)
        if r.status_code >= 400:
            raise _HTTPError(r.status_code, r.text)
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise _BadAnswer(r.text[:200]) from None
        return Generation(_prompt_text(req), text, int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0), time.perf_counter() - t0,
                          _reason(choice.get("finish_reason")))

    def stream(req: EngineRequest, stop: threading.Event, stats: dict) -> Iterator[str]:
        body: dict[str, Any] = {"model": req.adapter or model, "messages": req.messages, "stream": True,
                                "stream_options": {"include_usage": True}, "max_tokens": req.max_new_tokens,
                                "temperature": req.temperature, "seed": req.seed}
        if req.stop:
            body["stop"] = list(req.stop)
        r = session.post(f"{base}/chat/completions", json=body, timeout=timeout, stream=True)
        try:
            if r.status_code >= 400:
                raise _HTTPError(r.status_code, r.text)
            for line in r.iter_lines(decode_unicode=True):
                if stop.is_set():
                    stats["finish_reason"] = "cancelled"
                    return
                if not line or not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise _BadAnswer(data[:200]) from None
                if chunk.get("usage"):
                    stats["prompt_tokens"] = int(chunk["usage"].get("prompt_tokens") or 0)
                    stats["new_tokens"] = int(chunk["usage"].get("completion_tokens") or 0)
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if choice.get("finish_reason"):
                        stats["finish_reason"] = _reason(choice["finish_reason"])
                    if text:
                        yield text
        finally:
            r.close()

    return Engine(cfg, "openai", model, base, served[model], served, complete=complete, stream=stream,
                  close=session.close)


def _open_ollama(cfg: EngineConfig) -> Engine:
    import httpx
    import ollama

    model = parse_engine_spec(cfg.spec)[1]
    where = cfg.host or os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434"
    tls = {} if where.startswith("https://") else {"verify": False}
    client = ollama.Client(host=cfg.host, timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout), **tls)

    def get_list():
        try:
            return client.list()
        except (json.JSONDecodeError, ValueError) as e:
            if isinstance(e, ollama.ResponseError):
                raise
            raise _BadAnswer(str(e)[:200]) from None

    try:
        listing = _health(cfg, where, get_list, "the model list")
    except ollama.ResponseError as e:
        client.close()
        raise UserError(_failing(where, e.status_code, "the model list")) from None
    except _BadAnswer as e:
        client.close()
        raise UserError(f"{where} did not answer /api/tags like Ollama ({e}): check OLLAMA_HOST") from None
    except UserError:
        client.close()
        raise
    served = {str(m.model): f"ollama:{m.model}@{m.digest}" for m in listing.models}
    full = model if ":" in model else model + ":latest"
    name = model if model in served else full
    if name not in served:
        client.close()
        raise UserError(not_served(model, where, list(served)) +
                        f" (`ollama pull {model}`, or `ollama create {model} -f Modelfile` for an exported adapter)")
    for short in [n for n in served if n.endswith(":latest")]:
        served.setdefault(short[:-len(":latest")], served[short])

    def complete(req: EngineRequest) -> Generation:
        import pydantic
        if req.form:
            raise UserError("the form constraint runs in process only: drop the engine or the form")
        options: dict[str, Any] = {"temperature": req.temperature, "seed": req.seed, "num_predict": req.max_new_tokens}
        if req.stop:
            options["stop"] = list(req.stop)
        t0 = time.perf_counter()
        try:
            resp = client.chat(model=req.adapter or name, messages=req.messages, options=options, stream=False)
        except (json.JSONDecodeError, pydantic.ValidationError) as e:
            raise _BadAnswer(str(e)[:200]) from None
        return Generation(_prompt_text(req), resp.message.content or "", int(resp.prompt_eval_count or 0),
                          int(resp.eval_count or 0), time.perf_counter() - t0, _reason(resp.done_reason))

    def stream(req: EngineRequest, stop: threading.Event, stats: dict) -> Iterator[str]:
        options: dict[str, Any] = {"temperature": req.temperature, "seed": req.seed, "num_predict": req.max_new_tokens}
        if req.stop:
            options["stop"] = list(req.stop)
        parts = client.chat(model=req.adapter or name, messages=req.messages, options=options, stream=True)
        try:
            for part in parts:
                if stop.is_set():
                    stats["finish_reason"] = "cancelled"
                    return
                if part.done:
                    stats.update(prompt_tokens=int(part.prompt_eval_count or 0), new_tokens=int(part.eval_count or 0),
                                 finish_reason=_reason(part.done_reason))
                if part.message and part.message.content:
                    yield part.message.content
        finally:
            close = getattr(parts, "close", None)
            if close:
                close()

    return Engine(cfg, "ollama", name, where, served[name], served, complete=complete, stream=stream,
                  close=client.close)


def _open_local(cfg: EngineConfig, lm: Any = None) -> Engine:
    from harness.models import load_model, resolve_base

    base = parse_engine_spec(cfg.spec)[1] or None
    if lm is None or (base and resolve_base(base).name != lm.name):
        lm = load_model(base)
    spec = lm.spec
    parts = {"name": spec.name, "source": spec.source, "location": str(spec.location), "file": str(spec.file)}
    if spec.package:
        from importlib import metadata
        try:
            parts["package"] = f"{spec.package}=={metadata.version(spec.package)}"
        except metadata.PackageNotFoundError:
            parts["package"] = spec.package
    identity = "transformers:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return Engine(cfg, "transformers", lm.name, "in process", identity, lm=lm)


def _prompt_text(req: EngineRequest) -> str:
    """Generation.prompt for a server: the messages as JSON (the server renders its own template)."""
    return req.prompt or json.dumps(req.messages, ensure_ascii=False)


def _reason(reason: Any) -> str:
    reason = str(reason or "stop")
    return {"eos": "stop", "stop_sequence": "stop", "max_tokens": "length"}.get(reason, reason)


# ---------------------------------------------------------------- generating

def chat_turns(messages: list[dict]) -> list[dict]:
    """The user and assistant turns of a conversation that hold text (what a chat template renders); a
    conversation without any is one sentence."""
    turns = [{"role": m["role"], "content": str(m["content"])} for m in messages
             if m.get("role") in ("user", "assistant") and str(m.get("content", "")).strip()]
    if not turns:
        raise UserError("the conversation has no message to answer: write one")
    return turns


def stream_chat(engine: Engine, req: EngineRequest, stop_event: threading.Event | None = None,
                stats: dict | None = None) -> Iterator[str]:
    """Stream one chat answer from a server engine, chunk by chunk (the app's chat and poem tabs). Setting
    stop_event, or closing the iterator, hangs up at the next chunk. `stats` gets prompt_tokens, new_tokens
    (the server's counts), first_token_seconds, seconds and finish_reason (stop, length, cancelled).
    Failures are one sentence (UserError): the server went down, answered an error, or stopped answering."""
    if engine.stream is None:
        raise UserError(f"the {engine.kind} engine does not stream: use harness.generation.stream in process")
    if req.form:
        raise UserError("the form constraint runs in process only: drop the engine or the form")
    stop_event = stop_event or threading.Event()
    stats = stats if stats is not None else {}
    stats.update(engine=engine.config.spec, adapter=req.adapter or "", finish_reason="")
    t0 = time.perf_counter()
    gen = engine.stream(req, stop_event, stats)
    try:
        for chunk in gen:
            if "first_token_seconds" not in stats:
                stats["first_token_seconds"] = time.perf_counter() - t0
            yield chunk
    except GeneratorExit:
        stats["finish_reason"] = stats.get("finish_reason") or "cancelled"
        raise
    except _BadAnswer as e:
        raise UserError(f"{engine.where} sent a stream that is not in the server's format ({str(e)[:120]}): "
                        f"check that it is an OpenAI-compatible server or Ollama") from None
    except Exception as e:  # noqa: BLE001 - HTTP and connection errors of requests/httpx/ollama: one sentence
        status = getattr(e, "status_code", None)
        if isinstance(status, int) and status == 404:
            raise UserError(not_served(req.adapter or engine.model, engine.where, list(engine.served))) from None
        if isinstance(status, int) and status >= 400:
            raise UserError(_failing(engine.where, status, "the chat")) from None
        if _read_timeout(e):
            raise UserError(_hang(engine.where, engine.config.timeout)) from None
        if _transient(e):
            raise UserError(_down(engine.where, engine.kind)) from None
        raise
    finally:
        gen.close()
        stats["seconds"] = time.perf_counter() - t0
        stats["finish_reason"] = stats.get("finish_reason") or "stop"


def engine_generate(engine: Engine, requests: list[EngineRequest],
                    on_done: Callable[[int, Generation], None] | None = None,
                    progress: bool = False) -> list[Generation]:
    """Generate every request; `on_done(index, generation)` runs in the calling thread as each one completes
    (store it there: an interrupted run loses only the requests in flight). A server's failures after the
    retries end the run with one sentence (UserError); a 200 answer that is not JSON fails only that item."""
    if not requests:
        return []
    if engine.kind == "transformers":
        return _generate_local(engine, requests, on_done, progress)
    for r in requests:
        if r.adapter and r.adapter not in engine.served:
            raise UserError(not_served(r.adapter, engine.where, list(engine.served)))
    out: list[Generation | None] = [None] * len(requests)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(requests), desc="generate", unit="item", file=sys.stderr)
    try:
        _pool(engine, requests, out, on_done, bar)
    finally:
        if bar:
            bar.close()
    return out  # type: ignore[return-value]


def _call(engine: Engine, req: EngineRequest) -> Generation:
    assert engine.complete is not None
    t0 = time.perf_counter()
    resume = "Items generated so far are saved: rerun the same command to resume"
    try:
        return _with_retries(engine.config, lambda: engine.complete(req), engine.abort)
    except _BadAnswer:
        return Generation(_prompt_text(req), "", 0, 0, time.perf_counter() - t0, "error")
    except _Unavailable as e:
        if e.timed_out:
            raise UserError(f"{_hang(engine.where, engine.config.timeout)}. {resume}") from None
        if e.status is not None:
            raise UserError(f"{_failing(engine.where, e.status, 'a generation request')}; gave up after "
                            f"{e.attempts} attempts. {resume}") from None
        raise UserError(f"{_down(engine.where, engine.kind)}; gave up after {e.attempts} attempts. {resume}") from None
    except (_Aborted, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - a 4xx: not worth retrying
        status = getattr(e, "status_code", None)
        text = str(getattr(e, "error", "") or e)
        if status == 404:
            raise UserError(not_served(req.adapter or engine.model, engine.where, list(engine.served))) from None
        raise UserError(f"the server at {engine.where} refused the request ({status or type(e).__name__}): "
                        f"{text[:200]}") from None


def _pool(engine: Engine, reqs: list[EngineRequest], results: list, on_done, bar) -> None:
    """A bounded pool of daemon threads; results are handed to the calling thread as they complete."""
    todo: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    for item in enumerate(reqs):
        todo.put(item)

    def worker():
        while not engine.abort.is_set():
            try:
                i, req = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, _call(engine, req), None))
            except BaseException as e:  # noqa: BLE001 - handed to the calling thread
                done.put((i, None, e))
                return

    engine.abort.clear()
    threads = [threading.Thread(target=worker, daemon=True, name=f"engine-{k}")
               for k in range(min(engine.config.workers, len(reqs)))]
    for t in threads:
        t.start()
    try:
        for _ in range(len(reqs)):
            while True:
                try:
                    i, g, err = done.get(timeout=0.5)
                    break
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and done.empty():
                        raise RuntimeError("engine workers stopped without an answer")
            if err is not None:
                raise err
            results[i] = g
            if on_done:
                on_done(i, g)
            if bar:
                bar.update(1)
    finally:
        engine.abort.set()           # stop the other workers (a finished run has none left)


def _generate_local(engine: Engine, reqs: list[EngineRequest], on_done, progress: bool) -> list[Generation]:
    """In process: requests grouped by (adapter, decoding), each group through generate_batch."""
    from harness.generation import GenerationConfig, generate_batch

    lm = engine.lm
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(reqs):
        key = (r.adapter, r.max_new_tokens, r.temperature, r.seed, tuple(r.stop), r.form)
        groups.setdefault(key, []).append(i)
    out: list[Generation | None] = [None] * len(reqs)
    for (adapter, max_new, temp, seed, stop, form), idx in groups.items():
        cfg = GenerationConfig(max_new_tokens=max_new, do_sample=temp > 0, temperature=temp if temp > 0 else 0.7,
                               seed=seed, stop=stop, form=form, batch_size=engine.config.batch_size)
        prompts = [reqs[i].prompt or lm.render_chat(reqs[i].messages, max_new_tokens=max_new) for i in idx]

        def store(k: int, g: Generation, idx=idx) -> None:
            out[idx[k]] = g
            if on_done:
                on_done(idx[k], g)
        generate_batch(lm, prompts, cfg, adapter=adapter, progress=progress, on_done=store)
    return out  # type: ignore[return-value]
