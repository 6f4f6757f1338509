"""OpenAI's Responses API under /v1 (POST /v1/responses, GET and DELETE
/v1/responses/{response_id}, GET /v1/responses/{response_id}/input_items, POST
/v1/responses/{response_id}/cancel), for the official SDKs' `responses` and for Codex CLI,
whose only wire it is; answered by any upstream through the key pool.

Source: OpenAI's API reference, "Responses". The request is read into the neutral ChatRequest
by chatbridge/apis/responses_input.py; the response object and its typed stream events are
built by chatbridge/apis/responses_output.py; stored responses (`store`, the default, and
`previous_response_id`) live in the state store (chatbridge/stored_responses.py), with their
input items (chatbridge/apis/responses_items.py). ChatBridge runs no background responses and
keeps no Conversations objects: `background: true` and `conversation` are a 400 naming the
field, and cancel answers as OpenAI does for a response not made with background=true.

Errors have OpenAI's shape {"error": {"message", "type", "param", "code"}} with the statuses
of /v1/chat/completions (chatbridge/apis/openai_chat.py): 400 (an unknown previous_response_id
is `previous_response_not_found`), 401, 404, 413, 429 with Retry-After, 502, 503. Once a stream
has begun, a failure is an `error` event and `response.failed`.
"""

import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from flask import Blueprint, g, jsonify, request

from ..auth import require_access_token
from ..chat import ChatRequest, Turn
from ..config import Config
from ..errors import ChatBridgeError, ClientError
from ..relay import Cancel
from ..service import current_service
from ..stored_responses import StoredResponses
from .common import install_error_handler, note_request, read_json_body, stream_response
from .fields import (
    bounded,
    check_text,
    model_field,
    optional,
    positive_field,
    stream_field,
    temperature_field,
)
from .openai_chat import render_error as render_openai_error
from .responses_input import (
    CUSTOM_INPUT,
    InputReader,
    known_calls,
    parse_text_format,
    parse_tool_choice,
    parse_tools,
)
from .responses_items import list_page, refuse_unsupported, request_items
from .responses_output import Output, ResponseEventWriter

bp = Blueprint("responses", __name__)
ENCRYPTED_REASONING = "reasoning.encrypted_content"
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


@dataclass
class ParsedRequest:
    """A Responses request: the neutral chat, and what the answer needs besides."""

    chat: ChatRequest
    echo: dict  # the request's settings, as the response object repeats them
    custom: tuple  # the names of custom tools
    namespaces: dict  # upstream function name -> (namespace, name) of a namespace tool's
    signatures: bool  # include has reasoning.encrypted_content
    store: bool
    input_items: list  # the earlier responses' and this request's, as GET input_items lists


@bp.post("/v1/responses")
def create_response():
    """A model response (OpenAI's responses.create), streamed or whole."""
    svc = current_service()
    stored = stored_responses()
    parsed = parse_request(read_json_body(), svc.config, svc.providers, stored, g.owner)
    chat, record = parsed.chat, note_request(parsed.chat)
    plan, cancel = svc.reserve(chat), Cancel()
    output = Output(parsed.echo, parsed.custom, parsed.namespaces, parsed.signatures)
    save = partial(save_answer, stored, chat.turns, parsed.input_items, g.owner) \
        if parsed.store else None
    if not chat.stream:
        answer = svc.complete(chat, plan, cancel, record)
        output.whole(answer.deltas)
        if save:
            save(output)
        return jsonify(output.response)
    answer = svc.stream_answer(chat, plan, cancel, record)
    writer = ResponseEventWriter(output, save)
    return stream_response(svc.relay(answer.deltas(), writer, record, cancel), writer, cancel)


@bp.get("/v1/responses/<response_id>")
def get_response(response_id: str):
    """A stored response (OpenAI's responses.retrieve)."""
    return jsonify(stored_responses().get(response_id, g.owner))


@bp.delete("/v1/responses/<response_id>")
def delete_response(response_id: str):
    """Forget a stored response (OpenAI's responses.delete)."""
    stored_responses().delete(response_id, g.owner)
    return jsonify(id=response_id, object="response", deleted=True)


@bp.get("/v1/responses/<response_id>/input_items")
def list_input_items(response_id: str):
    """A page of a stored response's input items (OpenAI's responses.input_items.list):
    {object: "list", data, first_id, last_id, has_more}; 404 as GET, 400 for a bad query."""
    items = stored_responses().input_items(response_id, g.owner)
    return jsonify(list_page(items, request))


@bp.post("/v1/responses/<response_id>/cancel")
def cancel_response(response_id: str):
    """OpenAI's responses.cancel: only a background response can be cancelled, and
    ChatBridge makes none, so a stored response is OpenAI's 400 for a synchronous one; 404
    for an id this token has no response under."""
    stored_responses().get(response_id, g.owner)
    raise ClientError("Cannot cancel a synchronous response.")


def stored_responses() -> StoredResponses:
    svc = current_service()
    return StoredResponses(svc.store, svc.conversations, svc.config)


def save_answer(stored: StoredResponses, turns: list, input_items: list, owner: str,
                output: Output) -> None:
    """Store a finished response with the conversation it ends and its input items."""
    answer = answer_turn(output)
    stored.save(output.response, turns + ([answer] if answer else []), owner, input_items)


def answer_turn(output: Output) -> Turn | None:
    """The answer's output items as one assistant turn (None when it has nothing)."""
    texts, calls, reasoning = [], [], []
    for item in output.items:
        if item["type"] == "message":
            texts += [part["text"] for part in item["content"]]
        elif item["type"] == "reasoning":
            reasoning += [part["text"] for part in item["summary"]]
        elif item["type"] in ("function_call", "custom_tool_call"):
            arguments = item.get("arguments") or json_input(item.get("input", ""))
            calls.append({"id": item["call_id"], "name": output.upstream_name(item),
                          "arguments": arguments,
                          "signature": output.signatures.get(item["call_id"])})
    if not "".join(texts).strip() and not calls:
        return None
    return Turn("assistant", "".join(texts), tool_calls=tuple(calls),
                reasoning="\n\n".join(reasoning))


def json_input(value: str) -> str:
    return json.dumps({CUSTOM_INPUT: value}, ensure_ascii=False)


# ---------------------------------------------------------------- errors


def render_error(error: ChatBridgeError) -> tuple:
    """An error as OpenAI's API writes it, with the param and code an error names."""
    body, status = render_openai_error(error)
    for name in ("param", "code"):
        if getattr(error, name, None):
            body["error"][name] = getattr(error, name)
    return body, status


install_error_handler(bp, render_error)
bp.before_request(require_access_token)


# ---------------------------------------------------------------- requests


def parse_request(body: dict, config: Config, registry, stored: StoredResponses,
                  owner: str) -> ParsedRequest:
    """Validate a Responses request into a ParsedRequest (400 naming the field); owner's
    stored responses and uploads are the ones it may name."""
    refuse_unsupported(body)
    provider, model = model_field(body, registry)
    previous = optional(body, "previous_response_id", str, hint="a response id")
    earlier, earlier_items = stored.context_before(previous, owner) if previous else ([], [])
    cached_upload = partial(stored.conversations.cached_upload, owner=owner)
    tools, custom, namespaces = parse_tools(body.get("tools"), config)
    system, turns = InputReader(config, cached_upload, known_calls(earlier),
                                namespaces).read(body.get("input"))
    instructions = optional(body, "instructions", str, hint="a string")
    system = "\n\n".join(s for s in (instructions, system) if s) or None
    turns = bounded(earlier + turns, "input", "turns with the previous response's",
                    config.max_turns, "MAX_TURNS")
    if not any(turn.role == "user" for turn in turns):
        raise ClientError("'input' needs at least one user message")
    check_text(system, turns, config)
    registry.check_files(provider, turns)
    chat = ChatRequest(
        shape="responses", provider=provider, model=model, turns=turns, system=system,
        temperature=temperature_field(body), max_tokens=positive_field(body, "max_output_tokens"),
        stream=stream_field(body),
        top_p=optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1, "a number from 0 to 1"),
        response_format=parse_text_format(body.get("text")), tools=tools,
        tool_choice=parse_tool_choice(body.get("tool_choice"), tools, custom, namespaces),
        include_usage=True,
        thinking=thinking_of(body), empty_answers=True)
    chat.passthrough = chat_completions_fields(chat, body)
    include = optional(body, "include", list, lambda v: all(isinstance(i, str) for i in v),
                       "a list of strings") or []
    store = optional(body, "store", bool, hint="true or false")
    return ParsedRequest(chat, echo_of(body, chat), custom, namespaces,
                         ENCRYPTED_REASONING in include, store is not False,
                         earlier_items + request_items(body["input"]))


def chat_completions_fields(chat: ChatRequest, body: dict) -> dict:
    """The request in Chat Completions' own fields, for an upstream that speaks that API."""
    fields = {"temperature": chat.temperature, "top_p": chat.top_p, "max_tokens": chat.max_tokens,
              "tools": chat.tools, "tool_choice": chat.tool_choice,
              "response_format": chat.response_format,
              "parallel_tool_calls": body.get("parallel_tool_calls") if chat.tools else None}
    return {name: value for name, value in fields.items() if value is not None}


def thinking_of(body: dict) -> bool | None:
    """Whether to ask for the model's reasoning: not with effort none; else as the model
    allows."""
    reasoning = optional(body, "reasoning", dict, hint="{effort, summary}") or {}
    effort = reasoning.get("effort")
    if effort is not None and not isinstance(effort, str):  # new efforts come often: not refused
        raise ClientError(f"'reasoning.effort' must be one of {', '.join(EFFORTS)}")
    return False if effort == "none" else None


def echo_of(body: dict, chat: ChatRequest) -> dict:
    """The request's settings as the response object repeats them."""
    reasoning = body.get("reasoning") or {}
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    settings: dict[str, Any] = {
        "instructions": body.get("instructions"), "max_output_tokens": chat.max_tokens,
        "model": body.get("model") or chat.model,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True), "temperature": chat.temperature,
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
        "top_p": chat.top_p, "truncation": "disabled", "user": None,
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
    }
    return settings
