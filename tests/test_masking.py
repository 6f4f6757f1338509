"""No key leaves the process in any form (issue 11, item 3): whole keys, fragments of them,
keys written with JSON escapes, errors inside passed-through Gemini answers."""

import json
import time

import pytest
import requests

from chatbridge.redaction import FRAGMENT, Redactor
from tests.client import ask
from tests.conftest import ADMIN_TOKEN, GEMINI_KEYS, ZJU_KEYS
from tests.fakes import Reply, gemini_array, gemini_events, gemini_sse, json_reply, openai_error

SECRET = "zjuSecretKeyNumber0003456"


def leaks(text: str, secret: str) -> bool:
    """Whether text holds any FRAGMENT-long run of secret but its last four characters."""
    windows = {secret[i:i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}
    return any(text[i:i + FRAGMENT] in windows for i in range(len(text) - FRAGMENT + 1))


@pytest.mark.parametrize("text", [
    f"Incorrect API key provided: {SECRET[:8]}{'*' * 13}{SECRET[-4:]}",
    f"bad key {SECRET}.",
    f"the key {SECRET[3:]} (cut at the front)",
    f"{SECRET[:-3]}… was cut at the end",
])
def test_a_key_and_its_fragments_are_masked(text):
    masked = Redactor([SECRET]).redact(text)
    assert not leaks(masked, SECRET), masked


def test_a_key_written_with_json_escapes_is_masked():
    escaped = "".join(f"\\u{ord(c):04x}" if c in "aeiou" else c for c in GEMINI_KEYS[0])
    body = '{"error": {"code": 400, "message": "API key ' + escaped + ' not valid"}}'
    masked = Redactor(GEMINI_KEYS).redact_json(body)
    assert not leaks(json.loads(masked)["error"]["message"], GEMINI_KEYS[0])
    assert json.loads(masked)["error"]["code"] == 400


def test_ordinary_text_is_left_alone():
    text = "The model is overloaded. Please try again later. …1111 was the key."
    assert Redactor(GEMINI_KEYS + ZJU_KEYS).redact(text) == text


def test_an_openai_style_partly_hidden_key_never_reaches_anyone(server, openai):
    secret = ZJU_KEYS[1]  # no sk- prefix: only the configured list knows it
    openai.script = lambda r: openai_error(
        401, f"Incorrect API key provided: {r.key[:8]}{'*' * 20}{r.key[-4:]}.", "invalid_api_key")
    answers = [ask(server, model="deepseek-v3-671b").text for _ in range(2)]
    time.sleep(0.3)
    status = requests.get(server.url + "/api/keys", timeout=5,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    stored = "".join(path.read_text() for path in server.data_dir.glob("*.json"))
    for text in answers + [status, server.log(), stored]:
        assert not leaks(text, secret)


def error_event(key: str) -> dict:
    return {"error": {"code": 500, "message": f"Internal error with key {key}", "status": "INTERNAL"}}


@pytest.mark.parametrize("form", ["sse", "array", "whole"])
def test_errors_inside_a_passed_through_gemini_answer_are_masked(server, gemini, form):
    def script(recorded):
        events = gemini_events(["Hello"], finish=None) + [error_event(recorded.key)]
        if form == "sse":
            return Reply(chunks=gemini_sse(events))
        if form == "array":
            return Reply(chunks=gemini_array(events))
        return json_reply({**events[0], **error_event(recorded.key)})
    gemini.script = script
    url = server.url + "/v1beta/models/gemini-2.5-flash:" + (
        "generateContent" if form == "whole" else "streamGenerateContent")
    response = requests.post(url, params={"alt": "sse"} if form == "sse" else {}, timeout=10,
                             json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert response.status_code == 200 and "Internal error with key" in response.text
    for key in GEMINI_KEYS:
        assert not leaks(response.text, key)


def test_an_escaped_key_in_a_refused_gemini_request_is_masked(server, gemini):
    def script(recorded):
        escaped = recorded.key.replace("a", "\\u0061")
        body = '{"error": {"code": 400, "message": "Bad key ' + escaped + '", "status": "INVALID_ARGUMENT"}}'
        return Reply(status=400, chunks=[body.encode()])
    gemini.script = script
    response = requests.post(server.url + "/v1beta/models/gemini-2.5-flash:generateContent",
                             json={"contents": [{"parts": [{"text": "hi"}]}]}, timeout=10)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("Bad key ") and not any(leaks(message, k) for k in GEMINI_KEYS)


def test_a_key_a_client_puts_in_a_model_name_or_path_is_masked_in_the_log(server, gemini, openai):
    """The request's log line repeats the client's path, model and error: masked too."""
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    requests.post(f"{server.url}/v1beta/models/{GEMINI_KEYS[1]}:generateContent", json=body,
                  timeout=5)
    requests.post(server.url + "/v1/responses", json={"model": ZJU_KEYS[1], "input": "hi"},
                  timeout=5)
    requests.post(f"{server.url}/v1/{ZJU_KEYS[0]}", json={}, timeout=5)
    time.sleep(0.3)
    log = server.log()
    assert f"…{GEMINI_KEYS[1][-4:]}:generateContent" in log, "the line is there, masked"
    for key in (GEMINI_KEYS[1], ZJU_KEYS[1], ZJU_KEYS[0]):
        assert not leaks(log, key)
