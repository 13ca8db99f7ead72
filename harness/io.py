"""One I/O layer: the one atomic writer, one reader per format (text, JSONL, CSV, TOML) whose errors name file
and line, shared constants.

    from harness.io import atomic_write, write_csv, read_table, read_toml, iter_jsonl, csv_escape
    atomic_write(path, text)          # unique temp file in the target's folder, flush + fsync, os.replace
    write_csv(path, header, rows)     # every cell escaped against spreadsheet formulas (csv_escape)
    for lineno, row in read_table("sms.csv", required=("text",)): ...      # file:line for every broken row
    for lineno, row in iter_jsonl(path, fix="rerun `python -m harness run ...`"): ...

Every writer of the project goes through `atomic_write` (or `atomic_writer` for streamed writes): a reader
never sees half a file, two concurrent writers never collide on a temp name, a failed write leaves the old file
in place and no stray temp file behind (also on Ctrl-C and SIGTERM), and every OSError (full disk, read-only
file system, missing parent, not a folder, quota, permission) is one UserError sentence naming the path and the
cause. `check_writable_dir` creates and removes a probe file (os.access says yes to root on /proc or a read-only
mount). Progress files that grow item by item use `append_lines`.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

# What an OSError means to the user, by errno: one sentence each (os_error_message).
_CAUSES = {
    errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
    errno.ENOENT: "its folder does not exist", errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "it is a folder", errno.EEXIST: "a part of the path is a file, not a folder", errno.ENAMETOOLONG: "the name is too long", errno.EFBIG: "the file is too large",
    errno.EIO: "an input/output error on the device",
}


def os_error_message(e: OSError, path: str | Path, verb: str = "write") -> str:
    """One sentence for an OSError met while writing (or reading) `path`: the path, the cause, the fix."""
    cause = _CAUSES.get(e.errno or 0) or (e.strerror or str(e))
    fix = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
           errno.EROFS: "write to a folder on a writable disk"}.get(e.errno or 0,
                                                                     "pick a folder you can write to")
    return f"cannot {verb} {path}: {cause}; {fix}"


def check_writable_file(path: str | Path, what: str = "--output") -> Path:
    """Refuse, before any work, an output path that is a folder or whose folder cannot be created or written."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a file name inside it, e.g. {p / 'out.jsonl'}")
    check_writable_dir(p.parent if str(p.parent) else Path("."), what)
    return p


def check_writable_dir(folder: str | Path, what: str) -> Path:
    """Check that files can be made in `folder` (or, if it does not exist yet, in its nearest existing parent,
    where it would be created) by creating and removing a probe file: os.access says yes to root on a
    read-only or pseudo file system (/proc), a probe does not. UserError naming `what` otherwise."""
    d = Path(folder)
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = ""
    if not probe.is_dir():
        problem = f"{probe} is not a folder"
    else:
        try:
            fd, name = tempfile.mkstemp(dir=probe, prefix=".ftbench-check-")
            os.close(fd)
            os.unlink(name)
        except OSError as e:
            problem = _CAUSES.get(e.errno or 0) or e.strerror or str(e)
            if probe != d and e.errno == errno.ENOENT:
                problem = f"no file can be created in {probe}"
    if problem:
        raise UserError(f"{what}: cannot write in {d} ({problem}); pick a folder you can write to "
                        f"(check its permissions and free space)")
    return d


# Temp files of writes in progress, removed by the signal handler if SIGTERM arrives mid-write (SIGINT raises
# KeyboardInterrupt, which atomic_writer's own cleanup handles).
_TEMPS: set[str] = set()
_TEMPS_LOCK = threading.Lock()
_PREVIOUS: dict[int, Any] = {}
_OWNER = [0]          # the pid that installed the chain


def _on_signal(signum, frame):
    # no lock here: the handler runs in the main thread, which may hold _TEMPS_LOCK at that moment (a copy of the
    # set is atomic under the GIL)
    for t in list(_TEMPS):
        with contextlib.suppress(OSError):
            os.unlink(t)
    # a forked child (a multiprocessing worker) inherits the parent's chain, whose previous handler belongs to the
    # parent's world (a server's "shut down gracefully" flag, say): the child dies of the signal instead
    prev = _PREVIOUS.get(signum, signal.SIG_DFL) if os.getpid() == _OWNER[0] else signal.SIG_DFL
    if callable(prev):
        return prev(signum, frame)
    if prev == signal.SIG_IGN:
        return None
    signal.signal(signum, signal.SIG_DFL)       # die of the same signal, as without this handler
    os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
    """Chain a temp-file cleanup in front of the SIGTERM (and SIGHUP) handler, once, from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None or sig in _PREVIOUS:
            continue
        try:
            _PREVIOUS[sig] = signal.getsignal(sig)
            signal.signal(sig, _on_signal)
            _OWNER[0] = os.getpid()
        except (ValueError, OSError):        # not the main interpreter: leave the handler alone
            _PREVIOUS.pop(sig, None)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None):
    """A file object whose content replaces `path` only when the block ends without an error: a unique temp
    name in the target's folder, flush and fsync, then os.replace. On error, Ctrl-C or SIGTERM the temp file is
    removed and the old file stays. Every OSError (full disk, read-only, missing parent, not a folder, quota,
    permission) becomes one UserError sentence naming the path and the cause."""
    path = Path(path)
    _install_cleanup()
    tmp = None
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with _TEMPS_LOCK:
            _TEMPS.add(tmp)
        kw = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)     # mkstemp makes 0600; our outputs are plain readable files
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise UserError(os_error_message(e, path)) from None
    finally:
        if tmp is not None:
            with _TEMPS_LOCK:
                _TEMPS.discard(tmp)
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically (see atomic_writer)."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def make_dirs(folder: str | Path) -> Path:
    """mkdir -p, with an OSError turned into one UserError sentence naming the folder and the cause."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno == errno.ENOENT:     # mkdir -p only says this where nothing may be created (/proc)
            raise UserError(f"cannot create the folder {folder}: this file system does not allow it; pick a "
                            f"folder you can write to") from None
        raise UserError(os_error_message(e, folder, "create the folder")) from None
    return Path(folder)


def append_lines(path: str | Path, lines: list[str]) -> None:
    """Append lines to a file (a resumable progress file), flushed to disk once; OSError -> one UserError
    sentence. A crash mid-append leaves at most one cut line at the end, which readers skip."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(line.rstrip("\n") + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(os_error_message(e, path)) from None


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept), atomically."""
    return atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# CSV formula cells (CSV injection). A spreadsheet runs a cell that starts with = + - @ (or a tab or CR before
# one) as a formula: `=HYPERLINK(...)`, `=cmd|' /C calc'!A0`. The rule, used by every CSV this project writes
# (write_csv, write_frame; the app's predictions download too):
#   a cell that starts with any number of ' followed by = + - @ TAB or CR, and is not a plain number
#   (-0.5, +3, 1e-3), gets one ' in front.
# It is reversible: csv_unescape drops that one ' again (a cell starting with '+ then one of those characters
# was always escaped, so nothing else is touched). Plain numbers (negative ones too) stay numbers.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_ESCAPED = re.compile(r"'+[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_escape(value: Any) -> str:
    """A cell made safe for a spreadsheet (see the rule above); None -> ""."""
    text = "" if value is None else str(value)
    if _FORMULA.match(text) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_unescape(text: str) -> str:
    """The inverse of csv_escape: one leading ' dropped from a cell that csv_escape escaped."""
    return text[1:] if _ESCAPED.match(text) else text


def write_csv(path: str | Path, header: list[str], rows: list[list]) -> Path:
    """A CSV (\\r\\n line ends, as the csv module writes) with every cell escaped by csv_escape, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([csv_escape(c) for c in header])
    w.writerows([csv_escape(c) for c in row] for row in rows)
    return atomic_write(path, buf.getvalue())


def write_frame(path: str | Path, df) -> Path:
    """A pandas DataFrame as CSV (no index, \\n line ends), its text cells escaped by csv_escape, atomically."""
    import pandas as pd
    df = df.copy()
    for col in df.columns:
        if not (pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col])):
            df[col] = df[col].map(lambda v: v if not isinstance(v, str) else csv_escape(v))
    df.columns = [csv_escape(c) for c in df.columns]
    return atomic_write(path, df.to_csv(index=False, lineterminator="\n"))


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


def read_toml(path: str | Path, what: str = "file") -> tuple[dict, str]:
    """(table, text) of a UTF-8 TOML file; bad TOML raises UserError naming file:line. The text is returned so a
    schema check can name the line of a key (toml_line)."""
    import tomllib
    p = Path(path)
    text = read_text(p, what)
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"at line (\d+)", str(e))
        line = int(found.group(1)) if found else text.count("\n") + 1        # "at end of document"
        raise UserError(f"{p}:{line}: not valid TOML ({str(e).split(' (at ')[0]}); fix that line") from None


def toml_line(text: str, key: str) -> int:
    """The line of a TOML text where `key` is set (`key =` or a `[key]` / `[key.x]` table); 1 when absent."""
    m = (re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", text, re.M)
         or re.search(rf"^[ \t]*\[{re.escape(key)}[\].]", text, re.M))
    return text.count("\n", 0, m.start()) + 1 if m else 1


def read_csv(path: str | Path, what: str = "file") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line, fields)]) of a UTF-8 CSV; line = the physical line a record starts on; blank lines skipped.
    No field size limit (a long message is fine). An unterminated quote and a record with more or fewer fields
    than the header raise UserError naming file:line and what to fix."""
    p = Path(path)
    text = read_text(p, what)
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    out: list[tuple[int, list[str]]] = []
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            why = ("a quoted field is never closed (an unterminated \")" if "end of data" in str(e)
                   else f"malformed CSV ({e})")
            raise UserError(f"{p}:{start}: {why}; close the quote, or double a quote inside a quoted field "
                            f"(\"\")") from None
        line, start = start, reader.line_num + 1
        if not fields or (len(fields) == 1 and not fields[0].strip() and header is not None):
            continue
        if header is None:
            header = [c.strip() for c in fields]
            continue
        if len(fields) != len(header):
            more = len(fields) > len(header)
            raise UserError(f"{p}:{line}: {len(fields)} fields where the header has {len(header)} "
                            f"({', '.join(header)}); "
                            + ("put a text that contains a comma in double quotes" if more else
                               "add the missing field(s) or delete the line"))
        out.append((line, fields))
    return header or [], out


def read_table(path: str | Path, required: tuple[str, ...] = (), what: str = "file") -> list[tuple[int, dict]]:
    """(line, row) of a CSV (header row, see read_csv) or JSONL file, chosen by suffix; required columns checked
    with file:line. CSV line numbers are the physical line a record starts on."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        cols, records = read_csv(p, what)
        missing = [c for c in required if c not in cols]
        if missing:
            raise UserError(f"{p}:1: missing column(s) {', '.join(missing)}; the header has {', '.join(cols) or 'nothing'}")
        return [(line, dict(zip(cols, fields))) for line, fields in records]
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


_ABS_PATH = re.compile(r"(?<![\w:/.~])(?:~|/)(?:[^\s'\"`()\[\],;:]+/)+([^\s'\"`()\[\],;:]*)")


def hide_paths(text: str) -> str:
    """A message for a visitor of the app: every absolute path (/srv/…/x.safetensors, ~/…/x) shown by its last
    part only, so no server folder reaches the page; URLs (http://host/path) are left alone."""
    return _ABS_PATH.sub(lambda m: m.group(1) or "…", str(text))
