"""Human votes: blind pairwise votes from the app's Compare tab, and labels files a team fills in offline.

    from harness.votes import cast_vote, list_votes, get_vote, undo_vote, tally
    vid = cast_vote(store, session=request.session_hash, prompt=p, response_left=l, response_right=r,
                    side_a="right", model_a="smollm2-135m-instruct", adapter_a="smollm2-135m-alpaca",
                    model_b="smollm2-135m-instruct", adapter_b="", seed_a=0, seed_b=0, choice="left",
                    task="chat", eval_set="instructions_own", item_id="instr-own-003")
    list_votes(store, session=s)    # this browser session's votes, newest first (undone ones included)
    get_vote(store, vid, session=s) # one of them; NotYourVote (a UserError) for another session's vote
    undo_vote(store, vid, session=s)  # a soft delete: kept for review, no longer counted; NotYourVote likewise
    tally(store)                    # the shared tally: every session's counted votes

    python -m harness labels export --output votes.csv          # or .jsonl
    python -m harness labels import votes.csv                   # every row checked first, then one transaction
    python -m harness labels push --to owner/ftbench-votes      # a private Hub dataset repo (or --to FOLDER)

Votes belong to the browser session that cast them: the store keeps a hash of the session id (never the id
itself), and with a session the app lists, reviews and undoes only that session's votes. Votes without a
session (imported, cast before sessions were recorded) belong to nobody: no visitor sees them, but they are
counted, tallied, compared with the judges and exported like every other vote. `session=None` (the CLI) sees
all. On a Space the default store is harness.paths.votes_store_path() (persistent storage when writable).

A vote names the two answers by role: A and B are the two systems (model + adapter + seed), left and right
are where the voter saw them (`side_a` says where A was). `winner` is stored as a | b | tie | both_bad, with
the sha256 of each answer, so a judge's verdict on the same pair of answers can be matched to it later
(harness.agreement). Status: counted; review (the item, eval set, base or adapter it names no longer exists:
kept, not counted, and cast_vote raises VoteKept, a UserError saying so); undone (kept, not counted).

Labels files (CSV with a header, or JSONL) need the columns eval_set, item_id and winner (a, b, tie or
both_bad), and either sha_a and sha_b or response_a and response_b. Optional: label_id (kept as the vote id,
so a re-import replaces instead of duplicating), task, model_a, adapter_a, model_b, adapter_b, seed_a,
seed_b, side_a (left | right), reason, prompt, session (the hash `labels export` writes). Every problem is
reported as file:line and nothing is imported until the whole file is valid. CSV cells that `labels export`
escaped against spreadsheet formulas (harness.io.csv_escape) are read back unescaped.
"""
from __future__ import annotations

import hashlib
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.io import check_writable_file, csv_unescape, read_table, text_sha, write_csv, write_jsonl
from harness.paths import votes_store_path
from harness.store import Store, content_key, now_iso, open_store

SIDES = ("left", "right")
CHOICES = ("left", "right", "tie", "both_bad")
WINNERS = ("a", "b", "tie", "both_bad")
EXPORT_COLUMNS = ("label_id", "created_at", "status", "note", "task", "eval_set", "item_id", "model_a",
                  "adapter_a", "model_b", "adapter_b", "seed_a", "seed_b", "side_a", "choice", "winner", "reason",
                  "sha_a", "sha_b", "source", "session", "prompt", "response_a", "response_b")
_SHA = re.compile(r"[0-9a-f]{64}")
_SESSION = re.compile(r"[0-9a-f]{32}")
NOT_YOURS = "That vote was cast in another browser session; you can review or undo only your own votes."
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class VoteKept(UserError):
    """The vote was stored for review (not counted) because what it names no longer exists."""

    def __init__(self, message: str, vote_id: str):
        super().__init__(message)
        self.vote_id = vote_id


class NotYourVote(UserError):
    """A visitor named a vote another browser session cast (or one nobody owns): refused, nothing changed."""

    def __init__(self, vote_id: str):
        super().__init__(NOT_YOURS)
        self.vote_id = vote_id


def session_hash(session: str) -> str:
    """What the store keeps of a browser session id: a sha256 prefix, so an export never holds a live id."""
    return hashlib.sha256(f"ftbench-session\0{session}".encode("utf-8")).hexdigest()[:32]


def _store(store: Store | str | Path | None):
    """open_store, with the votes' default: the votes store (persistent storage on a Space)."""
    return open_store(votes_store_path() if store is None else store)


def winner_of(choice: str, side_a: str) -> str:
    """The voter's button (left/right/tie/both_bad) -> a/b/tie/both_bad, given where A was shown."""
    if choice in ("tie", "both_bad"):
        return choice
    return "a" if choice == side_a else "b"


def gone(task: str, eval_set: str, item_id: str, models: list[tuple[str, str]]) -> str:
    """'' if the eval set item and every model/adapter still exist; otherwise what is missing, as a phrase."""
    from harness.models import find_adapter, resolve_base

    problems = []
    if eval_set:
        from harness.data import list_eval_sets, load_eval_set
        if eval_set not in list_eval_sets():
            problems.append(f"eval set {eval_set!r} no longer exists")
        else:
            es = load_eval_set(eval_set)
            if item_id and item_id not in {str(it["id"]) for it in es.items}:
                problems.append(f"item {item_id!r} is no longer in eval set {eval_set!r}")
    for model, adapter in models:
        if model:
            try:
                resolve_base(model)
            except UserError:
                problems.append(f"base model {model!r} is no longer registered")
        if adapter and adapter != "base":
            try:
                find_adapter(adapter)
            except UserError:
                problems.append(f"adapter {adapter!r} no longer exists")
    return "; ".join(dict.fromkeys(problems))


def cast_vote(store: Store | str | Path | None, *, session: str, prompt: str, response_left: str,
              response_right: str, side_a: str, model_a: str, adapter_a: str, model_b: str, adapter_b: str,
              seed_a: int | None, seed_b: int | None, choice: str, task: str = "chat", eval_set: str = "",
              item_id: str = "", checkpoint_a: str = "", checkpoint_b: str = "") -> str:
    """Store one blind vote and return its id. session: the browser session casting it (its hash is stored);
    side_a: where A was shown ("left" | "right"); choice: the button pressed ("left" | "right" | "tie" |
    "both_bad"); checkpoint_a/_b: each side's weights hash (harness.models.checkpoint_hash), so a vote names the
    same checkpoint wherever its files live. A vote whose item, eval set, base or adapter no longer exists is stored with status "review"
    (not counted) and VoteKept (a UserError) says why."""
    if not isinstance(session, str) or not session.strip():
        raise UserError("a vote needs the browser session that casts it: reload the page and vote again")
    if side_a not in SIDES:
        raise UserError(f"side_a must be left or right, got {side_a!r}")
    if choice not in CHOICES:
        raise UserError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    if not str(response_left).strip() or not str(response_right).strip():
        raise UserError("both answers must be non-empty to vote: generate both sides first")
    resp_a, resp_b = (response_left, response_right) if side_a == "left" else (response_right, response_left)
    problem = gone(task, eval_set, item_id, [(model_a, adapter_a), (model_b, adapter_b)])
    vote_id = uuid.uuid4().hex[:16]
    with _store(store) as st:
        st.put("votes", [{
            "key": vote_id, "task": task, "eval_set": eval_set, "item_id": item_id, "prompt": prompt,
            "response_left": response_left, "response_right": response_right, "side_a": side_a,
            "model_a": model_a, "adapter_a": adapter_a or "", "model_b": model_b, "adapter_b": adapter_b or "",
            "seed_a": seed_a, "seed_b": seed_b, "sha_a": text_sha(resp_a), "sha_b": text_sha(resp_b),
            "len_a": len(resp_a), "len_b": len(resp_b), "choice": choice, "winner": winner_of(choice, side_a),
            "reason": "", "source": "app", "status": "review" if problem else "counted", "note": problem,
            "session": session_hash(session), "checkpoint_a": checkpoint_a or None,
            "checkpoint_b": checkpoint_b or None}])
    if problem:
        raise VoteKept(f"vote {vote_id} kept for review, not counted: {problem}. Regenerate the comparison "
                       f"from an existing eval set and models to vote again", vote_id)
    return vote_id


def list_votes(store: Store | str | Path | None = None, limit: int = 50, include_undone: bool = True,
               session: str | None = None) -> list[dict]:
    """The newest `limit` votes (dicts with "id", status counted | review | undone, and every stored field).
    session: only the votes that browser session cast (an empty session owns none); None: every vote."""
    if session is not None and not str(session).strip():
        return []
    with _store(store) as st:
        rows = st.rows("votes", None if session is None else {"session": session_hash(session)})
    rows = [r for r in rows if include_undone or r["status"] != "undone"]
    rows.sort(key=lambda r: (r["created_at"] or "", r["key"]), reverse=True)
    return [{"id": r["key"], **r} for r in rows[:max(0, int(limit))]]


def _owned(st: Store, vote_id: str, session: str | None) -> dict | None:
    """The stored vote (None if there is none); NotYourVote if `session` is given and did not cast it."""
    row = st.get("votes", [str(vote_id)]).get(str(vote_id))
    if row is not None and session is not None and (
            not str(session).strip() or row.get("session") != session_hash(session)):
        raise NotYourVote(str(vote_id))
    return row


def get_vote(store: Store | str | Path | None, vote_id: str, session: str | None) -> dict:
    """One vote (as list_votes gives it) for review. NotYourVote if another session cast it (session=None: any
    vote); UserError if there is no such vote."""
    with _store(store) as st:
        row = _owned(st, vote_id, session)
    if row is None:
        raise UserError(f"there is no vote {str(vote_id)[:40]!r}: pick one from your votes' list")
    return {"id": row["key"], **row}


def undo_vote(store: Store | str | Path | None, vote_id: str, session: str | None = None) -> bool:
    """Mark a vote undone (kept for review, no longer counted). False if there is no such counted vote;
    NotYourVote (nothing changed) if `session` is given and another session cast it."""
    with _store(store) as st:
        row = _owned(st, vote_id, session)
        if row is None or row["status"] == "undone":
            return False
        st.put("votes", [{**row, "status": "undone", "undone_at": now_iso()}])
    return True


def counted_votes(store: Store | str | Path | None = None) -> list[dict]:
    """Every session's counted votes (the tally and the judges' agreement are shared)."""
    with _store(store) as st:
        return st.rows("votes", {"status": "counted"})


def tally(store: Store | str | Path | None = None) -> dict[str, int]:
    """The shared tally over every session: counted, a, b, tie, both_bad (counted votes by winner), review,
    undone."""
    with _store(store) as st:
        rows = st.rows("votes")
    out = {k: 0 for k in ("counted", *WINNERS, "review", "undone")}
    for r in rows:
        if r["status"] == "counted":
            out["counted"] += 1
            if r["winner"] in WINNERS:
                out[r["winner"]] += 1
        elif r["status"] in ("review", "undone"):
            out[r["status"]] += 1
    return out


# ---------------------------------------------------------------- labels files

def read_labels(path: str | Path) -> list[dict]:
    """Validate a labels file (see the module docstring); vote rows ready for the store. All errors at once,
    as file:line, in one UserError; nothing is returned half-checked."""
    from harness.data import list_eval_sets, load_eval_set

    p = Path(path)
    if p.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"labels file {p}: use a .csv or .jsonl file")
    rows = read_table(p, ("eval_set", "item_id", "winner"), "labels file")
    if p.suffix.lower() == ".csv":   # labels export escaped formula cells (io.csv_escape): read the texts back
        rows = [(line, {k: csv_unescape(v) if isinstance(v, str) else v for k, v in row.items()}) for line, row in rows]
    known = set(list_eval_sets())
    if not rows:
        raise UserError(f"labels file {p} holds no labels")
    errors: list[str] = []
    sets: dict[str, set[str] | None] = {}
    seen: dict[str, int] = {}
    out = []
    for line, row in rows:
        def bad(msg: str) -> None:
            errors.append(f"{p}:{line}: {msg}")
        get = lambda k: "" if row.get(k) is None else str(row.get(k)).strip()  # noqa: E731
        eval_set, item_id, winner = get("eval_set"), get("item_id"), get("winner").lower()
        if eval_set not in sets:
            sets[eval_set] = {str(it["id"]) for it in load_eval_set(eval_set).items} if eval_set in known else None
        if sets[eval_set] is None:
            bad(f"unknown eval set {eval_set!r}")
        elif item_id not in sets[eval_set]:
            bad(f"unknown item id {item_id!r} in eval set {eval_set!r}")
        if winner not in WINNERS:
            bad(f"winner {row.get('winner')!r} must be one of {', '.join(WINNERS)}")
        side = get("side_a").lower()
        if side not in ("",) + SIDES:
            bad(f"side_a {row.get('side_a')!r} must be left, right or empty")
        shas = {}
        for s in ("a", "b"):
            sha, resp = get(f"sha_{s}").lower(), row.get(f"response_{s}")
            if resp not in (None, ""):
                if sha and sha != text_sha(str(resp)):
                    bad(f"sha_{s} does not match response_{s}")
                sha = text_sha(str(resp))
            if not sha:
                bad(f"missing sha_{s} (or response_{s})")
            elif not _SHA.fullmatch(sha):
                bad(f"sha_{s} {sha[:20]!r} is not a sha256 hex digest")
            shas[s] = sha
        seeds = {}
        for s in ("seed_a", "seed_b"):
            v = get(s)
            if v and not re.fullmatch(r"-?\d+", v):
                bad(f"{s} {v!r} must be an integer")
            seeds[s] = int(v) if re.fullmatch(r"-?\d+", v or "x") else None
        session = get("session").lower()
        if session and not _SESSION.fullmatch(session):
            bad(f"session {session[:40]!r} must be empty or a session hash from `labels export` (32 hex digits)")
        label_id = get("label_id") or get("vote_id")
        if label_id and not _ID.fullmatch(label_id):
            bad(f"label_id {label_id!r} may use letters, digits, '.', '_', ':' and '-' only")
        key = label_id or content_key("label", eval_set, item_id, shas.get("a"), shas.get("b"), winner)[:16]
        if key in seen:
            bad(f"label {key!r} repeats line {seen[key]}")
        seen[key] = line
        resp_a, resp_b = row.get("response_a") or "", row.get("response_b") or ""
        out.append({
            "key": key, "task": get("task") or "chat", "eval_set": eval_set, "item_id": item_id,
            "prompt": get("prompt"), "response_left": "", "response_right": "", "side_a": side,
            "model_a": get("model_a"), "adapter_a": get("adapter_a"), "model_b": get("model_b"),
            "adapter_b": get("adapter_b"), **seeds, "sha_a": shas.get("a"), "sha_b": shas.get("b"),
            "len_a": len(resp_a) if resp_a else None, "len_b": len(resp_b) if resp_b else None,
            "choice": _choice_of(winner, side), "winner": winner, "reason": get("reason"),
            "source": f"import:{p.name}", "status": "counted", "note": "", "session": session or None})
        if side and resp_a and resp_b:
            out[-1]["response_left"], out[-1]["response_right"] = ((resp_a, resp_b) if side == "left"
                                                                   else (resp_b, resp_a))
    if errors:
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise UserError(f"nothing imported: {len(errors)} problem(s) in {p}{more}:\n  " + "\n  ".join(errors[:10]))
    return out


def _choice_of(winner: str, side: str) -> str:
    if winner in ("tie", "both_bad") or side not in SIDES:
        return winner
    other = "right" if side == "left" else "left"
    return side if winner == "a" else other


def import_labels(store: Store | str | Path | None, path: str | Path) -> int:
    """Validate the whole file, then store every label in ONE transaction (a re-import replaces by id)."""
    rows = read_labels(path)
    with _store(store) as st:
        return st.put("votes", rows)


def _export_row(r: dict) -> dict[str, Any]:
    side = r.get("side_a") or ""
    left, right = r.get("response_left") or "", r.get("response_right") or ""
    resp_a, resp_b = (left, right) if side == "left" else (right, left) if side == "right" else ("", "")
    return {**{c: r.get(c) for c in EXPORT_COLUMNS}, "label_id": r["key"], "response_a": resp_a,
            "response_b": resp_b}


def write_labels(out: Path, store: Store | str | Path | None = None) -> tuple[int, int]:
    """Every stored vote, oldest first, as a labels file (.csv through io.write_csv, which escapes formula
    cells; or .jsonl); returns (votes, counted)."""
    rows = [_export_row(r) for r in reversed(list_votes(store, limit=10**9))]
    if out.suffix.lower() == ".csv":
        write_csv(out, list(EXPORT_COLUMNS), [[("" if r[c] is None else r[c]) for c in EXPORT_COLUMNS] for r in rows])
    else:
        write_jsonl(out, rows)
    return len(rows), sum(r["status"] == "counted" for r in rows)


def labels_export_cmd(output: str, store: str | None = None) -> int:
    """Write every stored vote (counted, for review and undone; see `status`) to a CSV or JSONL labels file.

    output: the .csv or .jsonl file to write (a spreadsheet can fill in `winner` and `reason`)
    store: the store file (default: the votes store; on a Space with persistent storage, the one there)
    """
    out = Path(output)
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"--output {out}: use a .csv or .jsonl file name")
    check_writable_file(out)
    n, counted = write_labels(out, store)
    print(f"{n} votes ({counted} counted) -> {out}")
    return 0


_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def is_repo_id(to: str) -> bool:
    """`labels push --to`: owner/name is a Hub dataset repo, unless it is an existing folder; anything else
    (an absolute or ./ path, a single name) is a local folder."""
    return bool(_REPO_ID.fullmatch(to)) and not Path(to).expanduser().is_dir()


def _hub_problem(repo: str, e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    name = type(e).__name__
    if name == "OfflineModeIsEnabled":
        return ("cannot push to the Hugging Face Hub while HF_HUB_OFFLINE is set: unset it, or push to a folder "
                "with --to DIR")
    if name == "LocalTokenNotFoundError" or status == 401:
        return (f"the Hugging Face Hub refused to write {repo} without a valid token: set HF_TOKEN to a token with "
                f"write access (on a Space, as a secret) or run `hf auth login`")
    if status == 403:
        return f"your Hugging Face token may not write to {repo}: use a token with write access to it"
    if name == "HFValidationError":
        return f"--to {repo!r} is not a valid dataset repo id: use owner/name, or a folder path"
    if status:
        return f"the Hugging Face Hub answered {status} for {repo}: try again later, or push to a folder with --to DIR"
    detail = str(e).splitlines()[0][:120] if str(e) else name
    return (f"cannot reach the Hugging Face Hub ({detail}): check the connection (HF_ENDPOINT), or push to a "
            f"folder with --to DIR and upload it later")


def labels_push_cmd(to: str, filename: str = "votes.jsonl", store: str | None = None, private: bool = True) -> int:
    """Push every stored vote to a Hugging Face dataset repo, or write it into a local folder, as one labels
    file (the columns of `labels export`; `labels import` reads it back). A Space owner collects votes this way.

    to: a Hub dataset repo (owner/name, made if missing; needs HF_TOKEN) or a folder (./votes, /tmp/votes)
    filename: the file's name in the repo or folder (.jsonl or .csv); a push replaces the previous file
    store: the store file (default: the votes store; on a Space with persistent storage, the one there)
    private: a repo created by the push is private (the votes hold prompts and answers)
    """
    name = Path(filename)
    if name.name != filename or name.suffix.lower() not in (".csv", ".jsonl") or filename.startswith("."):
        raise UserError(f"--filename {filename!r}: use a plain file name ending in .jsonl or .csv, e.g. votes.jsonl")
    if not str(to).strip():
        raise UserError("--to is empty: give a dataset repo id (owner/name) or a folder")
    if not is_repo_id(to):
        out = check_writable_file(Path(to).expanduser() / filename, "--to")
        n, counted = write_labels(out, store)
        print(f"{n} votes ({counted} counted) -> {out}")
        return 0
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.constants import ENDPOINT
    except ImportError:
        raise UserError("pushing to the Hub needs huggingface_hub (pip install huggingface_hub); or push to a "
                        "folder with --to DIR") from None
    with tempfile.TemporaryDirectory(prefix="ftbench-push-") as tmp:
        out = Path(tmp) / filename
        n, counted = write_labels(out, store)
        api = HfApi()
        try:
            api.create_repo(to, repo_type="dataset", private=private, exist_ok=True)
            api.upload_file(path_or_fileobj=str(out), path_in_repo=filename, repo_id=to, repo_type="dataset",
                            commit_message=f"ftbench votes: {n} ({counted} counted)")
        except Exception as e:    # noqa: BLE001 - every Hub failure is one sentence at this door
            raise UserError(_hub_problem(to, e)) from None
    print(f"{n} votes ({counted} counted) -> {ENDPOINT}/datasets/{to} ({filename})")
    return 0


def labels_import_cmd(input: str, /, store: str | None = None) -> int:  # noqa: A002 - the CLI's positional name
    """Import pairwise labels from a CSV or JSONL file (checked line by line first; all or nothing). Columns:
    eval_set, item_id, winner (a|b|tie|both_bad), sha_a/sha_b or response_a/response_b; optional label_id,
    side_a, model_a, adapter_a, model_b, adapter_b, reason, prompt, session (a hash from `labels export`).

    input: the labels file (.csv or .jsonl): eval_set, item_id, winner, sha_a/sha_b or response_a/response_b
    store: the store file (default: the votes store; on a Space with persistent storage, the one there)
    """
    with _store(store) as st:
        n = import_labels(st, input)
        where = st.path
    print(f"imported {n} labels from {input} into {where}")
    return 0
