"""Test servers with real sockets on 127.0.0.1 (never imported by product code).

    from harness.testing.fake_ollama import FakeOllama      # Ollama's /api and /v1
    from harness.testing.fake_openai import FakeOpenAI      # vLLM / llama.cpp server's /v1
    from harness.testing import HTML_PAGE, drip, cut

Any chat answer of either fake may misbehave on the wire, as proxies and sick servers do:
    {"raw": HTML_PAGE}              a 200 whose body is a proxy's HTML error page, not JSON
    {"content": "x", **drip(1.0)}   headers at once, then the body one byte a second
    {"content": "x", **cut(20)}     headers and the first 20 bytes of the body, then the connection closes
drip and cut apply to streamed answers too (server-sent events, NDJSON).
"""
from __future__ import annotations

import hashlib
import json
import time

HTML_PAGE = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


def drip(seconds: float = 1.0) -> dict:
    """An answer option: send the body one byte every `seconds` (after the headers)."""
    return {"drip": seconds}


def cut(n: int) -> dict:
    """An answer option: send only the body's first `n` bytes, then close the connection."""
    return {"cut": n}


class Hangup(Exception):
    """Raised by wire_write once a cut answer has sent its bytes: the handler stops and the socket closes."""


def wire_write(handler, data: bytes) -> None:
    """handler.wfile.write(data) as the current answer's wire options say (handler.wire: drip / cut)."""
    wire = getattr(handler, "wire", None) or {}
    if wire.get("cut") is not None:
        left = int(wire["cut"]) - handler.__dict__.get("_sent", 0)
        handler.wfile.write(data[:max(0, left)])
        handler.wfile.flush()
        handler._sent = handler.__dict__.get("_sent", 0) + min(len(data), max(0, left))
        if left <= len(data):
            handler.close_connection = True
            raise Hangup()
        return
    if wire.get("drip"):
        for i in range(len(data)):
            handler.wfile.write(data[i:i + 1])
            handler.wfile.flush()
            time.sleep(float(wire["drip"]))
        return
    handler.wfile.write(data)


def fake_pairwise_answer(body: dict) -> str:
    """A deterministic pairwise answer for harness.testing.fake_ollama.FakeOllama(default=...): the winner is a hash
    of the prompt (so the two orders often disagree, like a weak judge), as JSON when a format is asked."""
    messages = body.get("messages") or [{}]
    h = int(hashlib.sha256(str(messages[-1].get("content", "")).encode()).hexdigest(), 16)
    winner = ("A", "B", "tie", "A")[h % 4]
    if body.get("format") or body.get("response_format"):
        return json.dumps({"winner": winner, "reason": "Follows the instruction more closely."})
    return f"Response {winner} is better." if winner != "tie" else "It's a tie."
