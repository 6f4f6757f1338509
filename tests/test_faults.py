"""Faults from the field (issue 9, sections 2, 3, 4 and 6), replayed with the fake upstreams:
whose fault an upstream error is and how long its key rests; tool calls told apart without an
index; Gemini requests built for what the model takes; settings that stop the server at start."""

import email.utils
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime

import openai as openai_sdk
import pytest
import requests
from openai import OpenAI
from requests.structures import CaseInsensitiveDict

from chatbridge.config import load_config
from chatbridge.errors import ConfigError
from chatbridge.failures import RATE_LIMIT_COOLDOWN, classify_failure, failure_from_event, \
    parse_duration, retry_delay
from tests.client import ask, events, post_chat, shape_a_text, sse_data
from tests.conftest import ADMIN_TOKEN, CLEARED, GEMINI_KEYS, REPO, ZJU_KEYS, upstream_env
from tests.fakes import (
    ERROR_TYPE,
    Reply,
    field,
    gemini_429,
    gemini_answer,
    gemini_chunk,
    gemini_error,
    gemini_invalid_key,
    gemini_sse,
    gemini_status,
    openai_chunk,
    openai_sse,
)

TIMEOUT = 30
K0, K1, K2 = GEMINI_KEYS
Z0, Z1 = ZJU_KEYS
ZJU_MODEL = "deepseek-v3-671b"
GEMINI = "gemini-2.5-flash"
GEMMA = "gemma-3-27b-it"
HELLO = [{"role": "user", "content": "hello"}]
SYSTEM = "Answer in French."
SSE_TYPE = {"Content-Type": "text/event-stream"}
HEADER_PROBLEM = "has characters an HTTP header cannot carry"


# ---------------------------------------------------------------- helpers

def openai_client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="client-key", max_retries=0, timeout=TIMEOUT)


def create(server, **params):
    """chat.completions.create through the official SDK: a ChatCompletion, or every chunk."""
    params.setdefault("messages", HELLO)
    with openai_client(server) as sdk:
        result = sdk.chat.completions.create(**params)
        return list(result) if params.get("stream") else result


def answer_text(result) -> str:
    """The content of a ChatCompletion or of its chunks."""
    if isinstance(result, list):
        return "".join(c.choices[0].delta.content or "" for c in result if c.choices)
    return result.choices[0].message.content or ""


def posted(fake) -> list:
    """The fake's POSTs (generation), leaving out any model-list lookups."""
    return [r for r in fake.requests if r.method == "POST"]


def keys_posted(fake) -> list:
    return [r.key for r in posted(fake)]


def suffix(key: str) -> str:
    return "…" + key[-4:]


def key_states(server, provider: str) -> dict:
    """GET /api/keys with the admin token: the provider's entries by key suffix."""
    response = requests.get(server.url + "/api/keys", timeout=TIMEOUT,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200, response.text
    return {entry["key"]: entry for entry in response.json()["providers"][provider]}


def seconds_until(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() - time.time()


def body_reply(status: int, body, headers=None) -> Reply:
    """An error reply carrying exactly this JSON body."""
    return Reply(status=status, chunks=[json.dumps(body).encode()], headers=headers or {})


def wait_for_log(server, text: str, deadline: float = 3.0) -> str:
    end = time.monotonic() + deadline
    while text not in server.log() and time.monotonic() < end:
        time.sleep(0.05)
    return server.log()


# ---------------------------------------------------------------- real-world error bodies

OPENAI_OUT_OF_QUOTA = (429, {"error": {
    "message": "You exceeded your current quota, please check your plan and billing details. For "
               "more information on this error, read the docs: "
               "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}})
OPENAI_BILLING_NOT_ACTIVE = (429, {"error": {
    "message": "Your account is not active, please check your billing details on our website.",
    "type": "billing_not_active", "param": None, "code": "billing_not_active"}})
ZJU_OUT_OF_CREDIT = (402, {"error": {"code": 402, "message": "Insufficient credits"}})
OPENROUTER_OUT_OF_CREDIT = (402, {"error": {
    "message": "Insufficient credits. Add more using https://openrouter.ai/credits", "code": 402}})
DEEPSEEK_OUT_OF_BALANCE = (402, {"error": {  # its code says invalid_request_error: the status decides
    "message": "Insufficient Balance", "type": "unknown_error", "param": None,
    "code": "invalid_request_error"}})
GATEWAY_OUT_OF_BALANCE = (403, {"code": "INSUFFICIENT_BALANCE",  # no "error" wrapper
                                "message": "Insufficient account balance"})
CREDIT_TOO_LOW = (400, {"type": "error", "error": {
    "type": "invalid_request_error",
    "message": "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
               "Billing to upgrade or purchase credits."}})
GEMINI_ENABLE_BILLING = (400, gemini_status(
    400, "FAILED_PRECONDITION", "Gemini API free tier is not available in your country. Please "
                                "enable billing on your project in Google AI Studio."))
OPENAI_WRONG_KEY = (401, {"error": {
    "message": "Incorrect API key provided: sk-abc***. You can find your API key at "
               "https://platform.openai.com/account/api-keys.",
    "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
GATEWAY_400_WRONG_KEY = (400, {"error": {"message": "invalid token", "type": "new_api_error",
                                         "code": "invalid_api_key"}})
GATEWAY_400_SUSPENDED = (400, {"error": {
    "message": "Your account has been suspended. Please contact support.",
    "type": "invalid_request_error", "param": None, "code": None}})
GEMINI_KEY_INVALID = (400, json.loads(b"".join(gemini_invalid_key().chunks)))
GEMINI_KEY_EXPIRED = (400, gemini_status(
    400, "INVALID_ARGUMENT", "API key expired. Please renew the API key.",
    [{"@type": ERROR_TYPE + "ErrorInfo", "reason": "API_KEY_EXPIRED", "domain": "googleapis.com",
      "metadata": {"service": "generativelanguage.googleapis.com"}}]))
GEMINI_SUSPENDED = (403, gemini_status(
    403, "PERMISSION_DENIED", "Permission denied: Consumer 'api_key:AIzaSyFAKE' has been "
                              "suspended.",
    [{"@type": ERROR_TYPE + "ErrorInfo", "reason": "CONSUMER_SUSPENDED",
      "domain": "googleapis.com", "metadata": {"consumer": "projects/123456789"}}]))
GEMINI_SERVICE_DISABLED = (403, gemini_status(
    403, "PERMISSION_DENIED", "Generative Language API has not been used in project 123456789 "
                              "before or it is disabled. Enable it by visiting https://console."
                              "developers.google.com/apis/api/generativelanguage.googleapis.com"
                              "/overview?project=123456789 then retry.",
    [{"@type": ERROR_TYPE + "ErrorInfo", "reason": "SERVICE_DISABLED", "domain": "googleapis.com",
      "metadata": {"service": "generativelanguage.googleapis.com"}}]))
GEMINI_LEAKED = (403, gemini_status(
    403, "PERMISSION_DENIED", "Your API key was reported as leaked. Please use another API key."))
GEMINI_QUOTA = (429, json.loads(b"".join(gemini_429("41.5s").chunks)))
OPENAI_TPM = (429, {"error": {
    "message": "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): "
               "Limit 30000, Used 29500, Requested 1200. Please try again in 1.4s. Visit "
               "https://platform.openai.com/account/rate-limits to learn more.",
    "type": "tokens", "param": None, "code": "rate_limit_exceeded"}})
GROQ_TPD = (429, {"error": {
    "message": "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01` "
               "service tier `on_demand` on tokens per day (TPD): Limit 100000, Used 99800, "
               "Requested 900. Please try again in 7m12.5s.",
    "type": "tokens", "code": "rate_limit_exceeded"}})
GATEWAY_500_QUOTA = (500, {"error": {"message": "upstream error: too many requests",
                                     "type": "rate_limit_exceeded"}})
GEMINI_OVERLOADED = (503, gemini_status(503, "UNAVAILABLE",
                                        "The model is overloaded. Please try again later."))
GEMINI_INTERNAL = (500, gemini_status(500, "INTERNAL", "An internal error has occurred."))
OPENAI_OVERLOADED = (503, {"error": {
    "message": "The engine is currently overloaded, please try again later",
    "type": "server_error", "param": None, "code": None}})
ANTHROPIC_OVERLOADED = (529, {"type": "error", "error": {"type": "overloaded_error",
                                                         "message": "Overloaded"}})
GEMINI_LOCATION = (400, gemini_status(400, "FAILED_PRECONDITION",
                                      "User location is not supported for the API use."))
OPENAI_CONTEXT = (400, {"error": {
    "message": "This model's maximum context length is 65536 tokens. However, you requested "
               "70000 tokens. Please reduce the length of the messages.",
    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})
OPENROUTER_MODERATION = (403, {"error": {
    "code": 403, "message": "gpt-4o requires moderation on OpenRouter. Your input was flagged for "
    "\"harassment\"", "metadata": {"reasons": ["harassment"], "flagged_input": "..."}}})
GEMINI_FILE_PERMISSION = (403, gemini_status(
    403, "PERMISSION_DENIED", "You do not have permission to access the File abc123 or it may "
                              "not exist."))
GEMINI_UNKNOWN_FIELD = (400, gemini_status(  # names an api_key, but only as a field
    400, "INVALID_ARGUMENT",
    'Invalid JSON payload received. Unknown name "api_key": Cannot find field.'))


# ---------------------------------------------------------------- 2. whose fault: unit tests

@pytest.mark.parametrize("error, kind, delay", [
    pytest.param(ZJU_OUT_OF_CREDIT, "billing", None, id="zju_out_of_credit"),
    pytest.param(OPENROUTER_OUT_OF_CREDIT, "billing", None, id="openrouter_out_of_credit"),
    pytest.param(DEEPSEEK_OUT_OF_BALANCE, "billing", None, id="deepseek_out_of_balance"),
    pytest.param(OPENAI_OUT_OF_QUOTA, "billing", None, id="openai_out_of_quota"),
    pytest.param(OPENAI_BILLING_NOT_ACTIVE, "billing", None, id="openai_billing_not_active"),
    pytest.param(GATEWAY_OUT_OF_BALANCE, "billing", None, id="gateway_out_of_balance"),
    pytest.param(CREDIT_TOO_LOW, "billing", None, id="credit_too_low"),
    pytest.param(GEMINI_ENABLE_BILLING, "billing", None, id="gemini_enable_billing"),
    pytest.param(OPENAI_WRONG_KEY, "invalid_key", None, id="openai_wrong_key"),
    pytest.param(GATEWAY_400_WRONG_KEY, "invalid_key", None, id="gateway_400_wrong_key"),
    pytest.param(GATEWAY_400_SUSPENDED, "invalid_key", None, id="gateway_400_suspended"),
    pytest.param(GEMINI_KEY_INVALID, "invalid_key", None, id="gemini_key_invalid"),
    pytest.param(GEMINI_KEY_EXPIRED, "invalid_key", None, id="gemini_key_expired"),
    pytest.param(GEMINI_SUSPENDED, "invalid_key", None, id="gemini_suspended"),
    pytest.param(GEMINI_SERVICE_DISABLED, "invalid_key", None, id="gemini_service_disabled"),
    pytest.param(GEMINI_LEAKED, "invalid_key", None, id="gemini_leaked"),
    # "please check your plan and billing details": a quota, not a billing error
    pytest.param(GEMINI_QUOTA, "rate_limit", 41.5, id="gemini_quota"),
    pytest.param(OPENAI_TPM, "rate_limit", 1.4, id="openai_tpm"),
    pytest.param(GROQ_TPD, "rate_limit", 432.5, id="groq_tpd"),
    pytest.param(GATEWAY_500_QUOTA, "rate_limit", RATE_LIMIT_COOLDOWN, id="gateway_500_quota"),
    pytest.param((429, None), "rate_limit", RATE_LIMIT_COOLDOWN, id="429 no body"),
    pytest.param(GEMINI_OVERLOADED, "server", None, id="gemini_overloaded"),
    pytest.param(GEMINI_INTERNAL, "server", None, id="gemini_internal"),
    pytest.param(OPENAI_OVERLOADED, "server", None, id="openai_overloaded"),
    pytest.param(ANTHROPIC_OVERLOADED, "server", None, id="anthropic_overloaded"),
    pytest.param((502, "<html><body>502 Bad Gateway</body></html>"), "server", None,
                 id="502 html"),
    pytest.param(GEMINI_LOCATION, "rejected", None, id="gemini_location"),
    pytest.param(OPENAI_CONTEXT, "rejected", None, id="openai_context"),
    pytest.param(GEMINI_UNKNOWN_FIELD, "rejected", None, id="gemini_unknown_field"),
    pytest.param(OPENROUTER_MODERATION, "rejected", None, id="openrouter_moderation"),
    pytest.param(GEMINI_FILE_PERMISSION, "rejected", None, id="gemini_file_permission"),
    pytest.param((404, gemini_status(404, "NOT_FOUND", "models/gemini-0 is not found for API "
                                                       "version v1beta.")), "rejected", None,
                 id="gemini_model_not_found"),
])
def test_errors_are_classified_by_status_and_body(error, kind, delay):
    status, body = error
    failure = classify_failure(status, body, CaseInsensitiveDict())
    assert failure.kind == kind, failure.message
    if delay is not None:
        assert failure.retry_after == pytest.approx(delay)
    if isinstance(body, dict):
        inner = body.get("error", body)
        assert failure.message == inner["message"], "the upstream's own words"


@pytest.mark.parametrize("error, kind", [
    ({"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
      "status": "RESOURCE_EXHAUSTED"}, "rate_limit"),
    ({"message": "Rate limit reached for requests", "type": "requests",
      "code": "rate_limit_exceeded"}, "rate_limit"),
    ({"code": 402, "message": "Insufficient credits"}, "billing"),
    ({"message": "Insufficient Balance", "type": "unknown_error"}, "billing"),
    ({"code": 400, "message": "API key not valid. Please pass a valid API key.",
      "status": "INVALID_ARGUMENT"}, "invalid_key"),
    ({"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}, "server"),
], ids=["gemini quota", "openai rate limit", "402 credits", "balance", "gemini key", "overloaded"])
def test_an_error_inside_a_stream_is_classified_the_same_way(error, kind):
    assert failure_from_event(error).kind == kind


@pytest.mark.parametrize("text, seconds", [
    ("6m0s", 360), ("1.5s", 1.5), ("20ms", 0.02), ("1h2m", 3720), ("7m12.5s", 432.5),
    ("41.5s", 41.5), ("7", 7), ("0.25", 0.25), ("", None), ("soon", None), ("5s later", None),
])
def test_durations_are_parsed(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def in_seconds(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


def epoch_ms(seconds: float) -> str:
    return str(int((time.time() + seconds) * 1000))


RESET_BODY = {"message": "Rate limit exceeded: free-models-per-min.", "code": 429}


@pytest.mark.parametrize("error, headers, message, seconds", [
    (GEMINI_QUOTA[1]["error"], {"Retry-After": "5"}, "", 41.5),  # RetryInfo comes first
    ({}, {"Retry-After": "40"}, "", 40),
    ({}, {"retry-after": "2.5"}, "", 2.5),
    ({}, lambda: {"Retry-After": in_seconds(120)}, "", 120),
    ({}, {"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "1.5s"}, "", 360),
    ({}, {"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "2m30s"}, "", 150),
    ({}, {"x-ratelimit-reset-tokens": "20ms"}, "", 0.02),
    (lambda: {**RESET_BODY, "metadata": {"headers": {
        "X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": epoch_ms(90)}}},
     {}, "", 90),
    ({}, {}, "Rate limit reached for requests. Please try again in 20s.", 20),
    ({}, {}, "You exceeded your current quota. Please retry in 12.48s.", 12.48),
    ({}, {}, "Please try again in 6ms.", 0.006),
    ({}, {}, "Rate limit reached.", RATE_LIMIT_COOLDOWN),
], ids=["RetryInfo first", "Retry-After", "retry-after fraction", "Retry-After date",
        "reset headers", "the later reset header", "reset header in ms", "reset in the body",
        "try again in", "retry in", "try again in ms", "nothing said"])
def test_the_rest_time_is_read_wherever_the_upstream_states_it(error, headers, message, seconds):
    # times relative to now are made when the test runs, not when it is collected
    error, headers = (value() if callable(value) else value for value in (error, headers))
    delay = retry_delay(error, CaseInsensitiveDict(headers), message)
    assert delay == pytest.approx(seconds, abs=2 if seconds >= 60 else 0.01)


# ---------------------------------------------------------------- 2. whose fault: the server

def test_a_key_out_of_credit_rests_and_every_request_succeeds_on_the_other(server, openai):
    openai.script = lambda r: body_reply(*ZJU_OUT_OF_CREDIT) if r.key == Z0 else None
    whole = create(server, model=ZJU_MODEL)
    streamed = create(server, model=ZJU_MODEL, stream=True)
    plain = requests.post(server.url + "/v1/chat/completions", timeout=TIMEOUT,
                          json={"model": ZJU_MODEL, "messages": HELLO})
    shape_a = events(post_chat(server, {"message": "hello", "model": ZJU_MODEL}))
    other_model = ask(server, "hello", model="deepseek-r1-671b")
    assert answer_text(whole) == answer_text(streamed) == "You said: hello"
    assert plain.status_code == 200
    assert plain.json()["choices"][0]["message"]["content"] == "You said: hello"
    assert shape_a_text(shape_a) == "You said: hello"
    assert other_model.status_code == 200, other_model.text
    assert keys_posted(openai) == [Z0] + [Z1] * 5, "the key rests for every model"
    states = key_states(server, "zju")
    bad, good = states[suffix(Z0)], states[suffix(Z1)]
    assert bad["state"] == "invalid"
    assert bad["last_error"] == "billing: Insufficient credits"
    assert 3500 < seconds_until(bad["invalid_until"]) <= 3601
    assert (bad["requests"], bad["failures"]) == (1, 1)
    assert (good["state"], good["requests"], good["failures"]) == ("ok", 5, 0)


@pytest.mark.parametrize("provider, error, state, reason", [
    pytest.param("zju", OPENAI_OUT_OF_QUOTA, "invalid", "billing", id="openai_out_of_quota"),
    pytest.param("zju", DEEPSEEK_OUT_OF_BALANCE, "invalid", "billing", id="deepseek_out_of_balance"),
    pytest.param("zju", CREDIT_TOO_LOW, "invalid", "billing", id="credit_too_low"),
    pytest.param("zju", GATEWAY_OUT_OF_BALANCE, "invalid", "billing", id="gateway_out_of_balance"),
    pytest.param("gemini", GEMINI_ENABLE_BILLING, "invalid", "billing", id="gemini_enable_billing"),
    pytest.param("zju", GATEWAY_400_SUSPENDED, "invalid", "invalid_key", id="gateway_400_suspended"),
    pytest.param("zju", GATEWAY_400_WRONG_KEY, "invalid", "invalid_key", id="gateway_400_wrong_key"),
    pytest.param("gemini", GEMINI_KEY_EXPIRED, "invalid", "invalid_key", id="gemini_key_expired"),
    pytest.param("gemini", GEMINI_SUSPENDED, "invalid", "invalid_key", id="gemini_suspended"),
    pytest.param("zju", OPENAI_OVERLOADED, "ok", "server", id="openai_overloaded"),
    pytest.param("zju", ANTHROPIC_OVERLOADED, "ok", "server", id="anthropic_overloaded"),
    pytest.param("gemini", GEMINI_OVERLOADED, "ok", "server", id="gemini_overloaded"),
])
def test_the_key_or_the_upstream_is_blamed_and_the_request_fails_over(
        server, gemini, openai, provider, error, state, reason):
    fake, (bad, good, *_), model = (openai, ZJU_KEYS, ZJU_MODEL) if provider == "zju" else \
        (gemini, GEMINI_KEYS, GEMINI)
    failures = []

    def script(r):
        if r.key == bad and not failures:
            failures.append(r)
            return body_reply(*error)
        return None

    fake.script = script
    first = ask(server, model=model)
    assert first.status_code == 200, first.text
    assert keys_posted(fake) == [bad, good], "failed over to the next key"
    entry = key_states(server, provider)[suffix(bad)]
    assert entry["state"] == state
    assert entry["last_error"].startswith(f"{reason}: ")
    assert entry["failures"] == 1
    for _ in range(3):
        assert ask(server, model=model).status_code == 200
    later = keys_posted(fake)[2:]
    if state == "invalid":
        assert bad not in later, "a key at fault rests, for every request after"
    else:
        assert bad in later, "an upstream's own failure does not rest the key"


def test_keys_out_of_credit_and_resting_give_429_then_503_when_all_are_out_of_credit(
        server, openai):
    openai.script = lambda r: body_reply(*ZJU_OUT_OF_CREDIT) if r.key == Z0 else \
        body_reply(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "40"})
    response = ask(server, model=ZJU_MODEL)
    assert response.status_code == 429, response.text
    assert 39 <= int(response.headers["Retry-After"]) <= 41, "the resting key's time"
    assert ask(server, model=ZJU_MODEL).status_code == 429
    assert keys_posted(openai) == [Z0, Z1], "neither key is asked again"
    server.reset_state()
    openai.reset()
    openai.script = lambda r: body_reply(*ZJU_OUT_OF_CREDIT)
    response = ask(server, model=ZJU_MODEL)
    assert response.status_code == 503, response.text
    assert "every key in ZJU_API_KEY was rejected" in response.json()["error"]
    assert "Insufficient credits" in response.json()["error"]
    assert keys_posted(openai) == [Z0, Z1]


def test_gemini_passed_through_fails_over_from_a_key_without_billing(server, gemini):
    gemini.script = lambda r: body_reply(*GEMINI_ENABLE_BILLING) if r.key == K0 else None
    for _ in range(3):
        response = requests.post(
            f"{server.url}/v1beta/models/{GEMINI}:generateContent", timeout=TIMEOUT,
            headers={"x-goog-api-key": "client-key"},
            json={"contents": [{"role": "user", "parts": [{"text": "hello"}]}]})
        assert response.status_code == 200, response.text
        assert response.json()["candidates"][0]["content"]["parts"][0]["text"] == "You said: hello"
    assert keys_posted(gemini) == [K0, K1, K1, K2]
    assert key_states(server, "gemini")[suffix(K0)]["last_error"].startswith("billing: ")


def gemini_quota_event(message, retry=None):
    """A 200 SSE whose only event is Gemini's RESOURCE_EXHAUSTED error."""
    details = [{"@type": ERROR_TYPE + "RetryInfo", "retryDelay": retry}] if retry else []
    error = gemini_status(429, "RESOURCE_EXHAUSTED", message, details)
    return Reply(chunks=gemini_sse([error]), headers=SSE_TYPE)


def openai_error_event(error):
    """A 200 SSE whose only event is an OpenAI-style error object."""
    return Reply(chunks=openai_sse([{"error": error}]), headers=SSE_TYPE)


QUOTA_REPLIES = {
    "reset headers": (lambda: body_reply(429, OPENAI_TPM[1], {
        "x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "1.5s"}), 360),
    "the later reset header": (lambda: body_reply(429, {"error": {"message": "Rate limited"}}, {
        "x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "2m30s"}), 150),
    "Retry-After as an HTTP date": (lambda: body_reply(429, {"error": {"message": "Slow down"}}, {
        "Retry-After": in_seconds(120)}), 120),
    "reset time in the body": (lambda: body_reply(429, {"error": {
        **RESET_BODY, "metadata": {"headers": {"X-RateLimit-Reset": epoch_ms(90)}}}}), 90),
    "try again in the message": (lambda: body_reply(429, {"error": {
        "message": "Rate limit reached for requests. Please try again in 20s.", "type": "requests",
        "code": "rate_limit_exceeded"}}), 20),
    "quota in a 500": (lambda: body_reply(*GATEWAY_500_QUOTA), RATE_LIMIT_COOLDOWN),
    "quota inside a 200 stream": (lambda: openai_error_event({
        "message": "Rate limit reached for requests. Please try again in 45s.",
        "type": "requests", "param": None, "code": "rate_limit_exceeded"}), 45),
    "nothing said": (lambda: body_reply(429, {"error": {"message": "Too many requests"}}),
                     RATE_LIMIT_COOLDOWN),
    "gemini: quota inside a 200 stream": (lambda: gemini_quota_event(
        "You exceeded your current quota, please check your plan and billing details.", "30s"), 30),
    "gemini: retry in the message": (lambda: gemini_error(
        429, "RESOURCE_EXHAUSTED", "You exceeded your current quota. Please retry in 45.2s."), 45.2),
}


@pytest.mark.parametrize("case", QUOTA_REPLIES)
def test_every_key_rate_limited_gives_429_with_the_stated_rest(server, gemini, openai, case):
    make_reply, seconds = QUOTA_REPLIES[case]
    on_gemini = case.startswith("gemini")
    fake, keys, model, provider = (gemini, GEMINI_KEYS, GEMINI, "gemini") if on_gemini else \
        (openai, ZJU_KEYS, ZJU_MODEL, "zju")
    fake.script = lambda r: make_reply()
    response = ask(server, model=model)
    assert response.status_code == 429, response.text
    assert abs(int(response.headers["Retry-After"]) - math.ceil(seconds)) <= 3
    noun = "Gemini key" if on_gemini else "key of the OpenAI-compatible upstream"
    assert response.json()["error"] == f"every {noun} is rate-limited for {model}; try again later"
    assert sorted(keys_posted(fake)) == sorted(keys)
    for key, entry in key_states(server, provider).items():
        assert entry["state"] == "cooling", key
        assert entry["last_error"].startswith("rate_limit: ")
        assert abs(seconds_until(entry["cooling_until"][model]) - seconds) <= 3
    again = post_chat(server, {"message": "hi", "model": model})
    assert again.status_code == 429
    assert len(posted(fake)) == len(keys), "a resting key is not asked again"


@pytest.mark.parametrize("model, error, words", [
    (ZJU_MODEL, OPENAI_CONTEXT, "maximum context length is 65536 tokens"),
    (GEMINI, GEMINI_LOCATION, "User location is not supported for the API use."),
    (GEMINI, GEMINI_UNKNOWN_FIELD, 'Unknown name "api_key"'),
], ids=["context too long", "location", "unknown field"])
def test_a_request_error_goes_back_unretried_with_the_upstreams_words(
        server, gemini, openai, model, error, words):
    fake = gemini if model == GEMINI else openai
    fake.script = lambda r: body_reply(*error)
    with pytest.raises(openai_sdk.BadRequestError) as raised:
        create(server, model=model)
    assert raised.value.status_code == 400
    assert words in raised.value.message
    assert len(posted(fake)) == 1, "no other key is tried"
    entry = key_states(server, "zju" if fake is openai else "gemini")[suffix(fake.requests[0].key)]
    assert (entry["state"], entry["failures"]) == ("ok", 0)


# ---------------------------------------------------------------- 3. tool calls

WEATHER = {"id": "call_a", "type": "function",
           "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TIME = {"id": "call_b", "type": "function",
        "function": {"name": "get_time", "arguments": '{"tz": "JST"}'}}
TOOLS = [{"type": "function", "function": {
    "name": name, "parameters": {"type": "object", "properties": {arg: {"type": "string"}}}}}
    for name, arg in (("get_weather", "city"), ("get_time", "tz"))]
TWO_CALLS = [("call_a", "get_weather", {"city": "Paris"}), ("call_b", "get_time", {"tz": "JST"})]


def opening(call, arguments=""):
    """A call's first piece: id, type and name, with some or none of its arguments."""
    return {**call, "function": {**call["function"], "arguments": arguments}}


def more(arguments, **extra):
    """An arguments-only piece."""
    return {**extra, "function": {"arguments": arguments}}


def without_id(call):
    return {k: v for k, v in call.items() if k != "id"}


# Each case: the tool_calls of each streamed delta, and the calls the client must get.
TOOL_STREAMS = {
    "no index, one call a delta": ([[WEATHER], [TIME]], TWO_CALLS),
    "arguments-only deltas continue the last call": (
        [[opening(WEATHER)], [more('{"city": ')], [more('"Paris"}')],
         [opening(TIME, '{"tz"')], [more(': "JST"}')]], TWO_CALLS),
    "two calls in one delta": ([[WEATHER, TIME]], TWO_CALLS),
    "indexes, arguments interleaved": (
        [[{"index": 0, **opening(WEATHER)}, {"index": 1, **opening(TIME)}],
         [more('{"tz": "JST"}', index=1)], [more('{"city": "Paris"}', index=0)]], TWO_CALLS),
    "the id repeated on every piece": (
        [[opening(WEATHER)], [more('{"city": "Paris"}', id="call_a")],
         [opening(TIME)], [more('{"tz": "JST"}', id="call_b")]], TWO_CALLS),
    "no ids, the same name twice": (
        [[without_id(WEATHER)], [without_id(opening(WEATHER, '{"city": "Tokyo"}'))]],
        [(None, "get_weather", {"city": "Paris"}), (None, "get_weather", {"city": "Tokyo"})]),
    "no ids, a new name starts a call": (
        [[without_id(WEATHER)], [without_id(TIME)]],
        [(None, "get_weather", {"city": "Paris"}), (None, "get_time", {"tz": "JST"})]),
    "index 0 on every call, each with its own id": (  # ollama/ollama#15457, SGLang, Dynamo
        [[{"index": 0, **opening(WEATHER)}], [more('{"city": "Paris"}', index=0)],
         [{"index": 0, **opening(TIME)}], [more('{"tz": "JST"}', index=0)]], TWO_CALLS),
}


def openai_tool_stream(deltas) -> Reply:
    """An SSE answer calling tools, whether or not the request asked for a stream."""
    objs = [openai_chunk({"role": "assistant", "content": None})]
    objs += [openai_chunk({"tool_calls": calls}) for calls in deltas]
    return Reply(chunks=openai_sse(objs + [openai_chunk({}, "tool_calls"), "[DONE]"]),
                 headers=SSE_TYPE)


def parsed(arguments: str):
    """Arguments as JSON, or as the raw text when they are not (to show in the failure)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def tool_calls_of(result) -> tuple:
    """([(id, name, arguments)], finish_reason) of a ChatCompletion, or of its chunks put
    together the way the SDKs do: by index, arguments appended."""
    if not isinstance(result, list):
        choice = result.choices[0]
        calls = [(c.id, c.function.name, c.function.arguments)
                 for c in choice.message.tool_calls or []]
        return [(i, n, parsed(a)) for i, n, a in calls], choice.finish_reason
    calls, finishes = {}, []
    for choice in (chunk.choices[0] for chunk in result if chunk.choices):
        finishes += [choice.finish_reason] if choice.finish_reason else []
        for piece in choice.delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            assert piece.id in (None, call["id"]) or call["id"] is None, "one index, two ids"
            call["id"] = call["id"] or piece.id
            call["name"] += (piece.function and piece.function.name) or ""
            call["arguments"] += (piece.function and piece.function.arguments) or ""
    assert len(finishes) == 1, finishes
    return [(c["id"], c["name"], parsed(c["arguments"])) for _, c in sorted(calls.items())], \
        finishes[0]


def assert_calls(got, expected):
    """The calls as expected; an expected id of None is any id ChatBridge made up, each its own."""
    assert [(n, a) for _, n, a in got] == [(n, a) for _, n, a in expected]
    ids = [i for i, _, _ in got]
    assert len(set(ids)) == len(ids) and all(ids), ids
    for (made, _, _), (wanted, _, _) in zip(got, expected, strict=True):
        assert made == wanted if wanted else made.startswith("call_")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("case", TOOL_STREAMS)
def test_openai_compatible_tool_calls_stay_apart(server, openai, case, stream):
    deltas, expected = TOOL_STREAMS[case]
    openai.script = lambda r: openai_tool_stream(deltas)
    result = create(server, model=ZJU_MODEL, tools=TOOLS, stream=stream)
    calls, finish = tool_calls_of(result)
    assert_calls(calls, expected)
    assert finish == "tool_calls"


def call_part(name, args=None, call_id=None):
    call = {"name": name, **({"args": args} if args is not None else {}),
            **({"id": call_id} if call_id else {})}
    return {"functionCall": call}


GEMINI_CALLS = {
    "several parts with ids, one without args": (
        [[call_part("get_weather", {"city": "Paris"}, "fc_paris"), call_part("get_time",
                                                                            call_id="fc_now")]],
        [("fc_paris", "get_weather", {"city": "Paris"}), ("fc_now", "get_time", {})]),
    "the same function twice in one chunk": (
        [[call_part("get_weather", {"city": "Paris"}), call_part("get_weather", {"city": "Tokyo"})]],
        [(None, "get_weather", {"city": "Paris"}), (None, "get_weather", {"city": "Tokyo"})]),
    "one call a chunk": (
        [[call_part("get_weather", {"city": "Paris"})], [call_part("get_time", {"tz": "JST"})]],
        [(None, "get_weather", {"city": "Paris"}), (None, "get_time", {"tz": "JST"})]),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("case", GEMINI_CALLS)
def test_gemini_function_calls_stay_apart(server, gemini, case, stream):
    chunks, expected = GEMINI_CALLS[case]
    events_ = [gemini_chunk(parts=parts, finish="STOP" if i == len(chunks) - 1 else None)
               for i, parts in enumerate(chunks)]
    gemini.script = lambda r: gemini_answer(r, events_)
    calls, finish = tool_calls_of(create(server, model=GEMINI, tools=TOOLS, stream=stream))
    assert_calls(calls, expected)
    assert finish == "tool_calls"


# ---------------------------------------------------------------- 4. what the model takes

def refuse_like_gemini(r):
    """Refuse, as Gemini does, a system instruction or thinking that a Gemma model does not take."""
    body = r.json or {}
    if field(body, "systemInstruction") is not None:
        return gemini_error(400, "INVALID_ARGUMENT",
                            f"Developer instruction is not enabled for models/{r.model}")
    if field(field(body, "generationConfig") or {}, "thinkingConfig") is not None:
        return gemini_error(400, "INVALID_ARGUMENT", "Thinking is not enabled for this model.")
    return None


def ui_text(response) -> str:
    payloads = [json.loads(p) for p in sse_data(response.content) if p != "[DONE]"]
    return "".join(p["delta"] for p in payloads if p.get("type") == "text-delta")


GEMMA_ASKS = {
    "A": lambda s: shape_a_text(events(post_chat(s, {
        "message": "hello", "model": GEMMA, "system_content": SYSTEM}))),
    "B": lambda s: ask(s, "hello", model=GEMMA, system_content=SYSTEM).json()[
        "choices"][0]["message"]["content"],
    "ui": lambda s: ui_text(post_chat(s, {"model": GEMMA, "messages": [
        {"id": "s", "role": "system", "parts": [{"type": "text", "text": SYSTEM}]},
        {"id": "u", "role": "user", "parts": [{"type": "text", "text": "hello"}]}]})),
    "v1": lambda s: answer_text(create(s, model=GEMMA, messages=[
        {"role": "system", "content": SYSTEM}, *HELLO])),
    "v1 stream": lambda s: answer_text(create(s, model=GEMMA, stream=True, messages=[
        {"role": "system", "content": SYSTEM}, *HELLO])),
}


@pytest.mark.parametrize("shape", GEMMA_ASKS)
def test_gemma_gets_its_system_text_in_the_first_user_turn(server, gemini, shape):
    gemini.script = refuse_like_gemini
    assert GEMMA_ASKS[shape](server) == f"You said: {SYSTEM}\n\nhello"
    assert len(posted(gemini)) == 1, "the first request is already one Gemma takes"
    body = posted(gemini)[0].json
    assert field(body, "systemInstruction") is None
    assert body["contents"][0]["role"] == "user"
    assert body["contents"][0]["parts"][0]["text"].startswith(SYSTEM)
    assert field(field(body, "generationConfig") or {}, "thinkingConfig") is None


def test_gemma_gets_the_system_text_once_in_a_longer_conversation(server, gemini):
    gemini.script = refuse_like_gemini
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "more"}]
    assert answer_text(create(server, model=GEMMA, messages=messages)) == "You said: more"
    contents = posted(gemini)[0].json["contents"]
    texts = [part["text"] for content in contents for part in content["parts"]]
    assert texts == [f"{SYSTEM}\n\nhi", "Bonjour !", "more"]


FEATURES = {  # what a request asks for, Gemini's refusal, and the field that names the feature
    "system_instruction": ({"messages": [{"role": "system", "content": "Be brief."}, *HELLO]},
                           "Developer instruction is not enabled for models/gemini-2.5-flash",
                           lambda body: field(body, "systemInstruction")),
    "tools": ({"tools": TOOLS[:1]}, "Function calling is not enabled for models/gemini-2.5-flash",
              lambda body: field(body, "tools") or field(body, "toolConfig")),
    "json_mode": ({"response_format": {"type": "json_object"}},
                  "JSON mode is not enabled for models/gemini-2.5-flash",
                  lambda body: field(field(body, "generationConfig") or {}, "responseMimeType")),
    "thinking": ({}, "Thinking is not enabled for models/gemini-2.5-flash",
                 lambda body: field(field(body, "generationConfig") or {}, "thinkingConfig")),
}


def refuse(feature, always=False):
    """A fake Gemini that refuses a request carrying the feature (or every request)."""
    _, message, carries = FEATURES[feature]
    return lambda r: gemini_error(400, "INVALID_ARGUMENT", message) \
        if always or carries(r.json or {}) else None


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("feature", FEATURES)
def test_a_refused_feature_is_dropped_and_asked_again_on_the_same_key(
        server, gemini, feature, stream):
    params, _, carries = FEATURES[feature]
    gemini.script = refuse(feature)
    result = create(server, model=GEMINI, stream=stream, **params)
    kept = "Be brief.\n\n" if feature == "system_instruction" else ""  # the system text stays
    assert answer_text(result) == f"You said: {kept}hello"
    first, second = posted(gemini)
    assert first.key == second.key == K0, "asked again on the same key"
    assert carries(first.json) and not carries(second.json)
    log = wait_for_log(server, f"{GEMINI} does not take {feature}; asking again without it")
    assert f"{GEMINI} does not take {feature}; asking again without it" in log


@pytest.mark.parametrize("shape", ["v1", "A"])
def test_a_feature_refused_twice_is_the_clients_error(server, gemini, shape):
    gemini.script = refuse("system_instruction", always=True)
    if shape == "v1":
        with pytest.raises(openai_sdk.BadRequestError) as raised:
            create(server, model=GEMINI, **FEATURES["system_instruction"][0])
        message = raised.value.message
    else:
        payloads = events(post_chat(server, {"message": "hello", "model": GEMINI,
                                             "system_content": "Be brief."}))
        message = payloads[-1]["error"]
    assert "Developer instruction is not enabled" in message
    assert [r.key for r in posted(gemini)] == [K0, K0], "once more, then no third request"
    assert field(posted(gemini)[1].json, "systemInstruction") is None


# ---------------------------------------------------------------- 6. settings at start

@pytest.fixture(scope="module")
def pasted_keys_server(start_gunicorn, fake_gemini, fake_openai):
    """Keys one a line, as pasted from a file: CRLF, blank lines and spaces included."""
    return start_gunicorn(upstream_env(fake_gemini, fake_openai,
                                       ALL_GEMINI_API_KEYS=f"{K0}\n  {K1}  \n\n{K2}\n",
                                       ZJU_API_KEY=f"{Z0}\r\n{Z1}\r\n"), workers=1)


def test_keys_one_a_line_are_all_used(pasted_keys_server, gemini, openai):
    pasted_keys_server.reset_state()
    health = requests.get(pasted_keys_server.url + "/healthz", timeout=TIMEOUT).json()
    assert (health["providers"]["gemini"], health["providers"]["zju"]) == (3, 2)
    for model in [GEMINI] * 3 + [ZJU_MODEL] * 2:
        response = ask(pasted_keys_server, model=model)
        assert response.status_code == 200, response.text
    assert Counter(keys_posted(gemini)) == dict.fromkeys(GEMINI_KEYS, 1)
    assert Counter(keys_posted(openai)) == dict.fromkeys(ZJU_KEYS, 1)


def test_access_tokens_one_a_line_are_not_silently_unusable():
    """A token holding a newline could never be presented: split it as the keys are, or stop."""
    try:
        tokens = load_config({"ACCESS_TOKENS": "token-one-0001\ntoken-two-0002\n"}).access_tokens
    except ConfigError as error:
        assert "ACCESS_TOKENS" in str(error) and "token-one" not in str(error)
    else:
        assert sorted(tokens) == ["token-one-0001", "token-two-0002"]


def run_until_exit(command, env: dict, data_dir, deadline: float = 30.0) -> tuple:
    """Run a start command with these settings; (exit status, output) once it exits, which
    it must do before the deadline (else it is killed, by its process group, and the test fails)."""
    environ = {k: v for k, v in os.environ.items() if k not in CLEARED}
    environ.update(TEMP_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **env)
    process = subprocess.Popen(command, cwd=REPO, env=environ, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail("the server started despite the bad setting:\n" + output.decode(errors="replace"))
    return process.returncode, output.decode(errors="replace")


GUNICORN = [sys.executable, "-m", "gunicorn", "--workers", "3", "--worker-class", "gevent",
            "--bind", "127.0.0.1:0", "--timeout", "600", "--graceful-timeout", "2",
            "--no-control-socket", "app:app"]
BAD_KEYS = {  # the setting, its value, the bad key (never to be shown) and its position
    "a space inside": ("ALL_GEMINI_API_KEYS", f"{K0},AIzaFakeGemini KeyNumber2bbbb,{K2}",
                       "AIzaFakeGemini KeyNumber2bbbb", 2),
    "non-ASCII, one a line": ("ALL_GEMINI_API_KEYS", f"{K0}\n{K1}\nAIzaFakeGeminiKéyNumber3cccc\n",
                              "AIzaFakeGeminiKéyNumber3cccc", 3),
    "a zero-width space": ("ZJU_API_KEY", f"{Z0},sk-fakeZjuKey\u200bNumberTwo2222",
                           "sk-fakeZjuKey\u200bNumberTwo2222", 2),
}


def assert_key_unshown(output: str, secret: str):
    for piece in (secret, secret[:10], secret[-10:]):
        assert piece not in output


@pytest.mark.parametrize("case", BAD_KEYS)
def test_gunicorn_stops_at_start_naming_the_key_by_position(
        fake_gemini, fake_openai, tmp_path, case):
    name, value, secret, position = BAD_KEYS[case]
    env = upstream_env(fake_gemini, fake_openai, **{name: value})
    status, output = run_until_exit(GUNICORN, env, tmp_path / "data")
    assert status != 0
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1].startswith(f"ChatBridge cannot start: invalid settings: {name}: key "
                                f"{position} {HEADER_PROBLEM}"), output
    assert output.count("ChatBridge cannot start") == 1 and output.count(HEADER_PROBLEM) == 1
    assert "Traceback" not in output and "Booting worker" not in output
    assert_key_unshown(output, secret)


def test_gunicorn_stops_at_start_when_an_alias_sends_echo_to_a_provider_without_keys(tmp_path):
    status, output = run_until_exit(GUNICORN, {"MODEL_ALIASES": "echo=gemini-2.5-pro"}, tmp_path / "data")
    assert status != 0
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1] == ("ChatBridge cannot start: invalid settings: MODEL_ALIASES sends 'echo', which "
                         "ChatBridge answers itself, to 'gemini-2.5-pro' (by echo=gemini-2.5-pro), but "
                         "ALL_GEMINI_API_KEYS is not set: set it, or drop the alias"), output
    assert "Traceback" not in output and "Booting worker" not in output


@pytest.mark.parametrize("env, secret, message", [
    ({"ALL_GEMINI_API_KEYS": f"{K0},AIzaFakeGemini KeyNumber2bbbb"}, "AIzaFakeGemini KeyNumber2bbbb",
     f"ChatBridge cannot start: invalid settings: ALL_GEMINI_API_KEYS: key 2 {HEADER_PROBLEM}"),
    ({"PORT": "0"}, None, "ChatBridge cannot start: invalid settings: PORT must be"),
    ({"MODEL_ALIASES": "echo=gemini-2.5-pro"}, None,
     "ChatBridge cannot start: invalid settings: MODEL_ALIASES sends 'echo'"),
], ids=["a space in a key", "port 0", "echo aliased to a provider without keys"])
def test_python_app_py_with_a_bad_setting_says_why_without_a_traceback(tmp_path, env, secret, message):
    status, output = run_until_exit([sys.executable, "app.py"], env, tmp_path / "data")
    assert status == 1
    assert output.strip().startswith(message) and len(output.strip().splitlines()) == 1, output
    assert "Traceback" not in output
    if secret:
        assert_key_unshown(output, secret)
