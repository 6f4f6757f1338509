"""The gateway APIs (issue 3) through the official SDKs: OpenAI-compatible /v1 and native Gemini /v1beta and /v1."""

import asyncio
import base64
import json
import time

import openai as openai_sdk
import pytest
import requests
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from openai import AsyncOpenAI, OpenAI

from chatbridge.config import load_config
from chatbridge.service import Service
from tests.client import sse_data
from tests.conftest import (
    GEMINI_KEYS,
    PNG_B64,
    TOKEN,
    TOKEN_SETTINGS,
    ZJU_KEYS,
    unreachable_settings,
    upstream_env,
)
from tests.fakes import (
    Reply,
    count_tokens,
    field,
    gemini_429,
    gemini_answer,
    gemini_error,
    gemini_events,
    gemini_function_call,
    gemini_function_call_events,
    gemini_function_call_object,
    gemini_merge,
    openai_stream,
    openai_tool_call_completion,
    openai_tool_call_stream,
)

TIMEOUT = 30
CLIENT_KEY = "client-key-that-must-stay-here"
CLIENT_AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
K0, K1, K2 = GEMINI_KEYS
PNG_URL = "data:image/png;base64," + PNG_B64
SIGNATURE = base64.b64encode(b"opaque thought signature").decode()
ARGS = {"city": "Paris"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
HELLO = [{"role": "user", "content": "hello"}]
PROVIDER_MODELS = ["gemini-2.5-flash", "deepseek-v3-671b"]
ZJU_ONLY = {"ALL_GEMINI_API_KEYS": ""}
ANSWERS = {"echo": "hello", "gemini-2.5-flash": "You said: hello", "deepseek-v3-671b": "You said: hello"}


# ---------------------------------------------------------------- servers with other settings

@pytest.fixture(scope="module")
def zju_only_server(start_gunicorn, fake_gemini, fake_openai):
    """Keys for the OpenAI-compatible upstream only: Gemini models have no provider."""
    return start_gunicorn(upstream_env(fake_gemini, fake_openai, **ZJU_ONLY))


def settings_of(name):
    """What the server fixture so named adds to upstream_env, for the same app in this process."""
    if name == "unreachable_server":
        return unreachable_settings()
    return {"server": {}, "zju_only_server": ZJU_ONLY, "token_server": TOKEN_SETTINGS}[name]


@pytest.fixture
def use(request, gemini, openai):
    """Any server fixture by name, with fresh key state and fresh fakes."""
    def fresh(name):
        server = request.getfixturevalue(name)
        server.reset_state()
        return server
    return fresh


# ---------------------------------------------------------------- clients and helpers

def openai_client(server, api_key=CLIENT_KEY):
    return OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT)


@pytest.fixture
def google_client():
    """Makes google-genai clients for a server (API version v1beta or v1); they are closed after the test."""
    clients = []

    def make(server, api_version="v1beta", api_key=CLIENT_KEY):
        options = types.HttpOptions(base_url=server.url, api_version=api_version, timeout=TIMEOUT * 1000)
        clients.append(genai.Client(api_key=api_key, http_options=options))
        return clients[-1]
    yield make
    for client in clients:
        client.close()


def create(server, sdk_kind="sync", api_key=CLIENT_KEY, **params):
    """chat.completions.create with the sync or async SDK: a ChatCompletion, or every chunk of a stream."""
    params.setdefault("model", "gemini-2.5-flash")
    params.setdefault("messages", HELLO)
    stream = params.get("stream")
    if sdk_kind == "sync":
        with openai_client(server, api_key) as sdk:
            result = sdk.chat.completions.create(**params)
            return list(result) if stream else result

    async def run():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0,
                               timeout=TIMEOUT) as sdk:
            result = await sdk.chat.completions.create(**params)
            return [chunk async for chunk in result] if stream else result
    return asyncio.run(run())


def outcome(result):
    """Content, reasoning, tool calls (as dicts) and finish reason of a ChatCompletion or of its chunks."""
    if not isinstance(result, list):
        message, choice = result.choices[0].message, result.choices[0]
        calls = [call.model_dump(exclude_none=True) for call in message.tool_calls or []]
        return (message.content or "", getattr(message, "reasoning_content", None) or "", calls,
                choice.finish_reason)
    choices = [chunk.choices[0] for chunk in result if chunk.choices]
    text = "".join(c.delta.content or "" for c in choices)
    reasoning = "".join(getattr(c.delta, "reasoning_content", None) or "" for c in choices)
    finishes = [c.finish_reason for c in choices if c.finish_reason]
    assert len(finishes) == 1, finishes
    return text, reasoning, streamed_tool_calls(choices), finishes[0]


def streamed_tool_calls(choices):
    """Tool calls put together from tool_calls deltas, as a client does: by index, arguments appended."""
    calls = {}
    for choice in choices:
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
            call["id"] = delta.id or call["id"]
            if delta.function:
                call["function"]["name"] += delta.function.name or ""
                call["function"]["arguments"] += delta.function.arguments or ""
            extra = (delta.model_extra or {}).get("extra_content")
            if extra:
                call["extra_content"] = extra
    return [calls[index] for index in sorted(calls)]


def posted(fake):
    """The fake's POSTs (generation), leaving out any model-list lookups."""
    return [r for r in fake.requests if r.method == "POST"]


def assert_pool_keys_only(fake, pool, secret=CLIENT_KEY):
    """Every request the fake saw used a pool key, and the client's own credential went nowhere."""
    assert fake.requests, "the upstream was called"
    for recorded in fake.requests:
        assert recorded.key in pool
        assert secret not in json.dumps([recorded.headers, recorded.query]) + recorded.body.decode()


def weather_reply(recorded, signature=None):
    """Fake Gemini: call get_weather, then answer once the function response is there."""
    contents = (recorded.json or {}).get("contents") or []
    answered = any(field(part, "functionResponse") is not None for c in contents for part in c.get("parts", []))
    if answered:
        return gemini_answer(recorded, gemini_events(["It is 21", " degrees."]))
    return gemini_answer(recorded, gemini_function_call_events("get_weather", ARGS, signature))


# ---------------------------------------------------------------- the fakes speak what the SDKs parse

def test_the_openai_sdk_parses_the_fake_tool_calls(openai):
    openai.script = lambda r: openai_tool_call_stream("get_weather", ['{"ci', 'ty": "Pa', 'ris"}'], usage=True) \
        if r.stream else openai_tool_call_completion("get_weather", json.dumps(ARGS))
    params = {"model": "deepseek-v3-671b", "messages": [QUESTION], "tools": [WEATHER_TOOL]}
    with OpenAI(base_url=openai.base_url, api_key="k", max_retries=0, timeout=TIMEOUT) as sdk:
        results = [sdk.chat.completions.create(**params), list(sdk.chat.completions.create(**params, stream=True))]
    for result in results:
        _, _, calls, finish = outcome(result)
        assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
            ("call_fake1", "get_weather", ARGS)]
        assert finish == "tool_calls"


def test_the_google_sdk_parses_the_fake_function_calls_counts_and_models(gemini):
    gemini.script = lambda r: (gemini_function_call if r.stream else gemini_function_call_object)(
        "get_weather", ARGS, SIGNATURE, text="Let me look.")
    options = types.HttpOptions(base_url=f"http://127.0.0.1:{gemini.port}", api_version="v1beta")
    with genai.Client(api_key="k", http_options=options) as sdk:
        whole = sdk.models.generate_content(model="gemini-2.5-flash", contents="weather?")
        streamed = [part for chunk in sdk.models.generate_content_stream(model="gemini-2.5-flash", contents="w")
                    for part in chunk.candidates[0].content.parts]
        for parts in (whole.candidates[0].content.parts, streamed):
            assert parts[0].text == "Let me look."
            assert (parts[1].function_call.name, parts[1].function_call.args) == ("get_weather", ARGS)
            assert parts[1].thought_signature == base64.b64decode(SIGNATURE)
        gemini.script = None
        assert sdk.models.count_tokens(model="gemini-2.5-flash", contents="hello world").total_tokens == 3
        assert sdk.models.get(model="gemini-2.5-pro").display_name == "Gemini 2.5 Pro"
        with pytest.raises(genai_errors.ClientError) as unknown:
            sdk.models.get(model="gemini-0-nonesuch")
    assert unknown.value.code == 404


# ---------------------------------------------------------------- OpenAI SDK: answers

@pytest.mark.parametrize("sdk_kind", ["sync", "async"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["echo", *PROVIDER_MODELS])
def test_openai_sdk_gets_the_answer(server, gemini, openai, model, stream, sdk_kind):
    options = {"stream_options": {"include_usage": True}} if stream else {}
    result = create(server, sdk_kind, model=model, stream=stream, **options)
    text, _, calls, finish = outcome(result)
    assert (text, calls, finish) == (ANSWERS[model], [], "stop")
    if stream:
        assert {chunk.object for chunk in result} == {"chat.completion.chunk"}
        assert len({chunk.id for chunk in result}) == 1
        assert result[-1].choices == [] and result[-1].usage.total_tokens > 0
        assert all(chunk.usage is None for chunk in result[:-1])
    else:
        assert result.object == "chat.completion" and result.usage.total_tokens > 0
    if model != "echo":
        fake = gemini if model.startswith("gemini") else openai
        assert_pool_keys_only(fake, GEMINI_KEYS if fake is gemini else ZJU_KEYS)


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_a_stream_without_include_usage_has_no_usage_chunk(server, model):
    chunks = create(server, model=model, stream=True)
    assert outcome(chunks)[0] == "You said: hello"
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


@pytest.mark.parametrize("model", ["echo", *PROVIDER_MODELS])
def test_the_raw_stream_ends_with_done(server, model):
    response = requests.post(server.url + "/v1/chat/completions", headers=CLIENT_AUTH, timeout=TIMEOUT,
                             json={"model": model, "stream": True, "messages": HELLO})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    data = sse_data(response.content)
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    chunks = [json.loads(item) for item in data[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == ANSWERS[model]


@pytest.mark.parametrize("model, reply", [
    ("gemini-2.5-flash", lambda r: gemini_answer(r, gemini_events(["Hello", " there"], thoughts=["Let me think"]))),
    ("deepseek-r1-671b", lambda r: openai_stream(["Hello", " there"], reasoning=["Let me", " think"])),
])
def test_reasoning_arrives_as_reasoning_content_deltas(server, gemini, openai, model, reply):
    gemini.script = openai.script = reply
    text, reasoning, _, _ = outcome(create(server, model=model, stream=True))
    assert (text, reasoning) == ("Hello there", "Let me think")


def test_messages_and_settings_become_a_gemini_request(server, gemini):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [{"type": "text", "text": "and "}, {"type": "text", "text": "now?"}]}]
    completion = create(server, messages=messages, temperature=0.2, top_p=0.5, max_tokens=50, stop="END")
    assert completion.choices[0].message.content.split() == ["You", "said:", "and", "now?"]
    sent = posted(gemini)[-1].json
    assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
    assert [part["text"] for part in field(sent, "systemInstruction")["parts"]] == ["Be brief."]
    config = field(sent, "generationConfig")
    assert (config["temperature"], config["topP"], config["maxOutputTokens"], config["stopSequences"]) == (
        0.2, 0.5, 50, ["END"])


@pytest.mark.parametrize("params, name, value", [
    ({"max_completion_tokens": 60}, "maxOutputTokens", 60),
    ({"stop": ["a", "b"]}, "stopSequences", ["a", "b"]),
    ({"response_format": {"type": "json_object"}}, "responseMimeType", "application/json"),
])
def test_generation_settings_reach_gemini(server, gemini, params, name, value):
    create(server, **params)
    assert field(posted(gemini)[-1].json, "generationConfig")[name] == value


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_an_image_part_reaches_the_upstream(server, gemini, openai, model):
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": PNG_URL}}]
    create(server, model=model, messages=[{"role": "user", "content": content}])
    if model.startswith("gemini"):
        parts = posted(gemini)[-1].json["contents"][-1]["parts"]
        images = [field(part, "inlineData") for part in parts if field(part, "inlineData")]
        assert [(field(image, "mimeType"), image["data"]) for image in images] == [("image/png", PNG_B64)]
    else:
        parts = posted(openai)[-1].json["messages"][-1]["content"]
        assert [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"] == [PNG_URL]


# ---------------------------------------------------------------- OpenAI SDK: tool calls

@pytest.mark.parametrize("signature", [SIGNATURE, None])
@pytest.mark.parametrize("stream", [False, True])
def test_a_gemini_tool_call_round_trip(server, gemini, stream, signature):
    gemini.script = lambda r: weather_reply(r, signature)
    messages = [QUESTION]
    _, _, calls, finish = outcome(create(server, messages=messages, tools=[WEATHER_TOOL], stream=stream))
    assert finish == "tool_calls" and len(calls) == 1
    call = calls[0]
    assert (call["type"], call["function"]["name"]) == ("function", "get_weather")
    assert json.loads(call["function"]["arguments"]) == ARGS and call["id"]
    declarations = [d for tool in posted(gemini)[0].json["tools"] for d in field(tool, "functionDeclarations")]
    assert [d["name"] for d in declarations] == ["get_weather"]
    if signature:
        assert call["extra_content"]["google"]["thought_signature"] == signature

    messages += [{"role": "assistant", "content": None, "tool_calls": calls},
                 {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temp": 21})}]
    text, _, _, finish = outcome(create(server, messages=messages, tools=[WEATHER_TOOL], stream=stream))
    assert (text, finish) == ("It is 21 degrees.", "stop")
    contents = posted(gemini)[-1].json["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    [called] = contents[1]["parts"]
    assert field(called, "functionCall")["name"] == "get_weather"
    assert field(called, "functionCall")["args"] == ARGS
    if signature:
        assert field(called, "thoughtSignature") == signature
    [answered] = contents[2]["parts"]
    response = field(answered, "functionResponse")
    assert response["name"] == "get_weather"
    assert "temp" in json.dumps(response["response"]) and "21" in json.dumps(response["response"])


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_upstream_tool_call_round_trip(server, openai, stream):
    def reply(r):
        if r.json["messages"][-1]["role"] == "tool":
            return None
        usage = bool((r.json.get("stream_options") or {}).get("include_usage"))
        return openai_tool_call_stream("get_weather", ['{"city"', ': "Par', 'is"}'], "call_abc", usage) \
            if r.stream else openai_tool_call_completion("get_weather", json.dumps(ARGS), "call_abc")

    openai.script = reply
    messages = [QUESTION]
    params = {"model": "deepseek-v3-671b", "tools": [WEATHER_TOOL], "tool_choice": "auto", "stream": stream}
    _, _, calls, finish = outcome(create(server, messages=messages, **params))
    assert finish == "tool_calls"
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("call_abc", "get_weather", ARGS)]
    sent = posted(openai)[0].json
    assert (sent["tools"], sent["tool_choice"]) == ([WEATHER_TOOL], "auto")

    tool_message = {"role": "tool", "tool_call_id": "call_abc", "content": json.dumps({"temp": 21})}
    messages += [{"role": "assistant", "content": None, "tool_calls": calls}, tool_message]
    text, _, _, finish = outcome(create(server, messages=messages, **params))
    assert (text, finish) == ("You said: What is the weather in Paris?", "stop")
    sent = posted(openai)[-1].json["messages"]
    assert sent[-1] == tool_message
    assert [(c["id"], c["function"]["name"]) for c in sent[-2]["tool_calls"]] == [("call_abc", "get_weather")]


# ---------------------------------------------------------------- OpenAI SDK: errors and statuses

def every_key_429(recorded):
    return gemini_429("30s")


def request_fault(recorded):
    return gemini_error(400, "INVALID_ARGUMENT", "Bad thing in the request.")


def no_such_model(recorded):
    if recorded.model == "gemini-9-ultra":
        return gemini_error(404, "NOT_FOUND", f"models/{recorded.model} is not found for API version v1beta.")
    return None


def every_key_503(recorded):
    return gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def first_gemini_key_429(recorded):
    return gemini_429("30s") if recorded.key == K0 else None


def first_zju_key_429(recorded):
    if recorded.key == ZJU_KEYS[0]:
        return Reply(status=429, headers={"Retry-After": "40"}, chunks=[
            b'{"error": {"message": "Rate limit reached", "type": "rate_limit", "code": 429}}'])
    return None


ERRORS = [  # server fixture, fake Gemini script, request fields, status, code, words in the message
    pytest.param("server", None, {"n": 2}, 400, None, None, id="n-2"),
    pytest.param("server", None, {"messages": []}, 400, None, None, id="no-messages"),
    pytest.param("server", None, {"messages": [{"role": "robot", "content": "hi"}]}, 400, None, None,
                 id="unknown-role"),
    pytest.param("server", no_such_model, {"model": "gemini-9-ultra"}, 404, "model_not_found", None,
                 id="upstream-has-no-such-model"),
    pytest.param("zju_only_server", None, {}, 404, "model_not_found", None, id="provider-without-keys"),
    pytest.param("server", every_key_429, {}, 429, None, None, id="every-key-cooling"),
    pytest.param("server", request_fault, {}, 400, None, "Bad thing in the request.",
                 id="upstream-refuses-the-request"),
    pytest.param("server", every_key_503, {}, 502, None, "overloaded", id="upstream-fails-every-key"),
    pytest.param("unreachable_server", None, {}, 503, None, None, id="unreachable"),
    pytest.param("token_server", None, {}, 401, None, None, id="wrong-token"),
]
SDK_ERRORS = {400: openai_sdk.BadRequestError, 401: openai_sdk.AuthenticationError,
              404: openai_sdk.NotFoundError, 429: openai_sdk.RateLimitError,
              502: openai_sdk.InternalServerError, 503: openai_sdk.InternalServerError}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name, script, fields, status, code, words", ERRORS)
def test_openai_sdk_sees_honest_statuses(use, gemini, stream, name, script, fields, status, code, words):
    target = use(name)
    gemini.script = script
    with pytest.raises(SDK_ERRORS[status]) as raised:
        create(target, stream=stream, **fields)
    error = raised.value
    assert error.status_code == status
    if code:
        assert error.code == code
    if status == 429:
        assert 29 <= int(error.response.headers["Retry-After"]) <= 31
    if words:
        assert words in error.message


@pytest.mark.parametrize("name, script, fields, status, code, words", ERRORS)
def test_every_error_has_the_openai_shape(make_app, gemini, openai, name, script, fields, status, code, words):
    client = make_app(**settings_of(name)).test_client()
    gemini.script = script
    response = client.post("/v1/chat/completions", headers=CLIENT_AUTH,
                           json={"model": "gemini-2.5-flash", "messages": HELLO, **fields})
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    if words:
        assert words in body["error"]["message"]
    for fake in (gemini, openai):
        assert all(CLIENT_KEY not in json.dumps(r.headers) for r in fake.requests)


# ---------------------------------------------------------------- OpenAI SDK: the key pool and the model list

@pytest.mark.parametrize("model, pool", [("gemini-2.5-flash", GEMINI_KEYS), ("deepseek-v3-671b", ZJU_KEYS)])
def test_rotation_spreads_sdk_requests_over_the_pool(server, gemini, openai, model, pool):
    for turn in range(len(pool)):
        assert outcome(create(server, model=model, stream=bool(turn % 2)))[0] == "You said: hello"
    fake = gemini if model.startswith("gemini") else openai
    assert sorted(r.key for r in posted(fake)) == sorted(pool), "each request took the next key"
    assert_pool_keys_only(fake, pool)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model, pool", [("gemini-2.5-flash", GEMINI_KEYS), ("deepseek-v3-671b", ZJU_KEYS)])
def test_a_429_on_the_first_key_fails_over_unseen(server, gemini, openai, model, pool, stream):
    gemini.script, openai.script = first_gemini_key_429, first_zju_key_429
    assert outcome(create(server, model=model, stream=stream))[0] == "You said: hello"
    fake = gemini if model.startswith("gemini") else openai
    assert [r.key for r in posted(fake)] == list(pool[:2])


def test_openai_sdk_lists_the_configured_models(server):
    with openai_client(server) as sdk:
        models = list(sdk.models.list())
    ids = {model.id for model in models}
    assert {"echo", "gemini-2.5-flash", "gemini-2.5-pro", "deepseek-r1-671b", "deepseek-v3-671b"} <= ids
    assert {model.object for model in models} == {"model"}


@pytest.mark.parametrize("name, present, absent", [
    ("zju_only_server", {"echo", "deepseek-r1-671b", "deepseek-v3-671b"}, {"gemini-2.5-flash"}),
    ("unreachable_server", {"echo", "gemini-2.5-flash-lite", "deepseek-v3-671b"}, {"gemini-2.5-pro"}),
])
def test_the_model_list_follows_the_configuration(use, name, present, absent):
    with openai_client(use(name)) as sdk:
        ids = {model.id for model in sdk.models.list()}
    assert present <= ids and not absent & ids


@pytest.mark.parametrize("headers, params, shape", [
    ({"x-goog-api-key": CLIENT_KEY}, {}, "google"),
    ({}, {"key": CLIENT_KEY}, "google"),
    ({"Authorization": f"Bearer {CLIENT_KEY}"}, {}, "openai"),
    ({}, {}, "openai"),
])
def test_get_v1_models_answers_in_the_callers_shape(server, headers, params, shape):
    response = requests.get(server.url + "/v1/models", headers=headers, params=params, timeout=TIMEOUT)
    assert response.status_code == 200
    body = response.json()
    if shape == "google":
        assert "object" not in body
        assert {"models/gemini-2.5-flash", "models/gemini-2.5-pro"} <= {m["name"] for m in body["models"]}
    else:
        assert body["object"] == "list" and "models" not in body
        assert {"echo", "gemini-2.5-flash", "deepseek-v3-671b"} <= {m["id"] for m in body["data"]}


# ---------------------------------------------------------------- access tokens

def test_access_tokens_guard_the_openai_gateway(use, gemini):
    target = use("token_server")
    with pytest.raises(openai_sdk.AuthenticationError):
        create(target, api_key="wrong-token")
    assert outcome(create(target, api_key=TOKEN))[0] == "You said: hello"
    assert_pool_keys_only(gemini, GEMINI_KEYS, secret=TOKEN)


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_access_tokens_guard_the_native_gateway(google_client, use, gemini, api_version):
    target = use("token_server")
    with pytest.raises(genai_errors.ClientError) as refused:
        google_client(target, api_version, "wrong-token").models.generate_content(
            model="gemini-2.5-flash", contents="hello")
    assert refused.value.code == 401
    sdk = google_client(target, api_version, TOKEN)
    assert sdk.models.generate_content(model="gemini-2.5-flash", contents="hello").text == "You said: hello"
    url = f"{target.url}/{api_version}/models/gemini-2.5-flash:generateContent"
    by_query = requests.post(url, params={"key": TOKEN}, json={"contents": [{"parts": [{"text": "hi"}]}]},
                             timeout=TIMEOUT)
    assert by_query.status_code == 200
    assert requests.post(url, json={"contents": []}, timeout=TIMEOUT).status_code == 401
    assert all("key" not in r.query for r in gemini.requests)
    assert_pool_keys_only(gemini, GEMINI_KEYS, secret=TOKEN)


# ---------------------------------------------------------------- google-genai SDK

@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_google_sdk_generates_through_the_pool(google_client, server, gemini, api_version):
    sdk = google_client(server, api_version)
    assert sdk.models.generate_content(model="gemini-2.5-flash", contents="hello").text == "You said: hello"
    chunks = sdk.models.generate_content_stream(model="gemini-2.5-flash", contents="hello")
    assert "".join(chunk.text or "" for chunk in chunks) == "You said: hello"
    whole, streamed = posted(gemini)
    assert whole.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert streamed.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert streamed.query == {"alt": "sse"}
    assert whole.key != streamed.key, "the requests took turns"
    assert_pool_keys_only(gemini, GEMINI_KEYS)


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_google_sdk_counts_tokens_and_lists_models(google_client, server, gemini, api_version):
    sdk = google_client(server, api_version)
    assert sdk.models.count_tokens(model="gemini-2.5-flash", contents="hello world").total_tokens == \
        count_tokens("hello world")
    assert posted(gemini)[0].path == "/v1beta/models/gemini-2.5-flash:countTokens"
    names = {model.name for model in sdk.models.list()}
    assert {"models/gemini-2.5-flash", "models/gemini-2.5-pro"} <= names
    assert_pool_keys_only(gemini, GEMINI_KEYS)


def test_google_sdk_fails_over_and_sees_429_when_every_key_cools(google_client, server, gemini):
    sdk = google_client(server)
    gemini.script = first_gemini_key_429
    assert sdk.models.generate_content(model="gemini-2.5-flash", contents="hello").text == "You said: hello"
    assert [r.key for r in posted(gemini)] == [K0, K1]
    gemini.script = every_key_429
    with pytest.raises(genai_errors.ClientError) as raised:
        sdk.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert raised.value.code == 429


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_google_sdk_function_call_keeps_its_thought_signature(google_client, server, gemini, api_version, stream):
    gemini.script = lambda r: weather_reply(r, SIGNATURE)
    sdk = google_client(server, api_version)
    question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(
        name="get_weather", parameters_json_schema=WEATHER_TOOL["function"]["parameters"])])
    config = types.GenerateContentConfig(tools=[tool])
    if stream:
        chunks = list(sdk.models.generate_content_stream(model="gemini-2.5-flash", contents=[question],
                                                         config=config))
        parts = [part for chunk in chunks for part in chunk.candidates[0].content.parts]
    else:
        parts = sdk.models.generate_content(model="gemini-2.5-flash", contents=[question],
                                            config=config).candidates[0].content.parts
    [call] = parts
    assert (call.function_call.name, call.function_call.args) == ("get_weather", ARGS)
    assert call.thought_signature == base64.b64decode(SIGNATURE)

    answer = types.Content(role="user", parts=[
        types.Part.from_function_response(name="get_weather", response={"temp": 21})])
    final = sdk.models.generate_content(model="gemini-2.5-flash", config=config,
                                        contents=[question, types.Content(role="model", parts=parts), answer])
    assert final.text == "It is 21 degrees."
    contents = posted(gemini)[-1].json["contents"]
    assert field(contents[1]["parts"][0], "thoughtSignature") == SIGNATURE
    assert field(contents[2]["parts"][0], "functionResponse")["response"] == {"temp": 21}


@pytest.mark.parametrize("prefix", ["/v1beta", "/v1"])
def test_native_bodies_pass_through_unchanged(server, gemini, prefix):
    events = gemini_function_call_events("get_weather", ARGS, SIGNATURE, text="Let me look.")
    gemini.script = lambda r: gemini_answer(r, events)
    url = f"{server.url}{prefix}/models/gemini-2.5-flash"
    body = {"contents": [{"role": "user", "parts": [{"text": "weather?"}]}],
            "generationConfig": {"temperature": 0.3}}
    headers = {"x-goog-api-key": CLIENT_KEY}
    whole = requests.post(url + ":generateContent", json=body, headers=headers, timeout=TIMEOUT)
    assert whole.status_code == 200 and whole.json() == gemini_merge(events)
    sse = requests.post(url + ":streamGenerateContent", params={"alt": "sse"}, json=body, headers=headers,
                        timeout=TIMEOUT)
    assert sse.headers["Content-Type"].startswith("text/event-stream")
    assert [json.loads(item) for item in sse_data(sse.content)] == events
    array = requests.post(url + ":streamGenerateContent", json=body, headers=headers, timeout=TIMEOUT)
    assert array.headers["Content-Type"].startswith("application/json")
    assert array.json() == events, "without alt=sse the stream is one JSON array"
    assert [r.json for r in posted(gemini)] == [body] * 3
    assert_pool_keys_only(gemini, GEMINI_KEYS)


# ---------------------------------------------------------------- edges the review found


def test_silence_in_a_native_stream_is_not_filled_with_pings(google_client, server, gemini):
    """The server pings /api streams every 0.5 s; Gemini's own API must get none."""
    events = gemini_events(["slow ", "answer"])
    gemini.script = lambda r: Reply(chunks=[1.2] + gemini_answer(r, events).chunks)
    text = "".join(c.text or "" for c in google_client(server).models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi"))
    assert text == "slow answer"
    array = requests.post(server.url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                          json={"contents": [{"parts": [{"text": "hi"}]}]}, timeout=TIMEOUT)
    assert [field(c["candidates"][0]["content"]["parts"][0], "text") for c in array.json()] == [
        "slow ", "answer"]


@pytest.mark.parametrize("name, expected", [("echo", "echo"), ("deepseek-v3-671b", "deepseek-v3-671b")])
def test_the_openai_sdk_retrieves_one_model(server, name, expected):
    with openai_client(server) as sdk:
        assert sdk.models.retrieve(name).id == expected
        with pytest.raises(openai_sdk.NotFoundError):
            sdk.models.retrieve("no-such-model")


def test_a_token_limit_before_any_text_is_an_empty_answer_not_an_error(server, gemini):
    gemini.script = lambda r: gemini_answer(r, gemini_events([], finish="MAX_TOKENS"))
    for stream in (False, True):
        assert outcome(create(server, stream=stream, max_tokens=5))[3] == "length"
    assert len(gemini.requests) == 2, "no key was burned on the client's own limit"


def test_a_refused_request_is_not_retried_on_other_keys(server, gemini):
    gemini.script = request_fault
    with pytest.raises(openai_sdk.BadRequestError):
        create(server)
    assert len(gemini.requests) == 1


def test_the_clients_own_fields_reach_an_openai_compatible_upstream(server, openai):
    create(server, model="deepseek-v3-671b", max_completion_tokens=64, seed=7,
           presence_penalty=0.5, parallel_tool_calls=False, tools=[WEATHER_TOOL],
           messages=[QUESTION, {"role": "assistant", "content": "", "reasoning_content": "hm",
                                "tool_calls": [{"id": "c1", "type": "function", "function": {
                                    "name": "get_weather", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])
    sent = openai.requests[-1].json
    assert (sent["max_completion_tokens"], sent["seed"], sent["presence_penalty"]) == (64, 7, 0.5)
    assert sent["parallel_tool_calls"] is False and "max_tokens" not in sent
    assert sent["messages"][1]["reasoning_content"] == "hm"


@pytest.mark.parametrize("messages, words", [
    ([QUESTION, {"role": "tool", "tool_call_id": "nobody", "content": "x"}], "tool_call_id"),
    ([QUESTION, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": {"a": 1}}}]}], "JSON string"),
])
def test_malformed_tool_messages_are_400(client, gemini, messages, words):
    response = client.post("/v1/chat/completions", headers=CLIENT_AUTH,
                           json={"model": "gemini-2.5-flash", "messages": messages})
    assert response.status_code == 400 and words in response.json["error"]["message"]
    assert gemini.requests == []


def test_refusals_and_empty_assistant_turns_are_dropped(server, gemini):
    create(server, messages=[QUESTION, {"role": "assistant", "content": [
        {"type": "refusal", "refusal": "no"}]}, {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"}])
    assert [c["role"] for c in posted(gemini)[-1].json["contents"]] == ["user", "user"]


def test_a_native_error_body_passes_through_unchanged(server, gemini):
    details = [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
        {"field": "contents[0]", "description": "bad"}]}]
    gemini.script = lambda r: gemini_error(400, "INVALID_ARGUMENT", "Bad contents.", details)
    response = requests.post(server.url + "/v1beta/models/gemini-2.5-flash:generateContent",
                             json={"contents": [{"parts": [{"text": "hi"}]}]}, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.json() == {"error": {"code": 400, "message": "Bad contents.",
                                         "status": "INVALID_ARGUMENT", "details": details}}


def test_model_names_in_the_list_route_back_to_their_provider(tmp_path, gemini, openai):
    gemini.script = lambda r: (
        Reply(chunks=[json.dumps({"models": [
            {"name": "models/learnlm-2.0-flash", "supportedGenerationMethods": ["generateContent"]},
            {"name": "models/gemini-2.5-flash", "supportedGenerationMethods": ["generateContent"]}]
        }).encode()]) if r.method == "GET" else None)
    openai.script = lambda r: Reply(chunks=[json.dumps({"object": "list", "data": [
        {"id": "gemini-lookalike", "object": "model"}]}).encode()]) if r.method == "GET" else None
    config = load_config({**upstream_env(gemini, openai), "TEMP_DATA_DIR": str(tmp_path)})
    service = Service(config)
    ids = [name for name, _ in service.model_list()]
    assert ids == ["echo", "gemini/learnlm-2.0-flash", "gemini-2.5-flash", "zju/gemini-lookalike"]
    for name in ids[1:]:
        assert service.providers.resolve(name)[0] == ("zju" if "zju/" in name else "gemini")


def test_a_failed_model_list_falls_back_to_each_providers_own_default(tmp_path, gemini, openai):
    openai.script = lambda r: Reply(status=500, chunks=[b'{"error": {"message": "down"}}'])
    config = load_config({**upstream_env(gemini, openai), "TEMP_DATA_DIR": str(tmp_path)})
    service = Service(config)
    assert [name for name, _ in service.model_list()][-1] == "deepseek-r1-671b"
    assert service.models_cache["zju"][0] - time.monotonic() <= 60, "a failure is retried soon"
