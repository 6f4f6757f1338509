"""Issue 11, items 6, 11 and 12: upstream numbers are clamped (a rest is at most a day, never
an OverflowError), malformed model lists are skipped, ZJU keys keep their colon, and the
development server listens on 127.0.0.1 and keeps tokens out of its access log."""

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest
import requests

from chatbridge import failures
from chatbridge.config import load_config, parse_keys
from chatbridge.errors import ConfigError, UpstreamError
from chatbridge.keys import MAX_MARK_AHEAD, iso_time, key_status, rest_until
from chatbridge.logs import AccessLogFilter
from chatbridge.redaction import Redactor
from tests.client import TIMEOUT, ask
from tests.conftest import ADMIN_TOKEN, CLEARED, GEMINI_KEYS, REPO, TOKEN, free_port
from tests.fakes import Reply, gemini_429, json_reply, openai_error

DAY = 24 * 3600.0
HUGE = "9" * 400  # a number float() turns into inf
ZJU_MODEL = "deepseek-v3-671b"


@pytest.fixture(autouse=True)
def no_host(monkeypatch):
    """A developer's own HOST never reaches a test."""
    monkeypatch.delenv("HOST", raising=False)


# ---------------------------------------------------------------- item 6: delays

def retry_info(delay: str) -> dict:
    return {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}


def body_reset(value: str) -> dict:
    return {"metadata": {"headers": {"X-RateLimit-Reset": value}}}


@pytest.mark.parametrize(("error", "headers", "message", "expected"), [
    pytest.param(retry_info("infs"), {}, "", failures.RATE_LIMIT_COOLDOWN, id="retry_info_infs"),
    pytest.param(retry_info("nans"), {}, "", failures.RATE_LIMIT_COOLDOWN, id="retry_info_nans"),
    pytest.param(retry_info("1e308s"), {}, "", failures.RATE_LIMIT_COOLDOWN, id="retry_info_1e308"),
    pytest.param(retry_info(HUGE + "s"), {}, "", failures.RATE_LIMIT_COOLDOWN, id="retry_info_inf"),
    pytest.param(retry_info("99999999999s"), {}, "", DAY, id="retry_info_huge"),
    pytest.param(retry_info(HUGE + "s"), {"Retry-After": "7"}, "", 7, id="inf_then_header"),
    pytest.param({}, {"Retry-After": HUGE}, "", failures.RATE_LIMIT_COOLDOWN, id="retry_after_inf"),
    pytest.param({}, {"Retry-After": "99999999"}, "", DAY, id="retry_after_huge"),
    pytest.param({}, {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, "", DAY,
                 id="retry_after_year_9999"),
    pytest.param({}, {"Retry-After": "Fri, 31 Dec 99999 23:59:59 GMT"}, "",
                 failures.RATE_LIMIT_COOLDOWN, id="retry_after_no_date"),
    pytest.param({}, {"x-ratelimit-reset-requests": HUGE + "s", "x-ratelimit-reset-tokens": "2s"},
                 "", 2, id="reset_header_inf_and_finite"),
    pytest.param({}, {"x-ratelimit-reset-tokens": "100000h"}, "", DAY, id="reset_header_huge"),
    pytest.param(body_reset("nan"), {}, "", failures.RATE_LIMIT_COOLDOWN, id="body_reset_nan"),
    pytest.param(body_reset("inf"), {}, "", failures.RATE_LIMIT_COOLDOWN, id="body_reset_inf"),
    pytest.param(body_reset("-inf"), {}, "", failures.RATE_LIMIT_COOLDOWN, id="body_reset_minus_inf"),
    pytest.param(body_reset("1e308"), {}, "", DAY, id="body_reset_1e308"),
    pytest.param({}, {}, f"Please try again in {HUGE}s.", failures.RATE_LIMIT_COOLDOWN,
                 id="message_inf"),
    pytest.param({}, {}, "Please try again in 99999h.", DAY, id="message_huge"),
])
def test_retry_delay_is_finite_and_at_most_a_day(error, headers, message, expected):
    assert failures.retry_delay(error, headers, message) == expected


def test_a_429_with_an_absurd_delay_rests_the_key_at_most_a_day():
    failure = failures.classify_failure(429, json.loads(gemini_429("99999999999s").chunks[0]))
    assert failure.kind == "rate_limit" and failure.retry_after == DAY
    now = time.time()
    assert rest_until(failure, now) == now + DAY


@pytest.mark.parametrize("delay", [math.inf, math.nan, -math.inf, None])
def test_rest_until_falls_back_to_the_default_for_no_finite_delay(delay):
    failure = UpstreamError("rate_limit", "quota", 429, delay)
    now = time.time()
    assert rest_until(failure, now) == now + failures.RATE_LIMIT_COOLDOWN


@pytest.mark.parametrize("epoch", [math.inf, -math.inf, math.nan, 1e308, -1e308, 1e12])
def test_iso_time_never_raises(epoch):
    assert datetime.fromisoformat(iso_time(epoch))


@pytest.mark.parametrize("until", [math.inf, 1e308, 1e12, "soon", None, math.nan])
def test_key_status_reads_a_stored_absurd_mark_as_at_most_a_day(until):
    config = load_config({"ALL_GEMINI_API_KEYS": GEMINI_KEYS[0]})
    key, now = config.gemini_keys[0], time.time()
    marks = {f"quota|{key.group}|gemini-2.5-flash": until, f"invalid|{key.id}": until}
    status = key_status(key, marks, {"last_used": math.inf}, now)
    for iso in list(status["cooling_until"].values()) + [status["invalid_until"]]:
        if iso is not None:
            assert datetime.fromisoformat(iso).timestamp() <= now + MAX_MARK_AHEAD


def admin_keys(base: str, provider: str, get=requests.get) -> list:
    """GET /api/keys with the admin token, answering 200: one provider's entries."""
    response = get(base + "/api/keys", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200
    body = response.json() if callable(response.json) else response.json
    return body["providers"][provider]


def test_a_stored_infinite_mark_is_dropped_and_breaks_nothing(make_app):
    app = make_app(ADMIN_TOKEN=ADMIN_TOKEN)
    config = app.extensions["chatbridge"].config
    config.temp_data_dir.mkdir(parents=True, exist_ok=True)
    marks = {f"quota|{k.group}|gemini-2.5-flash": math.inf for k in config.gemini_keys}
    (config.temp_data_dir / "keys-gemini.json").write_text(json.dumps({"marks": marks}))
    entries = admin_keys("", "gemini", app.test_client().get)
    assert {e["state"] for e in entries} == {"ok"}, "a rest no rest can be is corrupt: dropped"
    response = app.test_client().post("/api/chat", json={"user_content": "hi",
                                                          "model": "gemini-2.5-flash"})
    assert response.status_code == 200


def zju_429(headers: dict, message: str = "Rate limit reached") -> Reply:
    reply = openai_error(429, message, code="rate_limit_exceeded")
    return Reply(reply.status, reply.chunks, {**reply.headers, **headers})


ABSURD_429S = [
    pytest.param("gemini", gemini_429("infs"), id="gemini_infs"),
    pytest.param("gemini", gemini_429("1e308s"), id="gemini_1e308s"),
    pytest.param("gemini", gemini_429(HUGE + "s"), id="gemini_inf"),
    pytest.param("gemini", gemini_429("99999999999s"), id="gemini_huge"),
    pytest.param("zju", zju_429({"Retry-After": HUGE}), id="zju_retry_after_inf"),
    pytest.param("zju", zju_429({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}),
                 id="zju_retry_after_year_9999"),
    pytest.param("zju", zju_429({"x-ratelimit-reset-requests": "99999999h"}),
                 id="zju_reset_header_huge"),
    pytest.param("zju", zju_429({}, f"Rate limit reached. Please try again in {HUGE}s."),
                 id="zju_message_inf"),
]


@pytest.mark.parametrize(("provider", "reply"), ABSURD_429S)
def test_an_absurd_429_gives_a_finite_retry_after_and_a_working_key_list(server, gemini, openai,
                                                                         provider, reply):
    fake, model = (gemini, "gemini-2.5-flash") if provider == "gemini" else (openai, ZJU_MODEL)
    fake.script = lambda r: reply if r.method == "POST" else None
    for _ in range(2):  # the second meets keys already resting
        response = ask(server, model=model)
        assert response.status_code == 429, response.text
        assert 1 <= int(response.headers["Retry-After"]) <= DAY
    now = time.time()
    entries = admin_keys(server.url, provider)
    assert {e["state"] for e in entries} == {"cooling"}
    for entry in entries:
        until = datetime.fromisoformat(entry["cooling_until"][model]).timestamp()
        assert now < until <= now + DAY + 5
    assert ask(server, model="echo").status_code == 200


# ---------------------------------------------------------------- item 6: model lists

GEMINI_MODEL_LIST = {"models": [
    1, "models/text", None, ["models/x"], {}, {"name": 5, "supportedGenerationMethods": ["generateContent"]},
    {"name": "models/", "supportedGenerationMethods": ["generateContent"]},
    {"name": "models/no-methods"},
    {"name": "models/methods-a-string", "supportedGenerationMethods": "generateContent"},
    {"name": "models/embedder", "supportedGenerationMethods": ["embedContent"]},
    {"name": "models/gemini-good-1", "supportedGenerationMethods": ["generateContent"]},
    {"name": "gemini-good-2", "supportedGenerationMethods": ["countTokens", "generateContent"]},
]}
OPENAI_MODEL_LIST = {"object": "list", "data": [
    "deepseek-text", 7, None, [], {}, {"id": None}, {"id": 12}, {"id": ""}, {"id": ["x"]},
    {"id": "deepseek-good", "object": "model"},
]}


def listed(client) -> list:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    return sorted(entry["id"] for entry in response.json["data"])


def test_model_lists_with_junk_entries_list_the_good_ones(make_app, gemini, openai):
    gemini.script = lambda r: json_reply(GEMINI_MODEL_LIST) if r.method == "GET" else None
    openai.script = lambda r: json_reply(OPENAI_MODEL_LIST) if r.method == "GET" else None
    assert listed(make_app().test_client()) == ["deepseek-good", "echo", "gemini-good-1",
                                                "gemini-good-2"]


@pytest.mark.parametrize("junk", [[], "models", 5, None, {"name": "models/x"}, [[1]]])
def test_model_lists_that_are_not_lists_are_empty(make_app, gemini, openai, junk):
    gemini.script = lambda r: json_reply({"models": junk}) if r.method == "GET" else None
    openai.script = lambda r: json_reply({"data": junk}) if r.method == "GET" else None
    assert listed(make_app().test_client()) == ["echo"]


# ---------------------------------------------------------------- item 11: key syntax

def test_only_gemini_keys_take_a_project_prefix():
    config = load_config({"ALL_GEMINI_API_KEYS": "proj:AIzaKeyOne, AIzaKeyTwo",
                          "ZJU_API_KEY": "appid123:secret456, other:one:two"})
    assert [(k.secret, k.group) for k in config.gemini_keys][0] == ("AIzaKeyOne", "group:proj")
    assert [k.secret for k in config.openai_compat_keys] == ["appid123:secret456", "other:one:two"]
    assert parse_keys("a:b", groups=False)[0].secret == "a:b"
    assert parse_keys("a:b")[0].secret == "b"


def test_a_zju_key_with_a_colon_is_sent_whole(make_app, openai):
    app = make_app(ZJU_API_KEY="appid123:secret456", ADMIN_TOKEN=ADMIN_TOKEN)
    client = app.test_client()
    response = client.post("/api/chat", json={"user_content": "hi", "model": ZJU_MODEL})
    assert response.status_code == 200, response.text
    assert [r.headers["authorization"] for r in openai.requests] == ["Bearer appid123:secret456"]
    [entry] = admin_keys("", "zju", client.get)
    assert (entry["key"], entry["group"]) == ("…t456", None)


# ---------------------------------------------------------------- item 12: python app.py

class DevServer:
    """`python app.py` on a free port, its output in a file; stopped by its PID."""

    def __init__(self, tmp_path, **settings):
        self.port = free_port()
        self.output = tmp_path / f"app-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k not in CLEARED and k != "HOST"}
        env.update(PORT=str(self.port), TEMP_DATA_DIR=str(tmp_path / "state"),
                   PYTHONUNBUFFERED="1", **settings)
        with open(self.output, "wb") as output:
            self.process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                                            stdout=output, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, text: str, deadline: float = 20.0) -> str:
        end = time.monotonic() + deadline
        while text not in self.log() and time.monotonic() < end and self.process.poll() is None:
            time.sleep(0.05)
        assert text in self.log(), self.log()
        return self.log()

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.log()


@pytest.fixture
def dev_server(tmp_path):
    servers = []

    def start(**settings) -> DevServer:
        servers.append(DevServer(tmp_path, **settings))
        return servers[-1]
    yield start
    for server in servers:
        server.stop()


def refused(host: str, port: int) -> bool:
    try:
        requests.get(f"http://{host}:{port}/healthz", timeout=2)
    except requests.ConnectionError:
        return True
    return False


@pytest.mark.parametrize(("host", "other"), [(None, "127.0.0.2"), ("127.0.0.2", "127.0.0.1")])
def test_python_app_py_listens_on_loopback_unless_host_says(dev_server, host, other):
    server = dev_server(**({"HOST": host} if host else {}))
    expected = host or "127.0.0.1"
    output = server.wait_for(f"Running on http://{expected}:{server.port}")
    assert "all addresses" not in output
    assert requests.get(f"http://{expected}:{server.port}/healthz", timeout=TIMEOUT).ok
    assert refused(other, server.port)


def test_an_invalid_host_stops_the_start(dev_server):
    server = dev_server(HOST="0.0.0.0 ; rm")
    assert server.process.wait(timeout=20) != 0
    assert "HOST must be a host name" in server.log()
    with pytest.raises(ConfigError, match="HOST"):
        load_config({"HOST": "http://example.com/"})


def test_the_access_log_never_prints_a_token(dev_server):
    other_token = "someone-elses-token-9999"
    server = dev_server(ACCESS_TOKENS=TOKEN)
    server.wait_for("Running on")
    base = f"http://127.0.0.1:{server.port}"
    for url in (f"/v1beta/models?key={TOKEN}", f"/v1/models?alt=sse&key={TOKEN}",
                f"/healthz?%6Bey={TOKEN}", f"/v1/models?key={other_token}"):
        requests.get(base + url, timeout=TIMEOUT)
    # werkzeug's own error line quotes the whole request line, query and all
    raw_request(server.port, f"GET /x?key={TOKEN} extra HTTP/1.1\r\n\r\n".encode())
    output = server.wait_for("Bad request syntax")
    output = server.stop()
    assert TOKEN not in output and other_token not in output
    assert TOKEN[-4:] in output and "key=…" in output


def raw_request(port: int, data: bytes) -> bytes:
    """Send bytes as they are (no HTTP client sends a malformed request line) and read the
    answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        return sock.recv(65536)


def test_the_dev_server_logs_each_request_once_without_colour_codes(dev_server):
    """werkzeug's access line repeated ChatBridge's own, and its colours and banner reached the
    log as escaped text (\\x1b[31m, \\x0a)."""
    server = dev_server()
    server.wait_for("Running on")
    base = f"http://127.0.0.1:{server.port}"
    requests.get(base + "/no-such-page", timeout=TIMEOUT)
    requests.post(base + "/api/chat", json={"message": "hi", "model": "echo"}, timeout=TIMEOUT).close()
    server.wait_for("POST /api/chat 200")
    output = server.stop()
    lines = output.splitlines()
    assert [sum(path in line for line in lines) for path in ("/no-such-page", "/api/chat")] == [1, 1], output
    assert "GET /no-such-page 404 shape=-" in output
    assert "\\x1b" not in output and "\x1b" not in output and "\\x0a" not in output, output
    assert "development server" in output and f"Running on http://127.0.0.1:{server.port}" in output


@pytest.mark.parametrize(("line", "expected"), [
    ("GET /v1beta/models?key=access-token-for-tests-0001 HTTP/1.1",
     "GET /v1beta/models?key=…0001 HTTP/1.1"),
    ("GET /x?a=1&key=another-long-token-abcd&b=2 HTTP/1.1", "GET /x?a=1&key=…abcd&b=2 HTTP/1.1"),
    ("GET /x?KEY=short HTTP/1.1", "GET /x?KEY=… HTTP/1.1"),
    ("GET /x?%6b%65%79=access-token-for-tests-0001 HTTP/1.1", "GET /x?%6b%65%79=…0001 HTTP/1.1"),
    ("GET /access-token-for-tests-0001 HTTP/1.1", "GET /…0001 HTTP/1.1"),
    ("GET /x?monkey=1 HTTP/1.1", "GET /x?monkey=1 HTTP/1.1"),
])
def test_access_log_filter_masks_key_values_and_secrets(line, expected):
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1, '%s - - [%s] "%s" %s %s',
                               ("127.0.0.1", "now", line, 200, "-"), None)
    assert AccessLogFilter(Redactor([TOKEN])).filter(record)
    assert record.getMessage() == f'127.0.0.1 - - [now] "{expected}" 200 -'
