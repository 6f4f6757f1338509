"""Settings: every environment variable ChatBridge reads, parsed and checked once at start.

load_config(environ) is the only reader of the environment; everything else gets the frozen
Config it returns. An invalid value stops the server at start with one message naming every
bad setting. The variables and their defaults are listed in README.md, Configuration.
"""

import hashlib
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from limits import parse_many

from .errors import ConfigError

ECHO_MODEL = "echo"
PROJECT_DIR = Path(__file__).resolve().parent.parent  # where app.py, templates/ and static/ live
NUMBER_NAMES = {int: "a whole number", float: "a number"}
MAX_JSON_DEPTH = 500  # below the nesting at which Python's json parser gives up (about 990)


def fingerprint(secret: str) -> str:
    """A stable name for a key or token that is safe to write to shared state."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ApiKey:
    """One upstream key; its secret never appears in repr, logs or files."""

    secret: str = field(repr=False)
    group: str  # keys of one Google project share a quota group
    twin: int = 0  # 1, 2, … among a provider's keys with the same last four characters; else 0

    @cached_property  # a SHA-256 each time was looked up several times per request
    def id(self) -> str:
        return fingerprint(self.secret)

    @property
    def suffix(self) -> str:
        """What logs may show of the key: its last four characters."""
        return "…" + self.secret[-4:]

    @property
    def label(self) -> str:
        """The key's name for operators (admin API and page, log lines): its last four
        characters, and its position among the keys that share them (`…abcd-2`)."""
        return self.suffix + (f"-{self.twin}" if self.twin else "")


@dataclass(frozen=True)
class Config:
    """Every setting, parsed and checked once at start (times in seconds unless named)."""

    gemini_keys: tuple = ()
    gemini_base_url: str = "https://generativelanguage.googleapis.com/v1beta"
    gemini_model: str = "gemini-2.5-flash"
    openai_compat_keys: tuple = ()  # ZJU_API_KEY: the OpenAI-compatible upstream's user-facing name is zju
    openai_compat_base_url: str = "https://chat.zju.edu.cn/api/ai/v1"
    openai_compat_max_tokens: int = 0  # ZJU_MAX_TOKENS: the most output tokens to ask; 0: any
    default_model: str = ECHO_MODEL
    host: str = "127.0.0.1"  # where `python app.py` listens; gunicorn takes --bind instead
    port: int = 5000
    cors_origins: tuple = ("*",)
    temp_data_dir: Path = PROJECT_DIR / "temp_data"
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
    upload_cache_mb: float = 200.0  # what cached uploads may take in TEMP_DATA_DIR together
    # Gemini REST methods passed through under /v1beta (besides the model list and a model)
    gemini_native_methods: tuple = ("generateContent", "streamGenerateContent", "countTokens")
    request_body_seconds: float = 30.0  # how long a request body may take to arrive
    # what files may be sent or uploaded: MIME types, `type/*` for a whole family
    allowed_file_types: tuple = ("image/*", "audio/*", "video/*", "text/*", "application/pdf",
                                 "application/json")
    max_turns: int = 2000  # what one request may hold, checked before it is parsed into turns
    max_parts: int = 500
    max_tools: int = 128
    max_text_chars: int = 4_000_000
    max_json_values: int = 200_000
    max_json_depth: int = 64
    rate_limit: str = ""  # Flask-Limiter's syntax, e.g. 30/minute;500/day; empty: no limits
    trusted_proxies: int = 0  # proxy hops in front whose X-Forwarded-For entry is believed
    # MODEL_ALIASES: (fnmatch pattern, model) pairs in the order given; the first match wins
    model_aliases: tuple = ()
    key_check_minutes: float = 30.0  # how often resting invalid keys are checked again; 0: never

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def upload_cache_bytes(self) -> int:
        return int(self.upload_cache_mb * 1024 * 1024)

    @property
    def key_secrets(self) -> list:
        """Every upstream key."""
        return [key.secret for key in self.gemini_keys + self.openai_compat_keys]

    @property
    def secrets(self) -> list:
        """Every key and token the service holds, for redaction."""
        tokens = list(self.access_tokens) + ([self.admin_token] if self.admin_token else [])
        return [key.secret for key in self.gemini_keys + self.openai_compat_keys] + tokens


MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
MIME_FAMILY = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/\*")
KEY_SEPARATORS = re.compile(r"[,\r\n]+")  # commas, or one key a line as pasted from a file
HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # what an HTTP header value can carry of a key
ALIAS_PATTERN = re.compile(r"[^\s=,]{1,200}")  # fnmatch globs allowed
ALIAS_TARGET = re.compile(r"[^\s=,*?\[\]]{1,200}")
HOST = re.compile(r"[0-9A-Za-z.:-]+")  # a name, an IPv4 or an IPv6 address (`::1`, `::`)


def parse_keys(raw: str, groups: bool = True) -> tuple:
    """Split a key list (commas or newlines, whitespace around them trimmed, empties and
    repeats dropped). With groups, `group:key` entries share a quota group (Gemini keys of
    one Google project); without, a colon is part of the key (ZJU's `APPID:secret`)."""
    keys, seen = [], set()
    for entry in KEY_SEPARATORS.split(raw):
        group, _, secret = entry.rpartition(":") if groups else ("", "", entry)
        group, secret = group.strip(), secret.strip()
        if secret and secret not in seen:
            seen.add(secret)
            keys.append(ApiKey(secret, f"group:{group}" if group else fingerprint(secret)))
    return numbered_twins(keys)


def numbered_twins(keys: list) -> tuple:
    """keys, those that share their last four characters numbered 1, 2, … in order (twin), so
    that an operator can name each one without more of the key."""
    tails = Counter(key.secret[-4:] for key in keys)
    seen = Counter()
    numbered = []
    for key in keys:
        tail = key.secret[-4:]
        if tails[tail] > 1:
            seen[tail] += 1
            key = replace(key, twin=seen[tail])
        numbered.append(key)
    return tuple(numbered)


def unsendable_keys(name: str, keys: tuple) -> list:
    """A problem for each key no HTTP header can carry, by position, never showing the key."""
    return [f"{name}: key {position} has characters an HTTP header cannot carry (a key is "
            "printable ASCII without spaces)"
            for position, key in enumerate(keys, 1) if not HEADER_SAFE.fullmatch(key.secret)]


class Settings:
    """Reads named settings from an environment, collecting every problem instead of stopping."""

    def __init__(self, environ):
        self.environ = environ
        self.problems = []

    def text(self, name: str, default: str = "") -> str:
        return self.environ.get(name, "").strip() or default

    def keys(self, name: str, groups: bool) -> tuple:
        """An upstream's keys (parse_keys, with or without `group:` prefixes), each one
        checked for what a header can carry."""
        keys = parse_keys(self.text(name), groups)
        self.problems += unsendable_keys(name, keys)
        return keys

    def items(self, name: str, default: str = "") -> tuple:
        """A list separated by commas or newlines, trimmed, without empty entries or repeats."""
        raw = self.environ.get(name, default)
        return tuple(dict.fromkeys(item.strip() for item in KEY_SEPARATORS.split(raw) if item.strip()))

    def number(self, name: str, default, minimum: float = 0.0, kind=float,
               maximum: float = math.inf):
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            value = None
        # math.isfinite raises OverflowError for a whole number beyond a float's range
        if value is None or not minimum <= value <= maximum or (
                kind is float and not math.isfinite(value)):
            bounds = f"from {minimum:g} to {maximum:g}" if maximum < math.inf else \
                f"of at least {minimum:g}"
            self.problems.append(f"{name} must be {NUMBER_NAMES[kind]} {bounds}, not {raw!r}")
            return default
        return value

    def url(self, name: str, default: str) -> str:
        value = self.text(name).rstrip("/") or default
        if not re.match(r"https?://", value):
            self.problems.append(f"{name} must start with http:// or https://, not {value!r}")
        return value

    def choice(self, name: str, choices: tuple) -> str:
        """One of choices, case-insensitive; the first when unset."""
        value = self.text(name).lower() or choices[0]
        if value not in choices:
            self.problems.append(f"{name} must be {' or '.join(map(repr, choices))}, not {value!r}")
            return choices[0]
        return value

    def host(self, name: str, default: str) -> str:
        """A host name or IP address to listen on."""
        value = self.text(name, default)
        if not HOST.fullmatch(value):
            self.problems.append(f"{name} must be a host name or an IP address, not {value!r}")
            return default
        return value

    def methods(self, name: str, default: tuple) -> tuple:
        """A list of API method names (letters only), e.g. generateContent."""
        methods = self.items(name) or default
        if not all(method.isalpha() for method in methods):
            self.problems.append(f"{name} must list method names such as generateContent, "
                                 "separated by commas")
            return default
        return methods

    def rate_limit(self, name: str) -> str:
        """Rate limits in Flask-Limiter's syntax (`30/minute;500/day`), each allowing at
        least one request; empty when unset."""
        value = self.text(name)
        try:
            valid = not value or all(limit.amount >= 1 for limit in parse_many(value))
        except ValueError:
            valid = False
        if not valid:
            self.problems.append(f"{name} must be limits such as 30/minute;500/day (at least 1 "
                                 "request per second, minute, hour, day, month or year, "
                                 f"separated by ;), not {value!r}")
            return ""
        return value

    def mime_types(self, name: str, default: tuple) -> tuple:
        """A list of MIME types such as image/png, or type/* for a family."""
        types = tuple(t.lower() for t in self.items(name)) or default
        if not all(MIME_TYPE.fullmatch(t) or MIME_FAMILY.fullmatch(t) for t in types):
            self.problems.append(f"{name} must list MIME types such as image/png or image/*, "
                                 "separated by commas")
            return default
        return types

    def aliases(self, name: str) -> tuple:
        """Model aliases `pattern=model, ...`: a pattern with fnmatch's globs (`*`, `?`,
        `[...]`) and the model it stands for, which must be a plain name; each bad entry named."""
        pairs = []
        for entry in self.items(name):
            pattern, equals, model = (part.strip() for part in entry.partition("="))
            empty_after_prefix = model.endswith("/")  # `zju/` names no model of zju's
            if not equals or not ALIAS_PATTERN.fullmatch(pattern) or \
                    not ALIAS_TARGET.fullmatch(model) or empty_after_prefix:
                self.problems.append(f"{name}: {entry!r} must be pattern=model, e.g. "
                                     "claude-sonnet-*=gemini-2.5-pro (a model is a plain name "
                                     "without * ? [ ] or spaces, and not just a prefix)")
            else:
                pairs.append((pattern, model))
        return tuple(pairs)

    def redis_url(self, name: str) -> str:
        value = self.text(name)
        if value and not re.match(r"(rediss?|unix)://", value):
            self.problems.append(f"{name} must start with redis://, rediss:// or unix://")
        return value


def load_config(environ=None) -> Config:
    """Build the Config from environment variables (os.environ unless given), naming every
    problem at once in a ConfigError."""
    settings = Settings(os.environ if environ is None else environ)
    config = Config(**upstream_settings(settings), **service_settings(settings),
                    **limit_settings(settings), **operator_settings(settings))
    if settings.problems:
        raise ConfigError("invalid settings: " + "; ".join(settings.problems))
    return config


def upstream_settings(settings: Settings) -> dict:
    """Keys, base URLs, models and timeouts of the upstreams."""
    gemini_keys = settings.keys("ALL_GEMINI_API_KEYS", groups=True)
    openai_compat_keys = settings.keys("ZJU_API_KEY", groups=False)  # ZJU's keys are APPID:secret
    gemini_model = settings.text("GEMINI_MODEL", Config.gemini_model)
    fallback_model = gemini_model if gemini_keys else "deepseek-r1-671b" if openai_compat_keys else ECHO_MODEL
    return dict(
        gemini_keys=gemini_keys,
        gemini_base_url=settings.url("GEMINI_BASE_URL", Config.gemini_base_url),
        gemini_model=gemini_model,
        openai_compat_keys=openai_compat_keys,
        openai_compat_base_url=settings.url("ZJU_BASE_URL", Config.openai_compat_base_url),
        openai_compat_max_tokens=settings.number("ZJU_MAX_TOKENS", 0, 0, int),
        default_model=settings.text("DEFAULT_MODEL", fallback_model),
        connect_timeout=settings.number("UPSTREAM_CONNECT_TIMEOUT", 10.0, 0.1),
        read_timeout=settings.number("UPSTREAM_READ_TIMEOUT", 300.0, 0.1),
        key_wait_seconds=settings.number("KEY_WAIT_SECONDS", 5.0),
        gemini_native_methods=settings.methods("GEMINI_NATIVE_METHODS",
                                               Config.gemini_native_methods),
        model_aliases=settings.aliases("MODEL_ALIASES"),
    )


def service_settings(settings: Settings) -> dict:
    """Where the service listens, who may use it, where it keeps its state, how it logs."""
    data_dir = settings.text("TEMP_DATA_DIR")
    return dict(
        host=settings.host("HOST", Config.host),
        port=settings.number("PORT", 5000, 1, int, 65535),
        cors_origins=settings.items("CORS_ORIGINS", "*") or ("*",),
        temp_data_dir=Path(data_dir) if data_dir else Config.temp_data_dir,
        ping_seconds=settings.number("SSE_PING_SECONDS", 15.0, 0.05),
        log_language=settings.choice("LOG_LANGUAGE", ("en", "fa")),
        redis_url=settings.redis_url("REDIS_URL"),
        access_tokens=settings.items("ACCESS_TOKENS"),
        admin_token=settings.text("ADMIN_TOKEN"),
        chat_max_turns=settings.number("CHAT_MAX_TURNS", 50, 2, int),
        chat_ttl_hours=settings.number("CHAT_TTL_HOURS", 72.0, 0.001),
        upload_ttl_minutes=settings.number("UPLOAD_TTL_MINUTES", 60.0, 0.001),
        trusted_proxies=settings.number("TRUSTED_PROXIES", 0, 0, int),
    )


def limit_settings(settings: Settings) -> dict:
    """What one client and one request may use."""
    return dict(
        max_upload_mb=settings.number("MAX_UPLOAD_MB", 20.0, 0.001),
        upload_cache_mb=settings.number("UPLOAD_CACHE_MB", Config.upload_cache_mb, 0.001),
        request_body_seconds=settings.number("REQUEST_BODY_SECONDS", 30.0, 0.1),
        allowed_file_types=settings.mime_types("ALLOWED_FILE_TYPES", Config.allowed_file_types),
        max_turns=settings.number("MAX_TURNS", Config.max_turns, 1, int),
        max_parts=settings.number("MAX_PARTS", Config.max_parts, 1, int),
        max_tools=settings.number("MAX_TOOLS", Config.max_tools, 1, int),
        max_text_chars=settings.number("MAX_TEXT_CHARS", Config.max_text_chars, 1, int),
        max_json_values=settings.number("MAX_JSON_VALUES", Config.max_json_values, 1, int),
        max_json_depth=settings.number("MAX_JSON_DEPTH", Config.max_json_depth, 8, int,
                                       MAX_JSON_DEPTH),
        rate_limit=settings.rate_limit("RATE_LIMIT"),
    )


def operator_settings(settings: Settings) -> dict:
    """The operator's view: key health checks (issue 12)."""
    return dict(
        key_check_minutes=settings.number("KEY_CHECK_MINUTES", Config.key_check_minutes),
    )
