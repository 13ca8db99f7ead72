"""Generation engines against fake servers on 127.0.0.1 (real sockets), and the in-process engine on a tiny model."""
from __future__ import annotations

import threading
import time

import pytest

from harness.engines import EngineConfig, EngineRequest, engine_generate, open_engine
from harness.http import ItemsFailed
from harness.errors import UserError
from harness.testing.fake_ollama import FakeOllama
from harness.testing.fake_openai import FakeOpenAI


def _reqs(n: int, **kw) -> list[EngineRequest]:
    return [EngineRequest([{"role": "user", "content": f"item {i} says hello world"}], **kw) for i in range(n)]


def test_openai_success_path_and_request_body():
    with FakeOpenAI(models=["smol", "smol-alpaca"]) as fake:
        engine = open_engine(EngineConfig(fake.spec("smol")))
        done = []
        main = threading.get_ident()
        reqs = _reqs(5, max_new_tokens=3, seed=7, stop=("zz",)) + [
            EngineRequest([{"role": "user", "content": "a b"}], adapter="smol-alpaca")]
        gens = engine_generate(engine, reqs, on_done=lambda i, g: done.append((i, threading.get_ident())))
        bodies = fake.chat_bodies()
    assert [g.text for g in gens[:5]] == ["world hello says" for _ in range(5)]
    assert all(g.finish_reason == "length" and g.new_tokens == 3 and g.prompt_tokens > 0 for g in gens[:5])
    assert gens[5].text == "b a" and gens[5].finish_reason == "stop"
    assert sorted(i for i, _ in done) == list(range(6)) and {t for _, t in done} == {main}
    first = next(b for b in bodies if b["model"] == "smol")
    assert first["max_tokens"] == 3 and first["temperature"] == 0 and first["seed"] == 7 and first["stop"] == ["zz"]
    assert sorted(b["model"] for b in bodies).count("smol-alpaca") == 1     # the adapter as a served model id


def test_four_workers_are_faster_than_one():
    with FakeOpenAI(delay=0.15) as fake:
        times = {}
        for workers in (1, 4):
            engine = open_engine(EngineConfig(fake.spec(), workers=workers))
            fake.max_in_flight = 0
            t0 = time.perf_counter()
            engine_generate(engine, _reqs(8))
            times[workers] = (time.perf_counter() - t0, fake.max_in_flight)
    assert times[1][1] == 1 and times[4][1] == 4
    assert times[4][0] < times[1][0]


def test_down_server_names_what_to_start(closed_port):
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        open_engine(EngineConfig(f"openai:smol@http://127.0.0.1:{closed_port}"))
    assert "cannot reach" in str(e.value) and "llama_cpp.server" in str(e.value)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(UserError) as e:
        open_engine(EngineConfig("ollama:llama3", host=f"127.0.0.1:{closed_port}"))
    assert "ollama serve" in str(e.value)


def test_500_says_check_the_log():
    with FakeOpenAI(models_status=500) as fake:
        with pytest.raises(UserError) as e:
            open_engine(EngineConfig(fake.spec("smol"), retries=1, backoff=0.01))
        assert "answered 500" in str(e.value) and "log" in str(e.value)
    with FakeOpenAI(default=lambda body: {"status": 500}) as fake:
        engine = open_engine(EngineConfig(fake.spec(), retries=2, backoff=0.01))
        with pytest.raises(UserError) as e:
            engine_generate(engine, _reqs(1))
        assert "answered 500" in str(e.value) and fake.count() == 3     # retried twice


def test_a_hang_past_the_timeout_is_one_sentence():
    with FakeOpenAI(models_delay=2.0) as fake:
        t0 = time.perf_counter()
        with pytest.raises(UserError) as e:
            open_engine(EngineConfig(fake.spec("smol"), timeout=0.3))
        assert "connected but did not answer within 0.3 s" in str(e.value) and "--timeout" in str(e.value)
        assert time.perf_counter() - t0 < 1.9
    with FakeOpenAI(delay=2.0) as fake:
        engine = open_engine(EngineConfig(fake.spec(), timeout=0.3))
        with pytest.raises(UserError) as e:
            engine_generate(engine, _reqs(2))
        assert "did not answer within 0.3 s" in str(e.value)


def test_wrong_model_lists_the_served_ones():
    with FakeOpenAI(models=["alpha", "beta"]) as fake:
        with pytest.raises(UserError) as e:
            open_engine(EngineConfig(fake.spec("gamma")))
        assert "'gamma' is not served" in str(e.value) and "alpha, beta" in str(e.value)
        engine = open_engine(EngineConfig(fake.spec("alpha")))
        with pytest.raises(UserError) as e:
            engine_generate(engine, [EngineRequest([{"role": "user", "content": "x"}], adapter="delta")])
        assert "'delta' is not served" in str(e.value) and fake.count() == 0
    with FakeOllama(models=["llama3"]) as fake:
        with pytest.raises(UserError) as e:
            open_engine(EngineConfig("ollama:qwen2", host=fake.host))
        assert "'qwen2' is not served" in str(e.value) and "llama3:latest" in str(e.value)


def test_non_json_200_fails_that_item_only_and_is_never_an_answer():
    def answer(body):
        return {"raw": "<html>502 Bad Gateway</html>"} if "item 2 " in body["messages"][-1]["content"] else None

    with FakeOpenAI(default=lambda b: answer(b) or {"content": "fine"}) as fake:
        engine = open_engine(EngineConfig(fake.spec(), retries=1, backoff=0.01))
        done = []
        with pytest.raises(ItemsFailed) as e:
            engine_generate(engine, _reqs(5), on_done=lambda i, g: done.append(i))
        asked = fake.count("/v1/chat/completions")
    gens = e.value.results
    assert gens[2] is None and list(e.value.failed) == [2]          # the HTML page is no answer, not even ""
    assert [g.text for k, g in enumerate(gens) if k != 2] == ["fine"] * 4
    assert sorted(done) == [0, 1, 3, 4]                              # the good ones were handed over
    assert asked == 6                                                # 5 items + 1 retry of the broken one
    assert str(e.value).startswith("1 of 5 generations failed (") and "502 Bad Gateway" in str(e.value)


def test_identity_changes_when_the_served_model_changes():
    with FakeOpenAI(models=[{"id": "smol", "root": "/models/a.gguf", "owned_by": "llamacpp"}]) as fake:
        a = open_engine(EngineConfig(fake.spec())).identity
        again = open_engine(EngineConfig(fake.spec())).identity
        fake.models = [{"id": "smol", "root": "/models/b.gguf", "owned_by": "llamacpp"}]
        b = open_engine(EngineConfig(fake.spec())).identity
        fake.models = [{"id": "smol", "root": "/models/b.gguf", "created": int(time.time()), "permission": [
            {"id": "modelperm-123", "created": int(time.time())}]}]
        stamped = open_engine(EngineConfig(fake.spec())).identity
    assert a == again and a != b and "a.gguf" in a
    assert "modelperm" not in stamped and "created" not in stamped    # answer-time fields (vLLM) are not identity
    with FakeOllama(models=["smol"]) as fake:
        x = open_engine(EngineConfig("ollama:smol", host=fake.host)).identity
        fake.digest = "0" * 64
        y = open_engine(EngineConfig("ollama:smol", host=fake.host)).identity
    assert x != y and y.endswith("0" * 64)


def test_ollama_generation_uses_options_and_counts():
    with FakeOllama(models=["smol"], default=lambda body: "a short answer") as fake:
        engine = open_engine(EngineConfig("ollama:smol", host=fake.host))
        gens = engine_generate(engine, _reqs(3, max_new_tokens=5, seed=3, stop=("###",)))
        body = fake.chat_bodies()[0]
    assert [g.text for g in gens] == ["a short answer"] * 3 and gens[0].new_tokens == 3
    assert body["options"] == {"temperature": 0.0, "seed": 3, "num_predict": 5, "stop": ["###"]}


def test_bad_config_and_spec_are_one_sentence():
    for kw in (dict(workers=0), dict(timeout=0), dict(retries=-1)):
        with pytest.raises(UserError):
            EngineConfig("openai:x@http://127.0.0.1:1", **kw)
    with pytest.raises(UserError) as e:
        EngineConfig("openai:x")
    assert "openai:<model>@<server url>" in str(e.value)
    with pytest.raises(UserError, match=r"server URL must start with http:// or https://, e.g. openai:x@http://h:8000"):
        EngineConfig("openai:x@h:8000")
    with pytest.raises(UserError) as e:
        EngineConfig("vllm:x")
    assert "unknown engine" in str(e.value)
    assert EngineConfig("openai:x@http://h:8000").spec == "openai:x@http://h:8000/v1"


def test_in_process_engine_matches_generate_batch(tiny_llama_dir):
    from harness.generation import GenerationConfig, generate_batch
    from harness.models import load_model

    lm = load_model(str(tiny_llama_dir))
    engine = open_engine(EngineConfig(str(tiny_llama_dir), batch_size=3), lm=lm)
    assert engine.lm is lm and engine.kind == "transformers" and engine.identity.startswith("transformers:")
    reqs = _reqs(4, max_new_tokens=10) + _reqs(2, max_new_tokens=4)
    done = []
    gens = engine_generate(engine, reqs, on_done=lambda i, g: done.append(i))
    direct = generate_batch(lm, [lm.render_chat(r.messages) for r in reqs[:4]], GenerationConfig(max_new_tokens=10))
    assert [g.text for g in gens[:4]] == [g.text for g in direct]
    assert all(g.new_tokens <= 4 for g in gens[4:]) and sorted(done) == list(range(6))


# ---------------------------------------------------------------- streaming (the app's chat and poem tabs)

def test_openai_stream_gives_the_same_text_chunk_by_chunk_with_the_servers_counts():
    from harness.engines import stream_chat
    with FakeOpenAI(models=["smol", "smol-alpaca"]) as fake:
        engine = open_engine(EngineConfig(fake.spec("smol")))
        req = EngineRequest([{"role": "user", "content": "one two three four five"}], max_new_tokens=4)
        whole = engine_generate(engine, [req])[0]
        stats: dict = {}
        chunks = list(stream_chat(engine, req, stats=stats))
        body = fake.chat_bodies()[-1]
        tuned = "".join(stream_chat(engine, EngineRequest([{"role": "user", "content": "a b"}], adapter="smol-alpaca")))
    assert len(chunks) == 4 and "".join(chunks) == whole.text == "five four three two"
    assert body["stream"] is True and body["max_tokens"] == 4 and body["model"] == "smol"
    assert stats["new_tokens"] == 4 and stats["finish_reason"] == "length" and stats["prompt_tokens"] > 0
    assert stats["first_token_seconds"] <= stats["seconds"] and stats["engine"] == engine.config.spec
    assert tuned == "b a"


def test_a_stopped_stream_hangs_up_and_says_cancelled():
    from harness.engines import stream_chat
    with FakeOpenAI() as fake:
        fake.chunk_delay = 0.05
        engine = open_engine(EngineConfig(fake.spec("smol")))
        stop, stats = threading.Event(), {}
        got = []
        words = " ".join(f"w{i}" for i in range(60))
        for chunk in stream_chat(engine, EngineRequest([{"role": "user", "content": words}], max_new_tokens=60),
                                 stop, stats):
            got.append(chunk)
            if len(got) == 3:
                stop.set()
        time.sleep(0.3)
        sent = fake.streamed
    assert len(got) == 3 and stats["finish_reason"] == "cancelled"
    assert sent < 20                                  # the server stopped sending soon after the hang-up


def test_ollama_stream_and_one_sentence_failures():
    from harness.engines import stream_chat
    with FakeOllama(models=["smol"], default=lambda body: "a short streamed answer") as fake:
        engine = open_engine(EngineConfig("ollama:smol", host=fake.url))
        stats: dict = {}
        text = "".join(stream_chat(engine, EngineRequest([{"role": "user", "content": "hi"}]), stats=stats))
    assert text == "a short streamed answer" and stats["finish_reason"] == "stop" and stats["new_tokens"] > 0
    with FakeOpenAI(models=["smol"], answers=[{"status": 500}, {"status": 500}]) as fake:
        engine = open_engine(EngineConfig(fake.spec("smol"), retries=1, backoff=0.01))   # 500 twice: retried once
        with pytest.raises(UserError, match="answered 500 to the chat: check its log"):
            list(stream_chat(engine, EngineRequest([{"role": "user", "content": "hi"}])))
        with pytest.raises(UserError, match="model 'gone' is not served at .*it serves: smol"):
            list(stream_chat(engine, EngineRequest([{"role": "user", "content": "hi"}], adapter="gone")))
        with pytest.raises(UserError, match="form constraint runs in process only"):
            list(stream_chat(engine, EngineRequest([{"role": "user", "content": "hi"}], form="五言绝句")))
        fake.stop()
        with pytest.raises(UserError, match="cannot reach a server at"):
            list(stream_chat(engine, EngineRequest([{"role": "user", "content": "hi"}])))


def test_the_ollama_engine_speaks_through_the_official_ollama_client():
    """The brief: the Ollama backend is the official `ollama` package, never a client of our own (the fake sees
    the User-Agent the package sends on the model list, the answers, the stream and /api/show)."""
    from importlib.metadata import version
    from harness.engines import stream_chat
    with FakeOllama(models=["smol"], default=lambda body: "fine") as fake:
        engine = open_engine(EngineConfig("ollama:smol", host=fake.url))
        engine_generate(engine, _reqs(2, schema={"type": "object"}))
        "".join(stream_chat(engine, EngineRequest([{"role": "user", "content": "hi"}])))
        info = engine.info()
        engine.close()
        agents = fake.agents()
        body = fake.chat_bodies()[0]
    assert len(agents) == 1 and agents.pop().startswith(f"ollama-python/{version('ollama')} (")
    assert {r["path"] for r in fake.requests} == {"/api/tags", "/api/chat", "/api/show"}
    assert body["format"] == {"type": "object"} and body["stream"] is False
    assert info["llama.context_length"] == 8192


def test_a_replaced_local_model_is_a_new_engine_identity(tmp_path):
    """The in-process engine's identity is models.model_fingerprint: new weights in the same folder never reuse the
    cached generations of the old ones (the identity was the folder's path only)."""
    from tiny import build_llama
    d = build_llama(tmp_path / "model")
    ids = []
    for seed in (0, 0, 1):
        if seed:
            build_llama(d, seed=seed)          # the same folder, other weights
        with open_engine(EngineConfig(str(d))) as engine:
            ids.append(engine.identity)
    assert ids[0] == ids[1] != ids[2] and ids[0].startswith("transformers:")
