"""Validating the fields of client requests, shared by the client API parsers.

Every check names the field and what it must be, as a 400 (413 for a file over
MAX_UPLOAD_MB or text over MAX_TEXT_CHARS), before any upstream is contacted. Lists a client
sends are measured against their limit (MAX_TURNS, MAX_PARTS, MAX_TOOLS) before anything is
built from their items.
"""

import base64
import binascii
import mimetypes
import re
from typing import Any

from ..chat import Attachment
from ..config import MIME_TYPE, Config
from ..errors import ClientError

MODEL_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
CHAT_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
DATA_URL = re.compile(r"data:([^;,]*)(?:;[^,]*)?;base64,(.*)", re.S)


def optional(body: dict, name: str, kind, check=None, hint="") -> Any:
    """A field's value if present and valid; None if absent or null; else a 400."""
    value = body.get(name)
    if value is None:
        return None
    valid = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if not valid or (check and not check(value)):
        raise ClientError(f"'{name}' must be {hint}")
    return value


def model_field(body: dict, registry) -> tuple:
    """(provider name, model) for the request's `model` (or the default); a 400 for a
    malformed name or a provider without keys (chatbridge.upstreams.Registry.resolve)."""
    model = optional(body, "model", str, lambda v: bool(MODEL_NAME.fullmatch(v.strip())),
                     "a model name of 1 to 200 printable characters")
    return registry.resolve(model)


def temperature_field(body: dict) -> float | None:
    return optional(body, "temperature", (int, float), lambda v: 0 <= v <= 2,
                    "a number from 0 to 2")


def positive_field(body: dict, name: str) -> int | None:
    return optional(body, name, int, lambda v: v > 0, "a positive integer")


def stream_field(body: dict) -> bool:
    return bool(optional(body, "stream", bool, hint="true or false"))


def bounded(items: list, where: str, noun: str, limit: int, setting: str) -> list:
    """items, or a 400 naming the limit when the client sent more than limit of them."""
    if len(items) > limit:
        raise ClientError(f"'{where}' has {len(items)} {noun}; at most {limit} ({setting})")
    return items


def check_text(system: str | None, turns: list, config: Config) -> None:
    """A 413 when a request's text (system, turns, reasoning, tool call arguments) is longer
    than MAX_TEXT_CHARS."""
    chars = len(system or "") + sum(
        len(turn.text) + len(turn.reasoning) + sum(len(call["arguments"]) for call in turn.tool_calls)
        for turn in turns)
    if chars > config.max_text_chars:
        raise ClientError(f"the request has {chars} characters of text; at most "
                          f"{config.max_text_chars} (MAX_TEXT_CHARS)", 413)


def checked_file(mime_type: str, data: str, filename: str, where: str,
                 config: Config) -> Attachment:
    """A file whose base64 data is valid and within MAX_UPLOAD_MB."""
    if len(data) * 3 // 4 > config.max_upload_bytes + 2:
        raise ClientError(f"the file in {where} is larger than {config.max_upload_mb:g} MB", 413)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(f"the file in {where} is not valid base64") from None
    mime_type = mime_type.strip().lower() or guess_mime(filename)
    check_file_type(mime_type, where, config)
    return Attachment(mime_type, data, filename)


def check_file_type(mime_type: str, where: str, config: Config) -> None:
    """A 400 for a MIME type that is no MIME type, a 415 for one ALLOWED_FILE_TYPES leaves out."""
    if not MIME_TYPE.fullmatch(mime_type):
        raise ClientError(f"the file in {where} has no MIME type like image/png: {mime_type!r}")
    family = mime_type.split("/")[0] + "/*"
    if mime_type not in config.allowed_file_types and family not in config.allowed_file_types:
        raise ClientError(f"files of type {mime_type} are not accepted (ALLOWED_FILE_TYPES: "
                          f"{', '.join(config.allowed_file_types)})", 415)


def data_url_file(part: dict, where: str, config: Config) -> Attachment:
    """A file sent as {url: "data:...;base64,...", mediaType?, filename?} (useChat's file
    parts, OpenAI's image_url)."""
    url = part.get("url")
    match = DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if not match:
        raise ClientError(f"the file in {where} must be sent as a base64 data: URL")
    media_type = part.get("mediaType") if isinstance(part.get("mediaType"), str) else ""
    filename = part.get("filename") if isinstance(part.get("filename"), str) else ""
    return checked_file(media_type or match.group(1), match.group(2), filename, where, config)


def guess_mime(filename: str) -> str:
    """A content type from a file name, for uploads that name none."""
    return mimetypes.guess_type(filename or "")[0] or "application/octet-stream"
