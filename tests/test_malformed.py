"""Malformed input is a 4xx naming the field, in the caller's API's shape, never a 500
(issue 11, item 8), and an upstream that redirects is not followed nor handed a cookie jar
(item 2)."""

import io
import json

import pytest

from tests.client import ask
from tests.conftest import GEMINI_KEYS
from tests.fakes import Reply, json_reply

HELLO = [{"role": "user", "content": "x"}]
CALL = {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def raw(text: str) -> bytes:
    """A JSON body as a client may send it: \\u escapes of lone surrogates kept as bytes."""
    return text.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("path, body, field", [
    ("/api/chat", r'{"message": "hi", "model": "\ud800"}', "'model'"),
    ("/api/chat", r'{"message": "\udfff and more"}', "'message'"),
    ("/api/chat", r'{"message": "hi", "file_data": {"mime_type": "\ud800", "data": "aGk="}}',
     "'file_data.mime_type'"),
    ("/api/chat", r'{"message": "hi", "file_data": {"mime_type": "text/plain", "filename": "a\udc00",'
                  r' "data": "aGk="}}', "'file_data.filename'"),
    ("/api/chat", r'{"messages": [{"role": "user", "parts": [{"type": "text", "text": "\ud800"}]}]}',
     "'messages[0].parts[0].text'"),
    ("/v1/chat/completions", r'{"model": "echo", "messages": [{"role": "user", "content": "\ud834"}]}',
     "'messages[0].content'"),
], ids=["model", "message", "mime_type", "filename", "useChat text", "v1 content"])
def test_a_lone_surrogate_is_a_400_naming_the_field(client, gemini, path, body, field):
    response = client.post(path, data=raw(body), content_type="application/json")
    assert response.status_code == 400
    message = response.json["error"] if path.startswith("/api") else response.json["error"]["message"]
    assert field in message and "surrogate" in message
    assert gemini.requests == []


def test_a_surrogate_pair_is_just_text(client):
    response = client.post("/api/chat", data=rb'{"message": "\ud83d\ude00", "model": "echo"}',
                           content_type="application/json")
    assert response.status_code == 200 and "😀" in response.get_data(as_text=True)


@pytest.mark.parametrize("fields, words", [
    ({"messages": HELLO + [{"role": "assistant", "tool_calls": [{**CALL, "extra_content": "x"}]}]},
     "extra_content"),
    ({"messages": HELLO + [{"role": "assistant", "tool_calls": [CALL]},
                           {"role": "tool", "tool_call_id": ["a"], "content": "x"}]}, "tool_call_id"),
    ({"messages": HELLO, "tool_choice": {"type": "function", "function": "f"}}, "tool_choice"),
    ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": "x"}},
     "response_format"),
    ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"schema": 1}}},
     "response_format"),
    ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "tools"),
    ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f", "description": 5}}]},
     "tools"),
], ids=["extra_content", "tool_call_id list", "tool_choice.function", "json_schema string",
        "schema number", "parameters list", "description number"])
def test_malformed_openai_fields_are_400_naming_them(client, gemini, fields, words):
    response = client.post("/v1/chat/completions", json={"model": "gemini-2.5-flash", **fields})
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.json["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert gemini.requests == []


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_an_upstream_failure_not_followed(server, gemini, status):
    gemini.script = lambda r: Reply(status=status, chunks=[b""], headers={
        "Location": f"http://127.0.0.1:{gemini.port}/elsewhere"}) if r.key == GEMINI_KEYS[0] else None
    response = ask(server)
    assert response.status_code == 200, "the next key answered"
    assert [r.path for r in gemini.requests if "elsewhere" in r.path] == [], "never followed"
    assert len(gemini.requests) == 2


def test_cookies_an_upstream_sets_are_never_sent_back(server, openai):
    openai.script = lambda r: Reply(headers={"Set-Cookie": "session=upstream-secret; Path=/"},
                                    chunks=[json.dumps({"object": "chat.completion", "choices": [{
                                        "index": 0, "message": {"role": "assistant", "content": "hi"},
                                        "finish_reason": "stop"}]}).encode()])
    for _ in range(4):
        assert ask(server, model="deepseek-v3-671b").status_code == 200
    assert all("cookie" not in {k.lower() for k in r.headers} for r in openai.requests)


@pytest.mark.parametrize("path", [
    "/v1beta/models/veo-3.0-generate-preview:predictLongRunning",
    "/v1beta/models/imagen-4.0-generate-001:predict",
    "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
    "/v1beta/models/gemini-embedding-001:embedContent",
    "/v1/models/gemini-2.5-flash:batchGenerateContent",
])
def test_the_gemini_pass_through_spends_no_key_on_methods_it_does_not_offer(client, gemini, path):
    response = client.post(path, json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert response.status_code == 404
    assert response.json["error"]["status"] == "NOT_FOUND"
    assert "GEMINI_NATIVE_METHODS" in response.json["error"]["message"]
    assert gemini.requests == []


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1beta/models/../gemini-2.5-flash:generateContent"),
    ("POST", "/v1beta/models/./gemini-2.5-flash:generateContent"),
    ("GET", "/v1beta/models/tuned//x"),
    ("GET", "/v1beta/models/gemini-2.5-flash:generateContent"),
    ("POST", "/v1beta/models/:generateContent"),  # no model: it answered the model list, 200
    ("POST", "/v1/models/:countTokens"),
])
def test_odd_gemini_paths_are_refused(client, gemini, method, path):
    response = client.open(path, method=method, json={})
    assert response.status_code == 404 and response.json["error"]["status"] == "NOT_FOUND"
    assert gemini.requests == []


def test_the_pass_through_methods_are_a_setting(make_app, gemini):
    client = make_app(GEMINI_NATIVE_METHODS="countTokens").test_client()
    url = "/v1beta/models/gemini-2.5-flash"
    body = {"contents": [{"parts": [{"text": "hello world"}]}]}
    assert client.post(url + ":countTokens", json=body).status_code == 200
    assert client.post(url + ":generateContent", json=body).status_code == 404
    assert [r.path for r in gemini.requests] == ["/v1beta/models/gemini-2.5-flash:countTokens"]


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"contents": ' + b"[" * 100 + b"]" * 100 + b"}", 400, "MAX_JSON_DEPTH"),
    (b"[" * 5000 + b"]" * 5000, 400, "MAX_JSON_DEPTH"),
], ids=["invalid", "array", "deep", "very deep"])
def test_the_gemini_pass_through_spends_no_key_on_a_body_it_cannot_pass(client, gemini, body,
                                                                         status, words):
    response = client.post("/v1beta/models/gemini-2.5-flash:generateContent", data=body,
                           content_type="application/json")
    assert response.status_code == status
    assert words in response.json["error"]["message"] and response.json["error"]["code"] == status
    assert gemini.requests == []


@pytest.mark.parametrize("mime_type, status", [
    ("application/zip", 415),
    ("application/x-msdownload", 415),
    ("x\n[2026-01-01] [INFO] FORGED", 400),
    ("png", 400),
], ids=["zip", "exe", "forged log line", "no subtype"])
def test_a_file_of_a_type_not_allowed_is_refused_before_anything(client, gemini, mime_type, status):
    response = client.post("/api/chat", json={"message": "look", "file_data": {
        "mime_type": mime_type, "data": "aGk="}})
    assert response.status_code == status
    assert ("ALLOWED_FILE_TYPES" in response.json["error"]) is (status == 415)
    assert gemini.requests == []


def test_an_upload_of_a_type_not_allowed_is_refused(client):
    response = client.post("/api/upload", data={"file": (io.BytesIO(b"MZ\x90\x00"), "tool.exe")},
                           content_type="multipart/form-data")
    assert response.status_code == 415 and "ALLOWED_FILE_TYPES" in response.json["error"]


def test_the_allowed_file_types_are_a_setting(make_app):
    client = make_app(ALLOWED_FILE_TYPES="application/zip, image/*").test_client()
    body = {"message": "look", "model": "echo", "file_data": {"mime_type": "application/zip",
                                                              "data": "aGk="}}
    assert client.post("/api/chat", json=body).status_code == 200
    body["file_data"]["mime_type"] = "text/plain"
    assert client.post("/api/chat", json=body).status_code == 415


def strict_json(text: str):
    """text parsed as RFC 8259 JSON: NaN and Infinity are not JSON, whatever json.loads takes."""
    def refuse(name):
        raise ValueError(f"{name} in a response body")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("path, body, arguments_of", [
    ("/v1/messages", {"model": "zju/m", "max_tokens": 100, "messages": HELLO,
                      "tools": [{"name": "f", "input_schema": {"type": "object"}}]},
     lambda answer: answer["content"][0]["input"]),
    ("/v1beta/models/zju%2Fm:generateContent",
     {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
      "tools": [{"functionDeclarations": [{"name": "f"}]}]},
     lambda answer: answer["candidates"][0]["content"]["parts"][0]["functionCall"]["args"]),
], ids=["anthropic", "gemini"])
def test_a_models_nan_arguments_never_make_a_body_that_is_not_json(client, openai, path, body,
                                                                    arguments_of):
    """Found by trying: a tool call's arguments `{"a": NaN}` came back as `"input": {"a": NaN}`."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": '{"a": NaN, "b": -Infinity}'}}
    openai.script = lambda recorded: json_reply({"id": "chatcmpl-1", "object": "chat.completion",
        "created": 1, "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]})
    response = client.post(path, json=body)
    assert response.status_code == 200
    assert arguments_of(strict_json(response.get_data(as_text=True))) == {}


def test_nan_in_a_clients_tool_call_or_result_is_not_sent_to_gemini(client, gemini):
    """Arguments and results are sent to Gemini as objects: NaN would make its body not JSON."""
    body = {"model": "gemini-2.5-flash", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {**CALL, "function": {"name": "f", "arguments": '{"a": NaN}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": '{"t": Infinity}'}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    sent = strict_json(gemini.requests[0].body.decode())
    parts = [part for content in sent["contents"] for part in content["parts"]]
    assert {"functionCall": {"name": "f", "args": {}}} in parts
    assert {"functionResponse": {"name": "f", "response": {"result": '{"t": Infinity}'}}} in parts



@pytest.mark.parametrize("path, body", [
    ("/v1/responses", '{"model": "echo", "input": "hi", "metadata": {"x": NaN}}'),
    ("/v1/messages", '{"model": "echo", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}],'
                     ' "tools": [{"name": "f", "input_schema": {"maximum": Infinity}}]}'),
    ("/v1/chat/completions", '{"model": "echo", "messages": [{"role": "user", "content": "hi"}],'
                             ' "metadata": {"x": -Infinity}}'),
    ("/v1beta/models/echo:generateContent", '{"contents": [{"parts": [{"text": "hi"}]}],'
                                            ' "generationConfig": {"seed": NaN}}'),
    ("/v1beta/models/gemini-2.5-flash:generateContent", '{"contents": [], "x": NaN}'),
], ids=["responses", "anthropic", "v1", "gemini-echo", "gemini-pass-through"])
def test_nan_and_infinity_in_a_body_are_a_400_not_echoed_back(client, gemini, path, body):
    """Python's json reads them, JSON has not: a Responses request's metadata came back as
    `"metadata": {"x": NaN}`, an answer no client could parse (found by trying)."""
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "not valid JSON" in json.dumps(response.json)
    assert gemini.requests == []
    words = '{"model": "echo", "input": "NaN and Infinity, as words"}'
    assert client.post("/v1/responses", data=words, content_type="application/json").status_code == 200
