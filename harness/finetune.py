"""LoRA fine-tuning from recipe files: spam classification, instruction SFT (chat), poems.

    python -m harness finetune spam                      # harness/recipes/spam.toml -> adapters/smollm2-135m-spam/
    python -m harness finetune path/to/my_recipe.toml --data-dir ../shared/datasets
    python -m harness finetune chat --max-steps 2 --output /tmp/try   # a quick smoke run

A recipe names the base, the task, the dataset and split, the LoRA settings and the optimisation settings.
Training checkpoints the adapter, the optimiser and the RNG state every `save_every` steps and at each epoch end
(under <out>/checkpoint/), so a killed run resumes where it stopped; the same seed gives the same adapter.
The output folder holds adapter_config.json, adapter_model.safetensors, recipe.toml, training.png, history.json
and a README.md card; `python -m harness card NAME` measures the card's metrics (see harness/evaluate.py).
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.io import atomic_write, read_toml, save_figure, toml_line
from harness.judge import DEFAULT_OFFLINE_JUDGE
from harness.models import template_problem
from harness.paths import PROJECT_ROOT, adapters_dir, check_name

RECIPES_DIR = Path(__file__).with_name("recipes")
AUTOCAST = ("", "bf16")
METHODS = ("head", "label_text", "sft")


@dataclass
class Recipe:
    """One adapter's training recipe (a TOML file; every field below may appear in it).

    task is a registered task (harness/tasks). A classify task trains a classification head (method "head",
    peft SEQ_CLS) or a causal-LM LoRA that writes the label word (method "label_text"); a generate task trains
    supervised fine-tuning on its target field (method "sft")."""
    name: str
    task: str
    dataset: str = ""                        # a dataset manifest (eval_sets/<dataset>.toml); "" = the splits are eval set names
    base: str = "smollm2-135m-instruct"
    method: str = ""                         # head | label_text | sft ("" = head for classify, sft for generate)
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    lang: str = ""                           # poems: the language the adapter writes (zh | en)
    card_eval_sets: list[str] = field(default_factory=list)   # default: dataset:test_split + the task's own sets
    max_train_items: int | None = None       # a deterministic subset (seeded) to fit the time budget
    max_eval_items: int | None = 200
    forms: list[str] = field(default_factory=list)   # poems: keep only these forms (empty = all)
    per_form: int | None = None              # poems: at most this many items of each form (seeded), balancing forms
    form_counts: dict[str, int] = field(default_factory=dict)  # poems: at most n of each named form, others
                                            # dropped (overrides per_form), e.g. { "七言绝句" = 600 }
    labels: list[str] = field(default_factory=list)  # classify: default the task's labels
    prompt: str = ""                         # label_text: the prompt around {text} (default the task's prompt)
    input_template: str = "{text}"          # head: what the classifier reads; its last token feeds the head
    balance_classes: bool = False           # classify: weight the loss so every class counts equally
    boundary_tokens: list[str] = field(default_factory=list)  # sft: tokens that end a unit (poems: ，。)
    boundary_weight: float = 0.0            # sft: weight of the boundary loss (see causal_loss); 0 = plain SFT
    autocast: str = ""                      # "bf16": training matmuls in bfloat16 (torch.autocast); weights, LoRA,
                                            # optimizer and validation stay float32. "" = all float32
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    modules_to_save: list[str] = field(default_factory=list)
    epochs: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    batch_size: int = 8
    max_length: int = 128
    seed: int = 123
    save_every: int = 50
    description: str = ""

    def __post_init__(self):
        from harness.tasks import get_task
        check_name(self.name, "adapter name")
        t = get_task(self.task)
        if not self.method:
            self.method = "head" if t.kind == "classify" else "sft"
        if self.method not in METHODS:
            raise UserError(f"recipe {self.name}: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if (t.kind == "classify") != (self.method in ("head", "label_text")):
            raise UserError(f"recipe {self.name}: method {self.method!r} does not fit the {t.kind} task {t.name!r} "
                            f"(classify: head or label_text; generate: sft)")
        if t.kind == "classify":
            self.labels = list(self.labels or t.labels)
            wrong = [x for x in self.labels if x not in t.labels]
            if wrong or len(self.labels) < 2:
                raise UserError(f"recipe {self.name}: labels {self.labels} must be two or more of the task's "
                                f"labels {list(t.labels)}")
            if self.method == "label_text":
                self.prompt = self.prompt or t.prompt
                if "{text}" not in self.prompt:
                    raise UserError(f"recipe {self.name}: prompt must contain {{text}}, got {self.prompt!r}")
        if self.method == "head" and "score" not in self.modules_to_save:
            raise UserError(f"recipe {self.name}: a classification head must be trained: modules_to_save = ['score']")
        for k in ("r", "alpha", "epochs", "batch_size", "max_length", "save_every"):
            if getattr(self, k) < 1:
                raise UserError(f"recipe {self.name}: {k} must be at least 1")
        if self.warmup_steps < 0:
            raise UserError(f"recipe {self.name}: warmup_steps must be 0 or more")
        if not 0 < self.learning_rate < 1:
            raise UserError(f"recipe {self.name}: learning_rate must be in (0, 1)")
        if not 0 <= self.dropout < 1:
            raise UserError(f"recipe {self.name}: dropout must be in [0, 1)")
        if self.boundary_weight < 0 or (self.boundary_weight and (self.method != "sft" or not self.boundary_tokens)):
            raise UserError(f"recipe {self.name}: boundary_weight must be 0, or positive with method sft and "
                            f"boundary_tokens (e.g. [\"，\", \"。\"]), got {self.boundary_weight}")
        problem = template_problem(self.input_template)
        if problem:
            raise UserError(f"recipe {self.name}: {problem}")
        if self.autocast not in AUTOCAST:
            raise UserError(f"recipe {self.name}: autocast must be one of {', '.join(map(repr, AUTOCAST))}, "
                            f"got {self.autocast!r}")
        if self.form_counts:
            bad = {f: n for f, n in self.form_counts.items() if not isinstance(n, int) or isinstance(n, bool) or n < 1}
            if bad:
                raise UserError(f"recipe {self.name}: form_counts values must be positive integers, got {bad}")
            extra = [f for f in self.form_counts if self.forms and f not in self.forms]
            if extra:
                raise UserError(f"recipe {self.name}: form_counts names {extra}, which are not in forms {self.forms}")

    @property
    def task_spec(self):
        from harness.tasks import get_task
        return get_task(self.task)

    def eval_sets(self) -> list[str]:
        """The eval sets its card reports."""
        if self.card_eval_sets:
            return list(self.card_eval_sets)
        test = f"{self.dataset}:{self.test_split}" if self.dataset else self.test_split
        return list(dict.fromkeys([test, *self.task_spec.card_eval_sets]))


def _type_problem(key: str, value, tp) -> str:
    """Why `value` does not fit the annotation `tp` ("" if it fits). Ints are accepted for floats."""
    import typing
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return "" if value is None else _type_problem(key, value, args[0])
    if typing.get_origin(tp) is dict:
        ints = isinstance(value, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
        if not ints:
            return f"{key} must be a table of integers, e.g. {key} = {{ \"七言绝句\" = 600 }}, got {value!r}"
        return ""
    if typing.get_origin(tp) is list:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            return f"{key} must be a list of strings, e.g. {key} = [\"q_proj\", \"v_proj\"], got {value!r}"
        return ""
    if tp is bool:
        return "" if isinstance(value, bool) else f"{key} must be true or false, got {value!r}"
    if tp is int:
        return "" if isinstance(value, int) and not isinstance(value, bool) else \
            f"{key} must be an integer, e.g. {key} = 8, got {value!r}"
    if tp is float:
        return "" if isinstance(value, (int, float)) and not isinstance(value, bool) else \
            f"{key} must be a number, e.g. {key} = 0.0003, got {value!r}"
    if tp is str:
        return "" if isinstance(value, str) else f"{key} must be a string in quotes, got {value!r}"
    return ""


def recipe_path(recipe: str) -> Path:
    p = Path(recipe)
    if p.suffix == ".toml":
        if not p.is_file():
            raise UserError(f"recipe file {p} not found")
        return p
    check_name(recipe, "recipe name")
    p = RECIPES_DIR / f"{recipe}.toml"
    if not p.is_file():
        raise UserError(f"unknown recipe {recipe!r}. Available: {', '.join(list_recipes())}; or pass a .toml file")
    return p


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load_recipe(recipe: str) -> Recipe:
    return read_recipe_file(recipe_path(recipe))


def read_recipe_file(path: Path) -> Recipe:
    """A recipe TOML file -> Recipe (harness.io.read_toml, the one TOML reader); unknown keys, missing keys and
    wrong types each name file:line, the key and the fix."""
    import typing
    raw, text = read_toml(path, "recipe")
    hints = typing.get_type_hints(Recipe)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise UserError(f"{path}:{toml_line(text, unknown[0])}: unknown keys {unknown}; known keys: "
                        f"{', '.join(sorted(hints))}")
    missing = [k for k in ("name", "task") if k not in raw]
    if missing:
        raise UserError(f"{path}:1: missing keys {missing}; add them (name = \"...\", task = \"...\")")
    for key, value in raw.items():
        problem = _type_problem(key, value, hints[key])
        if problem:
            raise UserError(f"{path}:{toml_line(text, key)}: {problem}")
    try:
        return Recipe(**raw)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def recipe_toml(r: Recipe) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {val(x)}" for k, x in v.items()) + " }"
        return repr(v)
    return "".join(f"{k} = {val(v)}\n" for k, v in asdict(r).items() if v is not None and v != "" and v != {})


# ---------------------------------------------------------------- examples

def _subset(items: list[dict], n: int | None, seed: int) -> list[dict]:
    if n is None or len(items) <= n:
        return items
    rng = random.Random(seed)
    return rng.sample(items, n)


def load_examples(r: Recipe, split: str, data_dir: str | None, limit: int | None) -> list[dict]:
    """The items of one split (a dataset split, or an eval set when the recipe names no dataset), checked
    against the task, filtered by form/language, subset deterministically."""
    from harness.data import load_eval_set, load_split
    if r.dataset:
        items, where = load_split(r.dataset, split, data_dir=data_dir), f"{r.dataset}:{split}"
    else:
        es = load_eval_set(split)
        if es.task != r.task:
            raise UserError(f"recipe {r.name}: eval set {split!r} is a {es.task} set, the recipe trains {r.task}")
        items, where = list(es.items), split
    if r.forms:
        items = [it for it in items if it.get("form") in r.forms]
    if r.form_counts:
        items = [it for it in items if it.get("form") in r.form_counts]
    if r.per_form or r.form_counts:
        by_form: dict[str, list[dict]] = {}
        for it in items:
            by_form.setdefault(it.get("form", ""), []).append(it)
        items = [it for f in sorted(by_form)
                 for it in _subset(by_form[f], r.form_counts.get(f, r.per_form), r.seed)]
    if r.task_spec.kind == "classify":
        items = [it for it in items if it.get("label") in r.labels]
    if not items:
        raise UserError(f"recipe {r.name}: no items in {where}" + (f" with forms {r.forms}" if r.forms else ""))
    return _subset(items, limit, r.seed)


def prompt_and_target(renderer, r: Recipe, item: dict) -> tuple[str, str]:
    """The rendered prompt and the text the model must learn to produce (loss only on the latter)."""
    t = r.task_spec
    if r.method == "label_text":
        from harness.classify import label_prompt
        return label_prompt(renderer, r.prompt, item["text"], r.max_length), item["label"]
    ins, inp = t.instruction(item)
    return renderer.render_instruction(ins, inp), item[t.target_field]


def encode_causal(tokenizer, prompt: str, target: str, max_length: int) -> dict | None:
    """input_ids and labels: -100 on the prompt; the target and the closing EOS carry labels.
    None when the prompt leaves no room for the target within max_length (the caller skips and counts it)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(p) >= max_length - 1:
        return None
    t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + t)[:max_length]
    labels = ([-100] * len(p) + t)[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_head(tokenizer, item: dict, labels: list[str], max_length: int, template: str = "{text}") -> dict:
    from harness.classify import classifier_ids
    return {"input_ids": classifier_ids(tokenizer, item["text"], template, max_length),
            "label": labels.index(item["label"])}


def encode_label_text(tokenizer, renderer, r: Recipe, item: dict) -> dict:
    """A label-as-text example: the prompt around the (truncated) message, then the label word and EOS."""
    from harness.classify import label_ids, label_prompt
    p = tokenizer(label_prompt(renderer, r.prompt, item["text"], r.max_length), add_special_tokens=False)["input_ids"]
    t = label_ids(tokenizer, item["label"])
    return {"input_ids": p + t, "labels": [-100] * len(p) + t, "class": r.labels.index(item["label"])}


def class_weights(labels: list[int], n_classes: int) -> list[float]:
    """Loss weights that make every class count as much as the others: inverse frequency, mean 1 over examples."""
    counts = [max(labels.count(c), 1) for c in range(n_classes)]
    return [len(labels) / (n_classes * n) for n in counts]


def collate(batch: list[dict], pad_id: int):
    """Right padding (training): pad ids, mask 0, labels -100; `class` (label-as-text) kept as `classes`."""
    import torch

    from harness.classify import right_pad
    ids, mask = right_pad([b["input_ids"] for b in batch], pad_id)
    out = {"input_ids": ids, "attention_mask": mask}
    if "labels" in batch[0]:
        out["labels"] = right_pad([b["labels"] for b in batch], -100)[0]
    if "label" in batch[0]:
        out["labels"] = torch.tensor([b["label"] for b in batch])
    if "class" in batch[0]:
        out["classes"] = torch.tensor([b["class"] for b in batch])
    return out


def length_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar length (less padding on CPU): shuffle, sort within windows of 16
    batches, cut, shuffle the batches. Deterministic for a seed."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# ---------------------------------------------------------------- model

def build_model(r: Recipe):
    """(peft model, tokenizer, renderer) for the recipe's base, LoRA attached, base frozen."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from harness.models import LoadedModel, load_tokenizer, resolve_base, weights_dir

    spec = resolve_base(r.base)
    where = weights_dir(spec)
    tok = load_tokenizer(spec, where)
    torch.manual_seed(r.seed)
    if r.method == "head":
        model = AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=len(r.labels), dtype=torch.float32, use_safetensors=True,
            id2label=dict(enumerate(r.labels)), label2id={l: i for i, l in enumerate(r.labels)})
        model.config.pad_token_id = tok.pad_token_id
        task_type = "SEQ_CLS"
    else:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, use_safetensors=True)
        task_type = "CAUSAL_LM"
    cfg = LoraConfig(task_type=task_type, r=r.r, lora_alpha=r.alpha, lora_dropout=r.dropout,
                     target_modules=list(r.target_modules), modules_to_save=list(r.modules_to_save) or None)
    model.name_or_path = spec.upstream or spec.location or spec.name   # what plain peft users load it onto
    model = get_peft_model(model, cfg)
    renderer = LoadedModel(spec.name, spec, None, tok, "cpu")
    return model, tok, renderer


def label_text_loss(model, batch: dict, pad_id: int, weights=None):
    """Label-as-text loss on the label tokens only, with the LM head run on the last positions only (left
    padding); per-example `weights` (class balance) or a plain mean over examples."""
    import torch

    from harness.classify import left_pad
    rows = [[int(t) for t, m in zip(ids, mask) if m] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    labs = [[int(x) for x in lab if x != -100] for lab in batch["labels"]]
    keep = max(map(len, labs)) + 1
    ids, mask, pos = left_pad(rows, pad_id)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits.float()
    logp = torch.log_softmax(logits, -1)
    per = []
    for k, lab in enumerate(labs):
        m = len(lab)
        p_ = torch.arange(keep - 1 - m, keep - 1)
        per.append(-logp[k, p_, torch.tensor(lab)].mean())
    per_t = torch.stack(per)
    if weights is None:
        return per_t.mean()
    return (per_t * weights).sum() / weights.sum()


def causal_loss(model, batch: dict, boundary_ids: list[int] | None = None, boundary_weight: float = 0.0):
    """(mean loss over the target tokens, their count) with the LM head run only from the first target position
    on: the prompts carry no loss, and with a large vocabulary (Gemma: 262,144) the head and its softmax are
    most of a step's work. Equal to the model's own loss on the same labels.

    boundary_weight > 0 adds, at every target position, the binary cross-entropy of "a boundary token comes
    next" (the summed probability of `boundary_ids`, e.g. the poem's ，。) against the truth. A form's line length
    is decided there: a model unsure of a line's content still puts, say, 20% on "，" after 5 characters of a
    七言 line, which greedy decoding takes whenever no single character is likelier. Plain cross-entropy pushes
    on that 20% no harder than on any other wrong token; this term trains the decision itself."""
    import torch
    labels = batch["labels"]
    has = (labels != -100).any(0).nonzero()
    start = max(int(has[0]) if len(has) else labels.shape[1] - 1, 1)      # first position with a label
    keep = labels.shape[1] - start + 1                                      # logits at start-1 .. L-1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    target = labels[:, start:]
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    n = int((target != -100).sum())
    if not (boundary_weight and boundary_ids):
        return torch.nn.functional.cross_entropy(flat, target.reshape(-1), ignore_index=-100), n
    mask = target.reshape(-1) != -100
    y_tok = target.reshape(-1)[mask]
    lp = torch.log_softmax(flat[mask], -1)                                  # one softmax for both terms
    loss = -lp.gather(1, y_tok[:, None]).mean()
    ids = torch.tensor(boundary_ids)
    lb = torch.logsumexp(lp[:, ids], -1).clamp(max=-1e-6)                  # log P(a boundary token next)
    y = torch.isin(y_tok, ids).float()
    bce = -(y * lb + (1 - y) * torch.log1p(-lb.exp())).mean()
    return loss + boundary_weight * bce, n


def boundary_token_ids(tokenizer, r: Recipe) -> list[int]:
    """The recipe's boundary tokens as ids; each must be exactly one token of this tokenizer."""
    out = []
    for t in r.boundary_tokens:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise UserError(f"recipe {r.name}: boundary token {t!r} is {len(ids)} tokens for {r.base}'s tokenizer "
                            f"({ids}); list only single-token strings in boundary_tokens")
        out += ids
    return out


def _evaluate(model, batches, r: Recipe, renderer=None, items: list[dict] | None = None) -> dict:
    """Validation loss; for classifiers also accuracy (head: argmax; label-as-text: the likeliest label)."""
    import torch
    model.eval()
    loss_sum, n_tok, correct, n = 0.0, 0, 0, 0
    with torch.inference_mode():
        for b in batches:
            b = {k: v for k, v in b.items() if k != "classes"}
            if r.method == "label_text":
                k = len(b["input_ids"])
                loss_sum += float(label_text_loss(model, b, renderer.tokenizer.pad_token_id)) * k
                n_tok += k
                continue
            if r.method == "head":
                out = model(**b)
                k = b["labels"].numel()
                loss_sum += float(out.loss) * k
                n_tok += k
                correct += int((out.logits.argmax(-1) == b["labels"]).sum())
                n += k
            else:
                loss, k = causal_loss(model, b)
                loss_sum += float(loss) * k
                n_tok += k
        if r.method == "label_text" and items:
            from harness.classify import label_loglik, label_prompt
            prompts = [label_prompt(renderer, r.prompt, it["text"], r.max_length) for it in items]
            scores = label_loglik(renderer, model, prompts, r.labels, batch_size=r.batch_size * 2)
            correct = sum(r.labels[max(range(len(s)), key=s.__getitem__)] == it["label"] for s, it in zip(scores, items))
            n = len(items)
    model.train()
    res = {"loss": loss_sum / max(n_tok, 1)}
    if r.method in ("head", "label_text"):
        res["accuracy"] = correct / max(n, 1)
    return res


def _save_checkpoint(model, optimizer, scheduler, state: dict, ckpt: Path) -> None:
    import torch
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, save_embedding_layers=False)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    old = ckpt.with_name(ckpt.name + ".old")     # never a moment without a complete checkpoint on disk
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _to_float16(path: Path) -> None:
    """Store the finished adapter in float16: half the size, and peft loads it into a float32 base as is."""
    import torch
    from safetensors.torch import load_file, save_file
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _load_checkpoint(model, optimizer, scheduler, ckpt: Path) -> dict:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    extra = torch.load(ckpt / "optimizer.pt", weights_only=True)   # tensors and numbers only, no pickled code
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    return json.loads((ckpt / "state.json").read_text())


def plot_history(history: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_acc = any("accuracy" in e for e in history["epochs"])
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 6, 4), squeeze=False)
    ax = axes[0][0]
    steps = history["steps"]
    if steps:
        xs, ys = [s["step"] for s in steps], [s["loss"] for s in steps]
        ax.plot(xs, ys, alpha=0.3, label="train (step)")
        k = max(1, min(20, len(ys) // 10))
        smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
        ax.plot(xs, smooth, label=f"train (mean of {k} steps)")
    ep = history["epochs"]
    ax.plot([e["step"] for e in ep], [e["train_loss"] for e in ep], "o-", label="train (epoch)")
    ax.plot([e["step"] for e in ep], [e["val_loss"] for e in ep], "s-", label="validation")
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title(title), ax.legend()
    if has_acc:
        ax = axes[0][1]
        ax.plot([e["epoch"] for e in ep], [e.get("train_accuracy") for e in ep], "o-", label="train")
        ax.plot([e["epoch"] for e in ep], [e.get("accuracy") for e in ep], "s-", label="validation")
        ax.set_xlabel("epoch"), ax.set_ylabel("accuracy"), ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _save_step(model, r: Recipe, out: Path, step: int) -> None:
    """--keep-steps: the adapter at this step as out/steps/step-NNNNNN/ (peft files in float16 + recipe.toml), for
    `python -m harness sweep`; written whole, then moved in place."""
    final = out / "steps" / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, save_embedding_layers=False)
    _to_float16(tmp / "adapter_model.safetensors")
    (tmp / "recipe.toml").write_text(recipe_toml(r), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def finetune(r: Recipe, out: Path | None = None, data_dir: str | None = None, max_steps: int | None = None,
             threads: int | None = None, keep_steps: bool = False) -> Path:
    """Train the recipe's adapter into `out` (default adapters/<name>/); returns the folder. keep_steps: also keep
    the adapter of every checkpoint (every save_every steps and each epoch end) under out/steps/."""
    import torch
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    if threads:
        torch.set_num_threads(threads)
    out = Path(out) if out else adapters_dir() / r.name
    t_start = time.perf_counter()
    model, tok, renderer = build_model(r)
    train_items = load_examples(r, r.train_split, data_dir, r.max_train_items)
    eval_items = load_examples(r, r.eval_split, data_dir, r.max_eval_items)
    if r.method == "head":
        enc = lambda it: encode_head(tok, it, r.labels, r.max_length, r.input_template)  # noqa: E731
    elif r.method == "label_text":
        enc = lambda it: encode_label_text(tok, renderer, r, it)  # noqa: E731
    else:
        enc = lambda it: encode_causal(tok, *prompt_and_target(renderer, r, it), r.max_length)  # noqa: E731
    train = [e for e in map(enc, train_items) if e is not None]
    evals = [e for e in map(enc, eval_items) if e is not None]
    skipped = len(train_items) + len(eval_items) - len(train) - len(evals)
    if skipped:
        print(f"skipped {skipped} items whose prompt alone fills max_length={r.max_length}")
    if not train or not evals:
        raise UserError(f"recipe {r.name}: no training or validation item fits max_length={r.max_length}")
    eval_batches = [collate(evals[i:i + r.batch_size], tok.pad_token_id) for i in range(0, len(evals), r.batch_size)]

    steps_per_epoch = len(length_batches([len(t["input_ids"]) for t in train], r.batch_size, 0))
    full = steps_per_epoch * r.epochs      # the schedule always spans the whole run: --max-steps only pauses it
    total = full if max_steps is None else min(max_steps, full)
    weight = None
    boundary = boundary_token_ids(tok, r) if r.boundary_weight else None
    if r.method != "sft" and r.balance_classes:
        weight = torch.tensor(class_weights([t.get("label", t.get("class")) for t in train], len(r.labels)))
        print("class weights: " + ", ".join(f"{l} {w:.3f}" for l, w in zip(r.labels, weight.tolist())))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=r.learning_rate, weight_decay=r.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(r.warmup_steps, full // 10 + 1), full)

    ckpt = out / "checkpoint"
    if not (ckpt / "state.json").is_file() and (out / "checkpoint.old" / "state.json").is_file():
        ckpt = out / "checkpoint.old"           # killed while replacing the checkpoint
    state = {"step": 0, "seconds": 0.0, "history": {"steps": [], "epochs": []}, "recipe": recipe_toml(r)}
    if (ckpt / "state.json").is_file():
        saved = json.loads((ckpt / "state.json").read_text())
        if saved.get("recipe", state["recipe"]) != state["recipe"]:
            print(f"the checkpoint in {ckpt} was made with another recipe: starting {r.name} from scratch")
        else:
            state = _load_checkpoint(model, optimizer, scheduler, ckpt)
            print(f"resuming {r.name} from step {state['step']} ({ckpt})")
    ckpt = out / "checkpoint"
    history = state["history"]
    model.train()
    step = state["step"]
    bar = tqdm(total=total, initial=step, desc=f"finetune {r.name}", unit="step")
    seconds_before, t0 = state["seconds"], time.perf_counter()
    for epoch in range(step // steps_per_epoch, r.epochs):
        batches = length_batches([len(t["input_ids"]) for t in train], r.batch_size, r.seed * 1000 + epoch)
        run_loss, run_n, correct, seen = 0.0, 0, 0, 0
        for b in range(step - epoch * steps_per_epoch, steps_per_epoch):
            if step >= total:
                break
            batch = collate([train[i] for i in batches[b]], tok.pad_token_id)
            classes = batch.pop("classes", None)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=r.autocast == "bf16"):
                if r.method == "label_text":
                    outp = None
                    batch_loss = label_text_loss(model, batch, tok.pad_token_id,
                                                 None if weight is None else weight[classes])
                elif r.method == "sft":
                    outp = None
                    batch_loss = causal_loss(model, batch, boundary, r.boundary_weight)[0]
                else:
                    outp = model(**batch)
                    batch_loss = outp.loss if weight is None else \
                        torch.nn.functional.cross_entropy(outp.logits.float(), batch["labels"], weight=weight)
            batch_loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step(), scheduler.step(), optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = float(batch_loss.detach())
            run_loss, run_n = run_loss + loss, run_n + 1
            if r.method == "head":
                correct += int((outp.logits.argmax(-1) == batch["labels"]).sum())
                seen += batch["labels"].numel()
            history["steps"].append({"step": step, "loss": loss})
            bar.set_postfix(loss=f"{run_loss / run_n:.4f}")
            bar.update(1)
            if step % r.save_every == 0:
                state.update(step=step, seconds=seconds_before + time.perf_counter() - t0)
                _save_checkpoint(model, optimizer, scheduler, state, ckpt)
                if keep_steps:
                    _save_step(model, r, out, step)
        val = _evaluate(model, eval_batches, r, renderer, eval_items)
        row = {"epoch": epoch + 1, "step": step, "train_loss": run_loss / max(run_n, 1), "val_loss": val["loss"]}
        if r.method == "head":
            row.update(train_accuracy=correct / max(seen, 1), accuracy=val["accuracy"])
        elif r.method == "label_text":
            row.update(accuracy=val["accuracy"])
        history["epochs"].append(row)
        tqdm.write(json.dumps(row))
        state.update(step=step, seconds=seconds_before + time.perf_counter() - t0)
        _save_checkpoint(model, optimizer, scheduler, state, ckpt)
        if keep_steps:
            _save_step(model, r, out, step)
        if step >= total:
            break
    bar.close()
    train_seconds = seconds_before + time.perf_counter() - t0
    stage = out / "staging"                     # the app lists adapters/: only complete files appear there
    shutil.rmtree(stage, ignore_errors=True)
    model.save_pretrained(stage, save_embedding_layers=False)
    _to_float16(stage / "adapter_model.safetensors")
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        os.replace(stage / f, out / f)
    shutil.rmtree(stage, ignore_errors=True)
    atomic_write(out / "recipe.toml", recipe_toml(r))
    meta = {"train_items": len(train), "eval_items": len(evals), "steps": step, "train_seconds": round(train_seconds, 1),
            "wall_seconds_total": round(time.perf_counter() - t_start, 1), "history": history,
            "data": _data_meta(r.dataset), "torch_threads": torch.get_num_threads()}
    atomic_write(out / "history.json", json.dumps(meta, indent=1, ensure_ascii=False))
    plot_history(history, out / "training.png", r.name)
    write_card(out, r, meta)
    if step >= full:
        shutil.rmtree(ckpt, ignore_errors=True)   # finished; a --max-steps stop keeps it to resume from
    return out


def _data_meta(dataset: str) -> dict:
    from harness.paths import cache_dir
    p = cache_dir() / "data" / dataset / "meta.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


GEMMA_NOTICE = ("Gemma is provided under and subject to the Gemma Terms of Use found at "
                "ai.google.dev/gemma/terms")


def _base_license(base: str) -> tuple[str, str]:
    """(the card's license field, a notice paragraph) from the base's registry entry: an adapter of a Gemma base
    is under the Gemma Terms of Use; the project's own code stays Apache-2.0."""
    from harness.models import read_registry
    spec = read_registry().get(base)
    lic = (spec.license if spec else "") or "apache-2.0"
    if "gemma" in lic.lower():
        return ("other\nlicense_name: gemma-terms-of-use\nlicense_link: https://ai.google.dev/gemma/terms",
                f"\n**License.** This adapter was trained on {base}, a Gemma model: {GEMMA_NOTICE}. "
                "ftbench's own code is Apache-2.0.\n")
    return lic.lower() if lic in ("Apache-2.0", "MIT") else lic, ""


def write_card(out: Path, r: Recipe, meta: dict, metrics_md: str | None = None) -> Path:
    """The adapter's README.md: base, data, split, hyperparameters, training time, measured metrics."""
    card = out / "README.md"   # replaces the template peft's save_pretrained writes there
    data = meta.get("data", {})
    sources = data.get("sources") or data.get("files") or {}
    src_lines = "\n".join(f"  - `{k}`: sha256 `{v.get('sha256', v) if isinstance(v, dict) else v}`"
                          for k, v in sources.items()) if isinstance(sources, dict) else f"  - {sources}"
    hp = {k: v for k, v in asdict(r).items() if k not in ("name", "description")}
    epochs = "\n".join(f"| {e['epoch']} | {e['step']} | {e['train_loss']:.4f} | {e['val_loss']:.4f} |"
                       + (f" {e.get('train_accuracy', 0):.4f} | {e.get('accuracy', 0):.4f} |" if 'accuracy' in e else "")
                       for e in meta["history"]["epochs"])
    has_acc = any("accuracy" in e for e in meta["history"]["epochs"])
    acc_head = " train acc | val acc |" if has_acc else ""
    acc_sep = "---|---|" if has_acc else ""
    license_, notice = _base_license(r.base)
    how = {"head": "`SEQ_CLS`, a classification head on the last token",
           "label_text": "`CAUSAL_LM`, label as text: it writes the label word; predictions are the likeliest label",
           "sft": "`CAUSAL_LM`, supervised fine-tuning"}[r.method]
    recipe_file = next((f"harness/recipes/{p.name}" for p in sorted(RECIPES_DIR.glob("*.toml"))
                        if f'name = "{r.name}"' in p.read_text(encoding="utf-8")), f"adapters/{r.name}/recipe.toml")
    text = f"""---
base_model: {r.base}
library_name: peft
tags: [lora, {r.task}, {r.method}, ftbench]
license: {license_}
---
# {r.name}

{r.description or f'LoRA adapter for {r.task} on {r.base}.'}
{notice}
- **Base**: `{r.base}` (see `harness/registry.toml`); task `{r.task}` (`harness/tasks/`); peft LoRA
  ({how}), r={r.r}, alpha={r.alpha}, dropout={r.dropout},
  target modules {', '.join(r.target_modules)}{'; trained head: ' + ', '.join(r.modules_to_save) if r.modules_to_save else ''}.
- **Data**: `{r.dataset}` split `{r.train_split}` ({meta['train_items']} items{', a seeded subset' if r.max_train_items else ''}),
  validation `{r.eval_split}` ({meta['eval_items']} items). Split recipe: `eval_sets/{r.dataset}.toml`.
{src_lines}
- **Training**: {meta['steps']} steps, {meta['train_seconds']:.0f} s of training on {meta.get('torch_threads', '?')} CPU threads
  (2-core CPU, no GPU), seed {r.seed}.
- **Reproduce**: `python -m harness data prepare {r.dataset} --data-dir DIR` then
  `python -m harness finetune {recipe_file}`.

Hyperparameters (the full recipe is `recipe.toml` beside this card):

```
{json.dumps(hp, ensure_ascii=False)}
```

| epoch | step | train loss | val loss |{acc_head}
|---|---|---|---|{acc_sep}
{epochs}

![training curves](training.png)

## Metrics
{metrics_md.strip() if metrics_md else 'Not measured yet: run `python -m harness card ' + r.name + '`.'}
"""
    atomic_write(card, text)
    return card


def finetune_cmd(recipe: str, /, data_dir: str | None = None, output: str | None = None, max_steps: int | None = None,
                 threads: int | None = None, keep_steps: bool = False) -> int:
    """Train a LoRA adapter from a recipe.

    recipe: a recipe name from harness/recipes/ (spam, chat, poem_zh, poem_en) or a .toml file
    data_dir: a local copy of the datasets (e.g. ../shared/datasets) instead of downloading
    output: output folder (default adapters/<recipe name>/)
    max_steps: stop after this many optimiser steps (smoke runs)
    threads: torch CPU threads (default: torch's choice)
    keep_steps: keep the adapter of every checkpoint under OUTPUT/steps/step-N/ (for `python -m harness sweep OUTPUT`)
    """
    r = load_recipe(recipe)
    folder = finetune(r, Path(output) if output else None, data_dir=data_dir, max_steps=max_steps, threads=threads,
                      keep_steps=keep_steps)
    rel = folder.relative_to(PROJECT_ROOT) if folder.is_relative_to(PROJECT_ROOT) else folder
    print(f"adapter written to {rel}")
    return 0


# ---------------------------------------------------------------- card metrics

def _fmt(v, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.1f}" if pct else (f"{v:.3f}" if isinstance(v, float) else str(v))


_PERCENT = ("accuracy", "macro_f1", "precision", "recall", "f1")


def _card_columns(task) -> list[str]:
    """The card table's metric columns: the task's own (without CI bounds), then the judge's for generate tasks."""
    cols = [c for c in task.columns() if not c.endswith(("_ci_low", "_ci_high")) and c not in ("tp", "fp", "tn", "fn")]
    return cols + (["score_mean", "avg_response_tokens"] if task.kind == "generate" else [])


def _metrics_table(task, rows: list[tuple[str, str, dict]]) -> str:
    """Markdown table of leaderboard rows: (eval set, checkpoint, summary), columns from the task."""
    cols = _card_columns(task)

    def cell(s: dict, c: str) -> str:
        pct = c in _PERCENT or c.endswith("_rate")
        v = _fmt(s.get(c), pct)
        if f"{c}_ci_low" in s or c == "score_mean":
            lo, hi = (s.get("ci_low"), s.get("ci_high")) if c == "score_mean" else (s.get(f"{c}_ci_low"), s.get(f"{c}_ci_high"))
            if v != "–" and _fmt(lo) != "–":
                v += f" ({_fmt(lo, pct)}–{_fmt(hi, pct)})"
        return v

    names = [c.replace("_", " ") + (" %" if c in _PERCENT or c.endswith("_rate") else "") +
             (" (95% CI)" if c == "score_mean" or f"{c}_ci_low" in task.columns() else "") for c in cols]
    head = "| eval set | checkpoint | n | " + " | ".join(names) + " |\n|" + "---|" * (3 + len(cols)) + "\n"
    return head + "".join(f"| {es} | {who} | {s['n']} | " + " | ".join(cell(s, c) for c in cols) + " |\n"
                          for es, who, s in rows)


def reference_loss(lm, adapter: str | None, r: Recipe, items: list[dict], batch_size: int = 8) -> tuple[float, float]:
    """(nats per target token, bits per target character) of the reference answers/poems under the model: how
    much more likely the fine-tuned model finds what people actually wrote. Same encoding as training (loss on
    the target only). Bits per character compare bases with different tokenizers; per-token figures do not."""
    import torch
    encs, chars = [], 0
    for it in items:
        prompt, target = prompt_and_target(lm, r, it)
        e = encode_causal(lm.tokenizer, prompt, target, r.max_length)
        if e:
            encs.append(e)
            chars += len(target)
    total, n_tok = 0.0, 0
    with lm.lock, torch.inference_mode(), lm.using(adapter) as model:
        for i in range(0, len(encs), batch_size):
            b = collate(encs[i:i + batch_size], lm.tokenizer.pad_token_id)
            loss, k = causal_loss(model, b)
            total += float(loss) * k
            n_tok += k
    return total / max(n_tok, 1), total / math.log(2) / max(chars, 1)


def measure(name: str, judge: str | None = None, limit: int | None = None, batch_size: int = 16,
            max_new_tokens: int = 256, eval_sets: list[str] | None = None, engine: str = "",
            base_engine: str = "", engine_config: Any = None) -> str:
    """Evaluate an adapter and its base on the card's eval sets with the evaluate pipeline (cached, so a
    rerun is cheap); write the Metrics section of adapters/<name>/README.md; return it.

    engine / base_engine: generate the adapter's (the base's) answers through a server instead of in process:
    an `openai:<model>@<url>` or `ollama:<model>` spec naming the model id the server serves it as (e.g. the
    adapter exported with `python -m harness export NAME --to gguf` and served by llama.cpp). Free decoding
    only; classification adapters are refused (no server API returns a head's probabilities)."""
    from harness.engines import parse_engine_spec
    from harness.evaluate import load_items, run
    from harness.leaderboard import summarize
    from harness.models import find_adapter, load_model

    info = find_adapter(name)
    r = read_recipe_file(info.path / "recipe.toml")
    task = r.task_spec
    for flag, spec in (("--engine", engine), ("--base-engine", base_engine)):
        if spec and parse_engine_spec(spec)[0] == "transformers":
            raise UserError(f"{flag} {spec!r} is not a server spec: use openai:<model>@<url> or ollama:<model> "
                            f"(or leave it out to measure in process)")
        if spec and task.kind == "classify":
            raise UserError(f"{name} is a {task.name} classifier ({info.method}): no server API returns its "
                            f"per-label probabilities, so it is measured in process only: drop {flag}")
    lm = None

    def model():
        nonlocal lm
        if lm is None:
            lm = load_model(info.base, adapters=[name])
        return lm

    sets = eval_sets or r.eval_sets()
    judged = judge if task.kind == "generate" else None
    # poems in a classical form are measured as the model writes them (free) and under the form constraint;
    # a server decodes freely only
    decodings = task.decodings if r.lang in ("", "zh") and not (engine or base_engine) else ("free",)
    table, commands = [], []
    for es in sets:
        for decoding in decodings:
            flags = f" --judge {judged}" if judged else (" --judge none" if task.kind == "generate" else "")
            flags += f" --decoding {decoding}" if decoding != "free" else ""
            lim = f" --limit {limit}" if limit else ""
            for adapter, spec in ((name, engine), (None, base_engine)):
                if spec:
                    res = run(spec, None, es, judge=judged, limit=limit, batch_size=batch_size,
                              max_new_tokens=max_new_tokens, engine_config=engine_config)
                    commands.append(f"python -m harness run --model {spec} --eval-set {es}{flags}{lim}")
                else:
                    res = run(info.base, adapter, es, judge=judged, limit=limit, batch_size=batch_size,
                              max_new_tokens=max_new_tokens, lm=model(), decoding=decoding)
                    commands.append(f"python -m harness run --model {info.base}"
                                    f"{' --adapter ' + adapter if adapter else ''} --eval-set {es}{flags}{lim}")
                rows = res.rows
                if r.lang:          # a mixed-language set (poems_own): the card reports the adapter's language
                    rows = [x for x in rows if x.get("lang") in (None, r.lang)]
                who = f"**{name}**" if adapter else f"{info.base} (base{', zero-shot' if task.kind == 'classify' else ''})"
                if spec:
                    who += f", served by `{spec}`"
                if decoding != "free":
                    who += f", {decoding}-constrained decoding"
                table.append((es, who, summarize(rows)))
    md = (f"Measured with `python -m harness card {name}` (greedy decoding, max {max_new_tokens} new tokens"
          f"{', judge ' + judged if judged else ''}), which runs:\n\n```\n" + "\n".join(commands) + "\n```\n\n"
          + _metrics_table(task, table))
    if task.kind == "generate" and task.target_field and r.lang:
        references = [it for it in load_items(sets[0], limit)[1] if it.get(task.target_field)]
        if references:
            (tuned, tuned_bpc), (base, base_bpc) = (reference_loss(model(), name, r, references),
                                                    reference_loss(model(), None, r, references))
            md += (f"\nLoss on the {len(references)} reference texts of {sets[0]} (loss on the target only, as in "
                   f"training): **{tuned_bpc:.2f} bits per character** for {name} vs {base_bpc:.2f} for the base "
                   f"({tuned:.3f} vs {base:.3f} nats per token; lower = the model finds what people wrote more "
                   f"likely; compare bases by bits per character, never per token).\n")
    if judged and judged.startswith("transformers:"):
        md += ("\nThe judge here is the 135M embedded model itself (the offline fallback): its scores are noisy; "
               "use `--judge ollama:llama3` where Ollama runs for the reference judge.\n")
    hist = json.loads((info.path / "history.json").read_text(encoding="utf-8")) if (info.path / "history.json").is_file() else None
    if hist:
        write_card(info.path, r, hist, metrics_md=md)
    return md


def card_cmd(name: str, /, judge: str = DEFAULT_OFFLINE_JUDGE, limit: int | None = None,
             batch_size: int = 16, max_new_tokens: int = 256, eval_set: list[str] | None = None,
             engine: str = "", base_engine: str = "", workers: int = 4, timeout: float = 60.0) -> int:
    """Measure an adapter against its base on its task's eval sets and write the metrics into its card.

    name: an adapter in adapters/
    judge: judge for chat/poem tasks (ollama:llama3 with Ollama running; `none` for no judge)
    limit: only the first N items of each eval set
    eval_set: override the eval sets (default: the task's test split and the project's own set)
    engine: generate the adapter's answers through a server: openai:<model>@<url> or ollama:<model>, the model id it serves the adapter as
    base_engine: the same for the base (default: the base in process)
    workers: concurrent requests to a server
    timeout: seconds for one server answer
    """
    from harness.engines import EngineConfig
    md = measure(name, None if judge in ("", "none") else judge, limit, batch_size, max_new_tokens, eval_set,
                 engine, base_engine, EngineConfig(workers=workers, timeout=timeout))
    print(md)
    return 0
