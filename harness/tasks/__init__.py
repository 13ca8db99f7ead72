"""The task registry: one TOML declaration per task; everything that differs between tasks is here.

    python -m harness tasks                        # the registered tasks
    from harness.tasks import get_task
    t = get_task("spam")        # t.kind "classify", t.labels ("ham", "spam"), t.prompt, t.columns(), t.sort ...
    t.row_metrics(item, response)                  # per-row metric fields for a generate task
    t.summarize(rows, n_boot=2000)                 # the task's leaderboard columns for one group of rows

Built-in tasks are harness/tasks/<name>.toml (chat, poem, spam). Your own tasks go in eval_sets/tasks/<name>.toml
(or a folder named by $FTBENCH_TASKS); a task file may also declare its eval sets (CSV or JSONL beside it):

    name = "intent"
    kind = "classify"                    # classify | generate
    labels = ["billing", "tech", "other"]
    prompt = "Which team should answer this message: billing, tech or other?\\n\\nMessage: {text}"
    [eval_sets.intent_own]
    file = "intent_own.csv"              # columns text,label (and an optional id)

Why TOML plus a small table of named hooks rather than one Python module per task: a user adds a task the way
lm-evaluation-harness users add a YAML file, without writing Python; the few things that are code (ROUGE-L, the
poem form check) are metric hooks named in `metrics = [...]` and defined once below (METRICS).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.errors import UserError
from harness.paths import PROJECT_ROOT, check_name

BUILTIN_DIR = Path(__file__).resolve().parent
KINDS = ("classify", "generate")
# How a generate task may decode: free, or under constraints (harness/forms.py): form = the classical Chinese form;
# rhyme = form + the rhyming positions in one 平水韵 group; rhyme+tone = rhyme + the 平仄 template.
DECODINGS = ("free", "form", "rhyme", "rhyme+tone")
# Leaderboard columns every task has (the judge's and the run's), so a task may sort by them too.
COMMON_COLUMNS = ("n", "n_parsed", "parse_rate", "score_mean", "score_ci_low", "score_ci_high",
                  "avg_response_tokens", "gen_tokens_per_s", "items_per_s")


def user_tasks_dir() -> Path:
    return Path(os.environ.get("FTBENCH_TASKS") or PROJECT_ROOT / "eval_sets" / "tasks").expanduser()


# ---------------------------------------------------------------- per-row metric hooks (generate tasks)

@dataclass(frozen=True)
class Metric:
    """A per-row metric: `compute(item, response, task)` -> row fields; `aggregates` say how the leaderboard
    summarises each field: (field, how, column) with how in mean_ci | mean | rate | count."""
    compute: Callable[[dict, str, "Task"], dict]
    aggregates: tuple[tuple[str, str, str], ...]
    needs: str = ""          # an item field the metric needs ("" = none); rows without it get None


def _rouge(item: dict, response: str, task: "Task") -> dict:
    from harness.metrics import rouge_l
    ref = item.get(task.target_field)
    return {"rouge_l": round(rouge_l(response, ref), 4) if isinstance(ref, str) and ref else None}


def _form(item: dict, response: str, task: "Task") -> dict:
    from harness.metrics import form_check
    fc = form_check(response, item["form"], item["lang"])
    return {"lang": item["lang"], "form": item["form"], "form_ok": bool(fc["ok"]), "form_problem": fc["problem"]}


def _distinct(item: dict, response: str, task: "Task") -> dict:
    from harness.metrics import distinct_n
    return {"distinct_2": round(distinct_n(response, 2), 4)}


def _repetition(item: dict, response: str, task: "Task") -> dict:
    from harness.metrics import repetition_rate
    return {"repetition": round(repetition_rate(response), 4)}


def _looping(item: dict, response: str, task: "Task") -> dict:
    from harness.metrics import looping
    return {"looping": bool(looping(response))}


def _rules(item: dict, response: str, task: "Task") -> dict:
    from harness.rules import check_poem   # rhyme, tone and sonnet rules (harness/rules.py)
    return check_poem(response, item["form"], item["lang"])


METRICS: dict[str, Metric] = {
    "rouge_l": Metric(_rouge, (("rouge_l", "mean_ci", "rouge_l"),)),
    "form": Metric(_form, (("form_ok", "rate", "form_ok_rate"), ("form_ok", "count", "n_form"))),
    "distinct_2": Metric(_distinct, (("distinct_2", "mean", "distinct_2"),)),
    "repetition": Metric(_repetition, (("repetition", "mean", "repetition"),)),
    "looping": Metric(_looping, (("looping", "rate", "looping_rate"),)),
    "rules": Metric(_rules, (("rhyme_ok", "rate", "rhyme_rate"), ("tone_ok", "rate", "tone_rate"),
                             ("repeated_rhyme", "rate", "repeated_rhyme_rate"),
                             ("sonnet_scheme_ok", "rate", "sonnet_scheme_rate"),
                             ("syllables_ok_rate", "mean", "syllables_ok"), ("unknown_chars", "mean", "unknown_chars"),
                             ("oov_words", "mean", "oov_words"))),
}


# ---------------------------------------------------------------- the task declaration

@dataclass(frozen=True)
class Task:
    """One task, read from its TOML file. See the module docstring and harness/tasks/*.toml."""
    name: str
    kind: str
    description: str = ""
    fields: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()            # classify
    positive: str = ""                      # classify: precision/recall/F1 of this label
    prompt: str = "{text}"                  # classify: what a zero-shot base or a label-as-text adapter reads
    instruction_field: str = "instruction"  # generate: the item field that is the instruction
    input_field: str = ""                   # generate: an optional input appended to the instruction
    target_field: str = ""                  # generate: the reference / training target field
    metrics: tuple[str, ...] = ()           # generate: per-row metric hooks (METRICS)
    judge_prompt: str = ""                  # generate: judge prompt name (harness/prompts/judge_<name>_v1.txt)
    sort: tuple[str, ...] = ()              # leaderboard order, best first
    primary: str = ""                       # the report's primary metric without a common judge
    card_eval_sets: tuple[str, ...] = ()    # own sets an adapter card reports besides its test split
    decodings: tuple[str, ...] = ("free",)
    values: dict = field(default_factory=dict)       # allowed values of item fields
    app: dict = field(default_factory=dict)          # the app tab's hints: placeholder, examples
    eval_sets: dict = field(default_factory=dict)    # eval sets declared with the task: name -> {file, ...}
    source: Path | None = None

    def __post_init__(self):
        where = self.source or self.name
        check_name(self.name, "task name")
        if self.kind not in KINDS:
            raise UserError(f"{where}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "classify":
            if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels) or not all(
                    isinstance(lab, str) and lab.strip() and lab == lab.strip() for lab in self.labels):
                raise UserError(f"{where}: a classify task needs `labels` = two or more distinct words, "
                                f"got {list(self.labels)}")
            if self.positive and self.positive not in self.labels:
                raise UserError(f"{where}: positive {self.positive!r} is not one of the labels {list(self.labels)}")
            if "{text}" not in self.prompt:
                raise UserError(f"{where}: the classify prompt must contain {{text}}, got {self.prompt!r}")
            object.__setattr__(self, "fields", tuple(dict.fromkeys(("id", "text", "label", *self.fields))))
        else:
            unknown = [m for m in self.metrics if m not in METRICS]
            if unknown:
                raise UserError(f"{where}: unknown metrics {unknown}; available: {', '.join(METRICS)}")
            if self.instruction_field not in self.fields:
                raise UserError(f"{where}: instruction_field {self.instruction_field!r} must be one of the "
                                f"fields {list(self.fields)}")
        bad = [d for d in self.decodings if d not in DECODINGS]
        if bad or "free" not in self.decodings:
            raise UserError(f"{where}: decodings must include free and may add {', '.join(DECODINGS[1:])}, "
                            f"got {list(self.decodings)}")
        known = set(self.columns()) | set(COMMON_COLUMNS)
        wrong = [s for s in self.sort if s not in known]
        if wrong:
            raise UserError(f"{where}: sort columns {wrong} are not columns of this task ({', '.join(self.columns())})")

    # ------------------------------------------------------------ items

    def check_item(self, item: dict, where: str) -> None:
        """Raise UserError (with `where`, e.g. file:line) for an item this task cannot use."""
        missing = [k for k in self.fields if not isinstance(item.get(k), str)
                   and not (k == self.input_field and item.get(k) is None)]
        if missing:
            raise UserError(f"{where}: missing or non-string field(s) {', '.join(missing)} for task {self.name} "
                            f"(it needs {', '.join(self.fields)})")
        if not item["id"].strip():
            raise UserError(f"{where}: empty id")
        if self.kind == "classify" and item["label"] not in self.labels:
            raise UserError(f"{where}: label {item['label']!r} is not one of {', '.join(self.labels)}")
        for key, allowed in self.values.items():
            if key in item and item[key] not in allowed:
                raise UserError(f"{where}: {key} {item[key]!r} is not one of {', '.join(map(str, allowed))}")

    def instruction(self, item: dict) -> tuple[str, str]:
        """(instruction, input) of a generate item."""
        return item[self.instruction_field], (item.get(self.input_field) or "") if self.input_field else ""

    def request_text(self, item: dict) -> str:
        """The item's text as a person reads it (the app, reports): instruction (+ input), or the message."""
        if self.kind == "classify":
            return item["text"]
        ins, inp = self.instruction(item)
        return ins + (f"\n\n{inp}" if inp else "")

    # ------------------------------------------------------------ rows

    def row_metrics(self, item: dict, response: str) -> dict:
        out: dict[str, Any] = {}
        for m in self.metrics:
            out.update(METRICS[m].compute(item, response, self))
        return out

    def columns(self) -> list[str]:
        """The task's own leaderboard columns, in order."""
        if self.kind == "classify":
            cols = ["accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1"]
            if self.positive:
                for k in ("precision", "recall", "f1"):
                    cols += [k, f"{k}_ci_low", f"{k}_ci_high"]
                cols += ["tp", "fp", "tn", "fn"]
            return cols
        cols: list[str] = []
        for m in self.metrics:
            for _, how, col in METRICS[m].aggregates:
                cols += [col, f"{col}_ci_low", f"{col}_ci_high"] if how == "mean_ci" else [col]
        return list(dict.fromkeys(cols))

    def usable(self, row: dict, judged: bool) -> bool:
        """Does this row count for the task's main metric (n_parsed)?"""
        from harness.metrics import as_float, is_scored
        if self.kind == "classify":
            return row.get("pred") not in (None, "") and row.get("label") not in (None, "")
        if judged:
            return is_scored(row)
        field_ = next((f for m in self.metrics for f, _, _ in METRICS[m].aggregates), None)
        return field_ is None or (row.get(field_) is not None and (not isinstance(row.get(field_), float)
                                                                 or as_float(row.get(field_)) is not None))

    def summarize(self, rows: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
        """This task's columns for the rows of one leaderboard group."""
        from harness.metrics import as_float, bootstrap_mean_ci, classification_metrics
        out: dict[str, Any] = {c: math.nan for c in self.columns()}
        if self.kind == "classify":
            usable = [r for r in rows if self.usable(r, False)]
            if usable:
                y, p = [str(r["label"]) for r in usable], [str(r["pred"]) for r in usable]
                m = classification_metrics(y, p, positive=self.positive or self.labels[-1],
                                           n_boot=max(200, n_boot // 2), seed=seed, labels=list(self.labels))
                out.update({k: m[k] for k in self.columns() if k in m})
            return out
        for mname in self.metrics:
            for fld, how, col in METRICS[mname].aggregates:
                vals = [r.get(fld) for r in rows if r.get(fld) is not None]
                if how == "mean_ci":
                    out[col], out[f"{col}_ci_low"], out[f"{col}_ci_high"] = bootstrap_mean_ci(
                        [as_float(v) for v in vals], n_boot=n_boot, seed=seed)
                elif how == "mean":
                    nums = [x for x in (as_float(v) for v in vals) if x is not None]
                    out[col] = sum(nums) / len(nums) if nums else math.nan
                elif how == "rate":
                    out[col] = sum(bool(v) for v in vals) / len(vals) if vals else math.nan
                elif how == "count":
                    out[col] = len(vals)
        return out


# ---------------------------------------------------------------- the registry

def _task_files() -> dict[str, Path]:
    """name -> file: the built-in tasks, then the user's. A user task named like a built-in one is an error
    naming both files (it would otherwise be silently ignored)."""
    files: dict[str, Path] = {}
    if BUILTIN_DIR.is_dir():
        files.update((p.stem, p) for p in sorted(BUILTIN_DIR.glob("*.toml")))
    user = user_tasks_dir()
    if user.is_dir() and user.resolve() != BUILTIN_DIR:
        for p in sorted(user.glob("*.toml")):
            if p.stem in files:
                raise UserError(f"{p}:1: task {p.stem!r} is already the built-in task {files[p.stem]}; rename "
                                f"your file (and its `name`), e.g. to my_{p.stem}.toml")
            files[p.stem] = p
    return files


_FIELDS = set(Task.__dataclass_fields__) - {"source"}
_TUPLES = {"fields", "labels", "metrics", "sort", "card_eval_sets", "decodings"}
# The declared schema: keys a task file of each kind must set (the rest have defaults, see Task).
REQUIRED = {"classify": ("kind", "labels", "prompt"),
            "generate": ("kind", "fields", "instruction_field")}


def load_task_file(path: Path) -> Task:
    st = path.stat()
    return _load_task_file(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _load_task_file(path: Path, mtime_ns: int, size: int) -> Task:
    """A task file checked against the schema (REQUIRED, the Task fields and their types); every problem is
    one UserError naming file:line."""
    from harness.io import read_toml
    from harness.io import toml_line as key_line
    raw, text = read_toml(path, "task file")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise UserError(f"{path}:{key_line(text, unknown[0])}: unknown key(s) {unknown}; a task file may set "
                        f"{', '.join(sorted(_FIELDS))}")
    if raw.get("name", path.stem) != path.stem:
        raise UserError(f"{path}:{key_line(text, 'name')}: name {raw.get('name')!r} must match the file name "
                        f"({path.stem!r})")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise UserError(f"{path}:{key_line(text, 'kind')}: missing or wrong `kind` (one of {', '.join(KINDS)}), "
                        f"got {kind!r}")
    missing = [k for k in REQUIRED[kind] if k not in raw]
    if missing:
        example = {"prompt": 'prompt = "Is this message A or B?\\n\\nMessage: {text}"',
                   "labels": 'labels = ["a", "b"]', "fields": 'fields = ["id", "instruction", "output"]',
                   "instruction_field": 'instruction_field = "instruction"'}
        raise UserError(f"{path}:1: a {kind} task must set {', '.join(missing)}; e.g. "
                        f"{'; '.join(example[k] for k in missing if k in example)}")
    for key in _TUPLES & set(raw):
        if not isinstance(raw[key], list) or not all(isinstance(x, str) for x in raw[key]):
            raise UserError(f"{path}:{key_line(text, key)}: {key} must be a list of strings, "
                            f"e.g. {key} = [\"a\", \"b\"]")
        raw[key] = tuple(raw[key])
    for key in ("values", "app", "eval_sets"):
        if key in raw and not isinstance(raw[key], dict):
            raise UserError(f"{path}:{key_line(text, key)}: [{key}] must be a table")
    for key in set(raw) - _TUPLES - {"values", "app", "eval_sets"}:
        if not isinstance(raw[key], str):
            raise UserError(f"{path}:{key_line(text, key)}: {key} must be a string, got {type(raw[key]).__name__}")
    raw.setdefault("name", path.stem)
    try:
        return Task(source=path, **raw)
    except UserError as e:        # a value check of Task: name the line of the key it is about
        msg = str(e)
        key = next((k for k in raw if f": {k} " in msg or f"`{k}`" in msg or f"{k} must" in msg
                    or f"the {k} " in msg or msg.split(": ", 1)[-1].startswith(k)), None)
        if key is None and "prompt" in msg:
            key = "prompt"
        raise UserError(msg.replace(f"{path}: ", f"{path}:{key_line(text, key) if key else 1}: ", 1)) from None


def list_tasks() -> list[str]:
    return sorted(_task_files())


def get_task(name: str) -> Task:
    """The task named `name`; UserError listing the registered tasks otherwise."""
    files = _task_files()
    if name not in files:
        raise UserError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(files))} "
                        f"(add your own as {user_tasks_dir()}/<name>.toml)")
    return load_task_file(files[name])


def all_tasks() -> list[Task]:
    return [get_task(n) for n in list_tasks()]


def tasks_cmd() -> int:
    """List the registered tasks: kind, labels or metrics, and where each is declared."""
    for t in all_tasks():
        what = f"labels {', '.join(t.labels)}" if t.kind == "classify" else f"metrics {', '.join(t.metrics)}"
        src = t.source.relative_to(PROJECT_ROOT) if t.source and t.source.is_relative_to(PROJECT_ROOT) else t.source
        print(f"{t.name:<12} {t.kind:<9} {what:<48} {src}")
    return 0
