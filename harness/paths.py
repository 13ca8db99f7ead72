"""Where the project keeps things: the cache, the adapters, the results.

    FTBENCH_CACHE     cache root (default ~/.cache/ftbench): converted models, prepared splits, stores
    FTBENCH_ADAPTERS  adapters folder (default <project>/adapters)
    FTBENCH_RESULTS   results folder (default <project>/results)
    SYSTEM=spaces     set by Hugging Face Spaces: votes go to persistent storage, nothing is written into results/
    FTBENCH_PERSISTENT  the Space's persistent-storage folder (default /data; tests point it elsewhere)

On a Space, `votes_store_path()` is a store in the persistent-storage folder when that folder exists and a
probe file can be created and removed in it (never `os.access`: as root it says yes to a read-only disk);
otherwise the normal cache store, and `storage_note()` says in one sentence that votes will not survive a
restart and why. `writable_results_dir()` is where anything computed on a Space is written; reading the
committed leaderboards still uses `results_dir()`.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path

from harness.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def cache_dir() -> Path:
    return Path(os.environ.get("FTBENCH_CACHE") or Path.home() / ".cache" / "ftbench").expanduser()


def adapters_dir() -> Path:
    return Path(os.environ.get("FTBENCH_ADAPTERS") or PROJECT_ROOT / "adapters").expanduser()


def results_dir() -> Path:
    return Path(os.environ.get("FTBENCH_RESULTS") or PROJECT_ROOT / "results").expanduser()


def on_spaces() -> bool:
    """True inside a Hugging Face Space (Spaces set SYSTEM=spaces)."""
    return os.environ.get("SYSTEM", "").strip().lower() == "spaces"


def persistent_dir() -> Path:
    """The Space's persistent-storage folder: $FTBENCH_PERSISTENT, or /data (where Spaces mount it)."""
    return Path(os.environ.get("FTBENCH_PERSISTENT") or "/data").expanduser()


def _why_not_writable(folder: Path) -> str:
    """'' if a file can be created and removed in `folder` (made if missing); else the reason, in words."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ftbench-probe-")
        os.close(fd)
        os.unlink(probe)
        return ""
    except OSError as e:
        return {errno.EROFS: "is read-only", errno.ENOSPC: "is full", errno.EDQUOT: "is over its quota",
                errno.EACCES: "cannot be written (permission denied)",
                errno.EPERM: "cannot be written (permission denied)",
                errno.ENOENT: "cannot be written (no folder can be made in it)"}.get(
            e.errno, f"cannot be written ({(e.strerror or str(e)).lower()})")


def _persistent_store() -> tuple[Path | None, str]:
    """(the persistent votes folder or None, why not: '' | 'missing' | the reason it cannot be written)."""
    if not on_spaces():
        return None, "not a Space"
    root = persistent_dir()
    if not root.is_dir():
        return None, "missing"
    folder = root / "ftbench"
    why = _why_not_writable(folder)
    return (None, why) if why else (folder, "")


def votes_store_path() -> Path:
    """The store the app keeps votes in (and `labels` reads by default): on a Space with writable persistent
    storage <persistent>/ftbench/store.sqlite, so votes survive a restart; otherwise the cache store."""
    folder, _ = _persistent_store()
    return (folder if folder else cache_dir()) / "store.sqlite"


def storage_note() -> str:
    """One sentence for the app's header: where votes are kept (in words) and whether they survive a restart."""
    folder, why = _persistent_store()
    if folder:
        return "Votes are kept in this Space's persistent storage and survive a restart."
    if why == "not a Space":
        return "Votes are kept in the ftbench store on this machine and survive a restart."
    if why == "missing":
        return ("Votes will not survive a restart: this Space has no persistent storage (its owner can add it in "
                "the Space's settings), so they are kept on the Space's own disk, which a restart wipes.")
    return (f"Votes will not survive a restart: the Space's persistent storage {why}, so they are kept on the "
            f"Space's own disk, which a restart wipes.")


def writable_results_dir() -> Path:
    """Where results computed now are written: results_dir() off a Space; on a Space never the repository's
    results/ ($FTBENCH_RESULTS if set, else a folder in persistent storage or, failing that, in the cache)."""
    if not on_spaces():
        return results_dir()
    if os.environ.get("FTBENCH_RESULTS"):
        return results_dir()
    folder, _ = _persistent_store()
    return (folder if folder else cache_dir()) / "results"


def eval_sets_dir() -> Path:
    return PROJECT_ROOT / "eval_sets"


def check_name(name: str, what: str = "name") -> str:
    """A name that may become part of a path: letters, digits, '.', '_', '-'; never '/', '\\' or '..'."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise UserError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' only "
            "(no '/', '\\' or '..'); names are looked up, never used as paths"
        )
    return name


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hub_host() -> str:
    """The Hugging Face hub's host name ($HF_ENDPOINT or huggingface.co)."""
    from urllib.parse import urlparse
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub: fail in seconds offline instead of retrying for a minute."""
    import socket
    try:
        socket.create_connection((hub_host(), 443), timeout=timeout).close()
        return True
    except OSError:
        return False
