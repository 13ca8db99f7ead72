"""llama.cpp in-process, the default engine where llama-cpp-python is installed: one base GGUF loaded once,
exported GGUF LoRA adapters hot-swapped per request, the poem constraints as grammars (harness/grammars.py).

    from harness.llamacpp import pick_engine, load_engine
    name, notice = pick_engine("")                  # ("llama.cpp", "") or ("transformers", "one-line notice")
    eng = load_engine(adapters=["smollm2-135m-alpaca"])   # exports the adapter's GGUF once (cached by sha256)
    for chunk in eng.stream_chat([{"role": "user", "content": "Name three colors."}], "smollm2-135m-alpaca"):
        print(chunk, end="")
    eng.chat([{"role": "user", "content": "写一首五言绝句，题目：春夜"}], "smollm2-135m-poem-zh",
             grammar=poem_grammar("五言绝句", rhyme=True, tone=True))
    eng.generate_many([[{"role": "user", "content": q}] for q in questions], None, max_new_tokens=128)  # batched
    for piece in eng.decode_alone(eng.render(messages), "smollm2-135m-alpaca", 128, n_threads=1): ...  # own context

    python -m harness bench llamacpp        # harness/bench/llamacpp.py: tokens/s vs transformers, grammar cost

The base is never reloaded: an adapter is a llama_adapter_lora_init() handle on the loaded model, switched on a
context with llama_set_adapters_lora() at its scale (1.0 = as trained: the export folds peft's alpha / r into
the GGUF) (no adapters = the base). A switch drops the KV cache (its keys were computed with the other adapter).
Every request evaluates its whole prompt from an empty cache (a 135M model prefills a chat prompt in
milliseconds; reusing a prefix changed greedy answers in llama-cpp-python). Prompts are rendered with the GGUF's
own chat template, as llama.cpp's server renders them, and tokenized without an added BOS (the template carries
its own special tokens), as the transformers path does.

Decoding is this module's own loop over the low-level API (llama_decode + numpy): greedy is the argmax, sampling
is temperature + top_p with a numpy generator seeded by `seed`; repeat_penalty divides the logits of the last 64
tokens as llama.cpp's penalty sampler does. A grammar is checked on the best candidates first (the argmax, then
the top 64), and on the whole vocabulary only when none of them fits: the same choice as applying it to every
token first (greedy) at a fraction of the cost (a tone grammar's character classes hold ~2,000 ranges).
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError
from harness.export import base_gguf
from harness.generation import StreamStats

INSTALL = 'pip install "llama-cpp-python[server]"'
INSTALL_HINT = (f"{INSTALL} (it builds llama.cpp from source: about 10 minutes on 2 cores; add "
                'CMAKE_ARGS="-DGGML_NATIVE=OFF" before it for a build that runs on any x86-64 CPU)')
ENGINES = ("llama.cpp", "transformers")
PENALTY_LAST_N = 64          # tokens the repeat penalty looks back on (llama-cpp-python's last_n_tokens_size)
TOP_CANDIDATES = 64          # candidates a grammar is checked on before the whole vocabulary
PARALLEL = 16                # sequences per llama_decode in generate_many (`run`, `generate`): see bench generation


def is_available() -> tuple[bool, str]:
    """(True, version) if llama-cpp-python with the LoRA adapter API is importable; else (False, one sentence)."""
    try:
        import llama_cpp
    except ImportError:
        return False, f"the llama.cpp engine needs llama-cpp-python, which is not installed: {INSTALL_HINT}"
    except Exception as e:  # a broken build (missing shared library)
        return False, f"llama-cpp-python is installed but does not load ({str(e).splitlines()[0][:200]}): reinstall it with {INSTALL_HINT}"
    missing = [n for n in ("llama_adapter_lora_init", "llama_set_adapters_lora", "llama_sampler_init_grammar")
               if not hasattr(llama_cpp, n)]
    if missing:
        return False, (f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} lacks {', '.join(missing)} "
                       f"(the LoRA adapter and grammar API): upgrade it with pip install -U \"llama-cpp-python[server]\"")
    return True, f"llama-cpp-python {llama_cpp.__version__}"


def pick_engine(requested: str = "", *, needs_head: bool = False, base: str | None = None) -> tuple[str, str]:
    """Which in-process engine to use: (name, notice). "" / "auto" = the default: llama.cpp whenever
    llama-cpp-python is installed and the base has a GGUF file; "transformers" forces the old path;
    "llama.cpp" asks for it. The notice is one line, "" when the engine is the one asked for (or the default).
    needs_head: a classification head (only transformers returns its probabilities)."""
    req = (requested or "auto").strip().lower()
    if req in ("llamacpp", "llama-cpp", "llama_cpp"):
        req = "llama.cpp"
    if req not in ("auto", *ENGINES):
        raise UserError(f"unknown engine {requested!r}: choose llama.cpp or transformers (or leave it empty for "
                        "the default)")
    if req == "transformers":
        return "transformers", ""
    if needs_head:
        return "transformers", ("" if req == "auto" else
                                "a classification head runs on transformers (llama.cpp returns no class probabilities)")
    ok, why = is_available()
    if not ok:
        return "transformers", f"{why.split(':')[0]}: using transformers"
    if base is not None:
        try:
            base_gguf(base)
        except UserError as e:
            return "transformers", f"{e} Using transformers."
    return "llama.cpp", ""


def exported_gguf(name: str) -> Path:
    """The adapter's GGUF export (harness.export), cached by the adapter's sha256: written again when the peft
    weights changed."""
    import gguf

    from harness.export import default_export_path, export_gguf
    from harness.models import find_adapter

    info = find_adapter(name)
    path = default_export_path(info.name)
    if path.is_file():
        try:
            f = gguf.GGUFReader(path).fields.get("ftbench.adapter_sha256")
            if f is not None and f.contents() == info.sha256:
                return path
        except (ValueError, OSError):    # a truncated or foreign file: write it again
            pass
    return export_gguf(info, path)


class PoemGrammar(str):
    """GBNF text that also knows its form's line length and rhyming lines (for the no-repeat rules)."""
    line_chars: int = 0
    rhyme_lines: frozenset = frozenset()


def poem_grammar(form: str, rhyme: bool = False, rhyme_group: str | None = None, tone: bool | str = False,
                 rhyme_first_line: bool = False) -> str:
    """The GBNF text for a poem form and its constraints (harness.grammars.gbnf, cached). With rhyme, the
    engine also keeps a rhyme character from being used twice (as FormConstraint does; a grammar cannot)."""
    from harness.grammars import gbnf
    from harness.metrics import FIXED_FORMS

    out = PoemGrammar(gbnf(form, rhyme, rhyme_group or None, tone, rhyme_first_line))
    if form in FIXED_FORMS and (rhyme or rhyme_group):
        from harness.rules import rhyme_lines
        out.line_chars = FIXED_FORMS[form][1]
        out.rhyme_lines = frozenset(rhyme_lines(form, rhyme_first_line))
    return out


# ------------------------------------------------------------------------------------------ low-level pieces

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


class Grammar:
    """A llama.cpp grammar sampler over a vocabulary: which tokens may come next, and accept() the chosen one."""

    def __init__(self, vocab, text: str):
        import llama_cpp

        self._lib = llama_cpp
        self.ptr = llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
        if not self.ptr:
            raise UserError("llama.cpp could not parse the poem grammar: rebuild it with "
                            "`python -m harness.grammars FORM` (the cache may hold a damaged file)")

    def allowed(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Bool mask over `ids`: which of these tokens the grammar allows now."""
        lib = self._lib
        data = np.zeros(len(ids), dtype=_TOKEN_DATA)
        data["id"] = ids
        data["logit"] = 0.0
        arr = lib.llama_token_data_array(data=data.ctypes.data_as(lib.llama_token_data_p), size=len(ids),
                                         selected=-1, sorted=False)
        lib.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        return np.isfinite(data["logit"])

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self.ptr, token)

    def close(self) -> None:
        if self.ptr:
            self._lib.llama_sampler_free(self.ptr)
            self.ptr = None


@dataclass
class Sampler:
    """One sequence's choice of the next token: greedy or temperature/top_p (seeded), repeat penalty, grammar.

    Under a grammar, as harness.forms.FormConstraint (no_repeat) does, a token that would write a pair of
    ideographs the text already holds is passed over for the next best one the grammar allows (when none of the
    best 64 is fresh, the pair is allowed): a small model in a fixed form otherwise repeats its first line.
    Sampling draws from the 256 most likely (allowed) tokens."""
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    repeat_penalty: float = 1.0
    grammar: Grammar | None = None
    recent: list = field(default_factory=list)
    piece: Any = None                  # token id -> its bytes (the no-repeat rule under a grammar)
    grammar_text: str = ""             # a PoemGrammar: its line length and rhyming lines
    rng: Any = None
    buf: bytes = b""
    chars: list = field(default_factory=list)
    pairs: set = field(default_factory=set)
    line: int = 0                      # the poem's line and the ideographs written on it (the rhyme rule)
    count: int = 0
    used: set = field(default_factory=set)

    def choose(self, logits: np.ndarray, eog: set[int], ignore_eos: bool = False) -> int:
        if self.repeat_penalty != 1.0 and self.recent:
            logits = logits.copy()
            ids = np.unique(np.asarray(self.recent[-PENALTY_LAST_N:]))
            v = logits[ids]
            logits[ids] = np.where(v > 0, v / self.repeat_penalty, v * self.repeat_penalty)
        if ignore_eos and self.grammar is None:       # a grammar ends the text itself
            logits = logits.copy()
            logits[list(eog)] = -np.inf
        if self.temperature > 0:
            token = self._sample(logits)
        elif self.grammar is None:
            token = int(np.argmax(logits))
        else:
            token = self._greedy_grammar(logits)
        self.recent.append(token)
        if self.grammar is not None and token not in eog:
            self.grammar.accept(token)
            self._written(token)
        return token

    def _new_chars(self, token: int) -> tuple[str, bytes]:
        """(the characters this token completes, the bytes of a character it leaves unfinished)."""
        raw = self.buf + (self.piece(token) if self.piece else b"")
        cut = _complete(raw)
        return raw[:cut].decode("utf-8", errors="ignore"), raw[cut:]

    def _walk(self, text: str, pending: bytes = b"", keep: bool = False) -> bool:
        """Go over the characters of `text` from the sequence's state: False if one repeats a pair of ideographs
        or puts a used rhyme character at a rhyme position, or if `pending` (an unfinished character's bytes)
        starts a used rhyme character there (a byte-level dead end). keep: update the state."""
        last = self.chars[-1] if self.chars else None
        line, count, pairs, fresh = self.line, self.count, set(), True
        n = getattr(self.grammar_text, "line_chars", 0)
        rhymes = getattr(self.grammar_text, "rhyme_lines", frozenset())
        for c in text:
            if c in "，。\n":
                if c != "\n" and count:
                    line, count = line + 1, 0
                continue
            if not "\u3400" <= c <= "\u9fff":
                continue
            if last is not None:
                if (last, c) in self.pairs or (last, c) in pairs:
                    fresh = False
                pairs.add((last, c))
            if n and count == n - 1 and (line in rhymes or line == 0):
                if line in rhymes and c in self.used:
                    fresh = False
                if keep:
                    self.used.add(c)
            if keep:
                self.chars.append(c)
            last, count = c, count + 1
        if pending and n and count == n - 1 and line in rhymes and \
                any(u.encode("utf-8").startswith(pending) for u in self.used):
            fresh = False
        if keep:
            self.pairs |= pairs
            self.line, self.count = line, count
        return fresh

    def _fresh(self, token: int) -> bool:
        if self.piece is None:
            return True
        return self._walk(*self._new_chars(token), keep=False)

    def _written(self, token: int) -> None:
        if self.piece is None:
            return
        text, self.buf = self._new_chars(token)
        self._walk(text, keep=True)

    def _greedy_grammar(self, logits: np.ndarray) -> int:
        best = int(np.argmax(logits))
        if self.grammar.allowed(np.array([best], dtype=np.int32), logits)[0] and self._fresh(best):
            return best
        top = np.argpartition(-logits, TOP_CANDIDATES)[:TOP_CANDIDATES]
        top = top[np.argsort(-logits[top], kind="stable")]
        ok = self.grammar.allowed(top.astype(np.int32), logits)
        for t in top[ok]:
            if self._fresh(int(t)):
                return int(t)
        every = np.arange(len(logits), dtype=np.int32)       # the whole vocabulary: every token the grammar allows
        allowed = every[self.grammar.allowed(every, logits)]
        if not len(allowed):
            raise UserError("the poem grammar allows no token here (the model's vocabulary cannot write it)")
        allowed = allowed[np.argsort(-logits[allowed], kind="stable")]
        for t in allowed[:1024]:
            if self._fresh(int(t)):
                return int(t)
        return int(allowed[0])              # every way on repeats: allow it (as FormConstraint does)

    def _sample(self, logits: np.ndarray) -> int:
        if self.rng is None:
            self.rng = np.random.default_rng(self.seed)
        k = max(TOP_CANDIDATES * 4, 256)
        cand = np.argpartition(-logits, k)[:k]
        cand = cand[np.argsort(-logits[cand], kind="stable")]
        if self.grammar is not None:
            ok = self.grammar.allowed(cand.astype(np.int32), logits)
            if not ok.any():
                every = np.arange(len(logits), dtype=np.int32)
                ok_all = self.grammar.allowed(every, logits)
                cand = every[ok_all]
                cand = cand[np.argsort(-logits[cand], kind="stable")][:k]
            else:
                cand = cand[ok]
            fresh = np.array([self._fresh(int(t)) for t in cand[:TOP_CANDIDATES]], dtype=bool)
            if fresh.any():
                cand = np.concatenate([cand[:TOP_CANDIDATES][fresh], cand[TOP_CANDIDATES:]])
        z = logits[cand].astype(np.float64) / self.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        keep = int(np.searchsorted(np.cumsum(p), self.top_p) + 1)
        p = p[:keep] / p[:keep].sum()
        return int(cand[self.rng.choice(keep, p=p)])


def _complete(raw: bytes) -> int:
    """The length of raw's prefix made of whole UTF-8 characters (a split character's lead bytes stay out)."""
    i = j = len(raw)
    while j > 0 and i - j < 3 and raw[j - 1] & 0xC0 == 0x80:
        j -= 1
    if j == 0:
        return i
    lead = raw[j - 1]
    need = 1 if lead < 0x80 else 2 if lead >> 5 == 6 else 3 if lead >> 4 == 14 else 4 if lead >> 3 == 30 else 1
    return i if i - (j - 1) >= need else j - 1


def _context(model, n_ctx: int, n_threads: int, n_seq: int = 1, n_batch: int = 512):
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = n_seq
    params.n_threads = params.n_threads_batch = n_threads
    params.flash_attn_type = 0           # as llama_cpp.Llama sets it: the same numbers as the single stream
    if hasattr(params, "kv_unified"):
        params.kv_unified = False        # one KV stream per sequence: the sequences share no prefix
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} tokens")
    return ctx


class Batch:
    """A llama_batch we fill token by token: (token, position, sequence, wants logits)."""

    def __init__(self, capacity: int):
        import llama_cpp

        self._lib = llama_cpp
        self.capacity = capacity
        self.b = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        i = self.n
        self.b.token[i] = token
        self.b.pos[i] = pos
        self.b.n_seq_id[i] = 1
        self.b.seq_id[i][0] = seq
        self.b.logits[i] = logits
        self.n += 1
        return i

    def decode(self, ctx) -> None:
        self.b.n_tokens = self.n
        rc = self._lib.llama_decode(ctx, self.b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")

    def close(self) -> None:
        self._lib.llama_batch_free(self.b)


# ------------------------------------------------------------------------------------------ the engine

@dataclass
class LlamaCppEngine:
    """One llama_cpp.Llama (the base) and the LoRA adapters loaded on it, by name."""
    llm: Any
    base: str
    base_gguf: Path
    adapters: dict[str, Any] = field(default_factory=dict)     # name -> llama_adapter_lora_p
    active: str | None = None
    last_stats: StreamStats = field(default_factory=StreamStats)
    lock: Any = field(default_factory=threading.Lock, repr=False)
    _formatter: Any = field(default=None, repr=False)
    n_threads: int = 1
    notices: dict[str, str] = field(default_factory=dict)        # adapter -> why it cannot run here

    # ------------------------------------------------------------ adapters
    def add_adapter(self, name: str) -> None:
        """Load an adapter's exported GGUF onto the base (once; exporting it first if needed). A UserError
        names the adapter and why it cannot run on llama.cpp (callers fall back to transformers)."""
        import llama_cpp

        from harness.models import find_adapter

        if name in self.adapters:
            return
        if name in self.notices:
            raise UserError(self.notices[name])
        try:
            info = find_adapter(name)
            if info.kind == "seq_cls":
                raise UserError(f"adapter {name!r} is a classification head: llama.cpp cannot return its class "
                                "probabilities; it runs on transformers")
            if info.base != self.base:
                raise UserError(f"adapter {name!r} was trained on base {info.base!r}, but llama.cpp has "
                                f"{self.base!r} loaded: it runs on transformers")
            try:
                path = exported_gguf(name)
            except UserError as e:
                raise UserError(f"adapter {name!r} cannot be exported to GGUF ({str(e).rstrip('.')}): it runs on "
                                "transformers") from None
            handle = llama_cpp.llama_adapter_lora_init(self.llm.model, str(path).encode("utf-8"))
            if not handle:
                raise UserError(f"llama.cpp could not load the GGUF export of adapter {name!r}: it runs on "
                                f"transformers (export it again with `python -m harness export {name}`)")
        except UserError as e:
            self.notices[name] = str(e)
            raise
        self.adapters[name] = handle

    def _set_adapter(self, ctx, adapter: str | None, scale: float = 1.0) -> None:
        import llama_cpp

        if adapter is None:
            rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            self.add_adapter(adapter)
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapters[adapter])
            scales = (ctypes.c_float * 1)(scale)
            rc = llama_cpp.llama_set_adapters_lora(ctx, handles, 1, scales)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc}) for adapter {adapter!r}")

    def switch_adapter(self, adapter: str | None, scale: float = 1.0) -> None:
        adapter = None if adapter in (None, "", "base") else adapter
        key = None if adapter is None else (adapter, scale)
        if key == self.active:
            return
        self._set_adapter(self.llm.ctx, adapter, scale)
        self.llm.reset()          # the cached keys/values belong to the previous adapter
        self.active = key

    # ------------------------------------------------------------ prompts
    def render(self, messages: list[dict], max_new_tokens: int = 0, system: str | None = None) -> list[int]:
        """Prompt tokens of a conversation in the GGUF's chat template, oldest turns dropped to fit n_ctx."""
        from harness.engines import chat_turns
        turns = chat_turns(messages)
        while True:
            msgs = ([{"role": "system", "content": system}] if system else []) + turns
            text = self._formatter(messages=msgs).prompt
            ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if len(ids) + max_new_tokens <= self.llm.n_ctx() or len(turns) <= 1:
                break
            turns = turns[2:] if len(turns) > 2 else turns[1:]
        if len(ids) + max_new_tokens > self.llm.n_ctx():
            raise UserError(f"the message is too long for {self.base} ({len(ids)} tokens + {max_new_tokens} new > "
                            f"context {self.llm.n_ctx()}): shorten it")
        return ids

    def eog(self) -> set[int]:
        if getattr(self, "_eog_ids", None) is None:
            import llama_cpp
            vocab = self.llm._model.vocab
            self._eog_ids = {t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        return self._eog_ids

    def piece(self, token: int) -> bytes:
        """A token's bytes (cached)."""
        cache = self.__dict__.setdefault("_pieces", {})
        if token not in cache:
            cache[token] = self.llm.detokenize([token])
        return cache[token]

    def _grammar(self, grammar: str | None) -> Grammar | None:
        return Grammar(self.llm._model.vocab, grammar) if grammar else None

    # ------------------------------------------------------------ one stream
    def stream_chat(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 256,
                    temperature: float = 0.0, stop_event: threading.Event | None = None,
                    stats: StreamStats | None = None, system: str | None = None, seed: int = 0,
                    top_p: float = 0.9, ignore_eos: bool = False, repeat_penalty: float = 1.0,
                    grammar: str | None = None, scale: float = 1.0) -> Iterator[str]:
        """Yield the reply's text as it is generated: greedy at temperature 0, else sampled (top_p, seed).
        grammar: GBNF text (poem_grammar()) the reply must follow; it ends when the grammar is complete.
        repeat_penalty (1.0 = none) divides the logits of the last 64 tokens (transformers' repetition_penalty
        looks at the whole sequence, so greedy texts with a penalty may differ between the two engines).
        Setting stop_event (or closing the iterator) stops generation at the next token. `stats` (and
        self.last_stats) get prompt/new token counts, seconds and the first token's time."""
        import llama_cpp

        stop_event = stop_event or threading.Event()
        stats = stats if stats is not None else StreamStats()
        self.last_stats = stats
        _check(max_new_tokens, repeat_penalty)
        with self.lock:
            self.switch_adapter(adapter, scale)
            self.llm.reset()
            ids = self.render(messages, max_new_tokens, system)
            stats.prompt_tokens = len(ids)
            stats.extra.update(engine="llama.cpp", adapter=adapter if adapter not in (None, "", "base") else "base")
            if grammar:
                stats.extra["grammar"] = True
            ctx = self.llm.ctx
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            sampler = Sampler(temperature, top_p if temperature > 0 else 1.0, seed, repeat_penalty,
                              self._grammar(grammar), recent=list(ids), piece=self.piece if grammar else None,
                              grammar_text=grammar or "")
            yield from self._decode(ctx, ids, max_new_tokens, sampler, stats, stop_event, ignore_eos,
                                    self.llm.n_batch, self.llm.n_ctx())

    def _decode(self, ctx, ids: list[int], max_new_tokens: int, sampler: Sampler, stats: StreamStats,
                stop_event: threading.Event, ignore_eos: bool, n_batch: int, n_ctx: int) -> Iterator[str]:
        """One sequence on a context from an empty cache: the prompt in batches of n_batch, then a token per
        llama_decode until an end-of-generation token, max_new_tokens, the context's end or stop_event (checked
        after each token); yields text pieces (a character split over tokens waits for the rest). stats gets the
        counts, seconds and the first token's time; the sampler's grammar is freed at the end."""
        import llama_cpp

        n_vocab = self.llm.n_vocab()
        eog = self.eog()
        batch = Batch(max(n_batch, 1))
        pending, out_ids = b"", []
        t0 = time.perf_counter()
        try:
            pos = 0
            for k in range(0, len(ids), batch.capacity):      # the prompt, in batches of n_batch
                batch.clear()
                chunk = ids[k:k + batch.capacity]
                for j, t in enumerate(chunk):
                    batch.add(t, pos + j, 0, k + j == len(ids) - 1)
                batch.decode(ctx)
                pos += len(chunk)
            while True:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                tok = sampler.choose(logits, eog, ignore_eos)
                if stats.first_token_seconds is None:
                    stats.first_token_seconds = time.perf_counter() - t0
                stats.forward_passes += 1
                if tok in eog:
                    stats.finish_reason = "stop"
                    break
                out_ids.append(tok)
                stats.new_tokens = len(out_ids)
                pending += self.llm.detokenize([tok], prev_tokens=out_ids[:-1])
                try:
                    text, pending = pending.decode("utf-8"), b""
                except UnicodeDecodeError:      # a character split over tokens: wait for the rest
                    text = ""
                if text:
                    yield text
                if stop_event.is_set():
                    stats.finish_reason = "cancelled"
                    break
                if len(out_ids) >= max_new_tokens or pos >= n_ctx:
                    stats.finish_reason = "length"
                    break
                batch.clear()
                batch.add(tok, pos, 0, True)
                batch.decode(ctx)
                pos += 1
        except GeneratorExit:
            stats.finish_reason = stats.finish_reason or "cancelled"
            raise
        finally:
            batch.close()
            if sampler.grammar is not None:
                sampler.grammar.close()
            stats.seconds = time.perf_counter() - t0
            stats.finish_reason = stats.finish_reason or "stop"
        if pending:
            yield pending.decode("utf-8", errors="replace")

    def chat(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 256,
             temperature: float = 0.0, **kw) -> str:
        return "".join(self.stream_chat(messages, adapter, max_new_tokens, temperature, **kw))

    # ------------------------------------------------------------ many sequences at once
    def generate_many(self, conversations: list[list[dict]], adapter: str | None = None, max_new_tokens: int = 256,
                      parallel: int = PARALLEL, temperature: float = 0.0, top_p: float = 0.9,
                      seed: int | list[int] = 0,
                      repeat_penalty: float = 1.0, grammar: str | None = None, system: str | None = None,
                      ignore_eos: bool = False, scale: float = 1.0, progress=None) -> list[dict]:
        """Every conversation's reply, `parallel` sequences per llama_decode (continuous batching: a finished
        sequence leaves its slot to the next conversation at once). One context of parallel x the longest
        (prompt + max_new_tokens), with the adapter set on it. Returns, in order, {text, prompt_tokens,
        new_tokens, finish_reason}; sequence k samples with seed + k, or seed[k] when seed is a list (a caller that
        splits one job into chunks keeps each prompt's seed). progress(done, total) after each reply."""
        import llama_cpp

        _check(max_new_tokens, repeat_penalty)
        if parallel < 1:
            raise UserError(f"parallel must be at least 1, got {parallel}")
        with self.lock:
            prompts = [self.render(c, max_new_tokens, system) for c in conversations]
            if not prompts:
                return []
            seeds = list(seed) if isinstance(seed, list) else [seed + k for k in range(len(prompts))]
            per_seq = -(-(max(len(p) for p in prompts) + max_new_tokens + 1) // 256) * 256   # llama.cpp pads to 256
            n_par = min(parallel, len(prompts))
            ctx = _context(self.llm.model, per_seq * n_par, self.n_threads, n_par, max(512, n_par))
            batch = Batch(max(512, n_par))
            eog = self.eog()
            n_vocab = self.llm.n_vocab()
            mem = llama_cpp.llama_get_memory(ctx)
            results: list[dict | None] = [None] * len(prompts)
            try:
                self._set_adapter(ctx, None if adapter in (None, "", "base") else adapter, scale)
                queue = list(range(len(prompts)))
                slots: list[dict | None] = [None] * n_par
                done = 0
                while True:
                    for s in range(n_par):          # fill free slots
                        if slots[s] is None and queue:
                            k = queue.pop(0)
                            llama_cpp.llama_memory_seq_rm(mem, s, -1, -1)
                            slots[s] = {"k": k, "todo": list(prompts[k]), "pos": 0, "out": [], "row": -1,
                                        "sampler": Sampler(temperature, top_p if temperature > 0 else 1.0, seeds[k],
                                                           repeat_penalty, self._grammar(grammar),
                                                           recent=list(prompts[k]),
                                                           piece=self.piece if grammar else None,
                                                           grammar_text=grammar or "")}
                    live = [s for s in range(n_par) if slots[s] is not None]
                    if not live:
                        break
                    batch.clear()
                    room = batch.capacity
                    for s in live:                  # one token of every generating sequence ...
                        st = slots[s]
                        st["row"] = -1
                        if not st["todo"]:
                            st["row"] = batch.add(st["out"][-1], st["pos"], s, True)
                            st["pos"] += 1
                            room -= 1
                    for s in live:                  # ... and as much of the waiting prompts as fits
                        st = slots[s]
                        if st["todo"] and room > 0:
                            take = st["todo"][:room]
                            st["todo"] = st["todo"][len(take):]
                            for j, t in enumerate(take):
                                last = not st["todo"] and j == len(take) - 1
                                i = batch.add(t, st["pos"], s, last)
                                st["pos"] += 1
                                if last:
                                    st["row"] = i
                            room -= len(take)
                    batch.decode(ctx)
                    for s in live:
                        st = slots[s]
                        if st["row"] < 0:
                            continue
                        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, st["row"]),
                                                       shape=(n_vocab,))
                        tok = st["sampler"].choose(logits, eog, ignore_eos)
                        finish = None
                        if tok in eog:
                            finish = "stop"
                        else:
                            st["out"].append(tok)
                            if len(st["out"]) >= max_new_tokens:
                                finish = "length"
                        if finish:
                            k = st["k"]
                            text = self.llm.detokenize(st["out"]).decode("utf-8", errors="replace")
                            results[k] = {"text": text, "prompt_tokens": len(prompts[k]),
                                          "new_tokens": len(st["out"]), "finish_reason": finish}
                            if st["sampler"].grammar is not None:
                                st["sampler"].grammar.close()
                            slots[s] = None
                            done += 1
                            if progress:
                                progress(done, len(prompts))
            finally:
                for st in slots if 'slots' in locals() else []:
                    if st is not None and st["sampler"].grammar is not None:
                        st["sampler"].grammar.close()
                batch.close()
                llama_cpp.llama_free(ctx)
            return results  # type: ignore[return-value]

    # ------------------------------------------------------------ Compare: two adapters, one base
    def decode_alone(self, ids: list[int], adapter: str | None, max_new_tokens: int, temperature: float = 0.0,
                     top_p: float = 0.9, seed: int = 0, repeat_penalty: float = 1.0, grammar: str | None = None,
                     n_threads: int | None = None, stop_event: threading.Event | None = None,
                     stats: StreamStats | None = None) -> Iterator[str]:
        """One sequence (prompt token ids) on a context of its own, with the adapter set on it, so that two can
        decode at once on one base (the app's Compare: harness/app/compare.py runs one per side in a thread and
        merges them); yields text pieces. stats: filled as stream_chat fills it."""
        import llama_cpp

        _check(max_new_tokens, repeat_penalty)
        stop_event = stop_event or threading.Event()
        st = stats if stats is not None else StreamStats()
        st.prompt_tokens = len(ids)
        st.extra.update(engine="llama.cpp", adapter=adapter if adapter not in (None, "", "base") else "base")
        if grammar:
            st.extra["grammar"] = True
        n_ctx = len(ids) + max_new_tokens + 1
        ctx = _context(self.llm.model, n_ctx, n_threads or self.n_threads, 1, max(len(ids), 8))
        sampler = Sampler(temperature, top_p if temperature > 0 else 1.0, seed, repeat_penalty,
                          self._grammar(grammar), recent=list(ids), piece=self.piece if grammar else None,
                          grammar_text=grammar or "")
        try:
            self._set_adapter(ctx, None if adapter in (None, "", "base") else adapter)
            yield from self._decode(ctx, ids, max_new_tokens, sampler, st, stop_event, False, max(len(ids), 8),
                                    n_ctx)
        finally:
            if sampler.grammar is not None:          # _decode frees it too; not if _set_adapter failed first
                sampler.grammar.close()
            llama_cpp.llama_free(ctx)

    def close(self) -> None:
        import llama_cpp

        with self.lock:
            if self.active is not None:
                llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
            for handle in self.adapters.values():
                llama_cpp.llama_adapter_lora_free(handle)
            self.adapters.clear()
            self.active = None
            self.llm.close()


def _check(max_new_tokens: int, repeat_penalty: float) -> None:
    if not 1 <= max_new_tokens <= 8192:
        raise UserError(f"max_new_tokens must be between 1 and 8192, got {max_new_tokens}")
    if not 1.0 <= repeat_penalty <= 2.0:
        raise UserError(f"repeat_penalty must be between 1 and 2 (1 = none), got {repeat_penalty}")


def load_engine(base: str | None = None, adapters: list[str] | None = None, n_ctx: int | None = None,
                n_threads: int | None = None) -> LlamaCppEngine:
    """Load the base's GGUF into llama.cpp (once) and the named adapters' GGUF exports onto it. A GGUF llama.cpp
    cannot open: one UserError sentence naming the transformers fallback."""
    ok, why = is_available()
    if not ok:
        raise UserError(why)
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from harness.models import default_base, resolve_base

    spec = resolve_base(base or default_base())
    path = base_gguf(spec.name if spec.source != "gguf" else spec.location)
    threads = n_threads or os.cpu_count() or 1
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError("not a GGUF file")
        llm = Llama(str(path), n_ctx=n_ctx or spec.context_length, n_threads=threads, n_threads_batch=threads,
                    verbose=False)
    except (ValueError, OSError, RuntimeError) as e:
        raise UserError(f"llama.cpp cannot open {path.name} ({str(e).splitlines()[0][:120]}): use the transformers "
                        "engine (--engine transformers), which loads the base's safetensors") from None
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        llm.close()
        raise UserError(f"{path.name} has no chat template (tokenizer.chat_template): the llama.cpp chat path "
                        "needs one; use the transformers engine (--engine transformers) for this base")
    vocab = llm._model
    eos = vocab.token_get_text(llm.token_eos()) if hasattr(vocab, "token_get_text") else ""
    bos = vocab.token_get_text(llm.token_bos()) if hasattr(vocab, "token_get_text") else ""
    engine = LlamaCppEngine(llm, spec.name, path, _formatter=Jinja2ChatFormatter(template, eos, bos),
                            n_threads=threads)
    for name in adapters or []:
        engine.add_adapter(name)
    return engine
