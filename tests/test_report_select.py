"""`report` selects runs unambiguously and never overwrites a report of other runs (issue 24, part 5): model names
pick complete runs, a partial run (`run --limit`, failed items) is picked by its run id or file."""
from test_leaderboard import BASE, _limited, chat_rows, write_jsonl

from harness.report import find_run_pair, list_runs, report_cmd, write_report


def test_report_picks_complete_runs_by_name_and_partial_ones_by_id(tmp_path, capsys):
    d, out = tmp_path / "runs", tmp_path / "reports"
    write_jsonl(d / "chat" / "base.jsonl", chat_rows(seed=1))
    write_jsonl(d / "chat" / "alpaca.jsonl", chat_rows(adapter="smollm2-135m-alpaca", shift=15, seed=2))
    write_jsonl(d / "chat" / "alpaca__part-5e1ec7ed0000.jsonl",
                _limited(chat_rows(adapter="smollm2-135m-alpaca", shift=-15, seed=3), 10))
    spec = [BASE, f"{BASE}+smollm2-135m-alpaca"]
    a, b = find_run_pair(spec, list_runs(d))          # by name: the complete runs, no ambiguity
    assert (a["path"].name, b["path"].name) == ("base.jsonl", "alpaca.jsonl")
    a, b = find_run_pair(["base", "alpaca__part-5e1ec7ed0000"], list_runs(d))      # by run id
    assert b["partial"] and b["n"] == 10 and b["item_set"] == "5e1ec7ed0000"
    assert report_cmd(spec, runs_dir=str(d), out_dir=str(out)) == 0
    [full_report] = list(out.glob("*/report.md"))
    before = full_report.read_bytes()
    assert report_cmd(["base", "alpaca__part-5e1ec7ed0000"], runs_dir=str(d), out_dir=str(out)) == 0
    assert full_report.read_bytes() == before                   # the report of the complete runs is untouched
    reports = sorted(out.glob("*/report.md"))
    assert len(reports) == 2 and any("__part-" in p.parent.name for p in reports)


def test_report_never_overwrites_a_report_of_other_rows_files(tmp_path):
    d, out = tmp_path / "runs", tmp_path / "reports"
    a = write_jsonl(d / "chat" / "base.jsonl", chat_rows(seed=1))
    b = write_jsonl(d / "chat" / "alpaca.jsonl", chat_rows(adapter="smollm2-135m-alpaca", shift=15, seed=2))
    b2 = write_jsonl(tmp_path / "elsewhere" / "alpaca.jsonl", chat_rows(adapter="smollm2-135m-alpaca", seed=4))
    first = write_report(a, b, out)
    before = first.read_bytes()
    second = write_report(a, b2, out)          # same labels, eval set and judge: the same folder name before
    assert second != first and first.read_bytes() == before
    assert write_report(a, b, out) == first    # the same runs again: the same report, rewritten in place
