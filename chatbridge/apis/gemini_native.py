"""Google's Gemini REST API passed through with the key pool, under /v1beta (and under /v1,
which recent google-genai releases use): generateContent, streamGenerateContent (SSE with
alt=sse, else one JSON array), countTokens, a model, the model list. Bodies and answers pass
unchanged, thought signatures included; the client's own key (`key=` or x-goog-api-key) is
its ChatBridge access token and never goes upstream.

Only the methods in GEMINI_NATIVE_METHODS (generateContent, streamGenerateContent, countTokens
by default), the model list and a model pass, so no pool key is spent on methods ChatBridge
does not offer (predict, predictLongRunning, batchGenerateContent, embedContent …); paths
with empty, `.` or `..` segments are refused.

Errors have Google's shape {"error": {"code", "message", "status"}}; an error the upstream
answered with (the request's own fault) passes through as Gemini wrote it, keys masked.
"""

import json

from flask import Blueprint, Response, request

from ..auth import require_access_token
from ..chat import ChatRequest, Delta
from ..config import Config
from ..errors import ChatBridgeError, ClientError, ModelNotFound, NotFound, UpstreamError
from ..relay import Cancel
from ..service import current_service
from ..sse import StreamWriter, sse
from ..upstreams import NativeCall
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
GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                   404: "NOT_FOUND", 405: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT",
                   415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                   502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


@bp.get("/v1beta/models", defaults={"target": ""})
@bp.route("/v1beta/models/<path:target>", methods=["GET", "POST"])
@bp.post("/v1/models/<path:target>")
def gemini_native(target: str):
    """Gemini's REST call models/{target} through the key pool."""
    svc = current_service()
    chat = parse_call(target, request.method, request.args, request.get_data(), svc.config)
    record = note_request(chat)
    plan, cancel = svc.reserve(chat), Cancel()
    gemini = svc.providers[chat.provider]
    call = chat.native
    if not chat.stream:
        content, content_type = svc.failover(
            chat, plan, lambda key: gemini.fetch_native(call, key, cancel), cancel, record)
        return Response(masked_errors(content, svc.redactor), content_type=content_type)
    answer = svc.failover(chat, plan, lambda key: gemini.open_native_stream(call, key, cancel),
                          cancel, record)
    writer = GeminiWriter(sse_events=call.query.get("alt") == "sse")
    deltas = (Delta(d.kind, masked_errors(d.value, svc.redactor)) for d in answer.deltas())
    return stream_response(svc.relay(deltas, writer, record, cancel), writer, cancel)


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


def parse_call(target: str, method: str, query: dict, body: bytes, config: Config) -> ChatRequest:
    """A Gemini REST call (models/{model}:{action}, a model, or the list) for the key pool;
    the client's own key (a key= query parameter) is never passed on."""
    model, _, action = target.partition(":")
    segments = model.split("/") if model else []
    if (model and not MODEL_NAME.fullmatch(model)) or (action and not action.isalpha()) or (
            method == "POST") != bool(action) or any(s in ("", ".", "..") for s in segments):
        raise no_endpoint()
    if action and action not in config.gemini_native_methods:
        raise NotFound(f"ChatBridge does not pass :{action} through; GEMINI_NATIVE_METHODS allows "
                       + ", ".join(config.gemini_native_methods))
    if method == "POST":
        check_body(body, config)
    if not config.gemini_keys:
        raise ModelNotFound("Gemini models are served with ALL_GEMINI_API_KEYS, which is not set")
    call = NativeCall(method, model, action, {k: v for k, v in query.items() if k != "key"}, body)
    return ChatRequest(shape="native", provider="gemini", model=model or "*", turns=[],
                       stream=action == "streamGenerateContent", native=call)


def check_body(body: bytes, config: Config) -> None:
    """A body is passed on as sent, but only a JSON object within the bounds (MAX_JSON_VALUES,
    MAX_JSON_DEPTH) spends a pool key: anything else is our own 400 or 413."""
    refuse_many_values(body, config.max_json_values)
    try:
        parsed = json.loads(body or b"{}")
    except RecursionError:
        raise ClientError(f"the body's JSON is nested more than {config.max_json_depth} levels "
                          "deep (MAX_JSON_DEPTH)") from None
    except ValueError:
        raise ClientError("the body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ClientError("the body must be a JSON object")
    refuse_deep_nesting(parsed, config.max_json_depth)


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
