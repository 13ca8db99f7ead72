"""The app's chat through a serving engine (python app.py --engine openai:<model>@<url>), against the fake
OpenAI-compatible server on 127.0.0.1: routing, streaming, stop, and the fallbacks with their notices."""
from __future__ import annotations

import json
import threading
import time

import pytest

from harness.app.server import close_servers, is_server_spec, server_route, server_stream
from harness.app.state import AppState, Sampling, status_line
from harness.errors import UserError
from harness.testing.fake_openai import FakeOpenAI


@pytest.fixture(autouse=True)
def _fresh_servers():
    close_servers()
    yield
    close_servers()


def test_routing_sends_plain_chat_to_the_server_and_says_why_when_it_cannot():
    assert not is_server_spec("transformers") and not is_server_spec("llama.cpp")
    assert server_route("transformers", None) == (None, "")
    with FakeOpenAI(models=["smol", "smollm2-135m-alpaca"]) as fake:
        spec = fake.spec("smol")
        srv, notice = server_route(spec, None)
        assert srv is not None and notice == ""
        assert server_route(spec, "smollm2-135m-alpaca")[0] is srv          # an adapter served as a model id
        none, why = server_route(spec, "smollm2-135m-poem-zh")
        assert none is None and "does not serve the adapter smollm2-135m-poem-zh" in why
        assert "smollm2-135m-alpaca" in why and "python -m harness export smollm2-135m-poem-zh" in why
        assert server_route(spec, None, form="五言绝句") == (None, "the form constraint runs in process: "
                                                                  "using transformers for this poem")
    close_servers()
    down, why = server_route(spec, None)                                    # the fake is gone now
    assert down is None and "cannot reach a server at" in why and why.endswith("using transformers")


def test_a_streamed_answer_is_labelled_counted_and_stops_on_request():
    state = AppState()
    with FakeOpenAI(models=["smol"]) as fake:
        srv, _ = server_route(fake.spec("smol"), None)
        outs = list(server_stream(state, srv, [{"role": "user", "content": "red green blue"}], "Be brief.", None,
                                  Sampling(temperature=0.0, max_new_tokens=16), "s1"))
        body = fake.chat_bodies()[-1]
        text, stats, shown, label, notice = outs[-1]
        assert text == "blue green red" and label == srv.config.spec and label.startswith("openai:smol@") and notice == ""
        assert [o[0] for o in outs[:3]] == ["", "blue", "blue green"]          # streamed, chunk by chunk
        assert body["messages"][0] == {"role": "system", "content": "Be brief."} and body["stream"] is True
        assert json.loads(shown) == body["messages"]
        assert stats.new_tokens == 3 and stats.finish_reason == "stop" and stats.extra["adapter"] == "base"
        fake.chunk_delay = 0.05
        got = []
        words = " ".join(f"w{i}" for i in range(80))
        for text, stats, *_ in server_stream(state, srv, [{"role": "user", "content": words}], "", None,
                                             Sampling(temperature=0.0, max_new_tokens=80), "s2"):
            got.append(text)
            if len(got) == 4:
                threading.Thread(target=state.stop, args=("s2",)).start()
        assert len(got[-1].split()) < 40 and stats.finish_reason == "cancelled"
    with pytest.raises(UserError, match="no message to answer"):
        list(server_stream(state, srv, [{"role": "user", "content": "  "}], "", None, Sampling(), "s3"))


# ---------------------------------------------------------------- the app's state on a server engine

@pytest.fixture(scope="module")
def chat_adapters(tiny_llama_dir, tmp_path_factory):
    from tiny import build_adapter
    folder = tmp_path_factory.mktemp("adapters")
    build_adapter(tiny_llama_dir, folder / "tiny-chat", kind="causal")
    return folder


def _answer(state: AppState, session: str, text: str, adapter: str = "base", stop_after: int = 0,
            **sampling) -> tuple[str, dict]:
    """Send `text` through the chat tab's own functions; (the rendered answer, the info of its last update).
    stop_after=N: press Stop (from another thread, as the page does) once N updates have arrived."""
    from harness.app import chat as C
    C.submit(state, session, text, adapter=adapter, sampling=Sampling(**{"temperature": 0.0, **sampling}))
    info: dict = {}
    for n, (_, info) in enumerate(C.generate_pending(state, session), 1):
        if stop_after and n == stop_after:
            threading.Thread(target=state.stop, args=(session,)).start()
    return C.render(state, session)[-1]["content"], info


def test_the_chat_tab_streams_the_servers_text_and_labels_it(tiny_llama_dir, chat_adapters):
    from harness.app import chat as C
    with FakeOpenAI(models=["smol", "tiny-chat"]) as fake:
        state = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters, engine=fake.spec("smol"))
        C.submit(state, "s", "one two three", sampling=Sampling(temperature=0.0, max_new_tokens=16))
        shown = [info.get("engine") and C.render(state, "s")[-1]["content"] for _, info in
                 C.generate_pending(state, "s")]
        answer = C.render(state, "s")[-1]["content"]
        assert answer.startswith("three two one\n") and f"· {fake.spec('smol')}/v1" in answer
        assert "fallback" not in answer and "⏹" not in answer
        assert any(s and s.startswith("three two ▍") for s in shown), "streamed, chunk by chunk"
        body = fake.chat_bodies()[-1]
        assert body["model"] == "smol" and body["max_tokens"] == 16 and body["messages"][-1]["content"] == "one two three"
        answer, info = _answer(state, "s", "red green", adapter="tiny-chat")       # the adapter as a served model id
        assert answer.startswith("green red\n") and "adapter tiny-chat" in answer and fake.chat_bodies()[-1]["model"] == "tiny-chat"
        assert info["engine"] == fake.spec("smol") + "/v1" and "engine_notice" not in info
        assert [m["content"] for m in fake.chat_bodies()[-1]["messages"]] == ["one two three", "three two one", "red green"]
        assert f"`{fake.spec('smol')}` for chat, free poems and Compare" in status_line(state)


def test_stop_hangs_up_on_the_server_and_marks_the_answer_stopped(tiny_llama_dir, chat_adapters):
    with FakeOpenAI(models=["smol"]) as fake:
        fake.chunk_delay = 0.05
        state = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters, engine=fake.spec("smol"))
        words = " ".join(f"w{i}" for i in range(100))
        answer, info = _answer(state, "s", words, stop_after=5, max_new_tokens=100)
        assert "⏹ stopped by you" in answer and info["finish_reason"] == "cancelled"
        time.sleep(0.3)
        assert 1 <= len(answer.split("\n\n")[0].split()) < 40 and fake.streamed < 50, "the server stopped writing"
        assert state.stop("s") == 0, "nothing left running"


def test_an_adapter_the_server_does_not_serve_falls_back_with_the_notice(tiny_llama_dir, chat_adapters):
    from harness.app.state import chat_stream
    from harness.app.poem import poem_stream
    with FakeOpenAI(models=["smol"]) as fake:
        state = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters, engine=fake.spec("smol"))
        answer, info = _answer(state, "s", "hello there", adapter="tiny-chat", max_new_tokens=6)
        assert fake.count() == 0, "nothing was sent to the server"
        assert info["engine"] == "transformers" and "does not serve the adapter tiny-chat" in info["engine_notice"]
        assert f"transformers ({fake.spec('smol')} fallback)" in answer and "adapter tiny-chat" in answer
        *_, last = chat_stream(state, [{"role": "user", "content": "hello there"}], "", "tiny-chat",
                               Sampling(temperature=0.0, max_new_tokens=6), "s2")
        assert last[0] == answer.split("\n\n*—")[0], "the same text as transformers writes it"
        *_, (poem, report, pinfo) = poem_stream(state, "春夜", "中文", "五言绝句",
                                                sampling=Sampling(temperature=0.0, max_new_tokens=40))
        assert pinfo["engine"] == "transformers" and "form constraint runs in process" in pinfo["engine_notice"]
        *_, (_, _, free) = poem_stream(state, "春夜", "中文", "五言绝句", enforce_form=False,
                                       sampling=Sampling(temperature=0.0, max_new_tokens=8))
        assert free["engine"] == fake.spec("smol") + "/v1" and fake.count() == 1, "a free poem goes to the server"


def test_a_down_server_falls_back_and_the_status_line_says_so(tiny_llama_dir, chat_adapters):
    fake = FakeOpenAI(models=["smol"]).start()
    state = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters, engine=fake.spec("smol"))
    answer, info = _answer(state, "s", "a b c", max_new_tokens=6)
    assert answer.startswith("c b a\n") and info["engine"] == fake.spec("smol") + "/v1"
    fake.stop()                                          # the server goes away after it answered once
    answer, info = _answer(state, "s", "a b c", max_new_tokens=6)
    assert info["engine"] == "transformers" and "cannot reach a server at" in info["engine_notice"]
    assert info["engine_notice"].endswith("using transformers") and "fallback" in answer and "⚠ failed" not in answer
    assert "engine:** transformers ⚠ cannot reach a server" in status_line(state)
    answer, info = _answer(state, "s", "d e", max_new_tokens=6)        # still down: checked again, same notice
    assert info["engine"] == "transformers" and "cannot reach a server at" in info["engine_notice"]
    with FakeOpenAI(models=["smol"]) as back:             # a server back up (on another port: a new spec)
        state.engine = back.spec("smol")
        answer, info = _answer(state, "s", "x y", max_new_tokens=6)
        assert answer.startswith("y x\n") and "engine_notice" not in info
        assert "⚠" not in status_line(state)


def test_prepare_reaches_the_server_and_names_it_when_down(tiny_llama_dir, chat_adapters, closed_port):
    state = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters,
                     engine=f"openai:smol@http://127.0.0.1:{closed_port}")
    state.prepare(warmup=False)
    assert state.phase == "ready" and "cannot reach a server at" in state.engine_note


def test_app_engine_accepts_server_specs_and_refuses_others_in_one_sentence(capsys):
    import app as app_module
    from harness.app.server import app_engine
    assert app_engine("transformers") == "transformers" and app_engine("llama.cpp") == "llama.cpp"
    assert app_engine("openai:smol@http://127.0.0.1:8080") == "openai:smol@http://127.0.0.1:8080/v1"
    assert app_engine("ollama:smollm2:135m") == "ollama:smollm2:135m"
    assert app_module.parse_args(["--engine", "openai:smol@http://127.0.0.1:8080"]).engine.startswith("openai:")
    assert app_module.pick_engine("ollama:llama3") == "ollama:llama3"
    for bad, says in [("vllm", "is not an engine: use auto, transformers, llama.cpp, openai:<model>@<url>"),
                      ("openai:smol", "write openai:<model>@<server url>")]:
        with pytest.raises(UserError, match=re_escape(says)):
            app_engine(bad)
        assert app_module.main(["--engine", bad]) == 2
        err = capsys.readouterr()
        assert err.out == "" and len(err.err.strip().splitlines()) == 1 and says in err.err and "Traceback" not in err.err


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


def test_compare_sends_both_sides_as_two_concurrent_server_requests_and_stops(tiny_llama_dir, chat_adapters):
    from harness.app import compare as K
    with FakeOpenAI(models=["smol", "tiny-chat"], delay=0.3) as fake:
        state = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters, engine=fake.spec("smol"))
        K.start(state, "s", "one two three", "tiny-chat", Sampling(temperature=0.0, max_new_tokens=16))
        t0 = time.perf_counter()
        views = list(K.stream(state, "s"))
        wall = time.perf_counter() - t0
        last = views[-1]
        assert (last["left"], last["right"], last["status"]) == ("three two one", "three two one", "done")
        assert any("two concurrent requests to openai:smol@" in v["status"] for v in views)
        assert fake.max_in_flight == 2 and wall < 0.55, "both sides at once, not one after the other"
        assert sorted(b["model"] for b in fake.chat_bodies()) == ["smol", "tiny-chat"]
        assert last["headings"] == (f"Base: {fake.spec('smol')}/v1", "Fine-tuned: tiny-chat")
        assert last["info"]["engine"].startswith("openai:smol@") and last["info"]["tuned"]["new_tokens"] == 3
        fake.delay, fake.chunk_delay = 0.0, 0.05
        words = " ".join(f"w{i}" for i in range(80))
        K.start(state, "s", words, "tiny-chat", Sampling(temperature=0.0, max_new_tokens=80))
        for n, v in enumerate(K.stream(state, "s")):
            if n == 4:
                threading.Thread(target=state.stop, args=("s",)).start()
        assert v["status"] == "⏹ stopped by you" and len(v["left"].split()) < 40 and len(v["right"].split()) < 40
        assert state.stop("s") == 0


def test_compare_stays_in_process_with_a_notice_when_the_server_lacks_the_adapter(tiny_llama_dir, chat_adapters):
    from harness.app import compare as K
    with FakeOpenAI(models=["smol"]) as fake:
        state = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters, engine=fake.spec("smol"))
        base, tuned, *_, info = K.compare_once(state, "hello there", "tiny-chat",
                                               Sampling(temperature=0.0, max_new_tokens=6), judge_it=False)
        view = K.view(state, state.session_data("api")["compare"])
        assert fake.count() == 0 and info["one_batch"] is True and "engine" not in info
        assert "ℹ Compare: " in view["status"] and "does not serve the adapter tiny-chat" in view["status"]
        alone = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters)
        assert K.compare_once(alone, "hello there", "tiny-chat", Sampling(temperature=0.0, max_new_tokens=6),
                              judge_it=False)[:2] == (base, tuned), "the same texts as the in-process app"


class _BreakingServer:
    """An OpenAI-compatible server whose stream breaks after `good` chunks (a chunk that is not JSON): a server
    failing half-way through an answer, which the fake server above cannot do."""

    def __init__(self, good: int):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        outer = self
        self.good, self.posts = good, 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = json.dumps({"object": "list", "data": [{"id": "smol", "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i in range(outer.good):
                    chunk = {"choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: {broken\n\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.spec = f"openai:smol@http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("good", [0, 3])
def test_a_stream_that_breaks_falls_back_before_its_first_text_and_fails_after_it(tiny_llama_dir, chat_adapters, good):
    srv = _BreakingServer(good)
    try:
        state = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters, engine=srv.spec)
        answer, info = _answer(state, "s", "hello there", max_new_tokens=6)
        assert srv.posts == 1
        if good == 0:          # nothing shown yet: transformers writes the whole answer, with the notice
            assert info["engine"] == "transformers" and "not in the server's format" in info["engine_notice"]
            assert "fallback" in answer and "⚠ failed" not in answer
        else:                  # half an answer shown: it fails in one sentence, never finished by another engine
            assert answer.startswith("w0 w1 w2") and "⚠ failed:" in answer and "not in the server's format" in answer
            assert "fallback" not in answer and "Traceback" not in answer
    finally:
        srv.close()


def test_the_chat_tab_on_an_ollama_spec_uses_OLLAMA_HOST(tiny_llama_dir, chat_adapters, monkeypatch):
    from harness.testing.fake_ollama import FakeOllama
    with FakeOllama(models=["smol"], default=lambda body: "an answer from ollama") as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        state = AppState(model=str(tiny_llama_dir), adapters_folder=chat_adapters, engine="ollama:smol")
        answer, info = _answer(state, "s", "hi there", max_new_tokens=8)
        assert answer.startswith("an answer from ollama\n") and "· ollama:smol" in answer
        assert info["engine"] == "ollama:smol" and fake.count("/api/chat") == 1
        assert fake.chat_bodies()[-1]["messages"][-1]["content"] == "hi there"
