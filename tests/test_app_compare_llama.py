"""Compare on llama.cpp (issue 26): when the app's engine is llama.cpp, both sides of a Compare run on the real
embedded SmolLM2 GGUF (harness.llamacpp, two contexts of one base) with the project's adapters, and no
transformers copy of the base is loaded. Each side's answer is what the engine writes for that side alone; Stop
and a page that goes away halt both; a form is kept by its grammar; an adapter llama.cpp cannot run falls back
to transformers with a one-line notice; a blind vote names both checkpoints by name and by content.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_app_compare_llama.py      # ~1 min on 2 cores
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from harness.app import compare as K
from harness.app.state import AppState, Sampling
from harness.paths import PROJECT_ROOT

try:
    import llama_cpp  # noqa: F401
    HAVE_LLAMA = True
except ImportError:
    HAVE_LLAMA = False

ALPACA, POEM = "smollm2-135m-alpaca", "smollm2-135m-poem-zh"
GREEDY = Sampling(temperature=0.0, max_new_tokens=24, repetition_penalty=1.0)
PROMPT = "Name three colors."
REAL_CACHE = os.environ.get("FTBENCH_REAL_CACHE", str(Path.home() / ".cache" / "ftbench"))


LLAMA_THREADS = 2          # Compare gives each side half: one thread each


@pytest.fixture
def eng(embedded_llama, monkeypatch):
    eng, cache = embedded_llama
    monkeypatch.setenv("FTBENCH_CACHE", str(cache))
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(PROJECT_ROOT / "adapters"))
    return eng


@pytest.fixture
def state(eng, tmp_path) -> AppState:
    """The app's state on the embedded base with engine llama.cpp, holding the module's engine."""
    st = AppState(engine="llama.cpp", adapters_folder=PROJECT_ROOT / "adapters", store=str(tmp_path / "v.sqlite"))
    st.llama = eng
    return st


def run(state: AppState, session: str, b: str, a: str | None = None, sampling: Sampling = GREEDY,
        prompt: str = PROMPT, **kw) -> dict:
    K.start(state, session, prompt, b, sampling, against=a, **kw)
    views = list(K.stream(state, session))
    rec = state.session_data(session)["compare"]
    assert rec["status"] == "done", views[-1]["status"]
    return rec


def compare_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ftbench-compare")]


def test_compare_writes_both_sides_on_llama_cpp_as_each_alone_without_transformers(state, eng):
    rec = run(state, "s1", ALPACA)
    msgs = [{"role": "user", "content": PROMPT}]
    assert rec["info"]["engine"] == "llama.cpp" and rec["info"]["adapters"] == [None, ALPACA]
    assert rec["texts"]["base"] == eng.chat(msgs, None, 24)           # greedy: the engine's own answer per side
    assert rec["texts"]["tuned"] == eng.chat(msgs, ALPACA, 24)
    assert rec["texts"]["base"] != rec["texts"]["tuned"]
    assert state.held_models() == [] and state.lm is None, "no transformers copy of the base was loaded"
    info = rec["info"]
    assert info["prompt"] == eng.llm.detokenize(eng.render(msgs, 24), special=True).decode()
    assert "<|im_start|>user\nName three colors." in info["prompt"]
    assert 0 < info["tuned"]["new_tokens"] <= 24 and info["base"]["prompt_tokens"] > 0 and info["seconds"] > 0
    assert not rec.get("engine_notice") and "tokens" in rec["figures"]["base"]
    assert K.view(state, rec)["headings"] == ("Base: smollm2-135m-instruct", f"Fine-tuned: {ALPACA}")


def test_two_adapters_under_a_form_keep_it_by_grammar(state):
    from harness.metrics import form_check
    rec = run(state, "s2", POEM, a=ALPACA, prompt="写一首五言绝句，题目：春夜", form="五言绝句",
              sampling=Sampling(temperature=0.0, max_new_tokens=64, repetition_penalty=1.0))
    assert rec["info"]["engine"] == "llama.cpp" and rec["info"]["adapters"] == [ALPACA, POEM]
    assert rec["info"]["grammar"] is True and rec["info"]["form_constrained"] == "五言绝句"
    for side in ("base", "tuned"):
        assert form_check(rec["texts"][side], "五言绝句", "zh")["ok"], rec["texts"][side]
        assert "Form check: OK" in rec["figures"][side], rec["figures"][side]
    assert state.held_models() == []


def test_stop_halts_both_sides(state):
    K.start(state, "s3", "Write a long story about a dragon who learns to cook, with many chapters.", ALPACA,
            Sampling(temperature=0.0, max_new_tokens=600, repetition_penalty=1.0))
    views, stopped_at = [], None
    for v in K.stream(state, "s3"):
        views.append(v)
        if stopped_at is None and v["left"] and v["right"] and "writing" in v["status"]:
            assert "llama.cpp" in v["status"]
            stopped_at = time.perf_counter()
            assert state.stop("s3") == 1
    rec = state.session_data("s3")["compare"]
    assert rec["status"] == "stopped" and "stopped by you" in views[-1]["status"]
    assert time.perf_counter() - stopped_at < 5
    assert all(rec["info"][s]["new_tokens"] < 100 for s in ("base", "tuned")), rec["info"]
    assert not compare_threads() and not state.queued(rec["job"])


def test_a_page_that_goes_away_halts_both_sides(state):
    K.start(state, "s4", "Write a long story about a dragon who learns to cook, with many chapters.", ALPACA,
            Sampling(temperature=0.0, max_new_tokens=600, repetition_penalty=1.0))
    gen = K.stream(state, "s4")
    for v in gen:
        if v["left"] and v["right"]:
            assert "llama.cpp" in v["status"]
            break
    gen.close()                                  # the page went away mid-stream
    deadline = time.monotonic() + 5
    while compare_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not compare_threads(), "both sides stopped decoding"
    rec = state.session_data("s4")["compare"]
    assert rec["status"] == "stopped" and not state.queued(rec["job"]) and not state._running


def test_an_adapter_llama_cpp_cannot_run_falls_back_to_transformers_with_a_notice(eng, tmp_path, monkeypatch):
    """fan_in_fan_out LoRA weights have no GGUF form (the export refuses them); peft loads them on transformers."""
    folder = tmp_path / "adapters"
    bad = shutil.copytree(PROJECT_ROOT / "adapters" / ALPACA, folder / "alpaca-fif")
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "fan_in_fan_out": True}))
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(folder))
    monkeypatch.setenv("FTBENCH_CACHE", REAL_CACHE)       # the converted safetensors of the base, if there
    state = AppState(engine="llama.cpp", adapters_folder=folder, store=str(tmp_path / "v.sqlite"))
    state.llama = eng
    rec = run(state, "s5", "alpaca-fif", sampling=Sampling(temperature=0.0, max_new_tokens=12, repetition_penalty=1.0))
    assert rec["info"].get("engine") != "llama.cpp" and rec["info"]["one_batch"] is True
    notice = rec["engine_notice"]
    assert notice.startswith("Compare on transformers: adapter 'alpaca-fif' cannot be exported to GGUF"), notice
    assert "fan_in_fan_out" in notice and "\n" not in notice and str(tmp_path) not in notice
    assert f"ℹ {notice}" in K.view(state, rec)["status"]
    assert rec["texts"]["base"] and rec["texts"]["tuned"]


def test_a_blind_vote_on_llama_cpp_names_both_checkpoints(state):
    from harness import votes
    from harness.models import checkpoint_hash
    rec = run(state, "voter", ALPACA, blind=True,
              sampling=Sampling(temperature=0.7, max_new_tokens=12, repetition_penalty=1.0))
    assert rec["info"]["engine"] == "llama.cpp" and rec["info"]["sampling"]["decoding"] == "sampling"
    assert K.view(state, rec)["headings"][0].startswith("Answer 1"), "names hidden until the vote"
    tuned_left = not rec["base_left"]
    assert "counted" in K.vote(state, "voter", "left")
    [row] = votes.list_votes(state.store, session="voter")
    assert (row["model_a"], row["adapter_a"]) == ("smollm2-135m-instruct", ALPACA)
    assert (row["model_b"], row["adapter_b"]) == ("smollm2-135m-instruct", "")
    assert row["checkpoint_a"] == checkpoint_hash("smollm2-135m-instruct", ALPACA) != row["checkpoint_b"]
    assert row["winner"] == ("a" if tuned_left else "b") and state.held_models() == []


def test_short_work_runs_between_two_tokens_of_both_sides(state):
    """A classify (AppState.short_work) while Compare writes on llama.cpp: both sides wait for it at their next
    token, as the transformers path does, and go on after it."""
    K.start(state, "s6", "Write a long story about a dragon who learns to cook, with many chapters.", ALPACA,
            Sampling(temperature=0.0, max_new_tokens=400, repetition_penalty=1.0))
    lengths: list = []

    def consume():
        for v in K.stream(state, "s6"):
            lengths.append(len(v["left"]) + len(v["right"]))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while not (lengths and lengths[-1] > 20) and time.monotonic() < deadline:
            time.sleep(0.02)
        with state.short_work():
            time.sleep(0.4)                  # each side finishes the token it was on, then waits
            held = lengths[-1]
            time.sleep(1.0)
            assert lengths[-1] == held, "no side wrote while short work waited"
        deadline = time.monotonic() + 30
        while lengths[-1] == held and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lengths[-1] > held, "both sides went on after it"
    finally:
        state.stop("s6")                     # never leave decoding threads behind the module's engine
        t.join(30)
    assert state.session_data("s6")["compare"]["info"]["engine"] == "llama.cpp"
