"""The leaderboard as the app shows it: results/leaderboard_<task>.csv filtered, plotted with CIs.

    from harness.leaderboard_view import leaderboard_view
    v = leaderboard_view("spam")          # dict(table, figure, notice, tasks, eval_sets, metrics, task, metric)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.paths import results_dir

RUN_HINT = ("run `python -m harness run --model smollm2-135m-instruct --eval-set sms_own` (and the other eval sets), "
            "then `python -m harness leaderboard`")
# leaderboard metric -> its CI columns (None: the CSV has no interval for it)
METRICS: dict[str, tuple[str, str] | None] = {
    "score_mean": ("ci_low", "ci_high"), "accuracy": ("accuracy_ci_low", "accuracy_ci_high"),
    "f1": ("f1_ci_low", "f1_ci_high"), "precision": ("precision_ci_low", "precision_ci_high"),
    "recall": ("recall_ci_low", "recall_ci_high"), "rouge_l": ("rouge_l_ci_low", "rouge_l_ci_high"),
    "form_ok_rate": None, "distinct_2": None, "gen_tokens_per_s": None,
}
TABLE_COLUMNS = ["eval_set", "model", "adapter", "judge", "n", "n_parsed", "score_mean", "ci_low", "ci_high",
                 "accuracy", "f1", "precision", "recall", "rouge_l", "form_ok_rate", "distinct_2", "repetition",
                 "gen_tokens_per_s", "created_at"]




def leaderboard_tables(folder: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """results/leaderboard_<task>.csv -> ({task: DataFrame}, problems with unreadable files)."""
    import pandas as pd

    folder = Path(folder) if folder else results_dir()
    tables, problems = {}, []
    for f in sorted(folder.glob("leaderboard_*.csv")) if folder.is_dir() else []:
        try:
            df = pd.read_csv(f)
        except Exception as e:  # noqa: BLE001 - one broken file must not hide the others
            problems.append(f"{f.name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
            continue
        for col in ("model", "adapter", "eval_set", "judge"):
            if col in df.columns:
                df[col] = df[col].fillna("").astype(str)
        tables[f.stem.removeprefix("leaderboard_")] = df
    return tables, problems


def leaderboard_view(task: str | None = None, eval_set: str | None = None, search: str = "",
                     metric: str | None = None, folder: Path | None = None) -> dict:
    """One task's table filtered by eval set and a search over model/adapter/judge, with a bar plot of `metric`
    and its CI. Returns dict(table, figure, notice, tasks, eval_sets, metrics, task, metric)."""
    tables, problems = leaderboard_tables(folder)
    where = Path(folder) if folder else results_dir()
    empty = {"table": None, "figure": None, "tasks": list(tables), "eval_sets": [], "metrics": [], "task": None,
             "metric": None}
    if not tables:
        bad = f" Unreadable: {'; '.join(problems)}." if problems else ""
        return {**empty, "notice": f"No leaderboard yet: no {where}/leaderboard_*.csv.{bad} To make one, {RUN_HINT}."}
    task = task if task in tables else next(iter(tables))
    df = tables[task]
    sets = sorted(df["eval_set"].unique()) if "eval_set" in df.columns else []
    if eval_set and eval_set != "all" and "eval_set" in df.columns:
        df = df[df["eval_set"] == eval_set]
    if search and search.strip():
        needle = search.strip().lower()
        cols = [c for c in ("model", "adapter", "judge") if c in df.columns]
        mask = df[cols].apply(lambda col: col.str.lower().str.contains(needle, regex=False)).any(axis=1)
        df = df[mask]
    metrics = [m for m in METRICS if m in df.columns and df[m].notna().any()]
    metric = metric if metric in metrics else (metrics[0] if metrics else None)
    cols = [c for c in TABLE_COLUMNS if c in df.columns and (c in ("model", "adapter") or df[c].notna().any()
                                                              and df[c].astype(str).str.strip().ne("").any())]
    shown = df[cols].round(3).reset_index(drop=True)
    notice = f"{len(df)} of {len(tables[task])} rows of leaderboard_{task}.csv"
    if problems:
        notice += f" (unreadable: {'; '.join(problems)})"
    if df.empty:
        notice += ": nothing matches the filters"
    return {"table": shown, "figure": bar_plot(df, metric) if metric and not df.empty else None, "notice": notice,
            "tasks": list(tables), "eval_sets": sets, "metrics": metrics, "task": task, "metric": metric}


def _row_label(row) -> str:
    label = str(row.get("model", ""))
    label = Path(label).name if "/" in label else label
    if str(row.get("adapter", "") or ""):
        label += f" + {row['adapter']}"
    if str(row.get("judge", "") or ""):
        label += f"\n[{row['judge']}]"
    return label


def bar_plot(df, metric: str):
    """A horizontal bar per row with its CI as error bars (matplotlib's object API: safe off the main thread)."""
    from matplotlib.figure import Figure

    rows = df[df[metric].notna()].head(20)
    fig = Figure(figsize=(8, 1.2 + 0.45 * max(1, len(rows))), layout="constrained")
    ax = fig.add_subplot()
    labels = [_row_label(r) for _, r in rows.iterrows()][::-1]
    values = rows[metric].astype(float).tolist()[::-1]
    ci = METRICS.get(metric)
    xerr = None
    if ci and all(c in rows.columns for c in ci):
        lo = rows[ci[0]].astype(float).tolist()[::-1]
        hi = rows[ci[1]].astype(float).tolist()[::-1]
        xerr = [[max(0.0, v - low) if low == low else 0.0 for v, low in zip(values, lo)],
                [max(0.0, high - v) if high == high else 0.0 for v, high in zip(values, hi)]]
    ax.barh(range(len(values)), values, xerr=xerr, capsize=4, color="#4C78A8", ecolor="#333333")
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.set_xlabel(metric + (" (error bars: 95% bootstrap CI)" if xerr else ""))
    ax.grid(axis="x", alpha=0.3)
    return fig

