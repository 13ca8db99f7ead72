"""The pipeline end to end with a tiny model and the fake Ollama server: rows, cache, resume, bad input.

    python -m pytest tests/test_evaluate.py -q
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.engines import EngineConfig
from harness.errors import UserError
from harness.evaluate import judge_cmd, judge_with_store, read_responses, run, run_id_for, slug
from harness.testing.fake_ollama import FakeOllama
from harness.judge import JudgeConfig, JudgeRequest, open_judge
from harness.metrics import FIXED_FORMS
from harness.paths import PROJECT_ROOT
from harness.store import Store

ROW_FIELDS = {"task", "eval_set", "item_id", "model", "adapter", "adapter_sha", "judge", "judge_digest",
              "judge_prompt_version", "prompt", "response", "response_tokens", "gen_seconds", "score",
              "parsed", "judge_raw", "created_at", "git_commit"}


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):
    from harness.models import load_model
    return load_model(str(tiny_llama_dir))


def _book_rows(n: int) -> list[dict]:
    return [{"instruction": f"Rewrite sentence {i} in the passive voice.", "input": f"The cat chased mouse {i}.",
             "output": f"Mouse {i} was chased by the cat.", "model_response": f"Mouse {i} was chased by the cat."}
            for i in range(n)]


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)



# ---------------------------------------------------------------- run

def test_chat_run_writes_rows_and_leaderboard_then_reruns_from_the_cache(tiny_lm, tmp_path, monkeypatch):
    with FakeOllama(answers=["garbage", "still no number"]) as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        res = run(None, None, "instructions_own", "ollama:llama3", limit=4, max_new_tokens=8, batch_size=2,
                  workers=1, lm=tiny_lm, progress=False)
        first = fake.count("/api/chat")
        assert res.generated == 4 and res.judged == 4 and first == 5       # the garbage item was re-asked once
        rows = [json.loads(x) for x in res.path.read_text(encoding="utf-8").splitlines()]
        assert len(rows) == 4 and ROW_FIELDS <= set(rows[0]) and "rouge_l" in rows[0]
        assert res.path == tmp_path / "results" / "runs" / "chat" / f"{res.run_id}.jsonl"
        assert [r["parsed"] for r in rows].count(False) == 1                # kept, not dropped
        bad = next(r for r in rows if not r["parsed"])
        assert bad["score"] is None and "garbage" in bad["judge_raw"] and "still no number" in bad["judge_raw"]
        assert rows[0]["judge"] == "ollama:llama3" and rows[0]["judge_digest"] == fake.digest
        assert all(b["options"]["temperature"] == 0 and b["options"]["seed"] == 123 for b in fake.chat_bodies())
        board = tmp_path / "results" / "leaderboard_chat.csv"
        assert res.leaderboards == [board] and "ollama:llama3" in board.read_text()

        fake.reset()
        again = run(None, None, "instructions_own", "ollama:llama3", limit=4, max_new_tokens=8, batch_size=2,
                    lm=tiny_lm, progress=False)
        assert fake.count("/api/chat") == 0 and again.generated == 0 and again.judged == 0
        assert [r["response"] for r in again.rows] == [r["response"] for r in rows]
        assert [r["score"] for r in again.rows] == [r["score"] for r in rows]

        more = run(None, None, "instructions_own", "ollama:llama3", limit=6, max_new_tokens=8, lm=tiny_lm,
                   progress=False)
        assert more.generated == 2 and more.judged == 2 and fake.count("/api/chat") == 2   # only the new items
        assert len(more.path.read_text().splitlines()) == 6                   # rewritten, not appended


def test_generation_config_change_regenerates(tiny_lm):
    a = run(None, None, "instructions_own", None, limit=2, max_new_tokens=4, lm=tiny_lm, progress=False)
    b = run(None, None, "instructions_own", None, limit=2, max_new_tokens=5, lm=tiny_lm, progress=False)
    assert a.generated == 2 and b.generated == 2 and a.rows[0]["judge"] == ""


def test_judge_cache_invalidates_exactly_what_changed(tmp_path):
    reqs = [JudgeRequest(str(i), "chat", {"instruction": f"q{i}", "input": "", "output": "a", "response": "r"})
            for i in range(5)]
    with FakeOllama() as fake, Store(tmp_path / "s.sqlite") as st:
        cfg = JudgeConfig("ollama:llama3", host=fake.url)
        with open_judge(cfg) as j:
            assert judge_with_store(j, reqs, st, progress=False)[1] == 5
            changed = list(reqs)
            changed[2] = JudgeRequest("2", "chat", {**reqs[2].fields, "response": "a new answer"})
            assert judge_with_store(j, changed, st, progress=False)[1] == 1
        assert fake.count("/api/chat") == 6
        fake.digest = "0" * 64                                   # the judge model was re-pulled
        with open_judge(cfg) as j:
            assert judge_with_store(j, reqs, st, progress=False)[1] == 5
        with open_judge(JudgeConfig("ollama:llama3", host=fake.url, seed=1)) as j:    # other options
            assert judge_with_store(j, reqs, st, progress=False)[1] == 5


def test_poem_run_has_form_fields(tiny_lm, monkeypatch):
    with FakeOllama() as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        res = run(None, None, "poems_own", "ollama:llama3", limit=2, max_new_tokens=8, lm=tiny_lm, progress=False)
        prompt = fake.chat_bodies()[0]["messages"][0]["content"]
    row = res.rows[0]
    assert res.task == "poem" and row["lang"] in ("zh", "en") and isinstance(row["form_ok"], bool)
    assert {"distinct_2", "repetition", "form"} <= set(row) and row["parsed"]
    assert "imagery" in prompt and row["form"] in prompt


def test_form_decoding_run_keeps_every_classical_poem_in_form(tiny_lm):
    free = run(None, None, "poems_own", None, limit=16, max_new_tokens=160, lm=tiny_lm, progress=False)
    form = run(None, None, "poems_own", None, limit=16, max_new_tokens=160, lm=tiny_lm, progress=False,
               decoding="form")
    classical = [r for r in form.rows if r["lang"] == "zh" and r["form"] in FIXED_FORMS]
    assert len(classical) >= 8 and all(r["form_ok"] for r in classical)
    assert not all(r["form_ok"] for r in free.rows if r["lang"] == "zh" and r["form"] in FIXED_FORMS)
    assert form.run_id == free.run_id.replace("__part-", "__form__part-") and form.path != free.path
    assert {r["decoding"] for r in form.rows} == {"form"} and {r["decoding"] for r in free.rows} == {""}
    with pytest.raises(UserError, match="--decoding form does not apply to sms_own"):
        run(None, None, "sms_own", None, limit=2, lm=tiny_lm, progress=False, decoding="form")


def test_rhyme_decoding_runs_rhyme_and_keep_the_form(tiny_lm):
    """--decoding rhyme / rhyme+tone from the CLI's run: every classical poem in form, its even lines in one
    平水韵 group (the rows' own rule check says so), tone kept under rhyme+tone; each its own run id."""
    kw = dict(limit=16, max_new_tokens=160, lm=tiny_lm, progress=False)
    form = run(None, None, "poems_own", None, decoding="form", **kw)
    rhyme = run(None, None, "poems_own", None, decoding="rhyme", **kw)
    tone = run(None, None, "poems_own", None, decoding="rhyme+tone", **kw)
    pick = lambda res: [r for r in res.rows if r["lang"] == "zh" and r["form"] in FIXED_FORMS]  # noqa: E731
    assert len(pick(rhyme)) >= 8 and all(r["form_ok"] for r in pick(rhyme) + pick(tone))
    assert all(r["rhyme_ok"] for r in pick(rhyme) + pick(tone))
    assert all(r["tone_ok"] for r in pick(tone))
    assert not all(r["rhyme_ok"] for r in pick(form))          # the tiny model does not rhyme by itself
    assert len({form.run_id, rhyme.run_id, tone.run_id}) == 3
    assert {r["decoding"] for r in tone.rows} == {"rhyme+tone"}


def test_spam_run_classifies_zero_shot_without_a_judge(tiny_lm):
    with FakeOllama() as fake:
        res = run(None, None, "sms_own", "ollama:llama3", limit=5, lm=tiny_lm, progress=False)
        assert fake.count(None) == 0                              # spam never calls a judge
    row = res.rows[0]
    assert row["judge"] == "" and row["pred"] in ("spam", "ham") and 0 <= row["p_spam"] <= 1
    assert row["label"] in ("spam", "ham") and res.path.parent.name == "spam"


def test_run_id_is_a_safe_file_name():
    rid = run_id_for("sms_spam:test", "/tmp/x/tiny-llama", None, "openai:m@http://h:8000/v1")
    assert "/" not in rid and ":" not in rid and rid.startswith("sms_spam-test__tiny-llama-")
    assert slug("Ollama:Llama3") == "ollama-llama3"


# ---------------------------------------------------------------- bad input

def test_unknown_eval_set_lists_the_available_ones():
    with pytest.raises(UserError, match="instructions_own"):
        run(None, None, "no_such_set", None)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_book_rows(1)[0]) + "\n\n" + '{"instruction": "x", "output": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"r\.jsonl:3: not valid JSON"):
        read_responses(path)
    path.write_text(json.dumps(_book_rows(1)[0]) + "\n" + json.dumps({"instruction": "x", "output": "y"}) + "\n")
    with pytest.raises(UserError, match=r"r\.jsonl:2: missing or non-string model_response"):
        read_responses(path)


def test_json_array_file_errors_name_the_line(tmp_path):
    path = tmp_path / "r.json"
    rows = _book_rows(2)
    del rows[1]["output"]
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    with pytest.raises(UserError, match=r"r\.json:8: missing or non-string output"):
        read_responses(path)
    path.write_text("[\n  {\"instruction\": \"x\",\n  \"output\" \"y\"}\n]")
    with pytest.raises(UserError, match=r"r\.json:3: not valid JSON"):
        read_responses(path)


def test_judge_cmd_scores_the_books_json_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "instruction-data-with-response.json"
    path.write_text(json.dumps(_book_rows(3), indent=4), encoding="utf-8")
    with FakeOllama(answers=["I'd rate the model response an 85 out of 100."]) as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        assert judge_cmd(str(path), str(tmp_path / "out.jsonl"), JudgeConfig(workers=1)) == 0
        out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert out[0]["score"] == 85 and all(r["parsed"] for r in out) and out[0]["model_response"]
        assert out[0]["judge"] == "ollama:llama3" and out[0]["judge_digest"] == fake.digest
        assert "Number of scores: 3 of 3" in capsys.readouterr().out
        fake.reset()
        judge_cmd(str(path), str(tmp_path / "out2.jsonl"))
        assert fake.count("/api/chat") == 0                       # second run: all from the store


def test_server_down_exits_nonzero_within_seconds(tmp_path, closed_port):
    responses = _jsonl(tmp_path / "r.jsonl", _book_rows(2))
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{closed_port}"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", "judge", "--responses", responses, "--output",
                           str(tmp_path / "o.jsonl")], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and time.perf_counter() - t0 < 15
    assert "is Ollama running? start it with `ollama serve`" in proc.stderr and "Traceback" not in proc.stderr


def test_kill_9_mid_judging_then_rerun_loses_and_redoes_nothing(tmp_path, monkeypatch):
    n, workers = 12, 2
    responses = _jsonl(tmp_path / "r.jsonl", _book_rows(n))
    with FakeOllama(delay=0.25) as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        proc = subprocess.Popen([sys.executable, "-m", "harness", "judge", "--responses", responses, "--output",
                                 str(tmp_path / "o.jsonl"), "--judge-workers", str(workers)], cwd=PROJECT_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while fake.count("/api/chat") < 5 and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sent_before = fake.count("/api/chat")
        with Store() as st:
            stored = st.rows("judgments")
        done_before = {r["item"]["instruction"] for r in stored}
        assert 1 <= len(stored) < n and not (tmp_path / "o.jsonl").exists()
        # lost = sent but not committed: answers still at the server or not yet stored (<= 2 per worker)
        assert sent_before - len(stored) <= 2 * workers

        fake.reset()
        judge_cmd(responses, str(tmp_path / "o.jsonl"), JudgeConfig(workers=workers))
        asked_again = {b["messages"][0]["content"] for b in fake.chat_bodies()}
    assert fake.count("/api/chat") == n - len(stored)               # nothing redone
    assert not any(instr in text for instr in done_before for text in asked_again)
    with Store() as st:
        assert st.count("judgments") == n                           # nothing lost, nothing twice
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(out) == n and len({r["instruction"] for r in out}) == n and all(r["parsed"] for r in out)


@pytest.mark.slow
def test_kill_9_mid_generation_then_rerun_generates_only_the_rest(tiny_llama_dir, tiny_lm):
    cmd = [sys.executable, "-m", "harness", "generate-set", "--model", str(tiny_llama_dir), "--eval-set",
           "instructions_own", "--batch-size", "2", "--max-new-tokens", "24"]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    with Store() as st:
        while st.count("generations") < 4 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stored = st.count("generations")
    from harness.data import load_eval_set
    n = len(load_eval_set("instructions_own").items)
    assert 4 <= stored < n, "the subprocess finished before it could be killed: make the test's work bigger"
    res = run(None, None, "instructions_own", None, max_new_tokens=24, batch_size=2, lm=tiny_lm, progress=False)
    with Store() as st:
        assert st.count("generations") == n
    assert res.generated == n - stored and len(res.rows) == n


# ---------------------------------------------------------------- run through a server (openai:, ollama:)

def _cli(*argv) -> int:
    from harness.__main__ import COMMANDS
    from harness.cli import main
    return main(COMMANDS, list(argv))


def test_run_through_an_openai_server_same_rows_cached_by_served_identity(tiny_lm, tmp_path):
    import csv

    from harness.testing.fake_openai import FakeOpenAI
    local = run(None, None, "instructions_own", None, limit=3, max_new_tokens=8, lm=tiny_lm, progress=False)
    with FakeOpenAI(models=[{"id": "smol", "meta": {"n_params": 1}}]) as fake:
        res = run(fake.spec("smol"), None, "instructions_own", None, limit=3, max_new_tokens=8, progress=False)
        assert res.generated == 3 and fake.count() == 3
        assert set(res.rows[0]) == set(local.rows[0])                       # the same row schema
        assert res.rows[0]["model"] == f"openai:smol@{fake.base}" and res.rows[0]["rouge_l"] is not None
        bodies = fake.chat_bodies()
        assert all(b["temperature"] == 0 and b["max_tokens"] == 8 for b in bodies)
        assert sorted(b["messages"][0]["content"] for b in bodies) == sorted(r["prompt"] for r in res.rows)
        boards = list(csv.reader(open(tmp_path / "results" / "leaderboard_chat.csv", encoding="utf-8")))
        assert {r[2] for r in boards[1:]} == {local.rows[0]["model"], res.rows[0]["model"]}

        fake.reset()
        again = run(fake.spec("smol"), None, "instructions_own", None, limit=3, max_new_tokens=8, progress=False)
        assert again.generated == 0 and fake.count() == 0
        assert again.responses == res.responses
        fake.models = [{"id": "smol", "meta": {"n_params": 2}}]             # another model behind the same name
        other = run(fake.spec("smol"), None, "instructions_own", None, limit=3, max_new_tokens=8, progress=False)
        assert other.generated == 3 and fake.count() == 3                   # never served from the cache


def test_run_through_a_server_keeps_going_past_an_html_answer_never_scores_it_and_asks_again(tmp_path):
    from harness.evaluate import RunIncomplete
    from harness.testing.fake_openai import FakeOpenAI
    html = {"raw": "<html><title>502 Bad Gateway</title></html>"}
    with FakeOpenAI(answers=[html, html]) as fake:               # the first item's answer and its one retry
        with pytest.raises(RunIncomplete) as e:
            run(fake.spec("smol"), None, "instructions_own", None, limit=3, max_new_tokens=8, progress=False,
                engine_config=EngineConfig(workers=1, retries=1, backoff=0.01))
        res = e.value.result
        assert str(e.value).startswith("1 of 3 items failed") and "rerun the same command" in str(e.value)
        assert len(res.rows) == 2 and list(res.failed) == [0]      # no row for the failed item, not even empty
        assert all(r["partial"] and r["n_failed"] == 1 for r in res.rows)
        first = res.path
        assert first.name.endswith(f"__part-{res.rows[0]['item_set']}.jsonl")
        fake.reset()
        again = run(fake.spec("smol"), None, "instructions_own", None, limit=3, max_new_tokens=8, progress=False)
        assert again.generated == 1 and fake.count("/v1/chat/completions") == 1     # only the failed item
        assert len(again.rows) == 3 and not again.failed and all(r["n_failed"] == 0 for r in again.rows)
        assert again.path != first and not first.exists()          # the failed attempt's file is superseded


@pytest.mark.parametrize("case", ["down", "500", "hang", "not served", "500 mid-run", "classify set"])
def test_run_through_a_bad_server_is_one_sentence(case, tmp_path, capsys, closed_port):
    from harness.testing.fake_openai import FakeOpenAI
    kw = {"models_status": 500} if case == "500" else {"models_delay": 3} if case == "hang" else {}
    if case == "500 mid-run":
        kw = {"answers": ["fine"] + [{"status": 500}] * 10}
    with FakeOpenAI(**kw) as fake:
        url = f"http://127.0.0.1:{closed_port}" if case == "down" else fake.url
        model = "other" if case == "not served" else "smol"
        t0 = time.perf_counter()
        rc = _cli("run", "--model", f"openai:{model}@{url}", "--eval-set",
                  "sms_own" if case == "classify set" else "instructions_own", "--judge", "none", "--limit", "3",
                  "--timeout", "0.5", "--retries", "1", "--backoff", "0.05", "--workers", "1")
        took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("error: ") and took < 10, (case, err)
    expect = {"down": "cannot reach a server at", "500": "answered 500 to the model list: check its log",
              "hang": "connected but did not answer within 0.5 s", "not served": "it serves: smol",
              "500 mid-run": "2 of 3 items failed", "classify set": "runs in process only"}[case]
    assert expect in err, err
    runs = tmp_path / "results" / "runs"
    if case != "500 mid-run":
        assert not runs.exists()                                              # nothing half-written
    else:       # the answered item is in a partial rows file of its own; the failed ones are in no row
        assert "rerun the same command to ask only for the failed ones" in err
        (part,) = runs.glob("chat/*.jsonl")
        rows = [json.loads(x) for x in part.read_text().splitlines()]
        assert "__part-" in part.name and len(rows) == 1 and rows[0]["partial"] and rows[0]["n_failed"] == 2
        with Store() as st:
            assert st.count("generations") == 1                              # the answer before the 500s is kept


# ---------------------------------------------------------------- pairwise runs (--judge-mode pairwise --baseline)

@pytest.fixture(scope="module")
def tiny_gpt2_lm(tiny_gpt2_dir):
    from harness.models import load_model
    return load_model(str(tiny_gpt2_dir))


def _pairwise_setup(tiny_lm, tiny_gpt2_lm, fake, monkeypatch, limit=4):
    """A baseline run (tiny llama, no judge) and a pairwise run of tiny gpt2 against it."""
    monkeypatch.setenv("OLLAMA_HOST", fake.host)
    base = run(None, None, "instructions_own", None, limit=limit, max_new_tokens=6, lm=tiny_lm, progress=False)
    cand = run(None, None, "instructions_own", "ollama:llama3", limit=limit, max_new_tokens=6, lm=tiny_gpt2_lm,
               progress=False, judge_mode="pairwise", baseline=base.run_id)
    return base, cand


def test_a_pairwise_run_asks_both_orders_writes_verdicts_and_pw_columns_and_reruns_from_the_cache(
        tiny_lm, tiny_gpt2_lm, tmp_path, monkeypatch):

    from harness.pairwise import combine
    from harness.testing import fake_pairwise_answer
    with FakeOllama(default=fake_pairwise_answer) as fake:
        base, cand = _pairwise_setup(tiny_lm, tiny_gpt2_lm, fake, monkeypatch)
        assert fake.count("/api/chat") == 8 and cand.judged == 8          # 4 items x both orders
        shown = [b["messages"][-1]["content"] for b in fake.chat_bodies()]
        first = cand.rows[0]
        assert first["pw_baseline"] == base.run_id and first["pw_judge"] == "ollama:llama3"
        for r in cand.rows:                                                # the verdicts are combined per item
            assert (r["pw_winner"], ) == (combine(r["pw_ab"], r["pw_ba"])[0], )
            assert r["score"] is None                                     # no pointwise score in this mode
        # each item's two prompts show the candidate's and the baseline's answers in swapped places
        a, b = cand.rows[0]["response"], base.rows[0]["response"]
        both = [t for t in shown if a in t and b in t]
        assert len(both) >= 2 and any(t.index(a) < t.index(b) for t in both) and any(t.index(b) < t.index(a) for t in both)
        assert cand.run_id != run_id_for("instructions_own", cand.rows[0]["model"], None, "ollama:llama3", 4)
        assert "pairwise" in cand.run_id

        import pandas as pd
        board = pd.read_csv(tmp_path / "results" / "leaderboard_chat.csv", dtype=str, keep_default_na=False)
        row = board[board["pw_baseline"] == base.run_id].iloc[0]
        assert row["judge"] == "ollama:llama3" and row["pw_n"] == "4" and row["pw_unparsed"] == "0"
        win = sum({"a": 1.0, "tie": 0.5, "b": 0.0}[r["pw_winner"]] for r in cand.rows) / 4
        assert float(row["pw_win_rate"]) == pytest.approx(win, abs=1e-4)
        assert board[board["pw_baseline"] == ""]["pw_n"].tolist() == [""]      # the baseline's own row: no verdicts
        # a pointwise run with the same judge is its own leaderboard row, not merged with the pairwise one
        run(None, None, "instructions_own", "ollama:llama3", limit=4, max_new_tokens=6, lm=tiny_gpt2_lm, progress=False)
        board = pd.read_csv(tmp_path / "results" / "leaderboard_chat.csv", dtype=str, keep_default_na=False)
        mine = board[(board["model"] == cand.rows[0]["model"]) & (board["judge"] == "ollama:llama3")]
        assert sorted(mine["pw_baseline"]) == ["", base.run_id] and set(mine["n"]) == {"4"}
        assert set(mine["n_duplicates"]) == {"0"}

        from harness.report import write_report
        md = write_report(base.path, cand.path, tmp_path / "reports").read_text(encoding="utf-8")
        section = md[md.index("## Pairwise: "):]
        assert section.startswith(f"## Pairwise: {cand.rows[0]['model']} vs {base.rows[0]['model']}")
        assert f"{100 * win:.1f}%" in section and "position consistency" in section
        flips = sum(r["pw_ab"] is not None and combine(r["pw_ab"], r["pw_ba"])[1] is False for r in cand.rows)
        assert f"({flips} flipped)" in section
        # a report of the two plain runs finds the pairwise run of B against A beside them
        plain = run(None, None, "instructions_own", None, limit=4, max_new_tokens=6, lm=tiny_gpt2_lm, progress=False)
        md2 = write_report(base.path, plain.path, tmp_path / "reports2").read_text(encoding="utf-8")
        assert md2.count("## Pairwise: ") == 1 and f"{100 * win:.1f}%" in md2
        assert f"`python -m harness run --judge-mode pairwise --baseline {base.run_id}`" in md2

        fake.reset()
        again = run(None, None, "instructions_own", "ollama:llama3", limit=4, max_new_tokens=6, lm=tiny_gpt2_lm,
                    progress=False, judge_mode="pairwise", baseline=base.run_id)
        assert fake.count("/api/chat") == 0 and again.judged == 0
        assert [r["pw_winner"] for r in again.rows] == [r["pw_winner"] for r in cand.rows]


def test_a_text_free_baseline_is_read_from_the_store_or_refused_with_the_command_to_regenerate(
        tiny_lm, tiny_gpt2_lm, tmp_path, monkeypatch):
    from harness.testing import fake_pairwise_answer
    with FakeOllama(default=fake_pairwise_answer) as fake:
        base, _ = _pairwise_setup(tiny_lm, tiny_gpt2_lm, fake, monkeypatch, limit=3)
        rows = [json.loads(x) for x in base.path.read_text(encoding="utf-8").splitlines()]
        free = tmp_path / "textfree.jsonl"                                # as committed for a dataset split
        free.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("prompt", "response")}) + "\n"
                                for r in rows), encoding="utf-8")
        ok = run(None, None, "instructions_own", "ollama:llama3", limit=3, max_new_tokens=6, lm=tiny_gpt2_lm,
                 progress=False, judge_mode="pairwise", baseline=str(free))
        assert ok.rows[0]["pw_baseline"] == "textfree" and all(r["pw_winner"] for r in ok.rows)
        with Store(tmp_path / "empty.sqlite") as empty, \
                pytest.raises(UserError, match=r"rows hold no response texts .* 3 of its 3 responses are not in the "
                                               r"store .*regenerate them with `python -m harness run --eval-set "
                                               r"instructions_own --model .* --judge none`"):
            run(None, None, "instructions_own", "ollama:llama3", limit=3, max_new_tokens=6, lm=tiny_gpt2_lm,
                progress=False, judge_mode="pairwise", baseline=str(free), store=empty)


def test_pairwise_bad_input_is_refused_before_any_generation(tiny_lm, tiny_gpt2_lm, tmp_path, monkeypatch):
    from harness.testing import fake_pairwise_answer
    with FakeOllama(default=fake_pairwise_answer) as fake:
        base, _ = _pairwise_setup(tiny_lm, tiny_gpt2_lm, fake, monkeypatch, limit=3)
        fake.reset()
        kw = dict(max_new_tokens=6, progress=False, judge_mode="pairwise")
        with pytest.raises(UserError, match=r"cover different items: 1 item\(s\) only in this run"):
            run(None, None, "instructions_own", "ollama:llama3", limit=4, lm=tiny_gpt2_lm, baseline=base.run_id, **kw)
        with pytest.raises(UserError, match="same model and adapter as this run"):
            run(None, None, "instructions_own", "ollama:llama3", limit=3, lm=tiny_lm, baseline=base.run_id, **kw)
        with pytest.raises(UserError, match="baseline run 'no-such-run' not found: .*instructions_own__"):
            run(None, None, "instructions_own", "ollama:llama3", limit=3, lm=tiny_gpt2_lm, baseline="no-such-run", **kw)
        with pytest.raises(UserError, match="needs a judge"):
            run(None, None, "instructions_own", None, limit=3, lm=tiny_gpt2_lm, baseline=base.run_id, **kw)
        with pytest.raises(UserError, match="needs --baseline RUN"):
            run(None, None, "instructions_own", "ollama:llama3", limit=3, lm=tiny_gpt2_lm, **kw)
        with pytest.raises(UserError, match="--baseline only applies with --judge-mode pairwise"):
            run(None, None, "instructions_own", "ollama:llama3", limit=3, lm=tiny_gpt2_lm, baseline=base.run_id,
                max_new_tokens=6, progress=False)
        assert fake.count("/api/chat") == 0


def test_judge_cmd_pairwise_compares_two_responses_files_by_id(tmp_path, monkeypatch, capsys):
    from harness.testing import fake_pairwise_answer
    rows = _book_rows(5)
    cand = _jsonl(tmp_path / "cand.jsonl", [{"id": f"q{i}", **r} for i, r in enumerate(rows)])
    base = _jsonl(tmp_path / "base.jsonl", [{"id": f"q{i}", **r, "model_response": f"The cat chased mouse {i}."}
                                            for i, r in reversed(list(enumerate(rows)))])      # any order: by id
    other = _jsonl(tmp_path / "other.jsonl", [{"id": f"z{i}", **r} for i, r in enumerate(rows)])
    out = tmp_path / "out.jsonl"
    with FakeOllama(default=fake_pairwise_answer) as fake:
        cfg = JudgeConfig("ollama:llama3", host=fake.url, workers=2)
        assert judge_cmd(cand, str(out), cfg, store=str(tmp_path / "s.sqlite"), judge_mode="pairwise",
                         baseline=base) == 0
        assert fake.count("/api/chat") == 10
        got = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        assert [g["id"] for g in got] == [f"q{i}" for i in range(5)] and all("pw_winner" in g for g in got)
        # the baseline's answer for q0 is the one shown against the candidate's q0 answer
        q0 = [b["messages"][-1]["content"] for b in fake.chat_bodies() if "Mouse 0 was chased" in b["messages"][-1]["content"]]
        assert q0 and all("The cat chased mouse 0." in t for t in q0)
        assert "win rate" in capsys.readouterr().out
        with pytest.raises(UserError, match=r"cover different items: 5 id\(s\) only in .*cand.jsonl \(q0, q1"):
            judge_cmd(cand, str(out), cfg, store=str(tmp_path / "s.sqlite"), judge_mode="pairwise", baseline=other)
