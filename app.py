"""ChatBridge: a Flask backend between chat frontends and LLM APIs.

It keeps the API keys on the server, spreads requests round-robin over many
keys with failover and cooldowns, and relays the model's answer as
Server-Sent Events. Upstreams: Google Gemini (REST) and any OpenAI-compatible
API (the ZJU Chat API, DeepSeek, OpenRouter, vLLM, Ollama), plus the built-in
`echo` model that needs no key at all.

Clients: /api/chat in three request shapes (the two source backends' and the
Vercel AI SDK's useChat), an OpenAI-compatible /v1, Gemini's own REST API under
/v1beta (and /v1), and a chat page at /.

Run it:      python app.py                     (development, port 5000)
Production:  gunicorn --workers 3 --worker-class gevent --timeout 600 app:app
Settings:    environment variables, listed in README.md and read by load_config().
"""

import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import logging
import math
import mimetypes
import os
import queue
import re
import secrets
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial, wraps
from datetime import datetime, timedelta, timezone, UTC
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import gevent
import redis
import requests
import urllib3
from filelock import FileLock
from gevent import monkey
from flask import Blueprint, Flask, Response, current_app, g, jsonify, render_template, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

# ---------------------------------------------------------------- constants

HERE = Path(__file__).resolve().parent
PROVIDERS = ("gemini", "zju")
KEY_VARIABLES = {"gemini": "ALL_GEMINI_API_KEYS", "zju": "ZJU_API_KEY"}
PROVIDER_NAMES = {"gemini": "Gemini", "zju": "the OpenAI-compatible upstream", "echo": "echo"}
ECHO_MODEL = "echo"
ECHO_WORD_DELAY = 0.02  # seconds between echoed words, so the echo visibly streams
GEMINI_DEFAULTS = {"temperature": 0.7, "maxOutputTokens": 4096}  # the Persian source's values
RATE_LIMIT_COOLDOWN = 60.0  # when a 429 says nothing about when to come back
INVALID_KEY_COOLDOWN = 3600.0
ERROR_BODY_LIMIT = 64 * 1024
MESSAGE_LIMIT = 500  # characters of an upstream error message passed on
READ_SIZE = 64 * 1024
PING = b": ping\n\n"
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
               "form-action 'self'")
MODEL_LIST_SECONDS = 600
TEXT_KINDS = ("text", "reasoning")
CONTENT_KINDS = TEXT_KINDS + ("tool_call",)  # what counts as an answer having started
FIRST_TOKEN_KINDS = CONTENT_KINDS + ("event", "bytes")  # passed-through Gemini streams too
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "FINISH_REASON_UNSPECIFIED": "stop"}
FILTER_FINISHES = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                   "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"}
INVALID_KEY_REASONS = {"API_KEY_INVALID", "API_KEY_EXPIRED"}
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
MODEL_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
CHAT_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
KEY_PATTERN = re.compile(r"AIza[0-9A-Za-z_\-]{8,}|sk-[0-9A-Za-z_\-*.]{6,}")

# ---------------------------------------------------------------- config


class ConfigError(Exception):
    """The environment holds settings the service cannot run with."""


def fingerprint(secret: str) -> str:
    """A stable name for a key that is safe to write to shared state."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ApiKey:
    """One upstream key; its secret never appears in repr, logs or files."""

    secret: str = field(repr=False)
    group: str

    @property
    def id(self) -> str:
        return fingerprint(self.secret)

    @property
    def suffix(self) -> str:
        """What logs may show of the key: its last four characters."""
        return "…" + self.secret[-4:]


@dataclass(frozen=True)
class Config:
    """Every setting, parsed and checked once at start."""

    gemini_keys: tuple = ()
    gemini_base_url: str = "https://generativelanguage.googleapis.com/v1beta"
    gemini_model: str = "gemini-2.5-flash"
    zju_keys: tuple = ()
    zju_base_url: str = "https://chat.zju.edu.cn/api/ai/v1"
    default_model: str = ECHO_MODEL
    port: int = 5000
    cors_origins: tuple = ("*",)
    temp_data_dir: Path = HERE / "temp_data"
    max_upload_mb: float = 20.0
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    key_wait_seconds: float = 5.0
    ping_seconds: float = 15.0
    log_language: str = "en"
    redis_url: str = ""
    access_tokens: tuple = field(default=(), repr=False)
    admin_token: str = field(default="", repr=False)
    chat_max_turns: int = 50
    chat_ttl_hours: float = 72.0
    upload_ttl_minutes: float = 60.0

    def keys(self, provider: str) -> tuple:
        """The keys configured for a provider."""
        return {"gemini": self.gemini_keys, "zju": self.zju_keys}.get(provider, ())

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def parse_keys(raw: str) -> tuple:
    """Split a comma-separated key list; `group:key` entries share a quota group."""
    keys, seen = [], set()
    for entry in raw.split(","):
        group, _, secret = entry.rpartition(":")
        group, secret = group.strip(), secret.strip()
        if secret and secret not in seen:
            seen.add(secret)
            keys.append(ApiKey(secret, f"group:{group}" if group else fingerprint(secret)))
    return tuple(keys)


def load_config(environ=os.environ) -> Config:
    """Build the Config from environment variables, naming every problem at once."""
    problems = []

    def number(name, default, minimum=0.0, kind=float):
        raw = environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or value < minimum or not math.isfinite(value):
            problems.append(f"{name} must be a {kind.__name__} of at least {minimum}, not {raw!r}")
            return default
        return value

    def url(name, default):
        value = environ.get(name, "").strip().rstrip("/") or default
        if not re.match(r"https?://", value):
            problems.append(f"{name} must start with http:// or https://, not {value!r}")
        return value

    gemini_keys = parse_keys(environ.get("ALL_GEMINI_API_KEYS", ""))
    zju_keys = parse_keys(environ.get("ZJU_API_KEY", ""))
    gemini_model = environ.get("GEMINI_MODEL", "").strip() or Config.gemini_model
    fallback_model = gemini_model if gemini_keys else "deepseek-r1-671b" if zju_keys else ECHO_MODEL
    language = environ.get("LOG_LANGUAGE", "").strip().lower() or "en"
    if language not in ("en", "fa"):
        problems.append(f"LOG_LANGUAGE must be 'en' or 'fa', not {language!r}")
    origins = tuple(o.strip() for o in environ.get("CORS_ORIGINS", "*").split(",") if o.strip())
    tokens = tuple(dict.fromkeys(t.strip() for t in environ.get("ACCESS_TOKENS", "").split(",")
                                 if t.strip()))
    redis_url = environ.get("REDIS_URL", "").strip()
    if redis_url and not re.match(r"(rediss?|unix)://", redis_url):
        problems.append("REDIS_URL must start with redis://, rediss:// or unix://")
    data_dir = environ.get("TEMP_DATA_DIR", "").strip()
    config = Config(
        gemini_keys=gemini_keys,
        gemini_base_url=url("GEMINI_BASE_URL", Config.gemini_base_url),
        gemini_model=gemini_model,
        zju_keys=zju_keys,
        zju_base_url=url("ZJU_BASE_URL", Config.zju_base_url),
        default_model=environ.get("DEFAULT_MODEL", "").strip() or fallback_model,
        port=number("PORT", 5000, 1, int),
        cors_origins=origins or ("*",),
        temp_data_dir=Path(data_dir) if data_dir else Config.temp_data_dir,
        max_upload_mb=number("MAX_UPLOAD_MB", 20.0, 0.001),
        connect_timeout=number("UPSTREAM_CONNECT_TIMEOUT", 10.0, 0.1),
        read_timeout=number("UPSTREAM_READ_TIMEOUT", 300.0, 0.1),
        key_wait_seconds=number("KEY_WAIT_SECONDS", 5.0),
        ping_seconds=number("SSE_PING_SECONDS", 15.0, 0.05),
        log_language=language if language in ("en", "fa") else "en",
        redis_url=redis_url,
        access_tokens=tokens,
        admin_token=environ.get("ADMIN_TOKEN", "").strip(),
        chat_max_turns=number("CHAT_MAX_TURNS", 50, 2, int),
        chat_ttl_hours=number("CHAT_TTL_HOURS", 72.0, 0.001),
        upload_ttl_minutes=number("UPLOAD_TTL_MINUTES", 60.0, 0.001),
    )
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))
    return config


# ---------------------------------------------------------------- logging

log = logging.getLogger("chatbridge")


class LineFormatter(logging.Formatter):
    """One record, one line: control characters in a message (a client's model name, an
    upstream's error text) are escaped, so nobody can forge log lines."""

    def formatMessage(self, record):
        record.message = CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", record.message)
        return super().formatMessage(record)


class PersianLevelFormatter(LineFormatter):
    """Prints log levels in Persian, as the Persian source did."""

    LEVELS = {logging.DEBUG: "دیباگ", logging.INFO: "اطلاع", logging.WARNING: "هشدار",
              logging.ERROR: "خطا", logging.CRITICAL: "بحرانی"}

    def format(self, record):
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = self.LEVELS.get(record.levelno, record.levelname)
        return super().format(record)


def setup_logging(language: str) -> None:
    """Send the service's log lines to stderr, with level names in English or Persian."""
    style = PersianLevelFormatter if language == "fa" else LineFormatter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(style("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


@dataclass
class RequestLog:
    """What the one log line per request reports; filled in as the request goes."""

    shape: str = "-"
    provider: str = "-"
    model: str = "-"
    key: str = "-"
    attempts: int = 0
    outcome: str = "ok"
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()

    def line(self, method: str, path: str, status: int) -> str:
        ttft = f"{self.first_token - self.started:.3f}s" if self.first_token else "-"
        return (f"{method} {path} {status} shape={self.shape} provider={self.provider} "
                f"model={self.model} key={self.key} attempts={self.attempts} ttft={ttft} "
                f"duration={time.monotonic() - self.started:.3f}s outcome={self.outcome}")


# ---------------------------------------------------------------- errors


ERROR_KINDS = {400: "invalid_request", 401: "auth", 404: "not_found", 413: "invalid_request",
               415: "invalid_request", 429: "rate_limit", 500: "upstream_error",
               503: "unreachable"}


class ChatError(Exception):
    """A failure the client is told about, in the error shape of the API it called.

    kind says what went wrong independently of the status the /api routes use,
    so the gateway routes can map it to their own (model_not_found is 400 on /api,
    as the sources have it, and 404 on /v1); upstream_status is the upstream's
    own status when it answered with an error.
    """

    def __init__(self, status: int, message: str, retry_after: float | None = None,
                 kind: str | None = None, upstream_status: int | None = None,
                 upstream_body: bytes | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.kind = kind or ERROR_KINDS.get(status, "internal")
        self.upstream_status = upstream_status
        self.upstream_body = upstream_body  # Gemini's own error, for its passed-through API

    def headers(self) -> dict:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def no_chat(chat_id: str) -> ChatError:
    return ChatError(404, f"no chat {chat_id!r}")


def no_endpoint() -> ChatError:
    return ChatError(404, f"no such endpoint: {request.method} {request.path}")


class ClientGone(Exception):
    """The client went away, so the upstream work stopped."""


@dataclass
class UpstreamFailure(Exception):
    """An upstream answer that is not a usable answer, classified for failover.

    kind: rate_limit, invalid_key, server, unreachable, broken (stream cut, error
    event or no content) fail over to the next key; request (the request's own
    fault) does not.
    """

    kind: str
    message: str
    status: int | None = None
    retry_after: float | None = None
    per_day: bool = False
    body: bytes | None = None  # the upstream's error body as it came

    def __post_init__(self):
        super().__init__(self.message)

    @property
    def failover(self) -> bool:
        return self.kind != "request"


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


def classify_failure(status: int, body: Any, headers=None) -> UpstreamFailure:
    """Turn an upstream error (HTTP status and parsed body) into an UpstreamFailure."""
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error_message(body, f"upstream answered HTTP {status}")
    if status == 429:
        return UpstreamFailure("rate_limit", message, status, retry_delay(error, headers),
                               per_day_quota(error))
    if status in (401, 403) or (status == 400 and names_invalid_key(error, message)):
        return UpstreamFailure("invalid_key", message, status)
    if status >= 500 or status < 400:
        return UpstreamFailure("server", message, status)
    return UpstreamFailure("request", message, status)


def failure_from_event(error: Any) -> UpstreamFailure:
    """Classify an error that arrived inside a 200 stream as a data event."""
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    failure = classify_failure(status, {"error": error})
    return failure if failure.kind != "request" else UpstreamFailure("broken", failure.message, status)


def failure_from_exception(exc: BaseException) -> UpstreamFailure:
    """Turn requests' and urllib3's network exceptions into one UpstreamFailure."""
    if isinstance(exc, (requests.ConnectTimeout, requests.ConnectionError)) and not isinstance(
            exc, requests.ReadTimeout):
        return UpstreamFailure("unreachable", "could not connect to the upstream")
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return UpstreamFailure("broken", "the upstream stopped answering (read timeout)")
    return UpstreamFailure("broken", "the connection to the upstream broke")


# ---------------------------------------------------------------- keys


def next_pacific_midnight(now: float) -> float:
    """When Gemini's per-day quotas reset: the next midnight in California."""
    try:
        zone = ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:
        zone = timezone(timedelta(hours=-8))
    local = datetime.fromtimestamp(now, zone)
    return (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def quota_mark(key: ApiKey, model: str) -> str:
    return f"quota|{key.group}|{model}"


def invalid_mark(key: ApiKey) -> str:
    return f"invalid|{key.id}"


@dataclass
class KeyPlan:
    """The keys one request may try, in order, and when a cooling one comes back."""

    turn: int
    keys: list
    retry_at: float | None = None
    all_invalid: bool = False


class KeyPool:
    """One provider's keys with their shared rotation counter and cooldowns."""

    def __init__(self, provider: str, keys: tuple, store: "StateStore", public_text: Callable):
        self.provider, self.keys, self.store = provider, keys, store
        self.public_text = public_text  # errors are stored as clients may see them

    def plan(self, model: str, turn: int | None = None) -> KeyPlan:
        """Order the usable keys from this request's turn (taking a new turn unless given one)."""
        if turn is None:
            turn, marks = self.store.take_turn(self.provider)
        else:
            marks = self.store.peek(self.provider)
        now = time.time()
        ordered = [self.keys[(turn + i) % len(self.keys)] for i in range(len(self.keys))]
        usable, quota_returns = [], []
        for key in ordered:
            invalid = marks.get(invalid_mark(key), 0) > now
            quota = marks.get(quota_mark(key, model), 0)
            if quota > now and not invalid:
                quota_returns.append(quota)
            if not invalid and quota <= now:
                usable.append(key)
        return KeyPlan(turn, usable, min(quota_returns, default=None),
                       not usable and not quota_returns)

    def status(self) -> list:
        """Each key's state and counters, with only its last four characters."""
        marks, stats, now = self.store.peek(self.provider), self.store.key_stats(self.provider), \
            time.time()
        report = []
        for key in self.keys:
            prefix = quota_mark(key, "")
            cooling = {name[len(prefix):]: iso_time(until) for name, until in marks.items()
                       if name.startswith(prefix) and until > now}
            invalid = marks.get(invalid_mark(key), 0)
            counters = stats.get(key.id, {})
            report.append({
                "key": key.suffix,
                "group": key.group.removeprefix("group:") if key.group.startswith("group:") else None,
                "state": "invalid" if invalid > now else "cooling" if cooling else "ok",
                "cooling_until": cooling,
                "invalid_until": iso_time(invalid) if invalid > now else None,
                "requests": counters.get("requests", 0),
                "failures": counters.get("failures", 0),
                "last_error": counters.get("last_error"),
                "last_used": iso_time(counters["last_used"]) if counters.get("last_used") else None,
            })
        return report

    def note_attempt(self, key: ApiKey, model: str, failure: UpstreamFailure | None = None,
                     new_attempt: bool = True) -> None:
        """Count an attempt; rest a rate-limited or invalid key so no worker tries it too soon."""
        now, marks = time.time(), {}
        if failure is not None and failure.kind == "rate_limit":
            until = next_pacific_midnight(now) if failure.per_day else now + failure.retry_after
            marks[quota_mark(key, model)] = until
        elif failure is not None and failure.kind == "invalid_key":
            marks[invalid_mark(key)] = now + INVALID_KEY_COOLDOWN
        if failure is not None and failure.kind == "request":
            failure = None  # the request's own fault does not count against the key
        error = f"{failure.kind}: {self.public_text(failure.message)}" if failure else None
        self.store.note_attempt(self.provider, key.id, marks, error, new_attempt)


# ---------------------------------------------------------------- state


class StateStore:
    """Everything the workers and instances share: rotation counters, cooldown marks and
    per-key counters, conversations and cached uploads.

    DocumentStore below keeps each item as a JSON document (in files by default, in
    memory as the Redis fallback); RedisStateStore uses Redis' own atomic commands.
    """

    def take_turn(self, provider: str) -> tuple:
        """Advance the provider's counter; return its previous value and the live marks."""
        raise NotImplementedError

    def peek(self, provider: str) -> dict:
        """The live marks (name -> epoch seconds until which they hold), taking no turn."""
        raise NotImplementedError

    def note_attempt(self, provider: str, key_id: str, marks: dict, error: str | None,
                     new_attempt: bool = True) -> None:
        """Count an attempt with a key (a failure when error is given; new_attempt=False for a
        failure later in an attempt already counted) and add cooldown marks."""
        raise NotImplementedError

    def key_stats(self, provider: str) -> dict:
        """Per key id: {requests, failures, last_error, last_used}."""
        raise NotImplementedError

    def claim(self, name: str) -> bool:
        """True for the first caller to claim a name (for a day), so workers do a thing once."""
        raise NotImplementedError

    def open_chat(self, chat_id: str, owner: str, ttl: float) -> list | None:
        """A conversation's turns, claiming it for owner if it is new; None if another owns it."""
        raise NotImplementedError

    def load_chat(self, chat_id: str) -> dict | None:
        """A live conversation {"owner": str, "turns": [turn dicts]}, or None."""
        raise NotImplementedError

    def append_chat(self, chat_id: str, owner: str, turns: list, max_turns: int,
                    ttl: float) -> bool:
        """Append turns in one atomic step, keeping the last max_turns; False if not owner's."""
        raise NotImplementedError

    def delete_chat(self, chat_id: str) -> bool:
        raise NotImplementedError

    def save_upload(self, file_id: str, record: dict, ttl: float) -> None:
        raise NotImplementedError

    def load_upload(self, file_id: str) -> dict | None:
        raise NotImplementedError


def keys_document(doc: dict) -> dict:
    """A provider's key state with every part present and expired marks dropped."""
    now = time.time()
    doc["counter"] = doc.get("counter") if isinstance(doc.get("counter"), int) else 0
    marks = doc.get("marks") if isinstance(doc.get("marks"), dict) else {}
    doc["marks"] = {k: v for k, v in marks.items() if isinstance(v, (int, float)) and v > now}
    doc["stats"] = doc.get("stats") if isinstance(doc.get("stats"), dict) else {}
    return doc


def count_attempt(stats: dict, error: str | None, new_attempt: bool) -> dict:
    """Per-key counters after an attempt, or a failure later in one."""
    stats = {"requests": 0, "failures": 0, "last_error": None, "last_used": None, **stats}
    stats["requests"] += int(new_attempt)
    stats["last_used"] = time.time()
    if error is not None:
        stats["failures"] += 1
        stats["last_error"] = error
    return stats


class DocumentStore(StateStore):
    """The state as named JSON documents, each changed by one atomic read-modify-write."""

    def update(self, name: str, change: Callable, ttl: float | None = None) -> Any:
        """Apply change(doc) to a document atomically and return what it returns."""
        raise NotImplementedError

    def read(self, name: str) -> dict | None:
        raise NotImplementedError

    def delete(self, name: str) -> bool:
        raise NotImplementedError

    def take_turn(self, provider):
        def turn(doc):
            keys_document(doc)
            doc["counter"] = (doc["counter"] + 1) % (2 ** 31)
            return (doc["counter"] - 1) % (2 ** 31), dict(doc["marks"])
        return self.update(f"keys-{provider}", turn)

    def peek(self, provider):
        return keys_document(self.read(f"keys-{provider}") or {})["marks"]

    def note_attempt(self, provider, key_id, marks, error, new_attempt=True):
        def note(doc):
            keys_document(doc)
            for name, until in marks.items():
                doc["marks"][name] = max(until, doc["marks"].get(name, 0))
            doc["stats"][key_id] = count_attempt(doc["stats"].get(key_id, {}), error, new_attempt)
        self.update(f"keys-{provider}", note)

    def key_stats(self, provider):
        return keys_document(self.read(f"keys-{provider}") or {})["stats"]

    def claim(self, name):
        def take(doc):
            taken = bool(doc)
            doc["claimed"] = True
            return not taken
        return self.update(f"claim-{name}", take, ttl=86400)

    def open_chat(self, chat_id, owner, ttl):
        def claim_chat(doc):
            doc.setdefault("turns", [])
            return doc["turns"] if doc.setdefault("owner", owner) == owner else None
        return self.update(f"chat-{chat_id}", claim_chat, ttl)

    def load_chat(self, chat_id):
        return self.read(f"chat-{chat_id}")

    def append_chat(self, chat_id, owner, turns, max_turns, ttl):
        def append(doc):
            if doc.setdefault("owner", owner) != owner:
                return False
            doc["turns"] = (doc.get("turns", []) + turns)[-max_turns:]
            return True
        return self.update(f"chat-{chat_id}", append, ttl)

    def delete_chat(self, chat_id):
        return self.delete(f"chat-{chat_id}")

    def save_upload(self, file_id, record, ttl):
        self.update(f"upload-{file_id}", lambda doc: doc.update(record), ttl)

    def load_upload(self, file_id):
        return self.read(f"upload-{file_id}")


EXPIRING_DOCUMENTS = ("chat-", "upload-", "claim-")
LOCK_STRIPES = 64  # lock files are never deleted (that breaks a lock), so their number is fixed
SWEEP_SECONDS = 60.0


class FileStateStore(DocumentStore):
    """Documents as JSON files in TEMP_DATA_DIR, each changed under a file lock.

    A write goes to a temporary file that then replaces the document, so a
    worker killed mid-write never leaves it unreadable. A lock is held only to
    read, change and replace, never across network I/O. An expiring document's
    mtime is its expiry time; expired ones are swept away now and then.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        (self.directory / "locks").mkdir(parents=True, exist_ok=True)
        self.locks = [FileLock(self.directory / "locks" / f"{n:02d}.lock", poll_interval=0.001)
                      for n in range(LOCK_STRIPES)]
        self.swept = 0.0

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def lock(self, name: str) -> FileLock:
        return self.locks[zlib.crc32(name.encode()) % LOCK_STRIPES]

    def update(self, name, change, ttl=None):
        path = self.path(name)
        with self.lock(name):
            doc = self.read(name) or {}
            result = change(doc)
            temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(doc, ensure_ascii=False))
            if ttl is not None:
                os.utime(temporary, (time.time(), time.time() + ttl))
            os.replace(temporary, path)
        if ttl is not None and time.monotonic() - self.swept > SWEEP_SECONDS:
            self.sweep()
        return result

    def read(self, name):
        """A live document; a missing, expired or corrupt one reads as None."""
        path = self.path(name)
        try:
            if name.startswith(EXPIRING_DOCUMENTS) and path.stat().st_mtime < time.time():
                return None
            doc = json.loads(path.read_text())
            if isinstance(doc, dict):
                return doc
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        log.warning("state file %s is unreadable; starting it again", path.name)
        return None

    def delete(self, name):
        with self.lock(name):
            existed = self.read(name) is not None
            self.path(name).unlink(missing_ok=True)
        return existed

    def sweep(self) -> None:
        """Remove expired documents, and temporary files a killed worker left behind."""
        self.swept = time.monotonic()
        now = time.time()
        for path in self.directory.iterdir():
            with suppress(OSError):
                expired = path.name.startswith(EXPIRING_DOCUMENTS) and path.stat().st_mtime < now
                stale = path.suffix == ".tmp" and path.stat().st_mtime < now - SWEEP_SECONDS
                if expired or stale:
                    path.unlink()


class MemoryStateStore(DocumentStore):
    """Documents in this process only: what a worker falls back to when Redis is down."""

    def __init__(self):
        self.docs = {}
        self.lock = threading.Lock()

    def update(self, name, change, ttl=None):
        with self.lock:
            doc = self.read(name) or {}
            result = change(doc)
            expires = time.time() + ttl if ttl is not None else None
            self.docs[name] = (json.loads(json.dumps(doc)), expires)
        return result

    def read(self, name):
        doc, expires = self.docs.get(name, (None, None))
        if doc is None or (expires is not None and expires < time.time()):
            return None
        return json.loads(json.dumps(doc))

    def delete(self, name):
        with self.lock:
            return self.docs.pop(name, None) is not None


REDIS_RETRY_SECONDS = 15
NOTE_ATTEMPT = """
local now = tonumber(ARGV[3])
local marks = redis.call('HGETALL', KEYS[1])
for i = 1, #marks, 2 do
  if tonumber(marks[i + 1]) < now then redis.call('HDEL', KEYS[1], marks[i]) end
end
for i = 6, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > old then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('HINCRBY', KEYS[2], ARGV[4] .. ':requests', tonumber(ARGV[5]))
redis.call('HSET', KEYS[2], ARGV[4] .. ':last_used', ARGV[3])
if ARGV[1] == '1' then
  redis.call('HINCRBY', KEYS[2], ARGV[4] .. ':failures', 1)
  redis.call('HSET', KEYS[2], ARGV[4] .. ':last_error', ARGV[2])
end
"""
OPEN_CHAT = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return redis.call('LRANGE', KEYS[2], 0, -1)
"""
APPEND_CHAT = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


def redis_or_memory(method: Callable) -> Callable:
    """Run a RedisStateStore method on Redis; while Redis is down, on this process's memory."""

    @wraps(method)
    def run(store, *args):
        if time.monotonic() >= store.retry_at:
            try:
                return method(store, *args)
            except redis.RedisError as exc:
                store.retry_at = time.monotonic() + REDIS_RETRY_SECONDS
                log.error("Redis is unreachable (%s); state is per process for the next %d s, "
                          "and conversation turns saved meanwhile stay in this process",
                          type(exc).__name__, REDIS_RETRY_SECONDS)
        return getattr(store.fallback, method.__name__)(*args)

    return run


class RedisStateStore(StateStore):
    """State in Redis (REDIS_URL), shared by every instance, with Redis' atomic commands.

    While Redis cannot be reached, operations fall back to this process's memory
    (rotation and cooldowns become per-process), Redis is tried again every
    REDIS_RETRY_SECONDS, and the outage is logged, never raised at the user.
    """

    def __init__(self, url: str):
        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                          health_check_interval=30, decode_responses=True)
        self.scripts = {name: self.redis.register_script(source) for name, source in
                        (("note", NOTE_ATTEMPT), ("open", OPEN_CHAT), ("append", APPEND_CHAT))}
        self.fallback = MemoryStateStore()
        self.retry_at = 0.0

    @redis_or_memory
    def take_turn(self, provider):
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(f"chatbridge:counter:{provider}")
        pipe.hgetall(f"chatbridge:marks:{provider}")
        counter, marks = pipe.execute()
        return (counter - 1) % (2 ** 31), self.live(marks)

    @redis_or_memory
    def peek(self, provider):
        return self.live(self.redis.hgetall(f"chatbridge:marks:{provider}"))

    @redis_or_memory
    def note_attempt(self, provider, key_id, marks, error, new_attempt=True):
        pairs = [item for name, until in marks.items() for item in (name, repr(until))]
        self.scripts["note"](
            keys=[f"chatbridge:marks:{provider}", f"chatbridge:stats:{provider}"],
            args=["1" if error is not None else "0", error or "", repr(time.time()), key_id,
                  "1" if new_attempt else "0", *pairs])

    @redis_or_memory
    def key_stats(self, provider):
        stats = {}
        for field_name, value in self.redis.hgetall(f"chatbridge:stats:{provider}").items():
            key_id, _, name = field_name.partition(":")
            entry = stats.setdefault(key_id, {"requests": 0, "failures": 0, "last_error": None,
                                              "last_used": None})
            entry[name] = value if name == "last_error" else float(value)
        for entry in stats.values():
            entry["requests"], entry["failures"] = int(entry["requests"]), int(entry["failures"])
        return stats

    @redis_or_memory
    def claim(self, name):
        return bool(self.redis.set(f"chatbridge:claim:{name}", "1", nx=True, ex=86400))

    @redis_or_memory
    def open_chat(self, chat_id, owner, ttl):
        name = f"chatbridge:chat:{chat_id}"
        turns = self.scripts["open"](keys=[f"{name}:owner", name], args=[owner, seconds(ttl)])
        return None if turns is None else [json.loads(turn) for turn in turns]

    @redis_or_memory
    def load_chat(self, chat_id):
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(f"chatbridge:chat:{chat_id}:owner")
        pipe.lrange(f"chatbridge:chat:{chat_id}", 0, -1)
        owner, turns = pipe.execute()
        if owner is None:
            return None
        return {"owner": owner, "turns": [json.loads(turn) for turn in turns]}

    @redis_or_memory
    def append_chat(self, chat_id, owner, turns, max_turns, ttl):
        name = f"chatbridge:chat:{chat_id}"
        encoded = [json.dumps(turn, ensure_ascii=False) for turn in turns]
        return bool(self.scripts["append"](keys=[f"{name}:owner", name],
                                           args=[owner, seconds(ttl), max_turns, *encoded]))

    @redis_or_memory
    def delete_chat(self, chat_id):
        name = f"chatbridge:chat:{chat_id}"
        return self.redis.delete(name, f"{name}:owner") > 0

    @redis_or_memory
    def save_upload(self, file_id, record, ttl):
        self.redis.set(f"chatbridge:upload:{file_id}", json.dumps(record), ex=seconds(ttl))

    @redis_or_memory
    def load_upload(self, file_id):
        record = self.redis.get(f"chatbridge:upload:{file_id}")
        return json.loads(record) if record else None

    @staticmethod
    def live(marks: dict) -> dict:
        now = time.time()
        return {name: float(until) for name, until in marks.items() if float(until) > now}


def seconds(ttl: float) -> int:
    """A TTL as Redis takes it: whole seconds, at least one."""
    return max(1, math.ceil(ttl))


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Attachment:
    """A file sent with a message, as base64."""

    mime_type: str
    data: str
    filename: str = ""

    @property
    def size(self) -> int:
        return len(self.data) * 3 // 4 - self.data[-2:].count("=")


@dataclass(frozen=True)
class Turn:
    """One message of the conversation: who said it, its text and its files."""

    role: str  # user, assistant, or tool (a function's result)
    text: str
    files: tuple = ()
    file_ids: tuple = ()  # the uploads the files came from, so a stored conversation keeps them
    tool_calls: tuple = ()  # an assistant's calls: {"id", "name", "arguments", "signature"}
    tool_call_id: str = ""  # a tool turn answers this call
    tool_name: str = ""
    reasoning: str = ""  # an assistant's reasoning_content, which DeepSeek's thinking mode wants back


@dataclass
class ChatRequest:
    """A validated chat request, whichever shape it came in; the last turn is the user's."""

    shape: str
    provider: str
    model: str
    turns: list
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = True
    chat_id: str | None = None
    top_p: float | None = None
    stop: list | None = None
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: Any = None
    include_usage: bool = False
    native: Any = None  # a NativeCall, for Gemini's own API passed through
    extra: dict = field(default_factory=dict)  # /v1 fields an OpenAI-compatible upstream gets as sent

    @property
    def message(self) -> str:
        return self.turns[-1].text


def provider_of(name: str) -> tuple:
    """The provider a model name routes to, and the name without an explicit provider prefix."""
    if name == ECHO_MODEL:
        return "echo", name
    prefix, _, rest = name.partition("/")
    if prefix in PROVIDERS and rest:
        return prefix, rest
    return ("gemini" if name.startswith(("gemini", "gemma")) else "zju"), name


def resolve_model(name: str | None, config: Config) -> tuple:
    """Pick the provider for a model name (or the default); 400 if it has no keys."""
    provider, name = provider_of((name or config.default_model).strip())
    if provider != "echo" and not config.keys(provider):
        raise ChatError(400, f"model {name!r} is served by {PROVIDER_NAMES[provider]}, "
                             f"but {KEY_VARIABLES[provider]} is not set", kind="model_not_found")
    return provider, name


def optional(body: dict, name: str, kind, check=None, hint="") -> Any:
    """A field's value if present and valid; None if absent or null; else a 400."""
    value = body.get(name)
    if value is None:
        return None
    valid = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if not valid or (check and not check(value)):
        raise ChatError(400, f"'{name}' must be {hint}")
    return value


def parse_history(raw: Any) -> list:
    """Earlier turns from [{"role": "user"|"assistant", "content": str}]."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ChatError(400, "'history' must be a list of {role, content} objects")
    turns = []
    for index, turn in enumerate(raw):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        role = "assistant" if role == "model" else role
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise ChatError(400, f"'history[{index}]' must have role 'user' or 'assistant' "
                                 "and string content")
        if content.strip():  # upstreams refuse empty turns
            turns.append(Turn(role, content))
    return turns


def checked_file(mime_type: str, data: str, filename: str, where: str,
                 config: Config) -> Attachment:
    """A file whose base64 data is valid and within MAX_UPLOAD_MB."""
    if len(data) * 3 // 4 > config.max_upload_bytes + 2:
        raise ChatError(413, f"the file in {where} is larger than {config.max_upload_mb:g} MB")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ChatError(400, f"the file in {where} is not valid base64") from None
    return Attachment(mime_type.strip().lower() or guess_mime(filename), data, filename)


def parse_file_data(raw: Any, config: Config) -> tuple:
    """The files of a file_data object {mime_type, data (base64), filename?}, if any."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), str) \
            or not isinstance(raw.get("mime_type"), str):
        raise ChatError(400, "'file_data' must be an object with string 'mime_type' and 'data' "
                             "(base64), as /api/upload returns it")
    data = raw["data"].strip()
    if data.startswith("data:") and ";base64," in data:
        data = data.split(";base64,", 1)[1]
    filename = raw.get("filename") if isinstance(raw.get("filename"), str) else ""
    return (checked_file(raw["mime_type"], data, filename, "'file_data'", config),)


def parse_ui_messages(raw: Any, config: Config) -> tuple:
    """System text and turns from AI SDK 5 UI messages ({id, role, parts})."""
    if not isinstance(raw, list) or not raw:
        raise ChatError(400, "'messages' must be a non-empty list of UI messages")
    system, turns = [], []
    for index, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        parts = message.get("parts") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant") or not isinstance(parts, list):
            raise ChatError(400, f"'messages[{index}]' must have a role (system, user or "
                                 "assistant) and a list of parts")
        text = "".join(p["text"] for p in parts
                       if isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str))
        files = tuple(ui_file(p, f"messages[{index}]", config) for p in parts
                      if isinstance(p, dict) and p.get("type") == "file") if role == "user" else ()
        if role == "system":
            system.append(text)
        elif text.strip() or files:
            turns.append(Turn(role, text, files))
    if not turns or turns[-1].role != "user":
        raise ChatError(400, "the last message must be the user's, with text or a file")
    return "\n\n".join(s for s in system if s.strip()) or None, turns


def ui_file(part: dict, where: str, config: Config) -> Attachment:
    """A UI message file part: {mediaType, url: "data:...;base64,...", filename?}."""
    url = part.get("url")
    match = re.fullmatch(r"data:([^;,]*)(?:;[^,]*)?;base64,(.*)", url, re.S) \
        if isinstance(url, str) else None
    if not match:
        raise ChatError(400, f"the file in {where} must be sent as a base64 data: URL")
    media_type = part.get("mediaType") if isinstance(part.get("mediaType"), str) else ""
    filename = part.get("filename") if isinstance(part.get("filename"), str) else ""
    return checked_file(media_type or match.group(1), match.group(2), filename, where, config)


def parse_file_id(body: dict, uploads: Callable) -> tuple:
    """The cached upload a file_id names, as (files, file_ids); a 404 when it has expired."""
    file_id = optional(body, "file_id", str, lambda v: bool(CHAT_ID.fullmatch(v)),
                       "an id that /api/upload returned")
    if file_id is None:
        return (), ()
    record = uploads(file_id)
    if record is None:
        raise ChatError(404, f"unknown or expired file_id {file_id!r}: upload the file again")
    return (attachment_of(record),), (file_id,)


def attachment_of(record: dict) -> Attachment:
    """A cached upload's record as an Attachment."""
    return Attachment(record["mime_type"], record["data"], record.get("filename", ""))


def parse_chat_request(body: dict, config: Config, uploads: Callable) -> ChatRequest:
    """Validate a /api/chat body of any of its three shapes into a ChatRequest.

    uploads(file_id) returns a cached upload's record or None.
    """
    if "messages" in body:
        shape = "ui"
        system, turns = parse_ui_messages(body["messages"], config)
    elif "user_content" in body or "message" in body:
        shape, field_name = ("B", "user_content") if "user_content" in body else ("A", "message")
        message = optional(body, field_name, str, hint="a string") or ""
        cached, file_ids = parse_file_id(body, uploads)
        files = parse_file_data(body.get("file_data"), config) + cached
        if not message.strip() and not files:
            raise ChatError(400, f"'{field_name}' is empty: send a message or a file")
        system = optional(body, "system_content", str, hint="a string") or None
        turns = parse_history(body.get("history")) + [Turn("user", message, files, file_ids)]
    else:
        raise ChatError(400, "the body needs 'message' (streaming chat), 'user_content' "
                             "(OpenAI-style chat) or 'messages' (AI SDK useChat)")
    model = optional(body, "model", str, lambda v: bool(MODEL_NAME.fullmatch(v.strip())),
                     "a model name of 1 to 200 printable characters")
    provider, model = resolve_model(model, config)
    refuse_unsendable_files(provider, turns)
    return ChatRequest(
        shape=shape, provider=provider, model=model, turns=turns, system=system,
        temperature=optional(body, "temperature", (int, float), lambda v: 0 <= v <= 2,
                             "a number from 0 to 2"),
        max_tokens=optional(body, "max_tokens", int, lambda v: v > 0, "a positive integer"),
        stream=shape != "B" or bool(optional(body, "stream", bool, hint="true or false")),
        chat_id=optional(body, "chat_id", str, lambda v: bool(CHAT_ID.fullmatch(v)),
                         "16 to 64 characters of A-Z, a-z, 0-9, _ and -"),
    )


@dataclass(frozen=True)
class NativeCall:
    """A request to Gemini's own REST API, passed through with a pool key."""

    method: str
    model: str
    action: str
    query: dict
    body: bytes


def parse_native_call(target: str, method: str, query: dict, body: bytes,
                      config: Config) -> ChatRequest:
    """A Gemini REST call (models/{model}:{action}, a model, or the list) for the key pool;
    the client's own key (a key= query parameter) is never passed on."""
    model, _, action = target.partition(":")
    if (model and not MODEL_NAME.fullmatch(model)) or (action and not action.isalpha()) or (
            method == "POST" and not action):
        raise no_endpoint()
    if not config.gemini_keys:
        raise ChatError(400, "Gemini models are served with ALL_GEMINI_API_KEYS, which is not set",
                        kind="model_not_found")
    call = NativeCall(method, model, action, {k: v for k, v in query.items() if k != "key"}, body)
    return ChatRequest(shape="native", provider="gemini", model=model or "*", turns=[],
                       stream=action == "streamGenerateContent", native=call)


OPENAI_REBUILT_FIELDS = {"model", "messages", "stream", "stream_options", "n"}


def parse_openai_request(body: dict, config: Config) -> ChatRequest:
    """Validate an OpenAI Chat Completions request (/v1/chat/completions) into a ChatRequest."""
    if optional(body, "n", int, hint="1") not in (None, 1):
        raise ChatError(400, "'n' must be 1: one answer per request")
    system, turns = parse_openai_messages(body.get("messages"), config)
    model = optional(body, "model", str, lambda v: bool(MODEL_NAME.fullmatch(v.strip())),
                     "a model name of 1 to 200 printable characters")
    provider, model = resolve_model(model, config)
    refuse_unsendable_files(provider, turns)
    options = optional(body, "stream_options", dict, hint="an object") or {}
    stop = optional(body, "stop", (str, list), lambda v: isinstance(v, str) or (
        len(v) <= 4 and all(isinstance(s, str) for s in v)), "a string or up to 4 strings")
    max_tokens = optional(body, "max_completion_tokens", int, lambda v: v > 0,
                          "a positive integer")
    return ChatRequest(
        shape="v1", provider=provider, model=model, turns=turns, system=system,
        temperature=optional(body, "temperature", (int, float), lambda v: 0 <= v <= 2,
                             "a number from 0 to 2"),
        max_tokens=max_tokens or optional(body, "max_tokens", int, lambda v: v > 0,
                                          "a positive integer"),
        stream=bool(optional(body, "stream", bool, hint="true or false")),
        top_p=optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1, "a number from 0 to 1"),
        stop=[stop] if isinstance(stop, str) else stop,
        response_format=optional(body, "response_format", dict, lambda v: v.get("type") in (
            "text", "json_object", "json_schema"), "{type: text, json_object or json_schema}"),
        tools=parse_tools(body.get("tools")),
        tool_choice=parse_tool_choice(body.get("tool_choice")),
        include_usage=bool(options.get("include_usage")),
        extra={k: v for k, v in body.items() if k not in OPENAI_REBUILT_FIELDS},
    )


def parse_openai_messages(raw: Any, config: Config) -> tuple:
    """System text and turns from OpenAI messages (system, developer, user, assistant, tool)."""
    if not isinstance(raw, list) or not raw:
        raise ChatError(400, "'messages' must be a non-empty list", kind="invalid_request")
    system, turns, call_names = [], [], {}
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(content_of(message.get("content"), where, config)[0])
        elif role == "user":
            turns.append(Turn("user", *content_of(message.get("content"), where, config)))
        elif role == "assistant":
            calls = parse_tool_calls(message.get("tool_calls"), where)
            call_names.update((call["id"], call["name"]) for call in calls)
            text = content_of(message.get("content"), where, config)[0]
            reasoning = message.get("reasoning_content")
            if text.strip() or calls:  # an empty turn is refused upstream
                turns.append(Turn("assistant", text, tool_calls=calls, reasoning=reasoning
                                  if isinstance(reasoning, str) else ""))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in call_names:
                raise ChatError(400, f"'{where}.tool_call_id' must name a tool call of an "
                                     "earlier assistant message")
            text = content_of(message.get("content"), where, config)[0]
            turns.append(Turn("tool", text, tool_call_id=call_id, tool_name=call_names[call_id]))
        else:
            raise ChatError(400, f"'{where}.role' must be system, developer, user, assistant "
                                 "or tool")
    if not any(turn.role == "user" for turn in turns):
        raise ChatError(400, "'messages' needs at least one user message")
    return "\n\n".join(s for s in system if s.strip()) or None, turns


def content_of(content: Any, where: str, config: Config) -> tuple:
    """(text, files) of message content: a string, null, or text and image_url parts."""
    if content is None or isinstance(content, str):
        return content or "", ()
    if not isinstance(content, list):
        raise ChatError(400, f"'{where}.content' must be a string or a list of parts")
    texts, files = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            files.append(ui_file({"url": part["image_url"].get("url")}, where, config))
        elif kind != "refusal":  # an assistant's refusal is not sent back
            raise ChatError(400, f"'{where}.content' may hold only text and image_url parts")
    return "\n".join(texts), tuple(files)


def parse_tool_calls(raw: Any, where: str) -> tuple:
    """An assistant message's tool_calls as {"id", "name", "arguments", "signature"}."""
    if raw is None:
        return ()
    calls = []
    for call in raw if isinstance(raw, list) else [None]:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str) \
                or not isinstance(function.get("name"), str):
            raise ChatError(400, f"'{where}.tool_calls' must be a list of "
                                 "{id, type: function, function: {name, arguments}}")
        if not isinstance(function.get("arguments", ""), str):
            raise ChatError(400, f"'{where}.tool_calls[].function.arguments' must be a JSON string")
        google = (call.get("extra_content") or {}).get("google") or {}
        calls.append({"id": call["id"], "name": function["name"],
                      "arguments": function.get("arguments") or "{}",
                      "signature": google.get("thought_signature")})
    return tuple(calls)


def parse_tools(raw: Any) -> list | None:
    """Function tools, checked: [{type: function, function: {name, description?, parameters?}}]."""
    if raw is None:
        return None
    valid = isinstance(raw, list) and all(
        isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str) for t in raw)
    if not valid:
        raise ChatError(400, "'tools' must be a list of {type: function, function: {name, "
                             "description, parameters}}")
    return raw


def parse_tool_choice(raw: Any) -> Any:
    if raw is None or raw in ("none", "auto", "required"):
        return raw
    if isinstance(raw, dict) and isinstance((raw.get("function") or {}).get("name"), str):
        return raw
    raise ChatError(400, "'tool_choice' must be none, auto, required or "
                         "{type: function, function: {name}}")


def refuse_unsendable_files(provider: str, turns: list) -> None:
    """A 400 for files the OpenAI-compatible upstream cannot take, before contacting it."""
    for file in (f for turn in turns for f in turn.files):
        if provider == "zju" and not openai_takes(file.mime_type):
            raise ChatError(400, f"{file.mime_type} files cannot go to the OpenAI-compatible "
                                 "upstream; send an image or a text file, or use a Gemini model")


def guess_mime(filename: str) -> str:
    """A content type from a file name, for uploads that name none."""
    return mimetypes.guess_type(filename or "")[0] or "application/octet-stream"


# ---------------------------------------------------------------- upstream adapters


class Delta(NamedTuple):
    """One neutral piece of an answer: text, reasoning, finish (reason) or usage (dict)."""

    kind: str
    value: Any


def thinking_model(model: str) -> bool:
    """Whether a Gemini model takes thinkingConfig (2.5 and later; not 1.x, 2.0 or Gemma)."""
    return model.startswith("gemini-") and not model.startswith(("gemini-1", "gemini-2.0"))


def gemini_parts(turn: Turn) -> list:
    """A turn's Gemini parts: text, inline files, function calls or a function's result."""
    if turn.role == "tool":
        result = parse_json(turn.text)
        response = result if isinstance(result, dict) else {"result": turn.text if result is None
                                                             else result}
        return [{"functionResponse": {"name": turn.tool_name, "response": response}}]
    parts = [{"text": turn.text}] if turn.text else []
    parts += [{"inline_data": {"mime_type": f.mime_type, "data": f.data}} for f in turn.files]
    for call in turn.tool_calls:
        args = parse_json(call["arguments"])
        part = {"functionCall": {"name": call["name"], "args": args if isinstance(args, dict)
                                 else {}}}
        if call.get("signature"):
            part["thoughtSignature"] = call["signature"]
        parts.append(part)
    return parts


def gemini_contents(turns: list) -> list:
    """Gemini contents: roles user and model; consecutive function results share one turn."""
    contents = []
    for turn in turns:
        role = "model" if turn.role == "assistant" else "user"
        if turn.role == "tool" and contents and contents[-1].get("results"):
            contents[-1]["parts"] += gemini_parts(turn)
            continue
        contents.append({"role": role, "parts": gemini_parts(turn),
                         **({"results": True} if turn.role == "tool" else {})})
    return [{"role": c["role"], "parts": c["parts"]} for c in contents]


def gemini_generation(chat: ChatRequest) -> dict:
    """generationConfig: the source's defaults for /api, the upstream's own for /v1."""
    generation = dict(GEMINI_DEFAULTS) if chat.shape != "v1" else {}
    settings = {"temperature": chat.temperature, "maxOutputTokens": chat.max_tokens,
                "topP": chat.top_p, "stopSequences": chat.stop}
    generation.update({name: value for name, value in settings.items() if value is not None})
    response_format = (chat.response_format or {}).get("type")
    if response_format in ("json_object", "json_schema"):
        generation["responseMimeType"] = "application/json"
        schema = (chat.response_format.get("json_schema") or {}).get("schema")
        if schema:
            generation["responseJsonSchema"] = schema
    if thinking_model(chat.model):
        generation["thinkingConfig"] = {"includeThoughts": True}
    return generation


def gemini_tools(chat: ChatRequest) -> dict:
    """OpenAI function tools and tool_choice as Gemini tools and toolConfig."""
    if not chat.tools:
        return {}
    declarations = [{"name": t["function"]["name"],
                     **({"description": t["function"]["description"]}
                        if t["function"].get("description") else {}),
                     **({"parametersJsonSchema": t["function"]["parameters"]}
                        if t["function"].get("parameters") else {})} for t in chat.tools]
    tools = {"tools": [{"functionDeclarations": declarations}]}
    choice = chat.tool_choice
    if isinstance(choice, dict):
        tools["toolConfig"] = {"functionCallingConfig": {
            "mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}}
    elif choice in ("none", "auto", "required"):
        mode = {"none": "NONE", "auto": "AUTO", "required": "ANY"}[choice]
        tools["toolConfig"] = {"functionCallingConfig": {"mode": mode}}
    return tools


def gemini_request(chat: ChatRequest, key: ApiKey, config: Config, stream: bool) -> tuple:
    """URL, headers and JSON body of a Gemini generateContent call."""
    body = {"contents": gemini_contents(chat.turns), "generationConfig": gemini_generation(chat),
            **gemini_tools(chat)}
    if chat.system:
        body["systemInstruction"] = {"parts": [{"text": chat.system}]}
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    url = f"{config.gemini_base_url}/models/{quote(chat.model, safe='')}:{method}"
    return url, {"x-goog-api-key": key.secret}, body


def gemini_usage(meta: dict) -> dict:
    """Gemini usageMetadata (a running total) in OpenAI's usage shape."""
    prompt = meta.get("promptTokenCount", 0)
    completion = meta.get("candidatesTokenCount", 0) + meta.get("thoughtsTokenCount", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": meta.get("totalTokenCount", prompt + completion)}


def gemini_finish(reason: str) -> str:
    if reason in FINISH_REASONS:
        return FINISH_REASONS[reason]
    return "content_filter" if reason in FILTER_FINISHES else "stop"


def gemini_deltas(event: dict) -> list:
    """The deltas in one Gemini GenerateContentResponse (a stream chunk or a whole answer)."""
    if "error" in event:
        raise failure_from_event(event["error"])
    candidates = event.get("candidates") or []
    blocked = (event.get("promptFeedback") or {}).get("blockReason")
    if not candidates and blocked:
        raise UpstreamFailure("request", f"Gemini blocked the prompt (reason: {blocked})")
    deltas = [Delta("usage", gemini_usage(event["usageMetadata"]))] if event.get(
        "usageMetadata") else []
    candidate = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
    texts, calls = {"reasoning": [], "text": []}, []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if isinstance(part, dict) and isinstance(part.get("text"), str) and part["text"]:
            texts["reasoning" if part.get("thought") else "text"].append(part["text"])
        elif isinstance(part, dict) and (part.get("functionCall") or {}).get("name"):
            call = part["functionCall"]
            calls.append(Delta("tool_call", {
                "index": None, "id": None, "name": call.get("name", ""),
                "arguments": json.dumps(call.get("args") or {}, ensure_ascii=False),
                "signature": part.get("thoughtSignature")}))
    deltas += [Delta(kind, "".join(pieces)) for kind, pieces in texts.items() if pieces] + calls
    if candidate.get("finishReason"):
        deltas.append(Delta("finish", gemini_finish(candidate["finishReason"])))
    return deltas


def openai_message(turn: Turn) -> dict:
    """A turn as an OpenAI message: text files inlined, images as image_url parts."""
    if turn.role == "tool":
        return {"role": "tool", "tool_call_id": turn.tool_call_id, "content": turn.text}
    if turn.tool_calls:
        return {"role": "assistant", "content": turn.text or None, "tool_calls": [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in turn.tool_calls], **({"reasoning_content": turn.reasoning}
                                          if turn.reasoning else {})}
    text = turn.text
    for file in turn.files:
        if not file.mime_type.startswith("image/"):
            content = base64.b64decode(file.data).decode("utf-8", errors="replace")
            text = f"{text}\n\n[file {file.filename or ''}]\n{content}".strip()
    images = [{"type": "image_url", "image_url": {"url": f"data:{f.mime_type};base64,{f.data}"}}
              for f in turn.files if f.mime_type.startswith("image/")]
    if not images:
        return {"role": turn.role, "content": text}
    return {"role": turn.role, "content": ([{"type": "text", "text": text}] if text else []) + images}


def openai_takes(mime_type: str) -> bool:
    """Whether a file can go to the OpenAI-compatible upstream (as an image part or as text)."""
    return mime_type.startswith(("image/", "text/")) or mime_type == "application/json"


def openai_request(chat: ChatRequest, key: ApiKey, config: Config, stream: bool) -> tuple:
    """URL, headers and JSON body of an OpenAI-compatible chat/completions call."""
    messages = [{"role": "system", "content": chat.system}] if chat.system else []
    messages += [openai_message(turn) for turn in chat.turns]
    if chat.shape == "v1":  # the client's own fields, as sent (max_completion_tokens stays so)
        body = dict(chat.extra)
    else:
        settings = {"temperature": chat.temperature, "max_tokens": chat.max_tokens}
        body = {name: value for name, value in settings.items() if value is not None}
    body.update(model=chat.model, messages=messages, stream=stream)
    if stream and chat.include_usage:
        body["stream_options"] = {"include_usage": True}
    return (f"{config.zju_base_url}/chat/completions",
            {"Authorization": f"Bearer {key.secret}"}, body)


def openai_deltas(event: dict) -> list:
    """The deltas in one OpenAI chat.completion.chunk (or a whole chat.completion)."""
    if "error" in event:
        raise failure_from_event(event["error"])
    deltas = [Delta("usage", event["usage"])] if isinstance(event.get("usage"), dict) else []
    choices = event.get("choices") or []
    choice = choices[0] if isinstance(choices[0] if choices else None, dict) else {}
    delta = choice.get("delta") or choice.get("message") or {}
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        deltas.append(Delta("reasoning", reasoning))
    if isinstance(delta.get("content"), str) and delta["content"]:
        deltas.append(Delta("text", delta["content"]))
    for call in delta.get("tool_calls") or []:
        function = call.get("function") or {}
        deltas.append(Delta("tool_call", {
            "index": call.get("index", 0), "id": call.get("id"), "name": function.get("name"),
            "arguments": function.get("arguments") or "", "signature": None}))
    if choice.get("finish_reason"):
        deltas.append(Delta("finish", choice["finish_reason"]))
    return deltas


def echo_deltas(chat: ChatRequest) -> Iterator:
    """The built-in echo model: the user's message back, word by word."""
    text = chat.message
    for file in chat.turns[-1].files:
        text += f"\n\n(received {file.filename or 'a file'}, {file.mime_type}, {file.size} bytes)"
    text = text.strip()
    for index, word in enumerate(re.findall(r"\s*\S+\s*", text) or [text]):
        if index:
            time.sleep(ECHO_WORD_DELAY)
        yield Delta("text", word)
    words = len(text.split())
    yield Delta("usage", {"prompt_tokens": words, "completion_tokens": words,
                          "total_tokens": 2 * words})
    yield Delta("finish", "stop")


ADAPTERS = {"gemini": (gemini_request, gemini_deltas), "zju": (openai_request, openai_deltas)}

# ---------------------------------------------------------------- SSE reading and writing

LINE_END = re.compile(rb"\r\n|\r|\n")


def iter_sse_data(chunks: Iterable) -> Iterator:
    """Yield ("data", text) per SSE event from raw byte chunks, however they are split.

    Lines end in CRLF, CR or LF, even across chunk edges; each line is decoded
    as UTF-8 only once complete. Comments are skipped. Lines that are not SSE
    fields (a raw JSON error tail) are collected and yielded last as ("raw", text).
    """
    buffer, data, raw = b"", [], []
    for chunk in chunks:
        buffer += chunk
        start = 0
        for match in LINE_END.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # maybe the first half of a CRLF split across reads
            event = sse_line(buffer[start:match.start()], data, raw)
            if event is not None:
                yield event
            start = match.end()
        buffer = buffer[start:]
    event = sse_line(buffer.rstrip(b"\r"), data, raw) if buffer else None
    if event is not None:
        yield event
    if data:
        yield "data", "\n".join(data)
    if raw:
        yield "raw", "\n".join(raw)


def sse_line(line: bytes, data: list, raw: list):
    """Take one SSE line; return a finished event at a blank line."""
    if not line:
        if data:
            event = ("data", "\n".join(data))
            data.clear()
            return event
        return None
    text = line.decode("utf-8", errors="replace")
    name, colon, value = text.partition(":")
    if name == "data":
        data.append(value[1:] if value.startswith(" ") else value)
    elif not text.startswith(":") and name not in ("event", "id", "retry"):
        raw.append(text)
    return None


def iter_deltas(events: Iterable, translate: Callable) -> Iterator:
    """Upstream SSE events to deltas; finish and usage come last; a cut-off stream raises."""
    finish, usage, done = None, None, False
    for kind, payload in events:
        if kind == "raw":
            tail = parse_json(payload)
            if isinstance(tail, list) and tail:
                tail = tail[0]
            if isinstance(tail, dict) and "error" in tail:
                raise failure_from_event(tail["error"])
            continue
        if payload.strip() == "[DONE]":
            done = True
            break
        event = parse_json(payload)
        if not isinstance(event, dict):
            raise UpstreamFailure("broken", "the upstream sent an event that is not JSON")
        for delta in translate_event(translate, event):
            if delta.kind == "finish":
                finish = delta.value
            elif delta.kind == "usage":
                usage = delta.value
            else:
                yield delta
    if finish is None and not done:
        raise UpstreamFailure("broken", "the upstream stream ended before the answer was "
                                        "complete (cut off)")
    if usage:
        yield Delta("usage", usage)
    yield Delta("finish", finish or "stop")


def translate_event(translate: Callable, event: dict) -> list:
    """An upstream event's deltas; an event of an unexpected shape is a broken answer."""
    try:
        return translate(event)
    except (AttributeError, TypeError, KeyError, IndexError):
        raise UpstreamFailure("broken", "the upstream sent an event of an unexpected shape") from None


def parse_json(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def iter_body(response: requests.Response) -> Iterator:
    """Raw bytes from an upstream response as they arrive, network errors made failures."""
    try:
        while True:
            chunk = response.raw.read1(READ_SIZE)
            if not chunk:
                return
            yield chunk
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise failure_from_exception(exc) from None


def sse(obj: Any) -> bytes:
    """One SSE event; JSON unescaped, as the Persian source writes it."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"




class StreamWriter:
    """Renders neutral deltas in one client protocol."""

    headers: dict = {}
    content_type = "text/event-stream; charset=utf-8"
    ping = PING  # what keeps a silent stream alive; b"" for protocols that have no comments

    def start(self) -> bytes:
        return b""

    def event(self, delta: Delta) -> bytes:
        raise NotImplementedError

    def done(self) -> bytes:
        return b""

    def error(self, message: str) -> bytes:
        return sse({"error": message})


class ShapeAWriter(StreamWriter):
    """The Persian source's stream: {"text"}, {"reasoning"}, then {"done"} or {"error"}."""

    def event(self, delta: Delta) -> bytes:
        if delta.kind in TEXT_KINDS:
            return sse({delta.kind: delta.value})
        return b""

    def done(self) -> bytes:
        return sse({"done": True})


class ChunkWriter(StreamWriter):
    """chat.completion.chunk objects, in two dialects: the Chinese source's (no [DONE], usage on
    the last chunk, errors as a string) and OpenAI's own for /v1 (gateway=True: [DONE], a
    usage chunk when asked for, error objects)."""

    def __init__(self, model: str, gateway: bool = False, include_usage: bool = False):
        self.base = {"id": completion_id(), "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model}
        self.gateway, self.include_usage = gateway, include_usage
        self.usage = None
        self.calls = set()  # indexes of the tool calls begun

    def chunk(self, delta: dict, finish: str | None = None, **extra) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        usage = {"usage": None} if self.include_usage else {}
        return sse({**self.base, "choices": [choice], **usage, **extra})

    def start(self) -> bytes:
        return self.chunk({"role": "assistant", "content": ""})

    def event(self, delta: Delta) -> bytes:
        if delta.kind == "text":
            return self.chunk({"content": delta.value})
        if delta.kind == "reasoning":
            return self.chunk({"reasoning_content": delta.value})
        if delta.kind == "tool_call":
            return self.chunk({"tool_calls": [self.tool_call(delta.value)]})
        if delta.kind == "usage":
            self.usage = delta.value
            return b""
        finish = "tool_calls" if self.calls and delta.value == "stop" else delta.value
        extra = {"usage": self.usage} if self.usage and not self.gateway else {}
        return self.chunk({}, finish, **extra)

    def tool_call(self, call: dict) -> dict:
        """A tool_calls delta entry: id, type and name with its first piece only."""
        index = call["index"] if call["index"] is not None else len(self.calls)
        if index in self.calls:
            return {"index": index, "function": {"arguments": call["arguments"]}}
        self.calls.add(index)
        return {"index": index, **tool_call_entry(call)}

    def done(self) -> bytes:
        if not self.gateway:
            return b""
        usage = b""
        if self.include_usage:
            usage = sse({**self.base, "choices": [], "usage": self.usage or {
                "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})
        return usage + b"data: [DONE]\n\n"

    def error(self, message: str) -> bytes:
        if not self.gateway:
            return sse({"error": message})
        return sse({"error": {"message": message, "type": "api_error", "param": None,
                              "code": None}}) + b"data: [DONE]\n\n"


class GeminiWriter(StreamWriter):
    """Gemini's own stream passed through: its SSE events, or its JSON-array form, unchanged.

    No pings: google-genai reads any line that is not data as JSON.
    """

    ping = b""

    def __init__(self, sse_events: bool):
        self.sse_events, self.written = sse_events, False
        if not sse_events:
            self.content_type = "application/json; charset=UTF-8"

    def event(self, delta: Delta) -> bytes:
        self.written = True
        if delta.kind == "event":
            return b"data: " + delta.value.encode() + b"\r\n\r\n"
        return delta.value if delta.kind == "bytes" else b""

    def error(self, message: str) -> bytes:
        error = {"error": {"code": 500, "message": message, "status": "INTERNAL"}}
        if self.sse_events:
            return sse(error)
        body = json.dumps(error, ensure_ascii=False).encode()  # closes the JSON array
        return (b"\n," + body + b"\n]") if self.written else (b"[" + body + b"]")


def tool_call_entry(call: dict) -> dict:
    """A tool call in OpenAI's shape; Gemini's thought signature rides along as Google's
    OpenAI-compatible endpoint carries it, so it comes back with the call."""
    entry = {"id": call["id"] or "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": call["name"] or "", "arguments": call["arguments"]}}
    if call.get("signature"):
        entry["extra_content"] = {"google": {"thought_signature": call["signature"]}}
    return entry


class UIMessageWriter(StreamWriter):
    """The AI SDK 5 UI message stream that useChat reads; only fields every 5.x client accepts."""

    headers = {"x-vercel-ai-ui-message-stream": "v1"}

    def __init__(self):
        self.part = None  # (kind, id) of the text or reasoning part being written
        self.parts = 0

    def start(self) -> bytes:
        return sse({"type": "start", "messageId": "msg-" + uuid.uuid4().hex})

    def event(self, delta: Delta) -> bytes:
        if delta.kind not in TEXT_KINDS:
            return b""
        opened = b""
        if self.part is None or self.part[0] != delta.kind:
            self.parts += 1
            opened = self.end_part() + sse({"type": f"{delta.kind}-start",
                                            "id": f"{delta.kind}-{self.parts}"})
            self.part = (delta.kind, f"{delta.kind}-{self.parts}")
        return opened + sse({"type": f"{delta.kind}-delta", "id": self.part[1],
                             "delta": delta.value})

    def end_part(self) -> bytes:
        if self.part is None:
            return b""
        kind, part_id = self.part
        self.part = None
        return sse({"type": f"{kind}-end", "id": part_id})

    def done(self) -> bytes:
        return self.end_part() + sse({"type": "finish"}) + b"data: [DONE]\n\n"

    def error(self, message: str) -> bytes:
        return sse({"type": "error", "errorText": message}) + b"data: [DONE]\n\n"


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion_from_deltas(deltas: Iterable, model: str) -> dict:
    """An OpenAI chat.completion object assembled from deltas (Gemini and echo answers)."""
    texts, calls = {"text": [], "reasoning": []}, {}
    finish, usage = "stop", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for delta in deltas:
        if delta.kind in texts:
            texts[delta.kind].append(delta.value)
        elif delta.kind == "tool_call":
            index = delta.value["index"] if delta.value["index"] is not None else len(calls)
            if index in calls:
                calls[index]["function"]["arguments"] += delta.value["arguments"]
            else:
                calls[index] = tool_call_entry(delta.value)
        elif delta.kind == "finish":
            finish = delta.value
        elif delta.kind == "usage":
            usage = delta.value
    message = {"role": "assistant", "content": "".join(texts["text"]) or (None if calls else "")}
    if texts["reasoning"]:
        message["reasoning_content"] = "".join(texts["reasoning"])
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
        finish = "tool_calls" if finish == "stop" else finish
    return {"id": completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage}


# ---------------------------------------------------------------- relaying


class Cancel:
    """Lets the response writer stop upstream work nobody will read."""

    def __init__(self):
        self.cancelled = False
        self.response = None
        self.worker = None  # the greenlet reading the upstream, under gevent

    def watch(self) -> None:
        """Note the current greenlet as the upstream reader, so cancel() can stop it anywhere."""
        if monkey.is_module_patched("threading"):
            self.worker = gevent.getcurrent()

    def track(self, response: requests.Response) -> None:
        self.response = response
        if self.cancelled:
            close_upstream(response)

    def check(self) -> None:
        if self.cancelled:
            raise ClientGone()

    def cancel(self) -> None:
        self.cancelled = True
        if self.response is not None:
            close_upstream(self.response)
        if self.worker is not None and self.worker is not gevent.getcurrent():
            # also stops a request still waiting for the upstream's headers
            gevent.kill(self.worker, ClientGone)


def close_upstream(response: requests.Response) -> None:
    """Close an upstream response now, even while another greenlet or thread reads it."""
    with suppress(ValueError, RuntimeError, OSError, AttributeError):
        response.raw.shutdown()  # wakes a reader blocked in recv
    response.close()


@dataclass
class Answer:
    """An upstream answer that has passed the failover checks: its first deltas and the rest."""

    head: list
    rest: Iterator
    response: requests.Response | None = None
    on_failure: Callable | None = None

    def deltas(self) -> Iterator:
        try:
            yield from self.head
            yield from self.rest
        except UpstreamFailure as failure:
            if self.on_failure is not None:  # a 429 after some text still rests the key
                self.on_failure(failure)
            raise
        finally:
            self.close()

    def close(self) -> None:
        if self.response is not None:
            close_upstream(self.response)


def with_heartbeats(source: Iterator, interval: float, cancel: Cancel) -> Iterator:
    """Yield source's items, and PING whenever it is silent for `interval` seconds.

    The source runs in its own (green) thread, so a silent upstream cannot hide
    a departed client: the next ping fails and the writer closes the upstream.
    """
    items = queue.Queue()

    def pump():
        cancel.watch()
        try:
            for item in source:
                items.put((True, item))
            items.put((False, None))
        except BaseException as exc:  # handed to the writer, which decides
            items.put((False, exc))

    threading.Thread(target=pump, daemon=True, name="upstream-pump").start()
    while True:
        try:
            more, item = items.get(timeout=interval)
        except queue.Empty:
            yield PING
            continue
        if not more:
            if item is not None:
                raise item
            return
        yield item


# ---------------------------------------------------------------- service


class Service:
    """The app's long-lived parts: config, key pools, shared state and the HTTP session."""

    def __init__(self, config: Config):
        self.config = config
        self.store = RedisStateStore(config.redis_url) if config.redis_url else \
            FileStateStore(config.temp_data_dir)
        self.pools = {p: KeyPool(p, config.keys(p), self.store, self.public_text)
                      for p in PROVIDERS}
        self.models_cache = {}
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=1000)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        hidden = [k.secret for p in PROVIDERS for k in config.keys(p)] + list(config.access_tokens)
        hidden += [config.admin_token] if config.admin_token else []
        names = "|".join(re.escape(s) for s in sorted(hidden, key=len, reverse=True))
        self.secret_pattern = re.compile(f"{names}|{KEY_PATTERN.pattern}" if names else
                                         KEY_PATTERN.pattern)

    def redact(self, text: str) -> str:
        """Text with every key-like string masked down to its last four characters."""
        return self.secret_pattern.sub(lambda m: "…" + m.group()[-4:], text)

    def public_text(self, text: str) -> str:
        """An upstream message as clients and logs may see it: redacted, then shortened."""
        return self.redact(text)[:MESSAGE_LIMIT]

    def relay(self, source: Iterator, writer: StreamWriter, record: RequestLog, cancel: Cancel,
              on_success: Callable | None = None) -> Iterator:
        """Write an answer's deltas to the client; any failure becomes one terminal error event.

        on_success(text) runs with the whole answer before the client is told it is done.
        """
        texts = []
        try:
            yield writer.start()
            for item in with_heartbeats(source, self.config.ping_seconds, cancel):
                if item is PING:
                    yield writer.ping
                    continue
                if item.kind in FIRST_TOKEN_KINDS:
                    record.mark_first_token()
                if item.kind == "text" and on_success:
                    texts.append(item.value)
                yield writer.event(item)
            if on_success:
                on_success("".join(texts))
            yield writer.done()
        except GeneratorExit:
            record.outcome = "client disconnected"
            raise
        except Exception as exc:
            message = self.failure_text(exc)
            record.outcome = f"error: {message}"
            yield writer.error(message)
        finally:
            cancel.cancel()

    def failure_text(self, exc: Exception) -> str:
        """What a client may read about a failure: never a key, never a traceback."""
        if isinstance(exc, ChatError):
            return exc.message
        if isinstance(exc, UpstreamFailure):
            return self.public_text(exc.message)
        log.exception("unexpected error while streaming")
        return "internal error while streaming the answer"

    def cached_upload(self, file_id: str, owner: str) -> dict | None:
        """An upload's record, if it is still cached and was uploaded with the same token."""
        record = self.store.load_upload(file_id)
        return record if record and record.get("owner", "") == owner else None

    def cache_upload(self, file: Attachment, owner: str, ttl: float) -> str:
        file_id = "file-" + secrets.token_urlsafe(24)
        self.store.save_upload(file_id, {"mime_type": file.mime_type, "data": file.data,
                                         "filename": file.filename, "owner": owner}, ttl)
        return file_id

    def chat_history(self, chat_id: str, owner: str) -> list:
        """A stored conversation's turns; another token's chat is a 404, as if it did not exist."""
        stored = self.store.load_chat(chat_id)
        if stored is None or stored.get("owner", "") != owner or not stored.get("turns"):
            raise no_chat(chat_id)
        return stored["turns"]

    def continue_conversation(self, chat: ChatRequest, owner: str) -> None:
        """Claim the chat_id for this token (or 404) and put its stored turns first."""
        if not chat.chat_id:
            return
        stored = self.store.open_chat(chat.chat_id, owner, self.chat_ttl)
        if stored is None:
            raise no_chat(chat.chat_id)
        turns = [turn for turn in map(partial(self.stored_turn, owner=owner), stored)
                 if turn.text.strip() or turn.files]
        while turns and turns[0].role != "user":
            turns.pop(0)  # trimming may have cut a pair; upstreams want the user first
        chat.turns = turns + chat.turns
        refuse_unsendable_files(chat.provider, chat.turns)

    def stored_turn(self, stored: dict, owner: str) -> Turn:
        """A stored turn with the files that are still cached."""
        cached = [(i, self.cached_upload(i, owner)) for i in stored.get("file_ids", [])]
        return Turn(stored["role"], stored.get("content", ""),
                    tuple(attachment_of(record) for _, record in cached if record),
                    tuple(i for i, record in cached if record))

    def remember(self, chat: ChatRequest, owner: str, answer: str) -> None:
        """Append the user's turn (its files cached) and the whole answer, in one step."""
        if not chat.chat_id:
            return
        question = chat.turns[-1]
        file_ids = list(question.file_ids) + [
            self.cache_upload(file, owner, self.chat_ttl)
            for file in question.files[len(question.file_ids):]]
        user = {"role": "user", "content": question.text, **({"file_ids": file_ids} if file_ids
                                                              else {})}
        turns = [user, {"role": "assistant", "content": answer}]
        if not self.store.append_chat(chat.chat_id, owner, turns, self.config.chat_max_turns,
                                      self.chat_ttl):
            log.warning("chat %s changed hands during the answer; its turns were not stored",
                        chat.chat_id)

    @property
    def chat_ttl(self) -> float:
        return self.config.chat_ttl_hours * 3600

    def reserve(self, chat: ChatRequest) -> KeyPlan | None:
        """The keys this request may try; waits briefly for a cooling key, else 429."""
        if chat.provider == "echo":
            return None
        pool = self.pools[chat.provider]
        plan = pool.plan(chat.model)
        delay = plan.retry_at - time.time() if plan.retry_at else None
        if not plan.keys and delay is not None and delay <= self.config.key_wait_seconds:
            time.sleep(max(0.0, delay) + 0.01)
            plan = pool.plan(chat.model, plan.turn)
        if plan.keys:
            return plan
        raise self.unavailable(chat, plan)

    def unavailable(self, chat: ChatRequest, plan: KeyPlan, detail: str = "") -> ChatError:
        """The error when no key may be tried: every one invalid (503) or resting (429)."""
        if plan.all_invalid:
            return ChatError(503, f"every key in {KEY_VARIABLES[chat.provider]} was rejected as "
                                  "invalid by the upstream in the last hour" + detail)
        retry_at = plan.retry_at or time.time() + 1
        return ChatError(429, f"every {PROVIDER_NAMES[chat.provider]} key is rate-limited for "
                              f"{chat.model}; try again later", retry_at - time.time())

    def post(self, chat: ChatRequest, key: ApiKey, stream: bool) -> requests.Response:
        """Send the request to the provider with this key (in a header, never the URL)."""
        url, headers, body = ADAPTERS[chat.provider][0](chat, key, self.config, stream)
        return self.send("POST", url, headers, stream, json=body)

    def send(self, method: str, url: str, headers: dict, stream: bool,
             **body) -> requests.Response:
        """One upstream HTTP request, network errors made failures."""
        if stream:
            headers["Accept-Encoding"] = "identity"  # compressed SSE would arrive in bursts
        try:
            return self.session.request(method, url, headers=headers, stream=stream, **body,
                                        timeout=(self.config.connect_timeout,
                                                 self.config.read_timeout))
        except requests.RequestException as exc:
            raise failure_from_exception(exc) from None

    def send_native(self, chat: ChatRequest, key: ApiKey, stream: bool) -> requests.Response:
        """A Gemini REST call as the client made it, but with a pool key in the header."""
        call = chat.native
        target = "models" + (f"/{quote(call.model, safe='')}" if call.model else "") + (
            f":{call.action}" if call.action else "")
        query = f"?{urlencode(call.query)}" if call.query else ""
        headers = {"x-goog-api-key": key.secret, "Content-Type": "application/json"}
        return self.send(call.method, f"{self.config.gemini_base_url}/{target}{query}", headers,
                         stream, data=call.body or None)

    def fetch_native(self, chat: ChatRequest, key: ApiKey, cancel: Cancel) -> Response:
        """Gemini's answer to a non-streaming call, unchanged."""
        response = self.send_native(chat, key, stream=False)
        if response.status_code != 200:
            failure = classify_failure(response.status_code, parse_json(response.text),
                                       response.headers)
            failure.body = response.content
            raise failure
        return Response(response.content, content_type=response.headers.get(
            "Content-Type", "application/json; charset=UTF-8"))

    def open_native_stream(self, chat: ChatRequest, key: ApiKey, cancel: Cancel) -> Answer:
        """Gemini's stream, unchanged; an SSE stream must first show an event that is no error."""
        with upstream_stream(self.send_native(chat, key, stream=True), cancel) as response:
            if chat.native.query.get("alt") != "sse":  # the JSON-array form, relayed as it comes
                return Answer([], (Delta("bytes", chunk) for chunk in iter_body(response)),
                              response)
            events = iter_sse_data(iter_body(response))
            head = first_native_event(events)
            rest = (Delta("event", p) if kind == "data" else Delta("bytes", p.encode() + b"\n")
                    for kind, p in events)
            return Answer([head], rest, response)

    def model_list(self) -> list:
        """/v1/models: echo, the Gemini models the keys can use, the other upstream's models."""
        models = [(ECHO_MODEL, "chatbridge")]
        for provider, owner in (("gemini", "google"), ("zju", "zju")):
            if self.config.keys(provider):  # named so that they route back to their provider
                models += [(m if provider_of(m)[0] == provider else f"{provider}/{m}", owner)
                           for m in self.upstream_models(provider)]
        return [{"id": name, "object": "model", "created": 0, "owned_by": owner}
                for name, owner in dict(models).items()]

    def upstream_models(self, provider: str) -> list:
        """An upstream's model names, cached for 10 minutes; the configured default if it fails."""
        expires, names = self.models_cache.get(provider, (0.0, []))
        if expires > time.monotonic():
            return names
        chat = ChatRequest(shape="models", provider=provider, model="*", turns=[])
        lifetime = MODEL_LIST_SECONDS
        try:
            names = self.with_failover(chat, self.reserve(chat), self.fetch_models, Cancel(),
                                       RequestLog())
        except ChatError as exc:
            log.warning("could not list the %s models (%s); offering the default", provider,
                        exc.message)
            names, lifetime = [self.fallback_model(provider)], 60.0  # try again soon
        self.models_cache[provider] = (time.monotonic() + lifetime, names)
        return names

    def fallback_model(self, provider: str) -> str:
        """The model to list for a provider whose own list cannot be had."""
        if provider == "gemini":
            return self.config.gemini_model
        default = self.config.default_model
        return default if provider_of(default)[0] == "zju" else "deepseek-r1-671b"

    def fetch_models(self, chat: ChatRequest, key: ApiKey, cancel: Cancel) -> list:
        if chat.provider == "gemini":
            url, headers = f"{self.config.gemini_base_url}/models?pageSize=1000", {
                "x-goog-api-key": key.secret}
        else:
            url, headers = f"{self.config.zju_base_url}/models", {
                "Authorization": f"Bearer {key.secret}"}
        response = self.send("GET", url, headers, stream=False)
        body = parse_json(response.text)
        if response.status_code != 200 or not isinstance(body, dict):
            raise classify_failure(response.status_code, body, response.headers)
        if chat.provider == "gemini":
            return [m["name"].removeprefix("models/") for m in body.get("models") or []
                    if "generateContent" in m.get("supportedGenerationMethods", [])]
        return [m["id"] for m in body.get("data") or [] if isinstance(m.get("id"), str)]

    def open_stream(self, chat: ChatRequest, key: ApiKey, cancel: Cancel) -> Answer:
        """Open a streaming answer and read up to its first content, or raise a failure."""
        with upstream_stream(self.post(chat, key, stream=True), cancel) as response:
            rest = iter_deltas(iter_sse_data(iter_body(response)), ADAPTERS[chat.provider][1])
            note = partial(self.pools[chat.provider].note_attempt, key, chat.model,
                           new_attempt=False)
            return Answer(read_until_content(rest, chat.shape == "v1"), rest, response, note)

    def fetch_completion(self, chat: ChatRequest, key: ApiKey, cancel: Cancel) -> dict:
        """A whole (non-streaming) answer as an OpenAI chat.completion object."""
        response = self.post(chat, key, stream=False)
        text = response.content.decode("utf-8", errors="replace")
        if response.status_code != 200:
            raise classify_failure(response.status_code, parse_json(text) or text, response.headers)
        body = parse_json(text)
        if not isinstance(body, dict):
            raise UpstreamFailure("broken", "the upstream answered with something that is not JSON")
        deltas = translate_event(ADAPTERS[chat.provider][1], body)
        read_until_content(iter(deltas + [Delta("finish", "stop")]), chat.shape == "v1")
        return completion_from_deltas(deltas, chat.model) if chat.provider == "gemini" else body

    def with_failover(self, chat: ChatRequest, plan: KeyPlan, attempt: Callable,
                      cancel: Cancel, record: RequestLog) -> Any:
        """Try the planned keys in order until one gives a usable answer."""
        failures, exhausted_groups = [], set()
        for key in plan.keys:
            cancel.check()
            if key.group in exhausted_groups:
                continue  # keys of one Google project share its quota
            record.attempts += 1
            record.key = key.suffix
            try:
                answer = attempt(chat, key, cancel)
            except UpstreamFailure as failure:
                failure.message = self.public_text(failure.message)
                self.pools[chat.provider].note_attempt(key, chat.model, failure)
                log.warning("%s key %s failed (%s): %s", chat.provider, key.suffix,
                            failure.kind, failure.message)
                if not failure.failover:
                    raise self.rejected(chat, failure) from None
                if failure.kind == "rate_limit":
                    exhausted_groups.add(key.group)
                failures.append(failure)
                continue
            self.pools[chat.provider].note_attempt(key, chat.model)
            return answer
        cancel.check()
        raise self.give_up(chat, plan, failures)

    def rejected(self, chat: ChatRequest, failure: UpstreamFailure) -> ChatError:
        """The error for a request the upstream refused as the request's own fault."""
        name = PROVIDER_NAMES[chat.provider]
        message = failure.message if failure.status is None else \
            f"{name} answered with an error ({failure.status}): {failure.message}"
        body = self.redact(failure.body.decode("utf-8", "replace")).encode() if failure.body \
            else None
        return ChatError(500, message, kind="upstream_rejected", upstream_status=failure.status,
                         upstream_body=body)

    def give_up(self, chat: ChatRequest, plan: KeyPlan, failures: list) -> ChatError:
        """The error for a request whose attempts all failed."""
        name = PROVIDER_NAMES[chat.provider]
        kinds = {f.kind for f in failures}
        if kinds and kinds <= {"rate_limit", "invalid_key"}:
            detail = f" (last: {failures[-1].message})" if kinds == {"invalid_key"} else ""
            return self.unavailable(chat, self.pools[chat.provider].plan(chat.model, plan.turn),
                                    detail)
        if failures and all(f.kind == "unreachable" for f in failures):
            return ChatError(503, f"could not reach {name}")
        last = failures[-1] if failures else UpstreamFailure("server", "no key could be tried")
        if last.status is None:
            return ChatError(500, last.message)
        return ChatError(500, f"{name} answered with an error ({last.status}): {last.message}",
                         upstream_status=last.status)

    def stream_answer(self, chat: ChatRequest, plan: KeyPlan | None, cancel: Cancel,
                      record: RequestLog) -> Answer:
        """The answer to stream: from echo, or from the first key that works."""
        if chat.provider == "echo":
            return Answer([], echo_deltas(chat))
        return self.with_failover(chat, plan, self.open_stream, cancel, record)

    def complete(self, chat: ChatRequest, plan: KeyPlan | None, cancel: Cancel,
                 record: RequestLog) -> dict:
        """A whole answer as a chat.completion object."""
        if chat.provider == "echo":
            return completion_from_deltas(echo_deltas(chat), chat.model)
        return self.with_failover(chat, plan, self.fetch_completion, cancel, record)


@contextmanager
def upstream_stream(response: requests.Response, cancel: Cancel):
    """A streaming upstream response that answered 200, closed if anything fails while it is
    being opened (a status other than 200 becomes a classified failure)."""
    cancel.track(response)
    try:
        if response.status_code != 200:
            raise classify_failure(response.status_code, read_error_body(response),
                                   response.headers)
        yield response
    except BaseException:
        close_upstream(response)
        raise


def first_native_event(events: Iterator) -> Delta:
    """The first event of a passed-through Gemini stream, unless it is an error."""
    for kind, payload in events:
        event = parse_json(payload)
        if isinstance(event, list) and event:
            event = event[0]
        if isinstance(event, dict) and "error" in event:
            raise failure_from_event(event["error"])
        if kind == "data":
            return Delta("event", payload)
    raise UpstreamFailure("broken", "the upstream finished without any content")


def read_until_content(deltas: Iterator, gateway: bool = False) -> list:
    """Read deltas up to the first content; an answer with none is a failure, but for the
    gateway (as OpenAI does) one stopped by the token limit or a filter is an empty answer."""
    head = []
    for delta in deltas:
        head.append(delta)
        if delta.kind in CONTENT_KINDS:
            return head
        if gateway and delta.kind == "finish" and delta.value in ("content_filter", "length"):
            return head
        if delta.kind == "finish" and delta.value in ("content_filter", "length"):
            why = "its content filter" if delta.value == "content_filter" else "the token limit"
            raise UpstreamFailure("request", f"the answer was stopped by {why} before any text")
    raise UpstreamFailure("broken", "the upstream finished without any content")


def read_error_body(response: requests.Response) -> Any:
    """The parsed JSON of an upstream error response, read up to a limit."""
    try:
        body = b"".join(iter_limited(response, ERROR_BODY_LIMIT))
    except UpstreamFailure:
        body = b""
    return parse_json(body.decode("utf-8", errors="replace")) or body.decode(
        "utf-8", errors="replace")[:500]


def iter_limited(response: requests.Response, limit: int) -> Iterator:
    size = 0
    for chunk in iter_body(response):
        size += len(chunk)
        yield chunk
        if size >= limit:
            return


# ---------------------------------------------------------------- app and error handlers

bp = Blueprint("chatbridge", __name__)


def service() -> Service:
    return current_app.extensions["chatbridge"]


def create_app(config: Config | None = None) -> Flask:
    """Build the Flask app; tests pass their own Config."""
    config = config or load_config()
    setup_logging(config.log_language)
    app = Flask(__name__)
    app.json.ensure_ascii = False
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes * 4 // 3 + 1024 * 1024
    app.extensions["chatbridge"] = Service(config)
    CORS(app, origins=list(config.cors_origins), expose_headers=["Retry-After"])
    app.register_blueprint(bp)
    app.register_error_handler(ChatError, chat_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
    app.before_request(start_record)
    app.before_request(check_access)
    app.after_request(secure_headers)
    app.after_request(log_when_done)
    announce(config, app.extensions["chatbridge"].store)
    return app


def announce(config: Config, store: "StateStore") -> None:
    """Say once per server (not once per worker) what is configured and what is missing or open."""
    master = gunicorn_master()
    if master and not store.claim(f"announced-{master}"):
        return
    counts = {p: len(config.keys(p)) for p in PROVIDERS}
    if not any(counts.values()):
        log.warning("no API keys configured (ALL_GEMINI_API_KEYS, ZJU_API_KEY): only the "
                    "built-in 'echo' model is available")
    else:
        log.info("keys loaded: gemini=%d zju=%d; default model %s", counts["gemini"],
                 counts["zju"], config.default_model)
    if "*" in config.cors_origins:
        log.warning("CORS allows every origin; in production set CORS_ORIGINS to your "
                    "frontend's origins")
    if not config.access_tokens:
        log.warning("ACCESS_TOKENS is not set: /api is open to anyone who can reach it")
    log.info("shared state: %s", "Redis (REDIS_URL)" if config.redis_url else
             f"files in {config.temp_data_dir}")


def gunicorn_master() -> str | None:
    """Names the gunicorn master of this worker by pid and start time; None outside gunicorn."""
    if "gunicorn.arbiter" not in sys.modules:
        return None
    parent = os.getppid()
    try:  # field 22 of /proc/PID/stat; the start time tells apart masters that reuse a pid
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return f"{parent}-{started}"


OPENAI_ERROR_TYPES = {"invalid_request": "invalid_request_error", "not_found": "invalid_request_error",
                      "model_not_found": "invalid_request_error", "auth": "authentication_error",
                      "rate_limit": "rate_limit_error", "upstream_rejected": "invalid_request_error"}
GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                   404: "NOT_FOUND", 405: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT",
                   415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                   502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def api_flavor() -> str:
    """Whose error shape this request expects: the sources' (api), OpenAI's or Google's."""
    path = request.path
    if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path):
        return "google"
    if path.startswith("/v1/models") and google_auth():
        return "google"  # the model paths both APIs share answer the way the client asks
    return "openai" if path.startswith("/v1/") else "api"


def google_auth() -> bool:
    """Whether the client authenticates the Google way (x-goog-api-key, or a key= parameter)."""
    return "x-goog-api-key" in request.headers or "key" in request.args


def gateway_status(error: ChatError) -> int:
    """The status the gateways use, for the SDKs' retry logic: a model nobody serves is 404;
    a request the upstream refused is the client's error (400, or its 404), not to be retried;
    an upstream that failed every key is 502."""
    rejected = error.kind == "upstream_rejected"
    if error.kind == "model_not_found" or (rejected and error.upstream_status == 404):
        return 404
    if rejected:
        return error.upstream_status if api_flavor() == "google" and error.upstream_status \
            else 400
    return 502 if error.kind == "upstream_error" else error.status


def chat_error(error: ChatError):
    """Every error as JSON in the caller's API's shape; the one place errors are rendered."""
    g.chat_log.outcome = f"error: {error.message}"
    headers, flavor = error.headers(), api_flavor()
    status = error.status if flavor == "api" else gateway_status(error)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ChatBridge"'
    if flavor == "openai":
        code = {404: "model_not_found" if status == 404 and error.kind != "not_found" else None,
                401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        body = {"error": {"message": error.message, "param": None, "code": code,
                          "type": OPENAI_ERROR_TYPES.get(error.kind, "api_error")}}
    elif flavor == "google" and error.upstream_body:
        return Response(error.upstream_body, status, headers, content_type="application/json")
    elif flavor == "google":
        body = {"error": {"code": status, "message": error.message,
                          "status": GOOGLE_STATUSES.get(status, "UNKNOWN")}}
    else:
        body = {"error": error.message}
    return jsonify(body), status, headers


def http_error(error: HTTPException):
    """werkzeug's own errors (404, 405, 413, 415 …) as JSON, never an HTML page."""
    if error.code is None or error.code < 400:
        return error
    messages = {
        404: no_endpoint().message,
        405: f"{request.method} is not allowed on {request.path}",
        413: f"the request body is larger than the {service().config.max_upload_mb:g} MB "
             "file limit allows",
    }
    response = chat_error(ChatError(error.code, messages.get(error.code, error.description
                                                             or error.name)))
    headers = dict(error.get_headers())
    if "Allow" in headers:
        response[2]["Allow"] = headers["Allow"]
    return response


def unexpected_error(error: Exception):
    log.exception("unhandled error in %s %s", request.method, request.path)
    return chat_error(ChatError(500, "internal server error", kind="internal"))


def start_record():
    g.chat_log = RequestLog()
    g.owner = ""


def presented_token() -> str:
    """The token a client sent: as a Bearer token (OpenAI style) or x-goog-api-key / key=."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-goog-api-key", "") or request.args.get("key", "")


def matches(token: str, expected: tuple) -> bool:
    """Whether a token is one of the expected ones, compared in constant time."""
    found = False
    for candidate in expected:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def check_access():
    """With ACCESS_TOKENS set, every API route (but the admin's /api/keys) needs one of them."""
    tokens = service().config.access_tokens
    guarded = request.path.startswith(("/api/", "/v1/", "/v1beta/"))
    if not tokens or not guarded or request.path == "/api/keys" or request.method == "OPTIONS":
        return
    token = presented_token()
    if not matches(token, tokens):
        raise ChatError(401, "missing or wrong access token: send it as Authorization: "
                             "Bearer <token>")
    g.owner = fingerprint(token)


def secure_headers(response: Response) -> Response:
    """No sniffing and no referrer anywhere; the page may run only its own scripts and styles."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


def log_when_done(response: Response) -> Response:
    """Log one line per request once its body has been sent (streams included)."""
    record, method, path = g.chat_log, request.method, request.path
    level = logging.DEBUG if path == "/healthz" else logging.INFO
    response.call_on_close(lambda: log.log(level, record.line(method, path,
                                                              response.status_code)))
    return response


def stream_response(stream: Iterator, writer: StreamWriter, cancel: Cancel) -> Response:
    """A streamed answer; closing it (even before its first byte) stops the upstream work."""
    response = Response(stream, content_type=writer.content_type, headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no", **writer.headers})
    response.call_on_close(cancel.cancel)
    return response


def read_json_body() -> dict:
    """The request's JSON object body, or a clear 415/400."""
    if not request.is_json:
        raise ChatError(415, "Content-Type must be application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise ChatError(400, "the body is not valid JSON")
    if not isinstance(body, dict):
        raise ChatError(400, "the body must be a JSON object")
    return body


# ---------------------------------------------------------------- routes


def providers_status() -> dict:
    return {p: len(service().config.keys(p)) for p in PROVIDERS}


@bp.get("/")
def index():
    """The chat page for browsers; a JSON greeting for everything else."""
    if any(kind in ("text/html", "application/xhtml+xml") for kind, _ in request.accept_mimetypes):
        return render_template("index.html", default_model=service().config.default_model)
    return jsonify(message="چتبات API آماده است", service="ChatBridge",
                   providers=providers_status(), default_model=service().config.default_model)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok", providers=providers_status())


@bp.post("/api/chat")
def chat():
    """Answer any of the three shapes; the status is settled before the first byte."""
    svc = service()
    chat_request = parse_chat_request(read_json_body(), svc.config,
                                      partial(svc.cached_upload, owner=g.owner))
    svc.continue_conversation(chat_request, g.owner)
    remember = partial(svc.remember, chat_request, g.owner)
    record = note_request(chat_request)
    plan = svc.reserve(chat_request)
    cancel = Cancel()
    if chat_request.shape == "B" and not chat_request.stream:
        completion = svc.complete(chat_request, plan, cancel, record)
        remember(completion["choices"][0]["message"].get("content") or "")
        return jsonify(completion)
    if chat_request.shape == "A":
        source = lazy_answer(svc, chat_request, plan, cancel, record)
        writer = ShapeAWriter()
    else:  # B and useChat's clients get a real status when no upstream answers
        source = svc.stream_answer(chat_request, plan, cancel, record).deltas()
        writer = ChunkWriter(chat_request.model) if chat_request.shape == "B" else \
            UIMessageWriter()
    return stream_response(svc.relay(source, writer, record, cancel, remember), writer, cancel)


def lazy_answer(svc: Service, chat_request: ChatRequest, plan: KeyPlan | None, cancel: Cancel,
                record: RequestLog) -> Iterator:
    """Shape A opens the upstream inside the stream, so it can ping while failing over."""
    yield from svc.stream_answer(chat_request, plan, cancel, record).deltas()


@bp.post("/v1/chat/completions")
def chat_completions():
    """OpenAI's Chat Completions over the key pool; any OpenAI SDK's base URL can point here."""
    svc = service()
    chat_request = parse_openai_request(read_json_body(), svc.config)
    record = note_request(chat_request)
    plan, cancel = svc.reserve(chat_request), Cancel()
    if not chat_request.stream:
        return jsonify(svc.complete(chat_request, plan, cancel, record))
    answer = svc.stream_answer(chat_request, plan, cancel, record)
    writer = ChunkWriter(chat_request.model, gateway=True,
                         include_usage=chat_request.include_usage)
    return stream_response(svc.relay(answer.deltas(), writer, record, cancel), writer, cancel)


@bp.get("/v1/models")
def models():
    """The models, in OpenAI's list shape; in Google's when the client authenticates Google's
    way (the one path both APIs share)."""
    if google_auth():
        return gemini_native("")
    return jsonify(object="list", data=service().model_list())


@bp.get("/v1/models/<path:name>")
def model(name: str):
    """One model (OpenAI's models.retrieve); in Google's shape when the client asks Google's way."""
    if google_auth():
        return gemini_native(name)
    for entry in service().model_list():
        if entry["id"] == name:
            return jsonify(entry)
    raise ChatError(400, f"the model {name!r} does not exist", kind="model_not_found")


@bp.get("/v1beta/models", defaults={"target": ""})
@bp.route("/v1beta/models/<path:target>", methods=["GET", "POST"])
@bp.post("/v1/models/<path:target>")
def gemini_native(target: str):
    """Gemini's REST API passed through with the key pool (google-genai's base URL can point
    here, under v1beta or v1)."""
    svc = service()
    chat_request = parse_native_call(target, request.method, request.args, request.get_data(),
                                     svc.config)
    record = note_request(chat_request)
    plan, cancel = svc.reserve(chat_request), Cancel()
    if not chat_request.stream:
        return svc.with_failover(chat_request, plan, svc.fetch_native, cancel, record)
    answer = svc.with_failover(chat_request, plan, svc.open_native_stream, cancel, record)
    writer = GeminiWriter(sse_events=chat_request.native.query.get("alt") == "sse")
    return stream_response(svc.relay(answer.deltas(), writer, record, cancel), writer, cancel)


def note_request(chat_request: ChatRequest) -> RequestLog:
    """Put what the request asks for on its log line."""
    record = g.chat_log
    record.shape, record.provider, record.model = (chat_request.shape, chat_request.provider,
                                                   chat_request.model)
    return record


@bp.post("/api/upload")
def upload():
    """A multipart file as base64 file_data, ready to send with a chat message."""
    limit = service().config.max_upload_bytes
    file = request.files.get("file")
    if file is None:
        raise ChatError(400, "no file: send it as the multipart form field 'file'")
    if not file.filename:
        raise ChatError(400, "the file has no name: choose a file to upload")
    content = file.read(limit + 1)
    if len(content) > limit:
        raise ChatError(413, f"the file is larger than {service().config.max_upload_mb:g} MB")
    mime = file.mimetype
    if not mime or mime == "application/octet-stream":
        mime = guess_mime(file.filename)
    file = Attachment(mime, base64.b64encode(content).decode("ascii"), file.filename)
    file_id = service().cache_upload(file, g.owner, service().config.upload_ttl_minutes * 60)
    return jsonify(success=True, file_id=file_id, file_data={
        "mime_type": file.mime_type, "data": file.data, "filename": file.filename})


@bp.get("/api/chats/<chat_id>")
def chat_history(chat_id: str):
    """A stored conversation, in the shape the chat requests' `history` takes."""
    return jsonify(chat_id=chat_id, history=service().chat_history(checked_chat_id(chat_id),
                                                                   g.owner))


@bp.delete("/api/chats/<chat_id>")
def delete_chat(chat_id: str):
    service().chat_history(checked_chat_id(chat_id), g.owner)
    if not service().store.delete_chat(chat_id):
        raise no_chat(chat_id)
    return jsonify(deleted=True, chat_id=chat_id)


def checked_chat_id(chat_id: str) -> str:
    if not CHAT_ID.fullmatch(chat_id):
        raise ChatError(400, "a chat id is 16 to 64 characters of A-Z, a-z, 0-9, _ and -")
    return chat_id


@bp.get("/api/keys")
def key_status():
    """Each key's state and counters, for the admin (ADMIN_TOKEN); never the keys themselves."""
    svc = service()
    if not svc.config.admin_token:
        raise no_endpoint()
    if not matches(presented_token(), (svc.config.admin_token,)):
        raise ChatError(401, "this needs the admin token: Authorization: Bearer <ADMIN_TOKEN>")
    return jsonify(providers={p: svc.pools[p].status() for p in PROVIDERS})


# ---------------------------------------------------------------- entry point

app = create_app()

if __name__ == "__main__":
    app.run(host="0.0.0.0", port=app.extensions["chatbridge"].config.port, threaded=True)
