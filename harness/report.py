"""Comparison report of two checkpoints on the same items: Markdown + PNG plots, from stored rows only.

    python -m harness report --models smollm2-135m-instruct smollm2-135m-instruct+smollm2-135m-alpaca
    python -m harness report --models smollm2-135m-instruct smollm2-135m-instruct+smollm2-135m-alpaca \\
        --eval-set instruction:test --judge transformers:smollm2-135m-instruct
    python -m harness report --models results/runs/chat/a.jsonl results/runs/chat/b.jsonl

Each SPEC is "model", "model+adapter", a run id (a rows file's name without .jsonl) or the path of a rows file.
"model" and "model+adapter" pick only complete runs; a partial run (`run --limit`, or one with failed items) is
picked by its run id or file. The report goes to results/reports/<A>_vs_<B>_<eval_set>_<judge>/report.md with its
plots beside it (`__part-<item sets>` added for partial runs); a folder holding a report of other rows files is
never overwritten: the new report gets its own folder (`__<hash of the two files>`).

Differences are always B - A (positive = the second checkpoint is better), computed on the items both
runs share (by item_id) with a paired bootstrap over items; wins/ties/losses are counted for B.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from harness.errors import UserError
from harness.io import atomic_write, save_figure, slug
from harness.leaderboard import as_float, dedupe, is_scored, read_rows, run_files
from harness.metrics import (bootstrap_mean_ci, classification_metrics, histogram, mcnemar_exact, paired_bootstrap, pearson,
                             spearman)

MIN_N = 30  # below this many paired items, a bootstrap CI is too rough to call a winner


def run_label(row: dict) -> str:
    """'model' for a base run, 'model+adapter' for an adapter run."""
    return f"{row['model']}+{row['adapter']}" if row.get("adapter") else str(row["model"])


def run_info(rows: list[dict]) -> dict:
    """Identity of a run (from its first row) and its size. engine and checkpoint_hash (models.checkpoint_hash) are
    "" for rows written before harness.evaluate recorded them, and for a server's rows."""
    r = rows[0]
    return {"label": run_label(r), "model": r["model"], "adapter": r.get("adapter") or "",
            "adapter_sha": r.get("adapter_sha") or "", "task": r["task"], "eval_set": r["eval_set"],
            "engine": str(r.get("engine") or ""), "checkpoint_hash": str(r.get("checkpoint_hash") or ""),
            "judge": r.get("judge") or "", "judge_digest": r.get("judge_digest") or "",
            "judge_prompt_version": str(r.get("judge_prompt_version") or ""), "n": len(rows),
            "judge_mode": "pairwise" if r.get("pw_baseline") else "pointwise", "decoding": r.get("decoding") or "",
            "item_set": str(r.get("item_set") or ""), "partial": r.get("partial") is True}


def judge_health(rows: list[dict]) -> dict:
    """How the judge behaved on one run: parse rate, score histogram (10 bins over 0-100), spread,
    correlation of the score with response length (tokens) and, for chat, Spearman agreement with
    ROUGE-L. Correlations are nan with fewer than 3 scored items or constant scores."""
    scored = [r for r in rows if is_scored(r)]
    scores = [float(r["score"]) for r in scored]
    lengths = [as_float(r.get("response_tokens")) for r in scored]
    h = {"n": len(rows), "n_scored": len(scored), "parse_rate": len(scored) / len(rows) if rows else math.nan,
         "score_mean": sum(scores) / len(scores) if scores else math.nan,
         "n_distinct_scores": len(set(scores)), "hist": histogram(scores),
         "len_spearman": spearman(scores, lengths), "len_pearson": pearson(scores, lengths),
         "rouge_spearman": math.nan}
    if rows and rows[0]["task"] == "chat":
        h["rouge_spearman"] = spearman(scores, [as_float(r.get("rouge_l")) for r in scored])
    return h


RULE_CHECKS = ("form_ok", "rhyme_ok", "tone_ok", "sonnet_scheme_ok")


def judge_vs_rules(rows: list[dict]) -> list[dict]:
    """How often the judge agrees with each rule check (harness/rules.py) on the scored poems: the chance that a
    poem passing the check got a higher score than one failing it (ties = 1/2; 0.5 = the judge ignores the
    rule), with the mean score of each side. One dict per check with both passing and failing scored poems."""
    scored = [r for r in rows if is_scored(r)]
    out = []
    for check in RULE_CHECKS:
        ok = [float(r["score"]) for r in scored if r.get(check) is True]
        bad = [float(r["score"]) for r in scored if r.get(check) is False]
        if not ok or not bad:
            continue
        wins = sum((x > y) + 0.5 * (x == y) for x in ok for y in bad)
        out.append({"check": check, "n_pass": len(ok), "n_fail": len(bad), "agreement": wins / (len(ok) * len(bad)),
                    "mean_pass": sum(ok) / len(ok), "mean_fail": sum(bad) / len(bad)})
    return out


def _paired(name: str, a: list[float], b: list[float], tie_tol: float, n_boot: int, seed: int) -> dict:
    res = paired_bootstrap(b, a, n_boot=n_boot, seed=seed, tie_tol=tie_tol)
    res.update(metric=name, mean_a=sum(a) / len(a) if a else math.nan,
               mean_b=sum(b) / len(b) if b else math.nan)
    return res


def _verdict(p: dict, la: str, lb: str, min_n: int, unit: str) -> str:
    n = p["n"]
    if n == 0:
        return f"No item has a {p['metric']} for both {la} and {lb}: nothing to compare."
    d, lo, hi = p["mean_diff"] * unit, p["ci_low"] * unit, p["ci_high"] * unit
    ci = f"95% CI {lo:+.2f} to {hi:+.2f}" + (" points" if unit != 1.0 else "")
    if not p["distinguishable"]:
        s = (f"These {n} items cannot tell {la} and {lb} apart on {p['metric']}: the difference "
             f"B - A = {d:+.2f} has a {ci}, which includes 0.")
    else:
        word = "higher" if d > 0 else "lower"
        s = f"{lb} scores {word} than {la} on {p['metric']} by {abs(d):.2f} ({ci}, paired bootstrap over {n} items)."
    if n < min_n:
        s += (f" With only {n} paired items the set is too small to tell them apart reliably "
              f"(aim for {min_n}+); treat this as anecdotal.")
    return s


def compare_runs(rows_a: list[dict], rows_b: list[dict], n_boot: int = 2000, seed: int = 0,
                 tie_tol: float = 0.0, min_n: int = MIN_N) -> dict:
    """Compare run B against run A on the items they share (by item_id).

    The primary metric is the judge score (0-100) when both runs have judged items, else ROUGE-L (chat)
    or form_ok (poem); for spam it is accuracy (per-item correctness) with the discordant counts
    (a_only = A right and B wrong, b_only = the reverse) and an exact McNemar p-value. Items a judge
    did not score are left out of the score comparison and counted in ``unpaired``. tie_tol applies to
    judge scores (ROUGE-L uses 0.005, 0/1 metrics exact ties).

    Returns dict(task, a, b (run_info), n_common, only_a, only_b, primary, secondary (list), spam
    (classification metrics of both on the common items, or None), health (a, b), distinguishable,
    verdict, warnings, pairs (item_ids, a, b of the primary metric)).
    """
    if not rows_a or not rows_b:
        raise ValueError("compare_runs needs rows for both runs")
    rows_a, _ = dedupe(rows_a)
    rows_b, _ = dedupe(rows_b)
    ia, ib = run_info(rows_a), run_info(rows_b)
    if ia["task"] != ib["task"]:
        raise ValueError(f"cannot compare a {ia['task']} run with a {ib['task']} run")
    task = ia["task"]
    from harness.tasks import METRICS, get_task
    t = get_task(task)
    A = {str(r["item_id"]): r for r in rows_a}
    B = {str(r["item_id"]): r for r in rows_b}
    common = [i for i in A if i in B]
    warnings = []
    if ia["eval_set"] != ib["eval_set"]:
        warnings.append(f"the runs come from different eval sets ({ia['eval_set']} vs {ib['eval_set']}); "
                        f"only the {len(common)} shared item ids are compared")
    if (ia["judge"], ia["judge_digest"], ia["judge_prompt_version"]) != \
            (ib["judge"], ib["judge_digest"], ib["judge_prompt_version"]):
        warnings.append(f"the runs were judged differently ({ia['judge'] or 'no judge'} "
                        f"{ia['judge_digest'][:12]} v{ia['judge_prompt_version']} vs {ib['judge'] or 'no judge'} "
                        f"{ib['judge_digest'][:12]} v{ib['judge_prompt_version']}); a score difference mixes "
                        f"judge and model")
    if ia["engine"] and ib["engine"] and ia["engine"] != ib["engine"]:
        warnings.append(f"the runs were generated by different engines ({ia['engine']} vs {ib['engine']}); greedy "
                        "answers can differ between engines, so a difference mixes engine and model")
    for info, rows in ((ia, rows_a), (ib, rows_b)):
        if t.kind == "generate" and rows and info["judge"] and sum(map(is_scored, rows)) < len(rows):
            n_bad = len(rows) - sum(map(is_scored, rows))
            warnings.append(f"{info['label']}: {n_bad} of {len(rows)} judge answers gave no score")

    out: dict = {"task": task, "a": ia, "b": ib, "n_common": len(common),
                 "only_a": len(A) - len(common), "only_b": len(B) - len(common),
                 "secondary": [], "classification": None, "warnings": warnings, "unpaired": 0,
                 "health": {"a": judge_health(rows_a), "b": judge_health(rows_b)}}
    unit = 1.0
    if t.kind == "classify":
        positive = t.positive or t.labels[-1]
        pairs = [(i, A[i], B[i]) for i in common
                 if A[i].get("pred") not in (None, "") and B[i].get("pred") not in (None, "")]
        ok_a = [float(a["pred"] == a["label"]) for _, a, _ in pairs]
        ok_b = [float(b["pred"] == b["label"]) for _, _, b in pairs]
        primary = _paired("accuracy", ok_a, ok_b, 0.0, n_boot, seed)
        a_only = sum(1 for x, y in zip(ok_a, ok_b) if x and not y)
        b_only = sum(1 for x, y in zip(ok_a, ok_b) if y and not x)
        spam = {"a_only": a_only, "b_only": b_only, "mcnemar_p": mcnemar_exact(a_only, b_only)}
        if pairs:
            labels = [str(a["label"]) for _, a, _ in pairs]
            spam["a_metrics"] = classification_metrics(labels, [str(a["pred"]) for _, a, _ in pairs], positive,
                                                       seed=seed, labels=list(t.labels))
            spam["b_metrics"] = classification_metrics(labels, [str(b["pred"]) for _, _, b in pairs], positive,
                                                       seed=seed, labels=list(t.labels))
            spam["positive"] = positive
        out["classification"] = spam
        unit = 100.0  # accuracy differences shown in percentage points
    else:
        judged = [(i, A[i], B[i]) for i in common if is_scored(A[i]) and is_scored(B[i])]
        if judged:
            pairs = judged
            primary = _paired("judge score", [float(a["score"]) for _, a, _ in pairs],
                              [float(b["score"]) for _, _, b in pairs], tie_tol, n_boot, seed)
            out["unpaired"] = len(common) - len(judged)
        else:
            fld = t.primary
            pairs = [(i, A[i], B[i]) for i in common
                     if as_float(A[i].get(fld)) is not None and as_float(B[i].get(fld)) is not None]
            binary = _is_rate(t, fld)
            primary = _paired(_metric_name(fld), [float(a[fld]) for _, a, _ in pairs],
                              [float(b[fld]) for _, _, b in pairs], 0.0 if binary else 0.005, n_boot, seed)
            unit = 100.0 if binary else 1.0
        sec = [(_metric_name(f), f, 0.0 if how == "rate" else 0.005) for m in t.metrics
               for f, how, _ in METRICS[m].aggregates if how in ("rate", "mean", "mean_ci")]
        for name, field, tol in dict.fromkeys(sec):
            if name == primary["metric"]:
                continue
            both = [(A[i].get(field), B[i].get(field)) for i in common]
            both = [(float(x), float(y)) for x, y in both if as_float(x) is not None and as_float(y) is not None]
            if both:
                out["secondary"].append(_paired(name, [x for x, _ in both], [y for _, y in both], tol, n_boot, seed))
    out["primary"] = primary
    out["unit"] = unit
    out["pairs"] = {"item_ids": [i for i, _, _ in pairs],
                    "a": [_primary_value(primary["metric"], a) for _, a, _ in pairs],
                    "b": [_primary_value(primary["metric"], b) for _, _, b in pairs]}
    out["distinguishable"] = bool(primary["distinguishable"] and primary["n"] >= min_n)
    out["verdict"] = _verdict(primary, ia["label"], ib["label"], min_n, unit)
    for sp in out["secondary"]:  # other metrics whose CI excludes 0 get one sentence each
        if sp["distinguishable"]:
            u = 100.0 if _is_rate(t, {"ROUGE-L": "rouge_l"}.get(sp["metric"], sp["metric"])) else 1.0
            word = "higher" if sp["mean_diff"] > 0 else "lower"
            out["verdict"] += (f" {sp['metric']} is {word} for B by {abs(sp['mean_diff']) * u:.3g}"
                               f"{' points' if u != 1.0 else ''} (95% CI {sp['ci_low'] * u:+.3g} to "
                               f"{sp['ci_high'] * u:+.3g}, n={sp['n']}).")
    return out


def _metric_name(field: str) -> str:
    return {"rouge_l": "ROUGE-L"}.get(field, field)


def _is_rate(task, field: str) -> bool:
    from harness.tasks import METRICS
    return any(f == field and how == "rate" for m in task.metrics for f, how, _ in METRICS[m].aggregates)


def _primary_value(metric: str, row: dict) -> float:
    if metric == "judge score":
        return float(row["score"])
    if metric == "accuracy":
        return float(row["pred"] == row["label"])
    field = {"ROUGE-L": "rouge_l"}.get(metric, metric)
    return float(row[field])


# ---------------------------------------------------------------- Markdown + plots

def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _cell(text: str, width: int = 70) -> str:
    t = " ".join(str(text or "").split()).replace("|", "\\|")
    return t if len(t) <= width else t[: width - 1] + "…"


def _plots(cmp: dict, rows_a: list[dict], rows_b: list[dict], folder: Path) -> list[tuple[str, str]]:
    """Write the PNGs; returns [(file name, caption)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    la, lb = cmp["a"]["label"], cmp["b"]["label"]
    from harness.tasks import get_task
    t = get_task(cmp["task"])
    made = []

    # 1. distributions side by side: judge scores, or p_spam for spam, or ROUGE-L without a judge
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    if t.kind == "classify":
        pos = t.positive or t.labels[-1]
        title, file = f"p({pos}) by true label", f"p_{pos}.png"
        for ax, rows, lab in ((axes[0], rows_a, la), (axes[1], rows_b, lb)):
            for cls in t.labels:
                v = [as_float(r.get(f"p_{pos}")) for r in rows if r.get("label") == cls]
                ax.hist([x for x in v if x is not None], bins=20, range=(0, 1), alpha=0.6, label=cls)
            ax.set_title(_cell(lab, 50), fontsize=9)
            ax.set_xlabel(f"p({pos})")
            ax.legend()
    else:
        have_scores = cmp["health"]["a"]["n_scored"] or cmp["health"]["b"]["n_scored"]
        field, rng = ("score", (0, 100)) if have_scores else (t.primary, (0, 1))
        title, file = ("judge score distribution", "scores.png") if have_scores else \
            (f"{_metric_name(t.primary)} distribution", f"{t.primary}.png")
        if not have_scores and _is_rate(t, t.primary):
            plt.close(fig)
            fig = None
        else:
            for ax, rows, lab in ((axes[0], rows_a, la), (axes[1], rows_b, lb)):
                v = [as_float(r.get(field)) for r in rows if field != "score" or is_scored(r)]
                ax.hist([x for x in v if x is not None], bins=10, range=rng, color="tab:gray", edgecolor="white")
                ax.set_title(_cell(lab, 50), fontsize=9)
                ax.set_xlabel(field)
    if fig is not None:
        axes[0].set_ylabel("items")
        fig.suptitle(title)
        fig.tight_layout()
        save_figure(fig, folder / file)
        plt.close(fig)
        made.append((file, title))

    # 2. per-item pairs: scatter + sorted differences (continuous), or a 2x2 table (0/1 metrics)
    p = cmp["pairs"]
    metric = cmp["primary"]["metric"]
    if p["item_ids"]:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        binary = metric in ("accuracy", "form_ok")
        if binary:
            tab = [[0, 0], [0, 0]]
            for x, y in zip(p["a"], p["b"]):
                tab[int(x)][int(y)] += 1
            axes[0].imshow(tab, cmap="Blues")
            top = max(max(r) for r in tab)
            for i in range(2):
                for j in range(2):
                    axes[0].text(j, i, str(tab[i][j]), ha="center", va="center", fontsize=14,
                                 color="white" if tab[i][j] > top / 2 else "black")
            names = ["wrong", "right"] if metric == "accuracy" else ["bad form", "ok form"]
            axes[0].set_xticks([0, 1], [f"B {n}" for n in names])
            axes[0].set_yticks([0, 1], [f"A {n}" for n in names])
            axes[0].set_title(f"per-item {metric}: A rows, B columns", fontsize=9)
        else:
            axes[0].scatter(p["a"], p["b"], s=14, alpha=0.6)
            hi = 100 if metric == "judge score" else 1
            axes[0].plot([0, hi], [0, hi], color="tab:red", lw=1)
            axes[0].set_xlabel(_cell(f"A: {la}", 45), fontsize=8)
            axes[0].set_ylabel(_cell(f"B: {lb}", 45), fontsize=8)
            axes[0].set_title(f"{metric} per item (above the line: B better)", fontsize=9)
        pr = cmp["primary"]
        if binary:  # rates with their bootstrap CIs; the B - A CI in the title
            for k, (vals, lab) in enumerate(((p["a"], f"A: {la}"), (p["b"], f"B: {lb}"))):
                m, lo, hi = bootstrap_mean_ci(vals)
                axes[1].bar(k, m, color=("tab:blue", "tab:orange")[k], yerr=[[m - lo], [hi - m]], capsize=8)
            axes[1].set_xticks([0, 1], [_cell(f"A: {la}", 35), _cell(f"B: {lb}", 35)], fontsize=8)
            axes[1].set_ylim(0, 1.05)
            axes[1].set_ylabel(f"{metric} rate (95% CI)")
            axes[1].set_title(f"B - A = {pr['mean_diff']:+.3f} (95% CI {pr['ci_low']:+.3f} to {pr['ci_high']:+.3f})",
                              fontsize=9)
        else:
            diffs = sorted(y - x for x, y in zip(p["a"], p["b"]))
            axes[1].bar(range(len(diffs)), diffs, color=["tab:green" if d > 0 else "tab:red" for d in diffs],
                        width=1.0)
            axes[1].axhline(pr["mean_diff"], color="black", lw=1, label=f"mean {pr['mean_diff']:+.3g}")
            axes[1].axhspan(pr["ci_low"], pr["ci_high"], color="gray", alpha=0.3, label="95% CI")
            axes[1].set_title(f"B - A per item, sorted ({pr['wins']} wins / {pr['ties']} ties / "
                              f"{pr['losses']} losses)", fontsize=9)
            axes[1].set_xlabel("items")
            axes[1].legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, folder / "paired.png")
        plt.close(fig)
        made.append(("paired.png", f"per-item {metric}, A vs B"))

    # 3. poems: form compliance by form
    if any(r.get("form_ok") is not None for r in rows_a + rows_b):
        forms = sorted({str(r.get("form")) for r in rows_a + rows_b if r.get("form_ok") is not None})
        if forms:
            def rate(rows, f):
                v = [bool(r["form_ok"]) for r in rows if str(r.get("form")) == f and r.get("form_ok") is not None]
                return sum(v) / len(v) if v else 0.0
            fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(forms) + 2), 3.6))
            x = range(len(forms))
            ax.bar([i - 0.2 for i in x], [rate(rows_a, f) for f in forms], width=0.4, label=_cell(f"A: {la}", 40))
            ax.bar([i + 0.2 for i in x], [rate(rows_b, f) for f in forms], width=0.4, label=_cell(f"B: {lb}", 40))
            labels, family = _form_labels(forms)
            ax.set_xticks(list(x), labels)
            if family:
                for lab in ax.get_xticklabels():
                    lab.set_fontfamily(family)
            ax.set_ylim(0, 1.3)
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
            ax.set_ylabel("form_ok rate")
            ax.set_title("form compliance by form")
            ax.legend(fontsize=8)
            fig.tight_layout()
            save_figure(fig, folder / "form_ok.png")
            plt.close(fig)
            made.append(("form_ok.png", "form compliance by form"))
    return made


_FORM_EN = {"五言绝句": "5x4 jueju", "七言绝句": "7x4 jueju", "五言律诗": "5x8 lüshi", "七言律诗": "7x8 lüshi"}


def _form_labels(forms: list[str]) -> tuple[list[str], str | None]:
    """(tick labels, font family): Chinese names with a CJK font if one is installed, else ASCII names
    (matplotlib would draw empty boxes)."""
    from matplotlib import font_manager

    names = sorted({f.name for f in font_manager.fontManager.ttflist})
    cjk = [n for n in names if any(k in n for k in ("CJK", "WenQuanYi", "SimHei", "Source Han"))]
    if cjk:
        return forms, cjk[0]
    return [_FORM_EN.get(f, f) for f in forms], None


def _markdown(cmp: dict, rows_a: list[dict], rows_b: list[dict], paths: tuple[str, str],
              images: list[tuple[str, str]], run_paths: tuple[Path, Path]) -> str:
    from harness.tasks import get_task
    a, b, pr, unit = cmp["a"], cmp["b"], cmp["primary"], cmp["unit"]
    t = get_task(a["task"])
    L = [f"# {a['label']} vs {b['label']} — {a['task']}, {a['eval_set']}", ""]
    L += [f"**Verdict.** {cmp['verdict']}", ""]
    for w in cmp["warnings"]:
        L.append(f"> Note: {w}")
    if cmp["warnings"]:
        L.append("")
    engines = any(info["engine"] or info["checkpoint_hash"] for info in (a, b))    # rows that record them
    L += ["## Runs", "", "| | model | adapter | adapter_sha | eval_set | judge | judge_digest | items |"
          + (" engine | checkpoint |" if engines else "") + " file |",
          "|---|---|---|---|---|---|---|---|" + ("---|---|" if engines else "") + "---|"]
    for tag, info, path in (("A", a, paths[0]), ("B", b, paths[1])):
        L.append(f"| {tag} | {info['model']} | {info['adapter'] or '(base)'} | {info['adapter_sha'][:12]} | "
                 f"{info['eval_set']} | {info['judge'] or '(none)'} | {info['judge_digest'][:12]} | {info['n']} | "
                 + (f"{info['engine'] or '–'} | {info['checkpoint_hash'] or '–'} | " if engines else "")
                 + f"`{path}` |")
    L += ["", f"{cmp['n_common']} items in common ({cmp['only_a']} only in A, {cmp['only_b']} only in B)."
          + (f" {cmp['unpaired']} shared items lack a judge score in A or B and are left out of the score "
             f"comparison." if cmp["unpaired"] else ""), ""]
    scale = " (percentage points)" if unit != 1.0 else ""
    L += ["## Differences (B - A, paired bootstrap 95% CI)", "",
          f"| metric | A | B | B - A{scale} | 95% CI | B wins / ties / losses | n |", "|---|---|---|---|---|---|---|"]
    for i, p in enumerate([pr, *cmp["secondary"]]):
        u = unit if i == 0 else (100.0 if _is_rate(t, {"ROUGE-L": "rouge_l"}.get(p["metric"], p["metric"])) else 1.0)
        L.append(f"| {p['metric']} | {_fmt(p['mean_a'] * u)} | {_fmt(p['mean_b'] * u)} | {p['mean_diff'] * u:+.3f} | "
                 f"{p['ci_low'] * u:+.3f} to {p['ci_high'] * u:+.3f} | {p['wins']} / {p['ties']} / {p['losses']} | "
                 f"{p['n']} |" if p["n"] else f"| {p['metric']} | – | – | – | – | – | 0 |")
    L.append("")
    if cmp["classification"]:
        s = cmp["classification"]
        L += ["## Classification (shared items)", "",
              f"Discordant items: A right and B wrong {s['a_only']}, B right and A wrong {s['b_only']} "
              f"(exact McNemar p = {s['mcnemar_p']:.3g}).", ""]
        if "a_metrics" in s:
            L += [f"Precision, recall and F1 are for the label `{s['positive']}`.", "",
                  "| run | accuracy | precision | recall | f1 | macro F1 | tp | fp | tn | fn |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
            for tag, m in (("A", s["a_metrics"]), ("B", s["b_metrics"])):
                cells = [f"{m[k]:.3f} [{m[k + '_ci_low']:.3f}, {m[k + '_ci_high']:.3f}]"
                         for k in ("accuracy", "precision", "recall", "f1")]
                L.append(f"| {tag} | " + " | ".join(cells) + f" | {m['macro_f1']:.3f} | {m['tp']} | {m['fp']} | "
                         f"{m['tn']} | {m['fn']} |")
            L.append("")
    if t.kind == "generate" and (cmp["health"]["a"]["n_scored"] or cmp["health"]["b"]["n_scored"]):
        L += ["## Judge health", "",
              "| run | scored / items | mean score | distinct scores | ρ(score, length) | r(score, length) "
              "| ρ(score, ROUGE-L) | histogram 0-100 (10 bins) |", "|---|---|---|---|---|---|---|---|"]
        for tag in ("a", "b"):
            h = cmp["health"][tag]
            L.append(f"| {tag.upper()} | {h['n_scored']} / {h['n']} | {_fmt(h['score_mean'], 1)} | "
                     f"{h['n_distinct_scores']} | {_fmt(h['len_spearman'], 2)} | {_fmt(h['len_pearson'], 2)} | "
                     f"{_fmt(h['rouge_spearman'], 2)} | {' '.join(map(str, h['hist']))} |")
        L.append("")
        for tag in ("a", "b"):
            h, lab = cmp["health"][tag], cmp[tag]["label"]
            if h["n_scored"] and h["n_distinct_scores"] <= 2:
                L.append(f"- {lab}: the judge gave only {h['n_distinct_scores']} distinct score(s); it is not "
                         f"discriminating between answers.")
            if not math.isnan(h["len_spearman"]) and abs(h["len_spearman"]) >= 0.5:
                L.append(f"- {lab}: scores track response length (ρ = {h['len_spearman']:.2f}); check for a "
                         f"length bias before trusting the difference.")
            if not math.isnan(h["rouge_spearman"]) and h["rouge_spearman"] < 0.2:
                L.append(f"- {lab}: judge scores barely agree with ROUGE-L (ρ = {h['rouge_spearman']:.2f}).")
        L.append("")
        rules = [(tag, judge_vs_rules(rows)) for tag, rows in (("A", rows_a), ("B", rows_b))]
        if any(r for _, r in rules):
            L += ["### The judge against the rule checks", "",
                  "How often a poem that passes a check got a higher judge score than one that fails it (ties "
                  "count 1/2; 50% = the judge ignores the rule).", "",
                  "| run | check | pass / fail | agreement | mean score pass / fail |", "|---|---|---|---|---|"]
            for tag, results in rules:
                for r in results:
                    L.append(f"| {tag} | {r['check']} | {r['n_pass']} / {r['n_fail']} | {100 * r['agreement']:.0f}% | "
                             f"{r['mean_pass']:.1f} / {r['mean_fail']:.1f} |")
            L.append("")
    p = cmp["pairs"]
    if p["item_ids"] and pr["metric"] in ("judge score", "ROUGE-L"):
        A = {str(r["item_id"]): r for r in rows_a}
        B = {str(r["item_id"]): r for r in rows_b}
        diffs = sorted(zip(p["item_ids"], p["a"], p["b"]), key=lambda t: t[2] - t[1])
        picks = [("B better", t) for t in reversed(diffs[-3:]) if t[2] > t[1]] + \
                [("A better", t) for t in diffs[:3] if t[2] < t[1]]
        if picks:
            L += ["## Largest per-item differences", "", "| | item | A | B | A response | B response |",
                  "|---|---|---|---|---|---|"]
            for tag, (i, x, y) in picks:   # dataset-split rows are text-free: their responses are not shown
                L.append(f"| {tag} | {i} | {_fmt(x, 2)} | {_fmt(y, 2)} | {_cell(A[i].get('response', '(text not committed)'))} | "
                         f"{_cell(B[i].get('response', '(text not committed)'))} |")
            L.append("")
    L += _pairwise_sections(rows_a, rows_b, a, b, paths, run_paths)
    L += _training_cost(a, b)
    if images:
        L += ["## Plots", ""]
        for file, caption in images:
            L += [f"![{caption}]({file})", ""]
    L += ["---", "Generated by `python -m harness report` from the rows files above (differences are B - A; "
          "wins are counted for B). Regenerate after new runs."]
    return "\n".join(L) + "\n"


def pairwise_runs_against(baseline_path: str | Path, model: str, adapter: str) -> list[tuple[Path, list[dict]]]:
    """(path, rows) of the pairwise runs (`run --judge-mode pairwise --baseline <that run>`) of model+adapter
    against a run, found beside it."""
    folder, stem = Path(baseline_path).parent, Path(baseline_path).stem
    found = []
    for f in sorted(folder.glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:                  # the first row says whose pairwise run it is
            first = fh.readline()
        try:
            if json.loads(first).get("pw_baseline") != stem:
                continue
        except (ValueError, AttributeError):
            pass                                               # read_rows names the bad line
        rows = read_rows(f)
        if rows and rows[0].get("pw_baseline") == stem and rows[0].get("model") == model \
                and (rows[0].get("adapter") or "") == adapter:
            found.append((f, rows))
    return found


def _pairwise_sections(rows_a: list[dict], rows_b: list[dict], a: dict, b: dict, paths: tuple[str, str],
                       run_paths: tuple[Path, Path]) -> list[str]:
    """Pairwise verdicts as a section each: those either run carries (it is a pairwise run), and the pairwise
    runs of B against A's run (or of A against B's) found beside them."""
    from harness.pairwise import pairwise_markdown, result_from_rows
    out: list[str] = []
    sources = [(rows_a, a, b, paths[1], None), (rows_b, b, a, paths[0], None)]
    for them, me, their_path in ((a, b, run_paths[0]), (b, a, run_paths[1])):
        sources += [(rows, me, them, str(their_path), f)
                    for f, rows in pairwise_runs_against(their_path, me["model"], me["adapter"])]
    for rows, info, other, other_path, source in sources:
        res = result_from_rows(rows)
        if res is None:
            continue
        baseline = next(str(r["pw_baseline"]) for r in rows if r.get("pw_baseline"))
        name_b = other["label"] if Path(other_path).stem == baseline else f"baseline run `{baseline}`"
        out += [pairwise_markdown(res, info["label"], name_b).rstrip("\n"), ""]
        if source is not None:
            out += [f"From `{_shown(source)}` (`python -m harness run --judge-mode pairwise --baseline {baseline}`).", ""]
    return out


def _training_cost(a: dict, b: dict) -> list[str]:
    """A table of what each adapter cost to train (from its history.json and recipe.toml), when both sides are
    adapters: which kind is better is only half the answer without its price."""
    from harness.models import find_adapter
    rows = []
    for tag, info in (("A", a), ("B", b)):
        if not info["adapter"]:
            return []
        try:
            ad = find_adapter(info["adapter"])
            hist = json.loads((ad.path / "history.json").read_text(encoding="utf-8"))
        except (UserError, OSError, ValueError):
            return []
        rows.append(f"| {tag} | {info['adapter']} | {ad.method} | {hist.get('train_items', '–')} | "
                    f"{hist.get('steps', '–')} | {hist.get('train_seconds', float('nan')):.0f} | "
                    f"{hist.get('torch_threads', '–')} | {ad.sha256[:12]} |")
    return ["## Training cost (from each adapter's history.json)", "",
            "| | adapter | method | training items | steps | training seconds | threads | adapter sha256 |",
            "|---|---|---|---|---|---|---|---|", *rows, ""]


def _shown(path: str | Path) -> str:
    """A path relative to the project when it lies inside it (reports are committed), else as given."""
    from harness.paths import PROJECT_ROOT

    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def write_report(run_a_path: str | Path, run_b_path: str | Path, out_dir: str | Path,
                 n_boot: int = 2000, seed: int = 0) -> Path:
    """Compare two rows files and write out_dir/<slug>/report.md plus its PNG plots; returns report.md."""
    rows_a, rows_b = read_rows(run_a_path), read_rows(run_b_path)
    for path, rows in ((run_a_path, rows_a), (run_b_path, rows_b)):
        if not rows:
            raise UserError(f"{path} holds no rows; rerun `python -m harness run` for it")
    try:
        cmp = compare_runs(rows_a, rows_b, n_boot=n_boot, seed=seed)
    except ValueError as e:
        raise UserError(f"{run_a_path} vs {run_b_path}: {e}") from None
    a, b = cmp["a"], cmp["b"]
    name = "_".join(slug(x) for x in (a["label"], "vs", b["label"], a["eval_set"], a["judge"] or "nojudge")
                    + ((a["decoding"],) if a["decoding"] else ()))
    if a["partial"] or b["partial"]:
        name += f"__part-{a['item_set'] or 'all'}-{b['item_set'] or 'all'}"
    shown = (_shown(run_a_path), _shown(run_b_path))
    folder = Path(out_dir) / name
    if _cited_runs(folder / "report.md") not in (None, shown):      # a report of other rows files lives there
        import hashlib
        folder = Path(out_dir) / f"{name}__{hashlib.sha256(chr(10).join(shown).encode()).hexdigest()[:8]}"
    images = _plots(cmp, rows_a, rows_b, folder)
    md = _markdown(cmp, rows_a, rows_b, shown, images,
                   (Path(run_a_path), Path(run_b_path)))
    path = folder / "report.md"
    atomic_write(path, md)
    return path


def _cited_runs(report: Path) -> tuple[str, str] | None:
    """The (A, B) rows files an existing report.md was made from (its Runs table), None if there is none."""
    import re
    if not report.is_file():
        return None
    found = dict(re.findall(r"^\| ([AB]) \|.*\| `([^`]+)` \|$", report.read_text(encoding="utf-8"), re.M))
    return (found.get("A", ""), found.get("B", ""))


# ---------------------------------------------------------------- finding runs

def list_runs(runs_dir: str | Path, task: str | None = None) -> list[dict]:
    """run_info of every non-empty rows file under runs_dir, plus its 'path'."""
    runs = []
    for f in run_files(runs_dir, task):
        rows = read_rows(f)
        if rows:
            runs.append({**run_info(rows), "path": f})
    return runs


def _describe(runs: list[dict]) -> str:
    if not runs:
        return "  (none)"
    return "\n".join(f"  {r['label']:<45} task={r['task']} eval_set={r['eval_set']} "
                     f"judge={r['judge'] or 'none'}{' decoding=' + r['decoding'] if r['decoding'] else ''}"
                     f"{' PARTIAL (' + str(r['n']) + ' items, pick it by run id ' + Path(r['path']).stem + ')' if r.get('partial') else ''}"
                     f"  ({r['path']})" for r in runs)


def find_run_pair(specs: list[str], runs: list[dict], task: str | None = None, eval_set: str | None = None,
                  judge: str | None = None, decoding: str | None = None) -> tuple[dict, dict]:
    """Pick the two runs named by SPECs that share task, eval set, judge and decoding. A SPEC is a rows file path,
    a run id (a rows file's name without .jsonl: exactly that run) or 'model' / 'model+adapter' (complete runs
    only: a partial run is picked by its id or file).

    judge 'none' means runs without a judge; decoding 'free' means runs decoded freely. No match or several
    possible pairs -> UserError listing the available runs and which flag narrows the choice.
    """
    if len(specs) != 2:
        raise UserError(f"--models takes exactly two SPECs (model or model+adapter), got {len(specs)}")
    jf = None if judge is None else ("" if judge.lower() == "none" else judge)
    df = None if decoding is None else ("" if decoding == "free" else decoding)
    pool = [r for r in runs if (task is None or r["task"] == task) and (eval_set is None or r["eval_set"] == eval_set)
            and (jf is None or r["judge"] == jf) and (df is None or r["decoding"] == df)]
    cands = []
    for spec in specs:
        if spec.endswith(".jsonl"):  # a rows file named directly
            if not Path(spec).is_file():
                raise UserError(f"rows file {spec} does not exist. Available runs:\n{_describe(runs)}")
            rows = read_rows(spec)
            if not rows:
                raise UserError(f"{spec} holds no rows; rerun `python -m harness run` for it")
            cands.append([{**run_info(rows), "path": Path(spec)}])
            continue
        by_id = [r for r in runs if Path(r["path"]).stem == spec]
        if by_id:
            if len(by_id) > 1:
                raise UserError(f"run id {spec!r} names {len(by_id)} rows files (one per task); pass the file:\n"
                                f"{_describe(by_id)}")
            cands.append(by_id)
            continue
        model, _, adapter = spec.partition("+")
        c = [r for r in pool if r["model"] == model and r["adapter"] == adapter and not r.get("partial")]
        if not c:
            filters = ", ".join(f"{k}={v}" for k, v in (("task", task), ("eval_set", eval_set), ("judge", judge),
                                                         ("decoding", decoding)) if v)
            raise UserError(f"no run matches {spec!r}{' with ' + filters if filters else ''}. Available runs:\n"
                            f"{_describe(runs)}\nrun one with `python -m harness run --model {model}"
                            f"{' --adapter ' + adapter if adapter else ''} --eval-set E`")
        cands.append(c)
    same = [(x, y) for x in cands[0] for y in cands[1] if x["path"] != y["path"]
            and (x["task"], x["eval_set"], x["judge"], x["judge_mode"], x["decoding"]) ==
            (y["task"], y["eval_set"], y["judge"], y["judge_mode"], y["decoding"])]
    if len(same) == 1:
        return same[0]
    if not same and len(cands[0]) == 1 and len(cands[1]) == 1 and cands[0][0]["path"] != cands[1][0]["path"]:
        return cands[0][0], cands[1][0]
    listed = _describe(cands[0] + [r for r in cands[1] if r not in cands[0]])
    why = "several pairs of runs match" if same else "no two matching runs share task, eval set and judge"
    raise UserError(f"{why} for {specs[0]!r} and {specs[1]!r}:\n{listed}\n"
                    f"narrow it with --eval-set, --judge (or 'none'), --decoding (or 'free') and --task")


def report_cmd(models: list[str] | None = None, task: str | None = None, eval_set: str | None = None,
               judge: str | None = None, runs_dir: str | None = None, out_dir: str | None = None,
               decoding: str | None = None) -> int:
    """Compare two checkpoints on the same items: paired bootstrap, win/tie/loss, judge health, plots.

    models: two SPECs, each "model", "model+adapter" (complete runs), a run id or a rows file path (first = A, second = B; differences are B - A)
    task: only runs of this task (spam, chat, poem)
    eval_set: only runs on this eval set, e.g. instruction:test
    judge: only runs scored by this judge, e.g. ollama:llama3 ('none' = unjudged runs)
    decoding: only runs with this decoding: free, form, rhyme, rhyme+tone (poems)
    runs_dir: folder holding <task>/<run_id>.jsonl (default results/runs)
    out_dir: reports root (default results/reports)
    """
    from harness.paths import results_dir

    if not models:  # a flag (--models A B) as in the issue, so it needs a default; it is still required
        raise UserError("pass two checkpoints: --models MODEL MODEL+ADAPTER (or two rows files)")
    runs_root = Path(runs_dir) if runs_dir else results_dir() / "runs"
    out = Path(out_dir) if out_dir else results_dir() / "reports"
    runs = [] if all(m.endswith(".jsonl") for m in models) else list_runs(runs_root, task)
    a, b = find_run_pair(models, runs, task, eval_set, judge, decoding)
    pa, pb = a["path"], b["path"]
    path = write_report(pa, pb, out)
    print(f"A: {pa}\nB: {pb}")
    print(path.read_text(encoding="utf-8").split("\n\n")[1])  # the verdict paragraph
    print(f"wrote {path}")
    return 0
