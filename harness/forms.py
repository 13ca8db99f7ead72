"""Form-constrained decoding for classical Chinese poems (五言/七言 绝句 and 律诗).

A small model knows roughly what a 绝句 looks like but cannot count characters: SmolLM2's byte-level
tokenizer spends one to three tokens on a character, so "five characters" is not something it sees. This
logits processor makes the form a property of decoding instead of a hope: while a line is open only tokens
made of CJK ideographs that still fit the line are allowed; when the line is full the punctuation ("，\\n"
after odd lines, "。\\n" after even ones, "。" and EOS after the last) is forced. The model still chooses
every character; it only loses the ability to break the form.

    from harness.generation import GenerationConfig, generate_batch
    cfg = GenerationConfig(form="五言绝句", max_new_tokens=96)
    generate_batch(lm, [lm.render_instruction("写一首五言绝句，题目：春晓")], cfg)

Works for any tokenizer: byte-level BPE (GPT-2, SmolLM2, Qwen: a character may be split across tokens; the
processor tracks the pending UTF-8 bytes) and character-level vocabularies (BERT-style Chinese GPT-2).
"""
from __future__ import annotations

import functools
import hashlib
import weakref
from pathlib import Path

import numpy as np

from harness.metrics import FIXED_FORMS

# Ideographs the constraint lets a line hold: CJK Unified Ideographs and Extension A (all 3-byte UTF-8) ...
_ALLOWED = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF))
# ... and of those, the poem character set: the 3,500 characters most used in 全唐诗 (simplified), 99.2% of
# its character occurrences. A byte-level model that is kept from repeating 江 otherwise finishes the same
# lead bytes as 湙 or 湠; poets did not. Rebuild from the prepared data with `python -m harness.forms`.
CHARSET_FILE = Path(__file__).with_name("poem_chars_zh.txt")
CHARSET_SIZE = 3500
# per tokenizer object: its VocabTables and its tokens' bytes
_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_BYTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _ideograph(ch: str) -> bool:
    """One of the ideographs in _ALLOWED (before the charset narrows them)."""
    return any(a <= ord(ch) <= b for a, b in _ALLOWED)


@functools.lru_cache(maxsize=1)
def charset() -> tuple[str, np.ndarray]:
    """(sha256 prefix of the charset file, bool lookup over the BMP: is this code point allowed)."""
    allowed = np.zeros(0x10000, dtype=bool)
    if not CHARSET_FILE.is_file():          # no file: every ideograph in _ALLOWED
        for a, b in _ALLOWED:
            allowed[a:b + 1] = True
        return "", allowed
    raw = CHARSET_FILE.read_bytes()
    for ch in raw.decode("utf-8"):
        if _ideograph(ch):
            allowed[ord(ch)] = True
    return hashlib.sha256(raw).hexdigest()[:12], allowed


def build_charset(poems_jsonl: Path, size: int = CHARSET_SIZE, out: Path = CHARSET_FILE) -> tuple[int, float]:
    """Write the `size` most frequent ideographs of a poems JSONL (field "poem") to `out`, most frequent
    first, 50 per line. Returns (characters written, share of the corpus' ideograph occurrences covered)."""
    from collections import Counter

    from harness.io import iter_jsonl
    counts: Counter = Counter()
    for _, item in iter_jsonl(Path(poems_jsonl)):
        counts.update(ch for ch in item["poem"] if _ideograph(ch))
    top = [ch for ch, _ in counts.most_common(size)]
    body = "\n".join("".join(top[i:i + 50]) for i in range(0, len(top), 50)) + "\n"
    out.write_text(body, encoding="utf-8")
    return len(top), sum(counts[c] for c in top) / max(sum(counts.values()), 1)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character stand-ins for bytes, inverted (as in openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tok) -> list[bytes | None]:
    """The UTF-8 bytes each token id stands for; None for special tokens."""
    vocab_size = len(tok)
    pieces = tok.convert_ids_to_tokens(list(range(vocab_size)))
    special = set(tok.all_special_ids)
    dec = _byte_decoder()
    byte_level = sum(1 for p in pieces[:2000] if p and all(ch in dec for ch in p)) > 0.95 * min(2000, vocab_size)
    out: list[bytes | None] = []
    for i, p in enumerate(pieces):
        if i in special or p is None:
            out.append(None)
        elif byte_level and all(ch in dec for ch in p):
            out.append(bytes(dec[ch] for ch in p))
        else:
            out.append(tok.decode([i]).encode("utf-8"))   # character-level vocabularies: "春" -> b"\xe6\x98\xa5"
    return out


class VocabTables:
    """Per tokenizer: for a decoder state (bytes still needed to finish a character, code-point bits so far),
    which tokens continue a run of allowed ideographs, how many characters each completes and the state it
    leaves. Computed with numpy over the whole vocabulary, cached per state."""

    def __init__(self, tok):
        self.allowed = charset()[1]
        # prefixes of allowed characters: by lead byte nibble (2 bytes missing) and by 10 bits (1 missing)
        cps = np.nonzero(self.allowed)[0]
        self.prefix2 = np.zeros(16, dtype=bool)
        self.prefix2[cps >> 12] = True
        self.prefix1 = np.zeros(1 << 10, dtype=bool)
        self.prefix1[cps >> 6] = True
        self.count1 = np.bincount(cps >> 6, minlength=1 << 10)   # allowed characters per 10-bit prefix
        self.count2 = np.bincount(cps >> 12, minlength=16)       # ... per lead-byte nibble
        tb = token_bytes_cached(tok)
        width = max((len(b) for b in tb if b), default=1)
        self.bytes = np.zeros((len(tb), width), dtype=np.uint8)     # 262k tokens x the longest (Gemma): keep it small
        self.lengths = np.zeros(len(tb), dtype=np.int64)
        for i, b in enumerate(tb):
            if b:
                self.bytes[i, :len(b)] = list(b)
                self.lengths[i] = len(b)
        self._cache: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    def _could_be_allowed(self, need: np.ndarray, cp: np.ndarray) -> np.ndarray:
        """Could a character whose first bits are `cp`, with `need` continuation bytes to come, be allowed?"""
        return np.where(need == 2, self.prefix2[cp & 0xF], self.prefix1[cp & 0x3FF])

    def table(self, need: int, cp: int) -> tuple[np.ndarray, ...]:
        """(valid, completed characters, need after, code-point bits after, first completed code point or -1)
        for every token from this state."""
        key = (need, cp)
        if key not in self._cache:
            n_all = len(self.lengths)
            first = self.bytes[:, 0]
            # only tokens whose first byte fits the state can be valid: simulate just those (a few hundred)
            fits = ((first & 0xC0) == 0x80) if need else ((first & 0xF0) == 0xE0)
            idx = np.nonzero(fits & (self.lengths > 0))[0]
            parts = self._simulate(self.bytes[idx], self.lengths[idx], need, cp)
            out = (np.zeros(n_all, dtype=bool), np.zeros(n_all, dtype=np.int64), np.zeros(n_all, dtype=np.int64),
                   np.zeros(n_all, dtype=np.int64), np.full(n_all, -1, dtype=np.int64))
            for full, part in zip(out, parts):
                full[idx] = part
            self._cache[key] = out
        return self._cache[key]

    def _simulate(self, byts: np.ndarray, lengths: np.ndarray, need: int, cp: int):
        n_tok = len(lengths)
        valid = np.ones(n_tok, dtype=bool)
        s_need = np.full(n_tok, need, dtype=np.int64)
        s_cp = np.full(n_tok, cp, dtype=np.int64)
        done = np.zeros(n_tok, dtype=np.int64)
        first = np.full(n_tok, -1, dtype=np.int64)
        for j in range(byts.shape[1] if n_tok else 0):
            live = valid & (j < lengths)
            if not live.any():
                break
            b = byts[:, j]
            cont = (b & 0xC0) == 0x80
            lead3 = (b & 0xF0) == 0xE0
            # expecting a continuation byte
            mid = live & (s_need > 0)
            valid &= ~(mid & ~cont)
            mid &= cont
            s_cp = np.where(mid, (s_cp << 6) | (b & 0x3F), s_cp)
            s_need = np.where(mid, s_need - 1, s_need)
            finished = mid & (s_need == 0)
            valid &= ~(finished & ~self.allowed[s_cp & 0xFFFF])
            first = np.where(finished & (done == 0), s_cp, first)
            done += finished
            # expecting the lead byte of a new character: only 3-byte sequences are ideographs we allow
            start = live & ~mid & (s_need == 0) & valid
            valid &= ~(start & ~lead3)
            start &= lead3
            s_cp = np.where(start, b & 0x0F, s_cp)
            s_need = np.where(start, 2, s_need)
        pending = valid & (s_need > 0)
        valid &= ~pending | self._could_be_allowed(s_need, s_cp)
        return valid, done, s_need, s_cp, first


def _per_tokenizer(cache: "weakref.WeakKeyDictionary", tok, build):
    """build(tok), computed once per tokenizer object (not cached if the tokenizer is not weak-referenceable)."""
    try:
        return cache[tok]
    except (KeyError, TypeError):
        pass
    value = build(tok)
    try:
        cache[tok] = value
    except TypeError:
        pass
    return value


def vocab_tables(tok) -> VocabTables:
    return _per_tokenizer(_TABLES, tok, VocabTables)


def token_bytes_cached(tok) -> list[bytes | None]:
    return _per_tokenizer(_BYTES, tok, token_bytes)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


class RuleSets:
    """Rhyme and tone for FormConstraint: which characters each position of the poem allows, per row.

    rhyme: the last character of every even line (and of line 1 with rhyme_first_line) must be a 平声 character
    of the row's rhyme group: `rhyme_group` if given, else the 平声 groups of the first rhyme character the model
    writes (a 多音字 in two groups keeps both until a later rhyme narrows them); a rhyme character is not used
    twice. tone: the constrained positions (harness.rules.constrained_positions) follow a 平仄 template: a given
    name (True: any of the four) narrowed character by character to the templates the poem still fits, so the
    template is settled by the first line (where the live templates disagree, either tone, but a known one).
    Characters: the poem charset and the rhyme table (unknown ones are never allowed where a rule applies). One
    instance per FormConstraint."""

    def __init__(self, form: str, rhyme: bool, rhyme_group: str | None, tone: bool | str, rhyme_first_line: bool):
        from harness import rules
        from harness.errors import UserError

        self.table = rules.rhyme_table()
        self.rhyme, self.tone = rhyme, bool(tone)
        self.templates = rules.tone_templates(form)
        if isinstance(tone, str) and tone not in self.templates:
            raise UserError(f"no tone template {tone!r} for {form}; templates: {', '.join(self.templates)}")
        self.template = frozenset([tone] if isinstance(tone, str) else self.templates) if tone else None
        self.groups = frozenset([rules.resolve_group(rhyme_group)]) if rhyme_group else None
        self.rhyme_lines = set(rules.rhyme_lines(form, rhyme_first_line))
        self.free = set(range(FIXED_FORMS[form][1])) - set(rules.constrained_positions(FIXED_FORMS[form][1]))
        self.chars = FIXED_FORMS[form][1]
        allowed = charset()[1]
        level = {rules.PING: np.zeros(0x10000, dtype=bool), rules.ZE: np.zeros(0x10000, dtype=bool)}
        self.group_arr: dict[str, np.ndarray] = {g: np.zeros(0x10000, dtype=bool) for g in self.table.groups}
        for ch, gs in self.table.chars.items():
            o = ord(ch)
            if o < 0x10000 and allowed[o]:
                for g in gs:
                    self.group_arr[g][o] = True
                    level[self.table.groups[g].level][o] = True
        level["known"] = level[rules.PING] | level[rules.ZE]
        self.level_arr = level
        self.ping_groups = [g for g, info in self.table.groups.items() if info.level == rules.PING]
        self._cache: dict = {}

    def _levels(self, ch: str):
        return self.table.levels_of(ch)

    def char_done(self, st: dict, line: int, pos: int, ch: str) -> None:
        """Narrow the row's templates and rhyme groups by the character just written at (line, pos)."""
        if self.tone and st["template"] is not None and pos not in self.free:
            lv = self._levels(ch) or frozenset()
            live = frozenset(t for t in st["template"] if self.templates[t][line][pos] in lv)
            if live:
                st["template"] = live
        if self.rhyme and line in self.rhyme_lines and pos == self.chars - 1:
            gs = {g for g in (self.table.groups_of(ch) or ()) if g in self.ping_groups}
            if gs:
                st["groups"] = frozenset(gs) if st["groups"] is None else (st["groups"] & gs or st["groups"])
            st["used"] = st["used"] | {ch}
        elif self.rhyme and line == 0 and pos == self.chars - 1:
            st["used"] = st["used"] | {ch}       # a first line that happens to rhyme: its character is used too

    def allowed(self, st: dict, line: int, pos: int):
        """(bool array over the BMP, lead-nibble prefixes, 10-bit prefixes) of what (line, pos) allows; None if
        no rule applies there."""
        tone = None
        if self.tone and st["template"] is not None and pos not in self.free:
            want = {self.templates[t][line][pos] for t in st["template"]}
            tone = next(iter(want)) if len(want) == 1 else "known"    # templates disagree: either tone, never unknown
        rhyme = self.rhyme and line in self.rhyme_lines and pos == self.chars - 1
        if tone is None and not rhyme:
            return None
        key = (tone, rhyme and (st["groups"], st["used"]))
        if key not in self._cache:
            arr = self.level_arr[tone] if tone else None
            if rhyme:
                r = np.zeros(0x10000, dtype=bool)
                for g in (st["groups"] or self.ping_groups):
                    r |= self.group_arr[g]
                r &= self.level_arr["平"]
                for ch in st["used"]:
                    r[ord(ch)] = False
                arr = r if arr is None else arr & r
            cps = np.nonzero(arr)[0]
            p2 = np.zeros(16, dtype=bool)
            p2[cps >> 12] = True
            p1 = np.zeros(1 << 10, dtype=bool)
            p1[cps >> 6] = True
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = (arr, p2, p1)
        return self._cache[key]

    def mask(self, st: dict, ok: np.ndarray, done: np.ndarray, need: np.ndarray, cp: np.ndarray,
             first: np.ndarray, chars: int, token_bytes: list) -> np.ndarray:
        """ok narrowed to the tokens whose characters (complete or begun) keep the rules at their positions."""
        line, pos = st["line"], st["count"]
        s0 = self.allowed(st, line, pos)
        s1 = self.allowed(st, line, pos + 1) if pos + 1 < chars else None
        if s0 is None and s1 is None:
            return ok

        def prefix_ok(s, n, c):
            return np.where(n == 2, s[1][c & 0xF], s[2][c & 0x3FF])

        out = ok.copy()
        pending = need > 0
        if s0 is not None:
            out &= np.where(done == 0, ~pending | prefix_ok(s0, need, cp), s0[0][first & 0xFFFF])
        if s1 is not None:
            out &= ~((done == 1) & pending) | prefix_ok(s1, need, cp)
        for t in np.nonzero(out & (done >= 2))[0].tolist():       # tokens of several characters: check each
            raw = st["buf"] + (token_bytes[t] or b"")
            text = raw[:len(raw) - len(raw) % 3].decode("utf-8", errors="ignore")
            for k, ch in enumerate(text):
                s = self.allowed(st, line, pos + k) if pos + k < chars else None
                if s is not None and not s[0][ord(ch) & 0xFFFF]:
                    out[t] = False
                    break
        return out


class FormConstraint:
    """A transformers LogitsProcessor that keeps every row of a batch in `form` (see the module doc).

    no_repeat: also refuse a character pair (bigram) the poem already holds, the character-level form of
    no_repeat_ngram_size=2. A small model in a fixed form otherwise fills lines with "阴阴阴阴阴" or repeats
    its first line four times; real 绝句 almost never repeat a pair (a doubled character such as 萋萋 stays
    possible, once). One instance per generate() call: it remembers each row's place in the poem."""

    def __init__(self, tok, form: str, eos_id: int, no_repeat: bool = True, rhyme: bool = False,
                 rhyme_group: str | None = None, tone: bool | str = False, rhyme_first_line: bool = False):
        if form not in FIXED_FORMS:
            raise ValueError(f"no constrained decoding for form {form!r}; forms: {', '.join(FIXED_FORMS)}")
        self.form = form
        self.lines, self.chars = FIXED_FORMS[form]
        self.rules = RuleSets(form, rhyme or bool(rhyme_group), rhyme_group, tone, rhyme_first_line) \
            if (rhyme or rhyme_group or tone) else None
        self.tables = vocab_tables(tok)
        self.token_bytes = token_bytes_cached(tok)
        newline = _ids(tok, "\n")
        self.comma = _ids(tok, "，") + newline
        self.stop = _ids(tok, "。") + newline
        self.last = _ids(tok, "。") + [eos_id]
        self.eos = eos_id
        self.no_repeat = no_repeat
        self.width: int | None = None
        self.rows: list[dict] = []

    def _forced(self, line: int) -> list[int]:
        if line == self.lines - 1:
            return self.last
        return self.comma if line % 2 == 0 else self.stop

    def _advance(self, st: dict, token: int) -> None:
        if st["done"]:
            return
        if st["forced"]:
            st["forced"].pop(0)
            if not st["forced"]:
                st["line"] += 1
                st["count"] = 0
                st["done"] = st["line"] >= self.lines
            return
        valid, done, need, cp, _ = self.tables.table(st["need"], st["cp"])
        if not valid[token]:          # a token the mask did not allow (cannot happen unless scores were edited)
            st["done"] = True
            return
        st["count"] += int(done[token])
        st["need"], st["cp"] = int(need[token]), int(cp[token])
        st["buf"] += self.token_bytes[token] or b""
        cut = len(st["buf"]) - (3 - st["need"] if st["need"] else 0)     # keep a partial character's bytes
        new = st["buf"][:cut].decode("utf-8", errors="ignore")
        if self.rules:
            for k, ch in enumerate(new):
                self.rules.char_done(st, st["line"], st["count"] - len(new) + k, ch)
        for ch in new:
            if st["chars"]:
                st["pairs"].add((st["chars"][-1], ord(ch)))
            st["chars"].append(ord(ch))
        st["buf"] = st["buf"][cut:]

    def _no_repeat(self, st: dict, ok: np.ndarray, done: np.ndarray, first: np.ndarray, need: np.ndarray,
                   cp: np.ndarray) -> np.ndarray:
        """Refuse tokens that would add a character pair the poem already holds, and tokens that stop half-way
        into a character whose every completion would (a byte-level dead end)."""
        if st["chars"]:
            banned = [b for a, b in st["pairs"] if a == st["chars"][-1]]
            if banned:
                ok = ok & ~np.isin(first, banned)
                for n_missing, counts in ((1, self.tables.count1), (2, self.tables.count2)):
                    per_prefix: dict[int, int] = {}
                    for b in banned:
                        per_prefix[b >> (6 * n_missing)] = per_prefix.get(b >> (6 * n_missing), 0) + 1
                    dead = [p for p, k in per_prefix.items() if counts[p] <= k]
                    if dead:
                        ok = ok & ~((need == n_missing) & (done == 0) & np.isin(cp, dead))
        multi = np.nonzero(ok & (done >= 2))[0]          # tokens holding several characters: check inside them
        if len(multi):
            ok = ok.copy()
            for t in multi.tolist():
                raw = st["buf"] + (self.token_bytes[t] or b"")
                chars = [ord(c) for c in raw[:len(raw) - len(raw) % 3].decode("utf-8", errors="ignore")]
                seq = st["chars"][-1:] + chars
                pairs = list(zip(seq, seq[1:]))
                if len(set(pairs)) < len(pairs) or any(p in st["pairs"] for p in pairs):
                    ok[t] = False
        return ok

    def __call__(self, input_ids, scores):
        import torch

        if self.width is None:
            self.width = input_ids.shape[1]
            self.rows = [{"line": 0, "count": 0, "need": 0, "cp": 0, "forced": [], "done": False, "buf": b"",
                          "chars": [], "pairs": set(), "template": self.rules.template if self.rules else None,
                          "groups": self.rules.groups if self.rules else None, "used": frozenset()}
                         for _ in range(input_ids.shape[0])]
        elif input_ids.shape[1] > self.width:
            last = input_ids[:, -1].tolist()
            for st, token in zip(self.rows, last):
                self._advance(st, token)
        out = torch.full_like(scores, float("-inf"))
        vocab = scores.shape[1]
        for i, st in enumerate(self.rows):
            if st["done"]:
                out[i, self.eos] = 0.0
                continue
            if not st["forced"] and st["need"] == 0 and st["count"] >= self.chars:
                st["forced"] = list(self._forced(st["line"]))
            if st["forced"]:                 # whatever other processors said: the punctuation comes now
                out[i, st["forced"][0]] = 0.0
                continue
            valid, done, need, cp, first = self.tables.table(st["need"], st["cp"])
            ok = valid & (done + (need > 0) <= self.chars - st["count"])
            if self.rules:
                kept = self.rules.mask(st, ok, done, need, cp, first, self.chars, self.token_bytes)
                ok = kept if kept.any() else ok      # no token keeps the rules (cannot happen with byte tokens)
            if self.no_repeat:
                fresh = self._no_repeat(st, ok, done, first, need, cp)
                ok = fresh if fresh.any() else ok    # every way to finish this character repeats a pair: allow it
            allowed = torch.zeros(vocab, dtype=torch.bool)
            n = min(vocab, ok.shape[0])
            allowed[:n] = torch.from_numpy(ok[:n])
            row = scores[i].masked_fill(~allowed, float("-inf"))
            if torch.isinf(row).all():       # another processor ruled out every allowed token: keep the form
                row = torch.where(allowed, torch.zeros_like(row), row)
            out[i] = row
        return out


def main(argv: list[str] | None = None) -> int:
    """python -m harness.forms [POEMS_JSONL]: rebuild poem_chars_zh.txt (default: the prepared poems_zh train split)."""
    import sys

    from harness.paths import cache_dir
    args = sys.argv[1:] if argv is None else argv
    src = Path(args[0]) if args else cache_dir() / "data" / "poems_zh" / "train.jsonl"
    if not src.is_file():
        print(f"error: {src} not found: run `python -m harness data prepare poems_zh --data-dir DIR` first",
              file=sys.stderr)
        return 2
    n, cover = build_charset(src)
    print(f"{CHARSET_FILE}: {n} characters, {cover:.1%} of the ideographs in {src}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
