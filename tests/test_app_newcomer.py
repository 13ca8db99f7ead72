"""Issue 23's newcomer list (the app's items), the shared-Space behaviour (part 2) and the default engine (issue 26):
one test per item, each calling the tab modules' handlers (harness/app/) the way the page does. Every test here
fails on the app as it was before these fixes (app.py at f71bac0)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import build_adapter

import tiny

from harness.app import chat as C
from harness.app import compare as K
from harness.app import poem as P
from harness.app.state import AppState, Sampling, status_line
from harness.errors import UserError
from harness.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("adapters")
    build_adapter(tiny_llama_dir, folder / "tiny-chat", kind="causal")
    build_adapter(tiny_llama_dir, folder / "tiny-spam", kind="seq_cls")
    build_adapter(tiny_llama_dir, folder / "tiny-spam-text", kind="causal", task="spam")   # label-as-text
    return folder


@pytest.fixture
def state(tiny_llama_dir, adapters, tmp_path) -> AppState:
    return AppState(model=str(tiny_llama_dir), adapters_folder=adapters, results_folder=tmp_path / "results",
                    store=str(tmp_path / "store.sqlite"), judge_host="127.0.0.1:9")


def written(state: AppState, session: str) -> list[dict]:
    for _ in C.generate_pending(state, session):
        pass
    return C.messages(state, session)


# ---------------------------------------------------------------- 1. the header after "Load this base"

def test_1_a_successful_base_switch_clears_the_previous_failure(tiny_llama_dir, tiny_gpt2_dir, adapters):
    state = AppState(model=str(tiny_llama_dir), adapters_folder=adapters, extra_bases=(str(tiny_gpt2_dir),))
    state.phase, state.phase_note = "failed", "loading some-base failed: out of memory"
    assert "⚠ loading some-base failed" in status_line(state)
    state.switch_base(str(tiny_gpt2_dir))
    line = status_line(state)
    assert "failed" not in line and "⚠" not in line and state.phase == "ready"


# ---------------------------------------------------------------- 2. Regenerate gives another answer

def test_2_regenerate_draws_with_the_next_seed_and_the_label_shows_it(state):
    sampling = Sampling(temperature=0.9, max_new_tokens=6, seed=7)
    C.submit(state, "s", "Hello", "", "base", sampling)
    first = written(state, "s")[-1]
    says = C.regenerate(state, "s", "base", sampling)
    again = written(state, "s")[-1]
    assert first["meta"]["sampling"]["seed"] == 7 and again["meta"]["sampling"]["seed"] == 8
    assert "seed=8" in C.render(state, "s")[-1]["content"] and "seed 8" in says
    assert "seed 9" in C.regenerate(state, "s", "base", sampling)          # and again: the next one
    written(state, "s")
    chosen = C.regenerate(state, "s", "base", Sampling(temperature=0.9, max_new_tokens=6, seed=42))
    assert "seed 42" in chosen, "a seed chosen since is used as it is"
    written(state, "s")
    greedy = C.regenerate(state, "s", "base", Sampling(temperature=0, max_new_tokens=6))
    assert "Greedy decoding" in greedy and "raise the temperature" in greedy


# ---------------------------------------------------------------- 3 to 5. the leaderboard

def chat_csv(folder: Path) -> None:
    import pandas as pd
    base = {"task": "chat", "model": "m", "adapter": "a", "decoding": "", "judge": "", "n": 3}
    rows = [{**base, "eval_set": "own", "judge": "transformers:m", "score_mean": 70.0, "ci_low": 60.0,
             "ci_high": 80.0, "rouge_l": 0.5, "rouge_l_ci_low": 0.4, "rouge_l_ci_high": 0.6},
            {**base, "eval_set": "own", "judge": "transformers:m", "pw_baseline": "own__m__base__transformers-m",
             "pw_win_rate": 0.5, "pw_win_ci_low": 0.3, "pw_win_ci_high": 0.7, "rouge_l": 0.5},
            {**base, "eval_set": "other", "rouge_l": 0.2},
            {**base, "eval_set": "own", "adapter": "", "rouge_l": 0.3},
            {**base, "eval_set": "own", "rouge_l": 0.45}]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "leaderboard_chat.csv", index=False)
    runs = folder / "runs" / "chat"
    runs.mkdir(parents=True)
    for name, adapter, eval_set, values in [("a", "a", "own", (0.9, 0.1, 0.5)), ("b", "", "own", (0.2, 0.1, 0.4)),
                                            ("c", "a", "other", (0.1,))]:
        with open(runs / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i, v in enumerate(values):
                f.write(json.dumps({"item_id": f"i{i}", "task": "chat", "eval_set": eval_set, "model": "m",
                                    "adapter": adapter, "decoding": "", "judge": "", "rouge_l": v,
                                    "prompt_sha": "ab" * 32, "response_sha": "cd" * 32}) + "\n")


def test_3_pointwise_and_pairwise_rows_have_their_own_labels_and_the_default_diff_pair_shares_items(state):
    from harness.app import leaderboard as L
    chat_csv(state.results_folder)
    v = L.view(state, "chat", "all", "", None)
    assert len(set(v["labels"])) == len(v["labels"]) == 5
    assert any("pointwise" in x for x in v["labels"]) and any("pairwise vs the base" in x for x in v["labels"])
    by = dict(zip(v["labels"], v["rows"]))
    assert by[v["diff_a"]]["eval_set"] == by[v["diff_b"]]["eval_set"] == "own"
    assert not by[v["diff_a"]]["judge"] and not by[v["diff_b"]]["judge"], "the rows whose items are there"
    _, rows, summary = L.diff(state, "chat", "all", "", v["diff_a"], v["diff_b"])
    assert "share no items" not in summary and "3 items in common" in summary
    with pytest.raises(UserError, match="same row"):
        L.diff(state, "chat", "all", "", v["diff_a"], v["diff_a"])


def test_4_a_rows_items_say_what_the_sha256_values_are(state):
    from harness.app import leaderboard as L
    chat_csv(state.results_folder)
    header, rows, caption = L.items(state, "chat", "all", "", 2)
    assert header[1:3] == ["prompt (sha256)", "response (sha256)"]
    assert rows[0][1] == "ab" * 8 + "…" and "sha256" in caption and "not committed" in caption


def test_5_each_ci_sits_beside_its_own_metric_and_the_plot_keeps_its_labels_inside(state):
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from harness.leaderboard_view import bar_plot, leaderboard_view
    chat_csv(state.results_folder)
    cols = list(leaderboard_view("chat", folder=state.results_folder)["table"].columns)
    for metric in ("rouge_l", "score_mean", "pw_win_rate"):
        assert cols[cols.index(metric) + 1] == f"{metric} 95% CI"
    assert "ci_low" not in cols and "ci_high" not in cols
    pd.DataFrame({"task": ["spam"], "eval_set": ["s"], "model": ["m"], "adapter": [""], "n": [9],
                  "accuracy": [0.9], "accuracy_ci_low": [0.8], "accuracy_ci_high": [0.95]}
                 ).to_csv(state.results_folder / "leaderboard_spam.csv", index=False)
    spam = leaderboard_view("spam", folder=state.results_folder)["table"]
    assert list(spam["accuracy 95% CI"]) == ["0.800 – 0.950"]

    df = pd.DataFrame([{"model": "smollm2-135m-instruct", "adapter": "smollm2-135m-alpaca", "decoding": "",
                        "eval_set": "instructions_own", "judge": "transformers:smollm2-135m-instruct",
                        "rouge_l": 0.5, "rouge_l_ci_low": 0.4, "rouge_l_ci_high": 0.6},
                       {"model": "gemma3-270m", "adapter": "", "eval_set": "instruction:test", "decoding": "",
                        "judge": "", "rouge_l": 0.3, "rouge_l_ci_low": 0.2, "rouge_l_ci_high": 0.4}])
    fig = bar_plot(df, "rouge_l")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer, width = canvas.get_renderer(), fig.bbox.width
    ax = fig.axes[0]
    texts = [t for t in [ax.xaxis.label, ax.title, *ax.get_yticklabels(), *ax.texts] if t.get_text()]
    cut = [t.get_text() for t in texts if t.get_window_extent(renderer).x0 < 0
           or t.get_window_extent(renderer).x1 > width + 1]
    assert not cut, f"cut off at the figure's edge: {cut}"


# ---------------------------------------------------------------- 6. sonnets

SONNET = tiny.SONNET_18


def test_6_sonnets_get_a_rule_line_room_for_14_lines_and_english_titles_only_in_english(state):
    line, fields = P.rules_report(SONNET, "sonnet", "English")
    assert line.startswith("**Rule check (sonnet") and "rhyme scheme ABAB CDCD EFEF GG" in line
    assert "syllables:" in line and "lines: OK (14 of 14)" in line and fields["sonnet_lines_ok"] is True
    quoted, _ = P.rules_report(SONNET.replace("So long lives this", "Surface: 'the golden"), "sonnet", "English")
    assert "Details:" in quoted and "surface'the" not in quoted, "an opening quote is not glued to a word"
    assert P.default_max_new_tokens("sonnet", 1024) >= 300 and P.default_max_new_tokens("sonnet", 256) == 256
    zh = P.language_changed(state, "中文")
    en = P.language_changed(state, "English")
    assert zh["examples_visible"] == {"zh": True, "en": False} and en["examples_visible"] == {"zh": False, "en": True}
    assert en["form"] == "sonnet" and en["max_new_tokens"] >= 300
    split = P.examples_by_lang(["春夜", "The Sea", "江雪"])
    assert split == {"zh": ["春夜", "江雪"], "en": ["The Sea"]}


def test_6_the_language_warning_says_an_english(tiny_llama_dir, tmp_path):
    folder = tmp_path / "ad"
    build_adapter(tiny_llama_dir, folder / "tiny-poem-zh", kind="causal", task="poem")
    with open(folder / "tiny-poem-zh" / "recipe.toml", "a", encoding="utf-8") as f:
        f.write('lang = "zh"\n')
    state = AppState(model=str(tiny_llama_dir), adapters_folder=folder)
    says = P.language_warning(state, "tiny-poem-zh", "English")
    assert "Pick an English poem adapter" in says and "for an English poem" in says


# ---------------------------------------------------------------- 7. a label-as-text classifier

def test_7_a_label_as_text_classifier_is_in_the_spam_tab_and_not_in_the_chat_pickers(state):
    from harness.app.classify import classifier_choices, classify_message
    from harness.app.state import adapter_choices
    assert "tiny-spam-text" in [v for _, v in classifier_choices(state)]
    assert "tiny-spam-text" not in [v for _, v in adapter_choices(state, "causal")]
    assert "tiny-spam-text" not in K.compare_choices(state) and "tiny-chat" in K.compare_choices(state)
    probs, verdict = classify_message(state, "WIN a prize now", "tiny-spam-text", 0.5)
    assert set(probs) == {"ham", "spam"} and abs(sum(probs.values()) - 1) < 1e-5 and "tiny-spam-text" in verdict


# ---------------------------------------------------------------- 8. blind votes under greedy

def test_8_a_blind_comparison_samples_with_a_fresh_seed_so_its_answers_are_new(state):
    greedy = Sampling(temperature=0, max_new_tokens=6)
    open_ = K.start(state, "s", "Name three colors.", "tiny-chat", greedy)
    blind = [K.start(state, "s", "Name three colors.", "tiny-chat", greedy, blind=True) for _ in range(3)]
    assert open_["sampling"].temperature == 0
    assert all(b["sampling"].temperature >= K.BLIND_TEMPERATURE for b in blind)
    assert len({b["sampling"].seed for b in blind}) == 3, "a fresh seed each time"
    for _ in K.stream(state, "s"):
        pass
    assert "blind: sampled at temperature 0.7 with a fresh seed" in K.view(state, blind[-1])["status"]


# ---------------------------------------------------------------- 9. 390 px (the rest is tests/test_browser.py)

def test_9_the_chat_box_does_not_autofocus_so_the_page_opens_at_the_header(state):
    import app as app_module
    config = app_module.build_demo(state).get_config_file()
    [box] = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "chat-input"]
    assert not box["props"].get("autofocus")


# ---------------------------------------------------------------- 11. the chat export

def test_11_the_chat_export_has_a_sensible_name_and_each_answers_settings_once(state, tmp_path):
    C.submit(state, "s", "Hello", "", "base", Sampling(temperature=0.5, max_new_tokens=5, seed=3))
    written(state, "s")
    md = C.export(state, "s", "md", tmp_path)
    assert md.name.startswith("ftbench-chat-") and md.suffix == ".md" and "predictions" not in md.name
    text = md.read_text(encoding="utf-8")
    for setting in ("temperature 0.5", "top-p", "seed 3", "max 5 new tokens"):
        assert text.count(setting) == 1, setting
    assert C.export(state, "s", "json", tmp_path).name.startswith("ftbench-chat-")


# ---------------------------------------------------------------- 12. no internal paths or CLI advice in the UI

def test_12_the_page_shows_no_internal_paths_and_app_help_says_what_the_app_is(state):
    import app as app_module
    config = json.dumps(app_module.build_demo(state).get_config_file(), ensure_ascii=False)
    for leak in ("harness/tasks", ".toml", "eval_sets/own", str(state.adapters_folder)):
        assert leak not in config, leak
    from harness.app.widgets import ui_sentence
    assert ui_sentence("3 items failed. Items judged so far are saved: rerun the same command to resume") == \
        "3 items failed."
    with pytest.raises(UserError) as e:
        state.resolve_adapter("nope", "causal")
    assert str(state.adapters_folder) not in str(e.value)
    out = subprocess.run([sys.executable, str(PROJECT_ROOT / "app.py"), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "module docstring" not in out.stdout
    assert "web app" in out.stdout and "--engine" in out.stdout


# ---------------------------------------------------------------- 13. no Ollama: the offline judge is offered

def test_13_without_ollama_compare_offers_the_offline_judge_and_it_scores(state, tiny_llama_dir):
    state.offline_judge = f"transformers:{tiny_llama_dir}"
    K.start(state, "s", "Name three colors.", "tiny-chat", Sampling(temperature=0, max_new_tokens=6))
    for _ in K.stream(state, "s"):
        pass
    _, _, notice = K.judge(state, "s")
    assert notice.startswith("No judge scores") and "offline judge" in notice
    assert K.offers_offline_judge(state, notice)
    _, _, offline = K.judge(state, "s", offline=True)
    # the tiny model is a poor judge (its context is too short for the judge prompt), but it is the one asked
    assert state.offline_judge in offline and "Ollama" not in offline


# ---------------------------------------------------------------- 14. the endpoints' argument names

def test_14_endpoint_arguments_have_names_that_explain_themselves_in_the_same_order(state):
    import app as app_module
    api = app_module.build_demo(state).get_api_info()["named_endpoints"]
    sampling = ["temperature", "top_p", "max_new_tokens", "seed", "repetition_penalty"]

    def names(endpoint):
        return [p["parameter_name"] for p in api[endpoint]["parameters"]]
    assert names("/chat") == ["message", "history", "system_prompt", "adapter", *sampling]
    assert names("/compare") == ["instruction", "adapter", *sampling]
    assert names("/poem")[:9] == ["topic", "language", "form", "adapter", *sampling]
    assert names("/poem")[9:] == ["enforce_form", "rhyme", "tone", "rhyme_group"]
    assert names("/classify") == ["message", "classifier", "threshold"]


# ---------------------------------------------------------------- part 2: one app, many visitors

def test_votes_belong_to_their_session_and_the_tally_is_shared(state, adapters, monkeypatch):
    from harness import votes
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(adapters))     # the votes' adapter exists: they are counted
    for sid in ("alice", "bob"):
        K.start(state, sid, "Name three colors.", "tiny-chat", Sampling(max_new_tokens=6), blind=True)
        for _ in K.stream(state, sid):
            pass
        K.vote(state, sid, "left")
    mine = K.vote_table(state, "alice")
    assert len(mine) == 1 and len(K.vote_table(state, "bob")) == 1 and K.vote_table(state, "carol") == []
    assert "Votes counted (every visitor): 2" in K.vote_tally(state)
    with pytest.raises(votes.NotYourVote):
        K.undo(state, "bob", mine[0][0])
    assert "Votes counted (every visitor): 2" in K.vote_tally(state), "refused: nothing changed"
    assert "undone" in K.undo(state, "alice", mine[0][0])
    assert "Votes counted (every visitor): 1" in K.vote_tally(state)


def test_on_spaces_the_app_caps_the_work_writes_no_results_and_shows_no_paths(tiny_llama_dir, adapters, tmp_path,
                                                                               monkeypatch):
    import app as app_module
    from harness.app.page import header_notes
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("FTBENCH_PERSISTENT", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    results = tmp_path / "results"
    results.mkdir()
    state = AppState(model=str(tiny_llama_dir), adapters_folder=adapters, results_folder=results, spaces=True,
                     store=str(tmp_path / "votes.sqlite"), judge_host="127.0.0.1:9")
    assert state.limits.max_new_tokens == 256
    with pytest.raises(UserError, match="at most 256"):
        state.sampling(0.3, 0.9, 512, 0, 1.1)
    demo = app_module.build_demo(state)
    assert demo._queue.max_size == 16
    [slider] = [c for c in demo.get_config_file()["components"]
                if c.get("props", {}).get("elem_id") == "chat-max-tokens"]
    assert slider["props"]["maximum"] == 256
    notes = header_notes(state)
    assert "Votes are kept" in notes and "256 new tokens" in notes and str(tmp_path) not in notes
    C.submit(state, "s", "Hello", "", "base", state.sampling(0.3, 0.9, 5, 0, 1.1))
    written(state, "s")
    C.export(state, "s", "md")
    K.start(state, "s", "Hi", "tiny-chat", Sampling(max_new_tokens=4), blind=True)
    for _ in K.stream(state, "s"):
        pass
    K.vote(state, "s", "tie")
    assert list(results.iterdir()) == [], "nothing is written into results/"


# ---------------------------------------------------------------- issue 26: the default engine

def test_the_default_engine_is_auto_llama_cpp_when_available_else_transformers_said_once(monkeypatch, state):
    import app as app_module
    from harness import llamacpp
    from harness.app.page import header_notes
    from harness.app.server import choose_engine
    assert app_module.parse_args([]).engine == "auto"
    monkeypatch.setattr(llamacpp, "is_available", lambda: (True, "llama-cpp-python 0.3"))
    assert choose_engine("auto") == ("llama.cpp", "")
    assert choose_engine("transformers") == ("transformers", ""), "--engine transformers forces the old path"
    monkeypatch.setattr(llamacpp, "is_available", lambda: (False, "llama-cpp-python is not installed"))
    engine, note = choose_engine("auto")
    assert engine == "transformers" and note == "Engine: transformers (llama-cpp-python is not installed)."
    state.start_note = note
    assert header_notes(state).count("llama-cpp-python is not installed") == 1


# ---------------------------------------------------------------- issue 24: no server path in an upload's error

def test_an_uploads_error_names_the_file_not_the_servers_temporary_path(tmp_path):
    from harness.app.classify import read_upload
    from harness.app.state import Limits
    upload = tmp_path / "gradio-tmp" / "abc123" / "notext.csv"
    upload.parent.mkdir(parents=True)
    upload.write_text("message,category\nhello,ham\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_upload(str(upload), Limits())
    assert "notext.csv" in str(e.value) and "missing column" in str(e.value)
    assert str(upload.parent) not in str(e.value) and "gradio-tmp" not in str(e.value)


def test_compare_given_base_says_so_instead_of_comparing_another_adapter(state):
    with pytest.raises(UserError, match="is the base itself: choose one of tiny-chat"):
        K.start(state, "s", "Name three colors.", "base")
    assert K.start(state, "s", "Name three colors.", None)["adapter"] == "tiny-chat"   # not given: the first one


def test_every_handler_gets_its_request_so_stop_and_votes_know_the_session(state):
    """A handler's `request: gr.Request` must be a real annotation (not a string under `from __future__ import
    annotations`), or Gradio passes nothing and Stop, votes and the chat all act on the empty session."""
    import inspect

    import gradio as gr

    import app as app_module
    demo = app_module.build_demo(state)
    asked = 0
    for dep in demo.fns.values():
        fn = inspect.unwrap(dep.fn) if dep.fn else None
        for p in (inspect.signature(fn).parameters.values() if fn else ()):
            assert not isinstance(p.annotation, str), f"{fn.__qualname__}: {p.name}: {p.annotation!r}"
            asked += p.annotation is gr.Request
    assert asked >= 15
