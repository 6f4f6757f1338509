"""Log lines: one per request, one record per line, level names in English or Persian.

Keys and tokens reach a log line only through chatbridge.redaction; control characters in a
message (a client's model name, an upstream's error text) are escaped, so nobody can forge
log lines. The development server's access log (the `werkzeug` logger) masks `key=` values
and every configured secret (redact_access_log), since a Google-style client puts its access
token in the URL. The development server logs each request once, as gunicorn does: with
ChatBridge's own line (DevRequestHandler drops werkzeug's), and werkzeug's other lines (its
banner, its errors) lose the colour codes it adds for a terminal and their line breaks.
"""

import logging
import re
import sys
import time
from dataclasses import dataclass, field

from werkzeug.serving import WSGIRequestHandler

log = logging.getLogger("chatbridge")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# a `key` query parameter, its name percent-encoded or not, and its value up to the next one
KEY_PARAMETER = re.compile(r"([?&;](?:k|%6b)(?:e|%65)(?:y|%79)=)([^&;#\s\"]*)", re.I)
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug's colours, e.g. \x1b[1m\x1b[31m
LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class LineFormatter(logging.Formatter):
    """One record, one line: control characters in the message are written as \\xNN."""

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
    """Send the service's log lines to stderr, with level names in English ("en") or Persian
    ("fa"); every other logger's records that reach the root (werkzeug's, the libraries') go
    through the same escaping formatter, so none can forge a line either."""
    log.handlers[:] = [line_handler(language)]
    log.setLevel(logging.INFO)
    log.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "chatbridge", False)]
    root.addHandler(line_handler(language))


def line_handler(language: str) -> logging.Handler:
    style = PersianLevelFormatter if language == "fa" else LineFormatter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(style("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.chatbridge = True  # ours, replaced when the app is built again
    return handler


class AccessLogFilter(logging.Filter):
    """Masks `key=` values and configured secrets in a record's message, then lets it pass."""

    def __init__(self, redactor):
        super().__init__()
        self.redactor = redactor  # a chatbridge.redaction.Redactor

    def filter(self, record):
        message = KEY_PARAMETER.sub(lambda m: m.group(1) + mask(m.group(2)), record.getMessage())
        # werkzeug styles its lines for a terminal, and its banner is two lines in one record:
        # both would reach the log as escaped text (\x1b[31m, \x0a)
        message = LINE_BREAKS.sub(" ", ANSI_STYLE.sub("", message)).strip()
        record.msg, record.args = self.redactor.redact(message), None
        return True


class DevRequestHandler(WSGIRequestHandler):
    """The development server's request handler (`python app.py`), without werkzeug's access
    line: ChatBridge logs each request once itself, with its id (chatbridge/web.py)."""

    def log_request(self, code="-", size="-") -> None:
        pass


def mask(value: str) -> str:
    """A query value cut down to its last four characters, or to nothing when it is short."""
    return "…" + value[-4:] if len(value) > 8 else "…"


def redact_access_log(redactor) -> None:
    """Mask tokens in every line of werkzeug's development-server access log."""
    logging.getLogger("werkzeug").addFilter(AccessLogFilter(redactor))


@dataclass
class RequestLog:
    """What the one log line per request reports; filled in as the request goes.

    shape names the request's API: A (`message`) and B (`user_content`) are the two source
    shapes of /api/chat, ui is useChat's, v1 is OpenAI's chat completions, native is Gemini's
    own API, models a model list.
    """

    client: str = "-"
    request_id: str = "-"
    shape: str = "-"
    provider: str = "-"
    model: str = "-"
    key: str = "-"
    key_id: str | None = None  # the key's fingerprint, for per-key usage and metrics
    usage: dict | None = None  # the upstream's usage of the answer (OpenAI's shape), if it said
    error_status: int | None = None  # the status of an error that ended a stream after its start
    attempts: int = 0
    outcome: str = "ok"
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()

    def line(self, method: str, path: str, status: int) -> str:
        ttft = f"{self.first_token - self.started:.3f}s" if self.first_token else "-"
        return (f"{self.client} {method} {path} {status} shape={self.shape} "
                f"provider={self.provider} model={self.model} key={self.key} "
                f"attempts={self.attempts} id={self.request_id} ttft={ttft} "
                f"duration={time.monotonic() - self.started:.3f}s outcome={self.outcome}")
