"""The small exception tree, and the one place upstream failures are classified.

    ChatBridgeError           a failure the client is told about, in its API's error format
    ├── ClientError           the request's own fault: 400 (or 405, 413, 415 by its status)
    │   ├── Unauthorized      401: a missing or wrong access token
    │   ├── NotFound          404: no such endpoint, chat or file_id
    │   └── ModelNotFound     no provider serves the model: 400 on /api (as the sources have
    │                         it), 404 `model_not_found` on the gateways
    ├── NoKeyAvailable        429 + Retry-After while every key rests; 503 when every key was
    │                         rejected as invalid
    └── UpstreamError         an upstream answer that is not a usable answer, with its kind
    ClientGone                the client went away, so the upstream work stopped
    ConfigError               settings the service cannot start with

UpstreamError.kind, decided by classify_failure and its siblings below:
- rate_limit: HTTP 429. The key rests for that model: RetryInfo's delay, else Retry-After,
  else 60 s; a per-day quota until midnight Pacific (keys.py applies this).
- invalid_key: 401, 403, or a 400 naming API_KEY_INVALID or API_KEY_EXPIRED. The key rests an
  hour for every model.
- server: 5xx (and any status under 400 that is not 200).
- rejected: any other 4xx, a prompt Gemini blocked, an answer a filter or the token limit
  stopped before any text: the request's own fault. It is returned at once; no other key is
  spent on it and the key is not blamed.
- unusable: the model's answer cannot be used (it ended with a malformed function call):
  not the key's fault, and not retried, since another key runs the same model.
- broken: an error event inside a 200 stream, a cut-off stream, an event of unexpected shape,
  an answer without content, a read timeout.
- unreachable: no connection could be made.
Every kind but rejected and unusable fails over to the next key.

Each client API renders these in its own format (chatbridge/apis/); `requests` and urllib3
exceptions become UpstreamErrors only in failure_from_exception.
"""

import email.utils
import math
import time
from typing import Any

import requests
import urllib3

RATE_LIMIT_COOLDOWN = 60.0  # seconds, when a 429 says nothing about when to come back
INVALID_KEY_REASONS = {"API_KEY_INVALID", "API_KEY_EXPIRED"}


class ConfigError(Exception):
    """The environment holds settings the service cannot run with."""


class ClientGone(Exception):
    """The client went away, so the upstream work stopped."""


class ChatBridgeError(Exception):
    """A failure the client is told about. status is the HTTP status of the sources' /api;
    the gateway APIs map some classes to their own (see each module in chatbridge/apis/)."""

    status = 500

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.retry_after = retry_after  # seconds
        self.extra_headers = headers or {}

    def headers(self) -> dict:
        """Headers the error response carries: Retry-After in whole seconds, at least 1."""
        if self.retry_after is None:
            return dict(self.extra_headers)
        return {**self.extra_headers, "Retry-After": str(max(1, math.ceil(self.retry_after)))}


class ClientError(ChatBridgeError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class NotFound(ClientError):
    status = 404


class ModelNotFound(ClientError):
    status = 400


class NoKeyAvailable(ChatBridgeError):
    status = 429


class UpstreamError(ChatBridgeError):
    """An upstream answer that is not a usable answer, classified for failover (kinds above).

    upstream_status is the upstream's own HTTP status, when it answered with one; body is
    its error body as it came (for Gemini's passed-through API); per_day marks a 429 for a
    per-day quota. status is the /api status: 503 when unreachable, else 500.
    """

    def __init__(self, kind: str, message: str, upstream_status: int | None = None,
                 retry_after: float | None = None, per_day: bool = False,
                 body: bytes | None = None, status: int | None = None):
        super().__init__(message, status or (503 if kind == "unreachable" else 500), retry_after)
        self.kind = kind
        self.upstream_status = upstream_status
        self.per_day = per_day
        self.body = body

    @property
    def failover(self) -> bool:
        """Whether another key may do better: not for the request's own fault, nor for an
        answer the model made unusable."""
        return self.kind not in ("rejected", "unusable")

    @property
    def blames_key(self) -> bool:
        """Whether the failure counts against the key that was used."""
        return self.failover


def error_details(error: Any) -> list:
    """The google.rpc details of an error object, or an empty list."""
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def error_message(body: Any, fallback: str) -> str:
    """The human message in a Gemini or OpenAI-style error body."""
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str) and error:
        return error
    return fallback


def retry_delay(error: Any, headers) -> float:
    """Seconds until a rate-limited key may be tried: RetryInfo, else Retry-After, else 60."""
    for detail in error_details(error):
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and detail.get("@type", "").endswith("RetryInfo"):
            try:
                return max(0.0, float(delay.rstrip("s")))
            except ValueError:
                pass
    header = (headers or {}).get("Retry-After", "")
    if header.strip().isdigit():
        return float(header)
    if header:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    return RATE_LIMIT_COOLDOWN


def per_day_quota(error: Any) -> bool:
    """Whether a 429 names a per-day quota, which only resets at midnight Pacific."""
    for detail in error_details(error):
        for violation in detail.get("violations") or []:
            if isinstance(violation, dict) and "PerDay" in str(violation.get("quotaId", "")):
                return True
    return False


def names_invalid_key(error: Any, message: str) -> bool:
    """Whether a Gemini 400 says the key itself is bad."""
    reasons = {d.get("reason") for d in error_details(error)}
    return bool(reasons & INVALID_KEY_REASONS) or "api key not valid" in message.lower()


def classify_failure(status: int, body: Any, headers=None) -> UpstreamError:
    """Turn an upstream error (HTTP status and parsed body) into an UpstreamError."""
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error_message(body, f"upstream answered HTTP {status}")
    if status == 429:
        return UpstreamError("rate_limit", message, status, retry_delay(error, headers),
                             per_day_quota(error))
    if status in (401, 403) or (status == 400 and names_invalid_key(error, message)):
        return UpstreamError("invalid_key", message, status)
    if status >= 500 or status < 400:
        return UpstreamError("server", message, status)
    return UpstreamError("rejected", message, status)


def failure_from_event(error: Any) -> UpstreamError:
    """Classify an error that arrived inside a 200 stream as a data event."""
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    failure = classify_failure(status, {"error": error})
    return failure if failure.kind != "rejected" else UpstreamError("broken", failure.message, status)


def failure_from_exception(exc: BaseException) -> UpstreamError:
    """Turn requests' and urllib3's network exceptions into one UpstreamError."""
    if isinstance(exc, (requests.ConnectTimeout, requests.ConnectionError)) and not isinstance(
            exc, requests.ReadTimeout):
        return UpstreamError("unreachable", "could not connect to the upstream")
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return UpstreamError("broken", "the upstream stopped answering (read timeout)")
    return UpstreamError("broken", "the connection to the upstream broke")
