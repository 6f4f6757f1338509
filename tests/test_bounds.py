"""Issue 11, item 1: what one request may hold is bounded before anything is built from it.
Every limit is a setting with a documented default; beyond it each API answers 400 (413 for
text and JSON values) in its own format, naming the limit and its setting; a request at the
limit works. A 27 MB body of 900,000 history turns is refused within a second or so under
gunicorn while /healthz keeps answering."""

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from chatbridge.config import Config, load_config
from chatbridge.errors import ConfigError
from tests.client import TIMEOUT, ask
from tests.conftest import REPO, upstream_env

SETTINGS = {"MAX_TURNS": 2000, "MAX_PARTS": 500, "MAX_TOOLS": 128, "MAX_TEXT_CHARS": 4_000_000,
            "MAX_JSON_VALUES": 200_000, "MAX_JSON_DEPTH": 64}
SMALL = {"MAX_TURNS": 3, "MAX_PARTS": 3, "MAX_TOOLS": 3, "MAX_TEXT_CHARS": 100,
         "MAX_JSON_VALUES": 60, "MAX_JSON_DEPTH": 8}
A, B, UI, V1 = ("/api/chat", "A"), ("/api/chat", "B"), ("/api/chat", "ui"), ("/v1/chat/completions", "v1")
MESSAGES, GEMINI = ("/v1/messages", "anthropic"), ("/v1beta/models/echo:generateContent", "gemini")
HI = {"role": "user", "content": "hi"}


def ui_message(text: str, role: str = "user", index: int = 0) -> dict:
    return {"id": f"m{index}", "role": role, "parts": [{"type": "text", "text": text}]}


def base_body(shape: str) -> dict:
    """The smallest request of a shape that the echo model answers."""
    return {"A": {"message": "hi", "model": "echo"},
            "B": {"user_content": "hi", "model": "echo"},
            "ui": {"messages": [ui_message("hi")], "model": "echo"},
            "v1": {"messages": [HI], "model": "echo"},
            "anthropic": {"messages": [HI], "model": "echo", "max_tokens": 10},
            "gemini": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}}[shape]


def json_values(value) -> int:
    """How many values a JSON value holds, itself included, object keys not counted."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return 1 + sum(json_values(child) for child in children)


def json_depth(value) -> int:
    """How deeply a JSON value nests objects and arrays: 1 for [] or {}, 0 for a string."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max(map(json_depth, children), default=0)


def nested(levels: int) -> list:
    """Lists nested `levels` deep: nested(1) is []."""
    value = []
    for _ in range(levels - 1):
        value = [value]
    return value


def turns_body(shape: str, n: int) -> dict:
    if shape in ("A", "B"):
        return {**base_body(shape), "history": [{"role": "user", "content": "x"}] * n}
    if shape == "ui":
        return {**base_body(shape), "messages": [ui_message("x", index=i) for i in range(n - 1)]
                + [ui_message("hi", index=n)]}
    return {**base_body(shape), "messages": [HI] * n}


def text_body(shape: str, n: int) -> dict:
    """A request with exactly n characters of text, the last message being "hi"."""
    filler = "x" * (n - 2)
    if shape in ("A", "B"):
        return {**base_body(shape), "history": [{"role": "assistant", "content": filler}]}
    if shape == "ui":
        return {**base_body(shape), "messages": [ui_message(filler, "system"), ui_message("hi")]}
    return {**base_body(shape), "messages": [{"role": "system", "content": filler}, HI]}


def values_body(shape: str, n: int) -> dict:
    """A request of exactly n JSON values, padded by a field no API reads."""
    body = {**base_body(shape), "pad": []}
    body["pad"] = [0] * (n - json_values(body))
    return body


def depth_body(shape: str, n: int) -> dict:
    """A request nested n levels deep (the body is level 1) in a field no API reads."""
    body = {**base_body(shape), "pad": nested(n - 1)}
    assert json_depth(body) == n
    return body


def tool_calls(n: int) -> list:
    return [{"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            for i in range(n)]


@dataclass
class Case:
    setting: str
    api: tuple
    body: Callable  # (shape, n) -> a body holding n of what the setting limits
    message: str  # what the refusal says, with {n} and {limit}
    status: int = 400

    @property
    def id(self) -> str:
        return f"{self.setting}-{self.api[1]}"


TURNS = "'{where}' has {{n}} {noun}; at most {{limit}} (MAX_TURNS)"
CASES = [
    *[Case("MAX_TURNS", api, turns_body, TURNS.format(where="history", noun="turns")) for api in (A, B)],
    *[Case("MAX_TURNS", api, turns_body, TURNS.format(where="messages", noun="messages"))
      for api in (UI, V1)],
    Case("MAX_PARTS", UI, lambda shape, n: {**base_body(shape), "messages": [
        {"id": "m0", "role": "user", "parts": [{"type": "text", "text": "hi"}] * n}]},
        "'messages[0].parts' has {n} parts; at most {limit} (MAX_PARTS)"),
    Case("MAX_PARTS", V1, lambda shape, n: {**base_body(shape), "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}] * n}]},
        "'messages[0].content' has {n} parts; at most {limit} (MAX_PARTS)"),
    Case("MAX_PARTS", V1, lambda shape, n: {**base_body(shape), "messages": [
        HI, {"role": "assistant", "content": None, "tool_calls": tool_calls(n)}, HI]},
        "'messages[1].tool_calls' has {n} tool calls; at most {limit} (MAX_PARTS)"),
    # system text is capped by MAX_TEXT_CHARS, and the number of its blocks like a message's
    Case("MAX_PARTS", MESSAGES, lambda shape, n: {**base_body(shape), "system": [
        {"type": "text", "text": "Be brief."}] * n}, "'system' has {n} blocks; at most {limit} (MAX_PARTS)"),
    Case("MAX_PARTS", GEMINI, lambda shape, n: {**base_body(shape), "systemInstruction": {
        "parts": [{"text": "Be brief."}] * n}},
        "'systemInstruction.parts' has {n} parts; at most {limit} (MAX_PARTS)"),
    Case("MAX_TOOLS", V1, lambda shape, n: {**base_body(shape), "tools": [
        {"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}}
        for i in range(n)]}, "'tools' has {n} tools; at most {limit} (MAX_TOOLS)"),
    *[Case("MAX_TEXT_CHARS", api, text_body,
           "the request has {n} characters of text; at most {limit} (MAX_TEXT_CHARS)", 413)
      for api in (A, B, UI, V1)],
    *[Case("MAX_JSON_VALUES", api, values_body,
           "the body holds more than {limit} JSON values (MAX_JSON_VALUES)", 413)
      for api in (A, B, UI, V1)],
    *[Case("MAX_JSON_DEPTH", api, depth_body,
           "'pad' is nested more than {limit} levels deep (MAX_JSON_DEPTH)") for api in (A, B, UI, V1)],
]


def post(client, path: str, body) -> tuple:
    """(status, error message or None, the answer's text or error JSON) of a request with a
    body (JSON text, or an object to send as JSON), its stream read to the end."""
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    response = client.post(path, data=data, content_type="application/json")
    try:
        text = response.get_data(as_text=True)
    finally:
        response.close()
    if response.status_code == 200:
        return 200, None, text
    error = response.json["error"]
    if path.startswith("/v1beta"):
        assert error["status"] == "INVALID_ARGUMENT"  # Google's shape
        return response.status_code, error["message"], response.json
    if path.startswith("/v1"):
        assert error["type"] == "invalid_request_error"
        return response.status_code, error["message"], response.json
    assert isinstance(error, str)  # the sources' {"error": "<message>"}
    return response.status_code, error, response.json


def check_limit(client, case: Case, limit: int) -> None:
    path, shape = case.api
    status, message, answer = post(client, path, case.body(shape, limit))
    assert status == 200, message
    assert "hi" in answer  # echo answered the last message
    status, message, _ = post(client, path, case.body(shape, limit + 1))
    assert status == case.status
    assert message == case.message.format(n=limit + 1, limit=limit)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_request_at_the_default_limit_works_and_one_more_is_refused(client, case):
    check_limit(client, case, SETTINGS[case.setting])


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_the_setting_moves_the_limit(make_app, case):
    limit = SMALL[case.setting]
    check_limit(make_app(**{case.setting: str(limit)}).test_client(), case, limit)


# ---------------------------------------------------------------- JSON values and nesting

def test_commas_and_brackets_inside_strings_are_not_json_values(make_app):
    """The values are counted before parsing; what strings hold (escaped quotes and
    backslashes too) does not count, so text full of punctuation is no reason to refuse."""
    text = 'a, [b], {c}, "d", \\"e\\", \\\\, [], {}' * 200
    body = {"message": "hi", "model": "echo", "history": [{"role": "user", "content": text}]}
    data = json.dumps(body)
    assert data.count(",") > 1000  # far more than the limit below, were strings counted
    client = make_app(MAX_JSON_VALUES=str(json_values(body))).test_client()
    assert post(client, "/api/chat", data)[0] == 200
    client = make_app(MAX_JSON_VALUES=str(json_values(body) - 1)).test_client()
    assert post(client, "/api/chat", data)[:2] == (
        413, f"the body holds more than {json_values(body) - 1} JSON values (MAX_JSON_VALUES)")


@pytest.mark.parametrize("filler", [0, 1.5, None, "", "a\\\"b", ["x", 2], {"key": "value"}, {}, []],
                         ids=["zero", "float", "null", "empty", "escapes", "list", "object", "{}", "[]"])
def test_values_are_counted_whatever_they_are(make_app, filler):
    """Exact at the limit, and refused both when a bound settles it (ten times over) and when
    only counting does (one over)."""
    body = {"message": "hi", "model": "echo", "pad": [filler] * 300}
    data, values = json.dumps(body), json_values(body)
    for limit, status in ((values, 200), (values - 1, 413), (values // 10, 413)):
        assert post(make_app(MAX_JSON_VALUES=str(limit)).test_client(), "/api/chat", data)[:2] == (
            status, None if status == 200 else
            f"the body holds more than {limit} JSON values (MAX_JSON_VALUES)")


@pytest.mark.parametrize("pad, values", [([], 4), ({}, 4), ([[], {}, [[]]], 8), ([" , ", {"a": "[,"}], 7)])
def test_empty_arrays_and_objects_count_as_one_value(make_app, pad, values):
    body = {"message": "hi", "model": "echo", "pad": pad}
    assert json_values(body) == values
    for text in (json.dumps(body), json.dumps(body, indent=2)):
        assert post(make_app(MAX_JSON_VALUES=str(values)).test_client(), "/api/chat", text)[0] == 200
        assert post(make_app(MAX_JSON_VALUES=str(values - 1)).test_client(), "/api/chat", text)[0] == 413


def test_a_tool_schema_nested_too_deeply_names_tools(make_app):
    """The real case: tools[].function.parameters is the deepest part of a /v1 request."""
    def body(properties: int) -> dict:
        parameters = {"type": "object"}
        for _ in range(properties):
            parameters = {"type": "object", "properties": {"a": parameters}}
        return {**base_body("v1"), "tools": [{"type": "function", "function": {
            "name": "f", "parameters": parameters}}]}
    assert (json_depth(body(2)), json_depth(body(3))) == (9, 11)
    client = make_app(MAX_JSON_DEPTH="9").test_client()
    assert post(client, "/v1/chat/completions", body(2))[0] == 200
    status, message, _ = post(client, "/v1/chat/completions", body(3))
    assert (status, message) == (400, "'tools' is nested more than 9 levels deep (MAX_JSON_DEPTH)")


@pytest.mark.parametrize("path, shape", [A, V1])
def test_nesting_beyond_what_the_json_parser_takes_names_the_setting(client, path, shape):
    data = json.dumps(base_body(shape))[:-1] + ', "pad": ' + "[" * 5000 + "]" * 5000 + "}"
    assert post(client, path, data)[:2] == (
        400, "the body's JSON is nested more than 64 levels deep (MAX_JSON_DEPTH)")


def test_nesting_is_checked_before_lone_surrogates(client):
    """A deep body with a lone surrogate is refused for its depth (the surrogate walk recurses)."""
    data = '{"message": "hi", "model": "echo", "pad": ' + "[" * 600 + '"\\ud800"' + "]" * 600 + "}"
    assert post(client, "/api/chat", data)[:2] == (
        400, "'pad' is nested more than 64 levels deep (MAX_JSON_DEPTH)")


# ---------------------------------------------------------------- settings

def test_the_defaults():
    config = load_config({})
    assert {name: getattr(config, name.lower()) for name in SETTINGS} == SETTINGS
    assert {name: getattr(Config, name.lower()) for name in SETTINGS} == SETTINGS


def test_every_setting_is_documented_with_its_default():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## How keys are used")]
    for name, default in SETTINGS.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.endswith(f"| `{default}` |"), row


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5", "1e3", "9" * 5000])
def test_a_bad_limit_stops_the_start_naming_every_setting(value):
    with pytest.raises(ConfigError) as raised:
        load_config(dict.fromkeys(SETTINGS, value))
    for name in SETTINGS:
        assert f"{name} must be a whole number" in str(raised.value)


@pytest.mark.parametrize("value, problem", [("7", True), ("8", False), ("500", False), ("501", True)])
def test_json_depth_stays_below_what_the_parser_takes(value, problem):
    if problem:
        with pytest.raises(ConfigError, match=f"MAX_JSON_DEPTH must be a whole number from 8 to 500, "
                                              f"not '{value}'"):
            load_config({"MAX_JSON_DEPTH": value})
    else:
        assert load_config({"MAX_JSON_DEPTH": value}).max_json_depth == int(value)


def test_a_whole_number_beyond_a_float_is_no_overflow():
    """math.isfinite of such a number raised OverflowError instead of naming the setting."""
    with pytest.raises(ConfigError, match="PORT must be a whole number from 1 to 65535"):
        load_config({"PORT": "9" * 400})
    assert load_config({"MAX_TURNS": "9" * 400}).max_turns == int("9" * 400)


# ---------------------------------------------------------------- under gunicorn

HUGE_TURNS = 900_000


def huge_body() -> bytes:
    """The attack of the issue: 27 MB of 900,000 history turns, within the body size limit."""
    turn = b'{"role":"user","content":"x"},'
    return b'{"message":"hi","model":"echo","history":[' + turn * (HUGE_TURNS - 1) + turn[:-1] + b"]}"


def worker_peak_mb(server) -> list:
    """The most resident memory each of the server's workers has held, in MB."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    sizes = []
    for child in children:
        status = Path(f"/proc/{child}/status").read_text()
        kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
        sizes.append(int(kilobytes) / 1024)
    return sizes


@pytest.fixture
def fresh_server(start_gunicorn, gemini, openai):
    """A server of its own, so its workers' peak memory is this test's."""
    server = start_gunicorn(upstream_env(gemini, openai))
    yield server
    server.stop()


def test_a_huge_body_is_refused_quickly_while_healthz_answers(fresh_server):
    """Four at once, as in the issue (each cost 11.7 s of CPU and 1.1 GB before)."""
    server, body = fresh_server, huge_body()
    assert len(body) > 27_000_000
    latencies, stop = [], threading.Event()

    def watch_health():
        while not stop.is_set():
            started = time.monotonic()
            assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)

    def attack(results: list):
        started = time.monotonic()
        response = requests.post(server.url + "/api/chat", data=body, timeout=TIMEOUT,
                                 headers={"Content-Type": "application/json"})
        results.append((response.status_code, response.json(), time.monotonic() - started))

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    results = []
    try:
        attackers = [threading.Thread(target=attack, args=(results,)) for _ in range(4)]
        for thread in attackers:
            thread.start()
        for thread in attackers:
            thread.join(TIMEOUT)
    finally:
        stop.set()
        watcher.join(TIMEOUT)
    assert len(results) == 4
    for status, answer, seconds in results:
        assert status == 413
        assert answer == {"error": "the body holds more than 200000 JSON values (MAX_JSON_VALUES)"}
        assert seconds < 3
    assert latencies and max(latencies) < 2, latencies
    assert max(worker_peak_mb(server)) < 400  # parsing one such body took 1.1 GB
    assert ask(server, model="echo").json()["choices"][0]["message"]["content"] == "hi"


def test_the_gemini_pass_through_is_bounded_too(make_app, gemini):
    client = make_app(MAX_JSON_VALUES="100").test_client()
    parts = [{"text": str(i)} for i in range(200)]
    response = client.post("/v1beta/models/gemini-2.5-flash:generateContent",
                           json={"contents": [{"parts": parts}]})
    assert response.status_code == 413
    # Google's own answer to a body over its limit says INVALID_ARGUMENT (google.rpc.Code
    # has no mapping for 413; FAILED_PRECONDITION is about the system's state)
    assert response.json["error"]["status"] == "INVALID_ARGUMENT"
    assert response.json["error"]["code"] == 413
    assert "MAX_JSON_VALUES" in response.json["error"]["message"]
    assert gemini.requests == []
