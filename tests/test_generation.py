"""Batched, streaming and stoppable generation on tiny models."""
from __future__ import annotations

import threading

import pytest
from tiny import build_adapter

from harness.errors import UserError
from harness.generation import GenerationConfig, StreamStats, generate_batch, stream
from harness.models import load_model

PROMPTS = ["Hello", "What is the capital of France? Tell me in one word please.", "写一首五言绝句，题目：春夜",
           "Rewrite the sentence in passive voice. The cat chased the mouse."]


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_batched_greedy_equals_one_at_a_time(which, request):
    lm = load_model(str(request.getfixturevalue(which)))
    prompts = [lm.render_instruction(p) for p in PROMPTS]
    cfg = GenerationConfig(max_new_tokens=16, batch_size=4)
    batched = generate_batch(lm, prompts, cfg)
    single = [generate_batch(lm, [p], cfg)[0] for p in prompts]
    lengths = {g.prompt_tokens for g in batched}
    assert len(lengths) > 1, "prompts of different lengths exercise left padding"
    for b, s in zip(batched, single):
        assert b.text == s.text and b.new_tokens == s.new_tokens
        assert b.prompt_tokens == s.prompt_tokens
    assert [g.prompt for g in batched] == prompts        # order kept although batches are length-sorted


def test_sampling_is_repeatable_with_a_seed(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    cfg = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.0, seed=7)
    a = generate_batch(lm, PROMPTS, cfg)
    b = generate_batch(lm, PROMPTS, cfg)
    c = generate_batch(lm, PROMPTS, GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.0, seed=8))
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.text for g in a] != [g.text for g in c]


def test_stop_strings_cut_the_text(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    free = generate_batch(lm, [PROMPTS[0]], GenerationConfig(max_new_tokens=24))[0]
    stop = free.text[5:8]
    assert stop and stop in free.text
    cut = generate_batch(lm, [PROMPTS[0]], GenerationConfig(max_new_tokens=24, stop=(stop,)))[0]
    assert stop not in cut.text and free.text.startswith(cut.text) and cut.finish_reason == "stop"


def test_empty_prompt_list_gives_empty_result(tiny_llama_dir):
    assert generate_batch(load_model(str(tiny_llama_dir)), [], GenerationConfig()) == []


def test_prompt_too_long_is_a_clear_error(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    with pytest.raises(UserError) as e:
        generate_batch(lm, ["Hello " * 600], GenerationConfig(max_new_tokens=8))
    assert "prompt 1" in str(e.value) and "context" in str(e.value)


def test_stream_matches_batch_and_reports_stats(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    cfg = GenerationConfig(max_new_tokens=20)
    stats = StreamStats()
    text = "".join(stream(lm, PROMPTS[1], cfg, stats=stats))
    assert text == generate_batch(lm, [PROMPTS[1]], cfg)[0].text
    assert stats.new_tokens == 20 and stats.first_token_seconds is not None and stats.forward_passes == 20


def test_stop_event_halts_the_model_itself(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    calls = {"n": 0}
    hook = lm.model.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        stop = threading.Event()
        chunks, at_stop = 0, None
        for _ in stream(lm, PROMPTS[0], GenerationConfig(max_new_tokens=400), stop_event=stop):
            chunks += 1
            if chunks == 3:
                at_stop = calls["n"]
                stop.set()
        after = calls["n"] - at_stop
    finally:
        hook.remove()
    assert after <= 2, f"the model ran {after} forward passes after the stop"
    assert calls["n"] < 400, "generation stopped before max_new_tokens"


def test_closing_the_stream_stops_the_model(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    stats = StreamStats()
    it = stream(lm, PROMPTS[0], GenerationConfig(max_new_tokens=400), stats=stats)
    next(it), next(it)
    it.close()
    assert stats.forward_passes < 400 and stats.finish_reason == "cancelled"
    assert lm.lock.acquire(timeout=1)     # the lock was released
    lm.lock.release()


def test_generation_with_an_adapter_differs_and_base_does_not(tiny_llama_dir, tmp_path, monkeypatch):
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "chat-a", seed=5)
    lm = load_model(str(tiny_llama_dir))
    cfg = GenerationConfig(max_new_tokens=12)
    base_before = generate_batch(lm, PROMPTS, cfg, adapter=None)
    tuned = generate_batch(lm, PROMPTS, cfg, adapter="chat-a")
    base_after = generate_batch(lm, PROMPTS, cfg, adapter=None)
    assert [g.text for g in base_before] == [g.text for g in base_after]
    assert [g.text for g in tuned] != [g.text for g in base_before]


def test_mixed_adapter_batch_matches_separate_runs(tiny_llama_dir, tmp_path):
    """The compare view runs base and adapter in one batch (peft adapter_names)."""
    from harness.generation import generate_pair
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "chat-a", seed=5)
    lm = load_model(str(tiny_llama_dir))
    cfg = GenerationConfig(max_new_tokens=12)
    base, tuned = generate_pair(lm, PROMPTS[1], "chat-a", cfg)
    assert base.text == generate_batch(lm, [PROMPTS[1]], cfg, adapter=None)[0].text
    assert tuned.text == generate_batch(lm, [PROMPTS[1]], cfg, adapter="chat-a")[0].text


# ---------------------------------------------------------------- continuous batching

LONG = "Rewrite the sentence in passive voice. The cat chased the mouse. " * 6
MIXED = ["Hi", LONG, "What is the capital of France?", "床前明月光", "Free entry! Win a prize now", "Hello",
         "写一首五言绝句，题目：春夜", "Are we still meeting for lunch tomorrow?"]


def _prefills(lm):
    """A forward hook recording (rows, positions) of every forward pass: prefills have more than one position."""
    seen = []

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            seen.append(tuple(ids.shape))
    return seen, lm.model.register_forward_hook(hook, with_kwargs=True)


def _fields(g):
    return g.text, g.new_tokens, g.prompt_tokens, g.finish_reason


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_gpt2_dir"])
@pytest.mark.parametrize("kw", [dict(max_new_tokens=1), dict(max_new_tokens=9, stop=("e",)),
                                dict(max_new_tokens=40, stop=("a", "o")),
                                dict(max_new_tokens=20, repetition_penalty=1.3, stop=("n",))])
def test_continuous_batching_equals_one_at_a_time(which, kw, request):
    """Rows that stop early (stop strings, EOS) are replaced by waiting prompts; every output equals the
    static transformers generate() run on that prompt alone, token for token."""
    lm = load_model(str(request.getfixturevalue(which)))
    prompts = [lm.render_instruction(p) for p in MIXED]
    seen, hook = _prefills(lm)
    try:
        batched = generate_batch(lm, prompts, GenerationConfig(batch_size=3, **kw))
    finally:
        hook.remove()
    single = [generate_batch(lm, [p], GenerationConfig(batch_size=1, **kw))[0] for p in prompts]
    assert [_fields(b) for b in batched] == [_fields(s) for s in single]
    assert max(g.prompt_tokens for g in batched) > 3 * min(g.prompt_tokens for g in batched)
    prefills = [s for s in seen if s[1] > 1]
    assert sum(s[0] for s in prefills) == len(prompts), "every prompt prefilled once, in refills"
    assert len(prefills) > 1 and max(s[0] for s in seen) <= 3, "refills, never more rows than batch_size"
    if kw["max_new_tokens"] > 1:
        assert len({g.new_tokens for g in batched}) > 1, "rows finish at different steps (refills happen)"


def test_continuous_form_constraint_and_eos(tiny_llama_dir):
    """The form constraint ends each poem with EOS at its own step; per-row constraint state stays exact."""
    lm = load_model(str(tiny_llama_dir))
    prompts = [lm.render_instruction(p) for p in MIXED[:5]]
    cfg = GenerationConfig(max_new_tokens=90, form="五言绝句", batch_size=2)
    batched = generate_batch(lm, prompts, cfg)
    single = [generate_batch(lm, [p], GenerationConfig(max_new_tokens=90, form="五言绝句", batch_size=1))[0]
              for p in prompts]
    assert [_fields(b) for b in batched] == [_fields(s) for s in single]
    assert all(g.finish_reason == "stop" and g.new_tokens < 90 for g in batched)
    assert len({g.new_tokens for g in batched}) > 1


def test_continuous_with_an_adapter_and_on_done(tiny_llama_dir, tmp_path):
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "chat-a", seed=5)
    lm = load_model(str(tiny_llama_dir))
    prompts = [lm.render_instruction(p) for p in MIXED]
    cfg = GenerationConfig(max_new_tokens=16, stop=("e",), batch_size=3)
    calls = []
    main = threading.get_ident()
    tuned = generate_batch(lm, prompts, cfg, adapter="chat-a",
                           on_done=lambda i, g: calls.append((i, g, threading.get_ident())))
    base = generate_batch(lm, prompts, cfg, adapter=None)
    one = [generate_batch(lm, [p], GenerationConfig(max_new_tokens=16, stop=("e",), batch_size=1),
                          adapter="chat-a")[0] for p in prompts]
    assert [_fields(t) for t in tuned] == [_fields(o) for o in one]
    assert [t.text for t in tuned] != [b.text for b in base]
    assert sorted(i for i, _, _ in calls) == list(range(len(prompts)))
    assert all(g is tuned[i] for i, g, _ in calls) and {t for _, _, t in calls} == {main}


def test_rhyme_constrained_decoding_rhymes_and_stays_exact(tiny_llama_dir):
    """GenerationConfig(rhyme=True, rhyme_group=...) reaches FormConstraint in both the continuous and the static
    path: every quatrain's even lines end in the group, batched equals one at a time; without --form: one sentence."""
    from harness.errors import UserError
    from harness.metrics import form_check
    from harness.rules import check_poem

    lm = load_model(str(tiny_llama_dir))
    prompts = [lm.render_instruction(p) for p in MIXED[:3]]
    cfg = GenerationConfig(max_new_tokens=90, form="五言绝句", rhyme_group="东", batch_size=2)
    batched = generate_batch(lm, prompts, cfg)
    single = [generate_batch(lm, [p], GenerationConfig(max_new_tokens=90, form="五言绝句", rhyme_group="东",
                                                       batch_size=1))[0] for p in prompts]
    assert [_fields(b) for b in batched] == [_fields(s) for s in single]
    for g in batched:
        assert form_check(g.text, "五言绝句", "zh")["ok"], g.text
        assert check_poem(g.text, "五言绝句", "zh")["rhyme_ok"], g.text
    assert cfg.as_key()["rhyme_group"] == "东" and "rhyme" not in GenerationConfig(form="五言绝句").as_key()
    with pytest.raises(UserError, match="add --form"):
        GenerationConfig(tone=True)
