"""The app's chat through a serving engine (python app.py --engine openai:<model>@<url>), against the fake
OpenAI-compatible server on 127.0.0.1: routing, streaming, stop, and the fallbacks with their notices."""
from __future__ import annotations

import json
import threading

import pytest

from harness.app.server import close_servers, is_server_spec, server_route, server_stream
from harness.app.state import AppState, Sampling
from harness.errors import UserError
from harness.fake_openai import FakeOpenAI


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
