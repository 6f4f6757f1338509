"""Whose fault an upstream error is, and how long its key should rest.

classify_failure reads the status and the body together (Gemini's google.rpc errors and
OpenAI-style {"error": {"message", "type", "code"}}), in this order:
1. billing: the key's account is out of credit or not paying: 402, `insufficient_quota`,
   "insufficient credits" or "balance", "enable billing". The key rests for every model
   (BILLING_COOLDOWN, a long rest) and requests fail over.
2. invalid_key: the key itself is bad, disabled or suspended, in any status: 401, 403
   (PERMISSION_DENIED; but not a 403 about the request's content: input flagged by
   moderation (OpenRouter), a file the project may not read (Gemini)), API_KEY_INVALID,
   API_KEY_EXPIRED, SERVICE_DISABLED, CONSUMER_SUSPENDED, "api key not valid", "invalid api
   key", `invalid_api_key`. The key rests for every model (keys.INVALID_KEY_COOLDOWN) and
   requests fail over.
3. rate_limit: a quota is used up, in any status: 429, RESOURCE_EXHAUSTED,
   `rate_limit_exceeded`. The key rests for that model for as long as the upstream says
   (retry_delay: at most MAX_RETRY_DELAY, a day; a delay that is no finite number counts as
   unstated); a per-day quota until midnight Pacific.
4. server: 5xx, 529 (overloaded), and any other status under 400 but 200: the upstream's
   fault. Requests fail over; the key does not rest.
5. rejected: any other 4xx (a bad schema, a context too long, an invalid argument): the
   request's own fault, returned with the upstream's message and not retried.
"""

import email.utils
import math
import re
import time
from typing import Any

from .errors import UpstreamError

RATE_LIMIT_COOLDOWN = 60.0  # seconds, when a 429 says nothing about when to come back
MAX_RETRY_DELAY = 24 * 3600.0  # seconds: no upstream's word rests a key longer (issue 11, item 6)
INVALID_KEY_REASONS = {"API_KEY_INVALID", "API_KEY_EXPIRED", "SERVICE_DISABLED",
                       "CONSUMER_SUSPENDED", "API_KEY_SERVICE_BLOCKED"}
INVALID_KEY_WORDS = re.compile(r"api[ _]key not valid|invalid[ _]api[ _]key|incorrect api key|"
                               r"api key (?:expired|was reported as leaked)|suspended|"
                               r"has been disabled|invalid_api_key", re.I)
BILLING_CODES = {"insufficient_quota", "billing_not_active", "billing_hard_limit_reached",
                 "insufficient_balance", "payment_required"}
BILLING_WORDS = re.compile(r"insufficient (?:credits?|balance|funds)|credit balance|"
                           r"out of credits?|enable billing|billing (?:is )?not active", re.I)
REQUEST_403_WORDS = re.compile(r"flagged|moderation|permission to access the file", re.I)
QUOTA_WORDS = re.compile(r"rate[ _]limit|too many requests|resource_exhausted", re.I)
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
RETRY_IN = re.compile(r"(?:try again|retry) in (\d+(?:\.\d+)?(?:ms|h|m|s)(?:\d+(?:\.\d+)?(?:ms|h|m|s))*)",
                      re.I)
HTML_PAGE = re.compile(r"\s*<(?:!doctype\s+html|html|head|body)\b", re.I)
HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
HTML_TAG = re.compile(r"<[^>]*>")
RESET_HEADERS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")


def classify_failure(status: int, body: Any, headers=None) -> UpstreamError:
    """Turn an upstream error (HTTP status and parsed body) into an UpstreamError."""
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error_message(body, f"upstream answered HTTP {status}")
    if is_billing(status, error, message):
        return UpstreamError("billing", message, status)
    if status == 403 and REQUEST_403_WORDS.search(message):  # a 403 about the request's content
        return UpstreamError("rejected", message, status)
    if status in (401, 403) or names_invalid_key(error, message):
        return UpstreamError("invalid_key", message, status)
    if status == 429 or names_quota(error, message):
        return UpstreamError("rate_limit", message, status, retry_delay(error, headers, message),
                             per_day_quota(error))
    if status >= 500 or status < 400:
        return UpstreamError("server", message, status)
    return UpstreamError("rejected", message, status)


def failure_from_event(error: Any) -> UpstreamError:
    """Classify an error that arrived inside a 200 stream as a data event: the key's fault as
    above, anything else a broken answer."""
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    failure = classify_failure(status, {"error": error})
    return failure if failure.kind != "rejected" else UpstreamError("broken", failure.message, status)


def error_fields(error: Any) -> str:
    """An error's machine-readable words (status, code, type), lower-case, for matching."""
    if not isinstance(error, dict):
        return ""
    return " ".join(str(error.get(name, "")) for name in ("status", "code", "type")).lower()


def is_billing(status: int, error: Any, message: str) -> bool:
    fields = set(error_fields(error).split())
    return status == 402 or bool(fields & BILLING_CODES) or bool(BILLING_WORDS.search(message))


def names_invalid_key(error: Any, message: str) -> bool:
    """Whether an error says the key itself is bad, disabled or suspended."""
    reasons = {d.get("reason") for d in error_details(error)}
    return bool(reasons & INVALID_KEY_REASONS) or bool(INVALID_KEY_WORDS.search(message)) or \
        "invalid_api_key" in error_fields(error)


def names_quota(error: Any, message: str) -> bool:
    """Whether an error, whatever its status, says a quota or rate limit is used up."""
    return bool(QUOTA_WORDS.search(error_fields(error))) or bool(QUOTA_WORDS.search(message))


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
        return html_summary(error)
    return fallback


def html_summary(text: str) -> str:
    """An HTML error page (a CDN's or proxy's in front of the API) as its title, or its
    visible text, on one line; any other text unchanged."""
    if not HTML_PAGE.match(text):
        return text
    title = HTML_TITLE.search(text)
    visible = title.group(1) if title else HTML_TAG.sub(" ", text)
    return "an HTML page: " + " ".join(visible.split())[:200]


def retry_delay(error: Any, headers=None, message: str = "") -> float:
    """Seconds until a rate-limited key may be tried, from the first the upstream states:
    Gemini's RetryInfo, Retry-After (seconds or an HTTP date), OpenAI's x-ratelimit-reset-*
    headers (durations such as 6m0s or 1.5s; the later of the two), a reset time in the error
    body (OpenRouter's metadata.headers X-RateLimit-Reset, epoch milliseconds), "try again
    in 20s" in the message; else RATE_LIMIT_COOLDOWN. A stated delay that is no finite number
    ("infs", a 400-digit one) is passed over; the result is at most MAX_RETRY_DELAY."""
    headers = headers or {}
    resets = [sane_delay(parse_duration(headers.get(h, ""))) for h in RESET_HEADERS]
    for delay in (retry_info(error), retry_after(headers.get("Retry-After", "")),
                  max((d for d in resets if d), default=None), body_reset(error),
                  message_delay(message)):
        delay = sane_delay(delay)
        if delay is not None:
            return delay
    return RATE_LIMIT_COOLDOWN


def sane_delay(delay: float | None) -> float | None:
    """A stated delay within 0 and MAX_RETRY_DELAY; None when it is none or not finite."""
    if delay is None or not math.isfinite(delay):
        return None
    return min(max(0.0, delay), MAX_RETRY_DELAY)


def retry_info(error: Any) -> float | None:
    for detail in error_details(error):
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and detail.get("@type", "").endswith("RetryInfo"):
            return parse_duration(delay)
    return None


def retry_after(header: str) -> float | None:
    header = header.strip()
    if not header:
        return None
    if header.replace(".", "", 1).isdigit():
        return float(header)
    try:
        return email.utils.parsedate_to_datetime(header).timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        return None


def parse_duration(text: str) -> float | None:
    """Seconds in "6m0s", "1.5s", "20ms", "1h2m" or a bare number; None if it is none of these."""
    text = str(text).strip().lower()
    if text.replace(".", "", 1).isdigit():
        return float(text)
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(number) * scale[unit] for number, unit in parts)


def body_reset(error: Any) -> float | None:
    """A reset time carried in the error body (epoch seconds or milliseconds), as a delay."""
    metadata = error.get("metadata") if isinstance(error, dict) else None
    headers = metadata.get("headers") if isinstance(metadata, dict) else None
    if not isinstance(headers, dict):
        return None
    reset = {k.lower(): v for k, v in headers.items()}.get("x-ratelimit-reset")
    try:
        reset = float(reset)
    except (TypeError, ValueError):
        return None
    return (reset / 1000 if reset > 1e11 else reset) - time.time()


def message_delay(message: str) -> float | None:
    found = RETRY_IN.search(message or "")
    return parse_duration(found.group(1)) if found else None


def per_day_quota(error: Any) -> bool:
    """Whether a 429 names a per-day quota, which only resets at midnight Pacific."""
    for detail in error_details(error):
        for violation in detail.get("violations") or []:
            if isinstance(violation, dict) and "PerDay" in str(violation.get("quotaId", "")):
                return True
    return False
