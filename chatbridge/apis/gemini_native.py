"""Google's Gemini REST API under /v1beta (and under /v1, which recent google-genai releases
use): generateContent, streamGenerateContent (SSE with alt=sse, else one JSON array),
countTokens, a model, the model list. The client's own key (`key=` or x-goog-api-key) is its
ChatBridge access token and never goes upstream.

A model name is resolved as on every API (MODEL_ALIASES, then routing; a model nobody serves
is a 404 listing the available ones), except that a name only the catch-all provider claims
goes to Gemini while there are Gemini keys (Google's catalogue has learnlm-..., imagen-...).
For a Gemini model the call passes through with the key pool: bodies and answers unchanged,
thought signatures included. Any other model (the built-in echo, a `zju/` model of the
OpenAI-compatible upstream) is answered on the neutral path in Gemini's wire format
(chatbridge/apis/gemini_wire.py), so google-genai works with no Gemini key at all. The model
list is Gemini's own with echo and the exact aliases first, or only those without Gemini keys.

Only the methods in GEMINI_NATIVE_METHODS (generateContent, streamGenerateContent, countTokens
by default), the model list and a model pass, so no pool key is spent on methods ChatBridge
does not offer (predict, predictLongRunning, batchGenerateContent, embedContent …); paths
with empty, `.` or `..` segments are refused.

Errors have Google's shape {"error": {"code", "message", "status"}}; an error the upstream
answered with (the request's own fault) passes through as Gemini wrote it, keys masked.
"""

import json

from flask import Blueprint, Response, jsonify, request

from ..auth import require_access_token
from ..chat import ChatRequest, Delta, parse_json, refuse_constant
from ..config import Config
from ..errors import ChatBridgeError, ClientError, ModelNotFound, NotFound, UpstreamError
from ..relay import Cancel
from ..service import current_service
from ..sse import StreamWriter, sse
from ..upstreams import NativeCall
from . import gemini_wire
from .common import (
    ANY_METHOD,
    install_error_handler,
    no_endpoint,
    note_request,
    refuse_deep_nesting,
    refuse_many_values,
    stream_response,
    unknown_url,
)
from .fields import MODEL_NAME

bp = Blueprint("gemini", __name__)
NEUTRAL_ACTIONS = ("generateContent", "streamGenerateContent", "countTokens")
MODEL_DESCRIPTIONS = {"echo": "ChatBridge's built-in echo model: answers with your last message",
                      "zju": "served by ChatBridge's OpenAI-compatible upstream"}
# google.rpc.Code by HTTP status. 413 has no gRPC mapping: Gemini answers a body over its own
# limit with 400 INVALID_ARGUMENT ("Request payload size exceeds the limit: ... bytes."), and
# FAILED_PRECONDITION is for the system's state, not the request's size.
GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                   404: "NOT_FOUND", 405: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT",
                   415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                   502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


@bp.get("/v1beta/models", defaults={"target": ""})
@bp.route("/v1beta/models/<path:target>", methods=["GET", "POST"])
@bp.post("/v1/models/<path:target>")
def gemini_native(target: str):
    """Gemini's REST call models/{target}: passed through with the key pool for a Gemini
    model, answered on the neutral path for any other (echo, another upstream's model)."""
    svc = current_service()
    model, action = parse_target(target, request.method, svc.config)
    body = check_body(request.get_data(), svc.config) if request.method == "POST" else None
    if not model:
        return model_list(svc)
    provider, routed = svc.providers.resolve(model, prefer="gemini")
    if not action and provider != "gemini":  # a model's own entry, under the name asked for
        return jsonify(gemini_wire.model_entry(model, MODEL_DESCRIPTIONS.get(provider, "")))
    if provider != "gemini":
        return neutral_call(svc, provider, routed, action, body)
    return pass_through(svc, NativeCall(request.method, routed, action, client_query(), request.get_data()))


def pass_through(svc, call: NativeCall):
    """A Gemini call as the client made it, with a pool key, its answer unchanged."""
    chat = ChatRequest(shape="native", provider="gemini", model=call.model or "*", turns=[],
                       stream=call.action == "streamGenerateContent", native=call)
    record = note_request(chat)
    plan, cancel = svc.reserve(chat), Cancel()
    gemini = svc.providers[chat.provider]
    if not chat.stream:
        content, content_type = svc.failover(
            chat, plan, lambda key: gemini.fetch_native(call, key, cancel), cancel, record)
        return Response(masked_errors(content, svc.redactor), content_type=content_type)
    answer = svc.failover(chat, plan, lambda key: gemini.open_native_stream(call, key, cancel),
                          cancel, record)
    writer = GeminiWriter(sse_events=call.query.get("alt") == "sse")
    deltas = (Delta(d.kind, masked_errors(d.value, svc.redactor)) for d in answer.deltas())
    return stream_response(svc.relay(deltas, writer, record, cancel), writer, cancel)


def neutral_call(svc, provider: str, model: str, action: str, body: dict | None):
    """generateContent, streamGenerateContent or countTokens of a model Gemini does not serve,
    in Gemini's wire format through the neutral path (chatbridge/apis/gemini_wire.py)."""
    if action not in NEUTRAL_ACTIONS:
        raise NotFound(f"the model {model!r} does not offer :{action} (only "
                       + ", ".join(NEUTRAL_ACTIONS) + ")")
    if action == "countTokens":
        chat = gemini_wire.count_request(body, provider, model, svc.config)
        note_request(chat)
        return jsonify(totalTokens=svc.providers[provider].count_tokens(chat, None, Cancel()))
    stream = action == "streamGenerateContent"
    chat = gemini_wire.parse_generate(body, provider, model, stream, svc.config)
    svc.providers.check_files(provider, chat.turns)
    record = note_request(chat)
    plan, cancel = svc.reserve(chat), Cancel()
    if not stream:
        answer = svc.complete(chat, plan, cancel, record)
        return jsonify(gemini_wire.whole_response(answer.deltas, model))
    answer = svc.stream_answer(chat, plan, cancel, record)
    writer = gemini_wire.GeminiChunkWriter(model, sse_events=request.args.get("alt") == "sse")
    return stream_response(svc.relay(answer.deltas(), writer, record, cancel), writer, cancel)


def model_list(svc):
    """models.list: Gemini's own (with a key from the pool) when there are Gemini keys, with
    echo and the MODEL_ALIASES names first on its first page; else echo and the aliases."""
    own = [gemini_wire.model_entry(name, MODEL_DESCRIPTIONS.get(provider, ""))
           for name, provider in svc.providers.neutral_models()]
    if not svc.config.gemini_keys:
        return jsonify(models=own)
    response = pass_through(svc, NativeCall("GET", "", "", client_query(), b""))
    listed = parse_json(response.get_data())
    if request.args.get("pageToken") or not isinstance(listed, dict):
        return response
    listed["models"] = own + (listed.get("models") if isinstance(listed.get("models"), list) else [])
    return jsonify(listed)


def client_query() -> dict:
    """The query to pass on: the client's own key (key=) stays here."""
    return {k: v for k, v in request.args.items() if k != "key"}


def masked_errors(payload, redactor):
    """A passed-through body or event with any error in it masked (an upstream's error text
    may quote the key); everything else passes untouched, at the cost of one search."""
    if isinstance(payload, bytes):
        if b'"error"' not in payload:
            return payload
        return redactor.redact_json(payload.decode("utf-8", "replace")).encode()
    if isinstance(payload, str) and '"error"' in payload:
        return redactor.redact_json(payload)
    return payload


@bp.route("/v1beta/", defaults={"rest": ""}, methods=list(ANY_METHOD), strict_slashes=False)
@bp.route("/v1beta/<path:rest>", methods=list(ANY_METHOD))
def unknown(rest: str):
    """Any other /v1beta URL: a 404 (or 405) in Google's shape."""
    raise unknown_url()


def parse_target(target: str, method: str, config: Config) -> tuple:
    """(model, action) of models/{model}:{action}, a model, or the list ("", ""); a 404 for
    anything else and for an action GEMINI_NATIVE_METHODS leaves out."""
    model, _, action = target.partition(":")
    segments = model.split("/") if model else []
    if (model and not MODEL_NAME.fullmatch(model)) or (action and not action.isalpha()) or (
            method == "POST") != bool(action) or any(s in ("", ".", "..") for s in segments) or (
            action and not model):  # models/:generateContent names no model
        raise no_endpoint()
    if action and action not in config.gemini_native_methods:
        raise NotFound(f"ChatBridge does not pass :{action} through; GEMINI_NATIVE_METHODS allows "
                       + ", ".join(config.gemini_native_methods))
    return model, action


def check_body(body: bytes, config: Config) -> dict:
    """A body is passed on as sent, but only a JSON object within the bounds (MAX_JSON_VALUES,
    MAX_JSON_DEPTH) spends a pool key: anything else is our own 400 or 413."""
    refuse_many_values(body, config.max_json_values)
    try:
        parsed = json.loads(body or b"{}", parse_constant=refuse_constant)  # no NaN: not JSON
    except RecursionError:
        raise ClientError(f"the body's JSON is nested more than {config.max_json_depth} levels "
                          "deep (MAX_JSON_DEPTH)") from None
    except ValueError:
        raise ClientError("the body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ClientError("the body must be a JSON object")
    refuse_deep_nesting(parsed, config.max_json_depth)
    return parsed


def render_error(error: ChatBridgeError) -> tuple:
    """An error as Google's API writes it; the upstream's own error body when it sent one."""
    status = google_status(error)
    rejected = isinstance(error, UpstreamError) and error.kind == "rejected"
    if rejected and error.body:
        return error.body, status
    return {"error": {"code": status, "message": error.message,
                      "status": GOOGLE_STATUSES.get(status, "UNKNOWN")}}, status


def google_status(error: ChatBridgeError) -> int:
    """A model nobody serves is 404; a refused request keeps the upstream's status; an
    upstream that failed every key is 502."""
    if isinstance(error, ModelNotFound):
        return 404
    if isinstance(error, UpstreamError) and error.kind == "rejected":
        return error.upstream_status or 400
    if isinstance(error, UpstreamError) and error.status == 500:
        return 502
    return error.status


install_error_handler(bp, render_error)
bp.before_request(require_access_token)


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
