"""The Gradio app driven through gradio_client: build_demo() launched in-process on a free port with a tiny model
and tiny adapters (a chat LoRA and a spam classifier) in a temporary adapters folder. Plus the app's logic
functions called directly (harness/app/).

    python -m pytest tests/test_app.py -q
"""
from __future__ import annotations

import gc
import inspect
import threading
import time
import weakref
from pathlib import Path

import pytest
from tiny import build_adapter, free_port

import app as app_module
from harness.app.chat import chat_turn
from harness.app.classify import (PREDICTIONS_MAX_AGE, default_classifier, predictions_path, read_upload,
                                  spam_examples, spam_verdict)
from harness.app.compare import compare_once
from harness.app.poem import form_report, poem_forms, poem_instruction, poem_lang
from harness.app.streaming import clean_tail
from harness.app.state import AppState, Limits, Sampling, auto_threads, message_text, status_line
from harness.leaderboard_view import leaderboard_view
from harness.errors import UserError
from harness.classify import classify
from harness.generation import GenerationConfig, generate_batch, generate_pair

GREEDY = dict(temperature=0.0, top_p=0.9, seed=0, rep=1.0)


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("adapters")
    build_adapter(tiny_llama_dir, folder / "tiny-chat", kind="causal")
    build_adapter(tiny_llama_dir, folder / "tiny-spam", kind="seq_cls")
    return folder


@pytest.fixture(scope="module")
def served(tiny_llama_dir, adapters, tmp_path_factory):
    """(url, state) of the app on a free port; the state is shared with the tests to look inside."""
    state = AppState(model=str(tiny_llama_dir), adapters_folder=adapters,
                       results_folder=tmp_path_factory.mktemp("results"), judge_host=f"127.0.0.1:{free_port()}")
    state.warmup()
    demo = app_module.build_demo(state)
    port = free_port()
    app_module.launch(demo, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/", state
    demo.close()


@pytest.fixture
def client(served):
    from gradio_client import Client
    return Client(served[0], verbose=False)


def text_of(content) -> str:
    return message_text(content)


def chat_args(message, history=(), adapter="base", max_new_tokens=24, system=""):
    g = GREEDY
    return (message, list(history), system, adapter, g["temperature"], g["top_p"], max_new_tokens, g["seed"],
            g["rep"])


def expected_chat(lm, messages, adapter, max_new_tokens=24) -> str:
    prompt = lm.render_chat(messages, None, max_new_tokens)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    return clean_tail(generate_batch(lm, [prompt], cfg, adapter=adapter)[0].text)


def clean(text: str) -> str:
    """What the Chatbot shows of a reply (Gradio runs inspect.cleandoc on message text)."""
    return inspect.cleandoc(text)


# ---------------------------------------------------------------- endpoints

def test_stable_api_names(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/chat", "/classify", "/poem", "/compare"} <= names


def test_chat_streams_and_continues_the_conversation(client, served, slow_model):
    lm = served[1].lm
    job = client.submit(*chat_args("Hello", adapter="tiny-chat"), api_name="/chat")   # 24 slowed tokens
    updates = list(job)
    history, cleared, prompt, info = job.outputs()[-1]
    assert len(updates) > 2, "the reply streams in several updates"
    assert cleared == ""
    assert [m["role"] for m in history] == ["user", "assistant"]
    want = expected_chat(lm, [{"role": "user", "content": "Hello"}], "tiny-chat")
    assert text_of(history[1]["content"]) == clean(want)
    assert prompt == lm.render_chat([{"role": "user", "content": "Hello"}], None, 24)
    assert info["adapter"] == "tiny-chat" and info["new_tokens"] == 24 and info["tokens_per_s"] > 0
    assert info["prompt_tokens"] == lm.count_tokens(prompt)

    # the second turn: the history as returned goes back in, and the prompt holds both turns
    history2, _, prompt2, _ = client.predict(*chat_args("What is the capital of France?", history), api_name="/chat")
    assert len(history2) == 4 and text_of(history2[2]["content"]) == "What is the capital of France?"
    assert "Hello" in prompt2 and "What is the capital of France?" in prompt2
    assert prompt2.startswith(prompt[: len(prompt) - len("<|im_start|>assistant\n")])


def test_long_history_is_trimmed_to_the_context(client, served):
    lm = served[1].lm
    long_turn = "spam ham yes no answer classify message label " * 40          # ~300 tokens per turn
    history = []
    for i in range(3):
        history += [{"role": "user", "content": [{"type": "text", "text": f"{i} {long_turn}"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}]
    _, _, prompt, info = client.predict(*chat_args("Hello", history, max_new_tokens=16), api_name="/chat")
    assert info["history_trimmed"] is True
    assert lm.count_tokens(prompt) + 16 <= lm.context_length
    assert prompt.rstrip().endswith("<|im_start|>assistant") and "Hello" in prompt


@pytest.fixture
def slow_model(served):
    """Every forward pass of the model takes >= 20 ms and is counted (so a stop can be timed)."""
    lm = served[1].lm
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        time.sleep(0.02)

    handle = lm.model.get_input_embeddings().register_forward_hook(hook)
    yield calls
    handle.remove()


def wait_for(predicate, timeout=10.0):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if predicate():
            return time.perf_counter() - t0
        time.sleep(0.02)
    raise AssertionError("timed out")


@pytest.mark.parametrize("how", ["cancel", "stop"])
def test_stop_halts_the_model_not_just_the_display(client, served, slow_model, how):
    state = served[1]
    job = client.submit(*chat_args("Tell me a long story", max_new_tokens=400), api_name="/chat")
    wait_for(lambda: job.outputs() and text_of(job.outputs()[-1][0][-1]["content"]))   # some reply is shown
    stats = state.last_stats[client.session_hash]
    assert stats.finish_reason == "" and stats.new_tokens < 400
    t0 = time.perf_counter()
    if how == "cancel":
        job.cancel()                                   # what the UI's Stop (cancels=[chat]) does, from the API
    else:
        shown = client.predict(api_name="/stop")       # the Stop button's own callback: sets the stop event
        assert shown["finish_reason"] == "cancelled"   # ... waits for the model to halt, and says so
    wait_for(lambda: stats.finish_reason != "", timeout=5)
    stopped_in = time.perf_counter() - t0
    passes = slow_model["n"]
    time.sleep(0.5)
    assert slow_model["n"] == passes, "no forward pass after the stop"
    assert stats.finish_reason == "cancelled"
    assert stats.new_tokens < 200
    assert stopped_in < 3.0   # ~0.1 s measured; the bound is loose for a loaded CI machine
    if how == "stop":
        wait_for(lambda: job.done())
        history = job.outputs()[-1][0]
        assert text_of(history[-1]["content"]), "the partial reply is kept"


def test_four_concurrent_jobs_complete_with_their_own_answers(served):
    from gradio_client import Client
    url, state = served
    lm = state.lm
    asks = [("Hello", "base"), ("What is the capital of France?", "tiny-chat"),
            ("Hi mum, this is my new number.", "base"), ("Write a sonnet about the sea.", "tiny-chat")]
    want = [expected_chat(lm, [{"role": "user", "content": m}], a) for m, a in asks]
    clients = [Client(url, verbose=False) for _ in asks]       # four users
    jobs = [c.submit(*chat_args(m, adapter=a), api_name="/chat") for c, (m, a) in zip(clients, asks)]
    spam_job = clients[0].submit("Free entry! Win a prize now", "tiny-spam", 0.5, api_name="/classify")
    results = [j.result(timeout=120) for j in jobs]
    for (m, a), w, (history, _, _, info) in zip(asks, want, results):
        assert text_of(history[0]["content"]) == m
        assert text_of(history[1]["content"]) == clean(w)
        assert info["adapter"] == (a if a != "base" else "(none: base model)")
    label, _ = spam_job.result(timeout=60)
    direct = classify(lm, ["Free entry! Win a prize now"], adapter="tiny-spam")[0]
    assert {c["label"]: pytest.approx(c["confidence"], abs=1e-5) for c in label["confidences"]} == direct


def test_classify_with_the_adapter_and_zero_shot(client, served):
    lm = served[1].lm
    text = "Free entry! Win a prize now, claim your reward at the link."
    label, verdict = client.predict(text, "tiny-spam", 0.5, api_name="/classify")
    probs = {c["label"]: c["confidence"] for c in label["confidences"]}
    direct = classify(lm, [text], adapter="tiny-spam")[0]
    assert probs == pytest.approx(direct, abs=1e-5)
    assert f"**{spam_verdict(direct, 0.5)}**" in verdict and "tiny-spam" in verdict

    label0, verdict0 = client.predict(text, "base", 0.5, api_name="/classify")
    assert {c["label"]: c["confidence"] for c in label0["confidences"]} == pytest.approx(
        classify(lm, [text], None)[0], abs=1e-5)
    assert "zero-shot" in verdict0

    # the threshold decides: 0 -> always spam, 1 -> spam only if p(spam) == 1
    assert client.predict(text, "tiny-spam", 0.0, api_name="/classify")[1].startswith("**spam**")
    assert client.predict(text, "tiny-spam", 1.0, api_name="/classify")[1].startswith("**ham**")


def test_classify_file_gives_a_downloadable_csv(client, tmp_path):
    import pandas as pd
    from gradio_client import handle_file

    good = tmp_path / "msgs.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": ["Win a prize now", "See you at noon, mum", "=cmd|' /C calc'!A0"],
                  "label": ["spam", "ham", "ham"]}).to_csv(good, index=False)
    out, summary, preview = client.predict(handle_file(str(good)), "tiny-spam", 0.5, api_name="/classify_file")
    df = pd.read_csv(out)
    # every input column kept, then the CLI's names (python -m harness classify): label, p_<label>
    assert list(df.columns) == ["id", "text", "label_given", "label", "p_ham", "p_spam", "correct"]
    assert list(df["id"]) == [1, 2, 3] and len(df) == 3 and set(df["label"]) <= {"spam", "ham"}
    assert (abs(df["p_ham"] + df["p_spam"] - 1) < 1e-5).all()
    assert df["text"][2].startswith("'="), "a formula-looking message is defused for spreadsheets"
    assert "3 messages" in summary and "accuracy" in summary

    lines = tmp_path / "msgs.txt"
    lines.write_text("Win a prize now\n\nSee you at noon\n", encoding="utf-8")
    out2, summary2, _ = client.predict(handle_file(str(lines)), "base", 0.5, api_name="/classify_file")
    assert len(pd.read_csv(out2)) == 2 and "zero-shot" in summary2

    bad = tmp_path / "bad.csv"
    bad.write_text("message,category\nhello,ham\n", encoding="utf-8")
    with pytest.raises(Exception, match="missing column.*text.*message, category"):
        client.predict(handle_file(str(bad)), "tiny-spam", 0.5, api_name="/classify_file")


def test_poem_streams_with_a_form_check(client, served):
    lm = served[1].lm
    job = client.submit("春夜", "中文", "五言绝句", "base", 0.0, 0.9, 32, 0, 1.0, False, api_name="/poem")
    updates = list(job)
    poem, summary, check, prompt, info = job.outputs()[-1]
    assert len(updates) > 2
    assert prompt == lm.render_instruction("写一首五言绝句，题目：春夜")
    cfg = GenerationConfig(max_new_tokens=32, repetition_penalty=1.0)
    assert poem == clean_tail(generate_batch(lm, [prompt], cfg, adapter=None)[0].text).strip()
    assert check["expected_lines"] == 4 and check["expected_chars"] == 5 and "五言绝句" in summary
    assert summary.startswith("**Form check: OK.**" if check["ok"] else "**Form check: not a 五言绝句.**")
    assert not check["ok"] and info["form_constrained"] is False     # the random tiny model alone cannot

    # the default: the form is kept while decoding, so even the random tiny model writes a 五言绝句
    poem, summary, check, _, info = client.predict("春夜", "中文", "五言绝句", "base", 0.0, 0.9, 96, 0, 1.0,
                                                   api_name="/poem")
    assert check["ok"] and summary.startswith("**Form check: OK.**") and info["form_constrained"] is True
    budget = info["max_new_tokens_used"]            # derived from the form, not the slider's 96
    assert budget > 96 or budget >= 4 * (5 * 3 + 2)
    assert poem == generate_batch(lm, [prompt], GenerationConfig(max_new_tokens=budget, form="五言绝句"))[0].text.strip()

    _, _, check_en, prompt_en, _ = client.predict("the sea", "English", "sonnet", "base", 0.7, 0.9, 16, 3, 1.1,
                                                  api_name="/poem")
    assert "Write a sonnet about the sea." in prompt_en and check_en["expected_lines"] == 14
    with pytest.raises(Exception, match="not a zh form"):
        client.predict("春夜", "中文", "sonnet", "base", 0.7, 0.9, 16, 0, 1.1, api_name="/poem")


def test_compare_base_and_adapter_in_one_batch_without_a_judge(client, served):
    lm = served[1].lm
    base, tuned, s_base, s_tuned, notice, prompt, info = client.predict(
        "Rewrite the sentence in passive voice.", "tiny-chat", 0.0, 0.9, 16, 0, 1.0, api_name="/compare")
    want_base, want_tuned = generate_pair(lm, prompt, "tiny-chat", GenerationConfig(max_new_tokens=16,
                                                                                     repetition_penalty=1.0))
    assert (base, tuned) == (clean_tail(want_base.text), clean_tail(want_tuned.text)) and base != tuned
    assert s_base == s_tuned == "Judge score: —"
    assert notice.startswith("No judge scores") and "ollama serve" in notice
    assert info["adapter"] == "tiny-chat"


def test_compare_with_a_judge_on_a_fake_ollama(served):
    from harness.testing import fake_ollama
    state = served[1]
    old = state.judge_host
    with fake_ollama.FakeOllama(answers=['{"score": 35, "reason": "weak"}', '{"score": 80, "reason": "good"}']) \
            as fake:
        state.judge_host = fake.host
        try:
            base, tuned, s_base, s_tuned, notice, _, info = compare_once(
                state, "Name three colors.", "tiny-chat", Sampling(temperature=0, max_new_tokens=8), "judged")
        finally:
            state.judge_host = old
        assert (s_base, s_tuned) == ("Judge score: 35 / 100", "Judge score: 80 / 100")
        assert fake.count("/api/chat") == 2
        assert base in fake.chat_bodies()[0]["messages"][0]["content"]
    assert "ollama:llama3" in notice and info["one_batch"] is True


@pytest.mark.parametrize("endpoint,args", [
    ("/chat", chat_args("")),
    ("/chat", chat_args("   \n ")),
    ("/classify", ("", "tiny-spam", 0.5)),
    ("/poem", ("", "中文", "五言绝句", "base", 0.7, 0.9, 16, 0, 1.1)),
    ("/compare", ("", "tiny-chat", 0.0, 0.9, 16, 0, 1.0)),
])
def test_empty_input_is_a_message_not_a_traceback(client, endpoint, args):
    with pytest.raises(Exception) as err:
        client.predict(*args, api_name=endpoint)
    assert "is empty" in str(err.value) and "Traceback" not in str(err.value)


@pytest.mark.parametrize("endpoint,args", [
    ("/chat", chat_args("Hello", adapter="../tiny-chat")),
    ("/chat", chat_args("Hello", adapter="../../etc/passwd")),
    ("/classify", ("Hello", "../tiny-spam", 0.5)),
    ("/poem", ("春夜", "中文", "五言绝句", "tiny-chat/../x", 0.7, 0.9, 16, 0, 1.1)),
    ("/compare", ("Hello", "..", 0.0, 0.9, 16, 0, 1.0)),
])
def test_adapter_names_with_paths_are_rejected(client, endpoint, args):
    # Compare's B may be a checkpoint inside the checkpoints root: a path out of it is refused as such
    with pytest.raises(Exception, match="invalid adapter name|not inside the app's checkpoints folder"):
        client.predict(*args, api_name=endpoint)


def test_wrong_kind_of_adapter_and_too_long_input_name_the_fix(client, served):
    with pytest.raises(Exception, match="is a seq_cls .*adapter"):
        client.predict(*chat_args("Hello", adapter="tiny-spam"), api_name="/chat")
    with pytest.raises(Exception, match="available classifier adapters: tiny-spam"):
        client.predict("Hello", "nope", 0.5, api_name="/classify")
    too_long = "x" * (served[1].limits.message_chars + 1)
    with pytest.raises(Exception, match=r"too long: 4,001 characters, the limit is 4,000 \(1 too many\); nothing was cut"):
        client.predict(*chat_args(too_long), api_name="/chat")
    with pytest.raises(Exception, match="greater than maximum value 1.5"):     # Gradio checks slider bounds
        client.predict("Hello", [], "", "base", 9.0, 0.9, 16, 0, 1.0, api_name="/chat")


# ---------------------------------------------------------------- logic without a server

def test_read_upload_formats_and_errors(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text('id,text,label\n7,"Hello, mum",HAM\n8,,spam\n9,Win now,spam\n', encoding="utf-8")
    cols, rows, note = read_upload(f, Limits())
    assert cols == ["id", "text", "label"] and [r["text"] for r in rows] == ["Hello, mum", "Win now"]
    assert [r["id"] for r in rows] == ["7", "9"] and "1 blank row" in note
    f2 = tmp_path / "a.txt"
    f2.write_text("one message\nanother one, with a comma\n", encoding="utf-8")
    assert [r["text"] for r in read_upload(f2, Limits())[1]] == ["one message", "another one, with a comma"]
    for content, match in [("text\n\n", "no messages"), ("a,b\n1,2\n", "missing column.*text")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(UserError, match=match):
            read_upload(bad, Limits())
    bad.write_bytes(b"text\n\xff\xfe broken\n")
    with pytest.raises(UserError, match="UTF-8"):
        read_upload(bad, Limits())
    bad.write_text("text\n" + "hi\n" * 5, encoding="utf-8")
    with pytest.raises(UserError, match="limit is 3"):
        read_upload(bad, Limits(csv_rows=3))
    bad.write_text("text\n" + "x" * 12 + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="12 characters; the limit is 10 \\(2 too many\\)"):
        read_upload(bad, Limits(message_chars=10))


def test_poem_prompts_and_form_report():
    assert poem_instruction("春夜", "中文", "七言律诗") == "写一首七言律诗，题目：春夜"
    assert poem_instruction("the sea", "English", "free verse") == "Write a free verse poem about the sea."
    assert poem_forms("English") == ("sonnet", "free verse") and poem_forms("zh")[0] == "五言绝句"
    with pytest.raises(UserError, match="language must be"):
        poem_lang("Klingon")
    ok = form_report("床前明月光，疑是地上霜。\n举头望明月，低头思故乡。", "五言绝句", "中文")
    assert ok["ok"] and ok["summary"].startswith("**Form check: OK.**")
    bad = form_report("床前明月光，疑是地上霜。", "五言绝句", "中文")
    assert not bad["ok"] and "2 lines, expected 4" in bad["summary"]
    assert bad["summary"].startswith("**Form check: not a 五言绝句.** ") and "a 五言绝句 has 4 lines × 5 characters" in bad["summary"]
    free = form_report("one\ntwo\nthree\nfour\nfive\nsix", "free verse", "en")
    assert free["summary"] == "**Form check: OK.** Free verse: 6 lines (any shape is fine)."   # not "as expected (2 lines)"


def test_sampling_is_validated():
    assert Sampling.from_ui(0, 0.9, 64.0, 3.0, 1.0).config().do_sample is False
    cfg = Sampling.from_ui(0.8, 0.5, 32, 7, None).config()
    assert cfg.do_sample and cfg.temperature == 0.8 and cfg.seed == 7 and cfg.max_new_tokens == 32
    with pytest.raises(UserError, match="top-p"):
        Sampling(top_p=0)
    with pytest.raises(UserError, match="max new tokens"):
        Sampling.from_ui(0.3, 0.9, 100000, 0)
    with pytest.raises(UserError, match="must be numbers"):
        Sampling.from_ui("hot", 0.9, 10, 0)


def test_leaderboard_without_and_with_csvs(tmp_path):
    v = leaderboard_view(folder=tmp_path)
    assert v["table"] is None and v["figure"] is None
    assert "No leaderboard yet" in v["notice"] and "python -m harness run" in v["notice"]

    import pandas as pd
    pd.DataFrame({"task": ["spam", "spam"], "eval_set": ["sms_own", "sms_spam:test"], "model": ["m", "m"],
                  "adapter": ["", "m-spam"], "judge": ["", ""], "n": [44, 500], "accuracy": [0.6, 0.97],
                  "accuracy_ci_low": [0.45, 0.95], "accuracy_ci_high": [0.75, 0.98], "f1": [0.5, 0.9]}
                 ).to_csv(tmp_path / "leaderboard_spam.csv", index=False)
    (tmp_path / "leaderboard_chat.csv").write_text("not,a\n\"broken", encoding="utf-8")
    v = leaderboard_view("spam", folder=tmp_path)
    assert v["task"] == "spam" and len(v["table"]) == 2 and v["metric"] == "accuracy"
    assert v["metrics"] == ["accuracy", "f1"] and v["eval_sets"] == ["sms_own", "sms_spam:test"]
    ax = v["figure"].axes[0]
    assert len(ax.patches) == 2
    from matplotlib.container import ErrorbarContainer
    [bars] = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]   # error bars from the CI columns
    spans = sorted((round(seg[0][0], 3), round(seg[1][0], 3)) for seg in bars.lines[2][0].get_segments())
    assert spans == [(0.45, 0.75), (0.95, 0.98)]
    assert "unreadable: leaderboard_chat.csv" in v["notice"]
    assert len(leaderboard_view("spam", "sms_own", folder=tmp_path)["table"]) == 1
    assert len(leaderboard_view("spam", None, "M-SPAM", folder=tmp_path)["table"]) == 1
    assert "Nothing matches" in leaderboard_view("spam", None, "zzz", folder=tmp_path)["notice"]


def test_spam_examples_come_from_the_own_eval_set():
    examples, note = spam_examples(6)      # raises if the committed eval set is unreadable: that is the bug
    assert len(examples) == 6 and "sms_own" in note
    assert sum(1 for e in examples if e) == 6 and len(set(examples)) == 6


def test_adapters_switch_without_reloading_and_base_switch_frees_memory(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    folder = tmp_path / "adapters"
    build_adapter(tiny_llama_dir, folder / "tiny-chat", kind="causal")
    broken = tmp_path / "broken"
    state = AppState(model=str(tiny_llama_dir), adapters_folder=folder,
                       extra_bases=(str(tiny_gpt2_dir), str(tmp_path / "nowhere"), str(broken)))
    with pytest.raises(UserError, match="not inside the app's checkpoints folder"):   # a path from the UI is
        state.switch_base(str(tmp_path))                                               # never loaded
    lm = state.get_model()
    list(chat_turn(state, "Hello", [], adapter="tiny-chat", sampling=Sampling(max_new_tokens=4)))
    list(chat_turn(state, "Hello", [], adapter="base", sampling=Sampling(max_new_tokens=4)))
    assert state.get_model() is lm and state.lm.active is None, "per-request adapters, no global switch"
    assert "tiny-chat" in status_line(state, "tiny-chat") and "1 adapter(s)" in status_line(state, "base")
    old_model = weakref.ref(lm.model)
    del lm
    state.switch_base(str(tiny_gpt2_dir))
    gc.collect()
    assert old_model() is None, "the old base is freed"
    assert state.base_name == str(Path(tiny_gpt2_dir).resolve()) and state.adapters() == []
    with pytest.raises(UserError, match="trained on base"):
        state.resolve_adapter("tiny-chat", "causal")
    with pytest.raises(UserError, match="unknown model"):                  # refused before anything is freed
        state.switch_base(str(tmp_path / "nowhere"))
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    with pytest.raises(UserError, match="could not load base .*Still using"):   # the old base comes back
        state.switch_base(str(broken))
    assert state.lm is not None and state.base_name == str(Path(tiny_gpt2_dir).resolve())


def test_stop_only_stops_its_own_session(tiny_llama_dir):
    state = AppState(model=str(tiny_llama_dir))
    with state.running("alice") as (ev_a, _), state.running("bob") as (ev_b, _):
        assert state.stop("alice") == 1
        assert ev_a.is_set() and not ev_b.is_set()
    assert state.stop("alice") == 0 and state._running == {}


def test_chat_turn_stops_from_another_thread(tiny_llama_dir):
    state = AppState(model=str(tiny_llama_dir))
    gen = chat_turn(state, "Tell me a long story", [], sampling=Sampling(temperature=0, max_new_tokens=400),
                      session="s")
    next(gen)
    next(gen)
    threading.Timer(0.05, state.stop, ("s",)).start()
    for history, info in gen:
        pass
    assert info["finish_reason"] == "cancelled" and info["new_tokens"] < 400


def test_adapter_list_is_reread_when_the_folder_changes(tiny_llama_dir, tmp_path):
    folder = tmp_path / "adapters"
    state = AppState(model=str(tiny_llama_dir), adapters_folder=folder)
    assert state.all_adapters() == [] and default_classifier(state) == "base"
    build_adapter(tiny_llama_dir, folder / "tiny-spam", kind="seq_cls")
    assert [a.name for a in state.adapters("seq_cls")] == ["tiny-spam"]      # a newly trained adapter shows up
    assert default_classifier(state) == "tiny-spam"
    assert state.all_adapters()[0] is state.all_adapters()[0], "unchanged folder: no re-read"


def test_auto_threads_leaves_busy_cores_alone():
    assert auto_threads(2, 4.0) == 1 and auto_threads(2, 0.2) == 2 and auto_threads(8, 3.0) == 5


def test_a_base_that_needs_a_download_is_refused_at_once(tiny_llama_dir):
    from harness.models import base_status, resolve_base
    if base_status(resolve_base("gpt2")) != "downloadable":
        pytest.skip("gpt2 is in the local Hugging Face cache here")
    state = AppState(model=str(tiny_llama_dir))
    lm = state.get_model()
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="not downloaded.*hf download openai-community/gpt2.*Still using"):
        state.switch_base("gpt2")
    assert time.perf_counter() - t0 < 10 and state.lm is lm


def test_binds_localhost_by_default_and_follows_spaces_env(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = app_module.parse_args([])
    assert (args.host, args.port, args.share, args.model, args.no_warmup) == ("127.0.0.1", 7860, False, None, False)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")                   # what Hugging Face Spaces sets
    assert app_module.parse_args([]).host == "0.0.0.0"
    assert app_module.parse_args(["--host", "127.0.0.1", "--no-warmup"]).no_warmup is True


def test_errors_reach_the_user_as_messages_not_tracebacks():
    import gradio as gr

    def user_mistake():
        raise UserError("the message is empty: type a message")

    def bug():
        return 1 / 0

    def streaming_bug():
        yield "partial"
        raise KeyError("boom")

    with pytest.raises(gr.Error, match="the message is empty"):          # API endpoints: gr.Error, one sentence
        app_module.guard(user_mistake)()
    with pytest.raises(gr.Error, match=r"Something went wrong \(ZeroDivisionError"):
        app_module.guard(bug)()
    gen = app_module.guard(streaming_bug)()
    assert inspect.isgeneratorfunction(app_module.guard(streaming_bug)) and next(gen) == "partial"
    with pytest.raises(gr.Error, match="KeyError"):
        next(gen)
    # UI events: the same guard puts the sentence in the last output (the notice) and leaves the others alone
    skipped, notice = app_module.guard(user_mistake, 2)()
    assert notice == "⚠ the message is empty: type a message" and skipped == gr.skip()
    gen = app_module.guard(streaming_bug, 3)()
    assert next(gen) == "partial"
    *rest, notice = next(gen)
    assert notice.startswith("⚠ Something went wrong (KeyError") and len(rest) == 2


def test_throttled_passes_the_first_newest_and_last_update_and_closes_the_stream():
    from harness.app.streaming import throttled
    closed = []

    def fast():
        try:
            yield from range(1000)
        finally:
            closed.append(True)

    shown = list(throttled(fast(), every=10.0))
    assert shown == [0, 999]                       # the first at once, the last always
    slow = throttled((time.sleep(0.03) or i for i in range(5)), every=0.0)
    assert list(slow) == [0, 1, 2, 3, 4]           # nothing held back when updates are slower than `every`
    early = throttled(fast(), every=10.0)
    assert next(early) == 0
    early.close()                                  # Stop / the page went away: the generation is closed too
    assert closed == [True, True]


def test_python_app_py_starts_on_localhost_and_serves_the_page(tiny_llama_dir, adapters, tmp_path):
    """`python app.py` itself (main(): imports, model load + warm-up thread, launch), as a user starts it."""
    import os
    import subprocess
    import sys

    import requests

    from harness.bench.app import wait_ready
    from harness.paths import PROJECT_ROOT
    port = free_port()
    env = dict(os.environ, FTBENCH_ADAPTERS=str(adapters), FTBENCH_RESULTS=str(tmp_path / "results"),
               PYTHONUNBUFFERED="1", GRADIO_SERVER_NAME="")
    env.pop("GRADIO_SERVER_NAME")
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "app.py"), "--model", str(tiny_llama_dir),
                                 "--port", str(port), "--threads", "1"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            wait_ready(f"http://127.0.0.1:{port}/", proc, timeout=120)
            config = requests.get(f"http://127.0.0.1:{port}/config", timeout=5).json()
            assert any(d.get("api_name") == "chat" for d in config.get("dependencies", []))
            # the page is served first; the model stack is imported and the model warmed up behind it
            import time
            t0 = time.time()
            while "warm-up took" not in log.read_text() and time.time() - t0 < 120 and proc.poll() is None:
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = log.read_text()
    assert text.splitlines()[0].startswith(f"ftbench app: http://127.0.0.1:{port}/"), "the URL is printed first"
    assert f"127.0.0.1:{port}" in text and "0.0.0.0" not in text
    assert "warm-up took" in text and "Traceback" not in text


def test_predictions_files_share_one_folder_and_old_ones_are_removed(tmp_path):
    import os
    folder = tmp_path / "preds"
    a = predictions_path("my messages", folder)
    a.write_text("x")
    b = predictions_path("my messages", folder)
    assert a.parent == b.parent == folder and a != b and " " not in a.name
    os.utime(a, (time.time() - 2 * PREDICTIONS_MAX_AGE,) * 2)
    b.write_text("y")
    c = predictions_path("../../etc/passwd", folder)
    assert not a.exists() and b.exists(), "files older than PREDICTIONS_MAX_AGE are removed, newer ones kept"
    assert c.parent == folder and "/" not in c.name


# ---------------------------------------------------------------- --engine llama.cpp, first start, task hints

class FakeLlama:
    """Stands in for harness.llamacpp.LlamaCppEngine (its API: lock, add_adapter, render, llm.detokenize,
    stream_chat): the routing and the labels are the app's; llama.cpp itself is timed by bench app."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []
        outer = self

        class Llm:
            def detokenize(self, ids, special=False):
                return b"<prompt " + str(len(ids)).encode() + b">"
        self.llm = Llm()
        self.outer = outer

    broken: tuple = ()

    def add_adapter(self, name):
        if name in self.broken:
            raise UserError("cannot export")

    def render(self, messages, max_new_tokens=0, system=None):
        return list(range(len(messages) * 3))

    def stream_chat(self, messages, adapter=None, max_new_tokens=256, temperature=0.0, stop_event=None, stats=None,
                    system=None, seed=0, top_p=0.9, repeat_penalty=1.0):
        self.calls.append((adapter, max_new_tokens, temperature, repeat_penalty))
        for i, chunk in enumerate(["Hello", " from", " llama", "\ufffd"]):
            stats.new_tokens = i + 1
            yield chunk
        stats.finish_reason = "stop"


def test_llama_cpp_serves_plain_chat_and_falls_back_with_a_notice(tiny_llama_dir, adapters):
    from harness.app import chat as C
    from harness.app.state import chat_stream
    state = AppState(model=str(tiny_llama_dir), adapters_folder=adapters, engine="llama.cpp")
    engine, why = state.llama_route(None, Sampling())                   # a tiny dir has no GGUF
    assert engine is None and "llama.cpp could not load" in why and "using transformers" in why
    assert "engine:** transformers ⚠" in status_line(state)

    state.engine_note, state.llama = "", FakeLlama()
    plain = Sampling(temperature=0.0, repetition_penalty=1.0, max_new_tokens=8)
    C.submit(state, "s", "Hi", adapter="tiny-chat", sampling=plain)
    for _ in C.generate_pending(state, "s"):
        pass
    answer = C.render(state, "s")[-1]["content"]
    assert answer.startswith("Hello from llama\n") and "llama.cpp" in answer and "adapter tiny-chat" in answer
    assert state.llama.calls == [("tiny-chat", 8, 0.0, 1.0)]
    state.llama.broken = ("tiny-chat",)
    *_, last = chat_stream(state, [{"role": "user", "content": "Hi"}], "", "tiny-chat", plain, "s")
    assert last[3] == "transformers" and "cannot use tiny-chat" in last[4]             # fell back, and says so
    C.submit(state, "s", "Hi again", adapter="base", sampling=Sampling(max_new_tokens=8))   # rep. penalty 1.1
    for _ in C.generate_pending(state, "s"):
        pass
    answer = C.render(state, "s")[-1]["content"]                       # the tab's penalty goes to llama.cpp
    assert "fallback" not in answer and "llama.cpp" in answer and state.llama.calls[-1] == (None, 8, 0.3, 1.1)
    assert app_module.default_sampling(state).repetition_penalty == 1.1, "the tabs keep their default penalty"


@pytest.mark.slow
def test_llama_cpp_takes_the_repetition_penalty():
    """LlamaCppEngine.stream_chat(repeat_penalty=...) reaches llama.cpp's sampler: on a prompt that invites
    repetition, greedy text with a strong penalty differs from the unpenalised one and repeats itself less
    (llama.cpp penalises the last 64 tokens; transformers the whole sequence). About 5 s on 2 cores."""
    from harness import llamacpp
    ok, why = llamacpp.is_available()
    if not ok:
        pytest.skip(why)
    engine = llamacpp.load_engine(n_threads=1, n_ctx=512)
    try:
        ask = [{"role": "user", "content": "List the numbers from 1 to 20, one per line."}]
        plain = engine.chat(ask, max_new_tokens=32)                     # "1, 2, 3, 4, ...": ", " over and over
        again = "".join(engine.stream_chat(ask, max_new_tokens=32, repeat_penalty=1.0))
        penalised = "".join(engine.stream_chat(ask, max_new_tokens=32, repeat_penalty=1.8))
        assert plain == again, "greedy, and penalty 1.0 (the default), give the same text every time"
        assert penalised != plain and penalised.count(",") < plain.count(","), (plain, penalised)
        with pytest.raises(UserError, match="repeat_penalty must be between 1 and 2"):
            next(engine.stream_chat(ask, max_new_tokens=4, repeat_penalty=0.5))
    finally:
        engine.close()


def test_pick_engine_without_llama_cpp_says_so_and_uses_transformers(monkeypatch, capsys):
    from harness import llamacpp
    monkeypatch.setattr(llamacpp, "is_available", lambda: (False, "the llama.cpp engine needs llama-cpp-python"))
    assert app_module.pick_engine("llama.cpp") == "transformers"
    err = capsys.readouterr().err
    assert "Engine: transformers (the llama.cpp engine needs llama-cpp-python" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(llamacpp, "is_available", lambda: (True, "llama-cpp-python 0.3"))
    assert app_module.pick_engine("llama.cpp") == "llama.cpp" and app_module.pick_engine("transformers") == "transformers"


def test_first_start_on_an_empty_cache_says_the_model_is_being_prepared():
    from harness.models import base_status
    state = AppState()                       # the embedded default; this test's $FTBENCH_CACHE is empty
    assert base_status(state.spec) == "needs conversion"
    state.begin_prepare()
    line = status_line(state)
    assert "⏳ preparing the model (one-time, about a minute)" in line and state.lm is None


def test_tab_hints_come_from_the_task_registry():
    from harness.app.state import task_hints
    from harness.tasks import get_task
    for name in ("chat", "poem", "spam"):
        assert task_hints(name)["placeholder"] == get_task(name).app["placeholder"]
        assert task_hints(name)["examples"] == list(get_task(name).app["examples"])
    assert task_hints("no-such-task") == {}


def test_compare_examples_and_judge_items_follow_the_task_declarations():
    from harness.app.compare import examples, judge_item
    found = examples()
    assert set(found) == {"chat", "poem"} and found["chat"][0] == "instructions_own"
    typed = judge_item({"task": "poem", "prompt": "写一首七言绝句，题目：秋", "form": "七言绝句", "item": None})
    assert typed == {"prompt": "写一首七言绝句，题目：秋", "poem": typed["poem"], "lang": "zh", "form": "七言绝句"}
    chat = judge_item({"task": "chat", "prompt": "Hi", "form": "", "item": None})
    assert chat["instruction"] == "Hi" and "no reference" in chat["output"]


def test_leaderboard_bars_carry_eval_set_and_decoding_labels_and_error_bars(tmp_path):
    import pandas as pd

    from harness.leaderboard_view import bar_plot
    df = pd.DataFrame([{"model": "m", "adapter": "", "eval_set": "poems_own", "decoding": "form", "judge": "",
                        "form_ok_rate": 1.0, "n_form": 24},
                       {"model": "m", "adapter": "a", "eval_set": "poems_own", "decoding": "", "judge": "",
                        "form_ok_rate": 0.25, "n_form": 24}])
    ax = bar_plot(df, "form_ok_rate").axes[0]
    labels = [t.get_text().rsplit("  (", 1)[0] for t in ax.texts]      # written above each bar, top first
    assert labels == ["m (base) · poems_own · form-constrained", "m + a · poems_own · free"]
    from matplotlib.container import ErrorbarContainer
    found = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert found, "the Wilson interval is drawn"
    segments = found[0].lines[2][0].get_segments()
    widths = sorted(round(float(s[1][0] - s[0][0]), 3) for s in segments)
    assert widths[0] > 0.05 and widths[1] > 0.2          # n=24: wide intervals, never zero


def test_the_browser_suites_order_of_work_leaves_the_model_free(tiny_llama_dir, adapters, tmp_path):
    """Chat, classify, poem, compare + a judge that is down, then chat again (the order of the browser suite's
    tab tests): every job ends, no short work is left counted, and the last chat streams token by token."""
    from harness.app import chat as C
    from harness.app import compare as K
    from harness.app.classify import classify_message
    from harness.app.poem import poem_job
    state = AppState(model=str(tiny_llama_dir), adapters_folder=adapters, results_folder=tmp_path / "r",
                     store=str(tmp_path / "s.sqlite"), judge_host=f"127.0.0.1:{free_port()}")
    state.prepare()
    quick = Sampling(max_new_tokens=16)
    C.submit(state, "s", "Hello!", sampling=quick)
    for _ in C.generate_pending(state, "s"):
        pass
    assert classify_message(state, "WIN a prize", None, 0.5)[1].startswith("**")
    *_, (poem, report, _) = poem_job(state, "s", "春夜", "中文", "五言绝句")
    assert report["summary"].startswith("**Form check: OK.**")
    K.start(state, "s", "Name three colors.", "tiny-chat", Sampling(temperature=0, max_new_tokens=16))
    *_, view = K.stream(state, "s")
    assert view["status"] == "done" and "No judge scores" in K.judge(state, "s")[2]
    C.clear(state, "s")
    C.submit(state, "s", "Tell me a story.", sampling=quick)
    updates = list(C.generate_pending(state, "s"))
    assert len(updates) > 3 and "▍" in updates[2][0][-1]["content"], "the reply streams"
    assert not state._jobs and state.short_waiting == 0 and not state._running


def test_a_closed_page_leaves_nothing_queued_and_no_count_behind(tiny_llama_dir):
    """A page that goes away (demo.unload -> AppState.end_session) takes its queued requests along: nobody else's
    "waiting for N requests ahead" counts them, and its queued event, if it still runs, writes nothing."""
    from harness.app import chat as C
    state = AppState(model=str(tiny_llama_dir))
    quick = Sampling(max_new_tokens=4)
    C.submit(state, "gone", "one", sampling=quick)
    C.submit(state, "here", "two", sampling=quick)
    assert "waiting for 1 request ahead" in C.render(state, "here")[-1]["content"]
    state.end_session("gone")
    assert "next in line" in C.render(state, "here")[-1]["content"]
    *_, (shown, info) = C.generate_pending(state, "gone")
    assert info == {} and C.messages(state, "gone")[-1]["meta"]["status"] == C.STOPPED
    assert state.lm is None, "nothing was generated for the page that went away"
    *_, (shown, info) = C.generate_pending(state, "here")
    assert info["new_tokens"] >= 1 and not state._jobs


def test_a_finished_row_leaves_the_batch_and_the_other_row_writes_as_alone(tiny_llama_dir, adapters, monkeypatch):
    """Compare's batch drops a row once it has ended (its KV cache too), so the longer answer goes on at one
    row's cost; the texts are still token for token those of each side alone (greedy)."""
    from harness.app import streaming
    from harness.generation import GenerationConfig, StreamStats
    state = AppState(model=str(tiny_llama_dir), adapters_folder=adapters)
    lm = state.get_model()
    prompt = lm.render_instruction("Name three colors.")
    cfg = GenerationConfig(max_new_tokens=24, repetition_penalty=1.0)
    alone = {a: streaming.stream_rows(None, lm, prompt, [a], cfg) for a in (None, "tiny-chat")}
    alone = {a: list(g)[-1][0] for a, g in alone.items()}
    ids = {a: lm.tokenizer(t, add_special_tokens=False)["input_ids"] for a, t in alone.items()}
    # a token the base writes half-way and the adapter never writes becomes an end of text: the base row ends early
    stop = next(t for t in ids[None][4:] if t not in ids["tiny-chat"] and t not in ids[None][:4])
    real = streaming.eos_ids
    monkeypatch.setattr(streaming, "eos_ids", lambda lm_: real(lm_) | {stop})
    selected = []
    import transformers
    original = transformers.DynamicCache.batch_select_indices
    monkeypatch.setattr(transformers.DynamicCache, "batch_select_indices",
                        lambda self, index: (selected.append(index.tolist()), original(self, index))[1])
    short = list(streaming.stream_rows(None, lm, prompt, [None], cfg))[-1][0]
    stats = [StreamStats(), StreamStats()]
    both = list(streaming.stream_rows(None, lm, prompt, [None, "tiny-chat"], cfg, stats=stats))[-1]
    assert selected == [[1]], "the base row left the batch once it ended"
    assert both == [short, alone["tiny-chat"]] and len(short) < len(alone[None])
    assert stats[0].finish_reason == "stop" and stats[1].new_tokens == 24


def test_run_ahead_passes_the_newest_snapshot_the_last_and_errors_and_stops_the_stream():
    from harness.app.streaming import run_ahead
    closed = []

    def model(n, fail=False):
        try:
            for i in range(n):
                time.sleep(0.002)
                yield i
            if fail:
                raise UserError("the model failed")
        finally:
            closed.append(n)

    seen = []
    for item in run_ahead(model(200)):
        seen.append(item)
        time.sleep(0.05)                      # a slow client: the model does not wait for it
    assert seen[0] == 0 and seen[-1] == 199 and len(seen) < 100 and seen == sorted(seen)
    gen = run_ahead(model(3, fail=True))
    got = []
    with pytest.raises(UserError, match="the model failed"):
        for item in gen:
            got.append(item)
    assert got and got[-1] == 2
    early = run_ahead(model(10_000))
    assert next(early) == 0
    early.close()                              # the client went away: the stream stops at its next step
    deadline = time.monotonic() + 5
    while 10_000 not in closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 10_000 in closed


# ---------------------------------------------------------------- the poem tab's rhyme and tone boxes (issue 16)

def test_rhyme_and_tone_options_only_for_chinese_forms_under_the_constraint():
    from harness.app.poem import has_rules, rule_options
    assert has_rules("中文", "五言绝句", True) and has_rules("zh", "七言律诗", True)
    assert not has_rules("中文", "五言绝句", False) and not has_rules("English", "sonnet", True)
    assert not has_rules("Klingon", "五言绝句", True)
    assert rule_options("中文", "五言绝句", True, rhyme=True) == {"rhyme": True}
    assert rule_options("中文", "五言绝句", True, tone=True) == {"tone": True}
    assert rule_options("中文", "五言绝句", True, rhyme_group=" 東 ") == {"rhyme": True, "rhyme_group": "东"}
    assert rule_options("中文", "五言绝句", False, rhyme=True, rhyme_group="nonsense") == {}, "a hidden box is ignored"
    assert rule_options("English", "sonnet", True, rhyme=True, tone=True) == {}
    with pytest.raises(UserError, match="no rhyme group 'dong1x'|nearest"):
        rule_options("中文", "五言绝句", True, rhyme_group="dong1x")
    with pytest.raises(UserError, match="the 30 平声 groups are"):
        rule_options("中文", "五言绝句", True, rhyme_group="天地")


def test_the_rule_check_line_reports_rhyme_tone_repeats_and_unknown_characters():
    from harness.app.poem import rules_report
    from harness.rules import check_poem
    poem = "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"
    line, fields = rules_report(poem, "五言绝句", "中文", {"rhyme": True})
    assert line.startswith("**Rule check (平水韵, 平仄):** decoded keeping rhyme. rhyme: OK (尤)")
    assert "repeated rhyme character: none" in line and "characters not in the rhyme table: none" in line
    assert fields["rhyme_ok"] is True and fields["rhyme_group"] == "尤" and fields["unknown_chars"] == 0
    rows = check_poem(poem, "五言绝句", "zh")                     # the leaderboard rows' own checks
    assert all(fields[k] == rows[k] for k in ("rhyme_ok", "tone_ok", "repeated_rhyme", "unknown_chars"))
    off, f2 = rules_report("白日依山尽，黄河入海流。\n欲穷千里目，更上一层天。", "五言绝句", "中文")
    assert "rhyme: no" in off and f2["rhyme_ok"] is False and "not on 4" in off
    rep, f3 = rules_report("白日依山尽，黄河入海流。\n欲穷千里目，更上一层流。", "五言绝句", "中文")
    assert "repeated rhyme character: yes" in rep and f3["repeated_rhyme"] is True
    short, _ = rules_report("白日依山尽，黄河入海流。", "五言绝句", "中文")
    assert "not checked" in short
    assert rules_report(poem, "free verse", "English") == ("", {}) and rules_report("", "五言绝句", "中文") == ("", {})
    assert rules_report(poem, "sonnet", "English")[0].startswith("**Rule check (sonnet")   # sonnets have one too


def test_the_form_report_and_the_rule_line_check_a_poem_once(monkeypatch):
    """The tab's form report (its "rules" sentence) and its rule-check line read one explain_poem result."""
    import harness.rules
    from harness.app.poem import explained, form_report, rules_report
    calls = []
    real = harness.rules.explain_poem
    monkeypatch.setattr(harness.rules, "explain_poem", lambda *a: calls.append(a) or real(*a))
    explained.cache_clear()
    poem = "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。"
    rep = form_report(poem, "五言绝句", "中文")
    line, fields = rules_report(poem, "五言绝句", "中文")
    assert len(calls) == 1 and rep["rules"] and fields["rhyme_group"] == "尤" and rep["rules"] in line
    rules_report(poem.replace("楼", "天"), "五言绝句", "中文")
    assert len(calls) == 2                                         # another poem is checked anew


def test_a_poem_decoded_with_rhyme_rhymes_and_the_group_reaches_the_decoder(served):
    from harness.app.poem import form_token_budget, poem_stream
    state = served[1]
    lm = state.get_model()
    greedy = Sampling(temperature=0.0, repetition_penalty=1.0, max_new_tokens=96)
    budget = form_token_budget(lm.tokenizer, "五言绝句")
    prompt = lm.render_instruction("写一首五言绝句，题目：春夜")
    *_, (poem, report, info) = poem_stream(state, "春夜", "中文", "五言绝句", sampling=greedy, rhyme=True)
    cfg = GenerationConfig(max_new_tokens=budget, form="五言绝句", rhyme=True)
    assert poem == generate_batch(lm, [prompt], cfg)[0].text.strip()
    assert report["rule_check"]["rhyme_ok"] is True and "rhyme: OK" in report["rules_line"]
    assert info["rules_constrained"] == "rhyme"
    *_, (poem2, report2, info2) = poem_stream(state, "春夜", "中文", "五言绝句", sampling=greedy, rhyme_group="东",
                                              tone=True)
    assert report2["rule_check"]["rhyme_group"] == "东" and report2["rule_check"]["rhyme_ok"] is True
    assert report2["rule_check"]["tone_ok"] is not False and info2["rules_constrained"] == "rhyme in 东, tone (平仄)"
    assert "decoded keeping rhyme in 东, tone (平仄)" in report2["rules_line"]
    *_, (_, free, free_info) = poem_stream(state, "春夜", "中文", "五言绝句", sampling=greedy, enforce_form=False,
                                           rhyme=True)
    assert "rules_constrained" not in free_info and "decoded keeping" not in (free.get("rules_line") or "")


def test_the_poem_api_takes_rhyme_and_says_an_unknown_group_in_one_sentence(client):
    poem, summary, check, _, info = client.predict("春夜", "中文", "五言绝句", "base", 0.0, 0.9, 96, 0, 1.0, True,
                                                   True, False, "东", api_name="/poem")
    assert check["ok"] and check["rule_check"]["rhyme_group"] == "东" and check["rule_check"]["rhyme_ok"] is True
    assert "Rule check" in check["rules_line"] and info["rules_constrained"] == "rhyme in 东"
    with pytest.raises(Exception, match="no rhyme group 'qqq'"):
        client.predict("春夜", "中文", "五言绝句", "base", 0.0, 0.9, 96, 0, 1.0, True, True, False, "qqq",
                       api_name="/poem")
