"""The app's state: one loaded base for the whole app, the adapter lists, input limits, sampling controls and
the running generations of each session (for Stop). Plain objects a test can use without a browser.

    from harness.app.state import AppState, Sampling
    state = AppState()                    # the embedded default base, loaded on first use
    lm = state.get_model()
    state.adapters("causal")              # usable chat/poem adapters of this base

One AppState holds ONE LoadedModel: the adapter is chosen per request (never global state, so one user's choice
never leaks into another's request), switching adapters never reloads the base, and switching the base frees
the old one first.
"""
from __future__ import annotations

import gc
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.app.server import close_server, is_server_spec, server_route, server_stream
from harness.errors import UserError
from harness.io import hide_paths
from harness.judge import DEFAULT_JUDGE, DEFAULT_OFFLINE_JUDGE
from harness.models import (AdapterInfo, LoadedModel, base_note, base_status, default_base, list_adapters,
                            list_bases, load_model, resolve_base)
from harness.paths import adapters_dir, check_name

BASE = "base"                                  # the adapter value meaning "no adapter: the base model alone"
LANGS = {"中文": "zh", "English": "en"}
POEM_FORMS = {"zh": ("五言绝句", "七言绝句", "五言律诗", "七言律诗"), "en": ("sonnet", "free verse")}
SPACE_MAX_NEW_TOKENS = 256                     # per answer on a shared Space (SYSTEM=spaces)
SPACE_QUEUE = 16                               # requests waiting at most on a shared Space
TRAIN_HINT = "new adapters come from ftbench's fine-tuning recipes (the project README, \"Adapters trained here\")"

@dataclass(frozen=True)
class Limits:
    """Input limits checked at the boundary. Textboxes do not cap their length in the browser (a silent cut of a
    paste is worse than a refusal): a longer input is refused with its length and how much is too many."""
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
    offline_judge: str = DEFAULT_OFFLINE_JUDGE  # offered in Compare when the judge gives no scores (in process)
    extra_bases: tuple[str, ...] = ()        # local dirs / .gguf the operator allows besides the registry
    judge_host: str | None = None            # Ollama host (None: $OLLAMA_HOST or 127.0.0.1:11434)
    limits: Limits = field(default_factory=Limits)
    lm: LoadedModel | None = field(default=None, repr=False)
    last_stats: OrderedDict = field(default_factory=OrderedDict, repr=False)   # session -> StreamStats
    _load_lock: Any = field(default_factory=threading.RLock, repr=False)   # switch_base -> llama_engine re-enters
    _lock: Any = field(default_factory=threading.Lock, repr=False)
    _running: dict = field(default_factory=dict, repr=False)                   # session -> set[Event]
    _adapters_cache: Any = field(default=None, repr=False)
    _short: Any = field(default_factory=threading.Condition, repr=False)     # short work waiting / running
    _short_count: int = field(default=0, repr=False)
    store: str | None = None                 # SQLite store of votes (None: harness.store default, $FTBENCH_CACHE)
    judge_timeout: float = 60.0              # seconds per judge request (harness.judge JudgeConfig.timeout)
    engine: str = "transformers"             # "llama.cpp": chat and free poems through harness.llamacpp;
    #                                          "openai:<model>@<url>" / "ollama:<model>": through that server
    threads: int = 0                         # CPU threads for llama.cpp (0: every core)
    adapt_threads: bool = False              # llama.cpp: threads per request = the cores not busy now (auto_threads)
    #                                          instead of `threads` fixed at start (app.py: --threads not given)
    _llama_threads: int = field(default=0, repr=False)
    llama: Any = field(default=None, repr=False)            # harness.llamacpp.LlamaCppEngine, loaded on first use
    engine_note: str = ""                    # why llama.cpp / the server is not in use (one line; "" when it is)
    phase: str = "idle"                      # idle | preparing | ready | failed (the first start, see prepare())
    phase_note: str = ""
    phase_started: float = 0.0
    _jobs: OrderedDict = field(default_factory=OrderedDict, repr=False)     # token -> (kind, session, started)
    sessions: OrderedDict = field(default_factory=OrderedDict, repr=False)  # session -> dict of per-tab data
    spaces: bool = False                     # a shared public app (SYSTEM=spaces): capped work, no server paths
    start_note: str = ""                     # one line for the header from the start (e.g. the engine chosen)
    checkpoints: Path | None = None          # the checkpoints root visitors may pick from (None: ./checkpoints)
    max_models: int = 2                      # models held at once (the base in use counts); least recently used freed
    _others: OrderedDict = field(default_factory=OrderedDict, repr=False)   # spec name -> LoadedModel (not self.lm)
    _used: OrderedDict = field(default_factory=OrderedDict, repr=False)     # spec names, least recently used first

    def __post_init__(self):
        from dataclasses import replace
        self.spec = resolve_base(self.model or default_base())     # an unknown name fails here, before loading
        if self.spaces:
            self.limits = replace(self.limits, max_new_tokens=min(self.limits.max_new_tokens, SPACE_MAX_NEW_TOKENS))
        self.adapters_folder = Path(self.adapters_folder) if self.adapters_folder else None
        self.results_folder = Path(self.results_folder) if self.results_folder else None

    def sampling(self, temperature=None, top_p=None, max_new_tokens=None, seed=None, repetition_penalty=None,
                 **defaults) -> Sampling:
        """The sampling controls of a request (Sampling.from_ui), within this app's max new tokens."""
        sampling = Sampling.from_ui(temperature, top_p, max_new_tokens, seed, repetition_penalty, **defaults)
        if sampling.max_new_tokens > self.limits.max_new_tokens:
            raise UserError(f"max new tokens must be at most {self.limits.max_new_tokens} in this app, "
                            f"got {sampling.max_new_tokens}: lower it and send again")
        return sampling

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
        """The loaded base (loading it the first time, or again after the LRU freed it for two other models)."""
        with self._load_lock:
            if self.lm is None:
                self._free_models(keep={self.spec.name}, room=1)
                self.lm = self._load(self.spec.name)
            self._used[self.spec.name] = None
            self._used.move_to_end(self.spec.name)
            return self.lm

    def _load(self, name: str) -> LoadedModel:
        """load_model under the caller's _load_lock (transformers is imported there, never in two threads at
        once), with torch on this app's threads: on llama.cpp app.py does not import torch at start, so the
        transformers copy's first load sets them."""
        if self.threads:
            import torch
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
        return load_model(name, adapters_folder=self.adapters_folder)

    # ------------------------------------------------------------ any checkpoint: the root and the LRU of models

    @property
    def checkpoints_root(self) -> Path:
        return Path(self.checkpoints) if self.checkpoints else Path.cwd() / "checkpoints"

    def root_checkpoint(self, name: Any) -> str:
        """A folder or file inside the checkpoints root -> its resolved path (a full fine-tune or base folder with a
        config.json, a .gguf, a LLMs-from-scratch .pth). A name never escapes the root: absolute paths, `~`, `..`
        and symlinks pointing out are refused, and the refusal never echoes the path."""
        name = str(name or "").strip()
        outside = UserError("that checkpoint is not inside the app's checkpoints folder: give a folder or file "
                            "name relative to it (absolute paths, '..' and links out of it are refused)")
        if not name:
            raise UserError("type the name of a folder or file inside the app's checkpoints folder")
        rel = Path(name)
        if rel.is_absolute() or name.startswith(("~", "\\")) or ".." in rel.parts or ":" in name or "\0" in name:
            raise outside
        root = self.checkpoints_root.resolve()
        try:
            path = (root / rel).resolve()
        except (OSError, RuntimeError):              # a symlink loop
            raise outside from None
        if path != root and root not in path.parents:
            raise outside
        if not path.exists():
            raise UserError(f"no checkpoint {rel.as_posix()!r} in the app's checkpoints folder: copy it there, "
                            "then add it again")
        if not root_model(path):
            raise UserError(f"{rel.as_posix()!r} is not a checkpoint: a folder with a config.json (a full fine-tune "
                            "or a base), a .gguf file or a LLMs-from-scratch .pth state dict")
        return str(path)

    def root_checkpoints(self) -> list[str]:
        """Names (relative to the checkpoints root) of the checkpoints in it, its top level and one level below."""
        root = self.checkpoints_root
        if not root.is_dir():
            return []
        found = []
        for p in sorted(root.iterdir()):
            for q in [p, *(sorted(p.iterdir()) if p.is_dir() and not (p / "config.json").is_file() else [])]:
                try:
                    rel = q.relative_to(root).as_posix()
                    self.root_checkpoint(rel)
                    found.append(rel)
                except (UserError, OSError):
                    continue
        return found

    def hide_root(self, text: str) -> str:
        """A message with the checkpoints root's server path replaced by "checkpoints" (a load error may name it)."""
        for root in {str(self.checkpoints_root.resolve()), str(self.checkpoints_root)}:
            text = text.replace(root, "checkpoints")
        return text

    def model_for(self, name: str, keep: tuple[str, ...] = ()) -> LoadedModel:
        """The loaded model of a resolved base name (resolve_base(...).name): the base in use (get_model) or one
        held besides it. At most max_models are held: loading another frees the least recently used first (never
        one of `keep`, the other side of a comparison). A generation still running on a freed model finishes: it
        holds its own reference."""
        if name == self.spec.name:
            return self.get_model()
        with self._load_lock:
            lm = self._others.get(name)
            if lm is None:
                self._free_models(keep={name, *keep}, room=1)
                lm = self._load(name)
                self._others[name] = lm
            self._used[name] = None
            self._used.move_to_end(name)
            return lm

    def held_models(self) -> list[LoadedModel]:
        return ([self.lm] if self.lm is not None else []) + list(self._others.values())

    def _free_models(self, keep: set, room: int) -> None:
        """Free least recently used models until `room` more fit under max_models (caller holds _load_lock)."""
        freed = False
        for name in list(self._used):
            if len(self.held_models()) + room <= max(1, self.max_models):
                break
            if name in keep:
                continue
            self._used.pop(name, None)
            freed = True
            if name == self.spec.name and self.lm is not None:
                self.lm = None                   # get_model() loads it again when it is next used
            else:
                self._others.pop(name, None)
        if freed:
            gc.collect()

    def switch_base(self, name: str) -> LoadedModel | None:
        """Load another base; the old one is freed first (del + gc.collect). On failure the old one comes back. On
        llama.cpp a base with a GGUF is loaded there only (the transformers copy waits for a job that needs it:
        returns None); without one, or if llama.cpp cannot open it, its transformers copy loads."""
        if not name or not str(name).strip():
            raise UserError("choose a base model first")
        name = str(name).strip()
        allowed = self.allowed_bases()
        if name in allowed:       # a name from the UI never becomes a path outside the checkpoints root
            spec = resolve_base(name)
        elif (os.path.lexists(self.checkpoints_root / name) or "/" in name or "\\" in name or ".." in name
              or name.endswith((".gguf", ".pth"))):
            spec = resolve_base(self.root_checkpoint(name))
        else:
            raise UserError(f"unknown base {name!r}; choose one of: {', '.join(allowed)}, or a checkpoint in the "
                            "app's checkpoints folder. Other local models load at start-up: python app.py --model DIR")
        if self.lm is not None and self.lm.name == spec.name:
            return self.lm
        if self.engine == "llama.cpp" and self.llama is not None and self.spec.name == spec.name:
            return self.lm
        status = base_status(spec)                # refuse what cannot load offline before freeing anything
        if status == "downloadable":
            raise UserError(f"{spec.name} is not downloaded (hub id {spec.location}); the app does not download "
                            f"models. On a machine with internet run `{base_note(spec, status)}`, then reload. "
                            f"Still using {self.base_name}.")
        if status == "missing":
            raise UserError(f"{spec.name} is missing: {base_note(spec, status) or 'install its package'}. "
                            f"Still using {self.base_name}.")
        with self._load_lock:
            if self.lm is not None and self.lm.name == spec.name:
                return self.lm
            old_name, old_spec, old = self.spec.name, self.spec, self.lm
            had_copy = old is not None
            self.close_llama()
            if old is not None:
                with old.lock:                      # a generation still finishing keeps its model until done
                    self.lm = None
                del old
            self._used.pop(old_name, None)
            held = self._others.pop(spec.name, None)    # already held for Compare: becomes the base in use
            gc.collect()
            try:
                self.spec = spec
                if held is None and self.engine == "llama.cpp" and self.llama_engine() is not None:
                    self.lm = None                  # on llama.cpp only: no transformers copy until a job needs it
                else:
                    self.lm = held or self._load(spec.name)
                self._used[spec.name] = None
                self._used.move_to_end(spec.name)
            except Exception as e:
                reason = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
                self.lm, self.spec = None, old_spec
                self.close_llama()
                gc.collect()
                try:
                    if had_copy or self.engine != "llama.cpp":
                        self.lm = self._load(old_name)
                    now = f"Still using {short_name(old_name)}."
                except Exception as again:  # noqa: BLE001 - reported in the message below
                    now = f"Reloading {short_name(old_name)} failed too ({type(again).__name__}): restart the app."
                raise UserError(self.hide_root(f"could not load base {name!r}: {reason}. {now}")) from None
            self.phase, self.phase_note = "ready", ""        # an earlier base's failure is no longer news
            return self.lm

    # ------------------------------------------------------------ the llama.cpp fast path (--engine llama.cpp)

    def llama_engine(self):
        """The llama.cpp engine for the base in use (loaded once, adapters hot-swapped on it), or None when the app
        runs on transformers or llama.cpp cannot load this base (engine_note says why, once)."""
        if self.engine != "llama.cpp":
            return None
        with self._load_lock:
            if self.llama is None and not self.engine_note:
                try:
                    from harness.llamacpp import load_engine
                    self.llama = load_engine(self.spec.name, n_threads=self.threads or None)
                except Exception as e:  # noqa: BLE001 - the app goes on with transformers, and says so
                    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                    self.engine_note = hide_paths(f"llama.cpp could not load {short_name(self.spec.name)} ({reason}): "
                                                  "using transformers")
            return self.llama

    def llama_threads(self, engine) -> int:
        """Set the threads llama.cpp decodes the next request with (caller holds engine.lock): `threads`, or with
        adapt_threads the cores not busy now. Measured on 2 cores, greedy, 96 tokens: idle, 2 threads give the
        first token in 0.19 s and 74 tokens/s vs 0.53 s and 36 with 1; beside other work (load 5) 2 threads
        fall to 0.7-2 tokens/s (spinning barriers) while 1 keeps 17. A choice made once at start is wrong
        whenever the load changes."""
        n = auto_threads() if self.adapt_threads else (self.threads or os.cpu_count() or 1)
        if n != (self._llama_threads or getattr(engine, "n_threads", n)):      # loaded with engine.n_threads
            import llama_cpp
            llama_cpp.llama_set_n_threads(engine.llm.ctx, n, n)
            self._llama_threads = n
        return n

    def close_llama(self) -> None:
        if self.llama is not None:
            try:
                self.llama.close()
            except Exception:  # noqa: BLE001 - freeing a half-broken engine must not stop a base switch
                pass
        self.llama, self.engine_note, self._llama_threads = None, "", 0

    def llama_route(self, adapter: str | None, sampling: Sampling, form: str = ""):
        """(engine, notice): llama.cpp for a chat or a poem (with its repetition penalty: llama.cpp applies it to
        the last 64 tokens, transformers to the whole sequence; a form under its GBNF grammar, chat_stream);
        (None, why) when llama.cpp cannot load this base; (None, "") when the app runs on transformers."""
        if self.engine != "llama.cpp":
            return None, ""
        engine = self.llama_engine()
        if engine is None:
            return None, self.engine_note
        return engine, ""

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
        """Usable adapters of the current base. kind: "causal" = the ones that write (chat, poems; a label-as-text
        classifier is a causal LM but only ever writes a label, so it is not one), "classifier" = the ones that
        classify (a head, or label-as-text), "seq_cls" = head classifiers only; None = all."""
        return [a for a in self.all_adapters()
                if not a.problem and a.base == self.base_name and _of_kind(a, kind)]

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
        other = {a.name: a for a in self.all_adapters()}.get(name)
        what = "classifier" if kind in ("seq_cls", "classifier") else "chat/poem"
        if other is None:
            hint = f"available {what} adapters: {', '.join(usable) or 'none'}"
        elif other.problem:         # the problem's own text is for the command line (paths, git, finetune)
            hint = "its files are damaged or incomplete; the server's owner can restore or retrain it"
        elif other.base != self.base_name:
            hint = f"it was trained on base {other.base!r}: load that base first"
        else:
            hint = f"it is a {other.kind} ({other.task}) adapter, this needs a {what} adapter"
        raise UserError(f"adapter {name!r} is not usable here ({hint}); {TRAIN_HINT}")

    # ------------------------------------------------------------ first start: prepare in the background

    def begin_prepare(self) -> None:
        """Say that the model is being prepared (before the page is up, so its first view says so)."""
        converting = base_status(self.spec) == "needs conversion"
        self.phase, self.phase_started = "preparing", time.monotonic()
        self.phase_note = ("preparing the model (one-time, about a minute): converting the embedded GGUF to "
                           "safetensors in the cache" if converting else "loading the model")

    def import_model_stack(self) -> None:
        """Import peft, torch and transformers under the model lock. The app imports them behind the served page;
        a request that loads a model meanwhile waits here instead of importing them in a second thread at the same
        moment (two threads importing transformers' lazy modules at once fail with 'cannot import name ...').
        On llama.cpp nothing is imported here: transformers is imported (under the same lock, by load_model) only
        when a job needs the transformers copy of a model (a classification head, a fallback, a second model)."""
        if self.engine == "llama.cpp":
            return
        with self._load_lock:
            import peft  # noqa: F401
            import torch  # noqa: F401
            import transformers  # noqa: F401

    def prepare(self, warmup: bool = True) -> float:
        """Load (on an empty cache: convert) the base and warm it up; phase/phase_note tell the UI where it is.
        Returns the warm-up seconds. Errors are kept in phase_note (phase "failed"); the page keeps serving."""
        if self.phase != "preparing":
            self.begin_prepare()
        seconds = 0.0
        try:
            if self.engine == "llama.cpp":
                self.phase_note = "loading llama.cpp"
                if self.llama_engine() is None:            # no GGUF / cannot open it: transformers, said once
                    self.phase_note = "loading the model"
                    self.get_model()
            else:
                self.get_model()
            if is_server_spec(self.engine):
                self.phase_note = f"reaching {self.engine}"
                self.engine_note = server_route(self.engine, None)[1]     # "" when it answers
            if warmup:
                self.phase_note = "warming up the model"
                seconds = self.warmup()
            self.phase, self.phase_note = "ready", ""
            return seconds
        except Exception as e:  # noqa: BLE001 - shown in the status line and the server log
            self.phase, self.phase_note = "failed", f"loading {self.spec.name} failed: {e}"
            raise

    def phase_text(self) -> str:
        """The status line's preparation part ("" when ready)."""
        if self.phase == "preparing":
            return f"⏳ {self.phase_note} … {time.monotonic() - self.phase_started:.0f} s"
        if self.phase == "failed":
            return f"⚠ {self.phase_note}"
        return ""

    # ------------------------------------------------------------ the generation queue, as the user sees it

    def enqueue(self, kind: str, session: str) -> str:
        """Register a generation request the moment the user sends it; returns its token."""
        import uuid
        token = uuid.uuid4().hex
        with self._lock:
            self._jobs[token] = (kind, session, None)
        return token

    def start_job(self, token: str) -> None:
        with self._lock:
            if token in self._jobs:
                kind, session, _ = self._jobs[token]
                self._jobs[token] = (kind, session, time.monotonic())

    def queued(self, token: str) -> bool:
        """Is this request still wanted? False once it ended or its page went away (end_session)."""
        with self._lock:
            return token in self._jobs

    def finish_job(self, token: str) -> None:
        with self._lock:
            self._jobs.pop(token, None)

    def ahead(self, token: str) -> int | None:
        """How many generation requests (any user, any tab) are before this one; None once it runs or ended."""
        with self._lock:
            keys = list(self._jobs)
            if token not in self._jobs or self._jobs[token][2] is not None:
                return None
            return keys.index(token)

    def session_data(self, session: str) -> dict:
        """Per-session data of the tabs (the chat's conversation, the last comparison), newest 256 sessions."""
        with self._lock:
            data = self.sessions.setdefault(session, {})
            self.sessions.move_to_end(session)
            while len(self.sessions) > 256:
                self.sessions.popitem(last=False)
            return data

    # ------------------------------------------------------------ short work before long generation

    @contextmanager
    def short_work(self):
        """Mark a block as short work (classify, a form check): a long generation pauses at its next token
        (harness/app/streaming.py) until no short work is waiting, so a 1 s request never waits a whole reply."""
        with self._short:
            self._short_count += 1
        try:
            yield
        finally:
            with self._short:
                self._short_count -= 1
                self._short.notify_all()

    def wait_for_short_work(self, timeout: float = 30.0) -> None:
        """Called by a generation between two tokens, without the model's lock: returns once no short work is
        waiting (or after `timeout` seconds, so a stuck request cannot starve a generation forever)."""
        with self._short:
            self._short.wait_for(lambda: self._short_count == 0, timeout=timeout)

    @property
    def short_waiting(self) -> int:
        return self._short_count

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

    def end_session(self, session: str) -> None:
        """The session's page is gone (closed or reloaded): stop its generations, forget its queued requests
        (they will never run, so they must not count in anyone's "waiting for N requests ahead"). Its data stays
        (the newest 256 sessions are kept) in case the same page comes back."""
        self.stop(session)
        with self._lock:
            for token in [t for t, (_, s, _) in self._jobs.items() if s == session]:
                del self._jobs[token]

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
        """Load the base, attach this base's adapters and run one short generation; returns the seconds taken.
        On llama.cpp only llama.cpp is warmed (each adapter's GGUF exported and loaded): the transformers copy of
        the base is loaded when a job first needs it (a classification head, a fallback), not at start."""
        t0 = time.perf_counter()
        if self.llama_engine() is None:
            from harness.generation import GenerationConfig, generate_batch
            lm = self.get_model()
            for a in self.adapters():
                try:
                    lm.attach(a.name)
                except Exception as e:  # noqa: BLE001 - a broken adapter must not stop the app
                    print(f"warm-up: adapter {a.name} skipped: {e}")
            generate_batch(lm, [lm.render_chat([{"role": "user", "content": "Hi"}])],
                           GenerationConfig(max_new_tokens=2))
        if self.llama is not None:
            for a in [None, *[a.name for a in self.adapters("causal")]]:
                try:       # exports each adapter's GGUF once (harness.llamacpp) and loads it on the base
                    for _ in self.llama.stream_chat([{"role": "user", "content": "Hi"}], a, max_new_tokens=2):
                        pass
                except Exception as e:  # noqa: BLE001 - that adapter falls back to transformers, with a notice
                    print(f"warm-up: llama.cpp adapter {a} skipped: {e}")
        return time.perf_counter() - t0


def root_model(path: Path) -> bool:
    """Is this file or folder a checkpoint the app can load (config.json folder, .gguf, .pth)?"""
    return (path.is_dir() and (path / "config.json").is_file()) or (path.is_file() and path.suffix in (".gguf", ".pth"))


def model_memory(models: list) -> str:
    """The memory of the held models, for the Compare note: this process's RSS and each model's parameter bytes."""
    def params(lm) -> int:
        return sum(p.numel() * p.element_size() for p in lm.model.parameters())
    parts = [f"{short_name(lm.name)} {params(lm) / 2**20:,.{0 if params(lm) >= 2**24 else 2}f} MiB of parameters"
             for lm in models]
    return f"memory: {rss_mib():,.0f} MiB resident (RSS) · " + " · ".join(parts)


def rss_mib() -> float:
    """This process's resident memory in MiB (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def short_name(name: str) -> str:
    """A model's name as the page shows it: a local path by its last part (never the server's folders)."""
    return Path(name).name if ("/" in name and Path(name).is_absolute()) else name


def _of_kind(a: AdapterInfo, kind: str | None) -> bool:
    method = getattr(a, "method", "")
    if kind == "causal":
        return a.kind == "causal" and method != "label_text"
    if kind == "classifier":
        return a.kind == "seq_cls" or method == "label_text"
    return kind is None or a.kind == kind


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


def task_hints(name: str) -> dict:
    """A task's app hints from the registry (the [app] table of harness/tasks/<name>.toml: placeholder,
    examples), {} when the task or the table is missing: a tab then shows no hint, never fails."""
    from harness.tasks import get_task
    try:
        hints = get_task(name).app
    except UserError:
        return {}
    return {"placeholder": str(hints.get("placeholder", "")),
            "examples": [str(x) for x in hints.get("examples", []) if str(x).strip()]}


# ---------------------------------------------------------------- inputs

def require_text(value: Any, what: str, limit: int, hint: str = "") -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise UserError(f"the {what} is empty: {hint or f'type a {what} first'}")
    too_long(text, what, limit)
    return text


def too_long(text: str, what: str, limit: int) -> None:
    if len(text) > limit:
        raise UserError(f"the {what} is too long: {len(text):,} characters, the limit is {limit:,} "
                        f"({len(text) - limit:,} too many); nothing was cut: shorten it and send again")


def optional_text(value: Any, what: str, limit: int) -> str:
    text = "" if value is None else str(value).strip()
    too_long(text, what, limit)
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
            "finish_reason": stats.finish_reason or "running",
            **({"threads": stats.extra["threads"]} if "threads" in getattr(stats, "extra", {}) else {})}


def run_info(lm, adapter: str | None, prompt: str, stats, sampling: Sampling, **extra) -> dict:
    """The transparency panel's info. lm: a LoadedModel, or the base's BaseSpec (state.spec) when the answer came
    from llama.cpp or a server and the transformers copy is not loaded."""
    spec = getattr(lm, "spec", lm)
    return {"model": lm.name, "adapter": adapter or "(none: base model)", "prompt_style": spec.prompt_style,
            "prompt": prompt, **stats_info(stats), "sampling": sampling.as_dict(), **extra}


def shown_model(state: AppState):
    """What run_info names as the model: the loaded transformers copy if there is one, else the base's spec
    (never loads anything: a llama.cpp answer must not load the transformers copy just to name it)."""
    return state.lm if state.lm is not None else state.spec


def stream_into(state: AppState, prompt: str, adapter: str | None, sampling: Sampling, session: str,
                form: str = "", max_new_tokens: int | None = None, rules: dict | None = None
                ) -> Iterator[tuple[str, Any]]:
    """Yield (text so far, stats) while the model streams (harness/app/streaming.py: short work may run between
    two tokens); Stop (state.stop) or closing this halts the model. form: a classical Chinese form to enforce
    while decoding (harness/forms.py), rules its rhyme/tone options (GenerationConfig's rhyme, rhyme_group, tone);
    max_new_tokens overrides the sampling's."""
    from dataclasses import replace

    from harness.app.streaming import stream_rows
    lm = state.get_model()
    cfg = sampling.config()
    if form:
        cfg = replace(cfg, form=form, **(rules or {}))
    if max_new_tokens:
        cfg = replace(cfg, max_new_tokens=max_new_tokens)
    with state.running(session) as (event, stats):
        text = ""
        stats.prompt_tokens = lm.count_tokens(prompt)
        yield text, stats
        completed = False
        gen = stream_rows(state, lm, prompt, [adapter], cfg, event, [stats])
        try:
            for texts in gen:
                text = texts[0]
                yield text, stats
            completed = True
        finally:
            gen.close()
            if not completed or getattr(event, "requested", False):
                stats.finish_reason = "cancelled"
            event.set()
        yield text, stats


def chat_stream(state: AppState, messages: list[dict], system: str, adapter: str | None, sampling: Sampling,
                session: str, form: str = "", max_new_tokens: int | None = None, instruction: bool = False,
                rules: dict | None = None) -> Iterator[tuple[str, Any, str, str, str]]:
    """A chat (or a one-message instruction) streamed on the engine that can do it: yields (text so far, stats,
    the exact prompt, engine, notice). llama.cpp (--engine llama.cpp) or a serving engine (--engine
    openai:<model>@<url> / ollama:<model>, harness/app/server.py) for plain decoding; transformers for the form
    constraint, or when llama.cpp cannot load the base or adapter, or the server does not serve the adapter or
    is down (notice says why, in one line). A server that fails before its first text falls back the same way;
    one that fails half-way through an answer fails that answer (UserError), never mixing two engines in one.
    instruction: one message rendered as the model's instruction prompt (LoadedModel.render_instruction)."""
    if is_server_spec(state.engine):
        srv, notice = server_route(state.engine, adapter, form)
        if srv is None and not form and not adapter:   # the only reason left: the server is down
            state.engine_note = notice
        if srv is not None:
            state.engine_note = ""
            said = False
            try:
                for out in server_stream(state, srv, messages, system or None, adapter, sampling, session,
                                         max_new_tokens):
                    said = said or bool(out[0])
                    yield out
                return
            except UserError as e:
                if said:                        # part of the answer is shown: it fails, never mixes two engines
                    raise
                close_server(state.engine)      # the next request checks the server again
                notice = state.engine_note = hide_paths(f"{e}: using transformers")
        yield from _transformers_chat(state, messages, system, adapter, sampling, session, form, max_new_tokens,
                                      instruction, notice, rules)
        return
    engine, notice = state.llama_route(adapter, sampling, form)
    grammar = None
    if engine is not None and form:
        grammar = form_grammar(sampling, form, rules)      # bad options: the form options' own UserError
    if engine is not None:
        try:
            with engine.lock:
                if adapter:
                    engine.add_adapter(adapter)        # exports the adapter's GGUF once
                if grammar is not None and not max_new_tokens and form != "sonnet":
                    max_new_tokens = form_token_budget(engine_token_count(engine), form)
                threads = state.llama_threads(engine)
                ids = engine.render(messages, max_new_tokens or sampling.max_new_tokens, system or None)
            prompt = engine.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        except (UserError, RuntimeError, OSError, ValueError) as e:
            engine = None
            notice = hide_paths(f"llama.cpp cannot use {adapter or 'the base'} here ({str(e).splitlines()[0][:200]}): "
                                "using transformers")
    if engine is not None:
        with state.running(session) as (event, stats):
            text = ""
            stats.extra["threads"] = threads          # llama.cpp's threads for this answer (adapt_threads)
            if form:
                stats.extra["max_new_tokens_used"] = max_new_tokens or sampling.max_new_tokens
            yield text, stats, prompt, "llama.cpp", ""
            gen = engine.stream_chat(messages, adapter, max_new_tokens=max_new_tokens or sampling.max_new_tokens,
                                     temperature=sampling.temperature, stop_event=event, stats=stats,
                                     system=system or None, seed=sampling.seed, top_p=sampling.top_p,
                                     repeat_penalty=sampling.repetition_penalty,
                                     **({"grammar": grammar} if grammar is not None else {}))
            try:
                for chunk in gen:
                    text += chunk
                    yield text, stats, prompt, "llama.cpp", ""
            finally:
                gen.close()
                if getattr(event, "requested", False):
                    stats.finish_reason = "cancelled"
            yield clean_tail(text), stats, prompt, "llama.cpp", ""
        return
    yield from _transformers_chat(state, messages, system, adapter, sampling, session, form, max_new_tokens,
                                  instruction, notice, rules)


def _transformers_chat(state: AppState, messages: list[dict], system: str, adapter: str | None, sampling: Sampling,
                       session: str, form: str, max_new_tokens: int | None, instruction: bool, notice: str,
                       rules: dict | None = None) -> Iterator[tuple[str, Any, str, str, str]]:
    if form == "sonnet":            # its 14 lines are a llama.cpp grammar; transformers writes it free
        form, notice = "", "; ".join(x for x in (notice, "the sonnet's 14 lines are kept only on llama.cpp") if x)
    lm = state.get_model()
    if form and not max_new_tokens:
        max_new_tokens = form_token_budget(lm.tokenizer, form)
    if instruction:
        prompt = lm.render_instruction(messages[-1]["content"])
    else:
        prompt = lm.render_chat(messages, system or None, max_new_tokens or sampling.max_new_tokens)
    for text, stats in stream_into(state, prompt, adapter, sampling, session, form, max_new_tokens, rules):
        if form:
            stats.extra["max_new_tokens_used"] = max_new_tokens
        yield text, stats, prompt, "transformers", notice


def clean_tail(text: str) -> str:
    return text.rstrip("\ufffd")


def form_grammar(sampling: Sampling, form: str, rules: dict | None = None) -> str:
    """The GBNF grammar (harness.llamacpp.poem_grammar) of a form under its rhyme/tone options. The options are
    checked by GenerationConfig first, as on transformers, so a bad one (an unknown rhyme group, a form with no
    template) is the same one-sentence UserError on either engine."""
    from dataclasses import replace

    from harness.llamacpp import poem_grammar
    if form == "sonnet":          # 14 non-empty lines; rhyme and metre are not a grammar's (harness/grammars.py)
        return poem_grammar("sonnet", **(rules or {}))
    cfg = replace(sampling.config(), form=form, **(rules or {}))
    return poem_grammar(cfg.form, rhyme=bool(cfg.rhyme), rhyme_group=cfg.rhyme_group or None, tone=cfg.tone or False)


def form_token_budget(tok, form: str) -> int:
    """Max new tokens that always fit a poem in `form` under the constraint (transformers' FormConstraint or
    llama.cpp's grammar): every character at most 3 tokens (a 3-byte UTF-8 ideograph split byte by byte; the
    GGUF tokenizer writes ~2 per character), each line's forced punctuation, and the end of text. tok: a
    transformers tokenizer, or a function text -> its number of tokens (engine_token_count)."""
    from harness.metrics import FIXED_FORMS
    lines, chars = FIXED_FORMS[form]
    count = tok if not hasattr(tok, "convert_tokens_to_ids") else (
        lambda text: len(tok(text, add_special_tokens=False)["input_ids"]))
    punct = max(count(p) for p in ("，\n", "。\n", "。"))
    return lines * (chars * 3 + punct) + 2


def engine_token_count(engine):
    """text -> its number of tokens in the llama.cpp engine's (the GGUF's) tokenizer."""
    return lambda text: len(engine.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def base_choices(state: AppState) -> list[tuple[str, str]]:
    """(label, value) for every registered base with its status, plus the loaded one if it is a local path."""
    shown = {"cached": "ready", "needs conversion": "first load converts it, ~20 s",
             "downloadable": "not downloaded", "missing": "package missing", "local": "local"}
    out = []
    for s in list_bases():
        status = base_status(s)
        note = base_note(s, status) if status == "missing" else ""
        said = shown.get(status, status)
        out.append((s.name if status == "cached" else f"{s.name} ({said}{': ' + note if note else ''})", s.name))
    out += [(f"{rel} (checkpoints folder)", rel) for rel in state.root_checkpoints()]
    if base_value(state) not in [v for _, v in out]:
        out.append((f"{Path(state.base_name).name} (local)", state.base_name))
    return out


def base_value(state: AppState) -> str:
    """The base picker's value for the base in use: a checkpoint in the checkpoints root by its name there."""
    try:
        return Path(state.base_name).relative_to(state.checkpoints_root.resolve()).as_posix()
    except ValueError:
        return state.base_name


def adapter_choices(state: AppState, kind: str = "causal") -> list[tuple[str, str]]:
    return [("none (base model)", BASE)] + [(f"{a.name} ({a.task})", a.name) for a in state.adapters(kind)]


def status_line(state: AppState, adapter: str | None = None) -> str:
    """The always-visible "which model am I talking to" line."""
    base = state.base_name
    shown = Path(base).name if "/" in base else base
    phase = state.phase_text()
    loaded = f" {phase}" if phase else ("" if state.lm is not None or state.llama is not None
                                        else " (loads on first use)")
    try:
        name = state.resolve_adapter(adapter, "causal")
        what = f"`{name}`" if name else "none: the base model alone"
    except UserError:
        what = f"`{adapter}` ⚠ not usable with this base"
    usable = state.adapters()
    note = f"{len(usable)} adapter(s) for this base" if usable else f"no adapters for this base yet: {TRAIN_HINT}"
    engine = ""
    if is_server_spec(state.engine):
        engine = (f" · **engine:** transformers ⚠ {state.engine_note}" if state.engine_note else
                  f" · **engine:** `{state.engine}` for chat, free poems and Compare (transformers for forms and Spam)")
    elif state.engine == "llama.cpp":
        engine = (f" · **engine:** transformers ⚠ {state.engine_note}" if state.engine_note else
                  " · **engine:** llama.cpp for chat, poems (forms, rhyme and tone as grammars) and Compare "
                  "(transformers for Spam, and for an adapter llama.cpp cannot load, said with its answer)")
    return f"**Model:** `{shown}`{loaded} · **adapter:** {what} · {note}{engine}"
