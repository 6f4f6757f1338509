"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) through the official
`anthropic` SDK, against echo, the fake Gemini and the fake OpenAI-compatible upstream, under
gunicorn; validation errors in Anthropic's shape through Flask's test client."""

import base64
import json

import anthropic
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import GEMINI_KEYS, PNG_B64, TOKEN, ZJU_KEYS
from tests.test_fuzz import FUZZ, any_json, assert_no_500, b64, maybe, mimes, models, sent, text
from tests.fakes import (
    Reply,
    count_tokens,
    field,
    gemini_429,
    gemini_answer,
    gemini_chunk,
    gemini_error,
    gemini_events,
    gemini_function_call_events,
    gemini_midstream_error,
    gemini_stream,
    openai_completion,
    openai_stream,
    openai_tool_call_completion,
    openai_tool_call_stream,
)

TIMEOUT = 30
CLIENT_KEY = "client-key-that-must-stay-here"
K0, K1, K2 = GEMINI_KEYS
SIGNATURE = base64.b64encode(b"opaque thought signature").decode()
ARGS = {"city": "Paris"}
WEATHER_TOOL = {"name": "get_weather", "description": "The current weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
HELLO = [{"role": "user", "content": "hello"}]
ANSWERS = {"echo": "hello", "gemini-2.5-flash": "You said: hello",
           "deepseek-v3-671b": "You said: hello"}


def sdk(server, api_key=CLIENT_KEY):
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0,
                               timeout=TIMEOUT)


def ask(server, stream, **params):
    """messages.create, or messages.stream() and its final message."""
    params.setdefault("model", "gemini-2.5-flash")
    params.setdefault("messages", HELLO)
    params.setdefault("max_tokens", 1000)
    with sdk(server) as client:
        if not stream:
            return client.messages.create(**params)
        with client.messages.stream(**params) as events:
            texts = list(events.text_stream)
            message = events.get_final_message()
        assert "".join(texts) == "".join(b.text for b in message.content if b.type == "text")
        return message


def posted(fake):
    return [r for r in fake.requests if r.method == "POST"]


def weather_reply(recorded, signature=None):
    """Fake Gemini: call get_weather, then answer once the function response is there."""
    contents = (recorded.json or {}).get("contents") or []
    if any(field(part, "functionResponse") is not None for c in contents for part in c["parts"]):
        return gemini_answer(recorded, gemini_events(["It is 21", " degrees."]))
    return gemini_answer(recorded, gemini_function_call_events("get_weather", ARGS, signature))


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", list(ANSWERS))
def test_the_sdk_gets_a_message(server, gemini, openai, model, stream):
    message = ask(server, stream, model=model)
    assert message.id.startswith("msg_") and message.type == "message"
    assert (message.role, message.model, message.stop_reason) == ("assistant", model, "end_turn")
    assert [(b.type, b.text) for b in message.content] == [("text", ANSWERS[model])]
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    fake = {"gemini-2.5-flash": gemini, "deepseek-v3-671b": openai}.get(model)
    for recorded in fake.requests if fake else []:
        assert recorded.key in GEMINI_KEYS + ZJU_KEYS
        assert CLIENT_KEY not in json.dumps(recorded.headers) + recorded.body.decode()


def test_the_raw_stream_has_anthropics_events_in_order(server, gemini):
    frames = gemini_stream(["Hel", "lo"], thoughts=["Hmm."]).chunks
    gemini.script = lambda r: Reply(chunks=frames[:1] + [1.2] + frames[1:])  # silent for a while
    body = {"model": "gemini-2.5-flash", "max_tokens": 100, "messages": HELLO, "stream": True}
    response = requests.post(server.url + "/v1/messages?beta=true", json=body, timeout=TIMEOUT,
                             headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [(block.split("\n")[0], json.loads(block.split("\n")[1][6:]))
              for block in response.text.strip().split("\n\n")]
    assert all(name == f"event: {data['type']}" for name, data in events)
    assert ("event: ping", {"type": "ping"}) in events, "pings while the model is silent"
    types = [data["type"] for _, data in events if data["type"] != "ping"]
    assert types == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    starts = [data["content_block"] for _, data in events if data["type"] == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""},
                      {"type": "text", "text": ""}]
    deltas = [data["delta"] for _, data in events if data["type"] == "content_block_delta"]
    assert deltas == [{"type": "thinking_delta", "thinking": "Hmm."},
                      {"type": "text_delta", "text": "Hel"}, {"type": "text_delta", "text": "lo"}]
    end = next(data for _, data in events if data["type"] == "message_delta")
    assert end["delta"]["stop_reason"] == "end_turn" and end["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_thoughts_arrive_as_thinking_blocks(server, gemini, stream):
    gemini.script = lambda r: gemini_answer(r, gemini_events(["Hello!"], thoughts=["Greet them."]))
    message = ask(server, stream, thinking={"type": "enabled", "budget_tokens": 50000})
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert (message.content[0].thinking, message.content[1].text) == ("Greet them.", "Hello!")
    thinking = posted(gemini)[0].json["generationConfig"]["thinkingConfig"]
    assert thinking == {"includeThoughts": True, "thinkingBudget": 24576}


@pytest.mark.parametrize("thinking, config", [
    ({"type": "enabled", "budget_tokens": 2048, "display": "omitted"}, {"thinkingBudget": 2048}),
    ({"type": "disabled"}, None),
    ({"type": "adaptive"}, {"includeThoughts": True}),
])
def test_the_thinking_settings_reach_gemini(server, gemini, thinking, config):
    ask(server, False, thinking=thinking)
    assert posted(gemini)[0].json["generationConfig"].get("thinkingConfig") == config


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_and_settings_become_a_gemini_request(server, gemini, stream):
    # this SDK no longer has temperature, top_p and top_k; older clients still send them
    ask(server, stream, max_tokens=128000, extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},
        stop_sequences=["END"], system=[{"type": "text", "text": "Be brief.",
                                         "cache_control": {"type": "ephemeral"}}],
        metadata={"user_id": "someone"})
    sent = posted(gemini)[0].json
    assert sent["generationConfig"]["maxOutputTokens"] == 65536, "lowered to what the model writes"
    assert {k: sent["generationConfig"][k] for k in ("temperature", "topP", "stopSequences")} == {
        "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]}
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("finish, stop_reason", [("MAX_TOKENS", "max_tokens"), ("SAFETY", "refusal"),
                                                 ("STOP", "end_turn")])
def test_gemini_finish_reasons_become_stop_reasons(server, gemini, finish, stop_reason, stream):
    gemini.script = lambda r: gemini_answer(r, gemini_events(["Once upon"], finish=finish))
    message = ask(server, stream)
    assert (message.stop_reason, message.content[0].text) == (stop_reason, "Once upon")


# ---------------------------------------------------------------- tools and thought signatures


@pytest.mark.parametrize("signature", [SIGNATURE, None])
@pytest.mark.parametrize("stream", [False, True])
def test_a_gemini_tool_use_round_trip_keeps_the_thought_signature(server, gemini, stream, signature):
    gemini.script = lambda r: weather_reply(r, signature)
    first = ask(server, stream, messages=[QUESTION], tools=[WEATHER_TOOL])
    assert first.stop_reason == "tool_use"
    expected = (["thinking"] if signature else []) + ["tool_use"]
    assert [b.type for b in first.content] == expected
    call = first.content[-1]
    assert (call.name, call.input) == ("get_weather", ARGS) and call.id.startswith("toolu_")
    if signature:
        assert (first.content[0].thinking, first.content[0].signature) == ("", signature)
    declared = [d for tool in posted(gemini)[0].json["tools"] for d in field(tool, "functionDeclarations")]
    assert [(d["name"], d["parametersJsonSchema"]) for d in declared] == [
        ("get_weather", WEATHER_TOOL["input_schema"])]

    messages = [QUESTION, {"role": "assistant", "content": first.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                              "content": json.dumps({"temp": 21})}]}]
    second = ask(server, stream, messages=messages, tools=[WEATHER_TOOL])
    assert [(b.type, b.text) for b in second.content] == [("text", "It is 21 degrees.")]
    assert second.stop_reason == "end_turn"
    contents = posted(gemini)[-1].json["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    [called] = contents[1]["parts"]
    assert field(called, "functionCall") == {"name": "get_weather", "args": ARGS}
    assert field(called, "thoughtSignature") == signature
    [answered] = contents[2]["parts"]
    assert field(answered, "functionResponse") == {"name": "get_weather", "response": {"temp": 21}}


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_gemini_calls_keep_the_signature_on_the_first(server, gemini, stream):
    cities = [{"city": "Paris"}, {"city": "Rome"}]
    calls = [{"functionCall": {"name": "get_weather", "args": cities[0]}, "thoughtSignature": SIGNATURE},
             {"functionCall": {"name": "get_weather", "args": cities[1]}}]

    def reply(recorded):
        if "functionResponse" in json.dumps(recorded.json):
            return gemini_answer(recorded, gemini_events(["Both are sunny."]))
        return gemini_answer(recorded, [gemini_chunk(parts=calls, finish="STOP")])

    gemini.script = reply
    first = ask(server, stream, messages=[QUESTION], tools=[WEATHER_TOOL])
    assert [b.type for b in first.content] == ["thinking", "tool_use", "tool_use"]
    assert [b.input for b in first.content[1:]] == cities
    assert len({b.id for b in first.content[1:]}) == 2
    results = [{"type": "tool_result", "tool_use_id": b.id, "content": "sunny"}
               for b in first.content[1:]]
    messages = [QUESTION, {"role": "assistant", "content": first.content},
                {"role": "user", "content": results}]
    assert ask(server, stream, messages=messages, tools=[WEATHER_TOOL]).content[0].text == "Both are sunny."
    model_turn, answers = posted(gemini)[-1].json["contents"][1:]
    assert model_turn["parts"] == calls
    assert [field(p, "functionResponse")["response"] for p in answers["parts"]] == [{"result": "sunny"}] * 2


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_upstream_tool_use_round_trip(server, openai, stream):
    def reply(r):
        if r.json["messages"][-1]["role"] == "tool":
            return None
        return openai_tool_call_stream("get_weather", ['{"city"', ': "Par', 'is"}'], "call_abc") \
            if r.stream else openai_tool_call_completion("get_weather", json.dumps(ARGS), "call_abc")

    openai.script = reply
    params = {"model": "deepseek-v3-671b", "tools": [WEATHER_TOOL],
              "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}
    first = ask(server, stream, messages=[QUESTION], **params)
    assert first.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in first.content] == [
        ("tool_use", "call_abc", "get_weather", ARGS)]
    sent = posted(openai)[0].json
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": WEATHER_TOOL["description"],
        "parameters": WEATHER_TOOL["input_schema"]}}]
    assert (sent["tool_choice"], sent["parallel_tool_calls"], sent["max_tokens"]) == (
        "required", False, 1000)

    result = {"type": "tool_result", "tool_use_id": "call_abc", "is_error": True,
              "content": [{"type": "text", "text": "no such city"}]}
    messages = [QUESTION, {"role": "assistant", "content": first.content},
                {"role": "user", "content": [result]}]
    second = ask(server, stream, messages=messages, **params)
    assert second.content[0].text == "You said: What is the weather in Paris?"
    sent = posted(openai)[-1].json["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_abc",
                        "content": json.dumps({"error": "no such city"})}
    assert [(c["id"], c["function"]["name"]) for c in sent[-2]["tool_calls"]] == [
        ("call_abc", "get_weather")]


@pytest.mark.parametrize("model", ["echo", "gemini-2.5-flash"])
def test_an_image_reaches_the_model(server, gemini, model):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG_B64}}
    message = ask(server, False, model=model, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])
    if model == "echo":
        assert "image/png" in message.content[0].text
        return
    parts = posted(gemini)[0].json["contents"][0]["parts"]
    assert {"inline_data": {"mime_type": "image/png", "data": PNG_B64}} in parts


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "deepseek-v3-671b"])
def test_a_url_source_goes_to_the_upstream_to_fetch(server, gemini, openai, model):
    url = "https://example.com/pictures/cat.png?size=large"
    ask(server, False, model=model, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": url}},
        {"type": "text", "text": "What is this?"}]}])
    if model.startswith("gemini"):
        parts = posted(gemini)[0].json["contents"][0]["parts"]
        assert {"file_data": {"mime_type": "image/png", "file_uri": url}} in parts
    else:
        parts = posted(openai)[0].json["messages"][0]["content"]
        assert {"type": "image_url", "image_url": {"url": url}} in parts


def test_what_claude_code_sends_is_accepted(server, gemini):
    """The request shape Claude Code 2.1 sends (observed against a logging fake)."""
    tools = [dict(WEATHER_TOOL, input_schema={
                 "$schema": "https://json-schema.org/draft/2020-12/schema",
                 **WEATHER_TOOL["input_schema"]}),
             {"name": "Placeholder", "description": "", "defer_loading": True,
              "input_schema": {"type": "object", "properties": {}}},
             {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
    body = {"model": "gemini-2.5-flash", "max_tokens": 128000, "stream": True, "tools": tools,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1;"},
                       {"type": "text", "text": "You are an agent.",
                        "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                       "cache_control": {"type": "ephemeral"}}]},
                         {"role": "system", "content": "Mind the reminders."}],
            "thinking": {"type": "adaptive", "display": "omitted"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "high"}, "metadata": {"user_id": "{}"}}
    response = requests.post(server.url + "/v1/messages?beta=true", json=body, timeout=TIMEOUT,
                              headers={"Authorization": f"Bearer {CLIENT_KEY}",
                                       "anthropic-beta": "claude-code-20250219"})
    assert response.status_code == 200 and "event: message_stop" in response.text
    sent = posted(gemini)[0].json
    assert sent["systemInstruction"]["parts"][0]["text"] == "You are an agent.\n\nMind the reminders."
    assert [d["name"] for d in sent["tools"][0]["functionDeclarations"]] == ["get_weather", "Placeholder"]
    assert "$schema" not in json.dumps(sent["tools"])
    assert "thinkingConfig" not in sent["generationConfig"]
    assert sent["generationConfig"]["maxOutputTokens"] == 65536


# ---------------------------------------------------------------- count_tokens


def test_count_tokens_asks_gemini(server, gemini):
    with sdk(server) as client:
        counted = client.messages.count_tokens(model="gemini-2.5-flash", system="Be brief.",
                                               messages=[QUESTION])
    assert counted.input_tokens == count_tokens("What is the weather in Paris?Be brief.")
    [recorded] = posted(gemini)
    assert recorded.path == "/v1beta/models/gemini-2.5-flash:countTokens"
    assert recorded.key in GEMINI_KEYS
    assert recorded.json["generateContentRequest"]["model"] == "models/gemini-2.5-flash"


@pytest.mark.parametrize("model", ["echo", "deepseek-v3-671b"])
def test_count_tokens_estimates_for_other_upstreams(server, openai, model):
    with sdk(server) as client:
        counted = client.messages.count_tokens(model=model, messages=[
            {"role": "user", "content": "abcd" * 10}])
    assert counted.input_tokens == 10 + 4, "a token per four characters, four per message"
    assert not openai.requests, "nothing is spent on an estimate"


def test_count_tokens_fails_over_to_the_next_key(server, gemini):
    gemini.script = lambda r: gemini_429("30s") if r.key == K0 else None
    with sdk(server) as client:
        assert client.messages.count_tokens(model="gemini-2.5-flash", messages=HELLO).input_tokens == 2
    assert [r.key for r in posted(gemini)] == [K0, K1]


# ---------------------------------------------------------------- the key pool and errors


def first_zju_key_429(recorded):
    if recorded.key == ZJU_KEYS[0]:
        return Reply(status=429, headers={"Retry-After": "40"}, chunks=[
            b'{"error": {"message": "Rate limit reached", "type": "rate_limit", "code": 429}}'])
    return None


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model, pool", [("gemini-2.5-flash", GEMINI_KEYS), ("deepseek-v3-671b", ZJU_KEYS)])
def test_a_429_on_the_first_key_fails_over_and_the_key_rests(server, gemini, openai, model, pool, stream):
    gemini.script = lambda r: gemini_429("30s") if r.key == K0 else None
    openai.script = first_zju_key_429
    for _ in range(3):
        assert ask(server, stream, model=model).content[0].text == "You said: hello"
    keys = [r.key for r in posted(gemini if model.startswith("gemini") else openai)]
    assert keys[:2] == list(pool[:2]) and pool[0] not in keys[2:], "the rate-limited key rests"


def every_key_429(recorded):
    return gemini_429("30s")


def every_key_503(recorded):
    return gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def request_fault(recorded):
    return gemini_error(400, "INVALID_ARGUMENT", "Bad thing in the request.")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("script, status, kind, error", [
    (every_key_429, 429, "rate_limit_error", anthropic.RateLimitError),
    (every_key_503, 529, "overloaded_error", anthropic.InternalServerError),
    (request_fault, 400, "invalid_request_error", anthropic.BadRequestError),
])
def test_the_sdk_sees_anthropics_statuses(server, gemini, stream, script, status, kind, error):
    gemini.script = script
    with pytest.raises(error) as raised:
        ask(server, stream)
    assert raised.value.status_code == status
    assert raised.value.body["error"]["type"] == kind
    assert raised.value.body["type"] == "error" and raised.value.body["request_id"]
    if status == 429:
        assert 29 <= int(raised.value.response.headers["retry-after"]) <= 31


def too_long_for_gemini(recorded):
    return gemini_error(400, "INVALID_ARGUMENT", "The input token count (1100000) exceeds the "
                                                 "maximum number of tokens allowed (1048576).")


def too_long_for_openai(recorded):
    return Reply(status=400, chunks=[json.dumps({"error": {
        "message": "This model's maximum context length is 131072 tokens. However, you "
                   "requested 140000 tokens (139000 in the messages, 1000 in the completion).",
        "type": "invalid_request_error", "param": None, "code": "context_length_exceeded"}}).encode()])


@pytest.mark.parametrize("model, used, limit", [("gemini-2.5-flash", 1100000, 1048576),
                                                ("deepseek-v3-671b", 140000, 131072)])
def test_a_context_too_long_is_said_in_anthropics_words(server, gemini, openai, model, used, limit):
    """Claude Code compacts the conversation when it reads "prompt is too long"."""
    gemini.script, openai.script = too_long_for_gemini, too_long_for_openai
    with pytest.raises(anthropic.BadRequestError) as raised:
        ask(server, True, model=model)
    message = raised.value.body["error"]["message"]
    assert message.startswith(f"prompt is too long: {used} tokens > {limit} maximum (")
    assert len(posted(gemini) + posted(openai)) == 1, "not tried on other keys"


def test_a_failure_after_the_stream_began_is_an_error_event(server, gemini):
    gemini.script = lambda r: gemini_midstream_error(["Hello ", "there"])
    with pytest.raises(anthropic.APIStatusError) as raised:
        ask(server, True)
    assert raised.value.body["error"]["type"] == "overloaded_error"


def test_access_tokens_are_taken_as_x_api_key_or_bearer(token_server):
    url = token_server.url + "/v1/messages"
    body = {"model": "echo", "max_tokens": 10, "messages": HELLO}
    for headers in ({"x-api-key": TOKEN}, {"Authorization": f"Bearer {TOKEN}"}):
        assert requests.post(url, json=body, headers=headers, timeout=TIMEOUT).status_code == 200
    with pytest.raises(anthropic.AuthenticationError) as raised:
        ask(token_server, False, model="echo")
    assert raised.value.body["error"]["type"] == "authentication_error"


BAD_BODIES = [  # fields over a valid request, status, error type, words in the message
    ({"max_tokens": None}, 400, "invalid_request_error", "max_tokens"),
    ({"messages": []}, 400, "invalid_request_error", "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_request_error", "role"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]},
     400, "invalid_request_error", "tool_use_id"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "file", "file_id": "file_01"}}]}]}, 400, "invalid_request_error", "Files API"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "url", "url": "file:///etc/passwd"}}]}]}, 400, "invalid_request_error", "https"),
    ({"messages": HELLO + [{"role": "assistant", "content": "Sure"}]}, 400,
     "invalid_request_error", "prefill"),
    ({"temperature": 1.5}, 400, "invalid_request_error", "temperature"),
    ({"tools": [{"name": "x"}]}, 400, "invalid_request_error", "input_schema"),
    ({"tool_choice": {"type": "tool"}, "tools": [WEATHER_TOOL]}, 400, "invalid_request_error",
     "tool_choice"),
    ({"tool_choice": "auto", "tools": [WEATHER_TOOL]}, 400, "invalid_request_error", "must be an object"),
    ({"tool_choice": "auto"}, 400, "invalid_request_error", "must be an object"),
    ({"tool_choice": {"type": "tool", "name": "get_time"}, "tools": [WEATHER_TOOL]}, 400,
     "invalid_request_error", "'tool_choice.name' must name one of 'tools'"),
    ({"tool_choice": {"type": "sometimes"}, "tools": [WEATHER_TOOL]}, 400, "invalid_request_error",
     "tool_choice"),
    *[({"max_tokens": value}, 400, "invalid_request_error", "'max_tokens' must be a positive integer")
      for value in (1e30, 1.5, 1.0, 0, -3, True, "100")],
    ({"thinking": {"type": "sometimes"}}, 400, "invalid_request_error", "thinking"),
    ({"messages": [{"role": "user", "content": "x" * 50}]}, 413, "request_too_large",
     "MAX_TEXT_CHARS"),
]


@pytest.mark.parametrize("fields, status, kind, words", BAD_BODIES)
def test_bad_requests_get_anthropics_error_shape(make_app, fields, status, kind, words):
    client = make_app(MAX_TEXT_CHARS="40").test_client()
    body = {"model": "gemini-2.5-flash", "max_tokens": 100, "messages": HELLO, **fields}
    response = client.post("/v1/messages", json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == status
    assert set(response.json) == {"type", "error", "request_id"}
    assert response.json["type"] == "error" and response.json["error"]["type"] == kind
    assert words in response.json["error"]["message"]


@pytest.mark.parametrize("settings, request_args, status, kind", [
    ({"ZJU_API_KEY": ""}, {"json": {"model": "deepseek-v3", "max_tokens": 5, "messages": HELLO}},
     404, "not_found_error"),
    ({}, {"data": "hello", "content_type": "text/plain"}, 415, "invalid_request_error"),
    ({}, {"json": ["not", "an", "object"]}, 400, "invalid_request_error"),
])
def test_other_errors_get_anthropics_error_shape(make_app, settings, request_args, status, kind):
    response = make_app(**settings).test_client().post("/v1/messages/count_tokens", **request_args)
    assert (response.status_code, response.json["error"]["type"]) == (status, kind)


@pytest.mark.parametrize("method, path, status, kind", [
    ("get", "/v1/messages", 405, "invalid_request_error"),
    ("delete", "/v1/messages/count_tokens", 405, "invalid_request_error"),
    ("post", "/v1/messages/batches", 404, "not_found_error"),
    ("get", "/v1/messages/msg_01/x", 404, "not_found_error"),
])
def test_other_urls_under_messages_get_anthropics_error_shape(client, method, path, status, kind):
    """They fell to /v1's catch-all, which answered in OpenAI's shape (found by trying)."""
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert set(response.json) == {"type", "error", "request_id"}
    assert response.json["error"]["type"] == kind
    assert status != 405 or response.headers["Allow"] == "OPTIONS, POST"
    assert "param" in client.get("/v1/nothing-here").json["error"]  # OpenAI's shape there


def test_over_the_rate_limit_is_anthropics_rate_limit_error(make_app):
    client = make_app(RATE_LIMIT="1/minute").test_client()
    body = {"model": "echo", "max_tokens": 10, "messages": HELLO}
    assert client.post("/v1/messages", json=body).status_code == 200
    response = client.post("/v1/messages", json=body)
    assert (response.status_code, response.json["error"]["type"]) == (429, "rate_limit_error")
    assert 1 <= int(response.headers["retry-after"]) <= 60


def test_an_upstream_that_ignores_the_stream_flag_is_still_read(server, gemini):
    gemini.script = lambda r: Reply(chunks=[json.dumps(gemini_events(["Whole."])[0]).encode()],
                                    headers={"Content-Type": "application/json"})
    assert ask(server, True).content[0].text == "Whole."


# ---------------------------------------------------------------- fuzzing (as tests/test_fuzz.py does)

def mostly(*plausible):
    """One of the plausible values, or one time in twenty any JSON at all."""
    return st.integers(0, 19).flatmap(lambda n: any_json if n == 0 else st.one_of(*plausible))


block_types = st.sampled_from(["text", "image", "document", "tool_use", "tool_result", "thinking",
                               "redacted_thinking", "server_tool_use", "search_result"])
source = maybe({"type": mostly(st.sampled_from(["base64", "url", "text", "file"])),
                "media_type": mostly(mimes), "data": mostly(b64),
                "url": mostly(st.sampled_from(["https://example.com/a.png", "ftp://x/y.png", ""]))})
block = st.fixed_dictionaries({"type": mostly(block_types)}, optional={
    "text": mostly(text), "source": mostly(source),
    "id": mostly(st.sampled_from(["toolu_1", "toolu_2"])), "name": mostly(text),
    "input": any_json, "tool_use_id": mostly(st.sampled_from(["toolu_1", "x"])),
    "content": mostly(text, st.lists(any_json, max_size=2)), "is_error": mostly(st.booleans()),
    "thinking": mostly(text), "signature": mostly(text), "cache_control": any_json})
anthropic_message = st.fixed_dictionaries({
    "role": mostly(st.sampled_from(["user", "user", "assistant", "system"])),
    "content": mostly(text, st.lists(mostly(block), max_size=3))})
anthropic_tool = st.fixed_dictionaries({"name": mostly(text), "input_schema": mostly(
    st.just({"type": "object", "properties": {}}))}, optional={
    "description": mostly(text), "type": mostly(st.sampled_from(["custom", "web_search_20250305"])),
    "defer_loading": mostly(st.booleans())})
anthropic_bodies = st.fixed_dictionaries({
    "model": mostly(st.sampled_from(["echo", "gemini-2.5-flash", "deepseek-v3-671b"]), models),
    "max_tokens": mostly(st.integers(1, 10**6)),
    "messages": mostly(st.builds(lambda first, rest: [first, *rest], st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.sampled_from(["hi", "what is this?"])}),
        st.lists(mostly(anthropic_message), max_size=3))),
}, optional={
    "system": mostly(text, st.lists(mostly(block), max_size=2)), "stream": mostly(st.booleans()),
    "temperature": mostly(st.floats(0, 1)), "top_p": mostly(st.floats(0, 1)),
    "stop_sequences": mostly(st.lists(text, max_size=3)),
    "tools": mostly(st.lists(mostly(anthropic_tool), max_size=3)),
    "tool_choice": mostly(maybe({"type": mostly(st.sampled_from(["auto", "any", "tool", "none"])),
                                 "name": mostly(text)})),
    "thinking": mostly(maybe({"type": mostly(st.sampled_from(["enabled", "disabled", "adaptive"])),
                              "budget_tokens": mostly(st.integers(1, 10**6)),
                              "display": mostly(st.just("omitted"))})),
})


@pytest.fixture
def fine(gemini, openai):
    """Fakes that answer fine whatever they are sent: a 5xx is then ChatBridge's own."""
    gemini.script = lambda r: gemini_answer(r, gemini_events(["ok"]))
    openai.script = lambda r: openai_stream(["ok"]) if r.stream else openai_completion("ok")


def anthropic_error(response):
    if response.status_code >= 400:
        assert response.json["type"] == "error", response.json
        assert isinstance(response.json["error"]["type"], str)
        assert isinstance(response.json["error"]["message"], str) and response.json["error"]["message"]


@settings(FUZZ, max_examples=200)
@given(body=anthropic_bodies, path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]))
def test_messages_bodies(client, fine, body, path):
    response = sent(client, path, body)
    assert_no_500(response)
    anthropic_error(response)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_a_max_tokens_written_as_a_float_is_refused_not_rounded(client, path):
    """max_tokens must be an integer of at least 1: 1e30 in the JSON is a float (a large integer
    is lowered to what the model allows instead)."""
    body = b'{"model": "echo", "max_tokens": 1e30, "messages": [{"role": "user", "content": "hi"}]}'
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"] == {"type": "invalid_request_error",
                                      "message": "'max_tokens' must be a positive integer"}
