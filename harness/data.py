"""Datasets and eval sets: manifests, sha256-checked inputs, reproducible splits as JSONL in the cache.

    python -m harness data prepare sms_spam --data-dir ../shared/datasets   # read a local copy
    python -m harness data prepare instruction                               # download (sha256-checked)
    python -m harness data list

    from harness.data import prepare, load_split, load_eval_set, list_eval_sets
    prepare("poems_zh", "../shared/datasets")        # -> {"train": Path(...jsonl), ...}
    load_split("sms_spam", "test")                   # -> [{"id", "text", "label"}, ...]
    load_eval_set("sms_own").items                   # the project's own sets (eval_sets/own/)
    load_eval_set("instruction:test")                # "<dataset>:<split>" from the cache

Each dataset has a manifest eval_sets/<name>.toml (URLs, sha256 per file, license, citation, record
format, split recipe and its parameters). A local copy is read from <data-dir>/<name>/<file>. Every input
file is sha256-checked before anything is parsed; splits are written atomically to
<cache>/data/<name>/<split>.jsonl, and meta.json (written last) marks a dataset as prepared.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.io import CJK_CLASS, atomic_write, atomic_writer, iter_jsonl, make_dirs, read_toml
from harness.paths import cache_dir, check_name, eval_sets_dir, sha256_file

FORMAT_VERSION = 1  # bump when a split recipe's code changes: cached splits then ask to be re-prepared
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DOWNLOAD_TIMEOUT = 30


# --------------------------------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class FileSpec:
    """One input file: `path` inside <data-dir>/<dataset>/, its sha256, and where to download it.

    `member` names the file inside an archive at `url` ("" = the url is the file itself);
    `archive_sha256` is checked too when known.
    """
    path: str
    sha256: str
    url: str = ""
    member: str = ""
    archive_sha256: str = ""

    def __post_init__(self):
        p = Path(self.path)
        if not self.path or p.is_absolute() or ".." in p.parts or "\\" in self.path:
            raise ValueError(f"file path {self.path!r} must be relative to the dataset folder, without '..'")
        for what in ("sha256", "archive_sha256"):
            value = getattr(self, what)
            if value and not _SHA256.match(value):
                raise ValueError(f"{self.path}: {what} {value!r} is not 64 lowercase hex digits")
        if not self.sha256:
            raise ValueError(f"{self.path}: sha256 is required")


@dataclass(frozen=True)
class Manifest:
    """A dataset's manifest (eval_sets/<name>.toml): provenance, files and split recipe."""
    name: str
    task: str
    splits: tuple[str, ...]
    files: tuple[FileSpec, ...]
    license: str
    citation: str
    record_format: str
    split_recipe: str
    description: str = ""
    homepage: str = ""
    split_params: dict = field(default_factory=dict)

    def __post_init__(self):
        check_name(self.name, "dataset name")
        if self.name not in _BUILDERS:
            raise ValueError(f"dataset {self.name!r} has no split builder; known: {sorted(_BUILDERS)}")
        from harness.tasks import list_tasks
        if self.task not in list_tasks():
            raise ValueError(f"{self.name}: task {self.task!r} is not a registered task ({', '.join(list_tasks())})")
        if not self.splits or len(set(self.splits)) != len(self.splits):
            raise ValueError(f"{self.name}: splits must be a non-empty list of distinct names")
        for s in self.splits:
            check_name(s, "split name")
        if not self.files:
            raise ValueError(f"{self.name}: no files")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"{self.name}: a file is listed twice")
        for what in ("license", "citation", "record_format", "split_recipe"):
            if not getattr(self, what).strip():
                raise ValueError(f"{self.name}: {what} is empty")


def _manifest_path(name: str) -> Path:
    return eval_sets_dir() / f"{name}.toml"


def list_datasets() -> list[str]:
    """Names of the datasets that have a manifest in eval_sets/."""
    return sorted(p.stem for p in eval_sets_dir().glob("*.toml"))


def _known_dataset(name: str) -> str:
    available = list_datasets()
    if name not in available:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(available)}")
    return name


def load_manifest(name: str) -> Manifest:
    """Read and validate eval_sets/<name>.toml."""
    path = _manifest_path(_known_dataset(name))
    try:
        raw = read_toml(path, "manifest")[0]
        files = tuple(FileSpec(**f) for f in raw.pop("files", []))
        raw["splits"] = tuple(raw.get("splits", ()))
        raw["split_params"] = raw.pop("split", {})
        return Manifest(files=files, **raw)
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: invalid manifest: {e}") from e


def with_checksums(manifest: Manifest, sha256s: dict[str, str]) -> Manifest:
    """A copy of `manifest` whose files are exactly `sha256s` (path -> sha256); urls kept where known."""
    old = {f.path: f for f in manifest.files}
    files = tuple(dataclasses.replace(old[p], sha256=s) if p in old else FileSpec(path=p, sha256=s)
                  for p, s in sha256s.items())
    return dataclasses.replace(manifest, files=files)


# ------------------------------------------------------------------------------------------------ inputs
def _mismatch(path: Path, expected: str, got: str, what: str) -> str:
    return (f"sha256 mismatch for {path}: expected {expected}, got {got}. {what} is not the file the "
            "manifest describes (corrupt, truncated or a different version); nothing was cached. "
            "Replace it with the original file.")


def _verify(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise UserError(_mismatch(path, expected, got, what))


def _local_inputs(m: Manifest, data_dir: Path) -> dict[str, Path]:
    """<data_dir>/<name>/<path> (or <data_dir>/<path> when data_dir is the dataset folder itself)."""
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir} is not a directory; it should contain {m.name}/{m.files[0].path}")
    out = {}
    for f in m.files:
        expected = data_dir / m.name / f.path
        if not expected.is_file() and (data_dir / f.path).is_file():
            expected = data_dir / f.path
        if not expected.is_file():
            raise UserError(f"{m.name}: expected file {expected} is missing (the --data-dir layout is "
                            f"DIR/{m.name}/{f.path}; see eval_sets/{m.name}.toml for where to get it)")
        out[f.path] = expected
    return out


def _download(url: str, out, hint: str) -> str:
    """Stream `url` into the open binary file `out` (an io.atomic_writer: nothing appears unless it completes);
    returns the sha256 of what was written."""
    import requests  # lazily: only a download needs it

    h = hashlib.sha256()
    try:
        with requests.get(url, timeout=_DOWNLOAD_TIMEOUT, stream=True) as r:
            r.raise_for_status()
            for chunk in r.iter_content(1 << 16):
                out.write(chunk)
                h.update(chunk)
        return h.hexdigest()
    except requests.RequestException as e:
        raise UserError(f"could not download {url} ({type(e).__name__}: {e}). Offline? Get the file "
                        f"elsewhere and pass `--data-dir DIR` with it at {hint}") from e


def _extract(archive: Path, member: str, dest) -> str:
    """Write the archive's file whose name (or basename) is `member` into the open binary file `dest`; never
    extracts paths."""
    import tarfile
    import zipfile

    base = member.rsplit("/", 1)[-1]
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n == member or n.rsplit("/", 1)[-1] == base]
            if names:
                data = z.read(names[0])
                dest.write(data)
                return hashlib.sha256(data).hexdigest()
    else:
        with tarfile.open(archive, "r:*") as t:
            for info in t:
                if info.isfile() and (info.name == member or info.name.rsplit("/", 1)[-1] == base):
                    data = t.extractfile(info).read()
                    dest.write(data)
                    return hashlib.sha256(data).hexdigest()
    raise UserError(f"{archive} has no file {member!r}: the download is not the archive the manifest expects")


def _downloaded_inputs(m: Manifest) -> dict[str, Path]:
    """Verified copies in <cache>/downloads/<name>/, downloading (and extracting) what is missing. Every file is
    written through io.atomic_writer and checked against its sha256 before it takes its name."""
    root = cache_dir() / "downloads" / m.name
    make_dirs(root)
    out, archives = {}, {}
    try:
        for f in m.files:
            dest = root / f.path
            hint = f"DIR/{m.name}/{f.path}"
            if dest.is_file() and sha256_file(dest) == f.sha256:
                out[f.path] = dest
                continue
            if not f.url:
                raise UserError(f"{m.name}: no URL for {f.path}; pass `--data-dir DIR` with the file at {hint}")
            if f.member and f.url not in archives:
                arch = root / f".archive-{hashlib.sha256(f.url.encode()).hexdigest()[:16]}"
                with atomic_writer(arch, "wb") as fh:
                    _download(f.url, fh, hint)
                archives[f.url] = arch
                if f.archive_sha256:
                    _verify(arch, f.archive_sha256, f"the archive downloaded from {f.url}")
            with atomic_writer(dest, "wb") as fh:
                got = _extract(archives[f.url], f.member, fh) if f.member else _download(f.url, fh, hint)
                if got != f.sha256:           # raised inside the block: the file never takes its name
                    raise UserError(_mismatch(dest, f.sha256, got, f"{f.path} downloaded from {f.url}"))
            out[f.path] = dest
    finally:
        for arch in archives.values():
            arch.unlink(missing_ok=True)
    return out


def _read_text(path: Path) -> str:
    from harness.io import read_text
    return read_text(path, "data file")


def _read_json(path: Path):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from e


# ------------------------------------------------------------------------------------------------ splits
def _split_sms_spam(files: dict[str, Path], p: dict) -> tuple[dict[str, list[dict]], dict]:
    """The book's balanced split (ch06) + a natural split nested around it (no train/test leak)."""
    import csv
    import io

    import pandas as pd  # lazily: the book's sampling, reproduced with the same calls

    path = files[p["file"]]
    text = _read_text(path)
    msgs: dict[int, tuple[str, str]] = {}  # line number -> (label, text)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        label, tab, msg = line.removesuffix("\r").partition("\t")
        if not tab or label not in ("ham", "spam") or "\t" in msg or not msg.strip():
            raise UserError(f"{path}:{lineno}: malformed record, expected 'ham<TAB>text' or "
                            f"'spam<TAB>text', got {line[:80]!r}")
        msgs[lineno] = (label, msg)

    # The book reads the file with pd.read_csv(sep="\t"), whose quote handling merges a few lines into
    # one row (5,572 rows instead of 5,574 lines). csv.reader gives the same rows; keeping that row order
    # makes .sample() choose exactly the book's messages. Each row is identified by its first line.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    rows, start = [], 1
    for row in reader:
        rows.append((row[0], start))
        start = reader.line_num + 1
    df = pd.DataFrame(rows, columns=["Label", "line"])
    seed = p["seed"]
    num_spam = int((df["Label"] == "spam").sum())
    if num_spam == 0 or num_spam > int((df["Label"] == "ham").sum()):
        raise UserError(f"{path}: need at least as many ham as spam messages (and some spam) to balance")
    ham_subset = df[df["Label"] == "ham"].sample(num_spam, random_state=seed)
    balanced = pd.concat([ham_subset, df[df["Label"] == "spam"]])
    balanced = balanced.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(balanced) * p["train_frac"])
    validation_end = train_end + int(len(balanced) * p["validation_frac"])
    order = [int(x) for x in balanced["line"]]
    bal = {"train": order[:train_end], "validation": order[train_end:validation_end],
           "test": order[validation_end:]}

    # Natural split: each balanced split plus ham drawn (seed) from the unused ham, so that its spam
    # share is the file's; balanced train never meets natural test. Lines the book merged land here.
    n_ham = sum(1 for lab, _ in msgs.values() if lab == "ham")
    ratio = n_ham / num_spam
    used = {ln for split in bal.values() for ln in split}
    pool = sorted(ln for ln, (lab, _) in msgs.items() if lab == "ham" and ln not in used)
    random.Random(seed).shuffle(pool)
    nat = {}
    for split in ("test", "validation", "train"):
        lines_s = bal[split]
        n_spam_s = sum(1 for ln in lines_s if msgs[ln][0] == "spam")
        n_ham_s = len(lines_s) - n_spam_s
        extra = len(pool) if split == "train" else max(0, round(n_spam_s * ratio) - n_ham_s)
        nat[split] = sorted(lines_s + pool[:extra])
        pool = pool[extra:]

    def rec(ln: int) -> dict:
        return {"id": f"sms-{ln}", "text": msgs[ln][1], "label": msgs[ln][0]}

    out = {s: [rec(ln) for ln in bal[s]] for s in ("train", "validation", "test")}
    out.update({f"natural_{s}": [rec(ln) for ln in nat[s]] for s in ("train", "validation", "test")})
    labels = {s: {lab: sum(r["label"] == lab for r in rs) for lab in ("ham", "spam")} for s, rs in out.items()}
    return out, {"labels": labels, "source_lines": len(msgs), "book_rows": len(df)}


def _split_instruction(files: dict[str, Path], p: dict) -> tuple[dict[str, list[dict]], dict]:
    """The book's ch07 split in file order: train 85%, test 10%, validation the rest."""
    path = files[p["file"]]
    data = _read_json(path)
    if not isinstance(data, list):
        raise UserError(f"{path}:1: expected a JSON array of {{instruction, input, output}} objects")
    records = []
    for i, e in enumerate(data):
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("instruction", "output")) \
                or not isinstance(e.get("input", ""), str):
            raise UserError(f"{path}: entry {i} (0-based) must be an object with string 'instruction', "
                            f"'input' and 'output', got {str(e)[:80]!r}")
        records.append({"id": f"instr-{i:04d}", "instruction": e["instruction"], "input": e.get("input", ""),
                        "output": e["output"]})
    n_train = int(len(records) * p["train_frac"])
    n_test = int(len(records) * p["test_frac"])
    return {"train": records[:n_train], "test": records[n_train:n_train + n_test],
            "validation": records[n_train + n_test:]}, {}


# The poem filter predates 〇 (U+3007) in harness.io.CJK_CLASS; it stays without it so the published splits
# (and the adapters trained on them) are reproduced exactly.
_CJK = re.compile(f"[{CJK_CLASS.replace(chr(0x3007), '')}]")
_ZH_FORMS = {(5, 4): "五言绝句", (7, 4): "七言绝句", (5, 8): "五言律诗", (7, 8): "七言律诗"}


def zh_form(text: str) -> str | None:
    """The regular form of a poem text ("五言绝句", ...), or None.

    Regular: only CJK characters and the punctuation ，。 alternating (，after the first line of each
    couplet, 。after the second); 4 or 8 lines, all of 5 or all of 7 characters. Anything else (？！；,
    component notation like {風兪}, □ for lost characters, notes in （）) is not regular.
    """
    lines = re.findall(r"[^，。]*[，。]", text)
    if "".join(lines) != text or len(lines) not in (4, 8):
        return None
    sizes = set()
    for i, line in enumerate(lines):
        body = line[:-1]
        if line[-1] != "，。"[i % 2] or not body or len(_CJK.findall(body)) != len(body):
            return None
        sizes.add(len(body))
    return _ZH_FORMS.get((sizes.pop(), len(lines))) if len(sizes) == 1 else None


def _hash_bucket(key: str, salt: str, modulo: int = 1000) -> int:
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:12], 16) % modulo


def _hash_split(records: list[dict], p: dict) -> dict[str, list[dict]]:
    """Deterministic split by a hash of each id: per-mille shares, validation/test capped (rest -> train)."""
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    keyed = sorted(records, key=lambda r: hashlib.sha256(f"{p['salt']}:{r['id']}".encode()).hexdigest())
    for r in keyed:
        b = _hash_bucket(r["id"], p["salt"])
        split = "test" if b < p["test_per_mille"] else \
            "validation" if b < p["test_per_mille"] + p["validation_per_mille"] else "train"
        if split != "train" and len(out[split]) >= p[f"{split}_cap"]:
            split = "train"
        out[split].append(r)
    order = {r["id"]: i for i, r in enumerate(records)}  # keep source order inside each split
    return {s: sorted(rs, key=lambda r: order[r["id"]]) for s, rs in out.items()}


def _split_poems_zh(files: dict[str, Path], p: dict) -> tuple[dict[str, list[dict]], dict]:
    """Regular 绝句/律诗 of 全唐诗, converted to simplified characters (OpenCC t2s), deduplicated."""
    import opencc  # lazily: only this dataset needs it

    convert = opencc.OpenCC(p["convert"]).convert
    skipped = {"irregular": 0, "duplicate": 0, "changed_by_conversion": 0}
    records, seen = [], set()
    for rel, path in files.items():
        data = _read_json(path)
        if not isinstance(data, list):
            raise UserError(f"{path}:1: expected a JSON array of poems")
        for i, poem in enumerate(data):
            if not (isinstance(poem, dict) and isinstance(poem.get("paragraphs"), list)
                    and all(isinstance(x, str) for x in poem["paragraphs"])
                    and all(isinstance(poem.get(k), str) for k in ("id", "title", "author"))):
                raise UserError(f"{path}: poem {i} (0-based) must have string 'id', 'title', 'author' and "
                                f"a list of strings 'paragraphs', got {str(poem)[:80]!r}")
            text = "".join(x.strip() for x in poem["paragraphs"])
            if zh_form(text) is None:
                skipped["irregular"] += 1
                continue
            simple = convert(text)
            form = zh_form(simple)
            if form is None:
                skipped["changed_by_conversion"] += 1
                continue
            if simple in seen:
                skipped["duplicate"] += 1
                continue
            seen.add(simple)
            title = " ".join(convert(poem["title"]).split()) or "无题"
            records.append({
                "id": f"tang-{poem['id']}", "lang": "zh", "form": form, "title": title,
                "author": convert(poem["author"]).strip(),
                "poem": "\n".join(re.findall(r"[^，。]+[，。]", simple)),
                "prompt": f"写一首{form}，题目：{title}",
            })
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise UserError("poems_zh: two poems share an 'id' in the source files; ids must be unique")
    splits = _hash_split(records, p)
    # the quatrain prompts of the test split: the form-compliance target is measured on these
    splits["test_jueju"] = [r for r in splits["test"] if r["form"].endswith("绝句")]
    forms = {s: {f: sum(r["form"] == f for r in rs) for f in _ZH_FORMS.values()} for s, rs in splits.items()}
    return splits, {"forms": forms, "skipped": skipped}


def _split_poems_en(files: dict[str, Path], p: dict) -> tuple[dict[str, list[dict]], dict]:
    """Deep-speare sonnets: 14 lines each; duplicates removed across all splits (first split wins)."""
    out, seen, dups = {}, set(), 0
    for split, rel in p["source_splits"].items():  # order: train, validation, test
        path = files[rel]
        out[split] = []
        for lineno, line in enumerate(_read_text(path).split("\n"), 1):
            if not line.strip():
                continue
            parts = [x.strip() for x in line.split(" <eos>")]
            if parts[-1] != "" or len(parts) - 1 != p["lines"] or not all(parts[:-1]):
                raise UserError(f"{path}:{lineno}: malformed sonnet, expected {p['lines']} non-empty lines "
                                f"each ending with ' <eos>', got {len(parts) - 1}")
            poem = "\n".join(parts[:-1])
            if poem in seen:
                dups += 1
                continue
            seen.add(poem)
            out[split].append({"id": "sonnet-" + hashlib.sha256(poem.encode()).hexdigest()[:12], "lang": "en",
                               "form": "sonnet", "title": "", "poem": poem, "prompt": p["prompt"]})
    return out, {"duplicates_removed": dups}


_BUILDERS = {"sms_spam": _split_sms_spam, "instruction": _split_instruction,
             "poems_zh": _split_poems_zh, "poems_en": _split_poems_en}


# ------------------------------------------------------------------------------------------------ cache
def _data_dir(name: str) -> Path:
    return cache_dir() / "data" / name


def prepare(name: str, data_dir: str | Path | None = None, manifest: Manifest | None = None) -> dict[str, Path]:
    """Verify a dataset's files (sha256), split them and write <cache>/data/<name>/<split>.jsonl.

    data_dir: folder holding <name>/<file> (a local copy); None downloads the manifest's URLs.
    manifest: use this instead of eval_sets/<name>.toml (tests pass fake files' checksums this way).
    Returns split name -> JSONL path. Nothing is written unless every file verifies and parses.
    """
    m = manifest or load_manifest(name)
    if m.name != name:
        raise UserError(f"manifest is for {m.name!r}, not {name!r}")
    files = _local_inputs(m, Path(data_dir).expanduser()) if data_dir is not None else _downloaded_inputs(m)
    for f in m.files:
        _verify(files[f.path], f.sha256, str(files[f.path]))
    splits, extra = _BUILDERS[name](files, m.split_params)
    if set(splits) != set(m.splits):
        raise AssertionError(f"{name}: builder made splits {sorted(splits)}, manifest says {list(m.splits)}")
    seen: dict[tuple[str, str], str] = {}  # splits of one family (train, natural_train, ...) are disjoint
    for split, records in splits.items():
        family = split.rpartition("_")[0]
        for r in records:
            where = seen.setdefault((family, r["id"]), split)
            if where != split:
                raise AssertionError(f"{name}: id {r['id']!r} in both {where} and {split}")
        if len({r["id"] for r in records}) != len(records):
            raise AssertionError(f"{name}: duplicate ids in {split}")

    out_dir = _data_dir(name)
    make_dirs(out_dir)
    (out_dir / "meta.json").unlink(missing_ok=True)  # not prepared until meta.json is written again
    paths = {}
    for split in m.splits:
        paths[split] = out_dir / f"{split}.jsonl"
        atomic_write(paths[split], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in splits[split]))
    meta = {
        "name": name, "task": m.task, "format_version": FORMAT_VERSION,
        "sources": {f.path: f.sha256 for f in m.files},
        "counts": {s: len(splits[s]) for s in m.splits},
        "split_recipe": m.split_recipe, "split_params": m.split_params, **extra,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(out_dir / "meta.json", json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    return paths


def _prepare_hint(name: str) -> str:
    return f"run `python -m harness data prepare {name} --data-dir DIR` (DIR holds {name}/...; e.g. ../shared/datasets)"


def dataset_meta(name: str) -> dict | None:
    """meta.json of a prepared dataset, or None if it is not prepared (or was prepared by older code)."""
    path = _data_dir(_known_dataset(name)) / "meta.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text(encoding="utf-8"))
    return meta if meta.get("format_version") == FORMAT_VERSION else None


def _read_jsonl(path: Path) -> list[dict]:
    return [item for _, item in iter_jsonl(path)]


def load_split(name: str, split: str, data_dir: str | Path | None = None) -> list[dict]:
    """Records of one prepared split; prepares it first when data_dir is given and it is missing."""
    m = load_manifest(name)
    if split not in m.splits:
        raise UserError(f"dataset {name} has no split {split!r}; available: {', '.join(m.splits)}")
    path = _data_dir(name) / f"{split}.jsonl"
    if dataset_meta(name) is None or not path.is_file():
        if data_dir is None:
            raise UserError(f"dataset {name} is not prepared in {cache_dir()}: {_prepare_hint(name)}")
        prepare(name, data_dir)
    return _read_jsonl(path)


# ------------------------------------------------------------------------------------------------ eval sets
@dataclass
class EvalSet:
    """A named list of items for one task; every item has a unique string "id" and its task's fields.
    own: the project's (or the user's) own set, whose text may be committed; a dataset split's may not."""
    name: str
    task: str
    items: list[dict]
    own: bool = True
    lines: list[int] | None = None     # the file line of each item, for file:line errors
    path: Path | None = None

    def __post_init__(self):
        from harness.tasks import get_task
        t = get_task(self.task)
        where_set = self.path or f"eval set {self.name}"
        if not self.items:
            raise UserError(f"{where_set}: eval set {self.name} is empty")
        ids = set()
        for i, item in enumerate(self.items):
            where = (f"{self.path}:{self.lines[i]}" if self.path and self.lines else
                     f"eval set {self.name}, item {i} (id {item.get('id')!r})")
            t.check_item(item, where)
            if item["id"] in ids:
                raise UserError(f"{where}: duplicate id {item['id']!r}")
            ids.add(item["id"])


def _own_sets() -> dict[str, dict]:
    """name -> {task, description, path}: eval_sets/own/sets.toml, and the eval sets declared in task files."""
    from harness.tasks import all_tasks
    path = eval_sets_dir() / "own" / "sets.toml"
    out: dict[str, dict] = {}
    sets = read_toml(path, "eval set list")[0] if path.is_file() else {}
    for name, spec in sets.items():
        check_name(name, "eval set name")
        out[name] = {**spec, "path": path.parent / spec.get("file", f"{name}.jsonl"), "declared": path}
    for t in all_tasks():
        for name, spec in t.eval_sets.items():
            check_name(name, "eval set name")
            if not isinstance(spec, dict) or not isinstance(spec.get("file"), str):
                raise UserError(f"{t.source}: [eval_sets.{name}] needs file = \"<name>.csv\" (or .jsonl)")
            out.setdefault(name, {**spec, "task": t.name, "path": Path(t.source).parent / spec["file"],
                                  "declared": t.source})
    from harness.tasks import list_tasks
    for name, spec in out.items():
        if spec.get("task") not in list_tasks():
            raise UserError(f"{spec['declared']}: [{name}] task must be one of {', '.join(list_tasks())}")
    return out


def read_items(path: Path, task_name: str) -> tuple[list[dict], list[int]]:
    """Items of an own eval set: JSONL, or CSV with a header (an `id` column is optional: the line number
    becomes the id). Values are kept as strings."""
    from harness.io import read_table
    from harness.tasks import get_task
    t = get_task(task_name)
    required = tuple(f for f in t.fields if f != "id")
    rows = read_table(path, required=required if path.suffix.lower() == ".csv" else (), what="eval set file")
    items, lines = [], []
    for lineno, row in rows:
        if "id" not in row or row.get("id") in (None, ""):
            row = {"id": f"{path.stem}-{lineno}", **row}
        items.append(row)
        lines.append(lineno)
    return items, lines


def list_eval_sets() -> list[str]:
    """The project's own sets, then "<dataset>:<split>" for every split of every dataset manifest."""
    return sorted(_own_sets()) + [f"{d}:{s}" for d in list_datasets() for s in load_manifest(d).splits]


def load_eval_set(name: str) -> EvalSet:
    """An own set ("sms_own", ...) from eval_sets/own/ or a task file, or "<dataset>:<split>" from the cache."""
    available = list_eval_sets()
    if name not in available:
        raise UserError(f"unknown eval set {name!r}; available: {', '.join(available)}")
    if ":" in name:
        dataset, split = name.split(":", 1)
        return EvalSet(name=name, task=load_manifest(dataset).task, items=load_split(dataset, split), own=False)
    spec = _own_sets()[name]
    items, lines = read_items(spec["path"], spec["task"])
    return EvalSet(name=name, task=spec["task"], items=items, own=True, lines=lines, path=spec["path"])


# ------------------------------------------------------------------------------------------------ CLI
def prepare_cmd(name: str, /, data_dir: str | None = None) -> int:
    """Download (sha256-checked) or read a local copy of a dataset and write its splits as JSONL.

    name: dataset (sms_spam, instruction, poems_zh, poems_en; see eval_sets/*.toml)
    data_dir: folder with a local copy laid out as DIR/<name>/<file>, e.g. ../shared/datasets
    """
    t0 = time.perf_counter()
    paths = prepare(_known_dataset(name), data_dir)
    meta = dataset_meta(name) or {}
    print(f"{name}: wrote {len(paths)} splits to {_data_dir(name)} in {time.perf_counter() - t0:.1f} s")
    for split, path in paths.items():
        line = f"  {split:<20} {meta['counts'][split]:>7}"
        if "labels" in meta:
            line += "   " + "  ".join(f"{k} {v}" for k, v in meta["labels"][split].items())
        if "forms" in meta:
            line += "   " + "  ".join(f"{k} {v}" for k, v in meta["forms"][split].items())
        print(line)
    for key in ("skipped", "duplicates_removed"):
        if key in meta:
            print(f"  {key}: {meta[key]}")
    return 0


def list_cmd() -> int:
    """List the datasets (prepared or not, with split sizes) and the eval sets."""
    print("datasets (eval_sets/<name>.toml; prepared splits in the cache):")
    for d in list_datasets():
        m, meta = load_manifest(d), dataset_meta(d)
        state = ", ".join(f"{s} {n}" for s, n in meta["counts"].items()) if meta else \
            f"not prepared: {_prepare_hint(d)}"
        print(f"  {d:<12} task {m.task:<5} {m.license.split(' (')[0]:<11} {state}")
    print("eval sets:")
    for name, spec in _own_sets().items():
        n = len(read_items(spec["path"], spec["task"])[0])
        print(f"  {name:<24} task {spec['task']:<5} {n:>4} items  {spec.get('description', '')}")
    print("  <dataset>:<split>        e.g. " + ", ".join(f"{d}:test" for d in list_datasets()))
    return 0
