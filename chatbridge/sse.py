"""Server-Sent Events: reading an upstream's bytes, and the writer interface for clients.

The reader is a pure function of byte chunks, not requests' iter_lines, which is unsafe for
SSE (../shared/reference/pitfalls.md): a CRLF split across chunks makes a spurious blank line,
decode_unicode splits on U+2028 inside JSON, and a text/event-stream without a charset is
decoded as ISO-8859-1.
"""

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from .chat import Delta

LINE_END = re.compile(rb"\r\n|\r|\n")
PING = b": ping\n\n"


def iter_sse_data(chunks: Iterable) -> Iterator:
    """Yield ("data", text) per SSE event from raw byte chunks, however they are split.

    Lines end in CRLF, CR or LF, even across chunk edges; each line is decoded as UTF-8 only
    once complete. Comments are skipped. Lines that are not SSE fields (a raw JSON error
    tail) are collected and yielded last as ("raw", text).
    """
    buffer, data, raw = b"", [], []
    for chunk in chunks:
        buffer += chunk
        start = 0
        for match in LINE_END.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # maybe the first half of a CRLF split across reads
            event = sse_line(buffer[start:match.start()], data, raw)
            if event is not None:
                yield event
            start = match.end()
        buffer = buffer[start:]
    event = sse_line(buffer.rstrip(b"\r"), data, raw) if buffer else None
    if event is not None:
        yield event
    if data:
        yield "data", "\n".join(data)
    if raw:
        yield "raw", "\n".join(raw)


def sse_line(line: bytes, data: list, raw: list):
    """Take one SSE line; return a finished event at a blank line."""
    if not line:
        if data:
            event = ("data", "\n".join(data))
            data.clear()
            return event
        return None
    text = line.decode("utf-8", errors="replace")
    name, colon, value = text.partition(":")
    if name == "data":
        data.append(value[1:] if value.startswith(" ") else value)
    elif not text.startswith(":") and name not in ("event", "id", "retry"):
        raw.append(text)
    return None


def sse(obj: Any) -> bytes:
    """One SSE event; JSON unescaped, as the Persian source writes it."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


class StreamWriter:
    """Renders neutral deltas in one client protocol (one subclass per client API)."""

    headers: dict = {}
    content_type = "text/event-stream; charset=utf-8"
    ping = PING  # what keeps a silent stream alive; b"" for protocols that have no comments

    def start(self) -> bytes:
        return b""

    def event(self, delta: Delta) -> bytes:
        raise NotImplementedError

    def done(self) -> bytes:
        return b""

    def error(self, message: str) -> bytes:
        return sse({"error": message})
