"""One classify path (issue 24, part 4): the app's zero-shot, the CLI's and the leaderboard's are one computation,
harness.classify.classify: each whole label word (and EOS) scored after the task's own prompt."""
from __future__ import annotations

import pytest

TEXTS = ["WIN a prize now! Claim at the link", "see you at noon", "Your parcel fee is unpaid: pay here"]


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    from harness.models import load_model
    return load_model(str(tiny_llama_dir))


def test_base_zero_shot_scores_whole_label_words_on_the_task_prompt(lm):
    from harness.classify import classify, label_loglik, label_prompt, softmax_rows
    from harness.tasks import get_task
    task = get_task("spam")
    got = classify(lm, TEXTS, None)                      # task defaults to the only classify task
    with lm.using(None) as model:
        ref = softmax_rows(label_loglik(lm, model, [label_prompt(lm, task.prompt, t) for t in TEXTS],
                                        list(task.labels)), list(task.labels))
    for g, r in zip(got, ref):
        assert g == pytest.approx(r, abs=1e-6)
        assert set(g) == {"ham", "spam"} and sum(g.values()) == pytest.approx(1)


def test_the_apps_zero_shot_gives_the_leaderboards_numbers(lm):
    """The app's Spam tab used generation.zero_shot_spam (first-token probabilities on its own prompt); now its
    base zero-shot is the leaderboard's computation."""
    from harness.app.classify import classify_texts
    from harness.app.state import AppState
    from harness.classify import classify
    from harness.tasks import get_task
    app, name = classify_texts(AppState(lm=lm), TEXTS, "base")
    assert name is None
    for a, b in zip(classify(lm, TEXTS, None, get_task("spam")), app):
        assert a == pytest.approx(b, abs=1e-6)


def test_the_leaderboards_call_and_the_clis_agree(lm):
    from harness.classify import classify
    from harness.tasks import get_task
    assert classify(lm, TEXTS, None, get_task("spam")) == classify(lm, TEXTS, "base")
    assert classify(lm, [], None) == []


def test_dead_code_is_gone():
    import harness.classify
    from harness.tasks import Task
    assert not hasattr(harness.classify, "method_of")
    assert not hasattr(Task, "classify_prompt") and not hasattr(Task, "main_column")
    import harness.generation
    assert not hasattr(harness.generation, "SPAM_PROMPT")
    assert not hasattr(harness.generation, "_first_token") and not hasattr(harness.generation, "_backbone")
