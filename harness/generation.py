"""Generation on a LoadedModel: batched, and streaming with a real stop. (Classification: harness.classify.)

    from harness.models import load_model
    from harness.generation import GenerationConfig, generate_batch, stream
    lm = load_model()                                   # the embedded default
    outs = generate_batch(lm, [lm.render_instruction("Name three colors.")], GenerationConfig(max_new_tokens=48))
    for chunk in stream(lm, lm.render_chat([{"role": "user", "content": "Hi"}]), GenerationConfig()):
        print(chunk, end="")

`adapter` arguments: an adapter name, None for the base alone, or left out for the model's active one
(LoadedModel.set_active). All calls on one LoadedModel are serialised by its lock: adapters are global state
of the peft model, so two requests never see each other's adapter.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from harness.errors import UserError
from harness.models import LoadedModel

@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: greedy by default; sampling uses `seed` so a run can be repeated."""
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    stop: tuple[str, ...] = ()
    batch_size: int = 16
    repetition_penalty: float = 1.0
    ignore_eos: bool = False          # always generate max_new_tokens (fixed-length throughput benchmarks)
    form: str = ""                    # a classical Chinese form (五言绝句 ...): constrained decoding, harness/forms.py
    rhyme: bool = False               # with form: the even lines rhyme (平水韵, harness/rules.py)
    rhyme_group: str = ""             # with form: rhyme in this 平水韵 group (e.g. 东); implies rhyme
    tone: bool = False                # with form: keep the 平仄 template (一三五不论)

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= 8192:
            raise UserError(f"max_new_tokens must be between 1 and 8192, got {self.max_new_tokens}")
        if self.do_sample and not (0 < self.temperature <= 5):
            raise UserError(f"temperature must be in (0, 5] when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {self.batch_size}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        if self.form:
            from harness.metrics import FIXED_FORMS
            if self.form not in FIXED_FORMS:
                raise UserError(f"form-constrained decoding supports {', '.join(FIXED_FORMS)}; got {self.form!r}")
        elif self.rhyme or self.rhyme_group or self.tone:
            raise UserError("--rhyme, --rhyme-group and --tone constrain a classical form: add --form, e.g. "
                            "--form 五言绝句")
        if self.rhyme_group:
            from harness.rules import resolve_group
            resolve_group(self.rhyme_group)         # a UserError naming the nearest groups

    def as_key(self) -> dict:
        """What changes the output (the generation cache key); batch_size does not for greedy decoding."""
        d = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "stop": list(self.stop),
             "repetition_penalty": self.repetition_penalty}
        if self.ignore_eos:
            d["ignore_eos"] = True
        if self.form:
            from harness.forms import charset
            d.update(form=self.form, charset=charset()[0])
            d.update({k: v for k, v in (("rhyme", self.rhyme), ("rhyme_group", self.rhyme_group),
                                        ("tone", self.tone)) if v})      # only when set: old keys stay valid
        if self.do_sample:
            d.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed, batch_size=self.batch_size)
        return d


@dataclass
class Generation:
    prompt: str
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float                 # this item's share of its batch's wall time
    finish_reason: str = "length"  # stop (eos or a stop string) | length | cancelled


def _generate_kwargs(lm: LoadedModel, cfg: GenerationConfig) -> dict:
    kw = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, use_cache=True,
              pad_token_id=lm.tokenizer.pad_token_id, repetition_penalty=cfg.repetition_penalty)
    if cfg.ignore_eos:
        kw["min_new_tokens"] = cfg.max_new_tokens
    if cfg.form:
        from transformers import LogitsProcessorList

        from harness.forms import FormConstraint
        kw["logits_processor"] = LogitsProcessorList([FormConstraint(lm.tokenizer, cfg.form, min(eos_ids(lm)),
                                                                     **rules_kw(cfg))])
    if cfg.do_sample:
        kw.update(temperature=cfg.temperature, top_p=cfg.top_p)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    return kw


def rules_kw(cfg: GenerationConfig) -> dict:
    """FormConstraint's rhyme/tone arguments from the config (none when unset)."""
    kw: dict = {}
    if cfg.rhyme or cfg.rhyme_group:
        kw.update(rhyme=True, rhyme_group=cfg.rhyme_group or None)
    if cfg.tone:
        kw["tone"] = True
    return kw


def _stops(lm: LoadedModel, cfg: GenerationConfig) -> tuple[str, ...]:
    return tuple(dict.fromkeys(cfg.stop + lm.stop_strings))


def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def eos_ids(lm: LoadedModel) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if lm.tokenizer.eos_token_id is not None:
        ids.add(lm.tokenizer.eos_token_id)
    return ids


def _check_fits(lm: LoadedModel, lengths: list[int], cfg: GenerationConfig) -> None:
    for i, n in enumerate(lengths):
        if n + cfg.max_new_tokens > lm.context_length:
            raise UserError(f"prompt {i + 1} has {n} tokens; with max_new_tokens={cfg.max_new_tokens} it exceeds "
                            f"the context of {lm.name} ({lm.context_length}): shorten it or lower --max-new-tokens")


def generate_batch(lm: LoadedModel, prompts: list[str], cfg: GenerationConfig = GenerationConfig(),
                   adapter: str | None = ..., progress: bool = False,
                   on_done: Callable[[int, Generation], None] | None = None) -> list[Generation]:
    """Generate for many rendered prompts, `cfg.batch_size` rows at a time.

    Greedy natural-length decoding is continuously batched: a row that reaches its EOS (or a stop string, or
    max_new_tokens) leaves the batch at once and the next waiting prompt takes its place (its own prefill, its
    KV cache merged into the batch's). Sampling, ignore_eos and models whose cache is not a plain per-layer KV
    (sliding-window layers) use static batches of similar length (left padding). Either way greedy batched
    output equals one-at-a-time output token for token. `on_done(index, generation)` runs in the calling
    thread as each prompt finishes (store it there: an interrupted run loses only the rows in flight)."""
    import torch

    if not prompts:
        return []
    tok = lm.tokenizer
    lengths = [len(ids) for ids in tok(list(prompts), add_special_tokens=False)["input_ids"]]
    _check_fits(lm, lengths, cfg)
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    out: list[Generation | None] = [None] * len(prompts)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(prompts), desc="generate", unit="item")

    def done(i: int, g: Generation) -> None:
        out[i] = g
        if on_done:
            on_done(i, g)
        if bar:
            bar.update(1)

    try:
        with lm.lock, torch.inference_mode(), lm.using(adapter) as model:
            todo = order
            if continuous_ok(lm, model, cfg) and len(prompts) > 1:
                todo = _continuous(lm, model, prompts, order, cfg, done)     # [] unless the cache is not plain
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start:start + cfg.batch_size]
                for i, g in zip(batch, run_batch(lm, model, [prompts[i] for i in batch], cfg)):
                    done(i, g)
    finally:
        if bar:
            bar.close()
    return out  # type: ignore[return-value]


def _finish(tok, prompt: str, new: list[int], prompt_tokens: int, seconds: float, stops: tuple[str, ...],
            eos: set[int]) -> Generation:
    """The Generation of one row: new tokens cut at the first EOS, text cut at the first stop string."""
    ended = next((k for k, t in enumerate(new) if t in eos), None)
    if ended is not None:
        new = new[:ended]
    text, stopped = _cut(tok.decode(new, skip_special_tokens=True), stops)
    reason = "stop" if ended is not None or stopped else "length"
    return Generation(prompt, text, prompt_tokens, len(new), seconds, reason)


def run_batch(lm: LoadedModel, model, prompts: list[str], cfg: GenerationConfig, **extra) -> list[Generation]:
    """One static batch through transformers' generate(): left padding; finished rows idle until the last ends."""
    import torch

    tok = lm.tokenizer
    stops, eos = _stops(lm, cfg), eos_ids(lm)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
              padding_side="left").to(lm.device)
    if cfg.do_sample:
        torch.manual_seed(cfg.seed)
    kw = _generate_kwargs(lm, cfg)
    if stops:
        kw.update(stop_strings=list(stops), tokenizer=tok)
    t0 = time.perf_counter()
    ids = model.generate(**enc, **kw, **extra)
    seconds = (time.perf_counter() - t0) / len(prompts)
    width = enc["input_ids"].shape[1]
    return [_finish(tok, prompt, ids[row, width:].tolist(), int(enc["attention_mask"][row].sum()), seconds,
                    stops, eos) for row, prompt in enumerate(prompts)]


# ---------------------------------------------------------------- continuous batching

# generation_config fields that do not change greedy decoding here (anything else, e.g. no_repeat_ngram_size or
# suppress_tokens, adds a logits processor the continuous loop does not replicate: static batches then)
_PLAIN_GENERATION_FIELDS = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "do_sample",
                            "temperature", "top_p", "top_k", "min_p", "typical_p", "max_length", "max_new_tokens",
                            "use_cache", "transformers_version", "_from_model_config", "cache_implementation",
                            "num_beams", "num_return_sequences", "repetition_penalty", "output_attentions",
                            "output_hidden_states", "output_scores", "return_dict_in_generate", "trust_remote_code"}


def continuous_ok(lm: LoadedModel, model, cfg: GenerationConfig) -> bool:
    """Whether generate_batch continuously batches `cfg` on this model: greedy, natural length, batch > 1, and
    a generation_config that adds no logits processor beyond repetition_penalty and the form constraint."""
    if cfg.do_sample or cfg.ignore_eos or cfg.batch_size < 2:
        return False
    gc = getattr(model, "generation_config", None) or lm.model.generation_config
    extra = set(gc.to_diff_dict()) - _PLAIN_GENERATION_FIELDS
    return not extra and (getattr(gc, "num_beams", 1) or 1) == 1


@dataclass
class _Row:
    index: int
    ids: list[int]                  # prompt + tokens chosen so far (the last one is not in the KV cache yet)
    prompt_tokens: int
    processors: list
    seconds: float = 0.0
    dead: bool = False              # finished, still in the batch until the next compaction

    @property
    def new(self) -> list[int]:
        return self.ids[self.prompt_tokens:]


def _continuous(lm: LoadedModel, model, prompts: list[str], order: list[int], cfg: GenerationConfig,
                done: Callable[[int, Generation], None]) -> list[int]:
    """Continuously batched greedy decoding: at most cfg.batch_size rows; a finished row is replaced by the next
    waiting prompt. The newcomers of one refill are prefilled together (left padding, as generate() does);
    every row keeps its own logits processors (repetition penalty, form constraint), stop criteria on its own
    ids and its own positions; in the batch its KV is left-padded and masked. Returns the prompts left for static batches (all of them
    when the model's cache is not one plain KV tensor per layer, e.g. sliding-window layers)."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache_kw = _cache_kw(model)
    tok, dev = lm.tokenizer, lm.device
    stops, eos = _stops(lm, cfg), eos_ids(lm)
    stop_check = None
    if stops:
        from transformers.generation.stopping_criteria import StopStringCriteria
        stop_check = StopStringCriteria(tok, list(stops))   # transformers' own stop-string semantics
    waiting = list(order)
    rows: list[_Row] = []
    cache = None
    mask = None                      # [rows, width] 1 where a cached position is real, 0 where it is padding

    def processors() -> list:
        procs = []
        if cfg.repetition_penalty != 1.0:
            from transformers import RepetitionPenaltyLogitsProcessor
            procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
        if cfg.form:
            from harness.forms import FormConstraint
            procs.append(FormConstraint(tok, cfg.form, min(eos), **rules_kw(cfg)))
        return procs

    def choose(row: _Row, logits, token: int | None = None) -> bool:
        """Append the row's next token (`token`: already chosen, no processors); True when the row is finished."""
        if token is None:
            scores = logits.float()
            ids = torch.tensor([row.ids], device=dev)
            for p in row.processors:
                scores = p(ids, scores)
            token = int(scores.argmax(-1))
        row.ids.append(token)
        if token in eos or len(row.new) >= cfg.max_new_tokens:
            return True
        return bool(stop_check is not None and stop_check(torch.tensor([row.ids], device=dev), None).any())

    def finish(row: _Row) -> None:
        done(row.index, _finish(tok, prompts[row.index], row.new, row.prompt_tokens, row.seconds, stops, eos))

    while waiting or rows:
        while waiting and len(rows) < cfg.batch_size:            # refill: the newcomers prefilled together
            group = waiting[:cfg.batch_size - len(rows)]
            t0 = time.perf_counter()
            enc = tok([prompts[i] for i in group], return_tensors="pt", padding=True, add_special_tokens=False,
                      padding_side="left").to(dev)
            own_mask = enc["attention_mask"]
            positions = own_mask.long().cumsum(-1) - 1             # as generate() numbers left-padded rows
            positions.masked_fill_(own_mask == 0, 1)
            own = DynamicCache(config=model.config)
            res = model(input_ids=enc["input_ids"], attention_mask=own_mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1, **{cache_kw: own})
            if not all(type(layer) is DynamicLayer for layer in own.layers):
                if cache is None:
                    return waiting          # not a plain KV per layer: static batches for everything
                raise RuntimeError("cache layout changed during continuous batching")
            del waiting[:len(group)]
            share = (time.perf_counter() - t0) / len(group)
            new_rows, keep = [], []
            for k, i in enumerate(group):
                n = int(own_mask[k].sum())
                row = _Row(i, enc["input_ids"][k, -n:].tolist(), n, processors(), share)
                if choose(row, res.logits[k:k + 1, -1, :]):
                    finish(row)
                else:
                    new_rows.append(row)
                    keep.append(k)
            if not keep:
                continue
            own, own_mask = _select(own, own_mask, keep, dev)
            cache, mask = (own, own_mask) if cache is None else _merge(cache, mask, own, own_mask)
            rows += new_rows
        if not rows:
            break
        t0 = time.perf_counter()
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long, device=dev)], 1)
        res = model(input_ids=torch.tensor([[r.ids[-1]] for r in rows], device=dev), attention_mask=mask,
                    position_ids=torch.tensor([[len(r.ids) - 1] for r in rows], device=dev),
                    use_cache=True, logits_to_keep=1, **{cache_kw: cache})   # updates `cache` in place
        logits = res.logits[:, -1, :]
        plain = None if rows[0].processors else logits.float().argmax(-1).tolist()   # no processors: one argmax
        live = [b for b, row in enumerate(rows) if not row.dead]
        share = (time.perf_counter() - t0) / len(live)
        for b in live:
            row = rows[b]
            row.seconds += share
            if choose(row, logits[b:b + 1], None if plain is None else plain[b]):
                row.dead = True
                finish(row)
        # a finished row leaves the batch when a waiting prompt can take its place, or when half the batch is
        # finished; until then it rides along (its token is ignored), which costs less than compacting the cache
        dead = sum(row.dead for row in rows)
        if dead and (waiting or 2 * dead >= len(rows)):
            keep = [b for b, row in enumerate(rows) if not row.dead]
            rows = [rows[b] for b in keep]
            if not rows:
                cache, mask = None, None
                continue
            cache, mask = _select(cache, mask, keep, dev)
    return []


def _cache_kw(model) -> str:
    """forward()'s name for the KV cache: transformers 5.2x renamed `past_key_values` to `cache`."""
    import inspect
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _select(cache, mask, keep: list[int], dev):
    """Keep only the rows `keep` of a KV cache and its mask, without the columns that are padding in all."""
    import torch
    if len(keep) < mask.shape[0]:
        index = torch.tensor(keep, device=dev)
        mask = mask.index_select(0, index)
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
    lead = int((mask.sum(0) == 0).long().cumprod(0).sum())
    if lead:
        mask = mask[:, lead:]
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
    return cache, mask


def _merge(cache, mask, own, own_mask):
    """The rows of `own` appended to `cache`, both right-aligned (left padding) to the wider of the two."""
    import torch
    width = max(mask.shape[1], own_mask.shape[1])
    for layer, new in zip(cache.layers, own.layers):
        w, n = layer.keys.shape[-2], new.keys.shape[-2]
        layer.keys = torch.cat([_pad_left(layer.keys, width - w), _pad_left(new.keys, width - n)], 0)
        layer.values = torch.cat([_pad_left(layer.values, width - w), _pad_left(new.values, width - n)], 0)
    mask = torch.cat([_pad_left(mask, width - mask.shape[1]), _pad_left(own_mask, width - own_mask.shape[1])], 0)
    return cache, mask


def _pad_left(t, n: int):
    """`t` with n zero columns before its sequence axis (-2 for a KV tensor [b, heads, seq, dim], -1 for a mask)."""
    import torch
    if n <= 0:
        return t
    axis = -1 if t.dim() == 2 else -2
    shape = list(t.shape)
    shape[axis] = n
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], axis)


def generate_pair(lm: LoadedModel, prompt: str, adapter: str,
                  cfg: GenerationConfig = GenerationConfig()) -> tuple[Generation, Generation]:
    """The base and an adapter on one prompt, in ONE batch (peft's mixed-adapter `adapter_names`)."""
    import torch

    _check_fits(lm, [lm.count_tokens(prompt)], cfg)
    with lm.lock, torch.inference_mode():
        info = lm.attach(adapter)
        if info.kind != "causal":
            raise UserError(f"adapter {adapter!r} is a classifier; compare generation needs a chat or poem adapter")
        base, tuned = run_batch(lm, lm.model, [prompt, prompt], cfg, adapter_names=["__base__", adapter])
    return base, tuned


@dataclass
class StreamStats:
    """Filled in by stream() as it runs: for the app's transparency panel and the TTFT benchmark."""
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    first_token_seconds: float | None = None
    forward_passes: int = 0
    finish_reason: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def stream(lm: LoadedModel, prompt: str, cfg: GenerationConfig = GenerationConfig(), adapter: str | None = ...,
           stop_event: threading.Event | None = None, stats: StreamStats | None = None) -> Iterator[str]:
    """Yield text chunks as they are generated. Setting `stop_event` (or closing this iterator) halts the
    model's generate() itself at its next step, not just the display."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    stop_event = stop_event or threading.Event()
    stats = stats if stats is not None else StreamStats()
    tok = lm.tokenizer
    enc = tok([prompt], return_tensors="pt", add_special_tokens=False).to(lm.device)
    stats.prompt_tokens = enc["input_ids"].shape[1]
    _check_fits(lm, [stats.prompt_tokens], cfg)
    stops = _stops(lm, cfg)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=0.25)
    t0 = time.perf_counter()

    class _Stop(StoppingCriteria):  # checked after every forward pass
        def __call__(self, input_ids, scores, **kwargs):
            stats.forward_passes += 1
            if stats.first_token_seconds is None:
                stats.first_token_seconds = time.perf_counter() - t0
            stats.new_tokens = input_ids.shape[1] - stats.prompt_tokens
            return torch.full((input_ids.shape[0],), stop_event.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    failure: list[BaseException] = []

    def run():
        try:
            with torch.inference_mode(), lm.using(adapter) as model:
                if cfg.do_sample:
                    torch.manual_seed(cfg.seed)
                model.generate(**enc, **_generate_kwargs(lm, cfg), streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([_Stop()]))
        except BaseException as e:  # surfaced to the consumer below
            failure.append(e)
            streamer.end()

    text = ""
    with lm.lock:
        worker = threading.Thread(target=run, daemon=True, name="ftbench-stream")
        worker.start()
        try:
            while True:
                try:
                    chunk = next(streamer)
                except StopIteration:
                    break
                except Exception:  # queue.Empty: nothing new within the timeout
                    if not worker.is_alive() and streamer.text_queue.empty():
                        break
                    if stop_event.is_set():
                        stats.finish_reason = "cancelled"
                        break
                    continue
                text += chunk
                cut, stopped = _cut(text, stops)
                if stopped:
                    stop_event.set()
                    emit = cut[len(text) - len(chunk):] if len(cut) > len(text) - len(chunk) else ""
                    if emit:
                        yield emit
                    stats.finish_reason = "stop"
                    break
                if stop_event.is_set():
                    stats.finish_reason = "cancelled"
                    break
                yield chunk
        except GeneratorExit:  # the consumer closed the stream: a cancellation
            stats.finish_reason = stats.finish_reason or "cancelled"
            raise
        finally:
            stop_event.set()
            worker.join()
            stats.seconds = time.perf_counter() - t0
            if not stats.finish_reason:
                stats.finish_reason = "length" if stats.new_tokens >= cfg.max_new_tokens else "stop"
    if failure and not isinstance(failure[0], (KeyboardInterrupt, GeneratorExit)):
        raise failure[0]
