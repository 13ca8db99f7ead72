"""Classification for any label set: a classification-head adapter, a label-as-text adapter, or the base zero-shot.

    from harness.classify import classify
    probs = classify(lm, ["WIN a prize now!"], adapter="smollm2-135m-spam", task=get_task("spam"))
    # -> [{"ham": 0.02, "spam": 0.98}]

Three ways to answer, one output (per-label probabilities that sum to 1):
- head (a SEQ_CLS adapter): the trained `score` head on the last token (harness.generation.classify);
- label as text (a causal-LM LoRA trained to write the label word, as PEFT's BLOOMZ twitter_complaints example):
  the label whose tokens (and the closing EOS) get the highest likelihood after the prompt, so it can never
  answer outside the label set; the probabilities are the softmax of the labels' total log-likelihoods;
- zero-shot (no adapter): the base model scored the same way on the task's prompt.
"""
from __future__ import annotations

from typing import Any

from harness.errors import UserError

DEFAULT_MAX_LENGTH = 256


def truncate_text(tok, text: str, max_length: int) -> str:
    """The message cut to `max_length` tokens (decoded back to text): identical in training and inference."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_length else tok.decode(ids[:max_length])


def label_prompt(lm, prompt: str, text: str, max_length: int = DEFAULT_MAX_LENGTH) -> str:
    """The rendered prompt a label-as-text adapter (or a zero-shot base) answers: the task's prompt around the
    (truncated) message, in the base's prompt format."""
    return lm.render_instruction(prompt.replace("{text}", truncate_text(lm.tokenizer, text, max_length)))


def label_ids(tok, label: str) -> list[int]:
    """The tokens of a label as the answer: the word, then EOS (so a label that is a prefix of another is
    still told apart)."""
    return tok(label, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def left_pad(rows: list[list[int]], pad: int):
    """(ids, mask, position_ids) of rows padded on the LEFT, positions counted from each row's first real token
    (so a padded row computes exactly what it would alone)."""
    import torch
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, width - len(r):], mask[j, width - len(r):] = torch.tensor(r, dtype=torch.long), 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, pos


def tail_logprobs(model, rows: list[list[int]], pad: int, keep: int, device: str = "cpu"):
    """log-softmax of the model's next-token logits at the last `keep` positions of each row (left padded):
    the language-model head runs on those positions only, not on the whole sequence."""
    import torch
    ids, mask, pos = left_pad(rows, pad)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                logits_to_keep=keep)
    return torch.log_softmax(out.logits.float(), -1)


def label_loglik(lm, model, prompts: list[str], labels: list[str], batch_size: int = 16) -> list[list[float]]:
    """Total log-probability of each label's tokens (and EOS) after each rendered prompt: [prompt][label]."""
    import torch

    tok = lm.tokenizer
    lab = [label_ids(tok, x) for x in labels]
    pids = tok(list(prompts), add_special_tokens=False)["input_ids"]
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(labels))]
    out = [[0.0] * len(labels) for _ in prompts]
    keep = max(map(len, lab)) + 1
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        logp = tail_logprobs(model, [pids[i] + lab[j] for i, j in chunk], tok.pad_token_id, keep, lm.device)
        for k, (i, j) in enumerate(chunk):
            m = len(lab[j])     # the label's tokens are the last m; position -1-m predicts the first of them
            pos = torch.arange(keep - 1 - m, keep - 1, device=logp.device)
            out[i][j] = float(logp[k, pos, torch.tensor(lab[j], device=logp.device)].sum())
    return out


def softmax_rows(scores: list[list[float]], labels: list[str]) -> list[dict[str, float]]:
    import math
    res = []
    for row in scores:
        top = max(row)
        ex = [math.exp(s - top) for s in row]
        z = sum(ex)
        res.append({lab: e / z for lab, e in zip(labels, ex)})
    return res


def score_labels(lm, texts: list[str], labels: list[str], prompt: str, adapter: str | None,
                 max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 16) -> list[dict[str, float]]:
    """Per-label probabilities from label likelihoods (label-as-text adapter, or the base when adapter is None)."""
    import torch
    prompts = [label_prompt(lm, prompt, t, max_length) for t in texts]
    with lm.lock, torch.inference_mode(), lm.using(adapter) as model:
        return softmax_rows(label_loglik(lm, model, prompts, labels, batch_size), labels)


def method_of(info: Any) -> str:
    """How an adapter classifies: head | label_text | "" (not a classifier)."""
    return getattr(info, "method", "") if info is not None else ""


def classify(lm, texts: list[str], adapter: str | None, task, batch_size: int = 16) -> list[dict[str, float]]:
    """Per-label probabilities for each text, for the classify `task` (harness.tasks.Task)."""
    if not texts:
        return []
    if adapter in (None, "", "base"):
        return score_labels(lm, texts, list(task.labels), task.prompt, None, DEFAULT_MAX_LENGTH, batch_size)
    with lm.lock:
        info = lm.attach(adapter)
    if info.task != task.name:
        raise UserError(f"adapter {adapter!r} was trained for task {info.task!r}, not {task.name!r}; "
                        f"pick a {task.name} adapter (see `python -m harness models`)")
    if info.method == "head":
        from harness.generation import classify as head_classify
        return head_classify(lm, texts, adapter=adapter, batch_size=batch_size)
    if info.method == "label_text":
        return score_labels(lm, texts, list(info.labels), info.prompt, adapter, info.max_length, batch_size)
    raise UserError(f"adapter {adapter!r} is a {info.task} generation adapter, not a classifier")
