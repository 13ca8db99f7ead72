"""The leaderboard as the app shows it: results/leaderboard_<task>.csv at a glance, each row's items from its
rows file, and the items where two rows disagree most.

    from harness.leaderboard_view import leaderboard_view, row_items, diff_runs
    v = leaderboard_view("poem")   # dict(table, figure, notice, tasks, eval_sets, metrics, task, metric, labels)
    row_items("poem", v["table"].iloc[0].to_dict())          # the run's items: prompt, response, scores, reason
    diff_runs("poem", v["labels"][0], v["labels"][1])        # the items where the two runs differ most

Labels name the eval set and the decoding (a form-constrained row and a free row are different runs, never
look-alike duplicates). Error bars: the CSV's 95% bootstrap CI where it has one, else a Wilson 95% interval
for a rate with its count (form_ok_rate over n_form, parse_rate over n); a metric without either is drawn
without bars and the axis says so. Default metrics: ROUGE-L for chat (the judge score is a smoke test),
accuracy for classification, the form rate for poems.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.paths import results_dir

RUN_HINT = ("run `python -m harness run --model smollm2-135m-instruct --eval-set sms_own` (and the other eval sets), "
            "then `python -m harness leaderboard`")
# leaderboard metric -> its CI columns; a rate without CI columns -> its count column (Wilson interval)
METRICS: dict[str, tuple[str, str] | None] = {
    "rouge_l": ("rouge_l_ci_low", "rouge_l_ci_high"), "accuracy": ("accuracy_ci_low", "accuracy_ci_high"),
    "form_ok_rate": None, "score_mean": ("ci_low", "ci_high"), "f1": ("f1_ci_low", "f1_ci_high"),
    "precision": ("precision_ci_low", "precision_ci_high"), "recall": ("recall_ci_low", "recall_ci_high"),
    "win_rate": ("win_rate_ci_low", "win_rate_ci_high"), "parse_rate": None, "distinct_2": None,
    "gen_tokens_per_s": None,
}
RATE_COUNTS = {"form_ok_rate": "n_form", "parse_rate": "n"}
DEFAULT_METRIC = ("rouge_l", "accuracy", "form_ok_rate", "win_rate", "score_mean")   # the first present
TABLE_COLUMNS = ["eval_set", "model", "adapter", "decoding", "judge", "n", "n_parsed", "rouge_l", "accuracy",
                 "form_ok_rate", "score_mean", "pw_win_rate", "f1", "precision", "recall", "distinct_2",
                 "repetition", "gen_tokens_per_s", "created_at"]
METRICS["pw_win_rate"] = ("pw_win_ci_low", "pw_win_ci_high")
KEY_COLUMNS = ("task", "eval_set", "model", "adapter", "adapter_sha", "decoding", "judge", "judge_digest",
               "judge_prompt_version")
ITEM_SCORES = ("score", "rouge_l", "form_ok", "pred", "label", "correct", "parsed")


def leaderboard_tables(folder: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """results/leaderboard_<task>.csv -> ({task: DataFrame}, problems with unreadable files)."""
    import pandas as pd

    folder = Path(folder) if folder else results_dir()
    tables, problems = {}, []
    for f in sorted(folder.glob("leaderboard_*.csv")) if folder.is_dir() else []:
        try:
            df = pd.read_csv(f, dtype={c: str for c in KEY_COLUMNS}, keep_default_na=False, na_values=[""])
        except Exception as e:  # noqa: BLE001 - one broken file must not hide the others
            problems.append(f"{f.name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
            continue
        for col in KEY_COLUMNS:
            if col in df.columns:
                df[col] = df[col].fillna("").astype(str)
        if "decoding" not in df.columns:
            df["decoding"] = ""
        tables[f.stem.removeprefix("leaderboard_")] = df
    return tables, problems


def decoding_of(row) -> str:
    d = str(row.get("decoding", "") or "")
    return {"form": "form-constrained", "": "free"}.get(d, d)


def row_label(row) -> str:
    """One row as a label: model + adapter · eval set · decoding [judge · pointwise | pairwise vs its baseline]."""
    model = str(row.get("model", ""))
    model = Path(model).name if "/" in model else model
    label = model + (f" + {row['adapter']}" if _text(row.get("adapter")) else " (base)")
    label += f" · {row.get('eval_set', '')} · {decoding_of(row)}"
    if _text(row.get("judge")):
        baseline = _text(row.get("pw_baseline"))
        if baseline:
            parts = baseline.split("__")
            who = parts[2] if len(parts) > 2 else baseline
            label += f" [{row['judge']} · pairwise vs {'the base' if who == 'base' else who}]"
        else:
            label += f" [{row['judge']} · pointwise]"
    return label


def _text(value) -> str:
    """A CSV cell as text: "" for empty or NaN."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


def row_labels(rows: list[dict]) -> list[str]:
    """row_label of each row, made unique (a second row with the same label gets " (2)"): the Diff menus and the
    plot name each row once."""
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        label = row_label(r)
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def default_pair(rows: list[dict]) -> tuple[int | None, int | None]:
    """The Diff menus' first pair: the first two rows on the same eval set (so they share items), else the first
    two rows."""
    for i, a in enumerate(rows):
        for j in range(i + 1, len(rows)):
            if str(rows[j].get("eval_set", "")) == str(a.get("eval_set", "")):
                return i, j
    return (0 if rows else None), (1 if len(rows) > 1 else None)


def wilson(rate: float, n: float, z: float = 1.96) -> tuple[float, float]:
    if not n or n != n or rate != rate:
        return (float("nan"), float("nan"))
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def intervals(df, metric: str) -> tuple[list[float], list[float], str] | None:
    """(low, high, what) of each row's interval for `metric`, or None when the CSV gives no way to one."""
    ci = METRICS.get(metric)
    if ci and all(c in df.columns for c in ci) and df[list(ci)].notna().any().any():
        return df[ci[0]].astype(float).tolist(), df[ci[1]].astype(float).tolist(), "95% bootstrap CI"
    count = RATE_COUNTS.get(metric)
    if count and count in df.columns:
        pairs = [wilson(float(r), float(n)) for r, n in zip(df[metric], df[count])]
        return [p[0] for p in pairs], [p[1] for p in pairs], f"Wilson 95% interval over {count}"
    return None


def _useful(df, col: str) -> bool:
    """A column worth showing: some value is neither empty nor zero (spam's gen_tokens_per_s is all 0)."""
    values = df[col]
    if values.dtype.kind in "if":
        return bool(values.fillna(0).ne(0).any())
    return bool(values.astype(str).str.strip().ne("").any())


def default_metric(metrics: list[str]) -> str | None:
    return next((m for m in DEFAULT_METRIC if m in metrics), metrics[0] if metrics else None)


def leaderboard_view(task: str | None = None, eval_set: str | None = None, search: str = "",
                     metric: str | None = None, folder: Path | None = None) -> dict:
    """One task's table filtered by eval set and a search over model/adapter/judge, with a bar plot of `metric`
    and its interval. Returns dict(table, figure, notice, tasks, eval_sets, metrics, task, metric, labels)."""
    tables, problems = leaderboard_tables(folder)
    empty = {"table": None, "figure": None, "caption": "", "tasks": list(tables), "eval_sets": [], "metrics": [], "task": None,
             "metric": None, "labels": [], "rows": []}
    if not tables:
        bad = f" Unreadable: {'; '.join(problems)}." if problems else ""
        return {**empty, "notice": f"No leaderboard yet: no leaderboard_*.csv in the results folder.{bad} To make one, {RUN_HINT}."}
    task = task if task in tables else next(iter(tables))
    df = tables[task]
    sets = sorted(df["eval_set"].unique()) if "eval_set" in df.columns else []
    if eval_set and eval_set != "all" and "eval_set" in df.columns:
        df = df[df["eval_set"] == eval_set]
    if search and search.strip():
        needle = search.strip().lower()
        cols = [c for c in ("model", "adapter", "judge", "decoding") if c in df.columns]
        mask = df[cols].apply(lambda col: col.str.lower().str.contains(needle, regex=False)).any(axis=1)
        df = df[mask]
    df = df.reset_index(drop=True)
    metrics = [m for m in METRICS if m in df.columns and df[m].notna().any() and _useful(df, m)]
    metric = metric if metric in metrics else default_metric(metrics)
    shown = table_of(df)
    notice = f"{len(df)} of {len(tables[task])} rows of leaderboard_{task}.csv. Click a row to see its items."
    if problems:
        notice += f" (unreadable: {'; '.join(problems)})"
    if df.empty:
        notice += " Nothing matches the filters."
    caption = ""
    if metric and not df.empty:
        found = intervals(df, metric)
        caption = (f"Bars: {metric}; error bars: {found[2]}." if found else
                   f"Bars: {metric}; no interval in the CSV for this metric, so no error bars.")
        caption += (" Labels: model + adapter · eval set · decoding [judge · pointwise, or pairwise vs its "
                    "baseline]. The table's \"95% CI\" column beside a metric is that metric's interval.")
    rows = df.to_dict("records")
    return {"table": shown, "figure": bar_plot(df, metric) if metric and not df.empty else None, "notice": notice,
            "caption": caption,
            "tasks": list(tables), "eval_sets": sets, "metrics": metrics, "task": task, "metric": metric,
            "labels": row_labels(rows), "rows": rows, "pair": default_pair(rows)}


def table_of(df):
    """The table as shown: the useful columns, each metric followed by its own 95% CI ("0.531 – 0.647") where
    the CSV has one, so an interval never sits beside a metric it does not belong to."""
    cols = [c for c in TABLE_COLUMNS if c in df.columns and (c in ("model", "adapter", "decoding") or _useful(df, c))]
    shown = df[cols].copy()
    shown["decoding"] = [decoding_of(r) for _, r in df.iterrows()]
    shown = shown.round(3)
    for metric in [c for c in cols if METRICS.get(c)]:
        low, high = METRICS[metric]
        if low in df.columns and high in df.columns and df[[low, high]].notna().any().any():
            ci = [f"{lo:.3f} – {hi:.3f}" if lo == lo and hi == hi else "" for lo, hi in
                  zip(df[low].astype(float), df[high].astype(float))]
            shown.insert(shown.columns.get_loc(metric) + 1, f"{metric} 95% CI", ci)
    return shown


def bar_plot(df, metric: str):
    """A horizontal bar per row with its interval as error bars, each bar's label written above it across the
    whole width (readable on a phone; matplotlib's object API: thread-safe). The axis label is the metric; what
    the error bars are goes in the title, wrapped, so nothing is cut."""
    import textwrap

    from matplotlib.figure import Figure

    rows = df[df[metric].notna()].head(20).reset_index(drop=True)
    labels = row_labels(rows.to_dict("records"))
    wrapped = [textwrap.fill(x, 50) for x in labels]
    heights = [0.6 + 0.22 * w.count("\n") for w in wrapped]
    fig = Figure(figsize=(4.8, 1.3 + sum(heights)), layout="constrained")
    ax = fig.add_subplot()
    values = rows[metric].astype(float).tolist()
    found = intervals(rows, metric)
    xerr, what = None, "no interval in the CSV for this metric"
    if found:
        lo, hi, what = found
        xerr = [[max(0.0, v - low) if low == low else 0.0 for v, low in zip(values, lo)],
                [max(0.0, high - v) if high == high else 0.0 for v, high in zip(values, hi)]]
    ys, y = [], 0.0                                           # the first row on top; a wrapped label gets room
    for w in wrapped[::-1]:
        ys.append(y)
        y += 1.0 + 0.45 * w.count("\n")
    ys = ys[::-1]
    ax.barh(ys, values, xerr=xerr, height=0.4, capsize=3, color="#4C78A8", ecolor="#333333")
    top = max([v for v in values if v == v] + [1e-9])
    for y, text, v in zip(ys, wrapped, values):
        ax.text(0, y + 0.25, f"{text}  ({v:.3g})", fontsize=10, va="bottom", ha="left")
    ax.set_yticks([])
    ax.set_ylim(-0.4, y + 0.9 if not ys else ys[0] + 0.75 + 0.4 * wrapped[0].count("\n"))
    ax.set_xlim(0, top * 1.05 if not xerr else max(top, max(v + e for v, e in zip(values, xerr[1]))) * 1.05)
    ax.set_xlabel(metric, fontsize=10)
    ax.set_title(textwrap.fill(f"{metric}; error bars: {what}" if xerr else f"{metric} ({what})", 56), fontsize=10,
                 loc="left")
    ax.grid(axis="x", alpha=0.3)
    return fig


# ---------------------------------------------------------------- a row's items, and two rows side by side

def _runs_dir(folder: Path | None) -> Path:
    return (Path(folder) if folder else results_dir()) / "runs"


def _matches(item: dict, row: dict) -> bool:
    for k in KEY_COLUMNS:
        if k in row and k in item and str(item.get(k) or "") != str(row.get(k) or ""):
            return False
        if k in row and k not in item and str(row.get(k) or "") not in ("", "nan"):
            return False
    return True


def row_items(task: str, row: dict, folder: Path | None = None) -> list[dict]:
    """The items of one leaderboard row, read from its rows files (results/runs/<task>/*.jsonl; the newest
    row of an item wins, as the leaderboard counts it)."""
    from harness.errors import UserError
    from harness.leaderboard import read_rows
    runs = _runs_dir(folder) / task
    if not runs.is_dir():
        raise UserError(f"no rows files for task {task!r} here: the leaderboard CSV was made elsewhere, so its "
                        "items cannot be shown")
    by_id: dict[str, dict] = {}
    for f in sorted(runs.glob("*.jsonl")):
        for r in read_rows(f):
            if _matches(r, row):
                by_id[str(r["item_id"])] = r
    return list(by_id.values())


def item_table(items: list[dict]) -> tuple[list[str], list[list]]:
    """Items as (header, rows): id, prompt, response, the scores present, the judge's reasoning. Text-free rows
    files (content hashes only) show the start of each sha256 under "prompt (sha256)" / "response (sha256)";
    items_caption says why."""
    scores = [k for k in ITEM_SCORES if any(k in it for it in items)]
    hashed = {f: any(f not in it and f"{f}_sha" in it for it in items) for f in ("prompt", "response")}
    header = ["item_id", *[f"{f} (sha256)" if hashed[f] else f for f in ("prompt", "response")], *scores,
              "judge_reasoning"]
    rows = []
    for it in items:
        shown = [str(it[f]) if f in it else (f"{str(it.get(f'{f}_sha', ''))[:16]}…" if it.get(f"{f}_sha") else "")
                 for f in ("prompt", "response")]
        rows.append([it.get("item_id", ""), shown[0][:400], shown[1][:600],
                     *[it.get(k, "") for k in scores], str(it.get("judge_raw", "") or it.get("reason", ""))[:400]])
    return header, rows


def items_caption(label: str, items: list[dict]) -> str:
    """The line above a row's items: how many, and what a sha256 in place of a text means."""
    text = f"**{label}**: {len(items)} items from its rows file."
    if any(("prompt" not in it and "prompt_sha" in it) or ("response" not in it and "response_sha" in it)
           for it in items):
        text += (" The texts are not committed (the project's rows files are text-free): each keeps the sha256 of each "
                 "prompt and response instead, shown here by its first 16 characters; scores and reasoning are "
                 "as stored.")
    return text


def item_value(item: dict) -> float | None:
    """The per-item figure two runs are compared on: judge score, else ROUGE-L, else form / correctness."""
    for k in ("score", "rouge_l"):
        v = item.get(k)
        if isinstance(v, (int, float)) and v == v:
            return float(v) / (100.0 if k == "score" else 1.0)
    if "form_ok" in item and item["form_ok"] is not None:
        return float(bool(item["form_ok"]))
    if "pred" in item and "label" in item:
        return float(item["pred"] == item["label"])
    return None


def diff_runs(task: str, row_a: dict, row_b: dict, folder: Path | None = None, top: int = 20) -> tuple[list[str], list[list], str]:
    """The items where two leaderboard rows disagree most, side by side: (header, rows, summary)."""
    a = {str(i["item_id"]): i for i in row_items(task, row_a, folder)}
    b = {str(i["item_id"]): i for i in row_items(task, row_b, folder)}
    common = sorted(set(a) & set(b))
    diffs = []
    for k in common:
        va, vb = item_value(a[k]), item_value(b[k])
        if va is not None and vb is not None:
            diffs.append((abs(va - vb), k, va, vb))
    diffs.sort(key=lambda d: (-d[0], d[1]))
    header = ["item_id", "difference", "A", "B", "prompt", "response A", "response B"]
    rows = [[k, round(d, 3), round(va, 3), round(vb, 3), str(a[k].get("prompt", a[k].get("prompt_sha", "")))[:300],
             str(a[k].get("response", a[k].get("response_sha", "")))[:500],
             str(b[k].get("response", b[k].get("response_sha", "")))[:500]] for d, k, va, vb in diffs[:top]]
    summary = (f"A = {row_label(row_a)}; B = {row_label(row_b)}: {len(common)} items in common, "
               f"{sum(1 for d in diffs if d[0] > 0)} differ; the {min(top, len(diffs))} largest differences first "
               "(per-item judge score / 100, ROUGE-L, form or correctness).")
    if not common:
        summary = (f"A = {row_label(row_a)} and B = {row_label(row_b)} share no items: pick two rows on the "
                   "same eval set.")
    return header, rows, summary
