"""MODEL_ALIASES (glob patterns mapped to a model ChatBridge routes, applied on every API) and
what a model name nothing serves is told: the available models and a "did you mean", with the
missing setting only when the name clearly meant that provider (issue 10).

Aliased requests go to the project's fake upstreams on 127.0.0.1 from the app in this process;
the errors come before any upstream is contacted."""

import pytest

from chatbridge import create_app
from chatbridge.config import load_config
from chatbridge.errors import ConfigError

ALIASES = ("claude-sonnet-*=gemini-2.5-pro, claude-*=echo, gpt-5*=zju/deepseek-v3, "
           "my-echo=echo, gpt-5-mini=echo")
HI = [{"role": "user", "content": "hello"}]


@pytest.fixture
def aliased(make_app):
    """Both upstreams keyed (the fakes) and ALIASES."""
    return make_app(MODEL_ALIASES=ALIASES).test_client()


@pytest.fixture
def keyless(tmp_path):
    """No keys at all; one alias to echo and one to a Gemini model."""
    settings = {"TEMP_DATA_DIR": str(tmp_path), "MODEL_ALIASES": "claude-haiku-*=gemini-2.5-flash,e=echo"}
    return create_app(load_config(settings)).test_client()


def test_model_aliases_are_checked_at_start_naming_each_bad_entry():
    with pytest.raises(ConfigError) as raised:
        load_config({"MODEL_ALIASES": "ok-*=echo, no-equals, x=gemini-*, =echo, a*=zju/, b=/"})
    message = str(raised.value)
    assert "'no-equals'" in message and "'x=gemini-*'" in message and "'=echo'" in message
    assert "'a*=zju/'" in message and "'b=/'" in message  # a provider prefix alone names no model
    assert "ok-*" not in message
    assert load_config({"MODEL_ALIASES": "a*=b\nc=d"}).model_aliases == (("a*", "b"), ("c", "d"))


@pytest.mark.parametrize("model, upstream_path, answer", [
    ("claude-sonnet-4-5", "/v1beta/models/gemini-2.5-pro:generateContent", "You said: hello"),
    ("claude-haiku-4-5", None, "hello"),  # the first pattern that matches wins: claude-* is echo
    ("gpt-5-codex", "/api/ai/v1/chat/completions", "You said: hello"),
])
def test_an_alias_routes_on_v1(aliased, gemini, openai, model, upstream_path, answer):
    response = aliased.post("/v1/chat/completions", json={"model": model, "messages": HI})
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == answer
    seen = [r for r in gemini.requests + openai.requests if r.method == "POST"]
    assert [r.path for r in seen] == ([upstream_path] if upstream_path else [])
    if model == "gpt-5-codex":
        assert seen[0].json["model"] == "deepseek-v3", "the zju/ prefix is stripped"


def test_an_alias_routes_on_api_chat_and_v1beta(aliased, gemini):
    response = aliased.post("/api/chat", json={"user_content": "hello", "model": "claude-sonnet-4"})
    assert response.json["choices"][0]["message"]["content"] == "You said: hello"
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    passed = aliased.post("/v1beta/models/claude-sonnet-4:generateContent", json=body)
    assert passed.status_code == 200
    assert [r.path for r in gemini.requests if r.method == "POST"] == [
        "/v1beta/models/gemini-2.5-pro:generateContent"] * 2
    echoed = aliased.post("/v1beta/models/my-echo:generateContent", json=body)
    assert echoed.json["candidates"][0]["content"]["parts"] == [{"text": "hello"}]


def test_v1_models_lists_the_exact_aliases_but_not_the_patterns(aliased):
    entries = {m["id"]: m["owned_by"] for m in aliased.get("/v1/models").json["data"]}
    assert entries["my-echo"] == "chatbridge" and "gemini-2.5-flash" in entries
    assert "gpt-5-mini" not in entries, "gpt-5* comes first, so gpt-5-mini is not echo"
    assert not any("*" in name for name in entries)
    assert aliased.get("/v1/models/my-echo").json["owned_by"] == "chatbridge"


@pytest.mark.parametrize("aliases, setting", [("echo=gemini-2.5-pro", "ALL_GEMINI_API_KEYS"),
                                               ("e*=zju/qwen3", "ZJU_API_KEY"),
                                               ("*=gemini-2.5-flash", "ALL_GEMINI_API_KEYS")])
def test_an_alias_that_sends_echo_to_a_provider_without_keys_stops_the_start(tmp_path, aliases, setting):
    """echo is on every model list by itself: aliased to a provider without keys it would be
    listed and answer 404, so the start stops instead, naming the missing setting."""
    with pytest.raises(ConfigError) as raised:
        create_app(load_config({"TEMP_DATA_DIR": str(tmp_path), "MODEL_ALIASES": aliases}))
    message = str(raised.value)
    assert "MODEL_ALIASES sends 'echo'" in message and f"{setting} is not set" in message


def test_echo_aliased_to_a_keyed_provider_is_listed_and_answered_there(make_app, gemini):
    client = make_app(MODEL_ALIASES="echo=gemini-2.5-flash").test_client()
    assert "echo" in [m["id"] for m in client.get("/v1/models").json["data"]]
    answer = client.post("/v1/chat/completions", json={"model": "echo", "messages": HI})
    assert answer.json["choices"][0]["message"]["content"] == "You said: hello"


def test_keyless_lists_only_what_answers(keyless):
    assert [m["id"] for m in keyless.get("/v1/models").json["data"]] == ["echo", "e"]
    google = keyless.get("/v1beta/models").json["models"]
    assert [m["name"] for m in google] == ["models/echo", "models/e"]


@pytest.mark.parametrize("model, says, not_says", [
    ("ECHO", ["'ECHO' is not available (did you mean 'echo'?)", "available models: echo, e"],
     ["is not set"]),
    ("gemni-2.5-flash", ["did you mean 'gemini-2.5-flash', which needs ALL_GEMINI_API_KEYS?",
                         "available models: echo, e"], ["is not set"]),
    ("gemini-2.5-pro", ["Gemini serves it, but ALL_GEMINI_API_KEYS is not set",
                        "available models: echo, e"], ["did you mean"]),
    ("claude-haiku-4-5", ["(MODEL_ALIASES maps it to 'gemini-2.5-flash')",
                          "ALL_GEMINI_API_KEYS is not set"], []),
    ("deepseek-r1-671b", ["the OpenAI-compatible upstream serves it, but ZJU_API_KEY is not set"], []),
    ("totally-unknown", ["available models: echo, e",
                         "names no other provider claims go to the OpenAI-compatible upstream, "
                         "which needs ZJU_API_KEY"], ["did you mean"]),
])
def test_an_unknown_name_gets_each_apis_error_listing_the_models(keyless, model, says, not_says):
    api = keyless.post("/api/chat", json={"message": "hi", "model": model})
    v1 = keyless.post("/v1/chat/completions", json={"model": model, "messages": HI})
    v1beta = keyless.post(f"/v1beta/models/{model}:generateContent",
                          json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert api.status_code == 400  # as the sources answer a model they cannot serve
    assert (v1.status_code, v1.json["error"]["code"]) == (404, "model_not_found")
    assert (v1beta.status_code, v1beta.json["error"]["status"]) == (404, "NOT_FOUND")
    for message in (api.json["error"], v1.json["error"]["message"], v1beta.json["error"]["message"]):
        assert all(part in message for part in says), message
        assert not any(part in message for part in not_says), message


def test_googles_api_lists_echo_first_and_keeps_geminis_catalogue(aliased, gemini, openai):
    names = [m["name"] for m in aliased.get("/v1beta/models").json["models"]]
    assert names[:2] == ["models/echo", "models/my-echo"] and "models/gemini-2.5-flash" in names
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    learnlm = aliased.post("/v1beta/models/learnlm-2.0-flash:generateContent", json=body)
    assert learnlm.status_code == 200, "a name only the catch-all claims is Gemini's here"
    other = aliased.post("/v1beta/models/zju/deepseek-v3:generateContent", json=body)
    assert other.json["candidates"][0]["content"]["parts"] == [{"text": "You said: hello"}]
    assert [r.path for r in gemini.requests if r.method == "POST"] == [
        "/v1beta/models/learnlm-2.0-flash:generateContent"]
    assert [r.json["model"] for r in openai.requests if r.method == "POST"] == ["deepseek-v3"]


def test_a_name_a_pattern_matches_can_be_retrieved(aliased):
    assert aliased.get("/v1/models/claude-haiku-4-5").json == {
        "id": "claude-haiku-4-5", "object": "model", "created": 0, "owned_by": "chatbridge"}
    assert aliased.get("/v1/models/claude-sonnet-4-5").json["owned_by"] == "google"
    assert aliased.get("/v1/models/nothing-like-it").status_code == 404
    google = aliased.get("/v1beta/models/claude-haiku-4-5").json
    assert google["name"] == "models/claude-haiku-4-5"


def test_gemini_shaped_tools_and_json_mode_reach_an_openai_compatible_model(aliased, openai):
    """/v1beta for a zju model: the neutral request's tools, tool choice, JSON mode and stop
    sequences go upstream in OpenAI's words (not only temperature and max_tokens)."""
    body = {"contents": [{"role": "user", "parts": [{"text": "weather?"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "w",
                                                 "parameters": {"type": "object"}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
            "generationConfig": {"responseMimeType": "application/json", "topP": 0.5,
                                 "stopSequences": ["END"]}}
    response = aliased.post("/v1beta/models/zju/deepseek-v3:generateContent", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    sent = openai.requests[-1].json
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert sent["tool_choice"] == "required"
    assert sent["response_format"] == {"type": "json_object"}
    assert (sent["top_p"], sent["stop"]) == (0.5, ["END"])


def test_an_upstream_model_aliased_to_a_provider_without_keys_is_not_listed(make_app, openai):
    """The OpenAI-compatible upstream lists deepseek-v3-671b, but MODEL_ALIASES sends that name
    to Gemini, which has no keys here: listing it would offer a model that answers 404."""
    client = make_app(ALL_GEMINI_API_KEYS="",
                      MODEL_ALIASES="deepseek-v3-671b=gemini-2.5-pro").test_client()
    names = [m["id"] for m in client.get("/v1/models").json["data"]]
    assert "deepseek-v3-671b" not in names and "deepseek-r1-671b" in names, names
    refused = client.post("/v1/chat/completions", json={"model": "deepseek-v3-671b", "messages": HI})
    assert refused.status_code == 404
