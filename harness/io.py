"""One I/O layer: atomic writes, UTF-8 and JSONL readers whose errors name file and line, shared constants.

    from harness.io import atomic_write, read_text, iter_jsonl, write_jsonl, slug, CJK_CLASS, is_cjk
    atomic_write(path, text)          # unique temp file in the target's folder, flush + fsync, os.replace
    for lineno, row in iter_jsonl(path, fix="rerun `python -m harness run ...`"): ...

Every writer of the project goes through `atomic_write` (or `atomic_writer` for streamed writes): a reader
never sees half a file, two concurrent writers never collide on a temp name, and a failed write leaves the old
file in place and no stray temp file behind.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import UserError

# CJK ideographs: Ext A, the URO, compatibility ideographs, 〇 and the supplementary planes (Ext B-H).
CJK_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3007\U00020000-\U0003134f"
CJK_RE = re.compile(f"[{CJK_CLASS}]")


def is_cjk(ch: str) -> bool:
    """True for one CJK ideograph (see CJK_CLASS)."""
    return bool(CJK_RE.fullmatch(ch))


def has_cjk(text: str) -> bool:
    return CJK_RE.search(text or "") is not None


def slug(text: str) -> str:
    """A file-name-safe label: lowercase, [a-z0-9._-]; a path becomes its last part plus a short hash."""
    text = str(text)
    if "/" in text or "\\" in text:
        text = f"{Path(text).name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "x"


def text_sha(text: str) -> str:
    """sha256 of a text's UTF-8 bytes, as hex: the content hash rows files carry instead of dataset text."""
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- writing

def check_writable_file(path: str | Path, what: str = "--output") -> Path:
    """Refuse, before any work, an output path that is a folder or whose folder cannot be created or written."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a file name inside it, e.g. {p / 'out.jsonl'}")
    check_writable_dir(p.parent if str(p.parent) else Path("."), what)
    return p


def check_writable_dir(folder: str | Path, what: str) -> Path:
    """Check that files can be made in `folder` (or, if it does not exist yet, that it can be created), without
    creating anything; UserError naming `what` otherwise."""
    d = Path(folder)
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = ""
    if not probe.is_dir():
        problem = f"{probe} is not a folder"
    elif not os.access(probe, os.W_OK | os.X_OK):
        problem = "permission denied"
    elif probe == d:
        try:
            fd, name = tempfile.mkstemp(dir=d, prefix=".ftbench-check-")
            os.close(fd)
            os.unlink(name)
        except OSError as e:
            problem = e.strerror or str(e)
    if problem:
        raise UserError(f"{what}: cannot write in {d} ({problem}); pick a folder you can write to "
                        f"(check its permissions and free space)")
    return d


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None):
    """A file object whose content replaces `path` only when the block ends without an error: a unique temp
    name in the target's folder, flush and fsync, then os.replace. On error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kw = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)     # mkstemp makes 0600; our outputs are plain readable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically (see atomic_writer)."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept), atomically."""
    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_csv(path: str | Path, header: list[str], rows: list[list]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------- reading

def read_text(path: str | Path, what: str = "input file") -> str:
    """A UTF-8 text file (a BOM is dropped); a missing file or non-UTF-8 bytes raise UserError with file:line."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder, not a file")
    if not p.is_file():
        raise UserError(f"{what} {p} not found")
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(f"{p}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {col}); "
                        f"save the file as UTF-8") from None


def iter_jsonl(path: str | Path, fix: str = "") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file. A line that is not a JSON object, or a
    file that cannot be read, raises UserError naming file:line, followed by `fix` (what to do about it)."""
    suffix = f"; {fix}" if fix else ""
    try:
        text = read_text(path, "file")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}{suffix}") from None
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}){suffix}") from None
        if not isinstance(item, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line, got {type(item).__name__}{suffix}")
        yield lineno, item


def read_table(path: str | Path, required: tuple[str, ...] = (), what: str = "file") -> list[tuple[int, dict]]:
    """(line, row) of a CSV (header row) or JSONL file, chosen by suffix; required columns checked with file:line.
    CSV line numbers are the physical line a record starts on."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        text = read_text(p, what)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        cols = reader.fieldnames or []
        missing = [c for c in required if c not in cols]
        if missing:
            raise UserError(f"{p}:1: missing column(s) {', '.join(missing)}; the header has {', '.join(cols) or 'nothing'}")
        out = []
        for row in reader:
            line = reader.line_num - (row.get(cols[-1], "") or "").count("\n") if cols else reader.line_num
            out.append((line, {k: (v if v is not None else "") for k, v in row.items() if k is not None}))
        return out
    rows = list(iter_jsonl(p))
    for lineno, row in rows:
        missing = [c for c in required if c not in row]
        if missing:
            raise UserError(f"{p}:{lineno}: missing field(s) {', '.join(missing)}")
    return rows


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """A matplotlib figure saved as PNG atomically (rendered in memory first)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write(path, buf.getvalue())
