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
import mimetypes
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, g, jsonify

from ..auth import require_access_token
from ..chat import Attachment, ChatRequest, Delta, ToolCallTracker, Turn, parse_json
from ..config import Config
from ..errors import ChatBridgeError, ClientError, ModelNotFound, NoKeyAvailable, Unauthorized, UpstreamError
from ..logs import log
from ..relay import Cancel
from ..service import current_service
from ..sse import StreamWriter
from ..upstreams.base import estimate_tokens
from .common import install_error_handler, note_request, read_json_body, stream_response
from .fields import (
    bounded,
    check_file_type,
    check_text,
    checked_file,
    model_field,
    optional,
    positive_field,
    stream_field,
)

bp = Blueprint("anthropic", __name__)
# What Claude Code puts first in its system prompt: metadata for Anthropic's billing, not an
# instruction; it changes with every version, so it would only defeat an upstream's caching.
BILLING_HEADER = "x-anthropic-billing-header:"
WEB_URL = re.compile(r"https?://[^\s/?#]+[^\s]{0,2000}")
# Gemini's and OpenAI-compatible servers' words for a prompt over the model's context window
CONTEXT_TOO_LONG = re.compile(
    r"input token count \(?(?P<used>\d+)\)? exceeds the maximum number of tokens allowed "
    r"\(?(?P<limit>\d+)\)?|maximum context length is (?P<limit2>\d+) tokens.{0,80}?"
    r"(?P<used2>\d+) tokens", re.I | re.S)
IGNORED_BLOCKS = {"redacted_thinking", "server_tool_use", "web_search_tool_result",
                  "web_fetch_tool_result", "code_execution_tool_result", "mcp_tool_use",
                  "mcp_tool_result", "container_upload", "tool_reference"}


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


# ---------------------------------------------------------------- requests


def parse_request(body: dict, config: Config, registry, counting: bool = False) -> ChatRequest:
    """Validate a Messages (or count_tokens) request into a ChatRequest (400 naming the field)."""
    system, turns = parse_messages(body.get("messages"), config)
    system = "\n\n".join(filter(None, [system_text(body.get("system")), system])) or None
    check_text(system, turns, config)
    provider, model = model_field(body, registry)
    registry.check_files(provider, turns)
    max_tokens = None if counting else positive_field(body, "max_tokens")
    if not counting and max_tokens is None:
        raise ClientError("'max_tokens' is required: a positive integer")
    stop = optional(body, "stop_sequences", list, lambda v: all(isinstance(s, str) for s in v),
                    "a list of strings")
    tools = parse_tools(body.get("tools"), config)
    choice = parse_tool_choice(body.get("tool_choice")) if tools else None
    thinking, budget = parse_thinking(body.get("thinking"))
    settings = {"max_tokens": max_tokens, "stop": stop or None,
                "temperature": optional(body, "temperature", (int, float), lambda v: 0 <= v <= 1,
                                        "a number from 0 to 1"),
                "top_p": optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1,
                                  "a number from 0 to 1")}
    return ChatRequest(
        shape="anthropic", provider=provider, model=model, turns=turns, system=system,
        stream=stream_field(body), tools=tools, tool_choice=choice and choice[0],
        thinking=thinking, thinking_budget=budget, include_usage=True, empty_answers=True,
        passthrough=openai_fields(settings, tools, choice), **settings)


def openai_fields(settings: dict, tools: list | None, choice: tuple | None) -> dict:
    """The request's settings in Chat Completions terms, for the OpenAI-compatible upstream."""
    fields = {**settings, "tools": tools, "tool_choice": choice and choice[0]}
    if choice and choice[1]:
        fields["parallel_tool_calls"] = False
    return {name: value for name, value in fields.items() if value is not None}


def system_text(raw: Any) -> str:
    """The `system` field: a string or text blocks (cache_control ignored)."""
    if raw is None or isinstance(raw, str):
        return raw or ""
    if not isinstance(raw, list) or not all(isinstance(b, dict) and b.get("type") == "text"
                                            and isinstance(b.get("text"), str) for b in raw):
        raise ClientError("'system' must be a string or a list of {type: text, text} blocks")
    return "\n\n".join(b["text"] for b in raw if not b["text"].startswith(BILLING_HEADER))


def parse_messages(raw: Any, config: Config) -> tuple:
    """System text (from `role: system` messages, which Claude Code sends) and turns from
    Anthropic messages, at most MAX_TURNS."""
    if not isinstance(raw, list) or not raw:
        raise ClientError("'messages' must be a non-empty list")
    system, turns, calls = [], [], {}  # calls: tool_use id -> name, for tool_result blocks
    for index, message in enumerate(bounded(raw, "messages", "messages", config.max_turns,
                                            "MAX_TURNS")):
        where = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise ClientError(f"'{where}.role' must be user or assistant")
        blocks = content_blocks(message.get("content"), where, config)
        if role == "system":
            system.append("\n".join(b["text"] for b in blocks if b.get("type") == "text"
                                    and isinstance(b.get("text"), str)))
        elif role == "user":
            turns += user_turns(blocks, where, config, calls)
        else:
            turns += assistant_turns(blocks, where, calls)
    if not any(turn.role in ("user", "tool") for turn in turns):
        raise ClientError("'messages' needs at least one user message")
    if turns[-1].role == "assistant":
        raise ClientError("the last message must be the user's: an assistant prefill is not "
                          "supported")
    return "\n\n".join(s for s in system if s.strip()), turns


def content_blocks(content: Any, where: str, config: Config) -> list:
    """A message's content as blocks: a string is one text block; at most MAX_PARTS."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ClientError(f"'{where}.content' must be a string or a list of content blocks")
    bounded(content, f"{where}.content", "blocks", config.max_parts, "MAX_PARTS")
    if not all(isinstance(block, dict) and isinstance(block.get("type"), str) for block in content):
        raise ClientError(f"'{where}.content' must hold objects with a 'type'")
    return content


def text_field(block: dict, name: str, where: str) -> str:
    value = block.get(name)
    if not isinstance(value, str):
        raise ClientError(f"'{where}.{name}' must be a string")
    return value


def user_turns(blocks: list, where: str, config: Config, calls: dict) -> list:
    """A user message as turns: its tool results first (one tool turn each), then its text
    and files (images a tool returned included) as a user turn."""
    results, texts, files = [], [], []
    for index, block in enumerate(blocks):
        at, kind = f"{where}.content[{index}]", block["type"]
        if kind == "tool_result":
            result, result_files = tool_result(block, at, config, calls)
            results.append(result)
            files += result_files
        elif kind == "text":
            texts.append(text_field(block, "text", at))
        elif kind in ("image", "document"):
            file = source_file(block, at, config)
            (texts if isinstance(file, str) else files).append(file)
        elif kind not in IGNORED_BLOCKS:
            raise ClientError(f"'{at}.type' {kind!r} is not supported here: send text, image, "
                              "document or tool_result blocks")
    text = "\n".join(t for t in texts if t)
    return results + ([Turn("user", text, tuple(files))] if text.strip() or files else [])


def tool_result(block: dict, at: str, config: Config, calls: dict) -> tuple:
    """A tool_result block as a tool turn (an error result as {"error": text}), and the images
    it holds."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or call_id not in calls:
        raise ClientError(f"'{at}.tool_use_id' must name a tool_use block of an earlier "
                          "assistant message")
    content = block.get("content")
    texts, files = [], []
    if content is None or isinstance(content, str):
        texts.append(content or "")
    else:
        for index, part in enumerate(content_blocks(content, at, config)):
            if part["type"] in ("image", "document"):
                file = source_file(part, f"{at}.content[{index}]", config)
                (texts if isinstance(file, str) else files).append(file)
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = json.dumps({"error": text}, ensure_ascii=False)
    return Turn("tool", text, tool_call_id=call_id, tool_name=calls[call_id]), files


def source_file(block: dict, at: str, config: Config):
    """An image or document block's file (an Attachment), or a plain-text document's text."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") if isinstance(source.get("media_type"), str) else ""
        title = block.get("title") if isinstance(block.get("title"), str) else ""
        return checked_file(media_type, source["data"], title, at, config)
    if kind == "text" and isinstance(source.get("data"), str):
        return source["data"]
    if kind == "url" and isinstance(source.get("url"), str):
        return url_file(block, source["url"], at, config)
    if kind == "file":
        raise ClientError(f"'{at}.source' of type file (Anthropic's Files API) is not supported: "
                          "send the file as {type: base64, media_type, data} or a url")
    raise ClientError(f"'{at}.source' must be {{type: base64, media_type, data}}, {{type: url, "
                      "url}} (or a document's {type: text, media_type: text/plain, data})")


def url_file(block: dict, url: str, at: str, config: Config) -> Attachment:
    """A file the upstream fetches itself from an http(s) URL (ChatBridge never does): its
    type from the URL's extension, else a JPEG image or a PDF document, as Anthropic takes."""
    if not WEB_URL.fullmatch(url):
        raise ClientError(f"'{at}.source.url' must be an http or https URL")
    guessed = mimetypes.guess_type(urlsplit(url).path)[0] or ""
    family = "image/" if block["type"] == "image" else ""
    mime_type = guessed if guessed.startswith(family) and guessed else (
        "image/jpeg" if family else "application/pdf")
    check_file_type(mime_type, at, config)
    title = block.get("title") if isinstance(block.get("title"), str) else ""
    return Attachment(mime_type, "", title, url=url)


def assistant_turns(blocks: list, where: str, calls: dict) -> list:
    """An assistant message as a turn: its text, its thinking as reasoning, its tool_use blocks
    as calls, each with the signature of the thinking block before it."""
    texts, thoughts, tool_calls, signature = [], [], [], None
    for index, block in enumerate(blocks):
        at, kind = f"{where}.content[{index}]", block["type"]
        if kind == "text":
            texts.append(text_field(block, "text", at))
        elif kind == "thinking":
            thoughts.append(block.get("thinking") if isinstance(block.get("thinking"), str) else "")
            signature = block.get("signature") if isinstance(block.get("signature"), str) else None
        elif kind == "tool_use":
            tool_calls.append(tool_use(block, at, signature or None))
            calls[tool_calls[-1]["id"]] = tool_calls[-1]["name"]
            signature = None
        elif kind not in IGNORED_BLOCKS:
            raise ClientError(f"'{at}.type' {kind!r} is not supported in an assistant message")
    text = "\n".join(t for t in texts if t)
    if not text.strip() and not tool_calls:
        return []  # upstreams refuse empty turns
    return [Turn("assistant", text, tool_calls=tuple(tool_calls), reasoning="".join(thoughts))]


def tool_use(block: dict, at: str, signature: str | None) -> dict:
    """A tool_use block as a neutral call {"id", "name", "arguments", "signature"}."""
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str) \
            or not isinstance(block.get("input", {}), dict):
        raise ClientError(f"'{at}' must be {{type: tool_use, id, name, input: an object}}")
    return {"id": block["id"], "name": block["name"], "signature": signature,
            "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}


def parse_tools(raw: Any, config: Config) -> list | None:
    """Client tools ({name, description, input_schema}) as OpenAI function tools; server tools
    the upstream cannot run are left out and logged. At most MAX_TOOLS."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ClientError("'tools' must be a list of {name, description, input_schema}")
    tools = []
    for index, tool in enumerate(bounded(raw, "tools", "tools", config.max_tools, "MAX_TOOLS")):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise ClientError(f"'tools[{index}]' must be {{name, description, input_schema}}")
        if tool.get("type") not in (None, "custom"):
            log.info("left out the server tool %r (%s): no upstream runs it", tool["name"],
                     tool.get("type"))
            continue
        schema, description = tool.get("input_schema"), tool.get("description", "")
        if not isinstance(schema, dict) or not isinstance(description, str):
            raise ClientError(f"'tools[{index}]' must have an input_schema object and a "
                              "string description")
        # JSON Schema's "$schema" is metadata that Gemini's function declarations do not take
        parameters = {k: v for k, v in schema.items() if k != "$schema"}
        tools.append({"type": "function", "function": {
            "name": tool["name"], "parameters": parameters,
            **({"description": description} if description else {})}})
    return tools or None


def parse_tool_choice(raw: Any) -> tuple | None:
    """tool_choice as (Chat Completions' tool_choice, whether parallel calls are off)."""
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    named = isinstance(raw, dict) and isinstance(raw.get("name"), str)
    if kind not in ("auto", "any", "none", "tool") or (kind == "tool" and not named):
        raise ClientError("'tool_choice' must be {type: auto}, {type: any}, {type: none} or "
                          "{type: tool, name}")
    choice = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or {
        "type": "function", "function": {"name": raw.get("name")}}
    return choice, raw.get("disable_parallel_tool_use") is True


def parse_thinking(raw: Any) -> tuple:
    """`thinking` as (ChatRequest.thinking, its budget in tokens)."""
    if raw is None:
        return None, None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        raise ClientError("'thinking' must be {type: enabled, budget_tokens}, {type: disabled} "
                          "or {type: adaptive}")
    if kind == "disabled":
        return False, None
    budget = optional(raw, "budget_tokens", int, lambda v: v > 0, "a positive integer") \
        if kind == "enabled" else None
    if raw.get("display") == "omitted":  # the client will not show thoughts: do not ask for them
        return False, budget
    return (True if kind == "enabled" else None), budget


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
            parsed = parse_json(arguments.get(index, "")) if index in arguments else {}
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
