"""The app's chat and free poems through a serving engine: `python app.py --engine openai:<model>@<url>` (vLLM,
llama.cpp's server, any OpenAI-compatible /v1) or `--engine ollama:<model>`.

    from harness.app.server import is_server_spec, server_route, server_stream
    srv, notice = server_route("openai:smol@http://127.0.0.1:8080", adapter, form)   # (None, why) -> transformers
    for text, stats, prompt, engine, notice in server_stream(state, srv, messages, system, adapter, sampling, session):
        ...

The server is opened (health-checked) once per spec and kept. An adapter is addressed as the server knows it: the
adapter's name must be a model id the server serves (vLLM `--lora-modules NAME=...`, an Ollama model made with
`ADAPTER`, llama-cpp-python's `--model_alias NAME`); one it does not serve falls back to transformers with a
notice naming what it serves, as does the form constraint (in process only).
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from harness.errors import UserError

_servers: dict[str, Any] = {}
_lock = threading.Lock()


def is_server_spec(engine: str) -> bool:
    return str(engine or "").startswith(("openai:", "ollama:"))


def app_engine(spec: str) -> str:
    """`python app.py --engine SPEC` checked: transformers, llama.cpp, or a server spec (normalised, e.g.
    openai:smol@http://127.0.0.1:8080/v1); anything else is a UserError in one sentence."""
    spec = str(spec or "").strip()
    if spec in ("auto", "transformers", "llama.cpp"):
        return spec
    if is_server_spec(spec):
        from harness.engines import EngineConfig
        return EngineConfig(spec).spec          # a malformed spec: its one sentence, with an example
    raise UserError(f"--engine {spec!r} is not an engine: use auto, transformers, llama.cpp, openai:<model>@<url> "
                    "(vLLM, llama.cpp's server, any OpenAI-compatible /v1) or ollama:<model>")


def choose_engine(engine: str) -> tuple[str, str]:
    """(the chat engine to use, a one-line note or ""). auto: llama.cpp when harness.llamacpp.is_available() says
    yes, else transformers, with the note saying why; llama.cpp asked for and not available: transformers, with
    the note; transformers and server specs as given (a server is reached on first use)."""
    if is_server_spec(engine) or engine == "transformers":
        return engine, ""
    try:
        from harness import llamacpp
        ok, why = llamacpp.is_available()
    except ImportError:
        ok, why = False, "the llama.cpp engine is not in this version of ftbench"
    if ok:
        return "llama.cpp", ""
    return "transformers", f"Engine: transformers ({why})."


def open_server(spec: str, timeout: float = 120.0):
    """The opened engine for `spec` (once per spec; UserError in one sentence when it is down or wrong)."""
    from harness.engines import EngineConfig, open_engine
    with _lock:
        if spec not in _servers:
            _servers[spec] = open_engine(EngineConfig(spec, workers=2, timeout=timeout))
        return _servers[spec]


def close_server(spec: str) -> None:
    """Forget the opened engine of `spec` (it failed): the next request health-checks the server again."""
    with _lock:
        engine = _servers.pop(spec, None)
    if engine is not None:
        engine.close()


def close_servers() -> None:
    with _lock:
        for engine in _servers.values():
            engine.close()
        _servers.clear()


def server_route(engine: str, adapter: str | None, form: str = "") -> tuple[Any, str]:
    """(the server engine, "") when it can answer this request; (None, notice) when transformers must (the form
    constraint, an adapter the server does not serve, a server that is down); (None, "") without a server engine."""
    if not is_server_spec(engine):
        return None, ""
    if form:
        return None, "the form constraint runs in process: using transformers for this poem"
    try:
        srv = open_server(engine)
    except UserError as e:
        return None, f"{e}: using transformers"
    if adapter and adapter not in srv.served:
        return None, (f"{srv.where} does not serve the adapter {adapter} (it serves: {', '.join(srv.served)}; "
                      f"`python -m harness export {adapter}` takes it there): using transformers")
    return srv, ""


def server_stream(state, srv, messages: list[dict], system: str | None, adapter: str | None, sampling,
                  session: str, max_new_tokens: int | None = None) -> Iterator[tuple[str, Any, str, str, str]]:
    """Stream one answer from the server: yields (text so far, stats, the messages sent as JSON, engine label, "").
    Stop (state.stop(session)) hangs up at the next chunk; the stats carry the server's token counts."""
    from harness.engines import EngineRequest, chat_turns, stream_chat
    msgs = ([{"role": "system", "content": system}] if system else []) + chat_turns(messages)
    req = EngineRequest(msgs, max_new_tokens=max_new_tokens or sampling.max_new_tokens,
                        temperature=sampling.temperature, seed=sampling.seed, adapter=adapter or None)
    shown = json.dumps(msgs, ensure_ascii=False, indent=1)
    label = srv.config.spec
    with state.running(session) as (event, stats):
        raw: dict = {}
        text = ""
        yield text, stats, shown, label, ""
        gen = stream_chat(srv, req, event, raw)
        try:
            for n, chunk in enumerate(gen, 1):
                text += chunk
                raw["chunks"] = n                 # a chunk is about a token until the server's count arrives
                _copy(raw, stats)
                yield text, stats, shown, label, ""
        finally:
            gen.close()
            _copy(raw, stats)
            if getattr(event, "requested", False):
                stats.finish_reason = "cancelled"
        yield text, stats, shown, label, ""


def _copy(raw: dict, stats) -> None:
    stats.prompt_tokens = int(raw.get("prompt_tokens") or stats.prompt_tokens)
    stats.new_tokens = int(raw.get("new_tokens") or raw.get("chunks") or stats.new_tokens)
    stats.seconds = float(raw.get("seconds") or stats.seconds)
    if raw.get("first_token_seconds") is not None:
        stats.first_token_seconds = raw["first_token_seconds"]
    stats.finish_reason = raw.get("finish_reason") or stats.finish_reason
    stats.extra.update(engine=raw.get("engine", ""), adapter=raw.get("adapter") or "base")
