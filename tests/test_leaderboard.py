"""Leaderboard CSVs and comparison reports from synthetic rows files (no models, no network).

    python -m pytest tests/test_leaderboard.py -q
"""
import csv
import json
import math

import numpy as np
import pytest

from harness.errors import UserError
from harness.leaderboard import (build_leaderboard, leaderboard_cmd, read_rows, summarize, write_leaderboards)
from harness.metrics import form_check
from harness.tasks import get_task
from harness.report import compare_runs, find_run_pair, list_runs, report_cmd, write_report

ISSUE_COLUMNS = ["task", "eval_set", "model", "adapter", "adapter_sha", "judge", "judge_digest", "n", "n_parsed",
                 "score_mean", "score_ci_low", "score_ci_high", "avg_response_tokens", "gen_tokens_per_s", "created_at",
                 "git_commit"]
BASE = "smollm2-135m-instruct"


def row(**kw) -> dict:
    r = {"task": "chat", "eval_set": "instructions_own", "item_id": "i0", "model": BASE, "adapter": "",
         "adapter_sha": "", "judge": "transformers:smollm2-135m-instruct", "judge_digest": "abc123",
         "judge_prompt_version": "v1", "prompt": "p", "response": "an answer", "reference": "the answer",
         "response_tokens": 10, "gen_seconds": 0.5, "score": 50.0, "parsed": True, "judge_raw": "50",
         "rouge_l": 0.5, "created_at": "2025-01-01T00:00:00+00:00", "git_commit": "c0ffee"}
    r.update(kw)
    return r


def chat_rows(n=40, adapter="", shift=0.0, seed=0, unparsed=0, **kw) -> list[dict]:
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(99).uniform(20, 80, size=n)  # item difficulty shared by every model
    rows = []
    for i in range(n):
        s = float(np.clip(round(base[i] + shift + rng.normal(0, 5)), 0, 100))
        bad = i < unparsed
        rows.append(row(item_id=f"i{i:03d}", adapter=adapter, adapter_sha="sha-" + adapter if adapter else "",
                        score=None if bad else s, parsed=not bad, judge_raw="I cannot rate this" if bad else str(s),
                        response_tokens=int(rng.integers(5, 60)), rouge_l=float(np.clip(s / 100 + rng.normal(0, .1), 0, 1)),
                        **kw))
    return rows


def spam_rows(n=40, errors=(), adapter="") -> list[dict]:
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        pred = ("ham" if label == "spam" else "spam") if i in errors else label
        rows.append(row(task="spam", eval_set="sms_own", item_id=f"s{i}", adapter=adapter, judge="", judge_digest="",
                        judge_prompt_version="", score=None, parsed=True, label=label, pred=pred,
                        p_spam=0.9 if pred == "spam" else 0.1, rouge_l=None, response="", response_tokens=1))
    return rows


POEMS = {"五言绝句": "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
         "bad": "静夜思\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。"}


def poem_rows(n_ok, n_bad, adapter="") -> list[dict]:
    rows = []
    for i in range(n_ok + n_bad):
        text = POEMS["五言绝句"] if i < n_ok else POEMS["bad"]
        item = {"id": f"p{i}", "lang": "zh", "form": "五言绝句", "title": "静夜思", "prompt": "p"}
        fields = get_task("poem").row_metrics(item, text)       # what a run writes on each poem row
        assert fields["form_ok"] == form_check(text, "五言绝句", "zh")["ok"]
        rows.append(row(task="poem", eval_set="poems_own", item_id=f"p{i}", adapter=adapter, response=text,
                        rouge_l=None, **fields))
    return rows


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "runs"
    write_jsonl(d / "chat" / "base.jsonl", chat_rows(adapter="", shift=0, seed=1, unparsed=3))
    write_jsonl(d / "chat" / "alpaca.jsonl", chat_rows(adapter="smollm2-135m-alpaca", shift=15, seed=2))
    write_jsonl(d / "spam" / "base.jsonl", spam_rows(errors=range(0, 40, 4)))
    write_jsonl(d / "spam" / "spam.jsonl", spam_rows(errors=(3,), adapter="smollm2-135m-spam"))
    write_jsonl(d / "poem" / "base.jsonl", poem_rows(2, 8))
    write_jsonl(d / "poem" / "zh.jsonl", poem_rows(9, 1, adapter="smollm2-135m-poem-zh"))
    return d


# ---------------------------------------------------------------- leaderboard

def test_summarize_counts_unparsed_rows_and_ci_contains_mean():
    rows = chat_rows(unparsed=5)
    s = summarize(rows)
    assert s["n"] == 40 and s["n_parsed"] == 35 and s["parse_rate"] == pytest.approx(35 / 40)
    parsed = [r["score"] for r in rows if r["parsed"]]
    assert s["score_mean"] == pytest.approx(np.mean(parsed))
    assert s["score_ci_low"] < s["score_mean"] < s["score_ci_high"]
    assert s["rouge_l_ci_low"] <= s["rouge_l"] <= s["rouge_l_ci_high"]
    assert s["avg_response_tokens"] == pytest.approx(np.mean([r["response_tokens"] for r in rows]))
    assert s["gen_tokens_per_s"] == pytest.approx(sum(r["response_tokens"] for r in rows) / (0.5 * 40))


def test_summarize_all_unparsed_keeps_the_row():
    s = summarize(chat_rows(n=5, unparsed=5))
    assert s["n"] == 5 and s["n_parsed"] == 0 and s["parse_rate"] == 0.0 and math.isnan(s["score_mean"])


def test_summarize_rejects_mixed_groups_and_counts_duplicates():
    with pytest.raises(ValueError, match="groups"):
        summarize(chat_rows(n=3) + chat_rows(n=3, adapter="x"))
    rows = chat_rows(n=4)
    s = summarize(rows + [dict(rows[0], score=0.0)])
    assert s["n"] == 4 and s["n_duplicates"] == 1


def test_summarize_spam_and_poem():
    s = summarize(spam_rows(errors=range(0, 40, 4)))
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["tp"] + s["fn"] == 20 and s["fp"] + s["tn"] == 20
    assert s["accuracy_ci_low"] <= s["accuracy"] <= s["accuracy_ci_high"]
    assert s["n_parsed"] == 40
    p = summarize(poem_rows(3, 1))
    assert p["form_ok_rate"] == 0.75 and p["n_form"] == 4
    assert 0 < p["distinct_2"] <= 1 and p["repetition"] >= 0 and p["looping_rate"] == 0.0


def test_build_leaderboard_sorted_by_main_score(runs):
    tables = build_leaderboard(runs)
    assert set(tables) == {"chat", "spam", "poem"}
    chat = tables["chat"]
    assert list(chat["adapter"]) == ["smollm2-135m-alpaca", ""]  # the better model first
    assert list(chat["n_parsed"]) == [40, 37] and list(chat["n"]) == [40, 40]
    assert list(tables["spam"]["adapter"]) == ["smollm2-135m-spam", ""]
    assert list(tables["poem"]["form_ok_rate"]) == [0.9, 0.2]  # equal judge scores: form_ok breaks the tie
    assert set(build_leaderboard(runs, task="spam")) == {"spam"}


def test_write_leaderboards_csv_columns(runs, tmp_path):
    paths = write_leaderboards(runs, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["leaderboard_chat.csv", "leaderboard_poem.csv", "leaderboard_spam.csv"]
    with (tmp_path / "out" / "leaderboard_spam.csv").open() as fh:
        recs = list(csv.DictReader(fh))
    classify_cols = [c for c in ISSUE_COLUMNS if c not in ("avg_response_tokens", "gen_tokens_per_s")]
    for col in classify_cols + ["accuracy", "macro_f1", "precision", "recall", "f1", "f1_ci_low", "f1_ci_high", "tp",
                                "fp", "items_per_s"]:
        assert col in recs[0], col
    assert "gen_tokens_per_s" not in recs[0], "a classifier generates no tokens: no tokens/s column that reads 0"
    assert float(recs[0]["accuracy"]) == pytest.approx(39 / 40)
    with (tmp_path / "out" / "leaderboard_chat.csv").open() as fh:
        chat = list(csv.DictReader(fh))
    assert set(ISSUE_COLUMNS) | {"rouge_l", "parse_rate"} <= set(chat[0]) and chat[1]["n_parsed"] == "37"
    with (tmp_path / "out" / "leaderboard_poem.csv").open() as fh:
        assert {"form_ok_rate", "distinct_2", "repetition"} <= set(next(csv.DictReader(fh)))


def test_malformed_rows_file_names_file_and_line(tmp_path):
    f = tmp_path / "runs" / "chat" / "bad.jsonl"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(row()) + "\n\n" + '{"task": "chat", "model": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:3"):
        read_rows(f)
    f.write_text(json.dumps(row()) + "\n" + json.dumps({"task": "chat"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:2: row lacks eval_set, item_id, model"):
        build_leaderboard(tmp_path / "runs")


def test_leaderboard_cmd(runs, tmp_path, capsys):
    assert leaderboard_cmd(runs_dir=str(runs), out_dir=str(tmp_path / "o")) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-alpaca" in out and "leaderboard_chat.csv" in out
    with pytest.raises(UserError, match="tasks with runs: chat, poem, spam"):
        leaderboard_cmd(task="summaries", runs_dir=str(runs), out_dir=str(tmp_path / "o"))
    with pytest.raises(UserError, match="no rows files"):
        leaderboard_cmd(runs_dir=str(tmp_path / "empty"), out_dir=str(tmp_path / "o"))


# ---------------------------------------------------------------- comparison report

def test_compare_runs_finds_a_clear_difference():
    cmp = compare_runs(chat_rows(shift=0, seed=1, unparsed=2), chat_rows(adapter="a", shift=15, seed=2))
    p = cmp["primary"]
    assert p["metric"] == "judge score" and p["n"] == 38 and cmp["unpaired"] == 2
    assert cmp["distinguishable"] and 10 < p["mean_diff"] < 20 and p["ci_low"] > 5
    assert p["wins"] > 30
    assert "scores higher" in cmp["verdict"]
    assert cmp["secondary"][0]["metric"] == "ROUGE-L"
    assert cmp["health"]["a"]["n_scored"] == 38 and sum(cmp["health"]["a"]["hist"]) == 38
    assert cmp["health"]["a"]["rouge_spearman"] > 0.5  # rouge_l was built from the score


def test_compare_runs_says_when_it_cannot_tell():
    cmp = compare_runs(chat_rows(shift=0, seed=1), chat_rows(adapter="a", shift=0, seed=2))
    assert not cmp["distinguishable"] and "cannot tell" in cmp["verdict"]
    small = compare_runs(chat_rows(n=8, seed=1), chat_rows(n=8, adapter="a", shift=30, seed=2))
    assert not small["distinguishable"] and "too small" in small["verdict"]


def test_compare_runs_only_common_items_and_spam_discordance():
    a = spam_rows(errors=(0, 1, 2, 3))
    b = spam_rows(errors=(3, 5), adapter="s")[:30]
    cmp = compare_runs(a, b)
    assert cmp["n_common"] == 30 and cmp["only_a"] == 10 and cmp["only_b"] == 0
    assert cmp["classification"]["a_only"] == 1 and cmp["classification"]["b_only"] == 3  # item 5 vs items 0, 1, 2
    assert cmp["primary"]["mean_diff"] == pytest.approx(2 / 30)
    with pytest.raises(ValueError):
        compare_runs(a, chat_rows())


def test_write_report_files(runs, tmp_path):
    out = tmp_path / "reports"
    md = write_report(runs / "chat" / "base.jsonl", runs / "chat" / "alpaca.jsonl", out)
    text = md.read_text(encoding="utf-8")
    assert md.parent.parent == out and md.name == "report.md"
    assert (md.parent / "scores.png").stat().st_size > 1000 and (md.parent / "paired.png").stat().st_size > 1000
    assert "paired bootstrap" in text and "Judge health" in text and "](scores.png)" in text
    md = write_report(runs / "poem" / "base.jsonl", runs / "poem" / "zh.jsonl", out)
    assert (md.parent / "form_ok.png").exists()
    md = write_report(runs / "spam" / "base.jsonl", runs / "spam" / "spam.jsonl", out)
    assert "McNemar" in md.read_text(encoding="utf-8") and (md.parent / "p_spam.png").exists()


def test_report_cmd_finds_runs_by_spec(runs, tmp_path, capsys):
    out = tmp_path / "reports"
    assert report_cmd([BASE, f"{BASE}+smollm2-135m-alpaca"], runs_dir=str(runs), out_dir=str(out)) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(list(out.glob("*/report.md"))) == 1
    # base has chat, spam and poem runs; only the spam one pairs with the spam adapter
    a, b = find_run_pair([BASE, BASE + "+smollm2-135m-spam"], list_runs(runs))
    assert a["task"] == b["task"] == "spam" and b["adapter"] == "smollm2-135m-spam"
    with pytest.raises(UserError, match="Available runs"):
        report_cmd([BASE, BASE + "+nope"], runs_dir=str(runs), out_dir=str(out))
    assert report_cmd([BASE, BASE + "+smollm2-135m-spam"], task="spam", runs_dir=str(runs), out_dir=str(out)) == 0
    # a second eval set for both models makes the pair ambiguous until --eval-set is given
    write_jsonl(runs / "chat" / "base2.jsonl", chat_rows(eval_set="instruction:test"))
    write_jsonl(runs / "chat" / "alpaca2.jsonl", chat_rows(adapter="smollm2-135m-alpaca", eval_set="instruction:test"))
    with pytest.raises(UserError, match="several pairs of runs match(.|\\n)*--eval-set"):
        report_cmd([BASE, f"{BASE}+smollm2-135m-alpaca"], runs_dir=str(runs), out_dir=str(out))
    assert report_cmd([BASE, f"{BASE}+smollm2-135m-alpaca"], eval_set="instruction:test",
                      runs_dir=str(runs), out_dir=str(out)) == 0


def test_report_pairs_runs_of_the_same_decoding(runs, tmp_path):
    """Free and form-constrained runs of the same models are different experiments: --decoding picks one pair, the
    report folder names it, and a form run never pairs with a free one."""
    out = tmp_path / "reports"
    write_jsonl(runs / "poem" / "base_form.jsonl", [dict(r, decoding="form") for r in poem_rows(10, 0)])
    write_jsonl(runs / "poem" / "zh_form.jsonl",
                [dict(r, decoding="form") for r in poem_rows(10, 0, adapter="smollm2-135m-poem-zh")])
    spec = [BASE, f"{BASE}+smollm2-135m-poem-zh"]
    with pytest.raises(UserError, match="several pairs(.|\n)*decoding=form(.|\n)*--decoding"):
        report_cmd(spec, task="poem", runs_dir=str(runs), out_dir=str(out))
    a, b = find_run_pair(spec, list_runs(runs), task="poem", decoding="form")
    assert a["path"].name == "base_form.jsonl" and b["path"].name == "zh_form.jsonl"
    a, b = find_run_pair(spec, list_runs(runs), task="poem", decoding="free")
    assert a["path"].name == "base.jsonl" and b["path"].name == "zh.jsonl"
    assert report_cmd(spec, task="poem", decoding="form", runs_dir=str(runs), out_dir=str(out)) == 0
    assert report_cmd(spec, task="poem", decoding="free", runs_dir=str(runs), out_dir=str(out)) == 0
    names = sorted(p.parent.name for p in out.glob("*/report.md"))
    assert len(names) == 2 and names[0] + "_form" == names[1]


def test_cli_wiring(runs, tmp_path):
    from harness.__main__ import COMMANDS
    from harness.cli import main

    assert main(COMMANDS, ["leaderboard", "--runs-dir", str(runs), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "leaderboard_chat.csv").exists()
    args = ["report", "--models", BASE, f"{BASE}+smollm2-135m-alpaca", "--runs-dir", str(runs),
            "--out-dir", str(tmp_path / "r")]
    assert main(COMMANDS, args) == 0
    assert main(COMMANDS, args[:3] + ["nope", *args[4:]]) == 2  # UserError -> exit 2, no traceback


def test_committed_leaderboards_rebuild_byte_identically(tmp_path, capsys):
    """`python -m harness leaderboard` on a fresh clone rewrites every committed CSV byte for byte: the rows files
    behind them are committed (text-free) and the CSVs are a pure function of them."""
    from harness.paths import PROJECT_ROOT
    results = PROJECT_ROOT / "results"
    committed = sorted(results.glob("leaderboard_*.csv"))
    assert committed, "no committed leaderboards"
    assert leaderboard_cmd(runs_dir=str(results / "runs"), out_dir=str(tmp_path)) == 0
    assert sorted(p.name for p in tmp_path.glob("leaderboard_*.csv")) == [p.name for p in committed]
    for p in committed:
        assert (tmp_path / p.name).read_bytes() == p.read_bytes(), (
            f"{p.name} does not match its rows files: run `python -m harness leaderboard` and commit the result")


def test_reports_cite_only_committed_files():
    import re
    import subprocess
    from harness.paths import PROJECT_ROOT
    reports = sorted((PROJECT_ROOT / "results" / "reports").rglob("*.md"))
    assert reports
    try:
        tracked = set(subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                     check=True).stdout.splitlines())
    except (OSError, subprocess.CalledProcessError):
        tracked = None          # not a git checkout: the files must at least exist
    for md in reports:
        text = md.read_text(encoding="utf-8")
        cited = set(re.findall(r"`((?:results|adapters|eval_sets)/[^`\s]+)`", text))
        cited |= {str((md.parent / f).relative_to(PROJECT_ROOT)) for f in re.findall(r"\]\(([^)\s:]+\.png)\)", text)}
        for c in cited:
            assert (PROJECT_ROOT / c).exists() and (tracked is None or c in tracked), f"{md}: cites {c}, not committed"


def test_judge_vs_rules_counts_how_often_the_judge_sides_with_each_rule_check():
    from harness.report import judge_vs_rules
    rows = [{"parsed": True, "score": s, "form_ok": f, "rhyme_ok": rh} for s, f, rh in
            [(90, True, True), (80, True, False), (80, False, None), (20, False, False)]]
    got = {r["check"]: r for r in judge_vs_rules(rows)}
    # form: pass {90, 80} vs fail {80, 20}: 90>80, 90>20, 80=80 (1/2), 80>20 -> 3.5 / 4
    assert got["form_ok"]["agreement"] == 3.5 / 4 and got["form_ok"]["n_pass"] == 2
    assert got["rhyme_ok"]["agreement"] == 1.0 and got["rhyme_ok"]["mean_fail"] == 50.0   # 90 vs {80, 20}
    assert "tone_ok" not in got                                         # no poem has a tone verdict
    assert judge_vs_rules([{"parsed": False, "score": None, "form_ok": True}]) == []


# ---------------------------------------------------------------- runs are what they say (issue 24, part 5)

def _limited(rows, n, item_set="5e1ec7ed0000"):
    return [dict(r, item_set=item_set, partial=True, created_at="2026-12-06T00:00:00+00:00", git_commit="beef")
            for r in rows[:n]]


def test_a_partial_run_is_its_own_row_never_merged_into_the_full_one(tmp_path):
    d = tmp_path / "runs"
    full = chat_rows(n=50, seed=1)
    write_jsonl(d / "chat" / "run.jsonl", full)
    write_jsonl(d / "chat" / "run__part-5e1ec7ed0000.jsonl", _limited(chat_rows(n=50, seed=7), 10))
    df = build_leaderboard(d, "chat")["chat"]
    assert len(df) == 2
    whole = df[~df["partial"]].iloc[0]
    part = df[df["partial"]].iloc[0]
    assert whole["n"] == 50 and whole["n_duplicates"] == 0 and whole["created_at"] == full[0]["created_at"]
    assert whole["git_commit"] == "c0ffee" and whole["item_set"] == ""
    assert part["n"] == 10 and part["item_set"] == "5e1ec7ed0000" and part["git_commit"] == "beef"
    [path] = write_leaderboards(d, tmp_path / "out", "chat")
    header = path.read_text().splitlines()[0].split(",")
    assert header.index("item_set") == header.index("judge_prompt_version") + 1 and "partial" in header


def test_tables_without_partial_runs_keep_their_columns(runs, tmp_path):
    for path in write_leaderboards(runs, tmp_path):
        header = path.read_text().splitlines()[0].split(",")
        assert "item_set" not in header and "partial" not in header


def test_every_ci_is_named_after_its_metric_and_the_cli_prints_them(runs, tmp_path, capsys):
    """Issue 23 item 5: the judge's CI sat as ci_low/ci_high beside rouge_l; the CLI printed no CI."""
    paths = {p.name: p for p in write_leaderboards(runs, tmp_path / "o")}
    chat = paths["leaderboard_chat.csv"].read_text().splitlines()[0].split(",")
    assert "ci_low" not in chat and "ci_high" not in chat
    i = chat.index("score_mean")
    assert chat[i + 1:i + 3] == ["score_ci_low", "score_ci_high"]
    i = chat.index("rouge_l")
    assert chat[i + 1:i + 3] == ["rouge_l_ci_low", "rouge_l_ci_high"]
    spam = paths["leaderboard_spam.csv"].read_text().splitlines()[0].split(",")
    i = spam.index("accuracy")
    assert spam[i + 1:i + 3] == ["accuracy_ci_low", "accuracy_ci_high"]
    capsys.readouterr()
    assert leaderboard_cmd(runs_dir=str(runs), out_dir=str(tmp_path / "o")) == 0
    out = capsys.readouterr().out
    for metric in ("score_mean", "rouge_l", "accuracy"):
        assert f"{metric} 95% CI" in out
    import re
    assert re.search(r"\d\.\d{3}-\d\.\d{3}", out)
