"""Test servers with real sockets on 127.0.0.1 (never imported by product code).

    from harness.testing.fake_ollama import FakeOllama      # Ollama's /api and /v1
    from harness.testing.fake_openai import FakeOpenAI      # vLLM / llama.cpp server's /v1
    from harness.testing import HTML_PAGE, drip, cut

Both fakes are built on harness.testing.fake_server (the threaded server, request log, answer queue and wire faults
they share); each keeps only its protocol.

Any chat answer of either fake may misbehave on the wire, as proxies and sick servers do:
    {"raw": HTML_PAGE}              a 200 whose body is a proxy's HTML error page, not JSON
    {"content": "x", **drip(1.0)}   headers at once, then the body one byte a second
    {"content": "x", **cut(20)}     headers and the first 20 bytes of the body, then the connection closes
drip and cut apply to streamed answers too (server-sent events, NDJSON).
"""
from __future__ import annotations

import hashlib
import json

from harness.testing.fake_server import HTML_PAGE, Hangup, cut, drip, wire_write

__all__ = ["HTML_PAGE", "Hangup", "cut", "drip", "wire_write", "fake_pairwise_answer"]


def fake_pairwise_answer(body: dict) -> str:
    """A deterministic pairwise answer for harness.testing.fake_ollama.FakeOllama(default=...): the winner is a hash
    of the prompt (so the two orders often disagree, like a weak judge), as JSON when a format is asked."""
    messages = body.get("messages") or [{}]
    h = int(hashlib.sha256(str(messages[-1].get("content", "")).encode()).hexdigest(), 16)
    winner = ("A", "B", "tie", "A")[h % 4]
    if body.get("format") or body.get("response_format"):
        return json.dumps({"winner": winner, "reason": "Follows the instruction more closely."})
    return f"Response {winner} is better." if winner != "tie" else "It's a tie."
