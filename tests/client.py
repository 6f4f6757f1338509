"""Small HTTP helpers the integration tests share."""

import json

import requests

TIMEOUT = 30


def post_chat(server, body, **kwargs) -> requests.Response:
    """POST a JSON body to /api/chat of a running server, streaming the response."""
    return requests.post(server.url + "/api/chat", json=body, stream=True, timeout=TIMEOUT, **kwargs)


def events(response: requests.Response) -> list:
    """Every SSE data payload of a finished response, parsed as JSON; comments dropped."""
    text = response.content.decode("utf-8")
    assert text.endswith("\n\n"), "events end with a real blank line, not a literal backslash-n"
    payloads = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            assert all(line.startswith("data: ") for line in lines), block
            payloads.append(json.loads("\n".join(line[6:] for line in lines)))
    return payloads


def shape_a_text(payloads: list, kind: str = "text") -> str:
    """The joined deltas of one kind from a Shape A stream."""
    return "".join(p[kind] for p in payloads if kind in p)


def shape_b_text(payloads: list, field: str = "content") -> str:
    """The joined deltas of one field from a Shape B chunk stream."""
    return "".join(p["choices"][0]["delta"].get(field) or "" for p in payloads if p.get("choices"))
