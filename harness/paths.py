"""Where the project keeps things: the cache, the adapters, the results.

    FTBENCH_CACHE     cache root (default ~/.cache/ftbench): converted models, prepared splits, stores
    FTBENCH_ADAPTERS  adapters folder (default <project>/adapters)
    FTBENCH_RESULTS   results folder (default <project>/results)
"""
from __future__ import annotations

import hashlib
import os
import re
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
