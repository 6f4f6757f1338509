"""Small HTTP helpers the integration tests share: requests to a running server and the one
SSE reader every test uses."""

import json
import re

import requests

TIMEOUT = 30
LINE_END = re.compile(r"\r\n|\r|\n")  # not str.splitlines: U+2028 may stand inside JSON


def post_chat(server, body, **kwargs) -> requests.Response:
    """POST a JSON body to /api/chat of a running server, streaming the response."""
    return requests.post(server.url + "/api/chat", json=body, stream=True, timeout=TIMEOUT, **kwargs)


def ask(server, text="hi", *, model="gemini-2.5-flash", headers=None, **fields) -> requests.Response:
    """A Shape B request (non-streaming unless fields say otherwise), the simplest way to see
    the final status."""
    return post_chat(server, {"user_content": text, "model": model, **fields}, headers=headers)


def sse_data(body: bytes | str) -> list:
    """The data payloads of an SSE body, as strings: CRLF, CR and LF all end a line, comments
    are dropped, every other line must be `data: ...`, and an event ends at a blank line."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    payloads, lines = [], []
    for line in LINE_END.split(text):
        if not line and lines:
            payloads.append("\n".join(lines))
            lines = []
        elif line and not line.startswith(":"):
            assert line.startswith("data: "), f"not a data line: {line!r}"
            lines.append(line[len("data: "):])
    return payloads


def events(response: requests.Response) -> list:
    """Every SSE data payload of a finished response, parsed as JSON; comments dropped."""
    body = response.content
    assert body.endswith(b"\n\n"), "events end with a real blank line, not a literal backslash-n"
    return [json.loads(data) for data in sse_data(body)]


def shape_a_text(payloads: list, kind: str = "text") -> str:
    """The joined deltas of one kind from a Shape A stream."""
    return "".join(p[kind] for p in payloads if kind in p)


def shape_b_text(payloads: list, field: str = "content") -> str:
    """The joined deltas of one field from a Shape B chunk stream."""
    return "".join(p["choices"][0]["delta"].get(field) or "" for p in payloads if p.get("choices"))
