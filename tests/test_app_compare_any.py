"""Compare any two checkpoints in the app (issue 25 part 4), at the handler level with tiny models built here:
a full fine-tune folder (the tiny base with changed weights, saved with save_pretrained) against its base, votes
by checkpoint, the LRU of held models, and the checkpoints root that no name escapes."""
from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path

import pytest
from tiny import build_adapter, build_gpt2

from harness.app import compare as K
from harness.app.chat import chat_turn
from harness.app.state import AppState, Sampling, base_choices, base_value
from harness.errors import UserError

GREEDY = Sampling(temperature=0.0, max_new_tokens=12, repetition_penalty=1.0)
PROMPT = "What is the capital of France?"
OUTSIDE = ("that checkpoint is not inside the app's checkpoints folder: give a folder or file name relative to it "
           "(absolute paths, '..' and links out of it are refused)")


def fine_tune(base_dir: Path, out: Path, seed: int = 7) -> Path:
    """A 'full fine-tune' of the tiny base: every weight moved, saved like a trainer saves it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


@pytest.fixture
def root(tiny_llama_dir, tmp_path) -> Path:
    root = tmp_path / "checkpoints"
    fine_tune(tiny_llama_dir, root / "tiny-sft")
    return root


@pytest.fixture
def state(tiny_llama_dir, root, tmp_path) -> AppState:
    return AppState(model=str(tiny_llama_dir), checkpoints=root, adapters_folder=tmp_path / "adapters",
                    store=str(tmp_path / "votes.sqlite"))


def run(state: AppState, session: str, b: str, a: str | None = None, blind: bool = False,
        sampling: Sampling = GREEDY) -> dict:
    K.start(state, session, PROMPT, b, sampling, blind=blind, against=a)
    views = list(K.stream(state, session))
    rec = state.session_data(session)["compare"]
    assert rec["status"] == "done", views[-1]["status"]
    return rec


def alone(lm, prompt: str, sampling: Sampling = GREEDY) -> str:
    from harness.app.streaming import stream_rows
    *_, last = stream_rows(None, lm, lm.render_instruction(prompt), [None], sampling.config())
    return last[0]


def test_a_full_fine_tune_against_its_base_gives_each_models_own_answer_and_the_memory(state):
    assert ("tiny-sft (checkpoints folder)", "tiny-sft") in K.pair_choices(state)
    rec = run(state, "s1", "tiny-sft")
    assert rec["pair"] and rec["info"]["side_by_side"], "two models, not one batch"
    base, sft = state.get_model(), state.model_for(rec["sides"]["tuned"]["model"])
    assert base is not sft and len(state.held_models()) == 2
    assert rec["texts"]["base"] == alone(base, PROMPT) and rec["texts"]["tuned"] == alone(sft, PROMPT)
    assert rec["texts"]["base"] != rec["texts"]["tuned"]
    v = K.view(state, rec)
    assert v["headings"] == (f"A: {Path(state.base_name).name}", "B: tiny-sft")
    assert "MiB resident (RSS)" in v["status"] and "MiB of parameters" in v["status"]
    assert str(state.checkpoints_root) not in str(v) + K.compare_note(state), "no server path on the page"
    assert "Models held (at most 2)" in K.compare_note(state)


def test_a_blind_vote_names_both_checkpoints(state):
    from harness import votes
    rec = run(state, "voter", "tiny-sft", blind=True, sampling=Sampling(max_new_tokens=12, repetition_penalty=1.0))
    assert K.view(state, rec)["headings"][0].startswith("Answer 1"), "names hidden until the vote"
    tuned_left = not rec["base_left"]
    says = K.vote(state, "voter", "left")
    assert "counted" in says and "tiny-sft" in says
    [row] = votes.list_votes(state.store, session="voter")
    sft_path = str((state.checkpoints_root / "tiny-sft").resolve())
    assert (row["model_a"], row["adapter_a"]) == (sft_path, "")          # A: the B picker's checkpoint
    assert (row["model_b"], row["adapter_b"]) == (state.base_name, "")   # B: the A picker's
    assert row["status"] == "counted" and row["winner"] == ("a" if tuned_left else "b")


def test_a_vote_identifies_each_checkpoint_by_its_weights(state, root, tmp_path):
    """Issue 25: the same weights are the same checkpoint wherever they live: a vote stores each side's content
    hash, and a copy of the fine-tune under another name gets the same one."""
    import shutil

    from harness import votes
    from harness.models import checkpoint_hash
    run(state, "voter", "tiny-sft", blind=True, sampling=Sampling(max_new_tokens=8, repetition_penalty=1.0))
    K.vote(state, "voter", "tie")
    [row] = votes.list_votes(state.store, session="voter")
    sft = root / "tiny-sft"
    assert row["checkpoint_a"] == checkpoint_hash(str(sft.resolve())) and len(row["checkpoint_a"]) == 16
    assert row["checkpoint_b"] == checkpoint_hash(state.base_name)
    assert row["checkpoint_a"] != row["checkpoint_b"]
    copy = shutil.copytree(sft, tmp_path / "elsewhere" / "renamed-sft")
    assert checkpoint_hash(str(copy)) == row["checkpoint_a"]


def test_adapters_on_one_base_keep_the_one_batch_fast_path(state, tiny_llama_dir, tmp_path):
    build_adapter(tiny_llama_dir, tmp_path / "adapters" / "tiny-chat")
    rec = run(state, "fast", "tiny-chat")
    assert rec["info"]["one_batch"] is True and not rec.get("pair") and len(state.held_models()) == 1
    assert K.view(state, rec)["headings"] == (f"Base: {Path(state.base_name).name}", "Fine-tuned: tiny-chat")


def test_the_least_recently_used_model_is_freed(state, root, tiny_gpt2_dir):
    build_gpt2(root / "tiny-gpt2")
    run(state, "s", "tiny-sft")
    base = weakref.ref(state.lm.model)
    sft = weakref.ref(state._others[state.session_data("s")["compare"]["sides"]["tuned"]["model"]].model)
    run(state, "s", "tiny-gpt2", a="tiny-sft")             # the base in use is the least recently used
    gc.collect()
    assert base() is None and sft() is not None and len(state.held_models()) == 2 and state.lm is None
    list(chat_turn(state, "Hello", [], adapter="base", sampling=Sampling(max_new_tokens=2)))   # loads it again
    gc.collect()
    assert state.lm is not None and sft() is None, "then the fine-tune was the oldest: freed"
    assert len(state.held_models()) == 2


def test_stop_halts_both_models(state):
    K.start(state, "st", PROMPT, "tiny-sft", Sampling(temperature=0.0, max_new_tokens=400, repetition_penalty=1.0))
    for v in K.stream(state, "st"):
        if "writing" in v["status"]:
            state.stop("st")
    rec = state.session_data("st")["compare"]
    assert rec["status"] == "stopped" and K.view(state, rec)["status"].startswith("⏹ stopped by you")
    assert max(len(t) for t in rec["texts"].values()) < 400 * 2


def test_a_name_outside_the_root_is_refused_without_echoing_it(state, root, tiny_gpt2_dir, tmp_path):
    os.symlink(tiny_gpt2_dir, root / "link-out")           # a real model, but outside the root
    names = ["../outside", str(tiny_gpt2_dir), "link-out", "tiny-sft/../../x", "~/models", "..", "/etc/passwd"]
    for name in names:
        for call in (lambda: state.root_checkpoint(name), lambda: K.add_checkpoint(state, name),
                     lambda: K.start(state, "x", PROMPT, name), lambda: state.switch_base(name)):
            with pytest.raises(UserError) as err:
                call()
            said = str(err.value)
            assert said == OUTSIDE, (name, said)         # one sentence, the same for every name: nothing echoed
    assert "link-out" not in state.root_checkpoints()
    with pytest.raises(UserError, match="no checkpoint 'nope/x' in the app's checkpoints folder"):
        K.add_checkpoint(state, "nope/x")


def test_the_base_picker_takes_a_checkpoint_from_the_root_for_chat(state):
    assert ("tiny-sft (checkpoints folder)", "tiny-sft") in base_choices(state)
    state.switch_base("tiny-sft")
    assert base_value(state) == "tiny-sft"
    history = list(chat_turn(state, PROMPT, [], adapter="base", sampling=GREEDY))[-1][0]
    assert history[-1]["role"] == "assistant"
    choices, value, says = K.add_checkpoint(state, "tiny-sft")
    assert value == "tiny-sft" and "Added 'tiny-sft'" in says


def test_same_checkpoint_twice_and_one_model_only_are_one_sentence(state, tiny_llama_dir):
    with pytest.raises(UserError, match="A and B are the same checkpoint"):
        K.start(state, "x", PROMPT, "tiny-sft", against="tiny-sft")
    one = AppState(model=str(tiny_llama_dir), checkpoints=state.checkpoints_root, max_models=1)
    with pytest.raises(UserError, match="--max-models 2"):
        K.start(one, "x", PROMPT, "tiny-sft")


def test_the_flags_default_to_checkpoints_here_and_two_models():
    import app as app_module
    args = app_module.parse_args([])
    assert (args.checkpoints, args.max_models) == ("checkpoints", 2)
    args = app_module.parse_args(["--checkpoints", "/runs", "--max-models", "3"])
    assert (args.checkpoints, args.max_models) == ("/runs", 3)
    assert AppState().checkpoints_root == Path.cwd() / "checkpoints"


def test_a_broken_folder_in_the_root_fails_in_one_sentence_without_the_servers_folders(state, root):
    broken = root / "broken-sft"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")     # no weights
    K.start(state, "b", PROMPT, "broken-sft")
    last = list(K.stream(state, "b"))[-1]
    assert last["status"].startswith("⚠ could not load") and "broken-sft" in last["status"]
    assert str(root) not in last["status"] and str(root.resolve()) not in last["status"]
    with pytest.raises(UserError) as err:
        state.switch_base("broken-sft")
    assert str(root.resolve()) not in str(err.value) and "Still using" in str(err.value)


def test_merge_sides_a_failing_side_halts_the_other_and_closing_joins_both():
    """Compare's one merge loop (two models, a server, llama.cpp): a side's error halts the other side and is
    raised once both threads ended; a stream closed half-way halts both and leaves no thread behind."""
    import threading
    import time
    halted = threading.Event()

    def slow():
        text = ""
        for _ in range(500):
            if halted.is_set():
                return
            text += "x"
            yield text
            time.sleep(0.01)

    def failing():
        yield "a"
        raise UserError("side B failed: one sentence")

    seen = []
    with pytest.raises(UserError, match="side B failed"):
        for texts in K.merge_sides([slow, failing], halted.set):
            seen.append(texts)
    assert halted.is_set() and len(seen[-1][0]) < 100, "the slow side was halted, not finished"
    assert any(t[1] == "a" for t in seen), "the failing side's text was shown before its error"

    halted.clear()
    gen = K.merge_sides([slow, slow], halted.set)
    assert len(next(gen)) == 2
    gen.close()
    assert halted.is_set()
    assert not [t for t in threading.enumerate() if t.name.startswith("ftbench-compare-side")]
