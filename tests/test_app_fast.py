"""The app fast by default (issue 26) on the real embedded GGUF: under --engine llama.cpp the Poem tab's forms
(绝句/律诗, rhyme, tone) run on llama.cpp under their GBNF grammars, the transformers copy of the base is loaded
only when a job needs it (never at start, warm-up, chat or poems), and the header says what runs where.

    python -m pytest -q tests/test_app_fast.py          # ~30 s on 2 cores; skipped without llama-cpp-python
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.app.state import AppState, Sampling, status_line
from harness.errors import UserError
from harness.paths import PROJECT_ROOT

try:
    import llama_cpp  # noqa: F401
    HAVE_LLAMA = True
except ImportError:
    HAVE_LLAMA = False


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """An AppState on llama.cpp with the embedded base, prepared (warmed) as app.py does, no adapters."""
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python is not installed")
    from harness.models import default_base, embedded_gguf, resolve_base
    if embedded_gguf(resolve_base(default_base())) is None:
        pytest.skip("the embedded GGUF is not installed")
    state = AppState(engine="llama.cpp", threads=1, adapters_folder=tmp_path_factory.mktemp("no-adapters"))
    state.prepare()
    assert state.llama is not None and not state.engine_note
    yield state
    state.close_llama()


def test_a_form_poem_runs_on_llama_cpp_under_its_grammar_with_rhyme_and_tone(fast):
    from harness.app.poem import poem_stream
    from harness.generation import GenerationConfig
    *_, (poem, report, info) = poem_stream(fast, "春夜", "中文", "五言绝句", None,
                                           Sampling(temperature=0.0, max_new_tokens=160), rhyme=True, tone=True)
    assert info["engine"] == "llama.cpp" and "engine_notice" not in info, info
    assert report["summary"].startswith("**Form check: OK.**"), (poem, report["summary"])
    checks = report["rule_check"]
    assert (checks["rhyme_ok"], checks["tone_ok"]) == (True, True), (poem, report["rules_line"])
    assert report["rules_line"].startswith("**Rule check (平水韵, 平仄):** decoded keeping rhyme, tone")
    # the budget comes from the GGUF's own tokenizer, and the grammar's poem ends well inside it
    from harness.app.state import chat_stream, engine_token_count, form_token_budget
    budget = form_token_budget(engine_token_count(fast.llama), "五言绝句")
    assert info["max_new_tokens_used"] == budget and info["finish_reason"] == "stop"
    assert info["new_tokens"] < budget, info
    assert fast.lm is None and not fast._others, "the poem loaded no transformers model"
    # a bad option is the form options' own sentence on llama.cpp too (not a grammar error, not a fallback)
    with pytest.raises(UserError) as want:
        GenerationConfig(form="五言绝句", rhyme_group="没有这个韵")
    with pytest.raises(UserError) as got:
        list(chat_stream(fast, [{"role": "user", "content": "写一首五言绝句"}], "", None, Sampling(), "s",
                         "五言绝句", rules={"rhyme": True, "rhyme_group": "没有这个韵"}))
    assert str(got.value) == str(want.value)


def test_the_header_says_what_runs_where_on_llama_cpp(fast):
    line = status_line(fast)
    assert "llama.cpp for chat, poems (forms, rhyme and tone as grammars) and Compare" in line, line
    assert "transformers for Spam" in line and "transformers for forms" not in line
    assert "loads on first use" not in line, "llama.cpp is loaded: the model is not 'loaded on first use'"


def test_a_base_without_gguf_writes_form_poems_on_transformers_with_a_one_line_notice(tiny_llama_dir, tmp_path):
    from harness.app.poem import form_token_budget, poem_stream
    state = AppState(model=str(tiny_llama_dir), engine="llama.cpp", adapters_folder=tmp_path)
    *_, (poem, report, info) = poem_stream(state, "春夜", "中文", "五言绝句", None, Sampling(temperature=0.0))
    assert info["engine"] == "transformers" and report["summary"].startswith("**Form check: OK.**"), (poem, info)
    notice = info["engine_notice"]
    assert "llama.cpp could not load" in notice and notice.endswith("using transformers") and "\n" not in notice
    assert str(tiny_llama_dir) not in notice, "no server path in a notice"
    assert info["max_new_tokens_used"] == form_token_budget(state.lm.tokenizer, "五言绝句")


START = r"""
import json, sys
from harness.app.chat import chat_turn
from harness.app.poem import poem_stream
from harness.app.state import AppState, Sampling
state = AppState(engine="llama.cpp", threads=1, adapters_folder=sys.argv[1])
state.import_model_stack()
state.prepare()
*_, (history, info) = chat_turn(state, "Hi!", [], "", None, Sampling(temperature=0.0, max_new_tokens=8))
*_, (poem, report, pinfo) = poem_stream(state, "秋", "中文", "七言绝句", None, Sampling(temperature=0.0), rhyme=True)
print(json.dumps({"modules": [m for m in ("transformers", "peft") if m in sys.modules], "lm": state.lm is not None,
                  "engines": [info["engine"], pinfo["engine"]], "model": info["model"],
                  "prompt_style": info["prompt_style"], "form": report["summary"]}, ensure_ascii=False))
"""


def test_start_warm_up_chat_and_poems_on_llama_cpp_import_no_transformers(fast, tmp_path):
    """In a fresh process, as app.py starts it: the model stack import, prepare (load + warm-up), a chat and a form
    poem. transformers and peft are never imported (the RSS the transformers copy cost: bench app)."""
    out = subprocess.run([sys.executable, "-c", START, str(tmp_path)], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["modules"] == [] and got["lm"] is False, got
    assert got["engines"] == ["llama.cpp", "llama.cpp"] and got["form"].startswith("**Form check: OK.**"), got
    assert got["model"] == fast.spec.name and got["prompt_style"] == fast.spec.prompt_style


def test_with_adapt_threads_llama_cpp_takes_the_cores_not_busy_at_each_request(fast, monkeypatch):
    """app.py without --threads: the threads are chosen per request (idle: every core, 2x the speed on 2 cores;
    busy: fewer, where every core would crawl), not once at start; --threads N stays N."""
    import llama_cpp

    from harness.app import state as S
    from harness.app.state import chat_stream, stats_info
    ctx = fast.llama.llm.ctx
    hi = [{"role": "user", "content": "Hi"}]
    quick = Sampling(temperature=0.0, max_new_tokens=2)
    monkeypatch.setattr(fast, "adapt_threads", True)
    for cores in (2, 1):
        monkeypatch.setattr(S, "auto_threads", lambda: cores)
        *_, last = chat_stream(fast, hi, "", None, quick, "t")
        assert last[3] == "llama.cpp" and llama_cpp.llama_n_threads(ctx) == cores
        assert stats_info(last[1])["threads"] == cores, "the transparency info says the threads used"
    monkeypatch.setattr(fast, "adapt_threads", False)
    monkeypatch.setattr(S, "auto_threads", lambda: 2)
    *_, last = chat_stream(fast, hi, "", None, quick, "t")
    assert llama_cpp.llama_n_threads(ctx) == fast.threads == 1, "a fixed --threads is kept"


def test_a_sonnet_on_llama_cpp_keeps_its_14_lines_by_the_grammar(fast, tiny_llama_dir, tmp_path):
    from harness.app.poem import SONNET_MAX_NEW_TOKENS, poem_stream
    # the tab's settings (repetition penalty 1.1): the grammar's lines are at most 60 characters, so 14 fit
    tab = Sampling(temperature=0.0, max_new_tokens=SONNET_MAX_NEW_TOKENS, repetition_penalty=1.1)
    *_, (poem, report, info) = poem_stream(fast, "the sea", "English", "sonnet", None, tab)
    assert info["engine"] == "llama.cpp" and info["form_constrained"] is True, info
    assert report["summary"].startswith("**Form check: OK.**") and info["finish_reason"] == "stop", (poem, info)
    assert len([x for x in poem.splitlines() if x.strip()]) == 14
    # a base without GGUF: transformers writes it free, and the one-line notice says the 14 lines are not kept
    state = AppState(model=str(tiny_llama_dir), engine="llama.cpp", adapters_folder=tmp_path)
    *_, (_, _, info) = poem_stream(state, "the sea", "English", "sonnet", None, Sampling(max_new_tokens=16))
    assert info["engine"] == "transformers" and info["form_constrained"] is False
    assert info["engine_notice"].endswith("using transformers; the sonnet's 14 lines are kept only on llama.cpp")


def test_switching_the_base_on_llama_cpp_loads_no_transformers_copy_and_a_failure_keeps_the_old(fast, tmp_path):
    """"Load this base" on llama.cpp: a checkpoint GGUF with a chat template opens in llama.cpp and nothing else (it
    used to load the new base's transformers copy too); a GGUF llama.cpp and transformers both refuse leaves the
    old base in use, answering. (Gemma-3-270M's GGUF has no chat template: it falls back to transformers.)"""
    import shutil

    from harness.app.state import chat_stream
    roots = tmp_path / "checkpoints"
    roots.mkdir()
    shutil.copy(fast.llama.base_gguf, roots / "smol-copy.gguf")
    (roots / "broken.gguf").write_bytes(b"GGUF" + bytes(4000))
    state = AppState(engine="llama.cpp", threads=1, adapters_folder=tmp_path / "none", checkpoints=roots)
    turn = [{"role": "user", "content": "Say hi."}]
    sampling = Sampling(temperature=0.0, max_new_tokens=8)
    try:
        state.prepare(warmup=False)
        *_, first = chat_stream(state, turn, "", None, sampling, "s")
        assert state.switch_base("smol-copy.gguf") is None
        assert state.llama is not None and state.llama.base_gguf == (roots / "smol-copy.gguf").resolve()
        assert state.lm is None and not state.held_models(), "no transformers copy of the new base"
        *_, last = chat_stream(state, turn, "", None, sampling, "s")
        assert last[3] == "llama.cpp" and last[0] == first[0], last       # the same weights, the same answer
        with pytest.raises(UserError, match="could not load base 'broken.gguf'.*Still using") as e:
            state.switch_base("broken.gguf")
        assert str(roots) not in str(e.value)
        assert state.spec.location.endswith("smol-copy.gguf") and state.lm is None
        *_, again = chat_stream(state, turn, "", None, sampling, "s")
        assert again[3] == "llama.cpp" and again[0] == last[0]
    finally:
        state.close_llama()
