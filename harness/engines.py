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
  ollama:<model>                        Ollama's HTTP API (OLLAMA_HOST respected, or `host`)

An adapter is addressed as the server knows it (EngineRequest.adapter): for openai the served model id (vLLM
`--lora-modules name=path` serves `name`; llama.cpp's server: its --model_alias), for Ollama a model made
with `ollama create` from a Modelfile with ADAPTER, in process the adapter's name. Servers are spoken to through
harness.http (the one client; for Ollama it drives the official `ollama` client): a total deadline per answer, retries with backoff on transient faults, a bounded
pool of `workers` threads. A 200 whose body breaks the protocol is a failure, never an answer: engine_generate
hands every good answer to on_done and then raises http.ItemsFailed naming the failed items; a server that is
down or hung stops the run at once. The server applies its own chat template to `messages`.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UserError
from harness.generation import Generation
from harness.http import Client, ItemsFailed, ServerError, parse_url, run_pool

__all__ = ["EngineConfig", "EngineRequest", "Engine", "open_engine", "engine_generate", "stream_chat",
           "parse_engine_spec", "ollama_url", "chat_turns", "prompt_text", "ItemsFailed", "ServerError"]

KINDS = ("transformers", "openai", "ollama")
START_HINT = ("start one, e.g. `python -m llama_cpp.server --model FILE.gguf --host 127.0.0.1 --port 8080`, "
              "`vllm serve MODEL` or `ollama serve`")


def parse_engine_spec(spec: str, what: str = "engine") -> tuple[str, str, str]:
    """(kind, model, url): 'openai:m@http://h:8000' -> ('openai', 'm', 'http://h:8000/v1');
    'ollama:llama3' -> ('ollama', 'llama3', ''); '' / 'smollm2-135m-instruct' / 'transformers:x' -> in process.
    The one spec parser (harness.judge.parse_spec adds the judge's defaults); `what` names the spec in errors."""
    spec = (spec or "").strip()
    kind, sep, rest = spec.partition(":")
    if kind == "openai":
        model, _, url = rest.partition("@")
        if not model or not url:
            raise UserError(f"{what} {spec!r}: write openai:<model>@<server url>, e.g. "
                            "openai:smollm2@http://127.0.0.1:8080 (llama.cpp) or openai:llama3@http://127.0.0.1:8000 (vLLM)")
        if not url.startswith(("http://", "https://")):
            raise UserError(f"{what} {spec!r}: the server URL must start with http:// or https://, e.g. "
                            f"openai:{model}@http://{url}")
        url = url.rstrip("/")
        parse_url(url, f"the server URL in {spec!r}")
        return kind, model, url if re.search(r"/v\d+$", url) else url + "/v1"
    if kind == "ollama":
        if not rest:
            raise UserError(f"engine {spec!r}: name the model, e.g. ollama:smollm2:135m")
        return kind, rest, ""
    if kind == "transformers":
        if not rest:
            raise UserError(f"engine {spec!r}: name the base model, e.g. transformers:smollm2-135m-instruct")
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
    timeout: float = 60.0             # seconds for one whole answer (connect + every read; a stream too)
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
        if kind == "ollama":
            ollama_url(self.host)         # a bad OLLAMA_HOST or host: its one sentence, before anything starts

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
    schema: dict | None = None        # servers: a JSON schema the answer must follow (Ollama format, OpenAI response_format)
    num_ctx: int = 0                  # Ollama: the context to run with (0: the server's default)


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
    digest: str = ""                  # Ollama: the served model's digest
    info: Callable[[], dict] | None = None     # Ollama: the model's model_info (/api/show)

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


# ---------------------------------------------------------------- opening

def _health(cfg: EngineConfig, where: str, fn: Callable[[], Any], what: str):
    """A health-check request: a server that cannot be reached fails at once, in one sentence with the fix
    (a ServerError of the same kind, so a caller such as the judge may say it in its own words)."""
    try:
        return fn()
    except ServerError as e:
        if e.kind == "down":
            msg = _down(where, cfg.kind)
        elif e.kind == "timeout":
            msg = _hang(where, cfg.timeout)
        elif e.kind == "status":
            msg = _failing(where, e.status, what)
        else:
            msg = (f"{where} did not answer {what} like "
                   f"{'Ollama' if cfg.kind == 'ollama' else 'an OpenAI-compatible server'} ({e.body[:80]!r}): "
                   f"check the URL" + (" (OLLAMA_HOST)" if cfg.kind == "ollama" else " (it ends in /v1)"))
        raise ServerError(msg, e.kind, e.status, e.body) from None


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


def _client(cfg: EngineConfig, base: str, where: str, headers: dict | None = None) -> Client:
    return Client(base, where, timeout=cfg.timeout, connect_timeout=cfg.connect_timeout, retries=cfg.retries,
                  backoff=cfg.backoff, workers=cfg.workers, headers=headers)


def _openai_models(data: Any) -> list[dict]:
    entries = data["data"]
    if not isinstance(entries, list):
        raise TypeError("data is not a list")
    return [m for m in entries if isinstance(m, dict) and m.get("id")]


def _openai_answer(data: Any) -> tuple[str, dict, str]:
    choice = data["choices"][0]
    text = choice["message"]["content"]
    if text is not None and not isinstance(text, str):
        raise TypeError("content is not text")
    usage = data.get("usage") or {}
    return text or "", usage, choice.get("finish_reason")


def _open_openai(cfg: EngineConfig) -> Engine:
    _, model, base = parse_engine_spec(cfg.spec)
    key = os.environ.get("OPENAI_API_KEY")
    client = _client(cfg, base, f"the server at {base}", {"Authorization": f"Bearer {key}"} if key else None)
    asked_at = time.time()
    try:
        entries = _health(cfg, base, lambda: client.json("GET", "/models", check=_openai_models, retry_down=False),
                          "the model list")
    except UserError:
        client.close()
        raise
    served = {str(m["id"]): json.dumps(_stable_entry(m, asked_at), sort_keys=True) for m in entries}
    if model not in served and model + ":latest" in served:     # Ollama's /v1 lists llama3 as llama3:latest
        served[model] = served[model + ":latest"]
    if model not in served:
        client.close()
        raise UserError(not_served(model, base, list(served)))
    state = {"schema": True}

    def body_of(req: EngineRequest, stream: bool) -> dict:
        body: dict[str, Any] = {"model": req.adapter or model, "messages": req.messages, "stream": stream,
                                "max_tokens": req.max_new_tokens, "temperature": req.temperature, "seed": req.seed}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if req.stop:
            body["stop"] = list(req.stop)
        if req.schema and state["schema"]:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": req.schema}}
        return body

    def complete(req: EngineRequest) -> Generation:
        if req.form:
            raise UserError("the form constraint runs in process only: drop the engine or the form")
        t0 = time.perf_counter()
        try:
            text, usage, reason = client.json("POST", "/chat/completions", body_of(req, False), check=_openai_answer)
        except ServerError as e:
            if not (e.status == 400 and req.schema and state["schema"] and "response_format" in e.body):
                raise
            state["schema"] = False          # a server without structured output: ask again without it
            text, usage, reason = client.json("POST", "/chat/completions", body_of(req, False), check=_openai_answer)
        return Generation(prompt_text(req), text, int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0), time.perf_counter() - t0, _reason(reason))

    def stream(req: EngineRequest, stop: threading.Event, stats: dict) -> Iterator[str]:
        lines = client.lines("POST", "/chat/completions", body_of(req, True))
        try:
            for line in lines:
                if stop.is_set():
                    stats["finish_reason"] = "cancelled"
                    return
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return

                try:
                    chunk = json.loads(data)
                    choices = chunk.get("choices") or []
                    usage = chunk.get("usage")
                    pieces = [((c.get("delta") or {}).get("content") or "", c.get("finish_reason")) for c in choices]
                except (ValueError, AttributeError, TypeError):
                    raise ServerError(f"{base} sent a stream that is not in the server's format ({data[:80]!r})",
                                      "protocol", 200, data[:200]) from None
                if usage:
                    stats["prompt_tokens"] = int(usage.get("prompt_tokens") or 0)
                    stats["new_tokens"] = int(usage.get("completion_tokens") or 0)
                for text, reason in pieces:
                    if reason:
                        stats["finish_reason"] = _reason(reason)
                    if text:
                        yield text
            raise _broken_off(base)       # the connection closed before `data: [DONE]`
        finally:
            lines.close()

    return Engine(cfg, "openai", model, base, served[model], served, complete=complete, stream=stream,
                  close=client.close)


def ollama_url(host: str | None = None) -> str:
    """Where Ollama listens, from `host` or $OLLAMA_HOST (else 127.0.0.1:11434), as Ollama's own client reads it:
    'h', 'h:p', ':p', 'http://h[:p]' (an http(s) URL without a port uses 80/443). One sentence for a bad value."""
    raw = host if host else os.environ.get("OLLAMA_HOST", "")
    what = "the Ollama host" if host else "OLLAMA_HOST"
    value = raw.strip()
    if not value:
        return "http://127.0.0.1:11434"
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "http", value
        default_port = 11434
    else:
        default_port = 443 if scheme == "https" else 80
    hostport, _, path = rest.partition("/")
    name, colon, port = hostport.rpartition(":") if not hostport.endswith("]") else (hostport, "", "")
    if not colon:
        name, port = hostport, ""
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise UserError(f"{what}={raw!r}: the port {port!r} is not a number from 1 to 65535; write it like "
                        f"127.0.0.1:11434")
    if scheme not in ("http", "https"):
        raise UserError(f"{what}={raw!r}: use host:port or an http(s) URL, e.g. 127.0.0.1:11434")
    url = f"{scheme}://{name or '127.0.0.1'}:{port or default_port}" + (f"/{path}".rstrip("/") if path else "")
    parse_url(url, what)
    return url


def _broken_off(where: str) -> ServerError:
    return ServerError(f"{where} closed the stream before the end of the answer (no end-of-stream marker): "
                       "the server or a proxy broke off", "protocol")


def where_of(spec: str, host: str | None = None) -> str:
    """How messages name the server of a spec: its URL (openai), the Ollama host as the user wrote it."""
    kind, _, url = parse_engine_spec(spec)
    if kind == "ollama":
        return (host or os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434").strip()
    return url or "in process"


def _ollama_tags(tags: Any) -> dict[str, str]:
    if "models" not in tags.model_fields_set:       # {} or another JSON: not Ollama's model list
        raise KeyError("models")
    return {str(m.model): str(m.digest or "") for m in tags.models if m.model}


def _ollama_answer(resp: Any) -> Any:
    if not isinstance(resp.message.content or "", str):
        raise TypeError("content is not text")
    return resp


def _ollama_client(cfg: EngineConfig, url: str) -> Callable[[], Any]:
    """Makes the official `ollama` client (httpx underneath). Its own httpx timeout (per read) is a backstop: the
    total deadline per answer is harness.http's. Each instance serves one request at a time (the pool of
    `workers` is harness.http's), so a timed-out answer closes only its own connection."""
    import httpx
    import ollama

    def make() -> Any:
        return ollama.Client(host=url, timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout),
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
    return make


def _open_ollama(cfg: EngineConfig) -> Engine:
    model = parse_engine_spec(cfg.spec)[1]
    url = ollama_url(cfg.host)
    where = where_of(cfg.spec, cfg.host)
    client = Client(url, f"Ollama at {where}", timeout=cfg.timeout, connect_timeout=cfg.connect_timeout,
                    retries=cfg.retries, backoff=cfg.backoff, workers=cfg.workers, official=_ollama_client(cfg, url))
    try:
        digests = _health(cfg, where, lambda: client.call(lambda c: c.list(), "GET /api/tags", check=_ollama_tags,
                                                          retry_down=False), "the model list")
    except UserError:
        client.close()
        raise
    served = {name: f"ollama:{name}@{digest}" for name, digest in digests.items()}
    full = model if ":" in model else model + ":latest"
    name = model if model in served else full
    if name not in served:
        client.close()
        raise UserError(not_served(model, where, list(served)) +
                        f" (`ollama pull {model}`, or `ollama create {model} -f Modelfile` for an exported adapter)")
    for short in [n for n in served if n.endswith(":latest")]:
        served.setdefault(short[:-len(":latest")], served[short])

    def chat(req: EngineRequest, stream: bool) -> Callable[[Any], Any]:
        options: dict[str, Any] = {"temperature": req.temperature, "seed": req.seed, "num_predict": req.max_new_tokens}
        if req.num_ctx:
            options["num_ctx"] = req.num_ctx
        if req.stop:
            options["stop"] = list(req.stop)
        return lambda c: c.chat(model=req.adapter or name, messages=req.messages, options=options, stream=stream,
                                format=req.schema or None)

    def complete(req: EngineRequest) -> Generation:
        if req.form:
            raise UserError("the form constraint runs in process only: drop the engine or the form")
        t0 = time.perf_counter()
        resp = client.call(chat(req, False), "POST /api/chat", check=_ollama_answer)
        return Generation(prompt_text(req), resp.message.content or "", int(resp.prompt_eval_count or 0),
                          int(resp.eval_count or 0), time.perf_counter() - t0, _reason(resp.done_reason))

    def stream(req: EngineRequest, stop: threading.Event, stats: dict) -> Iterator[str]:
        parts = client.stream(chat(req, True), "POST /api/chat")
        try:
            for part in parts:
                if stop.is_set():
                    stats["finish_reason"] = "cancelled"
                    return
                text = part.message.content or ""
                if text:
                    yield text
                if part.done:
                    stats.update(prompt_tokens=int(part.prompt_eval_count or 0),
                                 new_tokens=int(part.eval_count or 0), finish_reason=_reason(part.done_reason))
                    return
            raise _broken_off(where)      # the connection closed before the part with "done": true
        finally:
            parts.close()

    def show() -> dict:
        return client.call(lambda c: c.show(name), "POST /api/show", check=lambda r: dict(r.modelinfo or {}))

    return Engine(cfg, "ollama", name, where, served[name], served, complete=complete, stream=stream,
                  close=client.close, digest=digests.get(name, ""), info=show)


def _open_local(cfg: EngineConfig, lm: Any = None) -> Engine:
    from harness.models import load_model, model_fingerprint, resolve_base

    base = parse_engine_spec(cfg.spec)[1] or None
    if lm is None or (base and resolve_base(base).name != lm.name):
        lm = load_model(base)
    return Engine(cfg, "transformers", lm.name, "in process", "transformers:" + model_fingerprint(lm.spec), lm=lm)


def prompt_text(req: EngineRequest) -> str:
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
    The whole answer has the engine's timeout (a total deadline). Failures are one sentence (a UserError; a
    http.ServerError for the server's own failures): down, an error status, too slow, or not its protocol."""
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
    except ServerError as e:
        raise _sentence(engine, req, e, "the chat") from None
    finally:
        gen.close()
        stats["seconds"] = time.perf_counter() - t0
        stats["finish_reason"] = stats.get("finish_reason") or "stop"


def _sentence(engine: Engine, req: EngineRequest, e: ServerError, what: str) -> ServerError:
    """A server failure in the engine's words: not served (404), failing (5xx), hung, down, broken answers."""
    if e.kind == "status" and e.status == 404:
        msg = not_served(req.adapter or engine.model, engine.where, list(engine.served))
    elif e.kind == "status" and (e.status or 0) >= 500:
        msg = f"{_failing(engine.where, e.status, what)} ({e.body[:120]})"
    elif e.kind == "timeout":
        msg = _hang(engine.where, engine.config.timeout)
    elif e.kind == "down":
        msg = _down(engine.where, engine.kind)
    elif e.kind == "protocol" and e.body:
        msg = (f"{engine.where} sent an answer that is not in the server's format ({e.body[:80]!r}): check that "
               "it is an OpenAI-compatible server or Ollama, not a proxy's error page")
    else:
        msg = str(e)
    return ServerError(msg, e.kind, e.status, e.body)


def engine_generate(engine: Engine, requests: list[EngineRequest],
                    on_done: Callable[[int, Generation], None] | None = None,
                    progress: bool = False) -> list[Generation]:
    """Generate every request; `on_done(index, generation)` runs in the calling thread as each one completes
    (store it there: an interrupted run loses only the requests in flight). Servers: an item whose answer
    failed (an error status after the retries, a 200 that is not the protocol's JSON) is not an answer; every
    good one is handed to on_done, then http.ItemsFailed (a UserError naming how many failed; `.results` has
    None for each) is raised. A server that is down or hung stops the run at once (the rest fail the same way)."""
    if not requests:
        return []
    if engine.kind == "transformers":
        return _generate_local(engine, requests, on_done, progress)
    for r in requests:
        if r.adapter and r.adapter not in engine.served:
            raise UserError(not_served(r.adapter, engine.where, list(engine.served)))
        if r.form:
            raise UserError("the form constraint runs in process only: drop the engine or the form")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(requests), desc="generate", unit="item", file=sys.stderr)

    def one(req: EngineRequest) -> Generation:
        try:
            return engine.complete(req)
        except ServerError as e:
            if e.kind == "status" and e.status is not None and 400 <= e.status < 500 and e.status not in (404, 429):
                raise UserError(f"the server at {engine.where} refused the request ({e.status}): {e.body[:200]}") from None
            raise _sentence(engine, req, e, "a generation request") from None

    try:
        return run_pool(one, requests, engine.config.workers, on_done, threading.Event(), bar, "generations")
    finally:
        if bar:
            bar.close()


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
