"""Fault injection (issue 11, "Fault injection"): upstreams that misbehave in the ways real
ones and the CDNs in front of them do, replayed under gunicorn with one gevent worker. Each
ends in a clear error (or a correct answer) in bounded time, the worker keeps serving (an
echo request right after works), and the worker's open file descriptors return to their
baseline. Redirects are covered by tests/test_malformed.py."""

import contextlib
import gzip
import json
import os
import subprocess
import time

import pytest
import requests

from tests.client import ask, events, post_chat, shape_a_text, sse_data
from tests.conftest import upstream_env
from tests.fakes import Reply, gemini_events, gemini_sse, openai_chunk, openai_sse

TIMEOUT = 30
READ_TIMEOUT = 1.0  # UPSTREAM_READ_TIMEOUT of the server under test
PING_SECONDS = 0.3
GEMINI = "gemini-2.5-flash"
ZJU_MODEL = "deepseek-v3-671b"
SSE_TYPE = {"Content-Type": "text/event-stream"}
FD_SLACK = 3  # pooled keep-alive connections to the fakes may stay open
BIG = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def fault_server(start_gunicorn, fake_gemini, fake_openai):
    """One gevent worker (so the follow-up request meets the worker that met the fault), a
    1 s upstream read timeout and frequent heartbeats."""
    return start_gunicorn(upstream_env(fake_gemini, fake_openai,
                                       UPSTREAM_READ_TIMEOUT=str(READ_TIMEOUT),
                                       SSE_PING_SECONDS=str(PING_SECONDS)), workers=1)


@pytest.fixture
def server(fault_server, gemini, openai):
    fault_server.reset_state()
    yield fault_server
    fault_server.reset_state()


# ---------------------------------------------------------------- worker health

def worker_pids(server) -> list:
    found = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True,
                           text=True, check=False).stdout.split()
    assert found, "gunicorn has no worker"
    return [int(pid) for pid in found]


def open_fds(server) -> int:
    """Open file descriptors of all the server's workers."""
    total = 0
    for pid in worker_pids(server):
        with contextlib.suppress(FileNotFoundError):  # a worker that just exited
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def echo_works(server) -> None:
    response = ask(server, "still here", model="echo")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "still here"


@pytest.fixture
def healthy(server):
    """Warm up, note the fd baseline and the worker; afterwards the same worker answers an
    echo request and its descriptors settle back to the baseline (within FD_SLACK)."""
    echo_works(server)
    pids, baseline = worker_pids(server), open_fds(server)
    yield
    echo_works(server)
    assert worker_pids(server) == pids, "the worker died or was replaced:\n" + server.log()[-3000:]
    deadline = time.monotonic() + 5
    while open_fds(server) > baseline + FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(server) <= baseline + FD_SLACK, (baseline, open_fds(server))
    assert "Traceback" not in server.log()


def timed(call):
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def shape_a(server, text="hello", model=GEMINI):
    """A shape A stream: (payloads, seconds)."""
    start = time.monotonic()
    response = post_chat(server, {"message": text, "model": model})
    assert response.status_code == 200
    payloads = events(response)
    return payloads, response, time.monotonic() - start


def gemini_text_events(text: str) -> list:
    return gemini_sse(gemini_events([text[: len(text) // 2], text[len(text) // 2:]]))


# ---------------------------------------------------------------- faults

def test_an_upstream_that_never_answers_times_out(server, gemini, healthy):
    gemini.script = lambda r: Reply(silent=True, hang=True)
    response, seconds = timed(lambda: ask(server))
    assert response.status_code in (500, 503, 504), response.text
    message = response.json()["error"]
    assert "timed out" in message.lower() or "timeout" in message.lower(), message
    # every key is tried once, each within the read timeout
    assert seconds < 3 * READ_TIMEOUT + 4, seconds


def test_a_stream_that_stalls_after_its_first_event_ends_in_an_error_event(server, gemini,
                                                                           healthy):
    gemini.script = lambda r: Reply(chunks=gemini_sse(gemini_events(["Hel"], finish=None)),
                                    hang=True)
    payloads, _, seconds = shape_a(server)
    assert shape_a_text(payloads) == "Hel"
    assert "error" in payloads[-1] and "time" in payloads[-1]["error"].lower(), payloads[-1]
    assert seconds < READ_TIMEOUT + 4


def test_a_dripping_upstream_is_kept_alive_by_heartbeats_and_answers(server, gemini, healthy):
    """One byte every 0.4 s (below the 1 s read timeout): the client hears a ping at least
    every SSE_PING_SECONDS of silence, and the answer arrives whole in bounded time."""
    drip = b": drip\n\n"  # an SSE comment, one byte at a time: 3.2 s of drip
    pieces = [item for byte in drip for item in (bytes([byte]), 0.4)]
    gemini.script = lambda r: Reply(chunks=pieces + gemini_text_events("You said: hello"))
    body, seconds = timed(lambda: post_chat(server, {"message": "hello", "model": GEMINI})
                          .content.decode())
    assert shape_a_text([json.loads(d) for d in sse_data(body)]) == "You said: hello"
    assert body.count(": ping") >= 3, body
    assert 1.5 < seconds < 10, seconds


def test_a_drip_slower_than_the_read_timeout_ends_in_a_clear_error(server, gemini, healthy):
    gemini.script = lambda r: Reply(chunks=[b"d", 2.5, b"a", 2.5, b"t"])
    payloads, _, seconds = shape_a(server)
    assert "error" in payloads[-1], payloads
    assert seconds < 3 * (READ_TIMEOUT + 1) + 4, seconds


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_connection_cut_mid_stream_ends_in_an_error_event(server, gemini, healthy, reset):
    gemini.script = lambda r: Reply(chunks=gemini_sse(gemini_events(["Hel"], finish=None)),
                                    drop=True, reset=reset)
    payloads, _, seconds = shape_a(server)
    assert shape_a_text(payloads) == "Hel"
    assert "error" in payloads[-1] and "done" not in payloads[-1], payloads
    assert seconds < 5


def test_a_malformed_json_event_is_a_clear_error(server, gemini, healthy):
    gemini.script = lambda r: Reply(chunks=gemini_sse(gemini_events(["Hel"], finish=None))
                                    + [b'data: {"candidates": [{"content": \r\n\r\n'])
    payloads, _, _ = shape_a(server)
    assert shape_a_text(payloads) == "Hel"
    assert "error" in payloads[-1], payloads


def test_a_malformed_json_event_on_the_openai_side_is_a_clear_error(server, openai, healthy):
    openai.script = lambda r: Reply(headers=SSE_TYPE, chunks=openai_sse(
        [openai_chunk({"role": "assistant", "content": "Hel"})]) + [b"data: {oops\n\n"])
    payloads, _, _ = shape_a(server, model=ZJU_MODEL)
    assert shape_a_text(payloads) == "Hel"
    assert "error" in payloads[-1], payloads


HTML_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center>"
            b"<h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>"
            b"\r\n</html>\r\n")


def test_an_html_error_page_from_a_cdn_is_a_clear_error(server, gemini, healthy):
    gemini.script = lambda r: Reply(502, [HTML_502], {"Content-Type": "text/html"})
    response = ask(server)
    assert response.status_code in (500, 502, 503), response.text
    error = response.json()["error"]
    assert error == "Gemini answered with an error (502): an HTML page: 502 Bad Gateway", error
    assert len(gemini.requests) == 3, "a server error fails over to the next key"
    payloads, _, _ = shape_a(server)
    assert list(payloads[-1]) == ["error"], payloads


@pytest.mark.parametrize("api", ["A", "B stream", "v1beta sse"])
def test_a_gzip_encoded_stream_is_decoded(server, gemini, healthy, api):
    """ChatBridge asks for identity, but a CDN may compress anyway."""
    text = "You said: hello"
    gemini.script = lambda r: Reply(chunks=[gzip.compress(b"".join(gemini_text_events(text)))],
                                    headers={"Content-Encoding": "gzip", **SSE_TYPE})
    if api == "A":
        assert shape_a_text(shape_a(server)[0]) == text
    elif api == "B stream":
        response = ask(server, stream=True)
        chunks = [json.loads(d) for d in sse_data(response.content)]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c.get("choices")) == text
    else:
        response = requests.post(f"{server.url}/v1beta/models/{GEMINI}:streamGenerateContent"
                                 "?alt=sse", json={"contents": [{"parts": [{"text": "hello"}]}]},
                                 timeout=TIMEOUT)
        assert response.status_code == 200
        got = [json.loads(d) for d in sse_data(response.content)]
        assert "".join(p["text"] for e in got for p in e["candidates"][0]["content"]["parts"]) \
            == text


def test_a_gzip_encoded_whole_answer_is_decoded(server, gemini, healthy):
    answer = json.dumps(gemini_events(["You said: hello"])[0]).encode()
    gemini.script = lambda r: Reply(chunks=[gzip.compress(answer)],
                                    headers={"Content-Encoding": "gzip"})
    response = ask(server)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "You said: hello"


def test_one_5_mb_event_is_relayed_whole(server, gemini, healthy):
    text = "x" * BIG
    gemini.script = lambda r: Reply(chunks=gemini_sse(gemini_events([text])))
    payloads, _, seconds = shape_a(server)
    assert shape_a_text(payloads) == text and payloads[-1] == {"done": True}
    assert seconds < 15


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_200_with_an_empty_body_is_a_clear_error(server, gemini, healthy, chunked):
    gemini.script = lambda r: Reply(chunks=[], chunked=chunked, headers=SSE_TYPE)
    payloads, _, seconds = shape_a(server)
    assert list(payloads[-1]) == ["error"], payloads
    assert seconds < 5
    response = ask(server)
    assert response.status_code >= 500 and response.json()["error"], response.text
