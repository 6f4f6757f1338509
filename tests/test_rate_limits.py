"""Issue 11, Protection: per-client rate limits (RATE_LIMIT) counted per access token or per
address, X-Forwarded-For believed only for TRUSTED_PROXIES hops, a 429 with Retry-After in
each API's own error format, and counts shared through Redis by several instances."""

import pytest
import requests

from chatbridge.config import load_config
from chatbridge.errors import ConfigError
from tests.client import TIMEOUT, ask
from tests.conftest import ADMIN_TOKEN, closed_port, upstream_env

ECHO = {"user_content": "hi", "model": "echo"}
OTHER_TOKEN = "access-token-for-tests-0002"
TOKENS = "access-token-for-tests-0001,access-token-for-tests-0002"


def chat(client, token: str = "", address: str = "127.0.0.1", forwarded: str = ""):
    """A shape B echo request from an address, with a token and an X-Forwarded-For if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    return client.post("/api/chat", json=ECHO, headers=headers,
                       environ_base={"REMOTE_ADDR": address})


def statuses(client, count: int, **sender) -> list:
    return [chat(client, **sender).status_code for _ in range(count)]


# ---------------------------------------------------------------- who the client is

def test_limits_are_off_when_unset(make_app):
    client = make_app().test_client()
    assert statuses(client, 20) == [200] * 20


def test_an_address_is_limited_and_another_is_not(make_app):
    client = make_app(RATE_LIMIT="2/minute").test_client()
    assert statuses(client, 3, address="10.0.0.1") == [200, 200, 429]
    assert statuses(client, 2, address="10.0.0.2") == [200, 200]


def test_each_access_token_is_limited_on_its_own(make_app):
    client = make_app(RATE_LIMIT="2/minute", ACCESS_TOKENS=TOKENS).test_client()
    first, second = TOKENS.split(",")
    assert statuses(client, 3, token=first) == [200, 200, 429]
    assert statuses(client, 2, token=second) == [200, 200]  # same address, another token


def test_wrong_tokens_count_against_the_address(make_app):
    """Guessing tokens is limited: a wrong or missing token is counted by address, so changing
    it does not escape the limit, and it costs no valid token its requests."""
    client = make_app(RATE_LIMIT="2/minute", ACCESS_TOKENS=TOKENS).test_client()
    assert [chat(client, token=f"guess-{n}").status_code for n in range(2)] == [401, 401]
    assert chat(client, token="guess-3").status_code == 429
    assert chat(client).status_code == 429
    assert chat(client, token=OTHER_TOKEN).status_code == 200


def test_forwarded_for_is_ignored_without_trusted_proxies(make_app):
    client = make_app(RATE_LIMIT="2/minute").test_client()
    picked = [chat(client, forwarded=f"203.0.113.{n}").status_code for n in range(3)]
    assert picked == [200, 200, 429]


def test_one_trusted_proxy_names_the_client_it_saw(make_app):
    """With TRUSTED_PROXIES=1 the client is the last X-Forwarded-For entry (the one the proxy
    appended); entries the client wrote itself before it change nothing."""
    client = make_app(RATE_LIMIT="2/minute", TRUSTED_PROXIES="1").test_client()
    proxy = "10.9.9.9"
    assert statuses(client, 2, address=proxy, forwarded="198.51.100.7") == [200, 200]
    spoofed = [chat(client, address=proxy, forwarded=f"203.0.113.{n}, 198.51.100.7").status_code
               for n in range(2)]
    assert spoofed == [429, 429]
    assert chat(client, address=proxy, forwarded="198.51.100.8").status_code == 200


def test_two_trusted_proxies(make_app):
    client = make_app(RATE_LIMIT="1/minute", TRUSTED_PROXIES="2").test_client()
    assert chat(client, forwarded="198.51.100.7, 10.0.0.1").status_code == 200
    assert chat(client, forwarded="6.6.6.6, 198.51.100.7, 10.0.0.2").status_code == 429
    assert chat(client, forwarded="198.51.100.8, 10.0.0.1").status_code == 200


# ---------------------------------------------------------------- what is limited

GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize(("method", "path", "kwargs", "expected"), [
    pytest.param("post", "/api/chat", {"json": ECHO},
                 {"error": "too many requests: at most 1 per 1 minute (RATE_LIMIT)"}, id="api"),
    pytest.param("post", "/v1/chat/completions",
                 {"json": {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}},
                 {"error": {"message": "too many requests: at most 1 per 1 minute (RATE_LIMIT)",
                            "type": "rate_limit_error", "code": "rate_limit_exceeded",
                            "param": None}}, id="v1"),
    pytest.param("get", "/v1/models", {},
                 {"error": {"message": "too many requests: at most 1 per 1 minute (RATE_LIMIT)",
                            "type": "rate_limit_error", "code": "rate_limit_exceeded",
                            "param": None}}, id="v1_models"),
    pytest.param("post", "/v1beta/models/gemini-2.5-flash:generateContent", {"json": GEMINI_BODY},
                 {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                            "message": "too many requests: at most 1 per 1 minute (RATE_LIMIT)"}},
                 id="v1beta"),
    pytest.param("get", "/v1/models", {"headers": {"x-goog-api-key": "anything"}},
                 {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                            "message": "too many requests: at most 1 per 1 minute (RATE_LIMIT)"}},
                 id="v1_models_google"),
])
def test_the_429_has_the_format_of_the_api_called(make_app, method, path, kwargs, expected):
    client = make_app(RATE_LIMIT="1/minute").test_client()
    assert getattr(client, method)(path, **kwargs).status_code == 200
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == 429
    assert response.get_json() == expected
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_every_client_api_shares_one_count(make_app):
    client = make_app(RATE_LIMIT="3/minute").test_client()
    assert chat(client).status_code == 200
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1beta/models").status_code == 200
    assert chat(client).status_code == 429


def test_the_retry_after_counts_down_to_the_window_reset(make_app):
    client = make_app(RATE_LIMIT="1/hour").test_client()
    chat(client)
    assert 3590 <= int(chat(client).headers["Retry-After"]) <= 3600


def test_page_health_admin_static_and_preflights_are_not_limited(make_app):
    client = make_app(RATE_LIMIT="1/minute", ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    preflight = {"Origin": "https://chat.example.com", "Access-Control-Request-Method": "POST"}
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
        assert client.get("/", headers={"Accept": "text/html"}).status_code == 200
        assert client.get("/api/keys", headers=admin).status_code == 200
        assert client.get("/static/chat.js").status_code == 200
        assert client.options("/api/chat", headers=preflight).status_code == 200
        assert client.get("/api/no-such-thing").status_code == 404
    assert chat(client).status_code == 200  # none of those was counted
    assert chat(client).status_code == 429


def test_the_429_shows_no_token(make_app):
    token = TOKENS.split(",")[0]
    client = make_app(RATE_LIMIT="1/minute", ACCESS_TOKENS=TOKENS).test_client()
    chat(client, token=token)
    response = chat(client, token=token)
    assert response.status_code == 429
    assert token not in response.get_data(as_text=True)


# ---------------------------------------------------------------- storage

def test_without_redis_the_limits_keep_counting_in_memory(make_app):
    """An unreachable REDIS_URL does not fail requests: each worker counts on its own."""
    client = make_app(RATE_LIMIT="2/minute",
                      REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0").test_client()
    assert statuses(client, 3) == [200, 200, 429]


def test_redis_shares_the_count_between_instances(start_gunicorn, redis_server, fake_gemini,
                                                  fake_openai):
    redis_server.client.flushall()
    env = upstream_env(fake_gemini, fake_openai, REDIS_URL=redis_server.url, RATE_LIMIT="3/minute")
    first, second = start_gunicorn(env, workers=2), start_gunicorn(env, workers=2)
    answers = [ask(server, model="echo") for server in (first, second, first, second, first)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
    assert answers[3].json() == {"error": "too many requests: at most 3 per 1 minute (RATE_LIMIT)"}
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert requests.get(second.url + "/healthz", timeout=TIMEOUT).status_code == 200
    assert redis_server.client.keys("*LIMITER/chatbridge/address:127.0.0.1/global/*")
    for server in (first, second):
        server.stop()


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize(("value", "expected"), [
    ("30/minute;500/day", "30/minute;500/day"), (" 10 per second ", "10 per second"), ("", ""),
])
def test_rate_limit_setting(value, expected):
    assert load_config({"RATE_LIMIT": value}).rate_limit == expected


@pytest.mark.parametrize("value", ["bogus", "30/fortnight", "0/minute", "30/minute;", "-1/day"])
def test_a_bad_rate_limit_stops_the_start(value):
    with pytest.raises(ConfigError, match=f"RATE_LIMIT must be limits such as "
                                          f"30/minute;500/day .*not '{value}'"):
        load_config({"RATE_LIMIT": value})


@pytest.mark.parametrize(("value", "expected"), [("", 0), ("0", 0), ("1", 1), ("2", 2)])
def test_trusted_proxies_setting(value, expected):
    assert load_config({"TRUSTED_PROXIES": value}).trusted_proxies == expected


@pytest.mark.parametrize("value", ["-1", "one", "1.5"])
def test_a_bad_trusted_proxies_stops_the_start(value):
    with pytest.raises(ConfigError, match=f"TRUSTED_PROXIES must be a whole number of at least 0, "
                                          f"not '{value}'"):
        load_config({"TRUSTED_PROXIES": value})
