"""LLM-as-a-judge: backends by name, versioned prompt files, score parsing, retries, a bounded worker pool.

    python -m harness judge --responses instruction-data-with-response.json --output scored.jsonl
    python -m harness judge --responses r.jsonl --output s.jsonl --judge transformers:smollm2-135m-instruct

    from harness.judge import JudgeConfig, JudgeRequest, open_judge, judge_many, parse_score
    judge = open_judge(JudgeConfig("ollama:llama3"))   # health check: server up, model pulled, digest recorded
    judged = judge_many(judge, [JudgeRequest("1", "chat", {"instruction": ..., "input": "", "output": ...,
                                                           "response": ...})], on_done=save)

Backends, looked up by name (imports are lazy):
  ollama:<model>                  Ollama (default "ollama:llama3"; OLLAMA_HOST respected)
  openai:<model>@<base_url>       any OpenAI-compatible /v1/chat/completions (vLLM, llama.cpp server, Ollama /v1)
  transformers:<base>[+adapter]   a local model in process (harness.models), for fully offline runs

Deterministic: temperature 0, a fixed seed and num_ctx travel inside Ollama's `options` (the book's script put
them at the top level, where Ollama ignores them). Prompts are files harness/prompts/judge_<task>_<version>.txt.
The answer is requested as JSON {score, reason} (Ollama `format`, OpenAI `response_format`, a '{"score": ' prefix
in process); free text is parsed as a fallback. No score -> a bounded re-ask, then the raw answer is kept with
parsed=False (never dropped). A score outside 0-100 (negative, or above the scale) is unparsed with the
reason kept, never clamped or sign-stripped.

Remote judges are engines (harness.engines over harness.http, the one HTTP client): a total deadline per
answer (`timeout`), retries with backoff on refused connections, 429, 5xx and 200s that break the protocol.
A judge that failed on an item (an HTML page where JSON was promised, an error after the retries) gave no
verdict: the item is not cached and not scored; judge_many hands every verdict to on_done and then raises
http.ItemsFailed naming how many failed. A judge that is down or hung stops the run at once.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.http import ServerError, run_pool

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
    'transformers:base+adapter' -> ('transformers', 'base', 'adapter'). A bare backend takes its default model.
    The judge's grammar is the engines' (harness.engines.parse_engine_spec) with the backend always named."""
    from harness.engines import parse_engine_spec
    spec = (spec or "").strip()
    backend, colon, rest = spec.partition(":")
    if backend not in BACKENDS:
        raise UserError(f"unknown judge {spec!r}: use one of ollama:<model> (e.g. {DEFAULT_JUDGE}), "
                        f"openai:<model>@<base_url> (e.g. openai:llama3@http://localhost:8000/v1), "
                        f"transformers:<base>[+adapter] (e.g. {DEFAULT_OFFLINE_JUDGE})")
    if colon and not rest.strip():       # 'ollama:' names no model: never a silent default
        example = {"ollama": DEFAULT_JUDGE, "transformers": DEFAULT_OFFLINE_JUDGE}.get(
            backend, "openai:llama3@http://localhost:8000/v1")
        raise UserError(f"judge {spec!r} names no model after the colon: write e.g. {example} "
                        f"(or just {backend!r} for its default)" if backend != "openai" else
                        f"judge {spec!r} names no model: write e.g. {example}")
    default = {"ollama": DEFAULT_JUDGE, "transformers": DEFAULT_OFFLINE_JUDGE}.get(backend, spec)
    kind, model, url = parse_engine_spec(spec if rest else default, what="judge")
    if kind == "transformers":
        base, _, adapter = model.partition("+")
        return kind, base, adapter
    return kind, model, url


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
_NUM = r"(-?\d{1,3}(?:\.\d+)?(?:[eE][+-]?\d+)?)"   # the sign and an exponent are kept: "-100" and "1e9" are out
_MINUS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})     # of range, never 100 or 1
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
            if isinstance(v, str) and re.fullmatch(r"\s*-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\s*", v):
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
    text = (text or "").strip().translate(_MINUS)      # a Unicode minus is a minus
    if not text:
        return None, ""
    candidates: list[tuple[float | None, str]] = []
    try:
        candidates.append(_json_score(json.loads(text)))
    except (json.JSONDecodeError, ValueError):
        pass
    candidates += [_json_score(try_json(m.group(0))) for m in _JSON_OBJ.finditer(text)]
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


def try_json(s: str) -> Any:
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


def _down_message(judge_name: str, where: str, backend: str) -> str:
    if backend == "ollama":
        return (f"cannot reach Ollama at {where} for judge {judge_name}: is Ollama running? start it with "
                "`ollama serve` (or set OLLAMA_HOST to where it listens)")
    return (f"cannot reach the judge server at {where} for {judge_name}: is it running? "
            "(vLLM: `vllm serve MODEL`; llama.cpp: `llama-server -m MODEL.gguf`; Ollama: `ollama serve`)")


def timeout_message(where: str, seconds: float) -> str:
    return (f"the judge server at {where} connected but did not answer within {seconds:g} s; it may be "
            f"overloaded or stuck: check its log, lower --workers, or raise --judge-timeout for a slow model")


def _judge_error(cfg: JudgeConfig, where: str, e: ServerError, during: str = "") -> ServerError:
    """A server failure in the judge's words (its flags: --judge-timeout, --workers), same kind."""
    if e.kind == "down":
        msg = _down_message(cfg.spec, where, cfg.backend)
    elif e.kind == "timeout":
        msg = timeout_message(where, cfg.timeout)
    elif e.kind == "status" and e.status == 404:
        msg = (f"judge model {cfg.model!r} is not served at {where}: "
               + (f"run `ollama pull {cfg.model}`" if cfg.backend == "ollama" else e.body[:200]))
    elif e.kind == "status":
        msg = (f"the judge server at {where} kept failing ({e.status}: {e.body[:200]}); check its log (the "
               f"`ollama serve` window or `journalctl -u ollama`), lower --workers if it is overloaded")
    else:
        msg = (f"the judge server at {where} answered {during or 'a request'} with something that is not "
               f"{'Ollama' if cfg.backend == 'ollama' else 'an OpenAI-compatible'} JSON ({e.body[:80]!r}): a proxy's "
               f"error page or the wrong server")
    return ServerError(msg, e.kind, e.status, e.body)


# ---------------------------------------------------------------- backends

def open_judge(cfg: JudgeConfig, lm: Any = None) -> Judge:
    """Health-check and open the judge `cfg.spec`. lm: an already loaded harness model the transformers
    backend may reuse when it names the same base (no second copy in memory)."""
    if cfg.backend == "transformers":
        return _open_transformers(cfg, lm)
    return _open_remote(cfg)


def _open_remote(cfg: JudgeConfig) -> Judge:
    """ollama:<model> and openai:<model>@<url>: an engine (harness.engines) that answers JSON by a schema."""
    from harness.engines import EngineConfig, EngineRequest, open_engine

    ecfg = EngineConfig(cfg.spec, host=cfg.host, workers=cfg.workers, timeout=cfg.timeout,
                        connect_timeout=cfg.connect_timeout, retries=cfg.retries, backoff=cfg.backoff)
    try:
        engine = open_engine(ecfg)
    except ServerError as e:
        from harness.engines import where_of
        raise _judge_error(cfg, where_of(cfg.spec, cfg.host), e, "the model list") from None
    context_length = cfg.num_ctx
    if engine.info is not None:
        try:
            info = engine.info()
            context_length = int(next((v for k, v in info.items() if k.endswith(".context_length")), cfg.num_ctx))
        except (ServerError, TypeError, ValueError, AttributeError):
            pass                      # the context length is only used for a friendlier check
    if cfg.num_ctx > context_length:
        engine.close()
        raise UserError(f"num_ctx {cfg.num_ctx} exceeds {cfg.model}'s context length {context_length}: "
                        f"lower the judge's num_ctx")
    where = engine.where

    def complete(messages: list[dict], schema: dict = SCORE_SCHEMA) -> str:
        req = EngineRequest(messages, max_new_tokens=cfg.max_answer_tokens, temperature=cfg.temperature,
                            seed=cfg.seed, schema=schema, num_ctx=cfg.num_ctx if cfg.backend == "ollama" else 0)
        try:
            return engine.complete(req).text
        except ServerError as e:
            raise _judge_error(cfg, where, e, "a verdict request") from None

    return Judge(cfg, cfg.spec, engine.digest, where, estimate_tokens, cfg.num_ctx, complete=complete,
                 close=engine.close)


def _open_transformers(cfg: JudgeConfig, lm: Any = None) -> Judge:
    from harness.generation import GenerationConfig, generate_batch
    from harness.models import load_model, model_fingerprint, resolve_base

    _, base, adapter = parse_spec(cfg.spec)
    spec = resolve_base(base)
    if lm is None or getattr(lm, "name", None) != spec.name:
        lm = load_model(base, adapters=[adapter] if adapter else None)
    elif adapter:
        lm.attach(adapter)
    digest = model_fingerprint(lm.spec) + (f"+{lm.adapters[adapter].sha256}" if adapter else "")
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_answer_tokens, do_sample=False, seed=cfg.seed,
                               stop=("}",), batch_size=cfg.batch_size)

    def complete_batch(conversations: list[list[dict]]) -> list[str]:
        prompts = [lm.render_chat(c, max_new_tokens=cfg.max_answer_tokens) + JSON_PREFIX for c in conversations]
        gens = generate_batch(lm, prompts, gen_cfg, adapter=adapter or None)
        out = []
        for g in gens:
            text = JSON_PREFIX + g.text
            if try_json(text) is None and try_json(text + "}") is not None:
                text += "}"          # the stop string "}" may be cut from the text
            out.append(text)
        return out

    return Judge(cfg, cfg.spec, digest, "in process", lm.count_tokens, min(cfg.num_ctx, lm.context_length),
                 complete_batch=complete_batch, lm=lm, adapter=adapter)


# ---------------------------------------------------------------- calling

def judge_one(judge: Judge, req: JudgeRequest) -> Judgment:
    """Score one response (remote backends): ask, parse, re-ask at most parse_retries times. A server failure
    (http.ServerError, after the retries) is raised: it is no verdict, so nothing is kept for it."""
    t0 = time.perf_counter()
    messages = judge.messages(req)
    answers: list[str] = []
    why = ""
    for attempt in range(judge.config.parse_retries + 1):
        answer = judge.complete(messages)
        answers.append(answer)
        score, reason = parse_score(answer)
        if score is not None:
            return Judgment(score, True, joined(answers), reason, attempt + 1, time.perf_counter() - t0)
        why = reason or why
        messages = messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": RETRY_MESSAGE}]
    return Judgment(None, False, joined(answers), why, len(answers), time.perf_counter() - t0)


def joined(answers: list[str]) -> str:
    """A judge's answers to one item, re-asks included, as one text (what the store keeps as raw)."""
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
    return [Judgment(s, s is not None, joined(a), r, len(a), per_item) for (s, r), a in zip(scores, answers)]


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


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5)


def judge_many(judge: Judge, reqs: list[JudgeRequest],
               on_done: Callable[[JudgeRequest, Judgment], None] | None = None,
               progress: bool = True, desc: str = "judging") -> list[Judgment]:
    """Score every request; `on_done(req, judgment)` runs in the calling thread as each one completes (store it
    there: a crash then loses at most the requests in flight). Remote backends use `workers` threads; items the
    judge failed on (http.ServerError) get no judgment: after every other one went to on_done,
    http.ItemsFailed (a UserError; `.results` holds None for each failed item) is raised."""
    check_fits(judge, reqs)
    bar = progress_bar(len(reqs), desc, progress)
    try:
        if judge.complete_batch is not None:
            results: list[Judgment] = []
            bs = judge.config.batch_size
            for start in range(0, len(reqs), bs):
                chunk = reqs[start:start + bs]
                for req, j in zip(chunk, _judge_batch(judge, chunk)):
                    results.append(j)
                    if on_done:
                        on_done(req, j)
                    bar.update(1)
            return results
        return run_pool(lambda r: judge_one(judge, r), reqs, judge.config.workers,
                        (lambda i, j: on_done(reqs[i], j)) if on_done else None, threading.Event(), bar, "judgments")
    finally:
        bar.close()
