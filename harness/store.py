"""A crash-safe, resumable store of generations and judgments: SQLite (stdlib), WAL, one committed row per item.

    from harness.store import Store, generation_key, judgment_key
    with Store() as st:                                  # $FTBENCH_CACHE/store.sqlite (or Store(path))
        key = generation_key("smollm2-135m-instruct", adapter_sha, {"max_new_tokens": 256}, prompt)
        st.get("generations", [key])                     # {key: row} for the keys already stored
        st.put("generations", [{"key": key, "response": "...", ...}])
        st.export("judgments", "judgments.csv")          # or .jsonl

Tables: generations, judgments (pointwise scores), pairwise (one verdict per item, response pair and order;
harness.pairwise), votes (human votes; harness.votes, each with the hash of the browser session that cast it).
New tables and new columns are added to an existing store on open (ALTER TABLE ADD COLUMN: old rows get NULL,
and an older ftbench still reads and writes the store, so SCHEMA_VERSION only changes for incompatible edits).

    python -c "from harness.store import Store; Store().export('judgments', 'judgments.jsonl')"

Keys are sha256 of canonical JSON, so a changed adapter (its weights' sha256), generation config, prompt,
judge model or digest, judge prompt file or options invalidates exactly the items it touches. Each row is
committed as its item completes (WAL: a kill -9 loses at most the items in flight, never a committed one, and
never leaves a half row); a primary key makes a rerun add nothing twice.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.paths import cache_dir

SCHEMA_VERSION = 1
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "generations": (
        ("key", "TEXT PRIMARY KEY"), ("model", "TEXT"), ("adapter", "TEXT"), ("adapter_sha", "TEXT"),
        ("config", "TEXT"), ("prompt", "TEXT"), ("response", "TEXT"), ("prompt_tokens", "INTEGER"),
        ("response_tokens", "INTEGER"), ("seconds", "REAL"), ("extra", "TEXT"), ("created_at", "TEXT"),
    ),
    "judgments": (
        ("key", "TEXT PRIMARY KEY"), ("judge", "TEXT"), ("judge_digest", "TEXT"), ("prompt_version", "TEXT"),
        ("prompt_sha", "TEXT"), ("options", "TEXT"), ("item", "TEXT"), ("score", "REAL"), ("parsed", "INTEGER"),
        ("raw", "TEXT"), ("reason", "TEXT"), ("attempts", "INTEGER"), ("seconds", "REAL"), ("created_at", "TEXT"),
    ),
    # one pairwise verdict for one order (harness.pairwise): A = the response shown first
    "pairwise": (
        ("key", "TEXT PRIMARY KEY"), ("judge", "TEXT"), ("judge_digest", "TEXT"), ("prompt_version", "TEXT"),
        ("prompt_sha", "TEXT"), ("options", "TEXT"), ("task", "TEXT"), ("item_id", "TEXT"), ("item_sha", "TEXT"),
        ("order_shown", "TEXT"), ("sha_first", "TEXT"), ("sha_second", "TEXT"), ("verdict", "TEXT"),
        ("parsed", "INTEGER"), ("raw", "TEXT"), ("reason", "TEXT"), ("logp_a", "REAL"), ("logp_b", "REAL"),
        ("attempts", "INTEGER"), ("seconds", "REAL"), ("created_at", "TEXT"),
    ),
    # one human vote (harness.votes); status counted | review (its item or model is gone) | undone (kept)
    "votes": (
        ("key", "TEXT PRIMARY KEY"), ("task", "TEXT"), ("eval_set", "TEXT"), ("item_id", "TEXT"),
        ("prompt", "TEXT"), ("response_left", "TEXT"), ("response_right", "TEXT"), ("side_a", "TEXT"),
        ("model_a", "TEXT"), ("adapter_a", "TEXT"), ("model_b", "TEXT"), ("adapter_b", "TEXT"),
        ("seed_a", "INTEGER"), ("seed_b", "INTEGER"), ("sha_a", "TEXT"), ("sha_b", "TEXT"), ("len_a", "INTEGER"),
        ("len_b", "INTEGER"), ("choice", "TEXT"), ("winner", "TEXT"), ("reason", "TEXT"), ("source", "TEXT"),
        ("status", "TEXT"), ("note", "TEXT"), ("undone_at", "TEXT"), ("created_at", "TEXT"),
        ("session", "TEXT"),     # hash of the browser session that cast it; NULL = nobody's (CLI, import, old)
        ("checkpoint_a", "TEXT"), ("checkpoint_b", "TEXT"),   # models.checkpoint_hash of each side; NULL = old
    ),
}
_JSON_COLUMNS = {"config", "extra", "options", "item"}


def default_path() -> Path:
    return cache_dir() / "store.sqlite"


def content_key(*parts: Any) -> str:
    """sha256 of the canonical JSON of `parts` (sorted keys, no whitespace, UTF-8)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def generation_key(model: str, adapter_sha: str, config: dict, prompt: str, model_digest: str = "") -> str:
    """Key of one generation: base model (name + digest), adapter content sha256 ("" = base), config, prompt."""
    return content_key("generation", model, model_digest, adapter_sha or "", config, prompt)


def judgment_key(judge: str, judge_digest: str, prompt_version: str, prompt_sha: str, options: dict,
                 texts: dict) -> str:
    """Key of one judgment: judge model + digest, judge prompt version + file hash, options, the item's texts."""
    return content_key("judgment", judge, judge_digest, prompt_version, prompt_sha, options, texts)


def pairwise_key(judge: str, judge_digest: str, prompt_version: str, prompt_sha: str, options: dict, task: str,
                 item_id: str, item_sha: str, order: str, sha_first: str, sha_second: str) -> str:
    """Key of one pairwise verdict: judge + digest, prompt version + file hash, options, the item (id and a
    hash of its texts), the order shown ("ab" or "ba") and the hashes of the responses shown first and second."""
    return content_key("pairwise", judge, judge_digest, prompt_version, prompt_sha, options, task, item_id,
                       item_sha, order, sha_first, sha_second)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def open_store(store: "Store | str | Path | None" = None) -> Iterator["Store"]:
    """The Store given (left open), or the store at a path (None: the default) opened and closed for the block."""
    if isinstance(store, Store):
        yield store
        return
    with Store(store) as st:
        yield st


class Store:
    """The SQLite store. Safe to share between threads (one lock) and between processes (WAL, busy timeout)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=30000")
            # Several processes may open a new store at once: switching to WAL can answer "locked" at once,
            # without waiting on the busy timeout, so the set-up is retried for up to ~30 s.
            for attempt in range(60):
                try:
                    self._setup()
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or attempt == 59:
                        raise
                    time.sleep(0.05 + 0.01 * attempt)
        except sqlite3.DatabaseError as e:
            raise UserError(f"cannot open the store {self.path} ({e}): if it is damaged, move it aside "
                            f"(completed items in it would be redone) or set FTBENCH_CACHE to another folder") from None

    def _setup(self) -> None:
        if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: a killed process loses no commit
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserError(f"store {self.path} was written by a newer ftbench (schema {version}): "
                            f"upgrade, or pass another store path")
        have = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, cols in TABLES.items():
            if table not in have:
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} ("
                                 + ", ".join(f"{c} {t}" for c, t in cols) + ")")
                continue
            present = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for c, t in cols:
                if c not in present:
                    try:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {c} {t}")
                    except sqlite3.OperationalError as e:   # another process added it first
                        if "duplicate column" not in str(e):
                            raise
        if version != SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # ------------------------------------------------------------ basics
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _check(table: str) -> tuple[str, ...]:
        if table not in TABLES:
            raise UserError(f"unknown store table {table!r}: use one of {', '.join(TABLES)}")
        return tuple(c for c, _ in TABLES[table])

    def _row(self, table: str, values: tuple) -> dict:
        row = dict(zip(self._check(table), values))
        for c in _JSON_COLUMNS & row.keys():
            if row[c] is not None:
                row[c] = json.loads(row[c])
        if "parsed" in row and row["parsed"] is not None:
            row["parsed"] = bool(row["parsed"])
        return row

    # ------------------------------------------------------------ reads
    def get(self, table: str, keys: Iterable[str]) -> dict[str, dict]:
        """{key: row} for those of `keys` already stored."""
        cols = self._check(table)
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                q = f"SELECT {', '.join(cols)} FROM {table} WHERE key IN ({', '.join('?' * len(chunk))})"
                for values in self._db.execute(q, chunk):
                    row = self._row(table, values)
                    out[row["key"]] = row
        return out

    def count(self, table: str) -> int:
        self._check(table)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def rows(self, table: str, where: dict[str, Any] | None = None) -> list[dict]:
        """Every row of a table, oldest first; `where` keeps rows whose columns equal the values given."""
        cols = self._check(table)
        where = where or {}
        unknown = set(where) - set(cols)
        if unknown:
            raise ValueError(f"{table}: unknown columns {sorted(unknown)}")
        cond = " AND ".join(f"{c} = ?" for c in where)
        q = f"SELECT {', '.join(cols)} FROM {table}" + (f" WHERE {cond}" if cond else "") + " ORDER BY created_at, key"
        with self._lock:
            return [self._row(table, v) for v in self._db.execute(q, list(where.values()))]

    def responses(self, model: str | None = None, adapter: str | None = None) -> list[str]:
        """The stored generations' response texts, optionally of one model and adapter ("" = the base)."""
        q, args = "SELECT response FROM generations", []
        where = [(c, v) for c, v in (("model", model), ("adapter", adapter)) if v is not None]
        if where:
            q += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
            args = [v for _, v in where]
        with self._lock:
            return [v for (v,) in self._db.execute(q, args) if v is not None]

    # ------------------------------------------------------------ writes
    def put(self, table: str, rows: Iterable[dict]) -> int:
        """Insert (or replace) rows in one transaction; unknown fields are an error, missing ones NULL."""
        cols = self._check(table)
        batch = []
        for row in rows:
            extra = set(row) - set(cols)
            if extra or not row.get("key"):
                raise ValueError(f"{table} row: unknown fields {sorted(extra)} or no key")
            row = {"created_at": now_iso(), **row}
            batch.append(tuple(
                json.dumps(row.get(c), ensure_ascii=False, sort_keys=True) if c in _JSON_COLUMNS and row.get(c) is not None
                else (int(row[c]) if c == "parsed" and row.get(c) is not None else row.get(c))
                for c in cols))
        if not batch:
            return 0
        q = f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(q, batch)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(batch)

    def delete(self, table: str, keys: Iterable[str]) -> int:
        self._check(table)
        keys = list(keys)
        with self._lock:
            n = 0
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                n += self._db.execute(f"DELETE FROM {table} WHERE key IN ({', '.join('?' * len(chunk))})",
                                      chunk).rowcount
            return n

    # ------------------------------------------------------------ exports
    def export(self, table: str, path: str | Path) -> Path:
        """Write a table as JSONL (.jsonl) or CSV (.csv; JSON columns as JSON text), atomically."""
        path = Path(path)
        if path.suffix not in (".jsonl", ".csv"):
            raise UserError(f"export to {path}: use a .jsonl or .csv file name")
        from harness.io import atomic_writer, write_csv
        rows = self.rows(table)
        if path.suffix == ".csv":           # the one CSV writer: formula cells escaped like every CSV we write
            cols = list(self._check(table))
            write_csv(path, cols, [[json.dumps(r.get(k), ensure_ascii=False) if k in _JSON_COLUMNS and
                                    r.get(k) is not None else ("" if r.get(k) is None else r.get(k)) for k in cols]
                                   for r in rows])
            return path
        with atomic_writer(path) as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path
