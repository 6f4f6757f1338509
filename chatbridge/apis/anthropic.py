"""Anthropic's Messages API under /v1 (POST /v1/messages, POST /v1/messages/count_tokens), for
the official `anthropic` SDKs and Claude Code (ANTHROPIC_BASE_URL), over every upstream.

Reference: https://docs.anthropic.com/en/api/messages and .../messages-streaming.

Rules:
- The client's `x-api-key` or `Authorization: Bearer` is its ChatBridge access token
  (chatbridge/auth.py); `anthropic-version`, `anthropic-beta` and `?beta=true` are accepted.
  Fields this API does not know, or that mean nothing upstream (`metadata`, `cache_control`,
  `context_management`, `output_config`, `service_tier`, `top_k`), are ignored, not refused:
  clients add new ones often.
- Server tools the upstream cannot run (`web_search_…`, `bash_…`, any `type` but `custom`) are
  left out and logged; client tools become function tools.
- Files come as base64 sources, or as `url` sources that the upstream fetches itself (Gemini's
  file_data, OpenAI's image_url): ChatBridge never fetches a client's URL.
- Requests are parsed in anthropic_request.py.
- Gemini's thought signature rides in a `thinking` block's `signature`, just before the
  `tool_use` block of the call it belongs to; sent back, a thinking block's signature goes
  onto the next `tool_use` of the same message (as /v1 carries it on a tool call).
- `thinking`: `enabled` asks for the model's thoughts with `budget_tokens` as Gemini's
  thinking budget; `disabled`, or `display: omitted`, does not ask for them (the budget
  still holds); `adaptive` leaves it to the model. `max_tokens` is lowered by each provider
  to what its model allows.
- Errors have Anthropic's shape {"type": "error", "error": {"type", "message"},
  "request_id"} and its statuses: 400 invalid_request_error, 401 authentication_error,
  403 permission_error, 404 not_found_error, 413 request_too_large, 429 rate_limit_error
  (with retry-after), 500 api_error, 529 overloaded_error (an upstream that failed with every
  key). After the stream began, a failure is one `error` event of the same types.
"""

import json
import re
import uuid

from flask import Blueprint, g, jsonify

from ..auth import require_access_token
from ..chat import Delta, ToolCallTracker, parse_strict_json
from ..errors import ChatBridgeError, ClientError, ModelNotFound, NoKeyAvailable, Unauthorized, UpstreamError
from ..logs import log
from ..relay import Cancel
from ..service import current_service
from ..sse import StreamWriter
from ..upstreams.base import estimate_tokens
from .anthropic_request import parse_request
from .common import ANY_METHOD, install_error_handler, note_request, read_json_body, stream_response, unknown_url

bp = Blueprint("anthropic", __name__)
# Gemini's and OpenAI-compatible servers' words for a prompt over the model's context window
CONTEXT_TOO_LONG = re.compile(
    r"input token count \(?(?P<used>\d+)\)? exceeds the maximum number of tokens allowed "
    r"\(?(?P<limit>\d+)\)?|maximum context length is (?P<limit2>\d+) tokens.{0,80}?"
    r"(?P<used2>\d+) tokens", re.I | re.S)


@bp.post("/v1/messages")
def messages():
    """Anthropic's Messages API over the key pool: a message object, or its event stream."""
    svc = current_service()
    body = read_json_body()
    chat = parse_request(body, svc.config, svc.providers)
    record = note_request(chat)
    plan, cancel = svc.reserve(chat), Cancel()
    model, input_tokens = body.get("model") or chat.model, estimate_tokens(chat)
    if not chat.stream:
        answer = svc.complete(chat, plan, cancel, record)
        return jsonify(message_of(answer.deltas, model, input_tokens))
    answer = svc.stream_answer(chat, plan, cancel, record)
    writer = MessageWriter(model, input_tokens)
    return stream_response(svc.relay(writer.watch(answer.deltas()), writer, record, cancel),
                           writer, cancel)


@bp.post("/v1/messages/count_tokens")
def count_tokens():
    """{"input_tokens": n}: Gemini's own count for Gemini models, an estimate for others."""
    svc = current_service()
    chat = parse_request(read_json_body(), svc.config, svc.providers, counting=True)
    return jsonify(input_tokens=svc.count_tokens(chat, note_request(chat)))


@bp.route("/v1/messages", methods=["GET", "PUT", "PATCH", "DELETE"])
@bp.route("/v1/messages/count_tokens", methods=["GET", "PUT", "PATCH", "DELETE"])
@bp.route("/v1/messages/<path:rest>", methods=list(ANY_METHOD))
def unknown(rest: str = ""):
    """Another method or URL under /v1/messages: a 405 (or 404) in Anthropic's shape, not in
    OpenAI's, which /v1's catch-all gave it (found by trying GET /v1/messages)."""
    raise unknown_url()


# ---------------------------------------------------------------- errors

CLIENT_ERROR_TYPES = {401: "authentication_error", 403: "permission_error",
                      404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error"}


def error_status(error: Exception) -> tuple:
    """(HTTP status, Anthropic error type) of one of our errors."""
    if isinstance(error, ModelNotFound):
        return 404, "not_found_error"
    if isinstance(error, (ClientError, Unauthorized)):
        return error.status, CLIENT_ERROR_TYPES.get(error.status, "invalid_request_error")
    if isinstance(error, NoKeyAvailable):
        return (429, "rate_limit_error") if error.status == 429 else (error.status, "api_error")
    if isinstance(error, UpstreamError):
        if error.kind == "rejected":
            return (404, "not_found_error") if error.upstream_status == 404 else \
                (400, "invalid_request_error")
        if error.kind == "rate_limit":
            return 429, "rate_limit_error"
        if error.kind == "server":
            return 529, "overloaded_error"
        return error.status, "api_error"
    return 500, "api_error"


def render_error(error: ChatBridgeError) -> tuple:
    """An error as Anthropic's API writes it."""
    status, kind = error_status(error)
    return {"type": "error", "error": {"type": kind, "message": public_message(error)},
            "request_id": g.chat_log.request_id}, status


def public_message(error: ChatBridgeError) -> str:
    """The error's message; an upstream's "context too long" in Anthropic's words ("prompt is
    too long: N tokens > M maximum"), which Claude Code reads to compact the conversation."""
    found = CONTEXT_TOO_LONG.search(error.message) if isinstance(error, UpstreamError) else None
    if not found:
        return error.message
    used, limit = found["used"] or found["used2"], found["limit"] or found["limit2"]
    return f"prompt is too long: {used} tokens > {limit} maximum ({error.message})"


install_error_handler(bp, render_error)
bp.before_request(require_access_token)


# ---------------------------------------------------------------- answers

STOP_REASONS = {"length": "max_tokens", "content_filter": "refusal", "tool_calls": "tool_use"}
EMPTY_BLOCKS = {"text": {"type": "text", "text": ""},
                "thinking": {"type": "thinking", "thinking": "", "signature": ""}}


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def stop_reason(finish: str | None, called_tools: bool) -> str:
    """A neutral finish reason as Anthropic's stop_reason: an answer that called tools and
    stopped is tool_use; a stop sequence cannot be told from a plain stop upstream."""
    if called_tools and finish in (None, "stop", "other", "tool_calls"):
        return "tool_use"
    return STOP_REASONS.get(finish, "end_turn")


def usage_of(usage: dict | None, input_tokens: int) -> dict:
    """OpenAI's usage (the neutral one) in Anthropic's terms; the estimate until it is known."""
    usage = usage or {}
    return {"input_tokens": usage.get("prompt_tokens", input_tokens),
            "output_tokens": usage.get("completion_tokens", 0),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


class Blocks:
    """Neutral deltas as Anthropic content blocks, told as the content_block_start, _delta
    and _stop events that build them (streamed as they are, or applied into a message).

    A block is open until content of another kind arrives. A tool call's thought signature
    ends the open thinking block (or an empty one made for it) as its signature_delta.
    """

    def __init__(self):
        self.count, self.open, self.open_call = 0, None, None
        self.calls = ToolCallTracker()
        self.usage, self.finish = None, None

    def feed(self, delta: Delta) -> list:
        if delta.kind == "text":
            return self.switch("text") + [self.delta(type="text_delta", text=delta.value)]
        if delta.kind == "reasoning":
            return self.switch("thinking") + [self.delta(type="thinking_delta",
                                                         thinking=delta.value)]
        if delta.kind == "tool_call":
            return self.tool_call(delta.value)
        if delta.kind == "usage":
            self.usage = delta.value
        elif delta.kind == "finish":
            self.finish = delta.value
        return []

    def switch(self, kind: str, block: dict | None = None) -> list:
        """Events that close the open block and open one of kind (unless it is open)."""
        if self.open == kind and block is None:
            return []
        events = self.close()
        self.open, self.count = kind, self.count + 1
        return events + [{"type": "content_block_start", "index": self.count - 1,
                          "content_block": block or dict(EMPTY_BLOCKS[kind])}]

    def close(self) -> list:
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.count - 1}]

    def delta(self, **payload) -> dict:
        return {"type": "content_block_delta", "index": self.count - 1, "delta": payload}

    def tool_call(self, call: dict) -> list:
        position, new = self.calls.place(call)
        events = []
        if new:
            if call.get("signature"):
                events += self.switch("thinking") + [self.delta(type="signature_delta",
                                                                signature=call["signature"])]
            events += self.switch("tool_use", {"type": "tool_use", "name": call["name"] or "",
                                               "id": call["id"] or "toolu_" + uuid.uuid4().hex[:24],
                                               "input": {}})
            self.open_call = position
        elif position != self.open_call or self.open != "tool_use":
            # Anthropic's blocks cannot interleave; upstreams stream one call after another
            log.warning("dropped a piece of tool call %d that came after another block", position)
            return events
        if call["arguments"]:
            events.append(self.delta(type="input_json_delta", partial_json=call["arguments"]))
        return events

    @property
    def stop_reason(self) -> str:
        return stop_reason(self.finish, bool(self.calls))


def sse_event(payload: dict) -> bytes:
    """One `event:` + `data:` pair, as Anthropic streams them."""
    return b"event: %s\ndata: %s\n\n" % (payload["type"].encode(),
                                        json.dumps(payload, ensure_ascii=False).encode())


def new_message(model: str, input_tokens: int) -> dict:
    return {"id": message_id(), "type": "message", "role": "assistant", "content": [],
            "model": model, "stop_reason": None, "stop_sequence": None,
            "usage": usage_of(None, input_tokens)}


class MessageWriter(StreamWriter):
    """Anthropic's event stream: message_start, content blocks, message_delta (stop_reason,
    usage), message_stop; `ping` events while the model is silent; an `error` event for a
    failure after the stream began, typed like the error responses."""

    ping = sse_event({"type": "ping"})

    def __init__(self, model: str, input_tokens: int):
        self.message, self.input_tokens = new_message(model, input_tokens), input_tokens
        self.blocks, self.failure = Blocks(), None

    def watch(self, deltas):
        """The deltas, remembering the failure that ends them, for the error event's type."""
        try:
            yield from deltas
        except Exception as exc:
            self.failure = exc
            raise

    def start(self) -> bytes:
        return sse_event({"type": "message_start", "message": self.message})

    def event(self, delta: Delta) -> bytes:
        return b"".join(map(sse_event, self.blocks.feed(delta)))

    def done(self) -> bytes:
        usage = usage_of(self.blocks.usage, self.input_tokens)
        events = self.blocks.close() + [
            {"type": "message_delta", "delta": {"stop_reason": self.blocks.stop_reason,
                                                "stop_sequence": None}, "usage": usage},
            {"type": "message_stop"}]
        return b"".join(map(sse_event, events))

    def error(self, message: str) -> bytes:
        kind = error_status(self.failure)[1] if self.failure is not None else "api_error"
        return sse_event({"type": "error", "error": {"type": kind, "message": message}})


def message_of(deltas: list, model: str, input_tokens: int) -> dict:
    """A whole answer as Anthropic's message object, built from the same block events."""
    blocks, content, arguments = Blocks(), [], {}
    events = [event for delta in deltas for event in blocks.feed(delta)] + blocks.close()
    for event in events:
        index = event["index"]
        if event["type"] == "content_block_start":
            content.append(dict(event["content_block"]))
        elif event["type"] == "content_block_stop" and content[index]["type"] == "tool_use":
            parsed = parse_strict_json(arguments.get(index, "")) if index in arguments else {}
            content[index]["input"] = parsed if isinstance(parsed, dict) else {}
        elif event["type"] == "content_block_delta":
            apply_delta(content[index], event["delta"], arguments, index)
    message = new_message(model, input_tokens)
    message.update(content=content, stop_reason=blocks.stop_reason,
                   usage=usage_of(blocks.usage, input_tokens))
    return message


def apply_delta(block: dict, delta: dict, arguments: dict, index: int) -> None:
    """Add one content_block_delta to its block."""
    kind = delta["type"]
    if kind == "text_delta":
        block["text"] += delta["text"]
    elif kind == "thinking_delta":
        block["thinking"] += delta["thinking"]
    elif kind == "signature_delta":
        block["signature"] = delta["signature"]
    else:
        arguments[index] = arguments.get(index, "") + delta["partial_json"]
