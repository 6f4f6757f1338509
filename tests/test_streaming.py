"""Relaying streams: chunking, cut-offs, failures mid-stream, disconnects, pings, concurrency."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.client import events, post_chat, shape_a_text, shape_b_text
from tests.conftest import ADMIN_TOKEN, GEMINI_KEYS
from tests.fakes import (
    Reply,
    gemini_blocked,
    gemini_code_status,
    gemini_events,
    gemini_midstream_error,
    gemini_raw_error_tail,
    gemini_sse,
    gemini_stream,
    openai_midstream_error,
    openai_stream,
    split_every_byte,
)

TRICKY = ["Hello, ", "سلام 🌍 ", "line\u2028sep ", "中文\r\nend"]


@pytest.mark.parametrize("crlf", [True, False])
def test_gemini_stream_split_at_every_byte_gives_the_same_text(server, gemini, crlf):
    gemini.script = lambda r: Reply(chunks=split_every_byte(
        gemini_sse(gemini_events(TRICKY, thoughts=["ponder é"]), crlf=crlf)))
    payloads = events(post_chat(server, {"message": "hi"}))
    assert shape_a_text(payloads) == "".join(TRICKY)
    assert shape_a_text(payloads, "reasoning") == "ponder é"
    assert payloads[-1] == {"done": True}


@pytest.mark.parametrize("chunked", [True, False])
def test_openai_stream_split_at_every_byte_gives_the_same_text(server, openai, chunked):
    reply = openai_stream(TRICKY, keepalive=True)
    openai.script = lambda r: Reply(chunks=split_every_byte(reply.chunks), chunked=chunked)
    payloads = events(post_chat(server, {"user_content": "hi", "model": "deepseek-v3-671b",
                                         "stream": True}))
    assert shape_b_text(payloads) == "".join(TRICKY)


def test_events_are_relayed_as_they_arrive(server, gemini):
    gemini.script = lambda r: Reply(chunks=gemini_sse(gemini_events(["first"], finish=None))
                                    + [1.0] + gemini_sse(gemini_events([" second"])),
                                    chunked=False)
    response = post_chat(server, {"message": "hi"})
    started = time.monotonic()
    lines = response.iter_lines()
    assert next(lines) == b'data: {"text": "first"}'
    assert time.monotonic() - started < 0.7, "the first event was not held back"


def test_a_stream_without_finish_reason_is_reported_cut_off(server, gemini):
    gemini.script = lambda r: gemini_stream(["partial answer"], finish=None)
    payloads = events(post_chat(server, {"message": "hi"}))
    assert shape_a_text(payloads) == "partial answer"
    assert "cut off" in payloads[-1]["error"]
    assert not any("done" in p for p in payloads)
    assert len(gemini.requests) == 1, "content had gone out: no second key"


def test_an_openai_stream_without_done_or_finish_is_cut_off(server, openai):
    openai.script = lambda r: openai_stream(["partial"], finish=None, done=False)
    payloads = events(post_chat(server, {"user_content": "hi", "model": "deepseek-v3-671b",
                                         "stream": True}))
    assert shape_b_text(payloads) == "partial"
    assert "cut off" in payloads[-1]["error"]


@pytest.mark.parametrize("reply", [gemini_midstream_error(["some ", "text"]),
                                   gemini_raw_error_tail(["some ", "text"]),
                                   Reply(chunks=gemini_sse(gemini_events(["some ", "text"], finish=None)),
                                         drop=True)],
                         ids=["error-event", "raw-json-tail", "dropped-connection"])
def test_an_upstream_dying_mid_stream_ends_with_one_error(server, gemini, reply):
    gemini.script = lambda r: reply
    payloads = events(post_chat(server, {"message": "hi"}))
    assert shape_a_text(payloads) == "some text"
    assert list(payloads[-1]) == ["error"] and payloads[-1]["error"]
    assert sum("error" in p or "done" in p for p in payloads) == 1
    gemini.script = None
    assert events(post_chat(server, {"message": "again"}))[-1] == {"done": True}


def test_shape_b_mid_stream_error_is_an_error_object(server, openai):
    openai.script = lambda r: openai_midstream_error(["so far"])
    payloads = events(post_chat(server, {"user_content": "hi", "model": "deepseek-v3-671b",
                                         "stream": True}))
    assert shape_b_text(payloads) == "so far"
    assert isinstance(payloads[-1]["error"], str)


def test_a_blocked_prompt_is_a_clear_error(server, gemini):
    gemini.script = lambda r: gemini_blocked("SAFETY")
    payloads = events(post_chat(server, {"message": "bad"}))
    assert payloads == [{"error": "Gemini blocked the prompt (reason: SAFETY)"}]
    assert len(gemini.requests) == 1


def test_shape_b_stream_that_cannot_start_gets_a_real_status(server, gemini):
    gemini.script = lambda r: Reply(status=503, chunks=[b'{"error": {"code": 503}}'])
    response = post_chat(server, {"user_content": "hi", "model": "gemini-2.5-flash",
                                  "stream": True})
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    assert len(gemini.requests) == 3


SHAPE_A = {"message": "hi"}
SHAPE_B = {"user_content": "hi", "model": "gemini-2.5-flash", "stream": True}


@pytest.mark.parametrize("body, upstream", [(SHAPE_A, "no headers yet"), (SHAPE_A, "silent"),
                                            (SHAPE_A, "mid-answer"), (SHAPE_B, "mid-answer")],
                         ids=["a-no-headers", "a-silent", "a-mid-answer", "b-mid-answer"])
def test_client_disconnect_closes_the_upstream(server, gemini, body, upstream):
    chunks = gemini_sse(gemini_events(["hello"], finish=None)) if upstream == "mid-answer" else []
    gemini.script = lambda r: Reply(chunks=chunks, hang=True, silent=upstream == "no headers yet")
    with requests.post(server.url + "/api/chat", json=body, stream=True, timeout=10) as response:
        next(response.iter_lines())  # an event, or a ping while the upstream is silent
    closed = time.monotonic()
    assert gemini.wait_for_disconnects(1, 2.0)
    assert gemini.disconnects[0] - closed < 2.0


@pytest.mark.parametrize("body", [SHAPE_A, SHAPE_B], ids=["a", "b"])
def test_a_client_leaving_is_no_failure_of_the_key(server, gemini, body):
    gemini.script = lambda r: Reply(chunks=gemini_sse(gemini_events(["hello"], finish=None)),
                                    hang=True)
    for _ in range(3):
        with requests.post(server.url + "/api/chat", json=body, stream=True, timeout=10) as response:
            next(response.iter_lines())
    assert gemini.wait_for_disconnects(3, 3.0)
    time.sleep(0.3)
    keys = requests.get(server.url + "/api/keys", timeout=5,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["providers"]["gemini"]
    assert [(k["state"], k["failures"]) for k in keys] == [("ok", 0)] * 3
    assert "Traceback" not in server.log().split("client disconnected")[-1]


def test_pings_flow_while_a_slow_key_fails_over(server, gemini):
    gemini.script = lambda r: Reply(chunks=[1.2] + gemini_sse([gemini_code_status(503)])) \
        if r.key == GEMINI_KEYS[0] else None
    response = post_chat(server, {"message": "hi"})
    assert response.text.startswith(": ping\n\n")
    payloads = events(response)
    assert shape_a_text(payloads) == "You said: hi" and payloads[-1] == {"done": True}
    assert gemini.keys_seen() == GEMINI_KEYS[:2]


def test_pings_keep_a_silent_stream_alive(server, gemini):
    gemini.script = lambda r: Reply(chunks=[1.3] + gemini_stream(["late"]).chunks)
    response = post_chat(server, {"message": "hi"})
    assert response.text.startswith(": ping\n\n")
    assert events(response)[-1] == {"done": True}


def test_200_concurrent_streams_finish_concurrently(server, gemini):
    gemini.script = lambda r: Reply(chunks=gemini_sse(gemini_events(["a"], finish=None)) + [1.0]
                                    + gemini_sse(gemini_events(["b"])))

    def one(i):
        return events(post_chat(server, {"message": f"n{i}"}))[-1]

    started = time.monotonic()
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, range(200)))
    assert results == [{"done": True}] * 200
    assert time.monotonic() - started < 15, "streams were served one after another"
    assert len(gemini.requests) == 200


def test_an_unreachable_upstream_is_503(unreachable_server):
    response = post_chat(unreachable_server, {"user_content": "hi", "model": "gemini-2.5-flash"})
    assert response.status_code == 503
    assert "could not reach" in response.json()["error"]
    payloads = events(post_chat(unreachable_server, {"message": "hi"}))
    assert "could not reach" in payloads[-1]["error"]


@pytest.fixture(scope="module")
def keyless_server(start_gunicorn):
    return start_gunicorn({"LOG_LANGUAGE": "fa", "CORS_ORIGINS": "http://good.example"})


def test_echo_works_with_no_keys(keyless_server):
    assert requests.get(keyless_server.url + "/healthz", timeout=5).json()["providers"] == {
        "gemini": 0, "zju": 0}
    payloads = events(post_chat(keyless_server, {"message": "hello brave new world"}))
    assert [p.get("text") for p in payloads[:-1]] == ["hello ", "brave ", "new ", "world"]
    assert payloads[-1] == {"done": True}
    body = post_chat(keyless_server, {"user_content": "hi there"}).json()
    assert body["choices"][0]["message"]["content"] == "hi there"
    refused = post_chat(keyless_server, {"message": "x", "model": "gemini-2.5-flash"})
    assert refused.status_code == 400 and "ALL_GEMINI_API_KEYS" in refused.json()["error"]
    refused = post_chat(keyless_server, {"message": "x", "model": "deepseek-r1-671b"})
    assert refused.status_code == 400 and "ZJU_API_KEY" in refused.json()["error"]
    time.sleep(0.3)
    log = keyless_server.log()
    assert log.count("no API keys configured") == 1, "one warning, not one per worker"
    assert "[هشدار]" in log, "LOG_LANGUAGE=fa gives Persian level names"
    assert "POST /api/chat 200 shape=A provider=echo model=echo" in log


@pytest.mark.parametrize("origin, allowed", [("http://good.example", True), ("http://evil.example", False)])
def test_cors_allows_only_the_listed_origins(keyless_server, origin, allowed):
    response = requests.options(keyless_server.url + "/api/chat", timeout=5, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert (response.headers.get("Access-Control-Allow-Origin") == origin) is allowed
    time.sleep(0.2)
    assert "CORS allows every origin" not in keyless_server.log()


@pytest.mark.parametrize("path, body", [
    ("/api/chat", SHAPE_B),
    ("/api/chat", {"messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]}),
    ("/v1/chat/completions", {"model": "gemini-2.5-flash", "stream": True,
                              "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
     {"contents": [{"parts": [{"text": "hi"}]}]}),
], ids=["shape-b", "use-chat", "v1-stream", "v1-whole", "v1beta"])
def test_a_client_leaving_before_the_first_token_closes_the_upstream(server, gemini, path, body):
    """Issue 11, item 9: before the first byte goes out no write can tell the client left; the
    service notices the closed connection itself, so the upstream stops generating for nobody."""
    gemini.script = lambda r: Reply(chunks=[], hang=True, silent=True)  # no headers, no token
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(server.url + path, json=body, timeout=(2, 0.5))
    left = time.monotonic()
    assert gemini.wait_for_disconnects(1, 2.0), "the upstream request was closed"
    assert gemini.disconnects[0] - left < 2.0
    assert len(gemini.requests) == 1, "no other key was tried for nobody"


# ---------------------------------------------------------------- when bytes go out (issue 13)

GEMINI = "gemini-2.5-flash"
ZJU = "deepseek-v3-671b"
USER = [{"role": "user", "content": "hi"}]
STREAM_CALLS = {  # name: (path, body, upstream)
    "shape-a": ("/api/chat", {"message": "hi"}, "gemini"),
    "shape-b": ("/api/chat", {"user_content": "hi", "model": GEMINI, "stream": True}, "gemini"),
    "use-chat": ("/api/chat", {"model": GEMINI, "messages": [
        {"id": "u", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]}, "gemini"),
    "chat-completions": ("/v1/chat/completions",
                         {"model": ZJU, "messages": USER, "stream": True}, "openai"),
    "chat-completions-gemini": ("/v1/chat/completions",
                                {"model": GEMINI, "messages": USER, "stream": True}, "gemini"),
    "messages": ("/v1/messages", {"model": GEMINI, "max_tokens": 100, "messages": USER,
                                  "stream": True}, "gemini"),
    "responses": ("/v1/responses", {"model": ZJU, "input": "hi", "stream": True}, "openai"),
    "gemini-sse": (f"/v1beta/models/{GEMINI}:streamGenerateContent?alt=sse",
                   {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, "gemini"),
    "gemini-json-array": (f"/v1beta/models/{GEMINI}:streamGenerateContent",
                          {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, "gemini"),
}


def upstream_events(upstream: str, texts: list, finish: bool) -> list:
    """One chunk per text, in the upstream's wire format; the last says finish when asked."""
    if upstream == "gemini":
        return gemini_sse(gemini_events(texts, finish="STOP" if finish else None))
    return openai_stream(texts, finish="stop" if finish else None, done=finish).chunks


def script(fake, upstream: str, chunks: list, **reply) -> None:
    headers = {} if upstream == "gemini" else {"Content-Type": "text/event-stream"}
    fake.script = lambda r: Reply(chunks=chunks, headers=headers, **reply)


@pytest.mark.parametrize("name", STREAM_CALLS)
def test_the_first_event_goes_out_while_the_upstream_says_nothing_more(server, gemini, openai,
                                                                      name):
    """Events are written when a read of the upstream has brought them, not when a later read
    returns: here the upstream sends one event and then nothing until the read timeout, and the
    client reads the event before the stream's timeout error."""
    path, body, upstream = STREAM_CALLS[name]
    script(gemini if upstream == "gemini" else openai, upstream,
           upstream_events(upstream, ["first"], finish=False), hang=True)
    with requests.post(server.url + path, json=body, stream=True, timeout=10) as response:
        assert response.status_code == 200, response.text
        seen = b""
        for piece in response.iter_content(chunk_size=None):
            seen += piece
            if b"first" in seen:
                break
    assert b"first" in seen and b"timeout" not in seen.lower(), seen


@pytest.mark.parametrize("name", [n for n in STREAM_CALLS if not n.startswith("gemini-")])
def test_a_silence_mid_answer_is_filled_with_pings_after_what_came_before_it(
        server, gemini, openai, name):
    """The text before a silence, then the pings during it, then the rest: SSE_PING_SECONDS is
    0.5 here. (Google's own API has no pings: test_gateway checks that none are added.)"""
    path, body, upstream = STREAM_CALLS[name]
    chunks = upstream_events(upstream, ["first", " second"], finish=True)
    cut = next(i for i, chunk in enumerate(chunks) if b"first" in chunk) + 1
    script(gemini if upstream == "gemini" else openai, upstream,
           chunks[:cut] + [1.3] + chunks[cut:])
    text = requests.post(server.url + path, json=body, timeout=10).text
    first, ping, second = text.find("first"), text.find(": ping"), text.find("second")
    assert 0 <= first < ping < second, text


@pytest.mark.parametrize("name", STREAM_CALLS)
def test_a_burst_of_events_goes_out_in_few_writes(server, gemini, openai, name):
    """Thirty events that come in one read are written together, not one write each: the
    response has a handful of HTTP chunks, and every text in them."""
    path, body, upstream = STREAM_CALLS[name]
    texts = [f"w{i} " for i in range(30)]
    script(gemini if upstream == "gemini" else openai, upstream,
           [b"".join(upstream_events(upstream, texts, finish=True))])
    with requests.post(server.url + path, json=body, stream=True, timeout=10) as response:
        assert response.status_code == 200, response.text
        pieces = [piece for piece in response.raw.read_chunked() if piece]
    joined = b"".join(pieces).decode()
    assert all(text.strip() in joined for text in texts), joined
    assert len(pieces) <= 4, [piece[:80] for piece in pieces]


def test_a_stream_with_a_content_length_ends_cleanly(server, openai):
    """An upstream that frames its stream with Content-Length (no chunks) and keeps the
    connection open: the body's last byte is its end, not the start of a silence."""
    chunks = openai_stream(["one", " two"], done=False).chunks  # read on to the very end
    openai.script = lambda r: Reply(chunks=chunks[:2] + [0.3] + chunks[2:], chunked=False,
                                    hang=True, headers={  # the connection stays open after it
        "Content-Type": "text/event-stream", "Content-Length": str(sum(map(len, chunks)))})
    payloads = events(post_chat(server, {"user_content": "hi", "model": ZJU, "stream": True}))
    assert shape_b_text(payloads) == "one two" and "error" not in payloads[-1], payloads
