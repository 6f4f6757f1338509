"""The built-in echo model as a faithful stand-in on every API (issue 10): paced to about two
seconds whatever the length, JSON mode, `/tool NAME {json}` round trips, and Google's API
through the official google-genai SDK with no key at all. All against one keyless server
under gunicorn (gevent workers), so nothing is spent and nothing is faked."""

import json
import time

import jsonschema
import pytest
import requests
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from openai import OpenAI

from chatbridge.apis.gemini_wire import lower_types
from chatbridge.upstreams.placeholder import placeholder
from tests.client import TIMEOUT, events, post_chat, sse_data

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
FORECAST = {  # nested, with a $ref, an enum, a format and bounds
    "type": "object", "required": ["city", "days", "unit", "issued"],
    "properties": {"city": {"type": "string", "maxLength": 5},
                   "days": {"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/day"}},
                   "unit": {"enum": ["celsius", "fahrenheit"]},
                   "issued": {"type": "string", "format": "date-time"},
                   "note": {"type": "string"}},
    "$defs": {"day": {"type": "object", "required": ["high", "rain", "wind"], "properties": {
        "high": {"type": "integer", "minimum": -40}, "rain": {"type": "boolean"},
        "wind": {"anyOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0}]}}}},
    "additionalProperties": False}


@pytest.fixture(scope="module")
def keyless(start_gunicorn):
    """No keys at all: only echo answers (and the aliases that map to it)."""
    return start_gunicorn({"MODEL_ALIASES": "claude-*=echo,gpt-5-codex=echo"})


@pytest.fixture
def openai_sdk(keyless):
    with OpenAI(base_url=keyless.url + "/v1", api_key="any", max_retries=0, timeout=TIMEOUT) as sdk:
        yield sdk


@pytest.fixture(params=["v1beta", "v1"])
def google_sdk(keyless, request):
    options = types.HttpOptions(base_url=keyless.url, api_version=request.param,
                                timeout=TIMEOUT * 1000)
    with genai.Client(api_key="any", http_options=options) as sdk:
        yield sdk


# ---------------------------------------------------------------- pacing


@pytest.mark.parametrize("path, body, text_of", [
    ("/api/chat", lambda text: {"message": text, "model": "echo"}, lambda p: p.get("text")),
    ("/v1/chat/completions", lambda text: {"model": "echo", "stream": True,
                                           "messages": [{"role": "user", "content": text}]},
     lambda p: p["choices"][0]["delta"].get("content") if isinstance(p, dict) and p.get("choices")
     else None),
])
def test_a_long_paste_streams_whole_in_about_two_seconds(keyless, path, body, text_of):
    text = " ".join(f"word{i}" for i in range(120_000))  # about 1 MB
    response = requests.post(keyless.url + path, json=body(text), stream=True, timeout=TIMEOUT)
    started = time.monotonic()  # the headers are in: from here on the answer streams
    payloads = [json.loads(d) for d in sse_data(response.content) if d != "[DONE]"]
    elapsed = time.monotonic() - started
    pieces = [t for t in map(text_of, payloads) if t]
    assert "".join(pieces) == text
    assert 1.0 < elapsed < 2.5, "paced, but the whole answer within about two seconds"
    assert len(pieces) <= 90, "long texts coalesce into few, larger pieces"


def test_a_short_text_still_streams_word_by_word(keyless):
    payloads = events(post_chat(keyless, {"message": "one two three", "model": "echo"}))
    assert [p.get("text") for p in payloads[:-1]] == ["one ", "two ", "three"]


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_over_max_tokens_is_cut_with_finish_length(openai_sdk, stream):
    params = {"model": "echo", "max_tokens": 2, "messages": [{"role": "user", "content": "hello brave new world"}]}
    if stream:
        chunks = list(openai_sdk.chat.completions.create(stream=True, **params))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = openai_sdk.chat.completions.create(**params).choices[0]
        text, finish = choice.message.content, choice.finish_reason
    assert (text, finish) == ("hello br", "length")


# ---------------------------------------------------------------- JSON mode


@pytest.mark.parametrize("stream", [False, True])
def test_json_object_mode_answers_a_json_object(openai_sdk, stream):
    answer = answer_text(openai_sdk, stream, model="echo", response_format={"type": "json_object"},
                         messages=[{"role": "user", "content": "say \"hi\" in JSON"}])
    assert json.loads(answer) == {"echo": "say \"hi\" in JSON"}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_mode_answers_the_schemas_required_fields(openai_sdk, stream):
    answer = answer_text(openai_sdk, stream, model="echo", messages=[
        {"role": "user", "content": "Paris weather"}], response_format={
        "type": "json_schema", "json_schema": {"name": "forecast", "schema": FORECAST}})
    value = json.loads(answer)
    jsonschema.validate(value, FORECAST, format_checker=jsonschema.FormatChecker())
    assert value["city"] == "Paris" and len(value["days"]) == 2 and "note" not in value


@pytest.mark.parametrize("schema", [
    {"type": "OBJECT", "required": ["n", "tags"], "properties": {  # Gemini's OpenAPI style
        "n": {"type": "INTEGER"}, "tags": {"type": "ARRAY", "items": {"type": "STRING"}}}},
    {"allOf": [{"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "minLength": 3}}},
               {"required": ["b"], "properties": {"b": {"const": 7}}}]},
    {"$ref": "#/definitions/node", "definitions": {"node": {
        "type": "object", "required": ["child"], "properties": {"child": {"$ref": "#/definitions/node"}}}}},
])
def test_placeholders_take_every_schema_style(schema):
    value = placeholder(schema, "x")
    assert isinstance(value, dict)
    if "definitions" not in schema:  # the self-referencing one ends in null, deep down
        jsonschema.validate(value, lower_types(schema))


@pytest.mark.parametrize("schema", [
    {"$defs": {"a": {"type": "array", "minItems": 100, "items": {"$ref": "#/$defs/a"}}},
     "$ref": "#/$defs/a"},  # 100^16 values asked for
    {"type": "object", "required": [f"k{i}" for i in range(2000)], "properties": {
        f"k{i}": {"type": "array", "minItems": 1000, "items": {"type": "string", "minLength": 1000}}
        for i in range(2000)}},  # 2000 x 100 x 1000 characters
    {"type": "array", "minItems": 100, "items": {"type": "array", "minItems": 100,
                                                  "items": {"const": "c" * 50_000}}},
], ids=["nested arrays", "many strings", "a repeated const"])
def test_a_schema_cannot_make_the_answer_huge(keyless, schema):
    """Found by trying: a 100-byte schema held a worker forever, a 200 KB one made 500 MB."""
    started = time.monotonic()
    response = requests.post(keyless.url + "/v1/responses", timeout=TIMEOUT, json={
        "model": "echo", "input": "hello", "store": False,
        "text": {"format": {"type": "json_schema", "name": "big", "schema": schema}}})
    assert response.status_code == 200 and time.monotonic() - started < 5
    assert len(response.content) < 3_000_000
    assert json.loads(response.json()["output"][0]["content"][0]["text"]) is not None


# ---------------------------------------------------------------- /tool


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_command_is_a_tool_call_and_its_result_comes_back(openai_sdk, stream):
    question = {"role": "user", "content": '/tool get_weather {"city": "Paris"}'}
    calls, finish = tool_calls(openai_sdk, stream, [question])
    [call] = calls
    assert finish == "tool_calls"
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})
    history = [question, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call["id"], "type": "function", "function": {"name": call["name"],
                                                             "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "21 degrees and sunny"}]
    assert answer_text(openai_sdk, stream, model="claude-sonnet-4-5", messages=history,
                       tools=[WEATHER_TOOL]) == "21 degrees and sunny"


def test_a_tool_command_without_tools_offered_is_plain_text(openai_sdk):
    answer = answer_text(openai_sdk, False, model="echo",
                         messages=[{"role": "user", "content": "/tool get_weather {}"}])
    assert answer == "/tool get_weather {}"


@pytest.mark.parametrize("command, message", [
    ("/tool get_time {}", "offers no tool of that name (it offers get_weather)"),
    ("/tool get_weather [1, 2]", "the arguments must be a JSON object"),
    ('/tool get_weather {"days": NaN}', "the arguments must be a JSON object"),  # not JSON
])
def test_a_tool_command_that_cannot_be_answered_is_a_400(keyless, command, message):
    response = requests.post(keyless.url + "/v1/chat/completions", timeout=TIMEOUT, json={
        "model": "echo", "stream": True, "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": command}]})
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def answer_text(sdk, stream, **params) -> str:
    """The text of an answer through the openai SDK, streamed or whole."""
    if not stream:
        return sdk.chat.completions.create(**params).choices[0].message.content
    chunks = sdk.chat.completions.create(stream=True, **params)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def tool_calls(sdk, stream, messages) -> tuple:
    """([{id, name, arguments}], finish_reason) of an answer offered WEATHER_TOOL."""
    params = {"model": "echo", "messages": messages, "tools": [WEATHER_TOOL]}
    if not stream:
        choice = sdk.chat.completions.create(**params).choices[0]
        return [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in choice.message.tool_calls], choice.finish_reason
    calls, finish = {}, None
    for chunk in sdk.chat.completions.create(stream=True, **params):
        for piece in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": piece.id, "name": piece.function.name,
                                                  "arguments": ""})
            call["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return list(calls.values()), finish


# ---------------------------------------------------------------- Google's API, no key


def test_google_sdk_generates_streams_and_counts_with_echo(google_sdk):
    config = types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.2,
                                         max_output_tokens=100, stop_sequences=["zzz"])
    whole = google_sdk.models.generate_content(model="echo", contents="hello there", config=config)
    assert whole.text == "hello there"
    assert whole.candidates[0].finish_reason == types.FinishReason.STOP
    cut = google_sdk.models.generate_content(model="echo", contents="hello there",
                                             config=types.GenerateContentConfig(max_output_tokens=1))
    assert (cut.text, cut.candidates[0].finish_reason) == ("hell", types.FinishReason.MAX_TOKENS)
    assert whole.usage_metadata.total_token_count == (whole.usage_metadata.prompt_token_count
                                                      + whole.usage_metadata.candidates_token_count)
    chunks = list(google_sdk.models.generate_content_stream(model="echo", contents="hello brave world"))
    assert [c.text for c in chunks if c.text] == ["hello ", "brave ", "world"]
    # The last chunk carries the finish reason; its text is "", never None (printed as "None").
    assert chunks[-1].text == "" and chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    counted = google_sdk.models.count_tokens(model="echo", contents="hello there, how are you?")
    assert 3 <= counted.total_tokens <= 20


def test_google_sdk_lists_and_gets_echo(google_sdk):
    names = [model.name for model in google_sdk.models.list()]
    assert names == ["models/echo", "models/gpt-5-codex"], "echo and the exact aliases, not the globs"
    model = google_sdk.models.get(model="echo")
    assert "countTokens" in model.supported_actions and model.input_token_limit > 0


def test_google_sdk_function_call_round_trip_with_echo(google_sdk):
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(
        name="get_weather", description="The weather.", parameters=types.Schema(
            type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]))])
    config = types.GenerateContentConfig(
        tools=[tool], automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    question = types.Content(role="user", parts=[types.Part(text='/tool get_weather {"city": "Oslo"}')])
    chunks = list(google_sdk.models.generate_content_stream(model="echo", contents=[question],
                                                            config=config))
    assert [(c.name, c.args) for chunk in chunks for c in chunk.function_calls or []] == [
        ("get_weather", {"city": "Oslo"})]
    answer = google_sdk.models.generate_content(model="echo", contents=[question], config=config)
    [call] = answer.function_calls
    assert (call.name, call.args) == ("get_weather", {"city": "Oslo"})
    result = types.Content(role="user", parts=[
        types.Part.from_function_response(name="get_weather", response={"result": "-3 and snowing"})])
    contents = [question, answer.candidates[0].content, result]
    final = google_sdk.models.generate_content(model="echo", contents=contents, config=config)
    assert final.text == "-3 and snowing"


def test_google_sdk_gets_a_thought_when_it_asks_for_thoughts(google_sdk):
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    parts = google_sdk.models.generate_content(model="echo", contents="two words",
                                               config=config).candidates[0].content.parts
    assert [bool(p.thought) for p in parts] == [True, False] and parts[1].text == "two words"


def test_google_sdk_json_mode_with_a_schema(google_sdk):
    config = types.GenerateContentConfig(response_mime_type="application/json",
                                         response_json_schema=FORECAST)
    answer = google_sdk.models.generate_content(model="echo", contents="Rome", config=config)
    jsonschema.validate(json.loads(answer.text), FORECAST)


def test_google_sdk_sees_an_unknown_model_as_404_listing_echo(google_sdk):
    with pytest.raises(genai_errors.ClientError) as raised:
        google_sdk.models.generate_content(model="gemni-2.5-flash", contents="hi")
    assert raised.value.code == 404
    assert "did you mean 'gemini-2.5-flash'" in raised.value.message
    assert "available models: echo" in raised.value.message


def test_the_json_array_stream_and_an_inline_file(keyless):
    body = {"contents": [{"role": "user", "parts": [
        {"text": "look"}, {"inlineData": {"mimeType": "text/plain", "data": "aGVsbG8="}}]}]}
    response = requests.post(keyless.url + "/v1beta/models/echo:streamGenerateContent",
                             json=body, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    chunks = response.json()
    text = "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"])
    assert text == "look\n\n(received a file, text/plain, 5 bytes)"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP" and "usageMetadata" in chunks[-1]


@pytest.mark.parametrize("body, message", [
    ({"contents": []}, "'contents' must be a non-empty list"),
    ({"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": "gs://x"}}]}]}, "fileData"),
    ({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"temperature": 9}},
     "'generationConfig.temperature' must be a number from 0 to 2"),
])
def test_bad_gemini_bodies_get_googles_400(keyless, body, message):
    response = requests.post(keyless.url + "/v1beta/models/echo:generateContent", json=body,
                             timeout=TIMEOUT)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and message in error["message"]
