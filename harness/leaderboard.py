"""Leaderboard CSVs as a pure function of the per-item rows files results/runs/<task>/*.jsonl.

    python -m harness leaderboard                 # every task -> results/leaderboard_<task>.csv
    python -m harness leaderboard --task chat     # one task
    python -m pytest tests/test_leaderboard.py -q

The committed rows files are text-free (hashes, scores, token counts, identities), so a fresh clone rebuilds
every committed leaderboard CSV byte-identically (tests/test_leaderboard.py checks it against the repository).

One leaderboard row per (task, eval_set, model, adapter, adapter_sha, adapter_method, decoding, judge,
judge_digest, judge_prompt_version, item_set): a retrained adapter or a changed judge never averages into an older
row, and a run over part of the eval set (`run --limit`, or a run with failed items: its rows carry `partial` and
the `item_set` hash of its item ids) is its own row, marked partial, never merged into the full run's row. The
`item_set` and `partial` columns appear only in a table that has such a run (older rows files carry neither).
Likewise the in-process `engine` (rows without it were written by transformers): a llama.cpp run is its own row,
and the `engine` column appears only in a table that has a non-transformers row.
Rows whose judge answer was not parsed stay in ``n`` (never dropped) and are missing from ``n_parsed``;
``parse_rate`` = n_parsed / n. Every confidence interval is named after its metric: ``score_ci_low`` /
``score_ci_high`` bound the judge's ``score_mean``, ``rouge_l_ci_low`` / ``rouge_l_ci_high`` bound ``rouge_l``,
``accuracy_ci_low`` / ``accuracy_ci_high`` bound ``accuracy`` (95% percentile bootstrap over items). Within one group, a repeated item_id keeps its last row and is counted in
``n_duplicates`` (should be 0; anything else points at the writer).

The task's columns, what counts as usable (n_parsed) and the sort order come from the task registry
(harness/tasks): e.g. spam by accuracy, chat by ROUGE-L, poems by form rate (missing values last).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from harness.errors import UserError
from harness.io import write_frame
from harness.metrics import as_float, is_scored  # noqa: F401 - re-exported for report and the app

REQUIRED = ("task", "eval_set", "item_id", "model")
GROUP_KEY = ("task", "eval_set", "model", "adapter", "adapter_sha", "adapter_method", "decoding", "judge",
             "judge_digest", "judge_prompt_version")
RUN_COLUMNS = ["item_set", "partial"]          # written only when some row of the table is not the default
# the in-process engine that wrote the rows: absent (older rows) = transformers; written only when some row of
# the table ran on another engine (llama.cpp)
ENGINE_COLUMNS = ["engine"]
COMMON_COLUMNS = [*GROUP_KEY, *ENGINE_COLUMNS, *RUN_COLUMNS, "n", "n_parsed", "parse_rate", "score_mean", "score_ci_low",
                  "score_ci_high"]
TAIL_COLUMNS = {"generate": ["avg_response_tokens", "gen_tokens_per_s"], "classify": ["items_per_s"]}
# pairwise judging against a baseline run (harness.pairwise; `run --judge-mode pairwise --baseline RUN`)
COUNT_COLUMNS = {"pw_n", "pw_unparsed"}
PAIRWISE_COLUMNS = ["pw_baseline", "pw_win_rate", "pw_win_ci_low", "pw_win_ci_high", "pw_ties", "pw_consistency",
                    "pw_first_wins", "pw_n", "pw_unparsed"]
END_COLUMNS = ["n_duplicates", "created_at", "git_commit"]
PRINT_COLUMNS = ["eval_set", "model", "adapter", "adapter_method", "decoding", "engine", "judge", "partial", "n", "n_parsed",
                 "score_mean", "rouge_l", "form_ok_rate", "distinct_2", "rhyme_rate", "tone_rate", "accuracy",
                 "macro_f1", "precision", "recall", "f1"]


def columns_for(task: str) -> list[str]:
    """The CSV columns of a task's leaderboard, in order."""
    from harness.tasks import get_task
    t = get_task(task)
    pairwise = PAIRWISE_COLUMNS if t.kind == "generate" else []
    return [*COMMON_COLUMNS, *t.columns(), *TAIL_COLUMNS[t.kind], *pairwise, *END_COLUMNS]


def read_rows(path: str | Path) -> list[dict]:
    """Rows of one JSONL rows file; blank lines skipped.

    A line that is not a JSON object or lacks task/eval_set/item_id/model raises UserError naming the
    file and line number.
    """
    from harness.io import iter_jsonl
    path = Path(path)
    fix = ("fix or delete that line, or delete the file and rerun `python -m harness run ...` "
           "for that model and eval set to rewrite it")
    rows = []
    for lineno, row in iter_jsonl(path, fix):
        missing = [k for k in REQUIRED if row.get(k) in (None, "")]
        if missing:
            raise UserError(f"{path}:{lineno}: row lacks {', '.join(missing)}; {fix}")
        rows.append(row)
    return rows


def group_key(row: dict) -> tuple[str, ...]:
    """The leaderboard identity of a row (GROUP_KEY, then the pairwise baseline: a pairwise run is its own row
    beside the pointwise run of the same judge; then the item set and whether the run is partial); absent
    fields count as ""; then the engine, "" for transformers)."""
    return tuple(str(row.get(k) or "") for k in (*GROUP_KEY, "pw_baseline", "item_set")) + (
        "partial" if row.get("partial") is True else "", engine_of(row))


def engine_of(row: dict) -> str:
    """The in-process engine of a row, "" for transformers (rows without the field were written by it)."""
    e = str(row.get("engine") or "")
    return "" if e == "transformers" else e


def group_rows(rows: Iterable[dict]) -> dict[tuple[str, ...], list[dict]]:
    """Rows grouped by `group_key`, in first-seen order."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    return groups


def dedupe(rows: list[dict]) -> tuple[list[dict], int]:
    """Keep the last row per item_id (file order); returns (rows, number dropped)."""
    last = {}
    for r in rows:
        last[str(r["item_id"])] = r
    return list(last.values()), len(rows) - len(last)


def _mean(values: list) -> float:
    vals = [v for v in (as_float(x) for x in values) if v is not None]
    return sum(vals) / len(vals) if vals else math.nan


def summarize(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """One leaderboard row (a dict over `columns_for(task)`) from the rows of one group.

    All rows must share the same `group_key` (ValueError otherwise)."""
    from harness.metrics import bootstrap_mean_ci
    from harness.tasks import get_task
    if not rows:
        raise ValueError("summarize needs at least one row")
    keys = {group_key(r) for r in rows}
    if len(keys) > 1:
        raise ValueError(f"summarize got rows of {len(keys)} groups; split them with group_rows first")
    rows, n_dup = dedupe(rows)
    key = dict(zip(GROUP_KEY, group_key(rows[0])))
    task = get_task(key["task"])
    out: dict = {c: math.nan for c in columns_for(task.name)}
    out.update(key)
    n = len(rows)
    scored = [r for r in rows if is_scored(r)]
    mean, lo, hi = bootstrap_mean_ci([as_float(r["score"]) for r in scored], n_boot=n_boot, seed=seed)
    out.update(n=n, score_mean=mean, score_ci_low=lo, score_ci_high=hi, n_duplicates=n_dup,
               item_set=str(rows[0].get("item_set") or ""), partial=rows[0].get("partial") is True,
               engine=engine_of(rows[0]) or "transformers")
    out.update(task.summarize(rows, n_boot=n_boot, seed=seed))
    n_parsed = sum(task.usable(r, bool(key["judge"])) for r in rows)
    out["n_parsed"] = n_parsed
    out["parse_rate"] = n_parsed / n
    secs = [as_float(r.get("gen_seconds")) for r in rows]
    if task.kind == "classify":
        total = sum(s for s in secs if s is not None)
        out["items_per_s"] = n / total if total > 0 else math.nan
    else:
        toks = [as_float(r.get("response_tokens")) for r in rows]
        out["avg_response_tokens"] = _mean(toks)
        timed = [(t, s) for t, s in zip(toks, secs) if t is not None and s is not None and s > 0]
        if timed:
            out["gen_tokens_per_s"] = sum(t for t, _ in timed) / sum(s for _, s in timed)
    if task.kind == "generate":
        from harness.pairwise import columns_from_rows
        out["pw_baseline"] = next((str(r["pw_baseline"]) for r in rows if r.get("pw_baseline")), "")
        out.update(columns_from_rows(rows))
    latest = max(rows, key=lambda r: str(r.get("created_at") or ""))
    out["created_at"] = str(latest.get("created_at") or "")
    out["git_commit"] = str(latest.get("git_commit") or "")
    return out


def _task_dirs(runs_dir: Path, task: str | None) -> list[Path]:
    available = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    if task is None:
        return [runs_dir / t for t in available]
    if task not in available:
        have = ", ".join(available) or "none"
        raise UserError(f"no runs for task {task!r} under {runs_dir} (tasks with runs: {have}); "
                        f"create some with `python -m harness run --model M --eval-set E`")
    return [runs_dir / task]


def run_files(runs_dir: str | Path, task: str | None = None) -> list[Path]:
    """The rows files results/runs/<task>/*.jsonl (all tasks, or one), sorted."""
    return [f for d in _task_dirs(Path(runs_dir), task) for f in sorted(d.glob("*.jsonl"))]


def build_leaderboard(runs_dir: str | Path, task: str | None = None, n_boot: int = 2000) -> dict:
    """{task: pandas.DataFrame} with one row per group, sorted by the task's main score (best first).

    Tasks without any rows are left out; an unknown ``task`` raises UserError listing those with runs.
    """
    import pandas as pd

    from harness.tasks import get_task
    rows = [r for f in run_files(runs_dir, task) for r in read_rows(f)]
    if task is not None:
        rows = [r for r in rows if r["task"] == task]
    by_task: dict[str, list[dict]] = {}
    for key, group in group_rows(rows).items():
        by_task.setdefault(key[0], []).append(summarize(group, n_boot=n_boot))
    tables = {}
    for t, recs in sorted(by_task.items()):
        df = pd.DataFrame(recs, columns=columns_for(t))
        if not (df["item_set"].astype(str).ne("").any() or df["partial"].astype(bool).any()):
            df = df.drop(columns=RUN_COLUMNS)           # tables without such runs keep their old columns
        if df["engine"].eq("transformers").all():
            df = df.drop(columns=ENGINE_COLUMNS)        # all transformers: the old columns
        for c in COUNT_COLUMNS & set(df.columns):      # counts stay integers when some rows have none
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
        sort = [c for c in (get_task(t).sort or ("score_mean",)) if c in df.columns]
        df = df.sort_values(sort + ["model", "adapter"], ascending=[False] * len(sort) + [True, True],
                            na_position="last", kind="mergesort").reset_index(drop=True)
        tables[t] = df
    return tables


def write_leaderboards(runs_dir: str | Path, out_dir: str | Path, task: str | None = None) -> list[Path]:
    """Write out_dir/leaderboard_<task>.csv for every task with runs (floats rounded to 4 places,
    written atomically); returns the paths written."""
    out_dir = Path(out_dir)
    paths = []
    for t, df in build_leaderboard(runs_dir, task).items():
        path = out_dir / f"leaderboard_{t}.csv"
        write_frame(path, df.round(4))
        paths.append(path)
    return paths


def ci_columns(metric: str) -> tuple[str, str]:
    """The CSV columns holding the 95% CI of a metric column."""
    return ("score_ci_low", "score_ci_high") if metric == "score_mean" else (f"{metric}_ci_low", f"{metric}_ci_high")


def printable(df):
    """The columns the CLI prints (PRINT_COLUMNS that have values), rounded, each metric with a CI followed by
    a "<metric> 95% CI" column ("low-high")."""
    cols = [c for c in PRINT_COLUMNS if c in df.columns and not df[c].isna().all()]
    shown = df[cols].round(3)
    for metric in [c for c in cols if all(x in df.columns for x in ci_columns(c))]:
        low, high = (df[x].astype(float) for x in ci_columns(metric))
        if low.isna().all():
            continue
        ci = [f"{lo:.3f}-{hi:.3f}" if lo == lo and hi == hi else "" for lo, hi in zip(low, high)]
        shown.insert(shown.columns.get_loc(metric) + 1, f"{metric} 95% CI", ci)
    return shown


def leaderboard_cmd(task: str | None = None, runs_dir: str | None = None, out_dir: str | None = None) -> int:
    """Write results/leaderboard_<task>.csv from the rows files results/runs/<task>/*.jsonl and print them.

    task: only this task (see `python -m harness tasks`); default all tasks with runs
    runs_dir: folder holding <task>/<run_id>.jsonl (default results/runs)
    out_dir: where the CSVs go (default results/)
    """
    import pandas as pd

    from harness.paths import results_dir

    runs = Path(runs_dir) if runs_dir else results_dir() / "runs"
    out = Path(out_dir) if out_dir else results_dir()
    if not run_files(runs, task):
        raise UserError(f"no rows files (*.jsonl) under {runs}; create some with "
                        f"`python -m harness run --model M --eval-set E`")
    tables = build_leaderboard(runs, task)
    paths = write_leaderboards(runs, out, task)
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 40):
        for t, df in tables.items():
            print(f"\n== {t} ==")
            print(printable(df).to_string(index=False))
    for p in paths:
        print(f"wrote {p}")
    return 0
