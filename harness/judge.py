"""LLM-as-a-judge: backends by name, versioned prompt files, score parsing, retries, a bounded worker pool.

    python -m harness judge --responses instruction-data-with-response.json --output scored.jsonl
    python -m harness judge --responses r.jsonl --output s.jsonl --judge transformers:smollm2-135m-instruct

    from harness.judge import JudgeConfig, JudgeRequest, open_judge, judge_many, parse_score
    judge = open_judge(JudgeConfig("ollama:llama3"))   # health check: server up, model pulled, digest recorded
    judged = judge_many(judge, [JudgeRequest("1", "chat", {"instruction": ..., "input": "", "output": ...,
                                                           "response": ...})], on_done=save)

Backends, looked up by name (imports are lazy):
  ollama:<model>                  the official `ollama` client (default "ollama:llama3"; OLLAMA_HOST respected)
  openai:<model>@<base_url>       any OpenAI-compatible /v1/chat/completions (vLLM, llama.cpp server, Ollama /v1)
  transformers:<base>[+adapter]   a local model in process (harness.models), for fully offline runs

Deterministic: temperature 0, a fixed seed and num_ctx travel inside Ollama's `options` (the book's script put
them at the top level, where Ollama ignores them). Prompts are files harness/prompts/judge_<task>_<version>.txt.
The answer is requested as JSON {score, reason} (Ollama `format`, OpenAI `response_format`, a '{"score": ' prefix
in process); free text is parsed as a fallback. No score -> a bounded re-ask, then the raw answer is kept with
parsed=False (never dropped). A score outside 0-100 (negative, or above the scale) is unparsed with the
reason kept, never clamped or sign-stripped. Connection errors, 429 and 5xx are retried with exponential
backoff; a server that connects but does not answer within `timeout` (60 s) is not retried (one sentence says
so); a 200 answer that is not JSON marks that item failed (parsed=False, reason kept) and the run goes on.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError

PROMPTS_DIR = Path(__file__).with_name("prompts")
DEFAULT_JUDGE = "ollama:llama3"
DEFAULT_OFFLINE_JUDGE = "transformers:smollm2-135m-instruct"
BACKENDS = ("ollama", "openai", "transformers")
TASK_FIELDS = {
    "chat": ("input", "output", "response"),
    "poem": ("prompt", "form", "language", "title", "response"),
}
SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}, "reason": {"type": "string"}},
    "required": ["score", "reason"],
}
RETRY_MESSAGE = ('Your answer did not contain a score. Reply with only a JSON object '
                 '{"score": <integer from 0 to 100>, "reason": "<one sentence>"}.')
JSON_PREFIX = '{"score": '          # primes an in-process model that has no constrained decoding
ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")


# ---------------------------------------------------------------- configuration

def parse_spec(spec: str) -> tuple[str, str, str]:
    """'ollama:llama3' -> ('ollama', 'llama3', ''); 'openai:m@http://h:8000/v1' -> ('openai', 'm', url);
    'transformers:base+adapter' -> ('transformers', 'base', 'adapter'). A bare backend takes its default model."""
    spec = (spec or "").strip()
    backend, _, rest = spec.partition(":")
    if backend not in BACKENDS:
        raise UserError(f"unknown judge {spec!r}: use one of ollama:<model> (e.g. {DEFAULT_JUDGE}), "
                        f"openai:<model>@<base_url> (e.g. openai:llama3@http://localhost:8000/v1), "
                        f"transformers:<base>[+adapter] (e.g. {DEFAULT_OFFLINE_JUDGE})")
    if backend == "ollama":
        return backend, rest or "llama3", ""
    if backend == "transformers":
        base, _, adapter = (rest or DEFAULT_OFFLINE_JUDGE.split(":", 1)[1]).partition("+")
        return backend, base, adapter
    model, _, url = rest.partition("@")
    if not model or not url.startswith(("http://", "https://")):
        raise UserError(f"judge {spec!r}: the OpenAI-compatible backend needs a model and a server URL, "
                        "e.g. openai:llama3@http://localhost:11434/v1 or openai:my-model@http://localhost:8000/v1")
    url = url.rstrip("/")
    if not re.search(r"/v\d+$", url):
        url += "/v1"
    return backend, model, url


def canonical_spec(spec: str) -> str:
    backend, model, extra = parse_spec(spec)
    if backend == "openai":
        return f"openai:{model}@{extra}"
    if backend == "transformers":
        return f"transformers:{model}" + (f"+{extra}" if extra else "")
    return f"ollama:{model}"


@dataclass
class JudgeConfig:
    """How to judge: which backend and model, the decoding options and the robustness knobs."""
    spec: str = DEFAULT_JUDGE
    temperature: float = 0.0
    seed: int = 123
    num_ctx: int = 4096              # context the judge runs with (sent to Ollama; checked before a run)
    max_answer_tokens: int = 256     # the judge's answer budget (Ollama num_predict, OpenAI max_tokens)
    timeout: float = 60.0            # seconds for one answer (incl. Ollama's queue); --judge-timeout; not retried
    connect_timeout: float = 3.0     # seconds to reach the server: a down server fails fast
    retries: int = 3                 # extra attempts on refused connections, 429 and 5xx (exponential backoff)
    backoff: float = 0.5             # first backoff in seconds (then x2)
    parse_retries: int = 1           # re-asks when an answer holds no score
    workers: int = 4                 # concurrent requests (like OLLAMA_NUM_PARALLEL)
    prompt_version: str = "v1"
    host: str | None = None          # Ollama host; None = $OLLAMA_HOST or 127.0.0.1:11434
    batch_size: int = 8              # in-process (transformers) judging batch

    def __post_init__(self):
        # "none" = no judge: the run scores task metrics only (--judge none, same as --no-judge)
        self.spec = "none" if self.spec.strip().lower() in ("none", "no") else canonical_spec(self.spec)
        checks = [
            (0 <= self.temperature <= 2, "temperature must be in [0, 2] (0 = deterministic)"),
            (256 <= self.num_ctx <= 1_048_576, "num_ctx must be between 256 and 1048576"),
            (1 <= self.max_answer_tokens < self.num_ctx, "max_answer_tokens must be >= 1 and < num_ctx"),
            (self.timeout > 0 and self.connect_timeout > 0, "timeouts must be > 0 seconds"),
            (0 <= self.retries <= 10, "retries must be between 0 and 10"),
            (0 <= self.parse_retries <= 5, "parse_retries must be between 0 and 5"),
            (self.backoff >= 0, "backoff must be >= 0"),
            (1 <= self.workers <= 64, "workers must be between 1 and 64"),
            (1 <= self.batch_size <= 256, "batch_size must be between 1 and 256"),
            (bool(re.fullmatch(r"v\d+[a-z0-9_]*", self.prompt_version)),
             f"prompt_version {self.prompt_version!r} must look like v1, v2, ..."),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise UserError(f"judge config: {'; '.join(bad)}")

    @property
    def backend(self) -> str:
        return parse_spec(self.spec)[0]

    @property
    def model(self) -> str:
        return parse_spec(self.spec)[1]

    def options(self) -> dict:
        """Decoding options; for Ollama exactly the `options` object sent with every request."""
        return {"temperature": self.temperature, "seed": self.seed, "num_ctx": self.num_ctx,
                "num_predict": self.max_answer_tokens}


# ---------------------------------------------------------------- prompts

@dataclass(frozen=True)
class JudgePrompt:
    task: str
    version: str
    text: str
    sha256: str
    path: Path


def list_prompts() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("judge_*_*.txt"))


def load_prompt(task: str, version: str = "v1") -> JudgePrompt:
    """harness/prompts/judge_<task>_<version>.txt, its placeholders checked against the task's fields."""
    if task not in TASK_FIELDS:
        raise UserError(f"no judge prompt for task {task!r}: the judge scores {', '.join(TASK_FIELDS)} (spam has no judge)")
    path = PROMPTS_DIR / f"judge_{task}_{version}.txt"
    if not path.is_file():
        raise UserError(f"no judge prompt {path.name} in {PROMPTS_DIR}. Available: {', '.join(list_prompts())}")
    text = path.read_text(encoding="utf-8")
    for lineno, line in enumerate(text.splitlines(), 1):
        for name in re.findall(r"\{(\w+)\}", line):
            if name not in TASK_FIELDS[task]:
                raise UserError(f"{path}:{lineno}: unknown placeholder {{{name}}}; "
                                f"a {task} prompt may use {', '.join('{' + f + '}' for f in TASK_FIELDS[task])}")
    return JudgePrompt(task, version, text.strip(), hashlib.sha256(text.encode()).hexdigest(), path)


def render_prompt(template: str, values: dict[str, str]) -> str:
    """Fill {name} placeholders in one pass (text inside the values is never re-substituted; other braces stay)."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def book_input(instruction: str, input: str = "") -> str:
    """The book's `format_input`: the Alpaca instruction block the judge sees as `{input}`."""
    text = f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
    return text + (f"\n\n### Input:\n{input}" if input else "")


@dataclass(frozen=True)
class JudgeRequest:
    """One response to score. task 'chat': fields instruction, input, output (reference), response;
    task 'poem': fields prompt, lang, form, title, response."""
    id: str
    task: str
    fields: dict

    def values(self) -> dict[str, str]:
        """The placeholders of the judge prompt: every field as text, plus the book's Alpaca block as {input}
        when the item has an instruction, and {language} spelled out for a `lang` code. A template uses the
        placeholders it names (harness/prompts/judge_<task>_<version>.txt); fields it does not name are unused."""
        out = {k: "" if v is None else str(v) for k, v in self.fields.items()}
        for k in ("prompt", "form", "title", "output", "response"):
            out.setdefault(k, "")
        if "instruction" in self.fields:
            out["input"] = book_input(out["instruction"], out.get("input", ""))
        out["language"] = LANGUAGES.get(out.get("lang", ""), out.get("lang", ""))
        return out


LANGUAGES = {"zh": "Chinese", "en": "English"}


def estimate_tokens(text: str) -> int:
    """A conservative token estimate for servers whose tokenizer we do not have: ~1.5 per CJK character,
    ~1 per 3.5 other characters, plus the chat template's overhead."""
    from harness.io import is_cjk
    cjk = sum(1 for ch in text if is_cjk(ch) or "\u3000" <= ch <= "\u30ff" or "\uff00" <= ch <= "\uffef")  # + CJK punctuation
    return math.ceil(cjk * 1.5 + (len(text) - cjk) / 3.5) + 16


# ---------------------------------------------------------------- parsing

_JSON_OBJ = re.compile(r"\{[^{}]*\}", re.S)
_INLINE_CODE = re.compile(r"`[^`]{7,}`")   # quoted texts (the prompt quotes the response in backticks)
_NUM = r"(-?\d{1,3}(?:\.\d+)?)"          # the sign is kept: "-100" is out of range, never 100
_SCALE = re.compile(rf"(?<![\d.]){_NUM}\s*(?:(?:stars?|points?|pts)\s*)?(?:/|out\s+of)\s*(100|10|5)(?![\d])", re.I)
_LABEL = re.compile(rf"\b(?:score|scored|scoring|rating|rate|rated|grade|give|giving)\b[^\d\n`]{{0,30}}?"
                    rf"(?<![\d.]){_NUM}(?![\d])", re.I)
_LEAD = re.compile(rf"^[\s*#>_]*{_NUM}[\s*_]*[.!]?[\s*_]*$")


def _json_score(obj: Any) -> tuple[float | None, str]:
    if isinstance(obj, bool):
        return None, ""
    if isinstance(obj, (int, float)):
        return float(obj), ""
    if isinstance(obj, dict):
        low = {str(k).lower(): v for k, v in obj.items()}
        for key in ("score", "rating", "grade"):
            v = low.get(key)
            if isinstance(v, str) and re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", v):
                v = float(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v), str(low.get("reason") or low.get("explanation") or "")
    return None, ""


def parse_score(text: str) -> tuple[float | None, str]:
    """A judge's answer -> (score in [0, 100], reason) or (None, why-not).

    A score the judge gave outside 0-100 ("Rating: -100", {"score": -3}, "150/100") is not a score: the
    result is (None, "score -3 is outside 0-100"), so it is kept unparsed and never enters a mean.

    In order: the whole answer as JSON; a JSON object inside prose or a ```json fence; "N/100", "N out of 10"
    (scaled to 100); a labelled number ("Score: 72", "I'd rate it 85", "a score of 92"); a first line that
    is only a number. Backtick-quoted text is ignored for the number searches (it quotes the response).
    """
    text = (text or "").strip()
    if not text:
        return None, ""
    candidates: list[tuple[float | None, str]] = []
    try:
        candidates.append(_json_score(json.loads(text)))
    except (json.JSONDecodeError, ValueError):
        pass
    candidates += [_json_score(_try_json(m.group(0))) for m in _JSON_OBJ.finditer(text)]
    for score, reason in candidates:
        if score is not None:      # the judge's explicit JSON score decides, in range or not
            return (_tidy(score), reason) if 0 <= score <= 100 else (None, _outside(score))
    plain = _INLINE_CODE.sub(" ", text)
    for m in _SCALE.finditer(plain):
        value, scale = float(m.group(1)), float(m.group(2))
        return (_tidy(value * 100 / scale), "") if 0 <= value <= scale else (None, _outside(value, scale))
    for m in _LABEL.finditer(plain):
        value = float(m.group(1))
        return (_tidy(value), "") if 0 <= value <= 100 else (None, _outside(value))
    first = next((line for line in plain.splitlines() if line.strip()), "")
    m = _LEAD.match(first)
    if m:
        value = float(m.group(1))
        return (_tidy(value), "") if 0 <= value <= 100 else (None, _outside(value))
    return None, ""


def _outside(value: float, scale: float = 100) -> str:
    return f"score {value:g} is outside 0-{scale:g}"


def _try_json(s: str) -> Any:
    try:
        return json.loads(s)
    except (json.JSONDecodeError, ValueError):
        return None


def _tidy(x: float) -> float:
    return float(round(x, 2))


# ---------------------------------------------------------------- judge objects

@dataclass
class Judgment:
    score: float | None
    parsed: bool
    raw: str
    reason: str = ""
    attempts: int = 1
    seconds: float = 0.0


@dataclass
class Judge:
    """An opened (health-checked) judge. Remote backends set `complete` (one conversation -> answer, called
    from worker threads); in-process backends set `complete_batch` (conversations -> answers)."""
    config: JudgeConfig
    name: str
    digest: str
    where: str
    count_tokens: Callable[[str], int]
    context_length: int
    complete: Callable[..., str] | None = None        # complete(messages, schema=SCORE_SCHEMA) -> answer
    complete_batch: Callable[[list[list[dict]]], list[str]] | None = None
    lm: Any = None                   # in-process backends: the LoadedModel (harness.pairwise reads log-probs)
    adapter: str = ""                # in-process backends: the judge's adapter ("" = the base alone)
    close: Callable[[], None] = lambda: None
    abort: threading.Event = field(default_factory=threading.Event)
    prompts: dict[str, JudgePrompt] = field(default_factory=dict)

    @property
    def options(self) -> dict:
        return self.config.options()

    def prompt(self, task: str) -> JudgePrompt:
        if task not in self.prompts:
            self.prompts[task] = load_prompt(task, self.config.prompt_version)
        return self.prompts[task]

    def messages(self, req: JudgeRequest) -> list[dict]:
        return [{"role": "user", "content": render_prompt(self.prompt(req.task).text, req.values())}]

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _HTTPError(Exception):
    def __init__(self, status_code: int, text: str):
        super().__init__(f"HTTP {status_code}: {text[:300]}")
        self.status_code = status_code
        self.error = text


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


def _down_message(judge_name: str, where: str, backend: str) -> str:
    if backend == "ollama":
        return (f"cannot reach Ollama at {where} for judge {judge_name}: is Ollama running? start it with "
                "`ollama serve` (or set OLLAMA_HOST to where it listens)")
    return (f"cannot reach the judge server at {where} for {judge_name}: is it running? "
            "(vLLM: `vllm serve MODEL`; llama.cpp: `llama-server -m MODEL.gguf`; Ollama: `ollama serve`)")


def _pull_message(model: str, where: str, available: list[str]) -> str:
    return (f"judge model {model!r} is not pulled on Ollama at {where}: run `ollama pull {model}` "
            f"(pulled: {', '.join(available) or 'none'})")


# ---------------------------------------------------------------- backends

def open_judge(cfg: JudgeConfig, lm: Any = None) -> Judge:
    """Health-check and open the judge `cfg.spec`. lm: an already loaded harness model the transformers
    backend may reuse when it names the same base (no second copy in memory)."""
    backend = cfg.backend
    if backend == "ollama":
        return _open_ollama(cfg)
    if backend == "openai":
        return _open_openai(cfg)
    return _open_transformers(cfg, lm)


def _open_ollama(cfg: JudgeConfig) -> Judge:
    import httpx
    import ollama

    where = cfg.host or os.environ.get("OLLAMA_HOST") or "127.0.0.1:11434"
    # a plain-http host needs no CA bundle: loading it costs ~20 ms per client, more than a warm run
    tls = {} if where.startswith("https://") else {"verify": False}
    client = ollama.Client(host=cfg.host, timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout), **tls)
    try:
        listing = _with_retries(cfg, client.list, threading.Event(), connect_retries=False)
    except _Unavailable as e:
        client.close()
        if e.timed_out:
            raise UserError(timeout_message(where, cfg.timeout)) from None
        raise UserError(f"{_down_message(cfg.spec, where, 'ollama')} [{e.cause}]") from None
    except ollama.ResponseError as e:
        client.close()
        raise UserError(f"Ollama at {where} answered {e.status_code} to the model list: {e.error}") from None
    wanted = cfg.model if ":" in cfg.model else cfg.model + ":latest"
    pulled = [str(m.model) for m in listing.models]
    entry = next((m for m in listing.models if m.model in (cfg.model, wanted)), None)
    if entry is None:
        client.close()
        raise UserError(_pull_message(cfg.model, where, pulled))
    context_length = cfg.num_ctx
    try:
        info = client.show(cfg.model).modelinfo or {}
        context_length = int(next((v for k, v in info.items() if k.endswith(".context_length")), cfg.num_ctx))
    except Exception:  # noqa: BLE001 - the context length is only used for a friendlier check
        pass
    if cfg.num_ctx > context_length:
        client.close()
        raise UserError(f"num_ctx {cfg.num_ctx} exceeds {cfg.model}'s context length {context_length}: "
                        f"lower the judge's num_ctx")
    model = cfg.model

    def complete(messages: list[dict], schema: dict = SCORE_SCHEMA) -> str:
        import pydantic
        try:
            resp = client.chat(model=model, messages=messages, format=schema, options=cfg.options(),
                               stream=False)
        except json.JSONDecodeError as e:
            raise BadAnswer(f"Ollama at {where} answered 200 with a body that is not JSON ({e.msg})",
                            str(e.doc or "")[:2000]) from None
        except pydantic.ValidationError as e:
            raise BadAnswer(f"Ollama at {where} answered 200 with JSON that is not a chat answer",
                            str(e)[:2000]) from None
        return resp.message.content or ""

    return Judge(cfg, cfg.spec, str(entry.digest or ""), where, estimate_tokens, cfg.num_ctx,
                 complete=complete, close=client.close)


def _open_openai(cfg: JudgeConfig) -> Judge:
    import requests

    _, model, base = parse_spec(cfg.spec)
    session = requests.Session()
    if os.environ.get("OPENAI_API_KEY"):
        session.headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    timeout = (cfg.connect_timeout, cfg.timeout)

    def get_models():
        r = session.get(f"{base}/models", timeout=timeout)
        if r.status_code >= 400:
            raise _HTTPError(r.status_code, r.text)
        return r.json()

    try:
        listing = _with_retries(cfg, get_models, threading.Event(), connect_retries=False)
    except _Unavailable as e:
        session.close()
        if e.timed_out:
            raise UserError(timeout_message(base, cfg.timeout)) from None
        raise UserError(f"{_down_message(cfg.spec, base, 'openai')} [{e.cause}]") from None
    except (_HTTPError, ValueError) as e:
        session.close()
        raise UserError(f"{base}/models did not answer like an OpenAI-compatible server: {e}") from None
    ids = [str(m.get("id")) for m in listing.get("data", []) if isinstance(m, dict)]
    if ids and model not in ids and (model + ":latest") not in ids:
        session.close()
        raise UserError(f"judge model {model!r} is not served at {base}. Served: {', '.join(ids)} "
                        f"(Ollama: `ollama pull {model}`; vLLM: start the server with that model)")
    state = {"schema": True}

    def complete(messages: list[dict], schema: dict = SCORE_SCHEMA) -> str:
        body = {"model": model, "messages": messages, "temperature": cfg.temperature, "seed": cfg.seed,
                "max_tokens": cfg.max_answer_tokens}
        if state["schema"]:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "judgment", "schema": schema}}
        r = session.post(f"{base}/chat/completions", json=body, timeout=timeout)
        if r.status_code == 400 and state["schema"] and "response_format" in r.text:
            state["schema"] = False          # a server without structured output: ask again without it
            return complete(messages, schema)
        if r.status_code >= 400:
            raise _HTTPError(r.status_code, r.text)
        try:
            data = r.json()
        except ValueError:
            raise BadAnswer(f"{base} answered {r.status_code} with a body that is not JSON", r.text[:2000]) from None
        try:
            return data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise BadAnswer(f"{base} answered {r.status_code} with JSON that is not a chat completion",
                            r.text[:2000]) from None

    return Judge(cfg, cfg.spec, "", base, estimate_tokens, cfg.num_ctx, complete=complete, close=session.close)


def _open_transformers(cfg: JudgeConfig, lm: Any = None) -> Judge:
    from harness.generation import GenerationConfig, generate_batch
    from harness.models import load_model, resolve_base

    _, base, adapter = parse_spec(cfg.spec)
    spec = resolve_base(base)
    if lm is None or getattr(lm, "name", None) != spec.name:
        lm = load_model(base, adapters=[adapter] if adapter else None)
    elif adapter:
        lm.attach(adapter)
    parts = {"name": spec.name, "source": spec.source, "location": spec.location, "file": spec.file}
    if spec.package:
        from importlib import metadata
        try:
            parts["package"] = f"{spec.package}=={metadata.version(spec.package)}"
        except metadata.PackageNotFoundError:
            parts["package"] = spec.package
    if adapter:
        parts["adapter_sha256"] = lm.adapters[adapter].sha256
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_answer_tokens, do_sample=False, seed=cfg.seed,
                               stop=("}",), batch_size=cfg.batch_size)

    def complete_batch(conversations: list[list[dict]]) -> list[str]:
        prompts = [lm.render_chat(c, max_new_tokens=cfg.max_answer_tokens) + JSON_PREFIX for c in conversations]
        gens = generate_batch(lm, prompts, gen_cfg, adapter=adapter or None)
        out = []
        for g in gens:
            text = JSON_PREFIX + g.text
            if _try_json(text) is None and _try_json(text + "}") is not None:
                text += "}"          # the stop string "}" may be cut from the text
            out.append(text)
        return out

    return Judge(cfg, cfg.spec, digest, "in process", lm.count_tokens, min(cfg.num_ctx, lm.context_length),
                 complete_batch=complete_batch, lm=lm, adapter=adapter)


# ---------------------------------------------------------------- calling

class _Unavailable(Exception):
    def __init__(self, cause: BaseException, attempts: int):
        super().__init__(str(cause))
        self.cause = f"{type(cause).__name__}: {str(cause)[:200]}"
        self.attempts = attempts
        status = getattr(cause, "status_code", None)
        self.status = status if isinstance(status, int) and status > 0 else None
        self.timed_out = _read_timeout(cause)


class BadAnswer(Exception):
    """A 200 answer that is not the JSON the protocol promises: that item fails (parsed=False), the run goes on."""
    def __init__(self, reason: str, raw: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


def _read_timeout(e: BaseException) -> bool:
    """The server accepted the connection but sent no answer in time (not a refused or unreachable server)."""
    name = type(e).__name__
    if name in ("ConnectTimeout", "ConnectError"):
        return False
    return name in ("ReadTimeout", "WriteTimeout", "PoolTimeout", "Timeout") or isinstance(e, TimeoutError)


def timeout_message(where: str, seconds: float) -> str:
    return (f"the judge server at {where} connected but did not answer within {seconds:g} s; it may be "
            f"overloaded or stuck: check its log, lower --workers, or raise --judge-timeout for a slow model")


class _Aborted(Exception):
    pass


def _with_retries(cfg: JudgeConfig, fn: Callable[[], Any], abort: threading.Event, connect_retries: bool = True):
    """fn() with up to cfg.retries extra attempts on connection errors, timeouts, 429 and 5xx.
    connect_retries=False: a refused connection fails at once (the health check must fail within seconds)."""
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
            # a read timeout already cost `timeout` seconds: one attempt, never a silent retry loop
            if attempt >= cfg.retries or (refused and not connect_retries) or _read_timeout(e):
                raise _Unavailable(e, attempt + 1) from None
            if abort.wait(cfg.backoff * (2 ** attempt)):
                raise _Aborted() from None
            attempt += 1


def _fatal(judge: Judge, e: BaseException) -> UserError:
    status = getattr(e, "status_code", None)
    text = str(getattr(e, "error", "") or e)
    if status == 404 and "not found" in text:
        if judge.config.backend == "ollama":
            return UserError(_pull_message(judge.config.model, judge.where, []).replace(" (pulled: none)", ""))
        return UserError(f"judge model {judge.config.model!r} is not served at {judge.where}: {text[:200]}")
    return UserError(f"judge {judge.name} at {judge.where} refused the request ({status or type(e).__name__}): "
                     f"{text[:300]}")


def _call(judge: Judge, messages: list[dict], schema: dict = SCORE_SCHEMA) -> str:
    """One answer from a remote judge: retries for refused connections, 429 and 5xx; one sentence otherwise."""
    assert judge.complete is not None
    try:
        return _with_retries(judge.config, lambda: judge.complete(messages, schema), judge.abort)
    except _Unavailable as e:
        resume = "Items judged so far are saved: rerun the same command to resume"
        if e.timed_out:
            raise UserError(f"{timeout_message(judge.where, judge.config.timeout)}. {resume}") from None
        if e.status is not None:
            raise UserError(f"the judge server at {judge.where} kept failing ({e.cause}); gave up after "
                            f"{e.attempts} attempts. Check its log (the `ollama serve` window or "
                            f"`journalctl -u ollama`), lower --workers if it is overloaded. {resume}") from None
        raise UserError(f"{_down_message(judge.name, judge.where, judge.config.backend)}; gave up after "
                        f"{e.attempts} attempts [{e.cause}]. {resume}") from None
    except (_Aborted, UserError, BadAnswer):
        raise
    except Exception as e:  # noqa: BLE001 - a 4xx or similar: not worth retrying
        raise _fatal(judge, e) from None


def judge_one(judge: Judge, req: JudgeRequest) -> Judgment:
    """Score one response (remote backends): ask, parse, re-ask at most parse_retries times."""
    t0 = time.perf_counter()
    messages = judge.messages(req)
    answers: list[str] = []
    why = ""
    for attempt in range(judge.config.parse_retries + 1):
        try:
            answer = _call(judge, messages)
        except BadAnswer as e:       # this item fails, the run goes on
            answers.append(e.raw)
            return Judgment(None, False, _joined(answers), e.reason, attempt + 1, time.perf_counter() - t0)
        answers.append(answer)
        score, reason = parse_score(answer)
        if score is not None:
            return Judgment(score, True, _joined(answers), reason, attempt + 1, time.perf_counter() - t0)
        why = reason or why
        messages = messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": RETRY_MESSAGE}]
    return Judgment(None, False, _joined(answers), why, len(answers), time.perf_counter() - t0)


def _joined(answers: list[str]) -> str:
    return "\n\n--- re-asked ---\n\n".join(answers)


def _judge_batch(judge: Judge, reqs: list[JudgeRequest]) -> list[Judgment]:
    assert judge.complete_batch is not None
    t0 = time.perf_counter()
    convs = [judge.messages(r) for r in reqs]
    answers: list[list[str]] = [[] for _ in reqs]
    scores: list[tuple[float | None, str]] = [(None, "")] * len(reqs)
    todo = list(range(len(reqs)))
    for _ in range(judge.config.parse_retries + 1):
        if not todo:
            break
        outs = judge.complete_batch([convs[i] for i in todo])
        still = []
        for i, text in zip(todo, outs):
            answers[i].append(text)
            scores[i] = parse_score(text)
            if scores[i][0] is None:
                convs[i] = convs[i] + [{"role": "assistant", "content": text},
                                       {"role": "user", "content": RETRY_MESSAGE}]
                still.append(i)
        todo = still
    per_item = (time.perf_counter() - t0) / max(1, len(reqs))
    return [Judgment(s, s is not None, _joined(a), r, len(a), per_item) for (s, r), a in zip(scores, answers)]


def check_fits(judge: Judge, reqs: list[JudgeRequest]) -> None:
    """Refuse, before any request, a prompt that with the answer budget would not fit the judge's context."""
    budget = judge.config.max_answer_tokens
    for r in reqs:
        text = judge.messages(r)[0]["content"]
        n = judge.count_tokens(text)
        if n + budget > judge.context_length:
            raise UserError(
                f"the judge prompt for item {r.id!r} is ~{n} tokens; with the answer budget ({budget}) it exceeds "
                f"the judge's context ({judge.context_length} tokens). Raise the judge's num_ctx (--judge-num-ctx, "
                f"if the judge model supports it) or generate shorter responses (--max-new-tokens)")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5)


def judge_many(judge: Judge, reqs: list[JudgeRequest],
               on_done: Callable[[JudgeRequest, Judgment], None] | None = None,
               progress: bool = True, desc: str = "judging") -> list[Judgment]:
    """Score every request; `on_done(req, judgment)` runs in the calling thread as each one completes (store it
    there: a crash then loses at most the requests in flight). Remote backends use `workers` threads."""
    check_fits(judge, reqs)
    results: list[Judgment | None] = [None] * len(reqs)
    bar = _progress(len(reqs), desc, progress)
    try:
        if judge.complete_batch is not None:
            bs = judge.config.batch_size
            for start in range(0, len(reqs), bs):
                chunk = reqs[start:start + bs]
                for k, (req, j) in enumerate(zip(chunk, _judge_batch(judge, chunk))):
                    results[start + k] = j
                    if on_done:
                        on_done(req, j)
                    bar.update(1)
        else:
            _pool(judge, reqs, results, on_done, bar)
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _pool(judge, reqs, results, on_done, bar, fn: Callable = None) -> None:
    """A bounded pool of daemon threads (an interrupted run exits at once instead of waiting for answers).
    fn(judge, req) -> result: judge_one by default (harness.pairwise passes its own)."""
    fn = fn or judge_one
    todo: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    for item in enumerate(reqs):
        todo.put(item)

    def worker():
        while not judge.abort.is_set():
            try:
                i, req = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, fn(judge, req), None))
            except BaseException as e:  # noqa: BLE001 - handed to the calling thread
                done.put((i, None, e))
                return

    threads = [threading.Thread(target=worker, daemon=True, name=f"judge-{k}")
               for k in range(min(judge.config.workers, len(reqs)))]
    for t in threads:
        t.start()
    try:
        for _ in range(len(reqs)):
            while True:
                try:
                    i, j, err = done.get(timeout=0.5)
                    break
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and done.empty():
                        raise RuntimeError("judge workers stopped without an answer")
            if err is not None:
                raise err
            results[i] = j
            if on_done:
                on_done(reqs[i], j)
            bar.update(1)
    except BaseException:
        judge.abort.set()
        raise
