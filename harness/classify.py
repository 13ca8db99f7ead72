"""The one classification path, for any label set: a classification-head adapter, a label-as-text adapter, or the
base zero-shot. The app, the CLI (`python -m harness classify`) and the leaderboard runs all call `classify`.

    from harness.classify import classify
    probs = classify(lm, ["WIN a prize now!"], "smollm2-135m-spam")        # the adapter's own task
    probs = classify(lm, ["WIN a prize now!"], None, get_task("spam"))     # the base zero-shot on spam's prompt
    # -> [{"ham": 0.02, "spam": 0.98}]

Three ways to answer, one output (per-label probabilities that sum to 1):
- head (a SEQ_CLS adapter): the trained `score` head on the last token (head_probs);
- label as text (a causal-LM LoRA trained to write the label word, as PEFT's BLOOMZ twitter_complaints example):
  the label whose tokens (and the closing EOS) get the highest likelihood after the prompt, so it can never
  answer outside the label set; the probabilities are the softmax of the labels' total log-likelihoods;
- zero-shot (no adapter): the base model scored the same way on the task's prompt (a converted LLMs-from-scratch
  classifier, which has its own head, answers with that head: LoadedModel.head_probs).
"""
from __future__ import annotations

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


def classifier_ids(tok, text: str, template: str, max_length: int) -> list[int]:
    """Token ids a classification-head adapter reads: the template around the text, the text truncated so the
    template's closing words (whose last token feeds the head) always survive. Shared by training and inference."""
    prefix, suffix = template.split("{text}")
    pre = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    suf = tok(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    body = tok(text, add_special_tokens=False)["input_ids"][:max(max_length - len(pre) - len(suf), 1)]
    return (pre + body + suf) or [tok.eos_token_id]


def right_pad(rows: list[list[int]], pad: int):
    """(ids, mask) tensors of rows padded on the right with `pad` (mask 0 there): a classifier's head and the
    training loss read each row from its start."""
    import torch
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


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


def head_probs(lm, texts: list[str], adapter: str, batch_size: int = 16) -> list[dict[str, float]]:
    """Per-label probabilities from a classification-head (SEQ_CLS) adapter: the head on each text's last token."""
    import torch

    with lm.lock:
        info = lm.attach(adapter)           # an adapter given as a path is attached under its folder name
    head, tok = lm.heads[info.name], lm.tokenizer
    out: list[dict[str, float]] = []
    with lm.lock, torch.inference_mode(), lm.using(info.name) as model:
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        body = getattr(causal, causal.base_model_prefix)
        for i in range(0, len(texts), batch_size):
            rows = [classifier_ids(tok, t, info.input_template, info.max_length) for t in texts[i:i + batch_size]]
            ids, mask = right_pad(rows, tok.pad_token_id)    # the head reads each row's last real token
            hidden = body(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).last_hidden_state
            last = mask.sum(1).to(lm.device) - 1
            logits = head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
            for row in logits.float().softmax(-1).tolist():
                out.append(dict(zip(info.labels, row)))
    return out


def default_task(adapter_info=None):
    """The classify task: the adapter's own, else the only registered classify task (UserError if several)."""
    from harness.tasks import all_tasks, get_task
    if adapter_info is not None:
        return get_task(adapter_info.task)
    names = [t.name for t in all_tasks() if t.kind == "classify"]
    if len(names) != 1:
        raise UserError(f"name the task to classify zero-shot: one of {', '.join(names) or 'none'}")
    return get_task(names[0])


def classify(lm, texts: list[str], adapter: str | None = None, task=None,
             batch_size: int = 16) -> list[dict[str, float]]:
    """Per-label probabilities for each text. adapter None/""/"base": the base zero-shot, scoring each label
    word (and EOS) after the task's own prompt; a label-as-text adapter: the same scoring on its recipe's prompt;
    a head adapter: its head. task: a harness.tasks.Task (default: the adapter's task, or the only classify task)."""
    if adapter in (None, "", "base"):
        if getattr(lm, "head", None) is not None:     # a converted LLMs-from-scratch classifier: its own head
            return lm.head_probs(texts, batch_size) if texts else []
        task = task or default_task()
        return score_labels(lm, texts, list(task.labels), task.prompt, None, DEFAULT_MAX_LENGTH, batch_size) \
            if texts else []
    with lm.lock:
        info = lm.attach(adapter)
    if info.method not in ("head", "label_text"):
        raise UserError(f"adapter {adapter!r} is a {info.task} generation adapter, not a classifier; pick a "
                        f"classifier (see `python -m harness models`) or classify with the base zero-shot")
    task = task or default_task(info)
    if info.task != task.name:
        raise UserError(f"adapter {adapter!r} was trained for task {info.task!r}, not {task.name!r}; "
                        f"pick a {task.name} adapter (see `python -m harness models`)")
    if not texts:
        return []
    if info.method == "head":
        return head_probs(lm, texts, adapter, batch_size)
    return score_labels(lm, texts, list(info.labels), info.prompt, adapter, info.max_length, batch_size)
