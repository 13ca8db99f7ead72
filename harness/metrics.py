"""Metrics as pure functions (no I/O): ROUGE-L, classification metrics with bootstrap CIs, paired
comparisons, poem form checks, distinct-n, repetition and loop detection, correlations.

    >>> from harness.metrics import rouge_l, form_check, paired_bootstrap
    >>> round(rouge_l("the cat sat on the mat", "the cat is on the mat"), 3)
    0.833
    >>> form_check("床前明月光，疑是地上霜。\\n举头望明月，低头思故乡。", "五言绝句", "zh")["ok"]
    True

Run the tests: ``python -m pytest tests/test_metrics.py -q``.

Tokenisation (shared by ROUGE-L, distinct-n, repetition and looping): lowercase; every CJK ideograph
is one token; other text is split into words of letters/digits (apostrophes kept inside words);
punctuation is dropped. Mixed Chinese/English text therefore works without a language flag.

Bootstrap CIs are percentile intervals (2.5th and 97.5th percentiles of ``n_boot`` resamples of the
items, numpy ``default_rng(seed)``), so the same inputs and seed always give the same interval.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

# CJK Unified Ideographs + Extension A + compatibility ideographs + 〇 + Extensions B.. (supplementary planes)
from harness.io import CJK_CLASS as _CJK_CLASS  # the one definition of a CJK ideograph
_CJK = re.compile(f"[{_CJK_CLASS}]")
_TOKEN = re.compile(f"[{_CJK_CLASS}]|[^\\W_{_CJK_CLASS}]+(?:'[^\\W_{_CJK_CLASS}]+)*")
_MAX_BOOT_CELLS = 2_000_000  # resample in chunks so n_boot x n never allocates more than ~16 MB


def is_cjk(ch: str) -> bool:
    """True if ``ch`` is a single CJK ideograph (汉字), not punctuation."""
    return bool(_CJK.fullmatch(ch))


def tokenize(text: str) -> list[str]:
    """Lowercase tokens: one per CJK ideograph, one per word elsewhere; punctuation dropped."""
    return _TOKEN.findall((text or "").lower())


# ---------------------------------------------------------------- reference-based metric

def _lcs_len(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1]: longest common subsequence of tokens (see `tokenize`).

    precision = LCS / len(candidate), recall = LCS / len(reference), F1 = 2PR / (P + R).
    Returns 0.0 when either text has no tokens (an empty answer earns nothing, even against an
    empty reference).
    """
    c, r = tokenize(candidate), tokenize(reference)
    if not c or not r:
        return 0.0
    lcs = _lcs_len(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


# ---------------------------------------------------------------- bootstrap helpers

def _boot_stat(n: int, n_boot: int, seed: int, stat) -> np.ndarray:
    """Apply ``stat(idx)`` (idx: (k, n) int array of resampled positions) to n_boot resamples."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _MAX_BOOT_CELLS // max(n, 1)))
    out = []
    done = 0
    while done < n_boot:
        k = min(chunk, n_boot - done)
        out.append(stat(rng.integers(0, n, size=(k, n))))
        done += k
    return np.concatenate(out, axis=-1)


def _pct(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=-1)
    return float(lo), float(hi)


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, ci_low, ci_high): percentile bootstrap (1 - alpha) CI of the mean.

    None and NaN values are ignored. No values -> (nan, nan, nan).
    """
    x = np.array([v for v in values if v is not None], dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    boot = _boot_stat(x.size, n_boot, seed, lambda idx: x[idx].mean(axis=1))
    lo, hi = _pct(boot, alpha)
    return float(x.mean()), lo, hi


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0,
                     tie_tol: float = 0.0, alpha: float = 0.05) -> dict:
    """Paired comparison of two systems scored on the same items (a[i] and b[i] = item i).

    mean_diff = mean(a - b) with a percentile bootstrap CI over items (items are resampled, pairs kept
    together). wins/ties/losses count items where a > b + tie_tol / |a - b| <= tie_tol / a < b - tie_tol
    (from a's point of view). distinguishable = the CI excludes 0; with n below ~30 the bootstrap CI
    itself is unreliable, so callers should say so (see harness.report).
    """
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs equal lengths, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = int(d.size)
    if n == 0:
        return {"mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "wins": 0, "ties": 0,
                "losses": 0, "n": 0, "distinguishable": False}
    boot = _boot_stat(n, n_boot, seed, lambda idx: d[idx].mean(axis=1))
    lo, hi = _pct(boot, alpha)
    wins = int((d > tie_tol).sum())
    losses = int((d < -tie_tol).sum())
    return {"mean_diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "wins": wins,
            "ties": n - wins - losses, "losses": losses, "n": n,
            "distinguishable": bool(lo > 0 or hi < 0)}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (only A right) and c (only B right).

    Binomial test of min(b, c) under Binomial(b + c, 1/2); 1.0 when there are no discordant items.
    """
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return float(min(1.0, 2 * tail))


# ---------------------------------------------------------------- classification

def _prf(tp, fp, fn, tn):
    """Accuracy, precision, recall, F1 on (possibly vectorised) confusion counts; 0/0 -> 0.0."""
    tp, fp, fn, tn = (np.asarray(v, dtype=float) for v in (tp, fp, fn, tn))
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = (tp + tn) / (tp + fp + fn + tn)
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / np.where(prec + rec > 0, prec + rec, 1), 0.0)
    return acc, prec, rec, f1


def classification_metrics(y_true: list[str], y_pred: list[str], positive: str = "spam",
                           n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                           labels: list[str] | None = None) -> dict:
    """Accuracy (exact label match), precision, recall and F1 for the ``positive`` class, and the macro F1
    over ``labels`` (default: the labels seen), each of the first four with a bootstrap CI.

    For precision/recall/F1 any label other than ``positive`` counts as negative. Zero division is 0.0:
    precision with no predicted positives, recall with no actual positives, F1 when P + R = 0 (scikit-learn's
    ``zero_division=0``). The same rule applies inside every bootstrap resample.

    Returns a flat dict: n, positive, tp, fp, tn, fn, macro_f1, and for m in accuracy/precision/recall/f1:
    m, m_ci_low, m_ci_high.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("classification_metrics needs at least one item")
    t = np.array([y == positive for y in y_true])
    p = np.array([y == positive for y in y_pred])
    eq = np.array([a == b for a, b in zip(y_true, y_pred)])
    tp, fp = int((t & p).sum()), int((~t & p).sum())
    fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
    point = _prf(tp, fp, fn, tn)

    def stat(idx):
        tt, pp = t[idx], p[idx]
        _, prec, rec, f1 = _prf((tt & pp).sum(1), (~tt & pp).sum(1), (tt & ~pp).sum(1), (~tt & ~pp).sum(1))
        return np.stack([eq[idx].mean(1), prec, rec, f1])

    boot = _boot_stat(len(t), n_boot, seed, stat)  # shape (4, n_boot)
    out: dict = {"n": len(t), "positive": positive, "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for i, name in enumerate(("accuracy", "precision", "recall", "f1")):
        lo, hi = _pct(boot[i], alpha)
        out[name] = float(eq.mean()) if name == "accuracy" else float(point[i])
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
    f1s = []
    for lab in labels or sorted(set(y_true) | set(y_pred)):
        lt, lp = np.array([y == lab for y in y_true]), np.array([y == lab for y in y_pred])
        f1s.append(float(_prf(int((lt & lp).sum()), int((~lt & lp).sum()), int((lt & ~lp).sum()), 0)[3]))
    out["macro_f1"] = sum(f1s) / len(f1s)
    return out


# ---------------------------------------------------------------- poem form

FIXED_FORMS: dict[str, tuple[int, int]] = {
    "五言绝句": (4, 5), "七言绝句": (4, 7), "五言律诗": (8, 5), "七言律诗": (8, 7),
}
FREE_FORMS = ("sonnet", "free verse")
# Line separators for Chinese forms: newlines, full-width ，。！？；、 and their ASCII look-alikes.
ZH_SPLIT = re.compile(r"[\n\r，。！？；、,.!?;]+")


def _norm_form(form: str) -> str:
    f = (form or "").strip()
    low = f.lower().replace("-", " ").replace("_", " ")
    if low in FREE_FORMS:
        return low
    return f


def form_check(poem: str, form: str, lang: str = "zh") -> dict:
    """Does ``poem`` have the shape ``form`` asks for?

    Chinese fixed forms (五言绝句 4x5, 七言绝句 4x7, 五言律诗 8x5, 七言律诗 8x7): the text is split into
    lines on newlines and on ，。！？；、 (and ASCII ,.!?;), so both one line per row and the usual two
    lines per row ("床前明月光，疑是地上霜。") pass. A line is a segment holding any letter or digit;
    only CJK ideographs are counted in chars_per_line. Segments of pure punctuation or whitespace
    (quotes, dashes, trailing blanks) are ignored. A title, a preamble ("好的，这是一首诗：") or an
    English sentence is a line of its own and therefore a problem: the model was asked for the poem only.

    sonnet: ok if exactly 14 non-empty lines. free verse: ok if >= 2 non-empty lines. For these, lines
    are text rows (a literal "<eos>" marker, as in the Deep-speare data, also ends a line) and
    chars_per_line counts CJK ideographs for lang "zh", characters of the stripped row otherwise;
    expected_chars is None.

    Returns dict(ok, lines, chars_per_line, expected_lines, expected_chars, problem) where problem is
    "" when ok. For free verse expected_lines is the minimum (2). Unknown form -> ValueError.
    """
    f = _norm_form(form)
    text = (poem or "").replace("\r\n", "\n")
    if f in FIXED_FORMS:
        exp_lines, exp_chars = FIXED_FORMS[f]
        segs = [s.strip() for s in ZH_SPLIT.split(text)]
        segs = [s for s in segs if any(ch.isalnum() for ch in s)]
        counts = [sum(1 for ch in s if is_cjk(ch)) for s in segs]
        problems = []
        if len(counts) != exp_lines:
            problems.append(f"{len(counts)} lines, expected {exp_lines}")
        bad = [(i + 1, c) for i, c in enumerate(counts) if c != exp_chars]
        if bad:
            shown = ", ".join(f"line {i} has {c}" for i, c in bad[:4]) + (" ..." if len(bad) > 4 else "")
            problems.append(f"{shown} characters, expected {exp_chars}")
        return {"ok": not problems, "lines": len(counts), "chars_per_line": counts,
                "expected_lines": exp_lines, "expected_chars": exp_chars, "problem": "; ".join(problems)}
    if f in FREE_FORMS:
        rows = [r.strip() for r in re.split(r"\n|<eos>", text)]
        rows = [r for r in rows if r]
        if lang == "zh":
            counts = [sum(1 for ch in r if is_cjk(ch)) for r in rows]
        else:
            counts = [len(r) for r in rows]
        if f == "sonnet":
            ok, exp = len(rows) == 14, 14
            problem = "" if ok else f"{len(rows)} lines, expected 14"
        else:
            ok, exp = len(rows) >= 2, 2
            problem = "" if ok else f"{len(rows)} line(s), expected at least 2"
        return {"ok": ok, "lines": len(rows), "chars_per_line": counts, "expected_lines": exp,
                "expected_chars": None, "problem": problem}
    known = ", ".join([*FIXED_FORMS, *FREE_FORMS])
    raise ValueError(f"unknown poem form {form!r}; known forms: {known}")


# ---------------------------------------------------------------- diversity and repetition

def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: str | Sequence[str], n: int = 2) -> float:
    """Unique n-grams / total n-grams (Li et al. 2016), tokens as in `tokenize` (CJK per character).

    A single string is scored alone; a list pools the n-grams of all its texts (corpus-level
    distinct-n: also low when every answer is the same text). No n-grams at all -> 0.0.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    items = [texts] if isinstance(texts, str) else list(texts)
    grams = [g for t in items for g in _ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 4) -> float:
    """Fraction of the text's n-grams that repeat an earlier n-gram of the same text: 1 - distinct-n.

    0.0 for text with fewer than n tokens or no repeats; approaches 1.0 for a text stuck in a loop.
    Default n=4 (4 words, or 4 characters for Chinese): ordinary prose and poems rarely repeat a 4-gram.
    """
    grams = _ngrams(tokenize(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def looping(text: str, min_repeats: int = 3, max_period: int = 16, min_span: int = 8) -> bool:
    """True if the text repeats the same token span back to back, like "A gentle one, a gentle one, …".

    Looks for a period p <= max_period (in tokens) whose span repeats at least ``min_repeats`` times
    in a row and covers at least ``min_span`` tokens, so "ha ha ha" or a refrain sung twice is not a
    loop but "a gentle one, a gentle one, a gentle one" or "春风春风春风春风" is.
    """
    toks = tokenize(text)
    for p in range(1, max_period + 1):
        need = max(p * (min_repeats - 1), min_span - p)
        run = 0
        for i in range(len(toks) - p):
            run = run + 1 if toks[i] == toks[i + p] else 0
            if run >= need:
                return True
    return False


# ---------------------------------------------------------------- correlations

def _clean_pairs(x: Sequence, y: Sequence) -> tuple[np.ndarray, np.ndarray]:
    if len(x) != len(y):
        raise ValueError(f"correlation needs equal lengths, got {len(x)} and {len(y)}")
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    xa = np.array([a for a, _ in pairs], dtype=float)
    ya = np.array([b for _, b in pairs], dtype=float)
    keep = ~(np.isnan(xa) | np.isnan(ya))
    return xa[keep], ya[keep]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation over pairs where both values are present; nan with < 3 pairs or no variance."""
    xa, ya = _clean_pairs(x, y)
    if xa.size < 3 or xa.std() == 0 or ya.std() == 0:
        return math.nan
    return float(np.corrcoef(xa, ya)[0, 1])


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks starting at 1, ties given their average rank (like scipy.stats.rankdata)."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=float)
    sa = a[order]
    i = 0
    while i < a.size:
        j = i
        while j + 1 < a.size and sa[j + 1] == sa[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson on average ranks); nan with < 3 pairs or constant input."""
    xa, ya = _clean_pairs(x, y)
    if xa.size < 3:
        return math.nan
    return pearson(rankdata(xa), rankdata(ya))


def histogram(values: Sequence[float], lo: float = 0.0, hi: float = 100.0, bins: int = 10) -> list[int]:
    """Counts of values in ``bins`` equal-width bins over [lo, hi] (last bin closed); None/NaN skipped,
    values outside the range clipped into the end bins."""
    x = np.array([v for v in values if v is not None], dtype=float)
    x = np.clip(x[~np.isnan(x)], lo, hi)
    counts, _ = np.histogram(x, bins=bins, range=(lo, hi))
    return [int(c) for c in counts]


# ---------------------------------------------------------------- row values

def as_float(v) -> float | None:
    """A row value as a float; None for missing, empty, non-numeric or NaN."""
    if v is None or isinstance(v, bool):
        return None if v is None else float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def is_scored(row: dict) -> bool:
    """True if the judge produced a usable score for this row."""
    return bool(row.get("parsed")) and as_float(row.get("score")) is not None
