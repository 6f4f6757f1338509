"""OpenAI's Responses API (/v1/responses, issue 10) through the official openai SDK's
responses.create and responses.stream(), against echo, the fake Gemini and the fake
OpenAI-compatible upstream, under gunicorn; validation errors through Flask's test client."""

import base64
import json

import openai as openai_sdk
import pytest
import requests
from openai import OpenAI
from pydantic import BaseModel

from tests.conftest import GEMINI_KEYS, PNG_B64, ZJU_KEYS, upstream_env
from tests.test_gateway import weather_reply  # the same fake Gemini tool loop as /v1's
from tests.fakes import (
    Reply,
    field,
    gemini_429,
    gemini_answer,
    gemini_events,
    gemini_midstream_error,
    openai_tool_call_completion,
    openai_tool_call_stream,
)

TIMEOUT = 30
CLIENT_KEY = "client-key-that-must-stay-here"
SIGNATURE = base64.b64encode(b"opaque thought signature").decode()
ARGS = {"city": "Paris"}
WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch to files.",
               "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/s"}}
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\n"
ANSWERS = {"echo": "hello", "gemini-2.5-flash": "You said: hello", "deepseek-v3-671b": "You said: hello"}
MODELS = list(ANSWERS)
STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])


def client(server, api_key=CLIENT_KEY):
    return OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT)


def respond(server, stream, api_key=CLIENT_KEY, **params):
    """responses.create, or responses.stream() and its final response; (response, events)."""
    with client(server, api_key) as sdk:
        if not stream:
            return sdk.responses.create(**params), []
        with sdk.responses.stream(**params) as events:
            seen = list(events)
            return events.get_final_response(), seen


def posted(fake):
    return [r for r in fake.requests if r.method == "POST"]


def items(response, kind):
    return [item for item in response.output if item.type == kind]


def raw_events(server, body):
    """A raw streamed answer's events as (event line, data) pairs, checking the framing."""
    answer = requests.post(server.url + "/v1/responses", json={**body, "stream": True},
                           headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/event-stream")
    pairs = []
    for block in answer.text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: ")
            pairs.append((lines[0][len("event: "):], json.loads(lines[1][len("data: "):])))
    return pairs


# ---------------------------------------------------------------- text


@STREAMS
@pytest.mark.parametrize("model", MODELS)
def test_the_sdk_gets_the_answer(server, gemini, openai, model, stream):
    response, events = respond(server, stream, model=model, input="hello")
    assert response.status == "completed" and response.output_text == ANSWERS[model]
    assert response.id.startswith("resp_") and response.model == model
    [message] = items(response, "message")
    assert message.role == "assistant" and message.status == "completed"
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    if stream:
        kinds = [event.type for event in events]
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
        assert [event.sequence_number for event in events] == list(range(len(events)))


@pytest.mark.parametrize("model", MODELS)
def test_every_event_has_its_event_line_in_openais_order(server, gemini, openai, model):
    pairs = raw_events(server, {"model": model, "input": "hello"})
    assert all(name == data["type"] for name, data in pairs)
    assert [data["sequence_number"] for _, data in pairs] == list(range(len(pairs)))
    kinds = [name for name, _ in pairs if name != "response.output_text.delta"]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]
    text = "".join(data["delta"] for name, data in pairs if name == "response.output_text.delta")
    assert text == ANSWERS[model] == pairs[-1][1]["response"]["output"][0]["content"][0]["text"]


def test_instructions_developer_messages_and_settings_reach_gemini(server, gemini):
    response, _ = respond(server, False, model="gemini-2.5-flash", instructions="Be brief.",
                          input=[{"role": "developer", "content": "Answer in English."},
                                 {"role": "user", "content": [
                                     {"type": "input_text", "text": "What is this?"},
                                     {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"}]}],
                          temperature=0.3, top_p=0.5, max_output_tokens=99)
    assert response.output_text == "You said: What is this?"
    sent = posted(gemini)[0].json
    assert field(sent, "systemInstruction")["parts"][0]["text"] == "Be brief.\n\nAnswer in English."
    config = field(sent, "generationConfig")
    assert (config["temperature"], config["topP"], config["maxOutputTokens"]) == (0.3, 0.5, 99)
    parts = sent["contents"][0]["parts"]
    assert field(parts[1], "inlineData")["data"] == PNG_B64


# ---------------------------------------------------------------- function calls


@STREAMS
def test_a_gemini_function_call_round_trip_keeps_its_thought_signature(server, gemini, stream):
    """As Codex does it: store false, the whole input sent again, the signature in encrypted_content."""
    gemini.script = lambda r: weather_reply(r, SIGNATURE)
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    params = {"model": "gemini-2.5-flash", "tools": [WEATHER], "store": False,
              "include": ["reasoning.encrypted_content"]}
    first, events = respond(server, stream, input=question, **params)
    [call] = items(first, "function_call")
    assert (call.name, json.loads(call.arguments)) == ("get_weather", ARGS) and call.call_id
    if stream:
        done = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert json.loads(done[0].arguments) == ARGS
    [carrier] = [item for item in items(first, "reasoning") if item.encrypted_content]
    assert SIGNATURE not in json.dumps(first.model_dump()["output"][0])  # opaque, not a field of the call
    declared = [d["name"] for tool in posted(gemini)[0].json["tools"] for d in field(tool, "functionDeclarations")]
    assert declared == ["get_weather"]

    again = question + [item.model_dump(exclude_none=True) for item in first.output] + [
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp": 21})}]
    second, _ = respond(server, stream, input=again, **params)
    assert second.output_text == "It is 21 degrees." and second.status == "completed"
    contents = posted(gemini)[-1].json["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    [called] = contents[1]["parts"]
    assert field(called, "functionCall") == {"name": "get_weather", "args": ARGS}
    assert field(called, "thoughtSignature") == SIGNATURE
    response = field(contents[2]["parts"][0], "functionResponse")
    assert response["name"] == "get_weather" and response["response"] == {"temp": 21}
    assert carrier.encrypted_content


@STREAMS
def test_an_openai_upstream_function_call_round_trip(server, openai, stream):
    def reply(r):
        if r.json["messages"][-1]["role"] == "tool":
            return None  # the fake's own answer: "You said: <the last user text>"
        if r.stream:
            return openai_tool_call_stream("get_weather", ['{"city"', ': "Par', 'is"}'], "call_abc")
        return openai_tool_call_completion("get_weather", json.dumps(ARGS), "call_abc")

    openai.script = reply
    params = {"model": "deepseek-v3-671b", "tools": [WEATHER, {"type": "web_search"}],
              "tool_choice": "auto"}
    first, events = respond(server, stream, input="What is the weather in Paris?", **params)
    [call] = items(first, "function_call")
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_abc", "get_weather", ARGS)
    if stream:
        pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
        assert pieces == ['{"city"', ': "Par', 'is"}']
    sent = posted(openai)[0].json
    assert sent["tools"] == [{"type": "function", "function": {k: WEATHER[k] for k in (
        "name", "description", "parameters")}}], "the hosted web_search tool is left out"
    assert sent["tool_choice"] == "auto"

    result = {"type": "function_call_output", "call_id": "call_abc", "output": '{"temp": 21}'}
    second, _ = respond(server, stream, input=[result], previous_response_id=first.id, **params)
    assert second.output_text == "You said: What is the weather in Paris?"
    messages = posted(openai)[-1].json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == "call_abc"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21}'}


@STREAMS
def test_a_custom_tool_is_a_one_string_function_and_comes_back_as_custom_tool_call(server, openai, stream):
    def reply(r):
        if r.json["messages"][-1]["role"] == "tool":
            return None
        arguments = json.dumps({"input": PATCH})
        if r.stream:
            return openai_tool_call_stream("apply_patch", [arguments[:20], arguments[20:]], "call_patch")
        return openai_tool_call_completion("apply_patch", arguments, "call_patch")

    openai.script = reply
    params = {"model": "deepseek-v3-671b", "tools": [APPLY_PATCH]}
    first, _ = respond(server, stream, input="Add hello.txt", **params)
    [call] = items(first, "custom_tool_call")
    assert (call.call_id, call.name, call.input) == ("call_patch", "apply_patch", PATCH)
    [tool] = posted(openai)[0].json["tools"]
    assert tool["function"]["name"] == "apply_patch"
    assert tool["function"]["parameters"]["required"] == ["input"]
    assert "start: /.+/s" in tool["function"]["parameters"]["properties"]["input"]["description"]

    again = [{"role": "user", "content": "Add hello.txt"}, call.model_dump(exclude_none=True),
             {"type": "custom_tool_call_output", "call_id": "call_patch", "output": "Done!"}]
    second, _ = respond(server, stream, input=again, **params)
    assert second.status == "completed"
    messages = posted(openai)[-1].json["messages"]
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"input": PATCH}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_patch", "content": "Done!"}


# ---------------------------------------------------------------- reasoning, JSON, endings


@STREAMS
def test_thoughts_become_a_reasoning_summary(server, gemini, stream):
    gemini.script = lambda r: gemini_answer(r, gemini_events(["It is ", "orange."], thoughts=["Colours…"]))
    response, events = respond(server, stream, model="gemini-2.5-flash", input="colour?",
                               reasoning={"effort": "low", "summary": "auto"})
    [reasoning] = items(response, "reasoning")
    assert [part.text for part in reasoning.summary] == ["Colours…"]
    assert response.output_text == "It is orange."
    assert [item.type for item in response.output] == ["reasoning", "message"]
    if stream:
        deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
        assert deltas == ["Colours…"]
        assert [e.text for e in events if e.type == "response.reasoning_summary_text.done"] == ["Colours…"]


class City(BaseModel):
    name: str
    population: int


@STREAMS
def test_json_schema_output_parses(server, gemini, stream):
    gemini.script = lambda r: gemini_answer(r, gemini_events(['{"name": "Paris",', ' "population": 2100000}']))
    with client(server) as sdk:
        if stream:
            with sdk.responses.stream(model="gemini-2.5-flash", input="Paris?", text_format=City) as events:
                list(events)
                parsed = events.get_final_response().output_parsed
        else:
            parsed = sdk.responses.parse(model="gemini-2.5-flash", input="Paris?", text_format=City).output_parsed
    assert parsed == City(name="Paris", population=2100000)
    config = field(posted(gemini)[0].json, "generationConfig")
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["required"] == ["name", "population"]


@STREAMS
def test_a_token_limit_makes_the_response_incomplete(server, gemini, stream):
    gemini.script = lambda r: gemini_answer(r, gemini_events(["It is"], finish="MAX_TOKENS"))
    params = {"model": "gemini-2.5-flash", "input": "hi", "max_output_tokens": 5}
    if stream:  # the SDK's get_final_response() wants response.completed; OpenAI sends this
        with client(server) as sdk, sdk.responses.stream(**params) as events:
            *_, last = events
        assert last.type == "response.incomplete"
        response = last.response
    else:
        response, _ = respond(server, stream, **params)
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert response.output_text == "It is"


def test_a_failure_after_the_stream_began_is_an_error_and_response_failed(server, gemini):
    gemini.script = lambda r: gemini_midstream_error(["Hello", " there"])
    pairs = raw_events(server, {"model": "gemini-2.5-flash", "input": "hi"})
    names = [name for name, _ in pairs]
    assert names[-2:] == ["error", "response.failed"] and "response.completed" not in names
    failed = pairs[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"]


# ---------------------------------------------------------------- the key pool


def first_key_429(recorded):
    if recorded.key in (GEMINI_KEYS[0], ZJU_KEYS[0]):
        if recorded.model and recorded.model.startswith("gemini"):
            return gemini_429("30s")
        return Reply(status=429, headers={"Retry-After": "40"}, chunks=[
            b'{"error": {"message": "Rate limit reached", "type": "rate_limit", "code": 429}}'])
    return None


@STREAMS
@pytest.mark.parametrize("model, pool", [("gemini-2.5-flash", GEMINI_KEYS), ("deepseek-v3-671b", ZJU_KEYS)])
def test_a_429_on_one_key_fails_over_to_the_next(server, gemini, openai, model, pool, stream):
    gemini.script = openai.script = first_key_429
    response, _ = respond(server, stream, model=model, input="hello")
    assert response.output_text == "You said: hello"
    fake = gemini if model.startswith("gemini") else openai
    assert [r.key for r in posted(fake)] == pool[:2]
    respond(server, stream, model=model, input="hello")
    assert pool[0] not in [r.key for r in posted(fake)[2:]], "the limited key rests"


@STREAMS
def test_every_key_resting_is_a_429_with_retry_after(server, gemini, stream):
    gemini.script = lambda r: gemini_429("30s")
    with pytest.raises(openai_sdk.RateLimitError) as raised:
        respond(server, stream, model="gemini-2.5-flash", input="hello")
    assert 29 <= int(raised.value.response.headers["Retry-After"]) <= 31
    assert raised.value.body["type"] == "rate_limit_error"


# ---------------------------------------------------------------- stored responses


@pytest.fixture(scope="module")
def redis_backed(start_gunicorn, fake_gemini, fake_openai, redis_server):
    return start_gunicorn(upstream_env(fake_gemini, fake_openai, REDIS_URL=redis_server.url), workers=2)


@pytest.mark.parametrize("store", ["files", "redis"])
def test_previous_response_id_continues_the_conversation(request, server, gemini, store):
    target = request.getfixturevalue("redis_backed") if store == "redis" else server
    first, _ = respond(target, False, model="gemini-2.5-flash", instructions="Be brief.", input="hello")
    second, _ = respond(target, True, model="gemini-2.5-flash", input="and again",
                        previous_response_id=first.id)
    assert second.output_text == "You said: and again" and second.previous_response_id == first.id
    third, _ = respond(target, False, model="gemini-2.5-flash", input="once more",
                       previous_response_id=second.id)
    contents = posted(gemini)[-1].json["contents"]
    assert [c["parts"][0]["text"] for c in contents] == [
        "hello", "You said: hello", "and again", "You said: and again", "once more"]
    assert "systemInstruction" not in posted(gemini)[-1].json, "instructions are not carried over"
    with client(target) as sdk:
        assert sdk.responses.retrieve(third.id).output_text == third.output_text
        sdk.responses.delete(third.id)
        with pytest.raises(openai_sdk.NotFoundError):
            sdk.responses.retrieve(third.id)


def test_store_false_keeps_nothing(server, gemini):
    first, _ = respond(server, False, model="echo", input="hello", store=False)
    with pytest.raises(openai_sdk.BadRequestError) as raised:
        respond(server, False, model="echo", input="again", previous_response_id=first.id)
    assert raised.value.code == "previous_response_not_found"


def test_another_tokens_response_does_not_exist(make_app):
    app = make_app(ACCESS_TOKENS="token-of-alice-0001,token-of-bob-00002")
    alice, bob = ({"Authorization": f"Bearer {t}"} for t in ("token-of-alice-0001", "token-of-bob-00002"))
    http = app.test_client()
    first = http.post("/v1/responses", headers=alice, json={"model": "echo", "input": "secret"}).json
    assert http.get(f"/v1/responses/{first['id']}", headers=alice).status_code == 200
    assert http.get(f"/v1/responses/{first['id']}", headers=bob).status_code == 404
    assert http.delete(f"/v1/responses/{first['id']}", headers=bob).status_code == 404
    refused = http.post("/v1/responses", headers=bob, json={
        "model": "echo", "input": "what did alice say?", "previous_response_id": first["id"]})
    assert refused.status_code == 400
    assert refused.json["error"]["code"] == "previous_response_not_found"
    assert refused.json["error"]["param"] == "previous_response_id"
    assert http.get(f"/v1/responses/{first['id']}").status_code == 401


# ---------------------------------------------------------------- validation


BAD = [
    ({"input": []}, 400, "'input'"),
    ({"input": 5}, 400, "'input'"),
    ({"input": [{"role": "robot", "content": "hi"}]}, 400, "input[0].role"),
    ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]}, 400, "call_id"),
    ({"input": [{"role": "developer", "content": "rules only"}]}, 400, "user message"),
    ({"input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0]"),
    ({"input": "hi", "tools": "all"}, 400, "'tools'"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": 3}}}, 400, "text.format"),
    ({"input": "hi", "reasoning": {"effort": 3}}, 400, "reasoning.effort"),
    ({"input": "hi", "temperature": 7}, 400, "temperature"),
    ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x.test/a.png"}]}],
      "model": "gemini-2.5-flash"}, 400, "fetches no URLs"),
    ({"input": "hi", "model": "echo", "previous_response_id": "resp_doesnotexist"}, 400, "not found"),
    ({"input": [{"role": "user", "content": "x"}] * 3}, 400, "MAX_TURNS"),
    ({"input": "hi", "tools": [WEATHER] * 3}, 400, "MAX_TOOLS"),
    ({"input": "hi", "tools": [WEATHER, WEATHER]}, 400, "second tool named 'get_weather'"),
]


@pytest.mark.parametrize("body, status, words", BAD)
def test_bad_requests_get_openais_error_shape(make_app, body, status, words):
    http = make_app(MAX_TURNS="2", MAX_TOOLS="2").test_client()
    response = http.post("/v1/responses", json={"model": "gemini-2.5-flash", **body})
    assert response.status_code == status
    error = response.json["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and words in error["message"]


NAMESPACED = [{"type": "namespace", "name": space, "description": f"{space} tools.", "tools": [WEATHER]}
              for space in ("weather", "maps")]
BAD_CHOICES = [
    (5, [WEATHER], "'tool_choice'"),
    ("weird", [WEATHER], "'weird'"),
    ("weird", None, "'weird'"),
    ({"type": "weird"}, [WEATHER], "'tool_choice'"),
    ({"type": "function"}, [WEATHER], "must have a name"),
    ({"type": "function", "name": "get_time"}, [WEATHER], "names no function tool"),
    ({"type": "function", "name": "get_weather"}, None, "names no function tool"),
    ({"type": "custom", "name": "get_weather"}, [WEATHER], "names no custom tool"),
    ({"type": "function", "name": "get_weather"}, NAMESPACED, "several namespaces"),
    ({"type": "allowed_tools", "mode": "sometimes", "tools": []}, [WEATHER], "allowed_tools"),
    ({"type": "mcp"}, [WEATHER], "server_label"),
]


@pytest.mark.parametrize("choice, tools, words", BAD_CHOICES)
def test_a_tool_choice_outside_the_references_forms_is_a_400(make_app, choice, tools, words):
    http = make_app().test_client()
    response = http.post("/v1/responses", json={"model": "echo", "input": "hi", "tool_choice": choice,
                                                **({"tools": tools} if tools else {})})
    assert response.status_code == 400
    error = response.json["error"]
    assert error["param"] == "tool_choice" and words in error["message"]


@pytest.mark.parametrize("choice", ["none", "auto", "required", {"type": "function", "name": "get_weather"},
                                    {"type": "custom", "name": "apply_patch"}, {"type": "web_search_preview"},
                                    {"type": "mcp", "server_label": "deepwiki"}, {"type": "apply_patch"},
                                    {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function",
                                                                                       "name": "get_weather"}]}])
def test_every_documented_tool_choice_form_is_taken(make_app, choice):
    http = make_app().test_client()
    response = http.post("/v1/responses", json={"model": "echo", "input": "hi", "tool_choice": choice,
                                                "tools": [WEATHER, APPLY_PATCH]})
    assert response.status_code == 200, response.json


def test_unknown_fields_and_items_are_ignored(make_app):
    http = make_app().test_client()
    response = http.post("/v1/responses", json={
        "model": "echo", "prompt_cache_key": "k", "client_metadata": {"a": "b"},
        "text": {"verbosity": "low"}, "service_tier": "auto",
        "input": [{"type": "item_reference", "id": "x"}, {"type": "web_search_call", "id": "ws"},
                  {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]})
    assert response.status_code == 200 and response.json["output"][0]["content"][0]["text"] == "hi"


def test_other_methods_and_unknown_ids(make_app):
    http = make_app().test_client()
    assert http.put("/v1/responses", json={}).status_code == 405
    missing = http.get("/v1/responses/resp_0000000000")
    assert missing.status_code == 404 and set(missing.json["error"]) == {"message", "type", "param", "code"}
    assert http.get("/v1/responses/..%2F..%2Fkeys-gemini").status_code == 404


def test_a_file_id_from_the_upload_cache_is_a_file(server, gemini):
    upload = requests.post(server.url + "/api/upload", files={"file": ("dot.png", base64.b64decode(PNG_B64),
                                                                      "image/png")}, timeout=TIMEOUT).json()
    response, _ = respond(server, False, model="gemini-2.5-flash", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "see"}, {"type": "input_image", "file_id": upload["file_id"]}]}])
    assert response.output_text == "You said: see"
    assert field(posted(gemini)[0].json["contents"][0]["parts"][1], "inlineData")["data"] == PNG_B64



@STREAMS
def test_a_stored_gemini_function_call_keeps_its_signature_for_previous_response_id(server, gemini, stream):
    gemini.script = lambda r: weather_reply(r, SIGNATURE)
    params = {"model": "gemini-2.5-flash", "tools": [WEATHER]}
    first, _ = respond(server, stream, input="What is the weather in Paris?", **params)
    [call] = items(first, "function_call")
    assert not items(first, "reasoning"), "without include, no encrypted_content item"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}
    second, _ = respond(server, stream, input=[result], previous_response_id=first.id, **params)
    assert second.output_text == "It is 21 degrees."
    [called] = posted(gemini)[-1].json["contents"][1]["parts"]
    assert field(called, "thoughtSignature") == SIGNATURE


def test_an_image_from_a_tool_follows_the_results_as_a_user_turn(server, openai):
    image = {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"}
    input_items = [{"role": "user", "content": "Look at dot.png"},
                   {"type": "function_call", "call_id": "call_view", "name": "view_image",
                    "arguments": '{"path": "dot.png"}'},
                   {"type": "function_call_output", "call_id": "call_view", "output": [image]}]
    response, _ = respond(server, False, model="deepseek-v3-671b", input=input_items)
    assert response.status == "completed"
    messages = posted(openai)[-1].json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[3]["content"][-1]["image_url"]["url"] == image["image_url"]


def test_a_namespace_tools_function_comes_back_with_its_namespace(server, openai):
    openai.script = lambda r: openai_tool_call_stream("get_weather", [json.dumps(ARGS)], "call_ns")
    namespace = {"type": "namespace", "name": "weather", "description": "Weather tools.",
                 "tools": [{k: v for k, v in WEATHER.items()}]}
    response, _ = respond(server, True, model="deepseek-v3-671b", input="Paris?", tools=[namespace])
    [call] = items(response, "function_call")
    assert (call.name, call.namespace, call.call_id) == ("get_weather", "weather", "call_ns")
    assert [t["function"]["name"] for t in posted(openai)[0].json["tools"]] == ["get_weather"]


def test_one_function_name_in_two_namespaces_is_qualified_by_its_namespace(server, openai):
    """OpenAI's reference: a call names its namespace, so two namespaces may share a name."""
    openai.script = lambda r: openai_tool_call_stream("maps__get_weather", [json.dumps(ARGS)], "call_two")
    first, _ = respond(server, True, model="deepseek-v3-671b", input="Paris?", tools=NAMESPACED,
                       tool_choice={"type": "function", "name": "maps__get_weather"})
    [call] = items(first, "function_call")
    assert (call.name, call.namespace) == ("get_weather", "maps")
    sent = posted(openai)[0].json
    assert [t["function"]["name"] for t in sent["tools"]] == ["weather__get_weather", "maps__get_weather"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "maps__get_weather"}}
    openai.script = None
    result = {"type": "function_call_output", "call_id": "call_two", "output": '{"temp": 21}'}
    respond(server, False, model="deepseek-v3-671b", input=[result], tools=NAMESPACED,
            previous_response_id=first.id)
    [called] = posted(openai)[-1].json["messages"][1]["tool_calls"]
    assert called["function"]["name"] == "maps__get_weather"
    replayed = [{"role": "user", "content": "Paris?"},
                {"type": "function_call", "call_id": "call_one", "name": "get_weather", "namespace": "weather",
                 "arguments": json.dumps(ARGS)},
                {"type": "function_call_output", "call_id": "call_one", "output": '{"temp": 21}'}]
    respond(server, False, model="deepseek-v3-671b", input=replayed, tools=NAMESPACED)
    [called] = posted(openai)[-1].json["messages"][1]["tool_calls"]
    assert called["function"]["name"] == "weather__get_weather"
