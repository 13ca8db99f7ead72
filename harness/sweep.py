"""Evaluate every checkpoint of a folder on one eval set: which step to keep?

    python -m harness finetune spam --keep-steps                 # adapters/<name>/steps/step-000050/ ...
    python -m harness sweep adapters/smollm2-135m-spam --eval-set sms_own
    python -m harness sweep runs/lora-checkpoints --eval-set instructions_own --judge transformers:smollm2-135m-instruct
    python -m harness sweep book-checkpoints/ --eval-set sms_own   # a folder of LLMs-from-scratch .pth files

A checkpoint in DIR (and in DIR/steps/) is an adapter folder (adapter_config.json: finetune's step checkpoints,
another trainer's checkpoint-N folders), a full model folder (config.json + safetensors), or a .pth state dict
of the book's GPTModel; DIR itself counts when it is an adapter (finetune's final one). The step comes from the
name (checkpoint-500, step-000100, epoch3.pth; the final adapter: its history.json's steps); checkpoints without
one (a folder of named adapters) follow in name order.

Each checkpoint is scored by harness.evaluate.run (generations and judgments cached in the store) on the task's
metric per item (classify: correct; generate: the judge's score with --judge, else the task's primary metric),
and its per-item values are kept in DIR/sweep/<eval set>.json (":" written "_") keyed by the checkpoint's
content hash: a rerun (after a crash, or with more checkpoints) evaluates only the new ones. Written next to
it: <eval set>.csv (the table), <eval set>.png (metric against step with 95% CIs) and <eval set>.md (table +
sentence); the sentence names the best checkpoint and says whether it is distinguishable from the last (paired
bootstrap CI).
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

from harness.errors import UserError

LOOKED_FOR = ("adapter folders (adapter_config.json + adapter_model.safetensors, e.g. finetune --keep-steps's "
              "steps/step-N or another trainer's checkpoint-N), full model folders (config.json + *.safetensors) "
              "and LLMs-from-scratch .pth state dicts")


SKIP = {"checkpoint", "checkpoint.old", "staging", "sweep"}    # finetune's resume state and work folders


def _step(name: str) -> int | None:
    """The training step a name carries (checkpoint-500, step-000100, epoch3, ckpt_7, or just 1200), else None
    (a folder of differently named adapters is ordered by name)."""
    if name.isdigit():
        return int(name)
    found = re.findall(r"(?:checkpoint|step|epoch|iter|ckpt)[-_]?(\d+)", name, flags=re.I)
    return int(found[-1]) if found else None


def find_checkpoints(folder: str | Path) -> list[dict]:
    """The checkpoints in `folder` and folder/steps, ordered by step (those without one last, by name)."""
    folder = Path(folder)
    found: list[dict] = []
    places = [folder] + ([folder / "steps"] if (folder / "steps").is_dir() else [])
    for place in places:
        for p in sorted(place.iterdir()):
            if p.name in SKIP or p.name.endswith(".tmp"):
                continue
            if p.is_dir() and (p / "adapter_config.json").is_file():
                found.append({"name": p.name, "kind": "adapter", "path": p, "step": _step(p.name)})
            elif p.is_dir() and (p / "config.json").is_file() and list(p.glob("*.safetensors")):
                found.append({"name": p.name, "kind": "model", "path": p, "step": _step(p.name)})
            elif p.is_file() and p.suffix == ".pth":
                found.append({"name": p.name, "kind": "pth", "path": p, "step": _step(p.stem)})
    if (folder / "adapter_config.json").is_file():      # finetune's final adapter, after its steps
        step = None
        try:
            step = int(json.loads((folder / "history.json").read_text(encoding="utf-8"))["steps"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        found.append({"name": f"{folder.name} (final)", "kind": "adapter", "path": folder, "step": step,
                      "final": True})
    big = 1 << 62
    found.sort(key=lambda c: (c["step"] is None, c["step"] if c["step"] is not None else big, c.get("final", False),
                              c["name"]))
    return found


@contextmanager
def _adapters_in(folder: Path):
    """Adapter names resolve under `folder` for the block (run() looks adapters up by name in FTBENCH_ADAPTERS)."""
    old = os.environ.get("FTBENCH_ADAPTERS")
    os.environ["FTBENCH_ADAPTERS"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FTBENCH_ADAPTERS", None)
        else:
            os.environ["FTBENCH_ADAPTERS"] = old


def item_values(task, rows: list[dict], judged: bool) -> tuple[str, dict[str, float]]:
    """(metric name, item id -> value) of a run's rows: the task's metric per item."""
    from harness.metrics import as_float
    if task.kind == "classify":
        return "accuracy", {str(r["item_id"]): float(r.get("pred") == r.get("label")) for r in rows}
    if judged:
        return "judge score", {str(r["item_id"]): float(r["score"]) for r in rows
                               if as_float(r.get("score")) is not None}
    field = task.primary or "rouge_l"
    return field, {str(r["item_id"]): float(r[field]) for r in rows if as_float(r.get(field)) is not None}


def _score(ck: dict, model: str, eval_set: str, judge: str | None, limit: int | None, batch_size: int, store,
           lms: dict, progress: bool) -> tuple[str, dict[str, float], str]:
    """(metric, item values, the run's model name) of one checkpoint, through harness.evaluate.run."""
    from harness.evaluate import run
    from harness.models import find_adapter, load_model
    if ck["kind"] != "adapter":
        res = run(str(ck["path"]), None, eval_set, judge, limit, batch_size, store=store, write=False,
                  progress=progress)
    else:
        with _adapters_in(ck["path"].parent):
            base = model or find_adapter(ck["path"].name).base
            if base not in lms:
                lms.clear()                              # one base in memory at a time
                lms[base] = load_model(base)
            res = run(base, ck["path"].name, eval_set, judge, limit, batch_size, store=store, lm=lms[base],
                      write=False, progress=progress)
    from harness.tasks import get_task
    task = get_task(res.task)
    metric, values = item_values(task, res.rows, bool(judge) and task.kind == "generate")
    return metric, values, res.rows[0].get("model", "") if res.rows else ""


def sweep(folder: str | Path, eval_set: str, judge: str | None = None, model: str = "", limit: int | None = None,
          batch_size: int = 16, output: str | Path | None = None, progress: bool = True, n_boot: int = 2000) -> dict:
    """Score every checkpoint of `folder` (cached per checkpoint, resumable); write the table, plot and sentence.
    Returns {"metric", "checkpoints": [row...], "sentence", "paths"}."""
    from harness.evaluate import load_items
    from harness.io import atomic_write
    from harness.metrics import bootstrap_mean_ci, paired_bootstrap
    from harness.models import checkpoint_hash, find_adapter
    from harness.store import Store
    from harness.tasks import get_task

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; sweep DIR evaluates the checkpoints inside a folder")
    cks = find_checkpoints(folder)
    if not cks:
        raise UserError(f"no checkpoints in {folder} (nor in {folder / 'steps'}): looked for {LOOKED_FOR}")
    es, items = load_items(eval_set, limit)
    task = get_task(es.task)
    judge = judge if (judge and task.kind == "generate") else None
    out_dir = Path(output) if output else folder / "sweep"
    fname = es.name.replace(":", "_")                 # sms_spam:validation -> sms_spam_validation.* (any OS)
    cache_file = out_dir / f"{fname}.json"
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    store = Store()
    lms: dict = {}
    rows = []
    skipped = []
    try:
        for ck in cks:
            if ck["kind"] == "adapter":
                with _adapters_in(ck["path"].parent):
                    info = find_adapter(ck["path"].name)
                    if info.task != task.name:          # a folder of adapters of several tasks: this task's only
                        skipped.append(f"{ck['name']} ({info.task})")
                        continue
                    base = model or info.base
                    h = checkpoint_hash(base, ck["path"].name)
            else:
                h = checkpoint_hash(str(ck["path"]))
            key = json.dumps([h, es.name, limit, judge or ""])
            if key not in cache:
                metric, values, _ = _score(ck, model, es.name, judge, limit, batch_size, store, lms, progress)
                cache[key] = {"metric": metric, "values": values}
                out_dir.mkdir(parents=True, exist_ok=True)
                atomic_write(cache_file, json.dumps(cache, indent=1))     # resume from here after a crash
            got = cache[key]
            mean, lo, hi = bootstrap_mean_ci(list(got["values"].values()), n_boot=n_boot)
            rows.append({"checkpoint": ck["name"], "step": ck["step"], "kind": ck["kind"], "hash": h,
                         "n": len(got["values"]), "mean": mean, "ci_low": lo, "ci_high": hi,
                         "metric": got["metric"], "values": got["values"]})
    finally:
        store.close()
        lms.clear()
    if not rows:
        raise UserError(f"no {task.name} checkpoints in {folder} for {es.name}: the adapters there are for other "
                        f"tasks ({', '.join(skipped)}); pick an eval set of their task")
    metric = rows[0]["metric"]
    best = max(rows, key=lambda r: (r["mean"], -rows.index(r)))     # ties: the earliest
    last = rows[-1]
    sentence = _sentence(best, last, metric, task, n_boot, paired_bootstrap)
    paths = _write(out_dir, fname, rows, metric, sentence, folder, es.name)
    return {"metric": metric, "checkpoints": rows, "sentence": sentence, "paths": paths, "best": best["checkpoint"],
            "skipped": skipped}


def _fmt(v: float, metric: str) -> str:
    return f"{v * 100:.1f}%" if metric in ("accuracy", "form_ok") else f"{v:.3g}"


def _sentence(best: dict, last: dict, metric: str, task, n_boot: int, paired_bootstrap) -> str:
    where = f"step {best['step']}" if best["step"] is not None else best["checkpoint"]
    head = (f"The best checkpoint is {best['checkpoint']} ({where}) with {metric} {_fmt(best['mean'], metric)} "
            f"(95% CI {_fmt(best['ci_low'], metric)} to {_fmt(best['ci_high'], metric)}, n={best['n']})")
    if best is last:
        return head + ", and it is the last checkpoint."
    common = sorted(set(best["values"]) & set(last["values"]))
    pb = paired_bootstrap([best["values"][i] for i in common], [last["values"][i] for i in common], n_boot=n_boot)
    unit = 100 if metric in ("accuracy", "form_ok") else 1
    diff = (f"difference {pb['mean_diff'] * unit:+.3g}{' points' if unit == 100 else ''}, paired 95% CI "
            f"{pb['ci_low'] * unit:+.3g} to {pb['ci_high'] * unit:+.3g}, n={pb['n']}")
    if pb["distinguishable"]:
        return f"{head}; it is distinguishable from the last checkpoint, {last['checkpoint']} ({diff})."
    return (f"{head}; it is not distinguishable from the last checkpoint, {last['checkpoint']} ({diff}), so "
            "keeping the last costs nothing measurable.")


def _write(out_dir: Path, name: str, rows: list[dict], metric: str, sentence: str, folder: Path,
           title: str) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.io import atomic_write, save_figure, write_csv
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["checkpoint", "step", "kind", "n", metric, "ci_low", "ci_high", "checkpoint_hash"]
    table = [[r["checkpoint"], "" if r["step"] is None else r["step"], r["kind"], r["n"], f"{r['mean']:.4f}",
              f"{r['ci_low']:.4f}", f"{r['ci_high']:.4f}", r["hash"]] for r in rows]
    csv = write_csv(out_dir / f"{name}.csv", header, table)
    md = [f"## Sweep: {title}", "", f"| checkpoint | step | n | {metric} | 95% CI |", "|---|---|---|---|---|"]
    md += [f"| {r['checkpoint']} | {'' if r['step'] is None else r['step']} | {r['n']} | "
           f"{_fmt(r['mean'], metric)} | {_fmt(r['ci_low'], metric)} – {_fmt(r['ci_high'], metric)} |" for r in rows]
    md += ["", sentence, "", f"![{metric} against step]({name}.png)", ""]
    md_path = atomic_write(out_dir / f"{name}.md", "\n".join(md))
    with_steps = all(r["step"] is not None for r in rows)
    xs = [r["step"] if with_steps else i for i, r in enumerate(rows)]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ys = [r["mean"] for r in rows]
    ax.errorbar(xs, ys, yerr=[[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]],
                fmt="o-", capsize=3)
    if not with_steps:
        ax.set_xticks(xs, [r["checkpoint"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("step" if with_steps else "checkpoint")
    ax.set_ylabel(f"{metric} (95% CI)")
    ax.set_title(f"{folder.name}: {title}")
    fig.tight_layout()
    png = save_figure(fig, out_dir / f"{name}.png")
    plt.close(fig)
    return {"csv": csv, "png": png, "md": md_path, "cache": out_dir / f"{name}.json"}


def sweep_cmd(folder: str, /, eval_set: str, judge: str = "", model: str = "", limit: int | None = None,
              batch_size: int = 16, output: str = "") -> int:
    """Evaluate every checkpoint in a folder (finetune's step checkpoints, a folder of adapters, .pth files) on an
    eval set; write a table, a plot of the metric against step with CIs, and say which checkpoint to keep.

    folder: the folder of checkpoints (and its steps/ subfolder)
    eval_set: the eval set to score every checkpoint on (see `python -m harness data list`)
    judge: generate tasks: a judge spec for 0-100 scores (default: the task's own metric, no judge)
    model: the base of adapter checkpoints (default: the base each adapter names)
    limit: only the first N items
    batch_size: items generated or classified together
    output: where the table, plot and cache go (default: FOLDER/sweep)
    """
    res = sweep(folder, eval_set, judge or None, model, limit, batch_size, output or None)
    m = res["metric"]
    print(f"{'checkpoint':32} {'step':>7} {'n':>5} {m:>12}  95% CI")
    for r in res["checkpoints"]:
        step = "" if r["step"] is None else r["step"]
        print(f"{r['checkpoint'][:32]:32} {step!s:>7} {r['n']:>5} {_fmt(r['mean'], m):>12}  "
              f"{_fmt(r['ci_low'], m)} to {_fmt(r['ci_high'], m)}")
    if res["skipped"]:
        print(f"skipped (another task): {', '.join(res['skipped'])}")
    print(res["sentence"])
    print(f"table {res['paths']['csv']}, plot {res['paths']['png']}, summary {res['paths']['md']}")
    return 0
