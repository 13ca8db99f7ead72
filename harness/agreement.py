"""Judges against humans: does a judge agree with your votes more than "the longer answer wins" does?

    from harness.agreement import judge_vs_humans, agreement_markdown, agreement_summary
    agreement_summary(store)                 # one dict per judge with >= 1 voted pair: for the leaderboard tab
    res = judge_vs_humans(labels, predictions, "ollama:llama3", kind="pairwise")
    print(agreement_markdown([res]))

    python -m harness bench agreement        # rewrite results/reports/judges/instructions_own.md
                                             # (harness/bench/agreement.py: every offline judge vs the committed labels)

Counting (as MT-bench counts it): a human "both bad" is a tie. Agreement with ties = the share of pairs where
the judge's verdict (a, b or tie) equals the human's; without ties = the same over pairs where neither the
human nor the judge says tie. Cohen's kappa over the three classes, with a percentile bootstrap CI over pairs
(2000 resamples, seed 0). Two baselines every judge must beat on the same pairs: "longer wins" (the answer
with more characters; equal length = tie) and "always first" (the answer the human saw first: side_a; when
the label does not say, answer A). For pairwise judges also the swap flip rate (verdicts that change when
the order is swapped) and the judge's own preference for the longer answer. A pointwise judge's verdict on a
pair is the side with the higher 0-100 score (equal = tie).

The judge "adds information" when its agreement beats both baselines and its kappa CI lies above 0; it is
checked only with at least MIN_PAIRS (20) voted pairs in common.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from harness.errors import UserError
from harness.io import text_sha

MIN_PAIRS = 20
CLASSES = ("a", "b", "tie")
BASELINES = ("longer wins", "always first")


def _human(winner: str) -> str:
    return "tie" if winner in ("tie", "both_bad") else winner


def kappa(h: list[str], j: list[str]) -> float:
    """Cohen's kappa of two label lists over CLASSES (nan when chance agreement is 1)."""
    return float(_kappa(np.array([CLASSES.index(x) for x in h])[None], np.array([CLASSES.index(x) for x in j])[None])[0])


def _kappa(h: np.ndarray, j: np.ndarray) -> np.ndarray:
    po = (h == j).mean(axis=1)
    pe = sum((h == k).mean(axis=1) * (j == k).mean(axis=1) for k in range(len(CLASSES)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)


def kappa_ci(h: list[str], j: list[str], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(kappa, ci_low, ci_high): percentile bootstrap over pairs."""
    if not h:
        return math.nan, math.nan, math.nan
    hi_, ji_ = np.array([CLASSES.index(x) for x in h]), np.array([CLASSES.index(x) for x in j])
    idx = np.random.default_rng(seed).integers(0, len(h), size=(n_boot, len(h)))
    boot = _kappa(hi_[idx], ji_[idx])
    boot = boot[~np.isnan(boot)]
    k = kappa(h, j)
    if boot.size == 0:
        return k, math.nan, math.nan
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return k, float(lo), float(hi)


def _agree(h: list[str], j: list[str]) -> tuple[float, float, int]:
    """(agreement with ties, agreement without ties, pairs without ties)."""
    n = len(h)
    with_ties = sum(a == b for a, b in zip(h, j)) / n if n else math.nan
    nt = [(a, b) for a, b in zip(h, j) if a != "tie" and b != "tie"]
    without = sum(a == b for a, b in nt) / len(nt) if nt else math.nan
    return with_ties, without, len(nt)


def longer(label: dict) -> str:
    la, lb = label.get("len_a"), label.get("len_b")
    if la is None or lb is None:
        raise UserError(f"label {label.get('key') or label.get('item_id')}: the answers' lengths are unknown "
                        f"(labels with only hashes need the answers' texts to compute 'longer wins')")
    return "a" if la > lb else "b" if lb > la else "tie"


def first(label: dict) -> str:
    return "b" if label.get("side_a") == "right" else "a"


def judge_vs_humans(labels: list[dict], predictions: dict, judge: str, kind: str = "pairwise",
                    n_boot: int = 2000) -> dict:
    """Agreement of one judge with the human labels it shares pairs with.

    labels: dicts with item_id, sha_a, sha_b, winner (a|b|tie|both_bad), len_a, len_b, side_a.
    predictions: {(item_id, sha_a, sha_b): {"winner": a|b|tie, "consistent": bool|None}} (pairwise) or
    {"winner": ...} (pointwise); pairs the judge did not see are simply absent.
    """
    common = [(lab, predictions[pair_key(lab)]) for lab in labels if predictions.get(pair_key(lab), {}).get("winner")]
    h = [_human(lab["winner"]) for lab, _ in common]
    j = [p["winner"] for _, p in common]
    n = len(common)
    out: dict = {"judge": judge, "kind": kind, "n": n, "enough": n >= MIN_PAIRS}
    out["agree"], out["agree_no_ties"], out["n_no_ties"] = _agree(h, j)
    out["kappa"], out["kappa_ci_low"], out["kappa_ci_high"] = kappa_ci(h, j, n_boot)
    for name, fn in (("longer", longer), ("first", first)):
        b = [fn(lab) for lab, _ in common]
        out[f"{name}_agree"], out[f"{name}_agree_no_ties"], _ = _agree(h, b)
        out[f"{name}_kappa"] = kappa(h, b) if n else math.nan
    flips = [p.get("consistent") for _, p in common if p.get("consistent") is not None]
    out["flip_rate"] = (sum(not c for c in flips) / len(flips)) if flips else None
    decided = [(lab, p["winner"]) for lab, p in common if p["winner"] != "tie" and longer(lab) != "tie"]
    out["longer_pref"] = sum(w == longer(lab) for lab, w in decided) / len(decided) if decided else None
    out["sentence"] = sentence(out)
    return out


def pair_key(label: dict) -> tuple[str, str, str]:
    return (str(label.get("item_id") or ""), str(label["sha_a"]), str(label["sha_b"]))


def sentence(r: dict) -> str:
    """The one plain sentence of the issue."""
    pct = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"  # noqa: E731
    if r["n"] < MIN_PAIRS:
        return (f"{r['judge']} shares only {r['n']} of your voted pairs (at least {MIN_PAIRS} are needed): vote on "
                f"more pairs it has judged before trusting or dismissing it")
    ci = (f"CI {r['kappa_ci_low']:.2f}–{r['kappa_ci_high']:.2f}" if not math.isnan(r["kappa_ci_low"])
          else "CI n/a")
    head = (f"{r['judge']} agrees with your {r['n']} votes {pct(r['agree'])} of the time "
            f"(κ {r['kappa']:.2f}, {ci}), 'longer wins' {pct(r['longer_agree'])}")
    if r["agree"] <= r["longer_agree"]:
        return head + ": it does not beat 'longer wins' on this set: do not trust its scores here"
    if r["agree"] <= r["first_agree"]:
        return head + (f", 'always first' {pct(r['first_agree'])}: it does not beat 'always the first answer' "
                       f"on this set: do not trust its scores here")
    if math.isnan(r["kappa_ci_low"]) or r["kappa_ci_low"] <= 0:
        return head + ": its κ CI reaches 0, so it is not clearly better than chance: do not trust its scores here"
    return head + ": the judge adds information"


# ---------------------------------------------------------------- predictions from the store

def pairwise_predictions(rows: list[dict]) -> dict[tuple, dict[tuple, dict]]:
    """Store `pairwise` rows -> {(judge, prompt_version, method): {(item_id, sha_a, sha_b): prediction}} for
    both orientations of every pair judged in both orders (the newest verdict per order wins)."""
    from harness.pairwise import combine, debias

    single: dict[tuple, dict[tuple, dict]] = defaultdict(dict)
    for r in sorted(rows, key=lambda r: r["created_at"] or ""):
        jid = (r["judge"], r["prompt_version"], (r.get("options") or {}).get("method", "generate"))
        single[jid][(r["item_id"], r["sha_first"], r["sha_second"])] = r
    out: dict[tuple, dict[tuple, dict]] = {}
    for jid, verdicts in single.items():
        preds, debiased = {}, {}
        for (item, s1, s2), v in verdicts.items():
            if (item, s2, s1) in verdicts:
                other = verdicts[(item, s2, s1)]
                w, c = combine(v["verdict"], other["verdict"])      # v: s1 shown first, so s1 plays "a"
                if w is not None:
                    preds[(item, s1, s2)] = {"winner": w, "consistent": c}
                if jid[2] == "logprob" and (d := debias(v, other)) is not None:
                    debiased[(item, s1, s2)] = {"winner": d}
        out[jid] = preds
        if debiased:
            out[(jid[0], jid[1], "logprob-debiased")] = debiased
    return out


def pointwise_predictions(scores: dict[tuple[str, str], float], labels: list[dict]) -> dict[tuple, dict]:
    """{(item_id, response sha): score} -> a verdict for every label whose two answers are both scored."""
    preds = {}
    for lab in labels:
        item, sa, sb = pair_key(lab)
        a, b = scores.get((item, sa)), scores.get((item, sb))
        if a is not None and b is not None:
            preds[(item, sa, sb)] = {"winner": "a" if a > b else "b" if b > a else "tie"}
    return preds


def _with_lengths(labels: list[dict]) -> list[dict]:
    return [lab for lab in labels if lab.get("len_a") is not None and lab.get("len_b") is not None]


def agreement_summary(store=None) -> list[dict]:
    """One result (judge_vs_humans) per judge that shares at least one counted vote (of any browser session),
    pairwise and pointwise, best kappa first: the leaderboard tab's "judges vs your votes" section.
    store: a Store or a path (None: the votes store, harness.paths.votes_store_path())."""
    from harness.paths import votes_store_path
    from harness.store import open_store

    with open_store(votes_store_path() if store is None else store) as st:
        labels = _with_lengths(st.rows("votes", {"status": "counted"}))   # every session's votes
        if not labels:
            return []
        results = []
        for (judge, version, method), preds in pairwise_predictions(st.rows("pairwise")).items():
            how = {"logprob": ", log-prob", "logprob-debiased": ", log-prob, position-debiased"}.get(method, "")
            r = judge_vs_humans(labels, preds, f"{judge} (pairwise {version}{how})")
            if r["n"]:
                results.append(r)
        by_judge: dict[str, dict[tuple, float]] = defaultdict(dict)
        for r in st.rows("judgments"):
            item = r.get("item") or {}
            if r["parsed"] and r["score"] is not None and "response" in item:
                by_judge[f"{r['judge']} (pointwise {r['prompt_version']})"][
                    (str(item.get("id", "")), text_sha(str(item["response"])))] = float(r["score"])
        for judge, scores in by_judge.items():
            r = judge_vs_humans(labels, pointwise_predictions(scores, labels), judge, kind="pointwise")
            if r["n"]:
                results.append(r)
    results.sort(key=lambda r: (-r["n"] >= -MIN_PAIRS, -(0 if math.isnan(r["kappa"]) else r["kappa"])))
    return results


def agreement_markdown(results: list[dict], title: str = "## Judges against your votes") -> str:
    """A report section: one table row per judge (and the two baselines on its pairs), then one sentence each."""
    f = lambda x: "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"  # noqa: E731
    k = lambda x: "–" if x is None or math.isnan(x) else f"{x:.2f}"  # noqa: E731
    lines = [title, ""]
    if not results:
        return "\n".join(lines + ["No judge shares a voted pair yet: vote in the app's Compare tab or "
                                  "`python -m harness labels import FILE`, then judge the same answers.", ""])
    lines += ["| judge | pairs | agree | agree (no ties) | κ (95% CI) | 'longer wins' agree / κ | "
              "'always first' agree / κ | swap flip rate | prefers longer |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ci = f"{k(r['kappa'])} ({k(r['kappa_ci_low'])}–{k(r['kappa_ci_high'])})"
        lines.append(f"| {r['judge']} | {r['n']} | {f(r['agree'])} | {f(r['agree_no_ties'])} (n={r['n_no_ties']}) | "
                     f"{ci} | {f(r['longer_agree'])} / {k(r['longer_kappa'])} | {f(r['first_agree'])} / "
                     f"{k(r['first_kappa'])} | {f(r['flip_rate'])} | {f(r['longer_pref'])} |")
    lines.append("")
    lines += [f"- {r['sentence']}." for r in results]
    return "\n".join(lines) + "\n"
