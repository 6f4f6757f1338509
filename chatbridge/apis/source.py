"""The two source backends' API under /api, which their frontends keep using byte for byte.

POST /api/chat takes three request shapes, told apart by their fields:
- A, `message` (the Persian Gemini guide's): always streams `{"text"}` and `{"reasoning"}`
  events, then `{"done": true}` or `{"error"}`; JSON unescaped. It opens the upstream inside
  the stream, so it pings while failing over.
- B, `user_content` (the ZJU bridge's): an OpenAI chat.completion, or with `stream: true`
  chat.completion.chunk events without `[DONE]`.
- `messages` (useChat's UI messages): the AI SDK stream (chatbridge/apis/ui_stream.py).
Both sources' settings apply where a request names none: temperature 0.7 and 4096 tokens
for upstreams that take defaults from the caller. Also here: /api/upload (multipart to
base64 file_data and a file_id) and /api/chats/<chat_id> (a stored conversation).

Errors are `{"error": "<what is wrong>"}` with the sources' statuses: 400, 401, 404, 413,
415, 429 with Retry-After, 500 (the upstream answered with an error), 503 (unreachable).
"""

import base64
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from flask import Blueprint, g, jsonify, request

from ..auth import require_access_token
from ..chat import TEXT_KINDS, Attachment, ChatRequest, Delta, Turn
from ..config import Config
from ..conversations import attachment_of
from ..errors import ChatBridgeError, ClientError, NotFound
from ..keys import KeyPlan
from ..logs import RequestLog
from ..relay import Cancel, opening
from ..service import Service, current_service
from ..sse import StreamWriter, sse
from . import ui_stream
from .common import install_error_handler, note_request, read_json_body, stream_response
from .fields import (
    CHAT_ID,
    check_file_type,
    bounded,
    check_text,
    checked_file,
    guess_mime,
    model_field,
    optional,
    positive_field,
    stream_field,
    temperature_field,
)
from .openai_chat import ChunkWriter, completion_of

bp = Blueprint("source", __name__)
SOURCE_DEFAULTS = {"temperature": 0.7, "max_tokens": 4096}  # the Persian source's values


@bp.post("/api/chat")
def chat():
    """Answer any of the three shapes; the status is settled before the first byte."""
    svc = current_service()
    body = read_json_body()
    g.chat_log.shape = body_shape(body) or "-"  # a refused request is counted under its API too
    chat = parse_request(body, svc.config, svc.providers,
                         partial(svc.conversations.cached_upload, owner=g.owner))
    svc.resume(chat, g.owner)
    remember = partial(svc.conversations.remember, chat, g.owner)
    record = note_request(chat)
    plan, cancel = svc.reserve(chat), Cancel()
    if chat.shape == "B" and not chat.stream:
        answer = svc.complete(chat, plan, cancel, record)
        completion = completion_of(answer, chat.model)
        if answer.complete:
            remember(completion["choices"][0]["message"].get("content") or "")
        return jsonify(completion)
    if chat.shape == "A":
        source = lazy_answer(svc, chat, plan, cancel, record)
        writer = ShapeAWriter()
    else:  # B and useChat's clients get a real status when no upstream answers
        source = svc.stream_answer(chat, plan, cancel, record).deltas()
        writer = ChunkWriter(chat.model) if chat.shape == "B" else ui_stream.UIMessageWriter()
    return stream_response(svc.relay(source, writer, record, cancel, remember), writer, cancel)


def lazy_answer(svc: Service, chat: ChatRequest, plan: KeyPlan | None, cancel: Cancel,
                record: RequestLog) -> Iterator:
    """Shape A opens the upstream inside the stream, so it can ping while failing over."""
    answer = yield from opening(lambda: svc.stream_answer(chat, plan, cancel, record), cancel,
                                svc.config.ping_seconds)
    yield from answer.deltas()


@bp.post("/api/upload")
def upload():
    """A multipart file as base64 file_data, ready to send with a chat message, and a file_id."""
    svc = current_service()
    limit = svc.config.max_upload_bytes
    file = request.files.get("file")
    if file is None:
        raise ClientError("no file: send it as the multipart form field 'file'")
    if not file.filename:
        raise ClientError("the file has no name: choose a file to upload")
    content = file.read(limit + 1)
    if len(content) > limit:
        raise ClientError(f"the file is larger than {svc.config.max_upload_mb:g} MB", 413)
    mime = file.mimetype
    if not mime or mime == "application/octet-stream":
        mime = guess_mime(file.filename)
    check_file_type(mime.lower(), "the upload", svc.config)
    file = Attachment(mime, base64.b64encode(content).decode("ascii"), file.filename)
    file_id = svc.conversations.cache_upload(file, g.owner)
    return jsonify(success=True, file_id=file_id, file_data={
        "mime_type": file.mime_type, "data": file.data, "filename": file.filename})


@bp.get("/api/chats/<chat_id>")
def chat_history(chat_id: str):
    """A stored conversation, in the shape the chat requests' `history` takes."""
    history = current_service().conversations.history(checked_chat_id(chat_id), g.owner)
    return jsonify(chat_id=chat_id, history=history)


@bp.delete("/api/chats/<chat_id>")
def delete_chat(chat_id: str):
    current_service().conversations.delete(checked_chat_id(chat_id), g.owner)
    return jsonify(deleted=True, chat_id=chat_id)


def checked_chat_id(chat_id: str) -> str:
    if not CHAT_ID.fullmatch(chat_id):
        raise ClientError("a chat id is 16 to 64 characters of A-Z, a-z, 0-9, _ and -")
    return chat_id


def render_error(error: ChatBridgeError) -> tuple:
    """An error as both sources write it: {"error": message}."""
    return {"error": error.message}, error.status


install_error_handler(bp, render_error)
bp.before_request(require_access_token)


# ---------------------------------------------------------------- requests


def body_shape(body: dict) -> str | None:
    """Which of the three shapes a /api/chat body is: ui (`messages`), B (`user_content`), A
    (`message`), or None."""
    if "messages" in body:
        return "ui"
    if "user_content" in body or "message" in body:
        return "B" if "user_content" in body else "A"
    return None


def parse_request(body: dict, config: Config, registry, uploads: Callable) -> ChatRequest:
    """Validate a /api/chat body of any of its three shapes into a ChatRequest.

    uploads(file_id) returns a cached upload's record or None.
    """
    shape = body_shape(body)
    if shape == "ui":
        system, turns = ui_stream.parse_messages(body["messages"], config)
    elif shape in ("A", "B"):
        system, turns = parse_source_turns(body, shape, config, uploads)
    else:
        raise ClientError("the body needs 'message' (streaming chat), 'user_content' "
                          "(OpenAI-style chat) or 'messages' (AI SDK useChat)")
    check_text(system, turns, config)
    provider, model = model_field(body, registry)
    registry.check_files(provider, turns)
    return ChatRequest(
        shape=shape, provider=provider, model=model, turns=turns, system=system,
        temperature=temperature_field(body),
        max_tokens=positive_field(body, "max_tokens"),
        stream=shape != "B" or stream_field(body),
        chat_id=optional(body, "chat_id", str, lambda v: bool(CHAT_ID.fullmatch(v)),
                         "16 to 64 characters of A-Z, a-z, 0-9, _ and -"),
        default_settings=SOURCE_DEFAULTS,
    )


def parse_source_turns(body: dict, shape: str, config: Config, uploads: Callable) -> tuple:
    """(system, turns) of shape A (`message`) or B (`user_content`): the history, then the
    message with its files (file_data and a cached file_id)."""
    field_name = "user_content" if shape == "B" else "message"
    message = optional(body, field_name, str, hint="a string") or ""
    cached, file_ids = parse_file_id(body, uploads)
    files = parse_file_data(body.get("file_data"), config) + cached
    if not message.strip() and not files:
        raise ClientError(f"'{field_name}' is empty: send a message or a file")
    system = optional(body, "system_content", str, hint="a string") or None
    history = parse_history(body.get("history"), config)
    return system, history + [Turn("user", message, files, file_ids)]


def parse_history(raw: Any, config: Config) -> list:
    """Earlier turns from [{"role": "user"|"assistant", "content": str}], at most MAX_TURNS."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ClientError("'history' must be a list of {role, content} objects")
    turns = []
    for index, turn in enumerate(bounded(raw, "history", "turns", config.max_turns, "MAX_TURNS")):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        role = "assistant" if role == "model" else role
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise ClientError(f"'history[{index}]' must have role 'user' or 'assistant' "
                              "and string content")
        if content.strip():  # upstreams refuse empty turns
            turns.append(Turn(role, content))
    return turns


def parse_file_data(raw: Any, config: Config) -> tuple:
    """The files of a file_data object {mime_type, data (base64), filename?}, if any."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), str) \
            or not isinstance(raw.get("mime_type"), str):
        raise ClientError("'file_data' must be an object with string 'mime_type' and 'data' "
                          "(base64), as /api/upload returns it")
    data = raw["data"].strip()
    if data.startswith("data:") and ";base64," in data:
        data = data.split(";base64,", 1)[1]
    filename = raw.get("filename") if isinstance(raw.get("filename"), str) else ""
    return (checked_file(raw["mime_type"], data, filename, "'file_data'", config),)


def parse_file_id(body: dict, uploads: Callable) -> tuple:
    """The cached upload a file_id names, as (files, file_ids); a 404 when it has expired."""
    file_id = optional(body, "file_id", str, lambda v: bool(CHAT_ID.fullmatch(v)),
                       "an id that /api/upload returned")
    if file_id is None:
        return (), ()
    record = uploads(file_id)
    if record is None:
        raise NotFound(f"unknown or expired file_id {file_id!r}: upload the file again")
    return (attachment_of(record),), (file_id,)


class ShapeAWriter(StreamWriter):
    """The Persian source's stream: {"text"}, {"reasoning"}, then {"done"} or {"error"}. The
    terminal event names how the answer ended when that was not a plain stop,
    {"done": true, "finish_reason": "length"}; the source's frontends read only `done`."""

    def __init__(self):
        self.finish = "stop"

    def event(self, delta: Delta) -> bytes:
        if delta.kind in TEXT_KINDS:
            return sse({delta.kind: delta.value})
        if delta.kind == "finish":
            self.finish = str(delta.value)
        return b""

    def done(self) -> bytes:
        return sse({"done": True} if self.finish == "stop" else {"done": True, "finish_reason": self.finish})
