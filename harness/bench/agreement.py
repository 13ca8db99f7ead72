"""The committed judges-vs-humans report: every offline judge against the project's own labels.

    python -m harness bench agreement            # rewrite results/reports/judges/instructions_own.md

Moved out of harness.agreement (which the app imports) because it runs the fake Ollama server for a
plumbing row, and product code never imports the test fakes.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from harness.agreement import agreement_markdown, judge_vs_humans, pair_key, pointwise_predictions
from harness.errors import UserError
from harness.testing.fake_ollama import FakeOllama
from harness.io import atomic_write, iter_jsonl, text_sha
from harness.judge import DEFAULT_OFFLINE_JUDGE, JudgeConfig, open_judge
from harness.pairwise import pairwise_judge, pairwise_markdown, read_run
from harness.testing import fake_pairwise_answer
from harness.paths import PROJECT_ROOT
from harness.store import open_store
from harness.votes import read_labels

OWN_PAIRS = "eval_sets/own/instructions_own_pairs.jsonl"
OWN_RUNS = {   # eval set -> (task, rows folder, base rows file, adapter rows file)
    "instructions_own": ("chat", "results/runs/chat",
                         "instructions_own__smollm2-135m-instruct__base__transformers-smollm2-135m-instruct.jsonl",
                         "instructions_own__smollm2-135m-instruct__smollm2-135m-alpaca__"
                         "transformers-smollm2-135m-instruct.jsonl"),
    "poems_own": ("poem", "results/runs/poem", "poems_own__smollm2-135m-instruct__base__nojudge.jsonl",
                  "poems_own__smollm2-135m-instruct__smollm2-135m-poem-zh__nojudge.jsonl"),
}


def own_pairs_report(output: str | Path | None = None, store=None, fake: bool = True, progress: bool = False) -> Path:
    """Every available judge against the committed labels (eval_sets/own/instructions_own_pairs.jsonl) ->
    results/reports/judges/instructions_own.md. Offline: the in-process judge (pointwise from the committed
    rows' scores, pairwise by log-probabilities), both baselines, and the fake Ollama (plumbing only)."""
    root = PROJECT_ROOT
    out = Path(output) if output else root / "results" / "reports" / "judges" / "instructions_own.md"
    labels_path = root / OWN_PAIRS
    all_labels = read_labels(labels_path)
    lines = ["# Judges against human labels on the project's own eval sets", "",
             "Regenerate: `python -m harness bench agreement` (loads the embedded model once, about a minute on an "
             "idle 2-core CPU; pairwise verdicts are cached in the store, so a rerun asks nothing).", "",
             f"Labels: `{OWN_PAIRS}`, {len(all_labels)} pairs written by one team member who read both answers "
             "in a random left/right order with model and adapter names hidden, and decided like a careful user "
             "(one line of reason each). Each label is keyed by item id and the sha256 of both answers; the "
             "answers themselves are in the committed rows files named below. A = the adapter, B = the base. "
             "A human 'both bad' counts as a tie (MT-bench).", ""]
    sections: list[str] = []
    judge = open_judge(JudgeConfig(DEFAULT_OFFLINE_JUDGE))
    with open_store(store) as st:
        for eval_set, (task, folder, base_name, adapter_name) in OWN_RUNS.items():
            labels = [dict(lab) for lab in all_labels if lab["eval_set"] == eval_set]
            if not labels:
                continue
            base_f, adapter_f = root / folder / base_name, root / folder / adapter_name
            runs = [read_run(base_f), read_run(adapter_f)]
            adapter = runs[1][0]["adapter"]
            text_of = {(str(r["item_id"]), text_sha(r["response"])): r["response"] for rs in runs for r in rs}
            score_of = {(str(r["item_id"]), text_sha(r["response"])): float(r["score"]) for rs in runs for r in rs
                        if r.get("judge") and r.get("parsed") and r.get("score") is not None}
            for lab in labels:
                for side in ("a", "b"):
                    t = text_of.get((lab["item_id"], lab[f"sha_{side}"]))
                    if t is None:
                        raise UserError(f"{labels_path}: label {lab['key']}: answer {side.upper()} matches no "
                                        f"committed row of {lab['item_id']} in {folder}: relabel it or restore "
                                        f"the rows files")
                    lab[f"len_{side}"] = len(t)
            own = {str(r["id"]): r for _, r in iter_jsonl(root / "eval_sets" / "own" / f"{eval_set}.jsonl")}
            items = [{"task": task, **own[lab["item_id"]]} for lab in labels]
            resp_a = [text_of[(lab["item_id"], lab["sha_a"])] for lab in labels]
            resp_b = [text_of[(lab["item_id"], lab["sha_b"])] for lab in labels]
            results = []
            if score_of:
                results.append(judge_vs_humans(labels, pointwise_predictions(score_of, labels),
                                               f"{runs[0][0]['judge']} (pointwise v1, committed scores)",
                                               kind="pointwise"))
            pw = pairwise_judge(judge, items, resp_a, resp_b, st, progress=progress)
            results.append(judge_vs_humans(labels, _preds(labels, pw), f"{judge.name} (pairwise v1, log-prob)"))
            results.append(judge_vs_humans(labels, {pair_key(lab): {"winner": it.debiased}
                                                    for lab, it in zip(labels, pw.items) if it.debiased},
                                           f"{judge.name} (pairwise v1, log-prob, position-debiased)"))
            counts = defaultdict(int)
            for lab in labels:
                counts[lab["winner"]] += 1
            sections += [f"## {eval_set}: {adapter} (A) vs base (B)", "",
                         f"{len(labels)} labels (of {len(own)} items: every pair there is): A wins {counts['a']}, "
                         f"B wins {counts['b']}, tie {counts['tie']}, both bad {counts['both_bad']}. Answers: "
                         f"`{folder}/{base_name}` and `{folder}/{adapter_name}`.", ""]
            if not score_of:
                sections += ["These rows were made without a judge (`nojudge`), so there is no pointwise judge to "
                             "check on this set.", ""]
            sections += [agreement_markdown(results, f"### Every available judge on {eval_set}"),
                         pairwise_markdown(pw, adapter, "base").replace("## Pairwise", "### Pairwise", 1),
                         f"Log-prob pairwise: {len(labels)} items x 2 orders in {pw.seconds:.1f} s "
                         f"({'from the store' if pw.asked == 0 else 'computed now'}).", ""]
            if fake:
                with FakeOllama(default=fake_pairwise_answer) as server, \
                        open_judge(JudgeConfig("ollama:llama3", host=server.url)) as fj:
                    fpw = pairwise_judge(fj, items, resp_a, resp_b, st, progress=progress)
                fres = judge_vs_humans(labels, _preds(labels, fpw), "fake ollama:llama3 (plumbing only)")
                sections += [f"### Plumbing check on {eval_set}: the fake Ollama", "",
                             "The fake server (harness/testing/fake_ollama.py) names a winner chosen by a hash of the "
                             "prompt. Its row only shows that a remote judge's verdicts flow through the worker "
                             "pool, the store and this report; it says nothing about any real model.", "",
                             agreement_markdown([fres], "").lstrip("\n")]
    judge.close()
    lines += ["How to read the tables: 'agree' counts ties as a class; 'agree (no ties)' only pairs where "
              "neither the human nor the judge said tie; κ is Cohen's kappa over a/b/tie with a 95% bootstrap CI. "
              "Every judge must beat 'longer wins' and 'always first' (the answer the labeller saw on the left). "
              "The pointwise judge's verdict on a pair is the answer with the higher committed 0-100 score "
              "(equal = tie). The log-prob pairwise judge reads log p(\"A\") and log p(\"B\") after the prompt "
              "in both orders, with a tie margin of 0.1 nats; a verdict that flips with the order is a tie. Its "
              "position-debiased row uses the same two forward passes: the mean over both orders of the log-odds "
              "for the answer (so a fixed preference for the first slot cancels), a tie under 0.1 nats.", ""]
    atomic_write(out, "\n".join(lines + sections).rstrip() + "\n")
    return out


def _preds(labels: list[dict], res) -> dict[tuple, dict]:
    return {pair_key(lab): {"winner": it.winner, "consistent": it.consistent}
            for lab, it in zip(labels, res.items) if it.winner}


def bench_agreement(output: str | None = None, store: str | None = None, fake: bool = True) -> int:
    """Every offline judge against the committed labels (eval_sets/own/instructions_own_pairs.jsonl): the
    in-process judge pointwise and pairwise by log-probabilities, both baselines, and the fake Ollama as a
    plumbing check. Loads the embedded model once (about a minute on 2 cores); verdicts are cached in the store.

    output: the report to write (default results/reports/judges/instructions_own.md)
    store: the store file (default $FTBENCH_CACHE/store.sqlite)
    fake: add the fake Ollama's plumbing row
    """
    path = own_pairs_report(output, store, fake=fake, progress=True)
    print(f"wrote {path}")
    return 0
