"""llama.cpp: the in-process engine (harness/llamacpp.py: engine choice, greedy decoding as llama.cpp's own,
poem grammars, adapters switched on one base, batched decoding; Compare's two contexts are tested through the app in tests/test_app_compare_llama.py), and a real engine that
nobody on the team wrote: llama-cpp-python's OpenAI-compatible server on 127.0.0.1, serving the embedded SmolLM2
GGUF with the smollm2-135m-alpaca adapter exported by harness/export.py.

    python -m pytest -q tests/test_llamacpp.py            # ~2 min on 2 cores; CI installs llama-cpp-python[server]
    FTBENCH_LLAMACPP_ITEMS=34 python -m pytest -q -s tests/test_llamacpp.py -k rouge   # the README's figures

- `run` through openai: writes the same rows and leaderboard columns as in process;
- the exported adapter changes the answers the same way as in process: ROUGE-L between the engine's and the
  in-process adapter's greedy answers is far above ROUGE-L between the engine's adapter and base answers;
- a server killed mid-run loses nothing: the answers it gave are in the store, a rerun (against a restarted
  server, even on another port) asks only for the rest.

Fault cases (500s, hangs, wrong model names) use the fakes (tests/test_engines.py, tests/test_evaluate.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.paths import PROJECT_ROOT
from tiny import free_port

try:
    import llama_cpp  # noqa: F401
    HAVE_LLAMA = True
except ImportError:
    HAVE_LLAMA = False
try:
    import llama_cpp.server  # noqa: F401
    HAVE_SERVER = True
except ImportError:
    HAVE_SERVER = False
INSTALL = ('llama-cpp-python[server] is not installed: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install '
           '"llama-cpp-python[server]" (about 10 minutes to build; .ci/run does it)')
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason=INSTALL)
server_test = [pytest.mark.slow, pytest.mark.skipif(not HAVE_SERVER, reason=INSTALL)]

ADAPTER = "smollm2-135m-alpaca"
MAX_NEW = 48
ITEMS = int(os.environ.get("FTBENCH_LLAMACPP_ITEMS", "8"))
REAL_CACHE = os.environ.get("FTBENCH_REAL_CACHE", str(Path.home() / ".cache" / "ftbench"))


class Server:
    """`python -m llama_cpp.server` in a subprocess, waited for until /v1/models answers."""

    def __init__(self, gguf: Path, alias: str, log: Path, lora: Path | None = None):
        self.gguf, self.alias, self.lora, self.log = gguf, alias, lora, log
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def spec(self) -> str:
        return f"openai:{self.alias}@http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        import requests
        self.port = free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", self.alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", "1", "--n_threads_batch", "1",
               "--n_ctx", "2048"]
        if self.lora:
            cmd += ["--lora_path", str(self.lora)]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama_cpp.server exited ({self.proc.returncode}): "
                                     + self.log.read_text(errors="replace")[-2000:])
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError("llama_cpp.server did not answer within 120 s: " + self.log.read_text()[-2000:])

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def real_env(tmp_path_factory):
    """The real model cache and the project's adapters (the autouse fixture isolates every test otherwise)."""
    return {"FTBENCH_CACHE": REAL_CACHE, "FTBENCH_ADAPTERS": str(PROJECT_ROOT / "adapters")}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, real_env):
    """(base server, adapter server): the embedded GGUF alone, and with the adapter's GGUF export as --lora_path.
    Each has its own --model_alias: llama-cpp-python reports only the alias in /v1/models, so the alias is what
    tells the two apart in the generation cache."""
    from harness.export import base_gguf_path, export_gguf
    from harness.models import find_adapter

    tmp = tmp_path_factory.mktemp("llamacpp")
    info = find_adapter(ADAPTER, folder=PROJECT_ROOT / "adapters")
    _, gguf = base_gguf_path(info)
    lora = export_gguf(info, tmp / f"{ADAPTER}.gguf")
    base = Server(gguf, "smol", tmp / "base.log").start()
    try:
        tuned = Server(gguf, "smol-alpaca", tmp / "alpaca.log", lora).start()
    except BaseException:
        base.stop()
        raise
    yield base, tuned
    base.stop()
    tuned.stop()


@pytest.fixture
def env(real_env, monkeypatch):
    for k, v in real_env.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, real_env):
    """The in-process adapter's greedy answers on the first ITEMS items of instructions_own (rows, responses)."""
    from harness.evaluate import run
    from harness.store import Store

    tmp = tmp_path_factory.mktemp("inproc")
    saved = {k: os.environ.get(k) for k in real_env}
    os.environ.update(real_env)
    try:
        with Store(tmp / "store.sqlite") as st:
            res = run(None, ADAPTER, "instructions_own", None, limit=ITEMS, max_new_tokens=MAX_NEW, batch_size=8,
                      store=st, progress=False, run_dir=tmp / "results" / "runs")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return res


def _engine_run(spec: str, store_path: Path, run_dir: Path, limit: int = ITEMS, **kw):
    from harness.engines import EngineConfig
    from harness.evaluate import run
    from harness.store import Store
    with Store(store_path) as st:
        return run(spec, None, "instructions_own", None, limit=limit, max_new_tokens=MAX_NEW, store=st,
                   progress=False, run_dir=run_dir, engine_config=EngineConfig(**{"workers": 2, "timeout": 600, **kw}))


@server_test[0]
@server_test[1]
def test_run_through_llama_cpp_writes_the_same_rows_and_columns(servers, in_process, env, tmp_path):
    import csv
    _, tuned = servers
    res = _engine_run(tuned.spec, tmp_path / "s.sqlite", in_process.path.parent.parent)
    assert res.generated == ITEMS and len(res.rows) == ITEMS
    assert set(res.rows[0]) == set(in_process.rows[0])
    assert [r["item_id"] for r in res.rows] == [r["item_id"] for r in in_process.rows]
    assert all(r["model"] == f"{tuned.spec}/v1" and r["response"].strip() and r["rouge_l"] is not None
               for r in res.rows)
    assert all(r["response_tokens"] <= MAX_NEW and r["prompt_tokens"] > 0 for r in res.rows)
    # the server renders the GGUF's own chat template: the same prompt as in process. One known difference in
    # tokens: llama.cpp merges "\n\n" into one token, the transformers tokenizer converted from the GGUF
    # splits it into two "\n" (the instruction-input separator)
    # splits it into two "\n" (the instruction-input separator); not every "\n\n" merges (seen in CI), so the
    # server's count lies between the in-process count minus the separators and the in-process count
    for srv, loc in zip(res.rows, in_process.rows):
        assert loc["prompt_tokens"] - loc["prompt"].count("\n\n") <= srv["prompt_tokens"] <= loc["prompt_tokens"], (
            srv["item_id"], srv["prompt_tokens"], loc["prompt_tokens"])
    board = in_process.path.parent.parent.parent / "leaderboard_chat.csv"
    header, *rows = list(csv.reader(open(board, encoding="utf-8")))
    models = {r[header.index("model")]: r for r in rows}
    assert set(models) == {in_process.rows[0]["model"], res.rows[0]["model"]}
    for r in models.values():                                 # every column filled for both
        assert r[header.index("rouge_l")] and r[header.index("gen_tokens_per_s")] and r[header.index("n")] == str(ITEMS)


@server_test[0]
@server_test[1]
def test_the_exported_adapter_changes_the_answers_as_in_process(servers, in_process, env, tmp_path):
    from harness.metrics import rouge_l
    base, tuned = servers
    eng_tuned = _engine_run(tuned.spec, tmp_path / "s.sqlite", tmp_path / "runs").responses
    eng_base = _engine_run(base.spec, tmp_path / "s.sqlite", tmp_path / "runs").responses
    mine = in_process.responses
    same_way = sum(rouge_l(a, b) for a, b in zip(eng_tuned, mine)) / len(mine)
    vs_base = sum(rouge_l(a, b) for a, b in zip(eng_tuned, eng_base)) / len(mine)
    identical = sum(a.strip() == b.strip() for a, b in zip(eng_tuned, mine))
    print(f"\n{len(mine)} items of instructions_own, greedy, {MAX_NEW} new tokens: ROUGE-L(engine adapter, "
          f"in-process adapter) = {same_way:.3f}; ROUGE-L(engine adapter, engine base) = {vs_base:.3f}; "
          f"identical answers {identical}/{len(mine)}")
    # measured on the first 4 items (17:03, a loaded machine): 0.784 vs 0.569. The base and the adapter often
    # agree on short factual answers, so the gap, not the base figure, is what the adapter shows
    assert same_way > 0.6 and same_way > vs_base + 0.15, (same_way, vs_base)


@server_test[0]
@server_test[1]
def test_a_server_killed_mid_run_loses_nothing(servers, in_process, env, tmp_path):
    """SIGKILL the server while `run` is generating: the run ends with one sentence, the answers given so far
    are stored, and a rerun against a restarted server (on another port) asks only for the rest."""
    from harness.errors import UserError
    from harness.store import Store

    _, tuned = servers
    victim = Server(tuned.gguf, tuned.alias, tmp_path / "victim.log", tuned.lora).start()
    store_path = tmp_path / "s.sqlite"
    n = min(ITEMS, 8)
    outcome: dict = {}

    def client():
        try:
            outcome["res"] = _engine_run(victim.spec, store_path, tmp_path / "runs", limit=n, retries=1,
                                         backoff=0.1, workers=1)
        except UserError as e:
            outcome["error"] = str(e)

    t = threading.Thread(target=client)
    try:
        t.start()
        deadline = time.time() + 600
        with Store(store_path) as st:
            while st.count("generations") < 2 and time.time() < deadline and t.is_alive():
                time.sleep(0.05)
            victim.kill()
            t.join(60)
            stored = st.count("generations")
    finally:
        victim.kill()
    assert not t.is_alive()
    assert "error" in outcome, "the run finished before the server was killed: give it more items"
    assert "rerun the same command" in outcome["error"] and "\n" not in outcome["error"]
    assert 2 <= stored < n, outcome["error"]
    again = Server(tuned.gguf, tuned.alias, tmp_path / "again.log", tuned.lora).start()
    try:
        res = _engine_run(again.spec, store_path, tmp_path / "runs", limit=n)
    finally:
        again.stop()
    assert res.generated == n - stored and len(res.rows) == n
    with Store(store_path) as st:
        assert st.count("generations") == n                 # nothing lost, nothing twice
    ref = _engine_run(tuned.spec, tmp_path / "ref.sqlite", tmp_path / "runs", limit=n).responses
    assert res.responses == ref                             # the resumed answers are the uninterrupted ones


# ------------------------------------------------------------------------------------------ in process

def test_pick_engine_defaults_to_llama_cpp_when_installed(monkeypatch, tiny_llama_dir):
    from harness import llamacpp
    monkeypatch.setattr(llamacpp, "is_available", lambda: (True, "llama-cpp-python 0.3"))
    assert llamacpp.pick_engine("") == ("llama.cpp", "")
    assert llamacpp.pick_engine("auto") == ("llama.cpp", "")
    assert llamacpp.pick_engine("llama.cpp") == ("llama.cpp", "")
    assert llamacpp.pick_engine("transformers") == ("transformers", "")
    assert llamacpp.pick_engine("", needs_head=True) == ("transformers", "")
    name, notice = llamacpp.pick_engine("llama.cpp", needs_head=True)
    assert name == "transformers" and "classification head" in notice
    name, notice = llamacpp.pick_engine("", base=str(tiny_llama_dir))        # a base with no GGUF file
    assert name == "transformers" and "no GGUF" in notice and notice.endswith("Using transformers.")
    with pytest.raises(UserError, match="unknown engine 'vllm'"):
        llamacpp.pick_engine("vllm")
    monkeypatch.setattr(llamacpp, "is_available", lambda: (False, "the llama.cpp engine needs llama-cpp-python, "
                                                                  "which is not installed: pip install x"))
    name, notice = llamacpp.pick_engine("")
    assert name == "transformers" and notice.endswith("using transformers") and "\n" not in notice


@needs_llama
def test_a_gguf_llama_cpp_cannot_open_names_the_transformers_fallback(tmp_path):
    from harness.llamacpp import load_engine
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4000))
    with pytest.raises(UserError, match="transformers") as e:
        load_engine(str(bad), n_threads=1, n_ctx=256)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


@pytest.fixture
def real(embedded_llama, monkeypatch):
    eng, cache = embedded_llama
    monkeypatch.setenv("FTBENCH_CACHE", str(cache))
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(PROJECT_ROOT / "adapters"))
    return eng


HELLO = [{"role": "user", "content": "Name three colors."}]


def test_greedy_decoding_is_llama_cpps_own(real):
    ids = real.render(HELLO, 24)
    with real.lock:
        real.switch_adapter(None)
        real.llm.reset()
        own = []
        for tok in real.llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if tok == real.llm.token_eos() or len(own) >= 24:
                break
            own.append(tok)
        real.llm.reset()
    text = real.chat(HELLO, None, 24)
    assert text == real.llm.detokenize(own).decode("utf-8", errors="replace") and text.strip()


def test_a_poem_under_the_grammar_keeps_form_rhyme_and_tone(real):
    from harness.llamacpp import poem_grammar
    from harness.metrics import form_check
    from harness.rules import explain_poem
    msgs = [{"role": "user", "content": "写一首五言绝句，题目：春夜"}]
    free = real.chat(msgs, None, 64)
    poem = real.chat(msgs, None, 96, grammar=poem_grammar("五言绝句", rhyme=True, tone=True))
    assert form_check(poem, "五言绝句", "zh")["ok"], poem
    r = explain_poem(poem, "五言绝句", "zh")
    assert (r["rhyme_ok"], r["tone_ok"], r["repeated_rhyme"]) == (True, True, False), (poem, r["rules_summary"])
    assert poem.endswith("。") and poem.count("\n") == 3
    chars = [c for c in poem if "\u3400" <= c <= "\u9fff"]
    pairs = list(zip(chars, chars[1:]))
    assert len(set(pairs)) == len(pairs), poem              # no pair of characters twice (FormConstraint's rule)
    assert not explain_poem(free, "五言绝句", "zh")["tone_ok"]          # the base alone does not keep the rules
    sampled = real.chat(msgs, None, 96, temperature=0.9, seed=3, grammar=poem_grammar("七言绝句", rhyme_group="东"))
    r = explain_poem(sampled, "七言绝句", "zh")
    assert r["rhyme_ok"] and r["rhyme_group"] == "东", sampled


def test_adapters_switch_on_one_base_and_unusable_ones_fall_back_with_a_notice(real):
    base = real.chat(HELLO, None, 24)
    model = real.llm.model
    tuned = real.chat(HELLO, "smollm2-135m-alpaca", 24)
    assert tuned != base and real.llm.model == model               # the base was not reloaded
    assert real.chat(HELLO, "base", 24) == base                    # back to the base: the same answer
    assert real.chat(HELLO, "smollm2-135m-alpaca", 24) == tuned
    exports = list((real_cache(real) / "exports").rglob("*.gguf"))
    assert [p.name for p in exports] == ["smollm2-135m-alpaca.gguf"]  # exported once, on first use
    with pytest.raises(UserError, match="'smollm2-135m-spam' is a classification head.*transformers"):
        real.add_adapter("smollm2-135m-spam")
    with pytest.raises(UserError, match="trained on base 'gemma3-270m"):
        real.add_adapter("gemma3-270m-alpaca")


def real_cache(eng) -> Path:
    return Path(os.environ["FTBENCH_CACHE"])


def test_batched_decoding_gives_the_single_stream_answers(real):
    convs = [[{"role": "user", "content": q}] for q in ("Name three colors.", "What is 2 + 2?", "Say hello.",
                                                         "Name a fruit.", "What is the capital of France?")]
    alone = [real.chat(c, "smollm2-135m-alpaca", 20) for c in convs]
    seen = []
    many = real.generate_many(convs, "smollm2-135m-alpaca", 20, parallel=3, progress=lambda d, n: seen.append(d))
    assert [m["text"] for m in many] == alone
    assert seen == [1, 2, 3, 4, 5] and all(0 < m["new_tokens"] <= 20 and m["prompt_tokens"] > 0 for m in many)


def test_a_sampled_prompt_keeps_its_seed_whichever_chunk_it_is_in(real):
    """`generate` saves after each chunk and resumes with the rest: a prompt's seed must not depend on its chunk."""
    convs = [[{"role": "user", "content": q}] for q in ("Name a color.", "Name an animal.", "Name a city.")]
    whole = real.generate_many(convs, None, 16, temperature=1.0, seed=[7, 8, 9])
    resumed = real.generate_many(convs[1:], None, 16, temperature=1.0, seed=[8, 9])
    assert [r["text"] for r in resumed] == [r["text"] for r in whole[1:]]
    assert real.generate_many(convs[1:], None, 16, temperature=1.0, seed=8)[0]["text"] == whole[1]["text"]
