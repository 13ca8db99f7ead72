"""llama.cpp in-process: one base GGUF loaded once, exported GGUF LoRA adapters hot-swapped per request.

    from harness.llamacpp import is_available, load_engine
    ok, why = is_available()                       # (False, "... pip install ...") without llama-cpp-python
    eng = load_engine(adapters=["smollm2-135m-alpaca"])   # exports the adapter's GGUF once if needed
    for chunk in eng.stream_chat([{"role": "user", "content": "Name three colors."}], "smollm2-135m-alpaca"):
        print(chunk, end="")
    print(eng.last_stats.tokens_per_s)

    python -c "from harness.llamacpp import bench_llamacpp; bench_llamacpp()"   # tokens/s vs transformers

The base is never reloaded: an adapter is a llama_adapter_lora_init() handle on the loaded model, switched on
the context with llama_set_adapters_lora() (no adapters = the base). A switch drops the KV cache (its keys
were computed with the other adapter). Every request evaluates its whole prompt from an empty cache: with
llama-cpp-python's prefix reuse, the same greedy request gave another text the second time (measured: a fresh
context agrees with transformers, the reused one did not); a 135M model prefills a chat prompt in milliseconds.
Prompts are rendered with the GGUF's own chat template, as llama.cpp's server renders them, and tokenized
without an added BOS (the template carries its own special tokens), as the transformers path does.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.generation import StreamStats

INSTALL = 'pip install "llama-cpp-python[server]"'
INSTALL_HINT = (f"{INSTALL} (it builds llama.cpp from source: about 10 minutes on 2 cores; add "
                'CMAKE_ARGS="-DGGML_NATIVE=OFF" before it for a build that runs on any x86-64 CPU)')


def is_available() -> tuple[bool, str]:
    """(True, version) if llama-cpp-python with the LoRA adapter API is importable; else (False, one sentence)."""
    try:
        import llama_cpp
    except ImportError:
        return False, f"the llama.cpp engine needs llama-cpp-python, which is not installed: {INSTALL_HINT}"
    except Exception as e:  # a broken build (missing shared library)
        return False, f"llama-cpp-python is installed but does not load ({str(e).splitlines()[0][:200]}): reinstall it with {INSTALL_HINT}"
    missing = [n for n in ("llama_adapter_lora_init", "llama_set_adapters_lora") if not hasattr(llama_cpp, n)]
    if missing:
        return False, (f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} lacks {', '.join(missing)} "
                       f"(the LoRA adapter API): upgrade it with pip install -U \"llama-cpp-python[server]\"")
    return True, f"llama-cpp-python {llama_cpp.__version__}"


def exported_gguf(name: str) -> Path:
    """The adapter's GGUF export (harness.export), written again when the peft weights changed."""
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

    def add_adapter(self, name: str) -> None:
        """Load an adapter's exported GGUF onto the base (once; exporting it first if needed)."""
        import llama_cpp

        from harness.models import find_adapter

        if name in self.adapters:
            return
        info = find_adapter(name)
        if info.kind == "seq_cls":
            raise UserError(f"adapter {name!r} is a classification head: llama.cpp cannot return its class "
                            "probabilities; classify with the transformers engine")
        if info.base != self.base:
            raise UserError(f"adapter {name!r} was trained on base {info.base!r}, but llama.cpp has "
                            f"{self.base!r} loaded: start it with that base")
        path = exported_gguf(name)
        handle = llama_cpp.llama_adapter_lora_init(self.llm.model, str(path).encode("utf-8"))
        if not handle:
            raise UserError(f"llama.cpp could not load the LoRA adapter {path}: export it again with "
                            f"`python -m harness export {name}`")
        self.adapters[name] = handle

    def _switch(self, adapter: str | None) -> None:
        import ctypes

        import llama_cpp

        adapter = None if adapter in (None, "", "base") else adapter
        if adapter is not None:
            self.add_adapter(adapter)
        if adapter == self.active:
            return
        if adapter is None:
            rc = llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapters[adapter])
            scales = (ctypes.c_float * 1)(1.0)
            rc = llama_cpp.llama_set_adapters_lora(self.llm.ctx, handles, 1, scales)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc}) for adapter {adapter!r}")
        self.llm.reset()          # the cached keys/values belong to the previous adapter
        self.active = adapter

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

    def stream_chat(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 256,
                    temperature: float = 0.0, stop_event: threading.Event | None = None,
                    stats: StreamStats | None = None, system: str | None = None, seed: int = 0,
                    top_p: float = 0.9, ignore_eos: bool = False, repeat_penalty: float = 1.0) -> Iterator[str]:
        """Yield the reply's text as it is generated: greedy at temperature 0, else sampled (top_p, seed).
        repeat_penalty (1.0 = none) divides the logits of recent tokens as transformers' repetition_penalty
        does, but llama.cpp applies it to the last 64 tokens of the context (Llama's last_n_tokens_size), not to
        the whole sequence, so greedy texts with a penalty may differ between the two engines.
        Setting stop_event (or closing the iterator) stops generation at the next token. `stats` (and
        self.last_stats) get prompt/new token counts, seconds and the first token's time."""
        import llama_cpp

        stop_event = stop_event or threading.Event()
        stats = stats if stats is not None else StreamStats()
        self.last_stats = stats
        if not 1 <= max_new_tokens <= 8192:
            raise UserError(f"max_new_tokens must be between 1 and 8192, got {max_new_tokens}")
        if not 1.0 <= repeat_penalty <= 2.0:
            raise UserError(f"repeat_penalty must be between 1 and 2 (1 = none), got {repeat_penalty}")
        with self.lock:
            self._switch(adapter)
            self.llm.reset()      # no prefix reuse: a reused cache changed greedy answers (module docstring)
            ids = self.render(messages, max_new_tokens, system)
            stats.prompt_tokens = len(ids)
            stats.extra.update(engine="llama.cpp", adapter=self.active or "base")
            vocab = self.llm._model.vocab
            if temperature > 0:
                self.llm.set_seed(seed)
            pending, out_ids = b"", []
            t0 = time.perf_counter()
            gen = self.llm.generate(ids, temp=max(temperature, 0.0), top_p=top_p if temperature > 0 else 1.0,
                                    top_k=0, min_p=0.0, repeat_penalty=float(repeat_penalty))
            try:
                for tok in gen:
                    if stats.first_token_seconds is None:
                        stats.first_token_seconds = time.perf_counter() - t0
                    stats.forward_passes += 1
                    if llama_cpp.llama_vocab_is_eog(vocab, tok) and not ignore_eos:
                        stats.finish_reason = "stop"
                        break
                    out_ids.append(tok)
                    stats.new_tokens = len(out_ids)
                    pending += self.llm.detokenize([tok], prev_tokens=out_ids[:-1])
                    try:
                        chunk, pending = pending.decode("utf-8"), b""
                    except UnicodeDecodeError:      # a character split over tokens: wait for the rest
                        chunk = ""
                    if chunk:
                        yield chunk
                    if stop_event.is_set():
                        stats.finish_reason = "cancelled"
                        break
                    if len(out_ids) >= max_new_tokens:
                        stats.finish_reason = "length"
                        break
            except GeneratorExit:
                stats.finish_reason = stats.finish_reason or "cancelled"
                raise
            finally:
                gen.close()
                stats.seconds = time.perf_counter() - t0
                stats.finish_reason = stats.finish_reason or "stop"
            if pending:
                yield pending.decode("utf-8", errors="replace")

    def chat(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 256,
             temperature: float = 0.0) -> str:
        return "".join(self.stream_chat(messages, adapter, max_new_tokens, temperature))

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


def load_engine(base: str | None = None, adapters: list[str] | None = None, n_ctx: int | None = None,
                n_threads: int | None = None) -> LlamaCppEngine:
    """Load the base's GGUF into llama.cpp (once) and the named adapters' GGUF exports onto it."""
    ok, why = is_available()
    if not ok:
        raise UserError(why)
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from harness.export import base_gguf_path
    from harness.models import AdapterInfo, default_base, resolve_base

    spec = resolve_base(base or default_base())
    _, path = base_gguf_path(AdapterInfo("(base)", Path("."), spec.name, "chat", "causal"))
    threads = n_threads or os.cpu_count() or 1
    llm = Llama(str(path), n_ctx=n_ctx or spec.context_length, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        llm.close()
        raise UserError(f"{path.name} has no chat template (tokenizer.chat_template): the llama.cpp chat path "
                        "needs one; use the transformers engine for this base")
    vocab = llm._model
    eos = vocab.token_get_text(llm.token_eos()) if hasattr(vocab, "token_get_text") else ""
    bos = vocab.token_get_text(llm.token_bos()) if hasattr(vocab, "token_get_text") else ""
    engine = LlamaCppEngine(llm, spec.name, path, _formatter=Jinja2ChatFormatter(template, eos, bos))
    for name in adapters or []:
        engine.add_adapter(name)
    return engine


# ---------------------------------------------------------------- benchmark

BENCH_MESSAGES = [{"role": "user", "content": "Explain in a few sentences why the sky is blue."}]


def bench_llamacpp(max_new_tokens: int = 64, adapter: str = "smollm2-135m-alpaca", repeats: int = 2) -> float:
    """Tokens/s of one chat stream, same prompt and adapter, fixed length: llama.cpp in-process vs
    harness.generation.stream (transformers). Prints both and their ratio (one run); returns the ratio."""
    from harness.generation import GenerationConfig, stream
    from harness.models import load_model

    engine = load_engine(adapters=[adapter])
    lm = load_model(adapters=[adapter])
    prompt = lm.render_chat(BENCH_MESSAGES, max_new_tokens=max_new_tokens)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True)
    best: dict[str, StreamStats] = {}
    for _ in range(repeats + 1):           # the first round warms both up and is not counted
        for name in ("transformers", "llama.cpp"):
            st = StreamStats()
            if name == "transformers":
                for _chunk in stream(lm, prompt, cfg, adapter=adapter, stats=st):
                    pass
            else:
                engine._switch(None)       # a fresh prompt each time: no KV prefix reuse in the timing
                for _chunk in engine.stream_chat(BENCH_MESSAGES, adapter, max_new_tokens, stats=st,
                                                 ignore_eos=True):
                    pass
            if _ and (name not in best or st.tokens_per_s > best[name].tokens_per_s):
                best[name] = st
    ratio = best["llama.cpp"].tokens_per_s / best["transformers"].tokens_per_s
    for name, st in best.items():
        print(f"{name:>12}: {st.tokens_per_s:6.1f} tokens/s ({st.new_tokens} tokens in {st.seconds:.2f} s, "
              f"first token {st.first_token_seconds or 0:.3f} s)")
    print(f"llama.cpp / transformers, one chat stream with adapter {adapter}: {ratio:.1f}x "
          f"(best of {repeats}, {os.cpu_count()} threads each)")
    engine.close()
    return ratio
