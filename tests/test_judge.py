"""The judge: score parsing, prompts, and the real `ollama` client talking to the fake Ollama server.

    python -m pytest tests/test_judge.py -q
"""
from __future__ import annotations

import time

import pytest

from harness.errors import UserError
from harness.http import ItemsFailed
from harness.testing.fake_ollama import FAKE_DIGEST, FakeOllama
from harness.models import model_fingerprint
from harness.judge import (SCORE_SCHEMA, JudgeConfig, JudgeRequest, judge_many, list_prompts, load_prompt,
                           open_judge, parse_score, parse_spec, render_prompt)

# Realistic judge answers (llama3's habits: prose around the number, markdown, other scales, JSON in fences).
PARSE_TABLE = [
    ("85", 85),
    ("85.", 85),
    (" **85**\n", 85),
    ("0", 0),
    ('{"score": 72, "reason": "Accurate but terse."}', 72),
    ('{"score": "72", "reason": "ok"}', 72),
    ('{"Score": 64}', 64),
    ('Here is my evaluation:\n```json\n{"score": 60, "reason": "Misses the second part."}\n```', 60),
    ("Sure! Based on the criteria, {\"score\": 77, \"reason\": \"good\"} is my verdict.", 77),
    ("I'd rate the model response `The capital of France is Paris, home to 2 million people.` an 85 out of 100.", 85),
    ("I'd rate the model response an 85 out of 100.\n\nThe response is accurate but could be more concise.", 85),
    ("**Score:** 72/100\n\nThe response is mostly accurate.", 72),
    ("Score: 9/10", 90),
    ("Rating: 7 out of 10", 70),
    ("I give it 4 stars out of 5.", 80),
    ("9 points out of 10: clear and correct.", 90),
    ("I would rate it 4.5/5", 90),
    ("8.5/10", 85),
    ("I would give it a score of 92.", 92),
    ("**Score: 40**\n\nThe response ignores the input.", 40),
    ("85\n\nThe response correctly identifies the capital.", 85),
    ("Score: 85%", 85),
    ("My score is 0.", 0),
    ('{"score": 85, "reason": "The response is trunc', 85),
    ("To evaluate the model response, I'll compare it with the correct output.\n\nThe correct output is "
     "`The mouse was chased by the cat.`\n\nThe model response is `The mouse was chased by the cat.`\n\n"
     "The response exactly matches. Therefore, I would score the model response 100 out of 100.", 100),
    # no score: kept as unparsed, never guessed
    ("I cannot score this response without more context.", None),
    ("The response has 3 errors in 2 sentences.", None),
    ("", None),
    ("Score: N/A", None),
    ("Score: 150/100", None),
    ('{"score": 101, "reason": "too good"}', None),
    ("garbage ###", None),
    # negative or out-of-range scores are unparsed, never sign-stripped or clamped (issue 12 part 5)
    ("Rating: -100", None),
    ('{"score": -3}', None),
    ('{"score": -3, "reason": "bad"}', None),
    ("-5", None),
    ("I give it -2/10", None),
]


@pytest.mark.parametrize("text,expected", PARSE_TABLE)
def test_parse_score_table(text, expected):
    assert parse_score(text)[0] == expected


@pytest.mark.parametrize("text,reason", [("Rating: -100", "score -100 is outside 0-100"),
                                         ('{"score": -3}', "score -3 is outside 0-100"),
                                         ("Score: 150/100", "score 150 is outside 0-100"),
                                         ("12/10", "score 12 is outside 0-10")])
def test_out_of_range_scores_keep_the_reason(text, reason):
    assert parse_score(text) == (None, reason)


def test_out_of_range_answer_is_unparsed_with_its_reason_through_the_server():
    with FakeOllama(answers=['{"score": -3, "reason": "x"}', '{"score": -3, "reason": "x"}']) as fake:
        with open_judge(_cfg(fake, workers=1)) as judge:
            (j,) = judge_many(judge, [_req(1)], progress=False)
    assert j.parsed is False and j.score is None and j.reason == "score -3 is outside 0-100"


def test_timeout_default_is_60_seconds():
    assert JudgeConfig().timeout == 60


def test_server_that_connects_but_never_answers_times_out_once_with_a_sentence():
    # the fake accepts the connection, then sleeps far longer than the judge's timeout
    with FakeOllama(default=lambda body: {"content": '{"score": 50, "reason": "x"}', "delay": 30}) as fake:
        with open_judge(_cfg(fake, workers=1, timeout=1, retries=3)) as judge:
            t0 = time.perf_counter()
            with pytest.raises(UserError) as err:
                judge_many(judge, [_req(1), _req(2)], progress=False)
            took = time.perf_counter() - t0
            asked, url = fake.count("/api/chat"), fake.url
    msg = str(err.value)
    assert f"the judge server at {url} connected but did not answer within 1 s" in msg
    assert "--judge-timeout" in msg and msg.startswith("2 of 2 judgments failed")
    assert asked == 1 and took < 5            # one timed-out attempt, no silent retries


def test_openai_server_that_never_answers_times_out_once():
    with FakeOllama(default=lambda body: {"content": "x", "delay": 30}) as fake:
        spec = f"openai:llama3@{fake.url}/v1"
        with open_judge(JudgeConfig(spec, timeout=1, backoff=0.01, workers=1)) as judge:
            with pytest.raises(UserError, match="connected but did not answer within 1 s"):
                judge_many(judge, [_req(1)], progress=False)
            assert fake.count("/v1/chat/completions") == 1


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_a_200_answer_that_is_not_json_fails_that_item_and_the_run_goes_on(backend):
    def answer(body):      # a proxy's HTML page, always, for the item about response 1
        text = body["messages"][-1]["content"]
        return {"raw": "<html>502 Bad Gateway</html>"} if "France? (1)" in text else '{"score": 70, "reason": "ok"}'

    with FakeOllama(default=answer) as fake:
        cfg = (_cfg(fake, workers=1, retries=1) if backend == "ollama"
               else JudgeConfig(f"openai:llama3@{fake.url}/v1", backoff=0.01, retries=1, workers=1))
        done = []
        with open_judge(cfg) as judge, pytest.raises(ItemsFailed) as err:
            judge_many(judge, [_req(i) for i in range(3)], on_done=lambda r, j: done.append(r.id), progress=False)
        asked = fake.count("/api/chat" if backend == "ollama" else "/v1/chat/completions")
    out = err.value.results
    assert out[1] is None and [out[0].score, out[2].score] == [70, 70]      # the page is no verdict
    assert done == ["0", "2"]                        # only real verdicts reach on_done (the store)
    assert "not" in err.value.failed[1] and "JSON" in err.value.failed[1] and "502 Bad Gateway" in err.value.failed[1]
    assert str(err.value).startswith("1 of 3 judgments failed (")
    assert asked == 4                                # retried once, then failed; the run went on


@pytest.mark.parametrize("text", ["Score: 1e9", "Score: 1E3", '{"score": "1e9"}', "I'd rate it 2e5 out of 100",
                                  "Score: \u22125", "Rating: \u221272/100", '{"score": "-3"}'])
def test_an_exponent_or_a_unicode_minus_is_out_of_range_never_a_score(text):
    score, why = parse_score(text)
    assert score is None and "outside 0-100" in why, (text, score, why)


def test_parse_score_keeps_the_json_reason():
    assert parse_score('{"score": 55, "reason": "Half right."}') == (55.0, "Half right.")


# ---------------------------------------------------------------- specs, config, prompts

def test_parse_spec_forms():
    assert parse_spec("ollama:llama3") == ("ollama", "llama3", "")
    assert parse_spec("ollama") == ("ollama", "llama3", "")
    assert parse_spec("openai:m@http://localhost:8000") == ("openai", "m", "http://localhost:8000/v1")
    assert parse_spec("openai:llama3@http://h:11434/v1/") == ("openai", "llama3", "http://h:11434/v1")
    assert parse_spec("transformers") == ("transformers", "smollm2-135m-instruct", "")
    assert parse_spec("transformers:smollm2-135m-instruct+my-adapter") == (
        "transformers", "smollm2-135m-instruct", "my-adapter")


@pytest.mark.parametrize("spec,fix", [("gpt4", "ollama:<model>"), ("", "ollama:<model>"),
                                      ("openai:m", "openai:llama3@http"), ("openai:m@localhost:8000", "server URL")])
def test_bad_spec_names_the_forms(spec, fix):
    with pytest.raises(UserError, match=fix):
        JudgeConfig(spec)


def test_config_validated():
    with pytest.raises(UserError, match="workers"):
        JudgeConfig(workers=0)
    with pytest.raises(UserError, match="temperature"):
        JudgeConfig(temperature=-1)
    assert JudgeConfig().options() == {"temperature": 0.0, "seed": 123, "num_ctx": 4096, "num_predict": 256}


def test_prompt_files_load_and_render():
    assert {"judge_chat_v1", "judge_poem_v1"} <= set(list_prompts())
    chat = load_prompt("chat", "v1")
    assert chat.text.startswith("Given the input `{input}` and correct output `{output}`, score the model response")
    poem = load_prompt("poem", "v1")
    assert "{response}" in poem.text and "imagery" in poem.text
    with pytest.raises(UserError, match="judge_chat_v1"):
        load_prompt("chat", "v9")
    # one pass: a response that contains a placeholder is not substituted again; other braces stay
    assert render_prompt("a {response} b {x}", {"response": "{output}"}) == "a {output} b {x}"


# ---------------------------------------------------------------- the real client against the fake server

def _req(i: int, response: str = "Paris.") -> JudgeRequest:
    return JudgeRequest(str(i), "chat", {"instruction": f"What is the capital of France? ({i})", "input": "",
                                         "output": "The capital of France is Paris.", "response": response})


def _cfg(fake: FakeOllama, **kw) -> JudgeConfig:
    return JudgeConfig("ollama:llama3", host=fake.url, backoff=0.01, **kw)


def test_options_temperature_seed_and_schema_reach_the_server():
    with FakeOllama() as fake, open_judge(_cfg(fake, seed=7)) as judge:
        assert judge.digest == FAKE_DIGEST
        out = judge_many(judge, [_req(1), _req(2)], progress=False)
        bodies = fake.chat_bodies()
    assert [j.parsed for j in out] == [True, True]
    assert len(bodies) == 2
    for b in bodies:
        assert b["options"]["temperature"] == 0 and b["options"]["seed"] == 7 and b["options"]["num_ctx"] == 4096
        assert "temperature" not in b and "seed" not in b          # inside options, not at the top (the book's bug)
        assert b["format"] == SCORE_SCHEMA and b["stream"] is False
        assert "score the model response `Paris.`" in b["messages"][0]["content"]


def test_verbose_answers_are_parsed_and_garbage_is_kept_unparsed():
    answers = ["I'd rate the model response an 85 out of 100.", "**Score:** 72/100", "Score: 9/10",
               "garbage", "more garbage"]
    with FakeOllama(answers=answers) as fake, open_judge(_cfg(fake, workers=1, parse_retries=1)) as judge:
        out = judge_many(judge, [_req(i) for i in range(4)], progress=False)
        n_requests = fake.count("/api/chat")
        last = fake.chat_bodies()[-1]["messages"]
    assert [j.score for j in out] == [85, 72, 90, None]
    assert out[3].parsed is False and "garbage" in out[3].raw and "more garbage" in out[3].raw
    assert out[3].attempts == 2 and n_requests == 5                  # one bounded re-ask, then kept
    assert last[-2] == {"role": "assistant", "content": "garbage"} and "score" in last[-1]["content"]


def test_http_500_is_retried_with_backoff():
    with FakeOllama(answers=[{"status": 500}, {"status": 503}, '{"score": 66, "reason": "x"}']) as fake:
        with open_judge(_cfg(fake, workers=1)) as judge:
            out = judge_many(judge, [_req(1)], progress=False)
        assert out[0].score == 66 and fake.count("/api/chat") == 3


def test_persistent_500_fails_clearly_within_seconds():
    with FakeOllama(default=lambda body: {"status": 500, "error": "boom"}) as fake:
        with open_judge(_cfg(fake, retries=2)) as judge:
            t0 = time.perf_counter()
            with pytest.raises(UserError, match=r"3 of 3 judgments failed .*kept failing \(500: boom\)"):
                judge_many(judge, [_req(i) for i in range(3)], progress=False)
            assert time.perf_counter() - t0 < 10



def test_server_down_fails_fast_with_the_fix(closed_port):
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"is Ollama running\? start it with `ollama serve`"):
        open_judge(JudgeConfig("ollama:llama3", host=f"127.0.0.1:{closed_port}"))
    assert time.perf_counter() - t0 < 10


def test_ollama_host_env_is_respected(monkeypatch):
    with FakeOllama() as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        with open_judge(JudgeConfig("ollama:llama3")) as judge:
            judge_many(judge, [_req(1)], progress=False)
        assert fake.count("/api/chat") == 1 and fake.count("/api/tags") == 1


def test_model_not_pulled_says_ollama_pull():
    with FakeOllama(models=("mistral:latest",)) as fake:
        with pytest.raises(UserError, match=r"not served .*it serves: mistral:latest \(`ollama pull llama3`"):
            open_judge(_cfg(fake))
        assert fake.count("/api/chat") == 0


def test_model_removed_mid_run_says_ollama_pull():
    err = {"status": 404, "error": 'model "llama3" not found, try pulling it first'}
    with FakeOllama(answers=[err]) as fake, open_judge(_cfg(fake, workers=1)) as judge:
        with pytest.raises(UserError, match="ollama pull llama3"):
            judge_many(judge, [_req(1)], progress=False)


def test_workers_bound_the_concurrency():
    with FakeOllama(delay=0.15) as fake:
        with open_judge(_cfg(fake, workers=3)) as judge:
            out = judge_many(judge, [_req(i) for i in range(9)], progress=False)
        assert all(j.parsed for j in out)
        assert fake.max_in_flight == 3
        fake.reset()
        with open_judge(_cfg(fake, workers=1)) as judge:
            judge_many(judge, [_req(i) for i in range(3)], progress=False)
        assert fake.max_in_flight == 1


def test_prompt_too_long_for_num_ctx_is_refused_before_any_request():
    with FakeOllama() as fake, open_judge(_cfg(fake, num_ctx=512)) as judge:
        with pytest.raises(UserError, match="num_ctx"):
            judge_many(judge, [_req(1), _req(2, response="word " * 2000)], progress=False)
        assert fake.count("/api/chat") == 0


def test_fake_server_streams_ndjson_like_ollama():
    import ollama
    with FakeOllama(answers=["I'd rate the model response an 85 out of 100."]) as fake:
        parts = list(ollama.Client(host=fake.url).chat(model="llama3", messages=[{"role": "user", "content": "x"}],
                                                        stream=True))
    assert len(parts) > 3 and parts[-1].done and not parts[0].done
    assert parse_score("".join(p.message.content for p in parts))[0] == 85


def test_openai_compatible_backend():
    with FakeOllama(answers=["Score: 8/10"]) as fake:
        with open_judge(JudgeConfig(f"openai:llama3@{fake.url}/v1", backoff=0.01, workers=1)) as judge:
            out = judge_many(judge, [_req(1), _req(2)], progress=False)
        body = fake.chat_bodies()[0]
    assert out[0].score == 80 and out[1].parsed
    assert body["temperature"] == 0 and body["seed"] == 123
    assert body["response_format"]["json_schema"]["schema"] == SCORE_SCHEMA
    with FakeOllama(models=("qwen2:latest",)) as fake:
        with pytest.raises(UserError, match="not served.*qwen2"):
            open_judge(JudgeConfig(f"openai:llama3@{fake.url}/v1"))


def test_transformers_backend_in_process(tiny_llama_dir):
    cfg = JudgeConfig(f"transformers:{tiny_llama_dir}", max_answer_tokens=8, parse_retries=1)
    with open_judge(cfg) as judge:
        assert judge.complete_batch is not None and judge.digest == model_fingerprint(judge.lm.spec)
        out = judge_many(judge, [_req(1), _req(2)], progress=False)
    assert len(out) == 2
    for j in out:       # a random tiny model: parsed or not, the raw answer is kept, primed with the JSON prefix
        assert j.raw.startswith('{"score": ') and j.parsed == (j.score is not None)


def test_a_replaced_local_judge_model_gets_a_new_digest(tmp_path):
    """The in-process judge's digest is models.model_fingerprint: new weights in the same folder are a new judge, so
    its cached verdicts are never reused (the digest was the folder's path only)."""
    from tiny import build_llama
    d = build_llama(tmp_path / "judge-model")
    cfg = JudgeConfig(f"transformers:{d}", max_answer_tokens=8)
    digests = []
    for seed in (0, 0, 1):
        if seed:
            build_llama(d, seed=seed)          # the same folder, other weights
        with open_judge(cfg) as judge:
            digests.append(judge.digest)
    assert digests[0] == digests[1] != digests[2]
