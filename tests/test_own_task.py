"""The README's "Add your own task" walk, step by step: a three-label classification task from a CSV the user
writes, from eval set to leaderboard rows (zero-shot base, then a label-as-text adapter trained on it).

    python -m pytest -q tests/test_own_task.py
"""
import csv
import re
import textwrap

import pytest

from harness.__main__ import COMMANDS
from harness.cli import main
from harness.paths import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## Add your own task", 1)[1].split("\n## ", 1)[0] if "## Add your own task" in README else ""

MESSAGES = {
    "billing": ["I was charged twice for my subscription", "Please send me the invoice for March",
                "Can I get a refund for the last payment", "Why is my bill higher this month"],
    "tech": ["The app crashes when I open settings", "I cannot log in since the update",
             "The page shows error 500 on checkout", "Sync stopped working on my phone"],
    "other": ["Do you have an office in Lisbon", "I love your product, thanks",
              "Are you hiring engineers", "What are your opening hours"],
}


def files_of_the_walk() -> dict[str, str]:
    """The files the README tells the user to write, taken from the README itself (so the two cannot drift)."""
    blocks = re.findall(r"cat > eval_sets/((?:tasks|recipes)/\S+) <<'EOF'\n(.*?)\nEOF", SECTION, re.S)
    return {name.split("/")[1]: text + "\n" for name, text in blocks}


def cli(*argv) -> int:
    return main(COMMANDS, list(argv))


def test_readme_has_the_walk():
    files = files_of_the_walk()
    assert {"support.toml", "support_own.csv", "support_train.csv", "smollm2-135m-support.toml"} <= set(files)
    for cmd in ("python -m harness tasks", "python -m harness data list", "python -m harness run",
                "python -m harness leaderboard --task support", "python -m harness finetune"):
        assert cmd in SECTION, cmd


def test_the_walk_from_csv_to_leaderboard(tmp_path, monkeypatch, capsys, tiny_llama_dir):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    monkeypatch.setenv("FTBENCH_TASKS", str(tasks))
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name, text in files_of_the_walk().items():
        (recipes if name.startswith("smollm2-") else tasks).joinpath(name).write_text(text, encoding="utf-8")
    # the user's own messages (the README shows a few lines; the test writes more of the same shape)
    for name, per in (("support_own.csv", slice(0, 2)), ("support_train.csv", slice(2, 4))):
        with open(tasks / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for label, texts in MESSAGES.items():
                w.writerows([t, label] for t in texts[per])

    assert cli("tasks") == 0
    assert re.search(r"support\s+classify\s+labels billing, tech, other", capsys.readouterr().out)
    assert cli("data", "list") == 0
    assert "support_own" in capsys.readouterr().out

    # the base model, zero-shot: the label whose tokens are likeliest after the task's prompt
    model = str(tiny_llama_dir)
    assert cli("run", "--model", model, "--eval-set", "support_own", "--judge", "none") == 0
    assert cli("leaderboard", "--task", "support") == 0
    board = tmp_path / "results" / "leaderboard_support.csv"
    rows = list(csv.DictReader(board.open(encoding="utf-8")))
    assert len(rows) == 1 and rows[0]["n"] == "6" and rows[0]["n_parsed"] == "6"
    assert 0 <= float(rows[0]["accuracy"]) <= 1 and rows[0]["macro_f1"] != ""
    assert "precision" not in rows[0], "no positive label declared: no binary precision/recall columns"
    items = (tmp_path / "results" / "runs" / "support").glob("*.jsonl")
    run_rows = [line for p in items for line in p.read_text(encoding="utf-8").splitlines()]
    assert len(run_rows) == 6 and all('"p_billing"' in r and '"p_tech"' in r and '"p_other"' in r for r in run_rows)

    # a label-as-text adapter trained on the user's train CSV, then measured on the same leaderboard
    recipe = recipes / "smollm2-135m-support.toml"
    recipe.write_text(recipe.read_text(encoding="utf-8").replace('base = "smollm2-135m-instruct"', f'base = "{model}"'),
                      encoding="utf-8")
    assert cli("finetune", str(recipe), "--max-steps", "2") == 0
    assert cli("run", "--model", model, "--adapter", "smollm2-135m-support", "--eval-set", "support_own",
               "--judge", "none") == 0
    assert cli("leaderboard", "--task", "support") == 0
    rows = list(csv.DictReader(board.open(encoding="utf-8")))
    assert sorted(r["adapter_method"] for r in rows) == ["label_text", "zero_shot"]
    assert {r["adapter"] for r in rows} == {"", "smollm2-135m-support"}


def test_a_label_outside_the_task_names_file_and_line(tmp_path, monkeypatch, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    monkeypatch.setenv("FTBENCH_TASKS", str(tasks))
    files = files_of_the_walk()
    (tasks / "support.toml").write_text(files["support.toml"], encoding="utf-8")
    (tasks / "support_own.csv").write_text("text,label\nhello,billing\nmy card,payments\n", encoding="utf-8")
    (tasks / "support_train.csv").write_text("text,label\nhello,billing\n", encoding="utf-8")
    assert cli("run", "--eval-set", "support_own", "--judge", "none") == 2
    err = capsys.readouterr().err
    assert "support_own.csv:3" in err and "'payments' is not one of billing, tech, other" in err


# ---------------------------------------------------------------- the task schema (issue 24, part 3)

def _user_task(tmp_path, monkeypatch, name: str, text: str):
    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    monkeypatch.setenv("FTBENCH_TASKS", str(tasks))
    (tasks / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return tasks / name


def test_a_classify_task_without_prompt_is_refused(tmp_path, monkeypatch):
    from harness.errors import UserError
    from harness.tasks import get_task
    path = _user_task(tmp_path, monkeypatch, "intent.toml", """\
        kind = "classify"
        labels = ["billing", "tech"]
        """)
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:1: a classify task must set prompt"):
        get_task("intent")


def test_a_user_task_named_like_a_built_in_is_an_error_naming_both(tmp_path, monkeypatch):
    from harness.errors import UserError
    from harness.tasks import BUILTIN_DIR, list_tasks
    path = _user_task(tmp_path, monkeypatch, "spam.toml", """\
        kind = "classify"
        labels = ["a", "b"]
        prompt = "A or B? {text}"
        """)
    with pytest.raises(UserError) as e:
        list_tasks()
    assert str(path) in str(e.value) and str(BUILTIN_DIR / "spam.toml") in str(e.value)


def test_task_file_problems_carry_the_line(tmp_path, monkeypatch):
    from harness.errors import UserError
    from harness.tasks import get_task
    _user_task(tmp_path, monkeypatch, "intent.toml", """\
        kind = "classify"
        # the labels
        labels = "billing, tech"
        prompt = "Which? {text}"
        """)
    with pytest.raises(UserError, match=r"intent.toml:3: labels must be a list of strings"):
        get_task("intent")
    _user_task(tmp_path, monkeypatch, "intent.toml", """\
        kind = "classify"
        labels = ["billing", "tech"]

        prompt = "Which team should answer?"
        """)
    with pytest.raises(UserError, match=r"intent.toml:4: the classify prompt must contain \{text\}"):
        get_task("intent")
    _user_task(tmp_path, monkeypatch, "intent.toml", 'kind = "classify"\nlabels = ["a", "b"\n')
    with pytest.raises(UserError, match=r"intent.toml:\d+: not valid TOML"):
        get_task("intent")
