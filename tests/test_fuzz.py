"""Property-based fuzzing of every API's request bodies (issue 11, "Fault injection"): bodies
built from the real field names with values of random types, and wholly random JSON, sent to
the app in this process. Never a 500, and every error in the format of the API that was
called. No key is spent: the models are `echo` or fakes scripted to answer fine whatever
they are asked. Examples are bounded and derandomized, so the file runs the same in CI."""

import io
import json
import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import PNG_B64
from tests.fakes import gemini_answer, gemini_events, openai_completion, openai_stream

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
MODELS = ["echo", "gemini-2.5-flash", "deepseek-v3-671b", "gemma-3-27b-it", "no-such-model"]
GEMINI_URL = "/v1beta/models/gemini-2.5-flash:generateContent"
GOOGLE_STATUS = re.compile(r"^[A-Z_]+$")

# ---------------------------------------------------------------- strategies

text = st.text(max_size=24)  # lone surrogates included: a JSON body may carry them escaped
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(text, inner, max_size=4), max_leaves=12)
# a field's value: mostly one of the plausible values, sometimes anything at all
models = st.sampled_from(MODELS) | text


def field(*plausible):
    return st.one_of(*plausible, any_json)


def maybe(fields: dict):
    """Objects holding any subset of these fields."""
    return st.fixed_dictionaries({}, optional=fields)


roles = st.sampled_from(["user", "assistant", "model", "system", "tool", "developer"]) | text
b64 = st.sampled_from([PNG_B64, "aGk=", "not base64!", "", "data:image/png;base64," + PNG_B64])
mimes = st.sampled_from(["image/png", "text/plain", "application/pdf", "application/x-evil",
                         "image/png\nX: forged", ""]) | text
file_data = maybe({"mime_type": field(mimes), "data": field(b64), "filename": field(text)})
history = st.lists(field(maybe({"role": field(roles), "content": field(text)})), max_size=4)
common = {"model": field(models), "temperature": field(st.floats(-1, 3)),
          "max_tokens": field(st.integers(-5, 10**6)), "stream": field(st.booleans()),
          "system_content": field(text), "history": field(history), "file_data": field(file_data),
          "file_id": field(text), "chat_id": field(st.just("c" * 20), text)}
shape_a = maybe({**common, "message": field(text)}).map(lambda b: {"message": "hi", **b})
shape_b = maybe({**common, "user_content": field(text)}).map(lambda b: {"user_content": "hi", **b})
ui_part = field(maybe({"type": field(st.sampled_from(["text", "file", "reasoning"])),
                       "text": field(text), "url": field(b64), "mediaType": field(mimes),
                       "filename": field(text)}))
ui_message = field(maybe({"id": field(text), "role": field(roles),
                          "parts": field(st.lists(ui_part, max_size=3))}))
use_chat = maybe({"model": field(models), "id": field(text), "trigger": field(text),
                  "messages": field(st.lists(ui_message, max_size=3))}).map(
    lambda b: {"messages": [], **b})
chat_bodies = shape_a | shape_b | use_chat | any_json

tool_call = field(maybe({"id": field(text), "type": field(st.just("function")),
                         "function": field(maybe({"name": field(text),
                                                  "arguments": field(text)})),
                         "extra_content": field(any_json)}))
content_part = field(maybe({"type": field(st.sampled_from(["text", "image_url", "file"])),
                            "text": field(text),
                            "image_url": field(maybe({"url": field(b64)}))}))
v1_message = field(maybe({"role": field(roles), "name": field(text),
                          "content": field(text, st.lists(content_part, max_size=3)),
                          "reasoning_content": field(text),
                          "tool_calls": field(st.lists(tool_call, max_size=2)),
                          "tool_call_id": field(text)}))
v1_tool = field(maybe({"type": field(st.just("function")), "function": field(maybe({
    "name": field(text), "description": field(text), "parameters": field(any_json)}))}))
v1_bodies = maybe({
    "model": field(models), "messages": field(st.lists(v1_message, max_size=4)),
    "stream": field(st.booleans()), "stream_options": field(maybe({"include_usage": any_json})),
    "temperature": field(st.floats(-1, 3)), "top_p": field(st.floats(-1, 2)),
    "n": field(st.integers(-1, 3)), "max_tokens": field(st.integers(-5, 10**6)),
    "max_completion_tokens": field(st.integers(-5, 10**6)),
    "stop": field(text, st.lists(text, max_size=5)), "tools": field(st.lists(v1_tool, max_size=2)),
    "tool_choice": field(st.sampled_from(["auto", "none", "required"]),
                         maybe({"type": any_json, "function": field(maybe({"name": text}))})),
    "response_format": field(maybe({"type": field(st.sampled_from(
        ["text", "json_object", "json_schema"])), "json_schema": any_json})),
}) | any_json

g_part = field(maybe({"text": field(text), "thought": field(st.booleans()),
                      "inlineData": field(maybe({"mimeType": field(mimes), "data": field(b64)})),
                      "functionCall": any_json, "functionResponse": any_json}))
g_content = field(maybe({"role": field(st.sampled_from(["user", "model"])),
                         "parts": field(st.lists(g_part, max_size=3))}))
gemini_bodies = maybe({
    "contents": field(st.lists(g_content, max_size=3)),
    "systemInstruction": field(g_content), "system_instruction": field(g_content),
    "generationConfig": field(maybe({"temperature": any_json, "maxOutputTokens": any_json,
                                     "thinkingConfig": any_json})),
    "tools": any_json, "safetySettings": any_json,
}) | any_json
upload_names = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=30)
upload_types = st.sampled_from(["image/png", "text/plain", "application/octet-stream", "",
                                "application/pdf", "video/mp4", "x/y; charset=evil"]) \
    | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)

MISSING = object()


def one_changed(base: dict, names: list, inner: str | None = None, inner_names=()):
    """base with one field (or, with inner, one field of base[inner][0]) given any JSON value or
    left out: deep enough into the code to meet the checks past the first one."""
    def change(choice):
        (where, name), value = choice
        body = json.loads(json.dumps(base))
        target = body[inner][0] if where == "inner" else body
        if value is MISSING:
            target.pop(name, None)
        else:
            target[name] = value
        return body
    places = [("top", n) for n in names] + [("inner", n) for n in inner_names]
    return st.tuples(st.sampled_from(places), any_json | st.just(MISSING)).map(change)


HI = [{"role": "user", "content": "hi"}]
near_valid_chat = st.sampled_from(["echo", "gemini-2.5-flash", "deepseek-v3-671b"]).flatmap(
    lambda model: one_changed({"message": "hi there", "model": model, "history": HI + [
        {"role": "assistant", "content": "yes"}], "system_content": "brief"}, list(common) + [
            "message"], "history", ["role", "content"])
    | one_changed({"user_content": "hi", "model": model, "stream": False, "history": HI},
                  list(common) + ["user_content"], "history", ["role", "content"])
    | one_changed({"model": model, "messages": [{"id": "m1", "role": "user", "parts": [
        {"type": "text", "text": "hi"}]}]}, ["model", "messages", "id"], "messages",
        ["id", "role", "parts"]))
near_valid_v1 = st.sampled_from(["echo", "gemini-2.5-flash", "deepseek-v3-671b"]).flatmap(
    lambda model: one_changed({"model": model, "messages": [
        {"role": "user", "content": "hi"}], "stream": False},
        ["model", "messages", "stream", "stream_options", "temperature", "top_p", "n",
         "max_tokens", "max_completion_tokens", "stop", "tools", "tool_choice",
         "response_format"], "messages", ["role", "content", "name", "tool_calls",
                                          "tool_call_id", "reasoning_content"]))
near_valid_gemini = one_changed({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                                ["contents", "systemInstruction", "generationConfig", "tools"],
                                "contents", ["role", "parts"])
chat_bodies = chat_bodies | near_valid_chat
v1_bodies = v1_bodies | near_valid_v1
gemini_bodies = gemini_bodies | near_valid_gemini

# ---------------------------------------------------------------- the properties


@pytest.fixture
def fine(gemini, openai):
    """Fakes that answer fine whatever they are sent: a 5xx is then ChatBridge's own."""
    gemini.script = lambda r: gemini_answer(r, gemini_events(["ok"]))
    openai.script = lambda r: openai_stream(["ok"]) if r.stream else openai_completion("ok")


def sent(client, path, body):
    """POST body (a JSON-able value, or raw bytes) and read the whole answer."""
    if isinstance(body, bytes):
        response = client.post(path, data=body, content_type="application/json")
    else:
        data = json.dumps(body).encode("utf-8", "surrogatepass")  # lone surrogates kept escaped
        response = client.post(path, data=data, content_type="application/json")
    response.get_data()  # runs a streamed answer to its end
    return response


def assert_no_500(response):
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, response.get_data(as_text=True)[:2000]
    assert b"Traceback" not in response.get_data()
    if response.mimetype == "text/event-stream":
        assert b"internal server error" not in response.get_data()


def api_error(response):
    if response.status_code >= 400:
        assert isinstance(response.json["error"], str) and response.json["error"]


def v1_error(response):
    if response.status_code >= 400:
        error = response.json["error"]
        assert set(error) >= {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]


def gemini_error(response):
    if response.status_code >= 400:
        error = response.json["error"]
        assert error["code"] == response.status_code and isinstance(error["message"], str)
        assert GOOGLE_STATUS.match(error["status"]), error


@FUZZ
@given(body=chat_bodies)
def test_api_chat_bodies(client, fine, body):
    response = sent(client, "/api/chat", body)
    assert_no_500(response)
    api_error(response)


@FUZZ
@given(body=v1_bodies)
def test_v1_chat_completions_bodies(client, fine, body):
    response = sent(client, "/v1/chat/completions", body)
    assert_no_500(response)
    v1_error(response)


@FUZZ
@given(body=gemini_bodies)
def test_gemini_generate_content_bodies(client, fine, body):
    response = sent(client, GEMINI_URL, body)
    assert_no_500(response)
    gemini_error(response)


@settings(FUZZ, max_examples=150)
@given(body=st.binary(max_size=64) | st.sampled_from([b"", b"{", b"[" * 5000, b'{"a":' * 3000,
                                                      b"\xff\xfe", b"null", b'"x"', b"1e999"]))
def test_raw_bodies_on_every_api(client, fine, body):
    for path, check in (("/api/chat", api_error), ("/v1/chat/completions", v1_error),
                        (GEMINI_URL, gemini_error)):
        response = sent(client, path, body)
        assert_no_500(response)
        check(response)


@settings(FUZZ, max_examples=200)
@given(name=upload_names, mime=upload_types, content=st.binary(max_size=64),
       form_field=st.sampled_from(["file", "file", "upload", ""]))
def test_api_upload_multipart(client, name, mime, content, form_field):
    data = {form_field: (io.BytesIO(content), name, mime)} if form_field else {"x": "y"}
    response = client.post("/api/upload", data=data, content_type="multipart/form-data")
    assert_no_500(response)
    api_error(response)
    if response.status_code == 200:
        assert response.json["file_data"]["filename"] == name
