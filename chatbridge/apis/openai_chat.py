"""OpenAI's Chat Completions API under /v1 (POST /v1/chat/completions, GET /v1/models), for
the official SDKs and every tool that takes an "OpenAI-compatible" base URL.

Errors have OpenAI's shape {"error": {"message", "type", "param", "code"}} and the statuses
the SDKs' retry logic expects: 400 invalid request (also a request the upstream refused),
401, 404 `model_not_found`, 429 with Retry-After, 502 when the upstream failed every key,
503 when it could not be reached. GET /v1/models and /v1/models/{name} are shared with
Google's API and answer in Google's shape when the client authenticates Google's way.
The chunk writer here also serves the ZJU source's shape B (chatbridge/apis/source.py).
"""

import time
import uuid
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, jsonify

from ..auth import google_auth, require_access_token
from ..chat import ChatRequest, Delta, ToolCallTracker, Turn
from ..config import Config
from ..errors import ChatBridgeError, ClientError, ModelNotFound, NotFound, Unauthorized, UpstreamError
from ..relay import Cancel
from ..service import current_service
from ..sse import StreamWriter, encode_json, sse
from ..upstreams.base import WholeAnswer
from . import gemini_native
from .common import ANY_METHOD, install_error_handler, note_request, read_json_body, stream_response, unknown_url
from .fields import (
    bounded,
    check_text,
    data_url_file,
    model_field,
    optional,
    positive_field,
    stream_field,
    temperature_field,
)

bp = Blueprint("openai", __name__)
models_bp = Blueprint("models", __name__)  # the model paths OpenAI's and Google's APIs share
REBUILT_FIELDS = {"model", "messages", "stream", "stream_options", "n"}


@bp.post("/v1/chat/completions")
def chat_completions():
    """OpenAI's Chat Completions over the key pool."""
    svc = current_service()
    chat = parse_request(read_json_body(), svc.config, svc.providers)
    record = note_request(chat)
    plan, cancel = svc.reserve(chat), Cancel()
    if not chat.stream:
        return jsonify(completion_of(svc.complete(chat, plan, cancel, record), chat.model))
    answer = svc.stream_answer(chat, plan, cancel, record)
    writer = ChunkWriter(chat.model, gateway=True, include_usage=chat.include_usage)
    return stream_response(svc.relay(answer.deltas(), writer, record, cancel), writer, cancel)


@bp.route("/v1/", defaults={"rest": ""}, methods=list(ANY_METHOD), strict_slashes=False)
@bp.route("/v1/<path:rest>", methods=list(ANY_METHOD))
def unknown(rest: str):
    """Any other /v1 URL: a 404 (or 405) in OpenAI's shape."""
    raise unknown_url()


@models_bp.get("/v1/models")
def models():
    """The models, in OpenAI's list shape; in Google's when the client authenticates Google's way."""
    if google_auth():
        return gemini_native.gemini_native("")
    return jsonify(object="list", data=model_entries())


@models_bp.get("/v1/models/<path:name>")
def model(name: str):
    """One model (OpenAI's models.retrieve); in Google's shape when the client asks Google's way."""
    if google_auth():
        return gemini_native.gemini_native(name)
    for entry in model_entries():
        if entry["id"] == name:
            return jsonify(entry)
    registry = current_service().providers
    if registry.aliased(name) != name:  # a name a MODEL_ALIASES pattern matches exists too
        provider = registry[registry.resolve(name)[0]]
        return jsonify(id=name, object="model", created=0, owned_by=provider.owned_by)
    raise ModelNotFound(f"the model {name!r} does not exist")


def model_entries() -> list:
    return [{"id": name, "object": "model", "created": 0, "owned_by": owner}
            for name, owner in current_service().model_list()]


# ---------------------------------------------------------------- errors

ERROR_TYPES = ((Unauthorized, "authentication_error"), (ClientError, "invalid_request_error"))


def render_error(error: ChatBridgeError) -> tuple:
    """An error as OpenAI's API writes it."""
    status = gateway_status(error)
    rejected = isinstance(error, UpstreamError) and error.kind == "rejected"
    kind = next((name for cls, name in ERROR_TYPES if isinstance(error, cls)), "api_error")
    if rejected:
        kind = "invalid_request_error"
    elif status == 429:
        kind = "rate_limit_error"
    code = {404: None if isinstance(error, NotFound) else "model_not_found",
            401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    return {"error": {"message": error.message, "param": None, "code": code, "type": kind}}, status


def gateway_status(error: ChatBridgeError) -> int:
    """The status the gateways use, for the SDKs' retry logic: a model nobody serves is 404;
    a request the upstream refused is the client's error (400, or its 404), not to be
    retried; an upstream that failed every key is 502."""
    if isinstance(error, ModelNotFound):
        return 404
    if isinstance(error, UpstreamError) and error.kind == "rejected":
        return 404 if error.upstream_status == 404 else 400
    if isinstance(error, UpstreamError) and error.status == 500:
        return 502
    return error.status


install_error_handler(bp, render_error)
install_error_handler(models_bp, lambda error: (
    gemini_native.render_error if google_auth() else render_error)(error))
bp.before_request(require_access_token)
models_bp.before_request(require_access_token)


# ---------------------------------------------------------------- requests


def parse_request(body: dict, config: Config, registry) -> ChatRequest:
    """Validate a Chat Completions request into a ChatRequest (400 naming the field)."""
    if optional(body, "n", int, hint="1") not in (None, 1):
        raise ClientError("'n' must be 1: one answer per request")
    system, turns = parse_messages(body.get("messages"), config)
    check_text(system, turns, config)
    provider, model = model_field(body, registry)
    registry.check_files(provider, turns)
    options = optional(body, "stream_options", dict, hint="an object") or {}
    stop = optional(body, "stop", (str, list), lambda v: isinstance(v, str) or (
        len(v) <= 4 and all(isinstance(s, str) for s in v)), "a string or up to 4 strings")
    max_tokens = positive_field(body, "max_completion_tokens")
    return ChatRequest(
        shape="v1", provider=provider, model=model, turns=turns, system=system,
        temperature=temperature_field(body),
        max_tokens=max_tokens or positive_field(body, "max_tokens"),
        stream=stream_field(body),
        top_p=optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1, "a number from 0 to 1"),
        stop=[stop] if isinstance(stop, str) else stop,
        response_format=optional(body, "response_format", dict, valid_response_format,
                                 "{type: text, json_object or json_schema, json_schema: "
                                 "{name, schema: an object}}"),
        tools=parse_tools(body.get("tools"), config),
        tool_choice=parse_tool_choice(body.get("tool_choice")),
        include_usage=bool(options.get("include_usage")),
        passthrough={k: v for k, v in body.items() if k not in REBUILT_FIELDS},
        empty_answers=True,
    )


def parse_messages(raw: Any, config: Config) -> tuple:
    """System text and turns from OpenAI messages (system, developer, user, assistant, tool),
    at most MAX_TURNS."""
    if not isinstance(raw, list) or not raw:
        raise ClientError("'messages' must be a non-empty list")
    system, turns, call_names = [], [], {}
    for index, message in enumerate(bounded(raw, "messages", "messages", config.max_turns,
                                            "MAX_TURNS")):
        where = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(content_of(message.get("content"), where, config)[0])
        elif role == "user":
            turns.append(Turn("user", *content_of(message.get("content"), where, config)))
        elif role == "assistant":
            turns += assistant_turn(message, where, config, call_names)
        elif role == "tool":
            turns.append(tool_turn(message, where, config, call_names))
        else:
            raise ClientError(f"'{where}.role' must be system, developer, user, assistant or tool")
    if not any(turn.role == "user" for turn in turns):
        raise ClientError("'messages' needs at least one user message")
    return "\n\n".join(s for s in system if s.strip()) or None, turns


def assistant_turn(message: dict, where: str, config: Config, call_names: dict) -> list:
    """An assistant message as a turn (none if it is empty: upstreams refuse empty turns)."""
    calls = parse_tool_calls(message.get("tool_calls"), where, config)
    call_names.update((call["id"], call["name"]) for call in calls)
    text = content_of(message.get("content"), where, config)[0]
    reasoning = message.get("reasoning_content")
    if not text.strip() and not calls:
        return []
    return [Turn("assistant", text, tool_calls=calls,
                 reasoning=reasoning if isinstance(reasoning, str) else "")]


def tool_turn(message: dict, where: str, config: Config, call_names: dict) -> Turn:
    """A tool message: the result of a call an earlier assistant message made."""
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in call_names:
        raise ClientError(f"'{where}.tool_call_id' must name a tool call of an earlier "
                          "assistant message")
    text = content_of(message.get("content"), where, config)[0]
    return Turn("tool", text, tool_call_id=call_id, tool_name=call_names[call_id])


def content_of(content: Any, where: str, config: Config) -> tuple:
    """(text, files) of message content: a string, null, or up to MAX_PARTS text and
    image_url parts."""
    if content is None or isinstance(content, str):
        return content or "", ()
    if not isinstance(content, list):
        raise ClientError(f"'{where}.content' must be a string or a list of parts")
    texts, files = [], []
    for part in bounded(content, f"{where}.content", "parts", config.max_parts, "MAX_PARTS"):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            files.append(data_url_file({"url": part["image_url"].get("url")}, where, config))
        elif kind != "refusal":  # an assistant's refusal is not sent back
            raise ClientError(f"'{where}.content' may hold only text and image_url parts")
    return "\n".join(texts), tuple(files)


def parse_tool_calls(raw: Any, where: str, config: Config) -> tuple:
    """An assistant message's tool_calls (at most MAX_PARTS) as {"id", "name", "arguments",
    "signature"}."""
    if raw is None:
        return ()
    calls = []
    if isinstance(raw, list):
        bounded(raw, f"{where}.tool_calls", "tool calls", config.max_parts, "MAX_PARTS")
    for call in raw if isinstance(raw, list) else [None]:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str) \
                or not isinstance(function.get("name"), str):
            raise ClientError(f"'{where}.tool_calls' must be a list of "
                              "{id, type: function, function: {name, arguments}}")
        if not isinstance(function.get("arguments", ""), str):
            raise ClientError(f"'{where}.tool_calls[].function.arguments' must be a JSON string")
        calls.append({"id": call["id"], "name": function["name"],
                      "arguments": function.get("arguments") or "{}",
                      "signature": thought_signature(call, where)})
    return tuple(calls)


def parse_tools(raw: Any, config: Config) -> list | None:
    """Function tools, checked, at most MAX_TOOLS: [{type: function, function: {name,
    description?, parameters?}}]."""
    if raw is None:
        return None
    if isinstance(raw, list):
        bounded(raw, "tools", "tools", config.max_tools, "MAX_TOOLS")
    valid = isinstance(raw, list) and all(
        isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
        and isinstance(t["function"].get("description", ""), str)
        and isinstance(t["function"].get("parameters", {}), dict) for t in raw)
    if not valid:
        raise ClientError("'tools' must be a list of {type: function, function: {name, "
                          "description, parameters}}")
    return raw


def thought_signature(call: dict, where: str) -> str | None:
    """Gemini's thought signature as Google's OpenAI-compatible API carries it on a tool call:
    extra_content.google.thought_signature."""
    extra = call.get("extra_content")
    if extra is not None and not isinstance(extra, dict):
        raise ClientError(f"'{where}.tool_calls[].extra_content' must be an object")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) else None


def valid_response_format(value: dict) -> bool:
    if value.get("type") not in ("text", "json_object", "json_schema"):
        return False
    schema = value.get("json_schema")
    return schema is None or (isinstance(schema, dict) and isinstance(schema.get("schema", {}), dict))


def parse_tool_choice(raw: Any) -> Any:
    if raw is None or raw in ("none", "auto", "required"):
        return raw
    function = raw.get("function") if isinstance(raw, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return raw
    raise ClientError("'tool_choice' must be none, auto, required or "
                      "{type: function, function: {name}}")


# ---------------------------------------------------------------- answers


class ChunkWriter(StreamWriter):
    """chat.completion.chunk objects, in two dialects: the ZJU source's (no [DONE], usage on
    the last chunk, errors as a string) and OpenAI's own for /v1 (gateway=True: [DONE], a
    usage chunk when asked for, error objects)."""

    def __init__(self, model: str, gateway: bool = False, include_usage: bool = False):
        self.base = {"id": completion_id(), "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model}
        self.gateway, self.include_usage = gateway, include_usage
        self.usage = None
        self.calls = ToolCallTracker()
        self.templates = {}  # field -> the bytes of a text chunk before and after its text

    def chunk(self, delta: dict, finish: str | None = None, **extra) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        usage = {"usage": None} if self.include_usage else {}
        return sse({**self.base, "choices": [choice], **usage, **extra})

    def text_chunk(self, field: str, text: str) -> bytes:
        """chunk({field: text}), byte for byte, from a template made once per stream: only the
        text is encoded per chunk (a whole chunk's encoding was most of the writer's CPU)."""
        if field not in self.templates:
            marker = uuid.uuid4().hex
            self.templates[field] = self.chunk({field: marker}).split(f'"{marker}"'.encode())
        head, tail = self.templates[field]
        return head + encode_json(text).encode() + tail

    def start(self) -> bytes:
        return self.chunk({"role": "assistant", "content": ""})

    def event(self, delta: Delta) -> bytes:
        if delta.kind == "text":
            return self.text_chunk("content", delta.value)
        if delta.kind == "reasoning":
            return self.text_chunk("reasoning_content", delta.value)
        if delta.kind == "tool_call":
            return self.chunk({"tool_calls": [self.tool_call(delta.value)]})
        if delta.kind == "usage":
            self.usage = delta.value
            return b""
        finish = openai_finish(delta.value, bool(self.calls))
        extra = {"usage": self.usage} if self.usage and not self.gateway else {}
        return self.chunk({}, finish, **extra)

    def tool_call(self, call: dict) -> dict:
        """A tool_calls delta entry: id, type and name with its first piece only."""
        index, new = self.calls.place(call)
        if not new:
            return {"index": index, "function": {"arguments": call["arguments"]}}
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


def tool_call_entry(call: dict) -> dict:
    """A tool call in OpenAI's shape; Gemini's thought signature rides along as Google's
    OpenAI-compatible endpoint carries it, so it comes back with the call."""
    entry = {"id": call["id"] or "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": call["name"] or "", "arguments": call["arguments"]}}
    if call.get("signature"):
        entry["extra_content"] = {"google": {"thought_signature": call["signature"]}}
    return entry


def openai_finish(finish: str, called_tools: bool) -> str:
    """A neutral finish reason as OpenAI's finish_reason (stop, length, content_filter,
    tool_calls): an answer that called tools and stopped is tool_calls; other is stop."""
    if finish in ("stop", "other"):
        return "tool_calls" if called_tools else "stop"
    return str(finish)


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion_of(answer: WholeAnswer, model: str) -> dict:
    """A whole answer as an OpenAI chat.completion: the upstream's own with its finish_reason
    in OpenAI's words, or one made from deltas."""
    completion = answer.chat_completion
    if completion is None:
        return completion_from_deltas(answer.deltas, model)
    choice = (completion.get("choices") or [None])[0]
    if isinstance(choice, dict):
        called = bool((choice.get("message") or {}).get("tool_calls"))
        choice["finish_reason"] = openai_finish(answer.finish, called)
    return completion


def completion_from_deltas(deltas: Iterable, model: str) -> dict:
    """An OpenAI chat.completion object assembled from deltas (Gemini and echo answers)."""
    texts, calls, tracker = {"text": [], "reasoning": []}, {}, ToolCallTracker()
    finish, usage = "stop", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for delta in deltas:
        if delta.kind in texts:
            texts[delta.kind].append(delta.value)
        elif delta.kind == "tool_call":
            index, new = tracker.place(delta.value)
            if new:
                calls[index] = tool_call_entry(delta.value)
            else:
                calls[index]["function"]["arguments"] += delta.value["arguments"]
        elif delta.kind == "finish":
            finish = openai_finish(delta.value, False)
        elif delta.kind == "usage":
            usage = delta.value
    message = {"role": "assistant", "content": "".join(texts["text"]) or (None if calls else "")}
    if texts["reasoning"]:
        message["reasoning_content"] = "".join(texts["reasoning"])
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
        finish = openai_finish(finish, True)
    return {"id": completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage}
