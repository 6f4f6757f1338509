"""Server-Sent Events: reading an upstream's bytes, and the writer interface for clients.

The reader is a pure function of byte chunks, not requests' iter_lines, which is unsafe for
SSE (../shared/reference/pitfalls.md): a CRLF split across chunks makes a spurious blank line,
decode_unicode splits on U+2028 inside JSON, and a text/event-stream without a charset is
decoded as ISO-8859-1.
"""

import json
from collections.abc import Iterable, Iterator
from typing import Any

from .chat import Delta

PING = b": ping\n\n"
# json.dumps builds a new encoder on every call that passes options; once per chunk that
# showed in the profile (issue 13), so the writers share this one
encode_json = json.JSONEncoder(ensure_ascii=False).encode


def iter_sse_data(chunks: Iterable) -> Iterator:
    """Yield ("data", text) per SSE event from raw byte chunks, however they are split.

    Lines end in CRLF, CR or LF, even across chunk edges; each line is decoded as UTF-8 only
    once complete. Comments are skipped. Lines that are not SSE fields (a raw JSON error
    tail) are collected and yielded last as ("raw", text). The relay's markers (chat.FLUSH,
    chat.SILENCE) pass through where they come.
    """
    pending, data, raw = b"", [], []
    for chunk in chunks:
        if chunk.__class__ is Delta:
            yield chunk
            continue
        pending = line_feeds(pending + chunk)
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):  # the common case first: one bytes test per line
                data.append(field_value(line[5:]))
            elif line:
                other_line(line, raw)
            elif data:
                yield "data", data[0] if len(data) == 1 else "\n".join(data)
                data = []
    last = pending.rstrip(b"\r")
    if last.startswith(b"data:"):
        data.append(field_value(last[5:]))
    elif last:
        other_line(last, raw)
    if data:
        yield "data", "\n".join(data)
    if raw:
        yield "raw", "\n".join(raw)


def line_feeds(buffer: bytes) -> bytes:
    """CRLF and CR line ends made LF; a CR at the very end stays, as it may be the first half
    of a CRLF split across reads (it is made LF once the next byte has come)."""
    if b"\r" not in buffer:
        return buffer
    held = buffer.endswith(b"\r")
    buffer = (buffer[:-1] if held else buffer).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return buffer + b"\r" if held else buffer


def field_value(value: bytes) -> str:
    """An SSE field's value: one leading space dropped, decoded as UTF-8."""
    return (value[1:] if value[:1] == b" " else value).decode("utf-8", errors="replace")


def other_line(line: bytes, raw: list) -> None:
    """A line other than data: comments and the other SSE fields are skipped; anything else
    (an error body after the events) is kept for the raw tail."""
    text = line.decode("utf-8", errors="replace")
    name = text.partition(":")[0]
    if not text.startswith(":") and name not in ("event", "id", "retry"):
        raw.append(text)


def sse(obj: Any) -> bytes:
    """One SSE event; JSON unescaped, as the Persian source writes it."""
    return b"data: " + encode_json(obj).encode() + b"\n\n"


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
