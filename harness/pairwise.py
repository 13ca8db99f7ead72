"""Pairwise judging: the judge sees both answers to an item in both orders and names the better one.

    from harness.pairwise import pairwise_judge, pairwise_runs, pairwise_columns, pairwise_markdown
    with open_judge(JudgeConfig("ollama:llama3")) as judge, Store() as store:
        res = pairwise_judge(judge, items, responses_a, responses_b, store, progress=True)
        res.columns()       # {"pw_win_rate": 0.61, "pw_win_ci_low": ..., "pw_ties": ..., "pw_consistency": ...}
        print(pairwise_markdown(res, "alpaca adapter", "base"))

    python -m harness bench judge             # its benchmark: harness/bench/judge.py

How it counts (MT-bench / FastChat): each item is judged twice, with A = the candidate's answer shown first
("ab") and with the baseline's shown first ("ba"). A verdict per order is "A", "B" or "tie" (A = whichever
answer was shown first). When the two orders name the same answer (or both say tie) that is the item's
verdict; when they differ the item is a tie and is counted as inconsistent. An answer naming neither A nor B
is unparsed: kept in the store with its raw text, counted in pw_unparsed, and its item is left out of the rates.

Win rate = (wins + ties / 2) / items with both orders parsed, with a percentile bootstrap CI over items.
pw_ties: the share of those items that end tied; pw_consistency: the share whose two verdicts agree;
pw_first_wins: the share of parsed single-order verdicts that pick the answer shown first (0.5 = no position
bias when the answers are equally good).

Remote judges (ollama:, openai:) answer JSON {"winner": "A"|"B"|"tie", "reason": ...} through the judge's
worker pool (retries, timeouts and failures as in harness.judge). The in-process `transformers:` judge does
not generate: after the prompt and the answer prefix '{"winner": "' it reads the log-probabilities of the
tokens "A" and "B", for both orders of a batch of items in one batched forward pass. The verdict is "tie" when
|logp(A) - logp(B)| < TIE_MARGIN (0.1 nats: the two are within ~10% of each other in probability).

Every verdict is cached in the store's `pairwise` table, keyed by judge, judge digest, prompt version and file
hash, options, item (id + hash of its texts), order and the hashes of both responses: a warm re-run asks
nothing, and a changed answer re-asks only its item.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.io import iter_jsonl, text_sha
from harness.http import ItemsFailed, run_pool
from harness.judge import (PROMPTS_DIR, TASK_FIELDS, Judge, JudgePrompt, JudgeRequest, joined, progress_bar,
                           render_prompt, try_json)
from harness.store import Store, content_key, pairwise_key

TIE_MARGIN = 0.1          # nats: |logp(A) - logp(B)| below this is a tie for the log-prob judge
ANSWER_PREFIX = '{"winner": "'
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}, "reason": {"type": "string"}},
    "required": ["winner", "reason"],
}
RETRY_MESSAGE = ('Your answer did not say which response is better. Reply with only a JSON object '
                 '{"winner": "A" or "B" or "tie", "reason": "<one sentence>"}.')
ORDERS = ("ab", "ba")
COLUMNS = ("pw_win_rate", "pw_win_ci_low", "pw_win_ci_high", "pw_ties", "pw_consistency", "pw_first_wins",
           "pw_n", "pw_unparsed")


# ---------------------------------------------------------------- prompts

def load_pairwise_prompt(task: str, version: str = "v1") -> JudgePrompt:
    """harness/prompts/pairwise_<task>_<version>.txt; placeholders: the task's fields (not {response}) plus
    {response_a} and {response_b}."""
    if task not in TASK_FIELDS:
        raise UserError(f"no pairwise prompt for task {task!r}: pairwise judging covers {', '.join(TASK_FIELDS)}")
    path = PROMPTS_DIR / f"pairwise_{task}_{version}.txt"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("pairwise_*_*.txt")))
        raise UserError(f"no pairwise prompt {path.name} in {PROMPTS_DIR}. Available: {have}")
    text = path.read_text(encoding="utf-8")
    allowed = [f for f in TASK_FIELDS[task] if f != "response"] + ["response_a", "response_b"]
    for lineno, line in enumerate(text.splitlines(), 1):
        for name in re.findall(r"\{(\w+)\}", line):
            if name not in allowed:
                raise UserError(f"{path}:{lineno}: unknown placeholder {{{name}}}; a pairwise {task} prompt may "
                                f"use {', '.join('{' + f + '}' for f in allowed)}")
    return JudgePrompt(task, version, text.strip(), hashlib.sha256(text.encode()).hexdigest(), path)


# ---------------------------------------------------------------- parsing

_TIE_WORDS = ("tie", "c", "equal", "draw", "same", "both", "neither is better", "equally good")
_BRACKET = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.I)
_ONLY = re.compile(r"^[\s*#>_\"'`]*(?:response\s+|assistant\s+|poem\s+)?(A|B|tie)[\s*_\"'`.!]*$", re.I)
_NAMED = re.compile(r"(?i:\b(?:response|assistant|answer|poem|output)\s+)([AB])\s+(?i:is|was|seems|does)\b"
                    r"|(?i:\b(?:winner|verdict|better\s+(?:one|response|answer|poem)|i\s+(?:prefer|choose|pick))"
                    r"\s*(?:is|:|would\s+be)?\s*[\"'*]*\s*(?:response\s+|assistant\s+|poem\s+)?)([AB])\b")
_TIE_TEXT = re.compile(r"\b(?:it'?s\s+a\s+tie|a\s+tie\b|equally\s+(?:good|bad|helpful|correct)|"
                       r"(?:winner|verdict)\s*(?:is|:)\s*[\"'*]*\s*tie)\b", re.I)


def _norm_verdict(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = re.sub(r"^(?:response|assistant|answer|poem|model)\s+", "", value.strip().strip("\"'*[]().").lower())
    if v in ("a", "b"):
        return v.upper()
    return "tie" if v in _TIE_WORDS else None


def parse_verdict(text: str) -> tuple[str | None, str]:
    """A judge's pairwise answer -> ("A" | "B" | "tie", reason) or (None, why it is unparsed).

    In order: JSON {"winner": ...} (whole answer or inside prose/fences); MT-bench's [[A]] / [[B]] / [[C]];
    a first line that is only A, B or tie; phrases ("Response A is better", "The winner is B", "I prefer A",
    "it's a tie"). An answer that names both A and B as the winner, or neither, is unparsed.
    """
    text = (text or "").strip()
    if not text:
        return None, "empty answer"
    objs = [try_json(text)] + [try_json(m.group(0)) for m in re.finditer(r"\{[^{}]*\}", text, re.S)]
    for obj in objs:
        if isinstance(obj, dict):
            low = {str(k).lower(): v for k, v in obj.items()}
            for key in ("winner", "verdict", "better", "choice", "preferred"):
                if key in low:
                    v = _norm_verdict(low[key])
                    if v:
                        return v, str(low.get("reason") or low.get("explanation") or "")
                    return None, f"the judge's {key} {str(low[key])[:40]!r} names neither A nor B"
    brackets = {_norm_verdict(m.group(1)) for m in _BRACKET.finditer(text)}
    if len(brackets) == 1:
        return brackets.pop(), ""
    first = next((line for line in text.splitlines() if line.strip()), "")
    m = _ONLY.match(first)
    if m:
        return _norm_verdict(m.group(1)), ""
    named = {(a or b).upper() for a, b in _NAMED.findall(text)}
    tie = bool(_TIE_TEXT.search(text))
    if len(named) == 1 and not tie:
        return named.pop(), ""
    if tie and not named:
        return "tie", ""
    if named or tie:
        return None, "the answer names more than one verdict"
    return None, "the answer names neither A nor B"


# ---------------------------------------------------------------- requests and results

@dataclass(frozen=True)
class PairRequest:
    """One order of one item: `first`/`second` are the responses shown as A and B."""
    item_id: str
    task: str
    order: str                 # "ab": the candidate's answer shown first; "ba": the baseline's
    values: dict               # prompt placeholders incl. response_a / response_b
    key: str
    item_sha: str = ""         # hash of the item's texts (not the responses)


@dataclass
class Verdict:
    verdict: str | None        # "A" | "B" | "tie" (A = shown first) | None = unparsed
    raw: str
    reason: str = ""
    attempts: int = 1
    seconds: float = 0.0
    logp_a: float | None = None
    logp_b: float | None = None


@dataclass
class PairwiseItem:
    item_id: str
    ab: str | None             # verdict with the candidate (a) shown first
    ba: str | None             # verdict with the baseline (b) shown first
    winner: str | None         # "a" | "b" | "tie" | None (an order unparsed)
    consistent: bool | None
    len_a: int = 0
    len_b: int = 0
    debiased: str | None = None    # log-prob judges: "a" | "b" | "tie" from both orders' log-odds (see debias)


@dataclass
class PairwiseResult:
    judge: str
    prompt_version: str
    items: list[PairwiseItem]
    asked: int                 # single-order verdicts asked of the judge in this call (0 = all from the store)
    seconds: float
    method: str = "generate"   # "generate" (remote JSON answers) or "logprob" (in process)
    n_boot: int = 2000

    def columns(self) -> dict:
        return pairwise_columns(self)


def _values(task: str, fields: dict, first: str, second: str) -> dict:
    v = JudgeRequest("", task, {**fields, "response": ""}).values()
    v.pop("response", None)
    return {**v, "response_a": first, "response_b": second}


def _item_fields(item: dict) -> tuple[str, str, dict]:
    if "id" not in item or "task" not in item:
        raise UserError(f"pairwise item {str(item)[:80]}: needs 'id' and 'task' (and the task's fields)")
    fields = item.get("fields") or {k: v for k, v in item.items() if k not in ("id", "task")}
    return str(item["id"]), str(item["task"]), {k: v for k, v in fields.items() if k != "response"}


def _aligned(items: list[dict], responses: Mapping | list, what: str) -> list[str]:
    ids = [str(it["id"]) for it in items]
    if isinstance(responses, Mapping):
        missing = [i for i in ids if i not in responses]
        if missing:
            raise UserError(f"{what} has no response for item(s) {', '.join(missing[:5])}"
                            + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return [str(responses[i]) for i in ids]
    if len(responses) != len(items):
        raise UserError(f"{what} has {len(responses)} responses for {len(items)} items")
    return [str(r) for r in responses]


def _options(judge: Judge) -> dict:
    if judge.complete is None:
        return {"method": "logprob", "tie_margin": TIE_MARGIN, "prefix": ANSWER_PREFIX}
    return {"method": "generate", **judge.options}


def pairwise_judge(judge: Judge, items: list[dict], responses_a: Mapping | list, responses_b: Mapping | list,
                   store: Store, progress: bool = True, retry_unparsed: bool = False) -> PairwiseResult:
    """Judge candidate (a) vs baseline (b) on every item in both orders; verdicts cached in `store`.

    items: dicts with id, task and the task's fields (chat: instruction, input, output; poem: prompt, lang,
    form, title), or {"id", "task", "fields": {...}}. responses_a/_b: {item_id: text} or lists aligned with items.
    Items whose verdicts the judge failed to give (an outage, an answer outside its protocol) are not stored:
    http.ItemsFailed is raised after the others are, its `.partial` the result over the items judged.
    """
    t0 = time.perf_counter()
    ra, rb = _aligned(items, responses_a, "the run"), _aligned(items, responses_b, "the baseline")
    options = _options(judge)
    reqs: list[PairRequest] = []
    for it, a, b in zip(items, ra, rb):
        item_id, task, fields = _item_fields(it)
        prompt = load_pairwise_prompt(task, judge.config.prompt_version)
        item_sha = content_key({"task": task, **fields})
        for order, (first, second) in zip(ORDERS, ((a, b), (b, a))):
            key = pairwise_key(judge.name, judge.digest, prompt.version, prompt.sha256, options, task, item_id,
                               item_sha, order, text_sha(first), text_sha(second))
            reqs.append(PairRequest(item_id, task, order, _values(task, fields, first, second), key, item_sha))
    have = store.get("pairwise", [r.key for r in reqs])
    lost: dict[str, str] = {}
    todo = list({r.key: r for r in reqs
                 if r.key not in have or (retry_unparsed and not have[r.key]["parsed"])}.values())

    def save(req: PairRequest, v: Verdict) -> None:
        prompt = load_pairwise_prompt(req.task, judge.config.prompt_version)
        store.put("pairwise", [{
            "key": req.key, "judge": judge.name, "judge_digest": judge.digest, "prompt_version": prompt.version,
            "prompt_sha": prompt.sha256, "options": options, "task": req.task, "item_id": req.item_id,
            "item_sha": req.item_sha,
            "order_shown": req.order, "sha_first": text_sha(req.values["response_a"]),
            "sha_second": text_sha(req.values["response_b"]), "verdict": v.verdict,
            "parsed": v.verdict is not None, "raw": v.raw, "reason": v.reason, "logp_a": v.logp_a,
            "logp_b": v.logp_b, "attempts": v.attempts, "seconds": v.seconds}])

    if todo:
        _check_fits(judge, todo)
        bar = progress_bar(len(todo), "pairwise", progress)
        try:
            if judge.complete is None:
                _logprob_all(judge, todo, save, bar)
            else:       # verdicts the judge failed to give are not stored
                try:
                    run_pool(lambda r: _ask(judge, r), todo, judge.config.workers, lambda i, v: save(todo[i], v),
                             bar=bar, what="pairwise verdicts")
                except ItemsFailed as e:
                    lost = {todo[i].key: why for i, why in e.failed.items()}
        finally:
            bar.close()
        have = store.get("pairwise", [r.key for r in reqs])
    out: list[PairwiseItem | None] = []
    failed: dict[int, str] = {}
    for k, (it, a, b) in enumerate(zip(items, ra, rb)):
        pair = (reqs[2 * k].key, reqs[2 * k + 1].key)
        if not all(key in have for key in pair):
            out.append(None)
            failed[k] = next((lost[key] for key in pair if key in lost), "not judged")
            continue
        rab, rba = have[pair[0]], have[pair[1]]
        winner, consistent = combine(rab["verdict"], rba["verdict"])
        out.append(PairwiseItem(str(it["id"]), rab["verdict"], rba["verdict"], winner, consistent, len(a), len(b),
                                debias(rab, rba)))
    res = PairwiseResult(judge.name, judge.config.prompt_version, [o for o in out if o is not None], len(todo),
                         time.perf_counter() - t0, options["method"])
    if failed:      # the items with both verdicts are in res (ItemsFailed.partial); the others are asked again
        raise ItemsFailed(out, failed, "pairwise items", partial=res)
    return res


def debias(ab: dict, ba: dict, margin: float = TIE_MARGIN) -> str | None:
    """The position-debiased verdict of a log-prob judge: the mean over both orders of the log-odds in favour
    of the candidate, log p(A) - log p(B) when it is shown first and log p(B) - log p(A) when it is shown
    second. A judge that always prefers the first slot adds the same offset to both terms with opposite signs,
    so it cancels; a margin under `margin` nats is a tie. None without both orders' log-probabilities."""
    vals = [ab.get("logp_a"), ab.get("logp_b"), ba.get("logp_a"), ba.get("logp_b")]
    if any(v is None for v in vals):
        return None
    score = ((vals[0] - vals[1]) + (vals[3] - vals[2])) / 2
    return "a" if score > margin else "b" if score < -margin else "tie"


def combine(ab: str | None, ba: str | None) -> tuple[str | None, bool | None]:
    """Two single-order verdicts -> (winner "a" | "b" | "tie" | None, consistent). A flip is a tie."""
    if ab is None or ba is None:
        return None, None
    first = {"A": "a", "B": "b", "tie": "tie"}[ab]
    second = {"A": "b", "B": "a", "tie": "tie"}[ba]
    return (first, True) if first == second else ("tie", False)


def _check_fits(judge: Judge, reqs: list[PairRequest]) -> None:
    budget = judge.config.max_answer_tokens if judge.complete is not None else 1
    for r in reqs[::2]:
        text = render_prompt(load_pairwise_prompt(r.task, judge.config.prompt_version).text, r.values)
        n = judge.count_tokens(text)
        if n + budget > judge.context_length:
            raise UserError(f"the pairwise judge prompt for item {r.item_id!r} is ~{n} tokens; with the answer "
                            f"budget ({budget}) it exceeds the judge's context ({judge.context_length} tokens): "
                            f"raise --judge-num-ctx if the judge supports it, or generate shorter responses")


def _ask(judge: Judge, req: PairRequest) -> Verdict:
    """One order from a remote judge: ask for JSON, parse, re-ask at most parse_retries times."""
    t0 = time.perf_counter()
    text = render_prompt(load_pairwise_prompt(req.task, judge.config.prompt_version).text, req.values)
    messages = [{"role": "user", "content": text}]
    answers: list[str] = []
    why = ""
    for attempt in range(judge.config.parse_retries + 1):
        answer = judge.complete(messages, VERDICT_SCHEMA)    # a server failure is raised: no verdict, not stored
        answers.append(answer)
        verdict, reason = parse_verdict(answer)
        if verdict is not None:
            return Verdict(verdict, joined(answers), reason, attempt + 1, time.perf_counter() - t0)
        why = reason
        messages = messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": RETRY_MESSAGE}]
    return Verdict(None, joined(answers), why, len(answers), time.perf_counter() - t0)


# ---------------------------------------------------------------- the in-process log-prob judge

def _choice_ids(tok) -> tuple[int, int]:
    ids = [tok(x, add_special_tokens=False)["input_ids"] for x in ("A", "B")]
    if any(len(i) != 1 for i in ids):
        raise UserError(f"the judge's tokenizer splits 'A' or 'B' into several tokens ({ids}); the log-prob "
                        f"pairwise judge needs single-token choices: use a remote judge for pairwise mode")
    return ids[0][0], ids[1][0]


def logprob_verdicts(judge: Judge, reqs: list[PairRequest]) -> list[Verdict]:
    """Verdicts for `reqs` (both orders of each item side by side) from ONE batched forward pass: the
    log-probabilities of "A" and "B" as the next token after the prompt and ANSWER_PREFIX. No generation."""
    import torch

    lm = judge.lm
    if lm is None:
        raise UserError(f"judge {judge.name} is not an in-process model: the log-prob pairwise judge needs "
                        f"transformers:<base>")
    t0 = time.perf_counter()
    tok = lm.tokenizer
    id_a, id_b = _choice_ids(tok)
    texts = []
    for r in reqs:
        prompt = render_prompt(load_pairwise_prompt(r.task, judge.config.prompt_version).text, r.values)
        texts.append(lm.render_chat([{"role": "user", "content": prompt}], max_new_tokens=1) + ANSWER_PREFIX)
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    mask = enc["attention_mask"].to(lm.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with lm.lock, torch.inference_mode(), lm.using(judge.adapter or None) as model:
        logits = model(input_ids=enc["input_ids"].to(lm.device), attention_mask=mask, position_ids=pos,
                       use_cache=False, logits_to_keep=1).logits[:, -1, :]
    logp = torch.log_softmax(logits.float(), dim=-1)
    per = (time.perf_counter() - t0) / max(1, len(reqs))
    out = []
    for k in range(len(reqs)):
        la, lb = float(logp[k, id_a]), float(logp[k, id_b])
        verdict = "tie" if abs(la - lb) < TIE_MARGIN else ("A" if la > lb else "B")
        raw = json.dumps({"logp_A": round(la, 4), "logp_B": round(lb, 4)})
        out.append(Verdict(verdict, raw, f"logp(A) {la:.3f}, logp(B) {lb:.3f}", 1, per, la, lb))
    return out


def _logprob_all(judge: Judge, todo: list[PairRequest], save: Callable, bar) -> None:
    bs = max(2, judge.config.batch_size * 2)        # batch_size items = both orders of each in one pass
    for start in range(0, len(todo), bs):
        chunk = todo[start:start + bs]
        for req, v in zip(chunk, logprob_verdicts(judge, chunk)):
            save(req, v)
        bar.update(len(chunk))


# ---------------------------------------------------------------- results

def pairwise_columns(res: PairwiseResult) -> dict:
    """The leaderboard columns (COLUMNS) of a pairwise result; rates in [0, 1], None when nothing parsed."""
    from harness.metrics import bootstrap_mean_ci

    done = [it for it in res.items if it.winner is not None]
    values = [{"a": 1.0, "tie": 0.5, "b": 0.0}[it.winner] for it in done]
    singles = [v for it in res.items for v in (it.ab, it.ba) if v is not None]
    unparsed = sum(v is None for it in res.items for v in (it.ab, it.ba))
    if not done:
        return {"pw_win_rate": None, "pw_win_ci_low": None, "pw_win_ci_high": None, "pw_ties": None,
                "pw_consistency": None, "pw_first_wins": (round(sum(v == "A" for v in singles) / len(singles), 4)
                                                          if singles else None),
                "pw_n": 0, "pw_unparsed": unparsed}
    mean, lo, hi = bootstrap_mean_ci(values, n_boot=res.n_boot, seed=0)
    return {"pw_win_rate": round(mean, 4), "pw_win_ci_low": round(lo, 4), "pw_win_ci_high": round(hi, 4),
            "pw_ties": round(sum(it.winner == "tie" for it in done) / len(done), 4),
            "pw_consistency": round(sum(bool(it.consistent) for it in done) / len(done), 4),
            "pw_first_wins": round(sum(v == "A" for v in singles) / len(singles), 4),
            "pw_n": len(done), "pw_unparsed": unparsed}


def pairwise_markdown(res: PairwiseResult, name_a: str = "the run", name_b: str = "the baseline") -> str:
    """A report section: win rate with its CI, wins/ties/losses, consistency under the swap, position bias."""
    c = pairwise_columns(res)
    done = [it for it in res.items if it.winner is not None]
    wins, ties = sum(it.winner == "a" for it in done), sum(it.winner == "tie" for it in done)
    flips = sum(it.consistent is False for it in done)
    lines = [f"## Pairwise: {name_a} vs {name_b}", "",
             f"Judge `{res.judge}` (pairwise prompt {res.prompt_version}, "
             f"{'log-probabilities of A/B, no generation' if res.method == 'logprob' else 'JSON verdicts'}); "
             f"each item judged in both orders, a verdict that flips with the order counts as a tie.", ""]
    if not done:
        lines.append(f"No item has both orders parsed ({c['pw_unparsed']} unparsed verdicts are kept in the store).")
        return "\n".join(lines) + "\n"
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    lines += ["| metric | value |", "|---|---|",
              f"| win rate of {name_a} (ties = 1/2) | {pct(c['pw_win_rate'])} "
              f"(95% CI {pct(c['pw_win_ci_low'])}–{pct(c['pw_win_ci_high'])}) |",
              f"| wins / ties / losses | {wins} / {ties} / {len(done) - wins - ties} |",
              f"| ties (share of items) | {pct(c['pw_ties'])} |",
              f"| position consistency (same verdict in both orders) | {pct(c['pw_consistency'])} "
              f"({flips} flipped) |",
              f"| first position wins (single-order verdicts) | {pct(c['pw_first_wins'])} |",
              f"| items with both orders parsed | {c['pw_n']} of {len(res.items)} |",
              f"| unparsed verdicts (kept) | {c['pw_unparsed']} |", ""]
    if len(done) < 30:
        lines += [f"With {len(done)} items the bootstrap CI is itself rough; read it as a range, not a verdict.", ""]
    if c["pw_consistency"] < 0.5:
        lines += ["Fewer than half the verdicts survive the swap: this judge mostly follows the order, not the "
                  "answers, and its win rate says little.", ""]
    return "\n".join(lines) + "\n"


def row_fields(res: PairwiseResult, baseline: str) -> dict[str, dict]:
    """{item_id: fields to add to that item's row} after a pairwise run: the baseline's run id and both verdicts.
    A leaderboard rebuilt from rows files gets the pw_* columns back with columns_from_rows()."""
    return {it.item_id: {"pw_baseline": baseline, "pw_judge": res.judge, "pw_prompt_version": res.prompt_version,
                         "pw_method": res.method, "pw_ab": it.ab, "pw_ba": it.ba, "pw_winner": it.winner}
            for it in res.items}


def result_from_rows(rows: list[dict]) -> PairwiseResult | None:
    """The PairwiseResult stored in rows that carry row_fields() (None when none do): for reports and the
    leaderboard, which are rebuilt from rows files alone."""
    rows = [r for r in rows if r.get("pw_baseline")]
    if not rows:
        return None
    items = [PairwiseItem(str(r.get("item_id", r.get("id", ""))), r.get("pw_ab"), r.get("pw_ba"),
                          *combine(r.get("pw_ab"), r.get("pw_ba"))) for r in rows]
    return PairwiseResult(str(rows[0].get("pw_judge", "")), str(rows[0].get("pw_prompt_version", "")), items, 0, 0.0,
                          str(rows[0].get("pw_method", "")))


def columns_from_rows(rows: list[dict]) -> dict:
    """The pw_* leaderboard columns from rows that carry row_fields() (empty dict when none do)."""
    res = result_from_rows(rows)
    return pairwise_columns(res) if res else {}


# ---------------------------------------------------------------- runs as candidate and baseline

def find_run(name: str) -> Path:
    """A rows file: a path, or a run id under results/runs/<task>/ (what --baseline takes)."""
    from harness.paths import results_dir

    p = Path(name)
    if p.suffix == ".jsonl" and p.is_file():
        return p
    runs = results_dir() / "runs"
    found = sorted(runs.glob(f"*/{name}.jsonl")) if re.fullmatch(r"[A-Za-z0-9._-]+", name) else []
    if found:
        return found[0]
    have = sorted(q.stem for q in runs.glob("*/*.jsonl"))
    raise UserError(f"baseline run {name!r} not found: give a rows file or a run id from {runs} "
                    f"({', '.join(have[:8]) or 'none yet: make one with `python -m harness run`'}"
                    f"{', ...' if len(have) > 8 else ''})")


def read_run(path: str | Path) -> list[dict]:
    rows = [row for _, row in iter_jsonl(path, fix="rerun `python -m harness run` to rewrite it")]
    if not rows:
        raise UserError(f"{path} holds no rows; rerun `python -m harness run` for it")
    return rows


def check_baseline(rows: list[dict], baseline: list[dict], name: str = "the run",
                   baseline_name: str = "the baseline") -> None:
    """Refuse a baseline on another eval set, with other item ids, or that is the same model and adapter."""
    sets, bsets = {r.get("eval_set") for r in rows}, {r.get("eval_set") for r in baseline}
    if sets != bsets:
        raise UserError(f"{baseline_name} is on eval set {', '.join(map(str, sorted(bsets, key=str)))} but "
                        f"{name} is on {', '.join(map(str, sorted(sets, key=str)))}: pick a baseline run on the "
                        f"same eval set")
    ids, bids = [str(r["item_id"]) for r in rows], [str(r["item_id"]) for r in baseline]
    if set(ids) != set(bids):
        only, bonly = sorted(set(ids) - set(bids)), sorted(set(bids) - set(ids))
        parts = []
        if only:
            parts.append(f"{len(only)} item(s) only in {name} ({', '.join(only[:5])}{', ...' if len(only) > 5 else ''})")
        if bonly:
            parts.append(f"{len(bonly)} only in {baseline_name} ({', '.join(bonly[:5])}"
                         f"{', ...' if len(bonly) > 5 else ''})")
        raise UserError(f"{baseline_name} and {name} cover different items: {'; '.join(parts)}. Run both on the "
                        f"same eval set with the same --limit")
    ident = lambda r: (r.get("model"), r.get("adapter"), r.get("decoding", ""))  # noqa: E731
    if {ident(r) for r in rows} == {ident(r) for r in baseline} and len({ident(r) for r in rows}) == 1:
        raise UserError(f"{baseline_name} is the same model and adapter as {name}: pick another model or adapter")


def responses_of(rows: list[dict], store: Store, name: str = "the baseline") -> dict[str, str]:
    """{item_id: response text} of a run's rows. Rows of the project's own sets carry the text; rows of dataset
    splits are text-free (response_sha only), so their texts are looked up by hash among the store's
    generations of the same model and adapter (there whenever the run was made with this store)."""
    out = {str(r["item_id"]): r["response"] for r in rows if isinstance(r.get("response"), str)}
    need = {str(r["item_id"]): r.get("response_sha") for r in rows if str(r["item_id"]) not in out}
    if not need:
        return out
    wanted = {sha for sha in need.values() if sha}
    found: dict[str, str] = {}
    if wanted:
        model, adapter = rows[0].get("model", ""), rows[0].get("adapter", "")
        for text in store.responses(model=None if ":" in str(model) else model, adapter=adapter):
            sha = text_sha(text)
            if sha in wanted:
                found[sha] = text
    lost = [i for i, sha in need.items() if sha not in found]
    if lost:
        r = rows[0]
        cmd = (f"python -m harness run --eval-set {r.get('eval_set')} --model {r.get('model')}"
               + (f" --adapter {r['adapter']}" if r.get("adapter") else "")
               + (f" --decoding {r['decoding']}" if r.get("decoding") else "") + " --judge none")
        raise UserError(f"{name}'s rows hold no response texts (a dataset split: rows are text-free) and "
                        f"{len(lost)} of its {len(rows)} responses are not in the store {store.path}: regenerate "
                        f"them with `{cmd}` (greedy, so the same answers), then rerun")
    out.update({i: found[sha] for i, sha in need.items()})
    return out


def pairwise_runs(judge: Judge, rows: list[dict], baseline: list[dict], store: Store, progress: bool = True,
                  retry_unparsed: bool = False, name: str = "the run", baseline_name: str = "the baseline"
                  ) -> PairwiseResult:
    """Pairwise-judge a run's rows against a baseline run's rows (same eval set and items; checked)."""
    from harness.data import load_eval_set

    check_baseline(rows, baseline, name, baseline_name)
    es = load_eval_set(str(rows[0]["eval_set"]))
    by_id = {str(it["id"]): it for it in es.items}
    missing = [str(r["item_id"]) for r in rows if str(r["item_id"]) not in by_id]
    if missing:
        raise UserError(f"{name}: item(s) {', '.join(missing[:5])} are no longer in eval set {es.name}: rerun it")
    items = [{"task": es.task, **by_id[str(r["item_id"])]} for r in rows]
    resp_a = responses_of(rows, store, name)
    resp_b = responses_of(baseline, store, baseline_name)
    return pairwise_judge(judge, items, resp_a, resp_b, store, progress, retry_unparsed)
