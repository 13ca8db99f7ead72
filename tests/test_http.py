"""The one HTTP client (harness/http.py) at the doors, with real sockets on 127.0.0.1: a server that sends its
headers and then drips a byte a second, one that answers a proxy's HTML page with 200, one that closes the
connection mid-answer; spec and OLLAMA_HOST mistakes as one sentence.

    python -m pytest -q tests/test_http.py
"""
from __future__ import annotations

import json
import threading
import time

import pytest

from harness.engines import EngineConfig, EngineRequest, engine_generate, open_engine, stream_chat
from harness.errors import UserError
from harness.http import Client, ItemsFailed, ServerError
from harness.judge import JudgeConfig, JudgeRequest, judge_many, open_judge
from harness.testing import HTML_PAGE, cut, drip
from harness.testing.fake_ollama import FakeOllama
from harness.testing.fake_openai import FakeOpenAI

TIMEOUT = 1.5


def _reqs(n: int) -> list[EngineRequest]:
    return [EngineRequest([{"role": "user", "content": f"item {i} please answer"}], max_new_tokens=8)
            for i in range(n)]


def _jreq(i: int) -> JudgeRequest:
    return JudgeRequest(str(i), "chat", {"instruction": f"Name a colour ({i})", "input": "", "output": "Red.",
                                         "response": "Blue."})


# ---------------------------------------------------------------- a total deadline per answer

def test_a_server_that_drips_a_byte_a_second_fails_within_twice_the_timeout():
    long = "word " * 200                      # ~1,000 bytes of JSON: 17 minutes at a byte a second
    with FakeOpenAI(default=lambda body: {"content": long, **drip(1.0)}) as fake:
        engine = open_engine(EngineConfig(fake.spec(), timeout=TIMEOUT, retries=2, backoff=0.01))
        t0 = time.perf_counter()
        with pytest.raises(ItemsFailed) as e:
            engine_generate(engine, _reqs(3))
        took = time.perf_counter() - t0
        asked = fake.count("/v1/chat/completions")
    assert took < 2 * TIMEOUT, took           # per answer, not per byte; the hung server stops the run
    assert "did not answer within 1.5 s" in e.value.reason and asked <= 3   # a timeout is never retried
    assert e.value.results == [None, None, None]


def test_a_dripping_ollama_judge_fails_within_twice_the_timeout():
    with FakeOllama(default=lambda body: {"content": '{"score": 50, "reason": "' + "x" * 500 + '"}',
                                          **drip(0.5)}) as fake:
        with open_judge(JudgeConfig("ollama:llama3", host=fake.url, timeout=TIMEOUT, workers=2)) as judge:
            t0 = time.perf_counter()
            with pytest.raises(ItemsFailed) as e:
                judge_many(judge, [_jreq(i) for i in range(4)], progress=False)
            took = time.perf_counter() - t0
    assert took < 2 * TIMEOUT, took
    assert "did not answer within 1.5 s" in e.value.reason and "--judge-timeout" in e.value.reason


def test_a_dripping_stream_fails_within_twice_the_timeout():
    with FakeOpenAI(default=lambda body: {"content": "many words " * 50, **drip(0.5)}) as fake:
        engine = open_engine(EngineConfig(fake.spec(), timeout=TIMEOUT))
        got, t0 = [], time.perf_counter()
        with pytest.raises(ServerError, match="did not answer within 1.5 s"):
            for chunk in stream_chat(engine, _reqs(1)[0]):
                got.append(chunk)
        took = time.perf_counter() - t0
    assert took < 2 * TIMEOUT, took


def test_the_health_check_of_a_dripping_server_fails_within_twice_the_timeout():
    with FakeOllama() as fake:
        fake.answers = []
        client = Client(fake.url, "the test server", timeout=TIMEOUT, retries=0)
        t0 = time.perf_counter()
        # /api/chat of an unknown model is a fast 404; a dripping answer is what must not hang
        fake.default = lambda body: {"content": "y" * 400, **drip(0.2)}
        with pytest.raises(ServerError) as e:
            client.json("POST", "/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}],
                                              "stream": False})
        assert e.value.kind == "timeout" and time.perf_counter() - t0 < 2 * TIMEOUT


# ---------------------------------------------------------------- a 200 that is not the protocol

def test_a_200_html_page_is_never_an_answer_for_an_engine():
    def answer(body):
        return {"raw": HTML_PAGE} if "item 1 " in body["messages"][-1]["content"] else {"content": "fine"}

    with FakeOpenAI(default=answer) as fake:
        engine = open_engine(EngineConfig(fake.spec(), retries=1, backoff=0.01))
        done: list[int] = []
        with pytest.raises(ItemsFailed) as e:
            engine_generate(engine, _reqs(3), on_done=lambda i, g: done.append(i))
    assert sorted(done) == [0, 2] and e.value.results[1] is None
    assert "not in the server's format" in e.value.reason and "502 Bad Gateway" in e.value.reason


def test_json_of_another_shape_is_never_an_answer():
    with FakeOllama(default=lambda body: {"raw": json.dumps({"model": "llama3", "done": True})}) as fake:
        engine = open_engine(EngineConfig("ollama:llama3", host=fake.url, retries=0))
        with pytest.raises(ItemsFailed) as e:
            engine_generate(engine, _reqs(1))
    assert "another shape" in e.value.reason or "not in the server's format" in e.value.reason


def test_a_200_html_page_on_the_model_list_is_one_sentence():
    with FakeOpenAI(models_raw=HTML_PAGE) as fake:
        with pytest.raises(UserError, match=r"did not answer the model list like an OpenAI-compatible server"):
            open_engine(EngineConfig(fake.spec(), retries=0))


# ---------------------------------------------------------------- a connection closed mid-answer

def test_a_stream_closed_mid_answer_is_a_failure_not_a_short_answer():
    with FakeOpenAI(default=lambda body: {"content": "one two three four five six seven", **cut(400)}) as fake:
        engine = open_engine(EngineConfig(fake.spec(), retries=0))
        text = []
        with pytest.raises(ServerError, match="closed the stream before the end"):
            for chunk in stream_chat(engine, _reqs(1)[0]):
                text.append(chunk)
    assert text and "seven" not in "".join(text)      # some words came, then the hang-up: not a finished answer


def test_an_ollama_stream_closed_mid_answer_is_a_failure():
    with FakeOllama(default=lambda body: {"content": "one two three four five six", **cut(250)}) as fake:
        engine = open_engine(EngineConfig("ollama:llama3", host=fake.url, retries=0))
        with pytest.raises(ServerError, match="closed the stream before the end"):
            list(stream_chat(engine, _reqs(1)[0]))


def test_an_answer_cut_short_is_retried_then_failed():
    with FakeOpenAI(default=lambda body: {"content": "fine answer", **cut(30)}) as fake:
        engine = open_engine(EngineConfig(fake.spec(), retries=1, backoff=0.01))
        with pytest.raises(ItemsFailed) as e:
            engine_generate(engine, _reqs(1))
        assert fake.count("/v1/chat/completions") == 2
    assert "broke off" in e.value.reason


# ---------------------------------------------------------------- retries, the pool, the connection pool

def test_a_flaky_proxy_page_is_retried_and_the_answer_used():
    with FakeOpenAI(answers=[{"raw": HTML_PAGE}, {"status": 502}], default=lambda b: {"content": "ok"}) as fake:
        engine = open_engine(EngineConfig(fake.spec(), workers=1, retries=2, backoff=0.01))
        gens = engine_generate(engine, _reqs(1))
    assert gens[0].text == "ok" and fake.count("/v1/chat/completions") == 3


def test_a_down_server_mid_run_stops_the_run_at_once(closed_port):
    with FakeOpenAI(delay=0.05) as fake:
        engine = open_engine(EngineConfig(fake.spec(), workers=2, retries=1, backoff=0.01))
    # the server is gone now: the first failure stops the run, the rest are not asked
    t0 = time.perf_counter()
    with pytest.raises(ItemsFailed) as e:
        engine_generate(engine, _reqs(20))
    assert time.perf_counter() - t0 < 3 and len(e.value.failed) == 20
    assert "cannot reach a server at" in e.value.reason


def test_the_client_holds_at_most_workers_requests_at_once():
    with FakeOllama(delay=0.2) as fake:
        client = Client(fake.url, "fake", workers=2)
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        threads = [threading.Thread(target=client.json, args=("POST", "/api/chat", body)) for _ in range(6)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - t0
        client.close()
        assert fake.count("/api/chat") == 6 and fake.max_in_flight == 2 and took >= 0.55   # 3 rounds of 2


# ---------------------------------------------------------------- specs and hosts: one sentence each

@pytest.mark.parametrize("spec,fix", [
    ("openai:m@http://127.0.0.1:99999/v1", "not a number from 1 to 65535"),
    ("openai:m@http://127.0.0.1:0/v1", "port 0"),
    ("openai:m@http://:8080/v1", "not an http(s) URL"),
    ("ollama:", "name the model"),
    ("transformers:", "name the base model"),
])
def test_bad_engine_specs_are_one_sentence(spec, fix):
    with pytest.raises(UserError, match=fix.replace("(", r"\(").replace(")", r"\)")):
        EngineConfig(spec)


@pytest.mark.parametrize("host,fix", [
    ("127.0.0.1:notaport", "the port 'notaport' is not a number from 1 to 65535"),
    ("127.0.0.1:70000", "not a number from 1 to 65535"),
    ("ftp://127.0.0.1:11434", r"use host:port or an http\(s\) URL"),
])
def test_a_bad_OLLAMA_HOST_is_one_sentence(host, fix, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", host)
    with pytest.raises(UserError, match=fix):
        EngineConfig("ollama:llama3")
    with pytest.raises(UserError, match="OLLAMA_HOST"):
        open_judge(JudgeConfig("ollama:llama3"))


def test_ollama_host_forms(monkeypatch):
    from harness.engines import ollama_url
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert ollama_url() == "http://127.0.0.1:11434"
    assert ollama_url("0.0.0.0") == "http://0.0.0.0:11434"
    assert ollama_url("example.com:8000") == "http://example.com:8000"
    assert ollama_url("https://example.com") == "https://example.com:443"
    assert ollama_url(":9000") == "http://127.0.0.1:9000"


def test_judge_ollama_colon_is_not_silently_llama3():
    with pytest.raises(UserError, match="names no model"):
        JudgeConfig("ollama:")
    with pytest.raises(UserError, match="not a number from 1 to 65535"):
        JudgeConfig("openai:m@http://127.0.0.1:99999/v1")
    assert JudgeConfig("ollama").spec == "ollama:llama3"           # the bare backend's documented default


def test_the_cli_says_one_sentence_for_a_bad_port_and_host(monkeypatch, capsys, tmp_path):
    from harness.__main__ import COMMANDS
    from harness.cli import main
    rc = main(COMMANDS, ["run", "--model", "openai:m@http://127.0.0.1:99999/v1", "--eval-set", "instructions_own",
                         "--judge", "none", "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "99999" in err and "Traceback" not in err
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:notaport")
    rc = main(COMMANDS, ["run", "--model", "ollama:llama3", "--eval-set", "instructions_own", "--judge", "none",
                         "--limit", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "OLLAMA_HOST" in err and "notaport" in err and "Traceback" not in err


# ---------------------------------------------------------------- Ollama: the official client under the same policy

def test_a_dripping_ollama_stream_fails_within_twice_the_timeout_through_the_official_client():
    with FakeOllama(default=lambda body: {"content": "many words " * 50, **drip(0.3)}) as fake:
        engine = open_engine(EngineConfig("ollama:llama3", host=fake.url, timeout=TIMEOUT))
        t0 = time.perf_counter()
        with pytest.raises(ServerError, match="did not answer within 1.5 s"):
            list(stream_chat(engine, _reqs(1)[0]))
        took = time.perf_counter() - t0
        assert {r["agent"].split("/")[0] for r in fake.requests} == {"ollama-python"}
    assert took < 2 * TIMEOUT, took


def test_ollama_html_page_and_status_are_one_sentence_each_through_the_official_client():
    with FakeOllama(answers=[{"raw": HTML_PAGE}, {"raw": HTML_PAGE}, {"status": 500, "error": "boom"},
                             {"status": 500, "error": "boom"}]) as fake:
        engine = open_engine(EngineConfig("ollama:llama3", host=fake.url, retries=1, backoff=0.01, workers=1))
        with pytest.raises(ItemsFailed) as e:
            engine_generate(engine, _reqs(1))
        assert e.value.results == [None] and "502 Bad Gateway" in e.value.reason and fake.count() == 2
        with pytest.raises(ItemsFailed) as e:
            engine_generate(engine, _reqs(1))
        assert "answered 500" in e.value.reason and "boom" in e.value.reason and fake.count() == 4


def test_a_stopped_ollama_stream_hangs_up_and_frees_its_slot():
    with FakeOllama(default=lambda body: {"content": "w " * 200, **drip(0.002)}) as fake:
        engine = open_engine(EngineConfig("ollama:llama3", host=fake.url, workers=1, timeout=5))
        chunks = stream_chat(engine, _reqs(1)[0])
        assert next(chunks) and next(chunks)
        chunks.close()                          # the user pressed Stop: the slot must be free again at once
        fake.default = lambda body: "done now"
        got: list[str] = []
        again = threading.Thread(target=lambda: got.append("".join(stream_chat(engine, _reqs(1)[0]))), daemon=True)
        again.start()
        again.join(2)                           # with the only slot still held this would wait forever
        assert got == ["done now"]
