"""Each response names its request (X-Request-ID), and so does its log line; every logger's
records are escaped like ChatBridge's own (issue 11: protection, and item 10)."""

import logging
import re
import time

import pytest

from tests.client import post_chat


def test_every_response_carries_a_request_id(client):
    ids = {client.get(path).headers["X-Request-ID"] for path in ("/healthz", "/nothing", "/")}
    assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    refused = client.post("/v1/chat/completions", json={"messages": []})
    assert refused.status_code == 400 and re.fullmatch(r"[0-9a-f]{32}", refused.headers["X-Request-ID"])


@pytest.mark.parametrize("sent, kept", [
    ("req-2026-11-29:abc.DEF_1", True),
    ("x" * 129, False),
    ("has space", False),
    ("new\nline", False),
    ("", False),
])
def test_a_sane_request_id_from_the_client_is_kept(client, sent, kept):
    if "\n" in sent:  # no HTTP client sends a newline in a header; a tab is its closest kin
        sent = sent.replace("\n", "\t")
    answer = client.get("/healthz", headers={"X-Request-ID": sent}).headers["X-Request-ID"]
    assert (answer == sent) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", answer)


def test_cors_lets_a_browser_read_the_request_id(client):
    response = client.get("/healthz", headers={"Origin": "http://localhost:3000"})
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]


def test_the_log_line_names_the_request(server, gemini):
    response = post_chat(server, {"message": "hi"}, headers={"X-Request-ID": "trace-me-0042"})
    assert response.headers["X-Request-ID"] == "trace-me-0042"
    assert response.content.endswith(b'{"done": true}\n\n')
    time.sleep(0.3)
    lines = [line for line in server.log().splitlines() if "id=trace-me-0042 " in line]
    assert len(lines) == 1 and "POST /api/chat 200 shape=A" in lines[0]


def test_other_loggers_cannot_forge_a_line_either(make_app, capsys):
    make_app()
    logging.getLogger("some.library").warning("broken\n[2026-01-01] [INFO] FORGED")
    err = capsys.readouterr().err
    assert "broken\\x0a[2026-01-01] [INFO] FORGED" in err
    assert not any(line.startswith("[2026-01-01] [INFO] FORGED") for line in err.splitlines())
