"""Checks that the fake upstreams in tests/fakes.py speak the wire formats the proxy relies on."""

import json
import threading

import pytest
import requests

from tests.client import sse_data
from tests.fakes import (
    FakeGemini,
    FakeOpenAI,
    Reply,
    gemini_429,
    gemini_stream,
    openai_stream,
    split_every_byte,
)

GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
OPENAI_BODY = {"model": "deepseek-v3-671b", "messages": [{"role": "user", "content": "hello"}]}
TIMEOUT = (2, 5)
TWO_EVENTS = gemini_stream(["a", "b"]).chunks


@pytest.fixture(scope="module")
def servers():
    """One FakeGemini and one FakeOpenAI for the whole module."""
    gemini, openai = FakeGemini().start(), FakeOpenAI().start()
    yield gemini, openai
    gemini.stop()
    openai.stop()


@pytest.fixture
def gemini(servers):
    """The module's FakeGemini, reset for this test."""
    servers[0].reset()
    return servers[0]


@pytest.fixture
def openai(servers):
    """The module's FakeOpenAI, reset for this test."""
    servers[1].reset()
    return servers[1]


def gemini_post(gemini, action, query="", body=GEMINI_BODY, headers=None, **kwargs):
    """POST to the fake Gemini's gemini-2.5-flash endpoint."""
    url = f"{gemini.base_url}/models/gemini-2.5-flash:{action}{query}"
    headers = {"x-goog-api-key": "k1"} if headers is None else headers
    return requests.post(url, json=body, headers=headers, timeout=TIMEOUT, **kwargs)


def test_gemini_default_sse_uses_crlf_and_cumulative_usage(gemini):
    response = gemini_post(gemini, "streamGenerateContent", "?alt=sse")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.content.endswith(b"}\r\n\r\n") and b"[DONE]" not in response.content
    assert b"\n" not in response.content.replace(b"\r\n", b""), "every line ends with CRLF"
    chunks = [json.loads(data) for data in sse_data(response.content)]
    assert len(chunks) == 3
    texts = [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks]
    assert "".join(texts) == "You said: hello"
    assert [c["candidates"][0].get("finishReason") for c in chunks] == [None, None, "STOP"]
    counts = [c["usageMetadata"]["candidatesTokenCount"] for c in chunks]
    assert counts == sorted(counts)
    recorded = gemini.requests[0]
    assert (recorded.key, recorded.model, recorded.stream, recorded.query) == (
        "k1", "gemini-2.5-flash", True, {"alt": "sse"})


def test_gemini_without_alt_streams_a_json_array(gemini):
    response = gemini_post(gemini, "streamGenerateContent")
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.content.startswith(b"[{\n") and b"\n,\r\n{" in response.content
    chunks = json.loads(response.content)
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == "You said: hello"


def test_gemini_generate_content_accepts_snake_case_and_query_key(gemini):
    body = {"system_instruction": {"parts": [{"text": "Be brief."}]},
            "generation_config": {"temperature": 0}, **GEMINI_BODY}
    response = gemini_post(gemini, "generateContent", "?key=k2", body=body, headers={})
    assert response.status_code == 200
    assert response.content.startswith(b'{\n  "candidates"')
    candidate = response.json()["candidates"][0]
    assert candidate["content"]["parts"] == [{"text": "You said: hello"}]
    assert candidate["finishReason"] == "STOP"
    assert gemini.keys_seen() == ["k2"]


def test_gemini_rejects_roles_other_than_user_and_model(gemini):
    body = {"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]}
    response = gemini_post(gemini, "streamGenerateContent", "?alt=sse", body=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Please use a valid role: user, model."


@pytest.mark.parametrize("query, headers, status, wrapped, reason", [
    ("?alt=sse", {"x-goog-api-key": "bad"}, 400, False, "API_KEY_INVALID"),
    ("", {"x-goog-api-key": "bad"}, 400, True, "API_KEY_INVALID"),
    ("?alt=sse", {}, 403, False, None),
])
def test_gemini_key_errors(gemini, query, headers, status, wrapped, reason):
    gemini.valid_keys = {"good"}
    response = gemini_post(gemini, "streamGenerateContent", query, headers=headers)
    assert response.status_code == status
    body = response.json()
    assert isinstance(body, list) == wrapped
    error = (body[0] if wrapped else body)["error"]
    assert error["code"] == status
    assert [d.get("reason") for d in error.get("details", [])][:1] == ([reason] if reason else [])


@pytest.mark.parametrize("headers, message", [
    ({"Authorization": "Bearer bad"}, "Incorrect API key provided"),
    ({}, "You didn't provide an API key"),
])
def test_openai_key_errors(openai, headers, message):
    openai.valid_keys = {"good"}
    response = requests.post(f"{openai.base_url}/chat/completions", json=OPENAI_BODY, headers=headers,
                             timeout=TIMEOUT)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["message"].startswith(message)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, "invalid_api_key")


@pytest.mark.parametrize("prefix", ["/api/ai/v1", "/v1"])
def test_openai_default_stream(openai, prefix):
    body = {**OPENAI_BODY, "stream": True, "stream_options": {"include_usage": True}}
    url = f"http://127.0.0.1:{openai.port}{prefix}/chat/completions"
    response = requests.post(url, json=body, headers={"Authorization": "Bearer k1"}, timeout=TIMEOUT)
    assert response.headers["Content-Type"] == "text/event-stream"
    assert b"\r" not in response.content, "every line ends with LF"
    data = sse_data(response.content)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]) == "You said: hello"
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert {(c["id"], c["created"]) for c in chunks} == {(chunks[0]["id"], chunks[0]["created"])}
    assert openai.requests[0].key == "k1" and openai.requests[0].stream


def test_openai_models_and_non_stream(openai):
    auth = {"Authorization": "Bearer k1"}
    models = requests.get(f"{openai.base_url}/models", headers=auth, timeout=TIMEOUT).json()
    assert [m["id"] for m in models["data"]] == ["deepseek-r1-671b", "deepseek-v3-671b"]
    completion = requests.post(f"{openai.base_url}/chat/completions", json=OPENAI_BODY, headers=auth,
                               timeout=TIMEOUT).json()
    assert completion["choices"][0]["message"]["content"] == "You said: hello"


@pytest.mark.parametrize("reply", [
    split_every_byte(gemini_stream(["Grüße", " \u2028 ok"]).chunks),
    [TWO_EVENTS[0], 0.05, TWO_EVENTS[1]],
])
def test_scripted_chunks_arrive_intact(gemini, reply):
    gemini.script = lambda recorded: Reply(chunks=reply)
    response = gemini_post(gemini, "streamGenerateContent", "?alt=sse")
    assert response.content == b"".join(item for item in reply if isinstance(item, bytes))


def test_gemini_429_has_retry_info_and_no_retry_after(gemini):
    gemini.script = lambda recorded: gemini_429()
    response = gemini_post(gemini, "streamGenerateContent", "?alt=sse")
    assert response.status_code == 429 and "Retry-After" not in response.headers
    details = response.json()["error"]["details"]
    assert details[-1] == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.5s"}


def test_script_exception_becomes_500(gemini):
    gemini.script = lambda recorded: 1 / 0
    response = gemini_post(gemini, "streamGenerateContent", "?alt=sse")
    assert response.status_code == 500 and "ZeroDivisionError" in response.text


def test_drop_breaks_the_stream(openai):
    openai.script = lambda recorded: Reply(chunks=openai_stream(["partial"], finish=None, done=False).chunks,
                                           drop=True)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.post(f"{openai.base_url}/chat/completions", json=OPENAI_BODY,
                      headers={"Authorization": "Bearer k1"}, timeout=TIMEOUT)


def open_hanging_stream(gemini):
    """Start a hanging stream and read its first chunk; the caller closes it."""
    response = gemini_post(gemini, "streamGenerateContent", "?alt=sse", stream=True)
    assert next(response.iter_content(chunk_size=None)) == b"data: {}\r\n\r\n"
    return response


def test_hang_records_client_disconnect(gemini):
    gemini.script = lambda recorded: Reply(chunks=[b"data: {}\r\n\r\n"], hang=True)
    open_hanging_stream(gemini).close()
    assert gemini.wait_for_disconnects(1, timeout=2)


def test_250_concurrent_connections(gemini):
    gemini.script = lambda recorded: Reply(chunks=[b"data: {}\r\n\r\n"], hang=True)
    barrier, failures = threading.Barrier(250), []

    def client():
        try:
            response = open_hanging_stream(gemini)
            barrier.wait(timeout=10)
            response.close()
        except Exception as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client) for _ in range(250)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert failures == []
    assert gemini.wait_for_disconnects(250, timeout=5)
