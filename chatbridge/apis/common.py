"""What every client API module shares: its error handler's plumbing, JSON bodies and
streamed responses. Each API module renders errors in its own format; this turns whatever
was raised into a ChatBridgeError first, so no traceback and no key reaches a client."""

from collections.abc import Callable, Iterator
import re
from contextlib import suppress

from flask import Response, current_app, g, jsonify, request
from flask_limiter import RateLimitExceeded
from werkzeug.exceptions import HTTPException

from ..chat import ChatRequest, parse_strict_json
from ..errors import ChatBridgeError, ClientError, ClientGone, NotFound
from ..limits import rate_limited
from ..logs import RequestLog, log
from ..relay import Cancel
from ..service import current_service
from ..sse import StreamWriter

ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE")  # what a catch-all route takes
ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# a string, an empty array or object, or a comma or an opening bracket: what refuse_many_values counts
JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{][ \t\r\n]*[\]}]|[,{\[]')


def install_error_handler(scope, render: Callable) -> None:
    """Render every error raised under scope (a Blueprint, or the app for URLs no blueprint
    owns) with render(error) -> (JSON-able body or raw bytes, status)."""

    def handle(error: Exception):
        if isinstance(error, HTTPException) and (error.code is None or error.code < 400):
            return error  # redirects and the like are not errors
        if isinstance(error, ClientGone):  # nobody to answer; the upstream work has stopped
            g.chat_log.outcome = "client disconnected"
            return Response(status=499)
        error = as_chatbridge_error(error)
        error.message = error.message.encode("utf-8", "replace").decode("utf-8")  # always text
        g.chat_log.outcome = f"error: {error.message}"
        body, status = render(error)
        response = Response(body, content_type="application/json") if isinstance(body, bytes) \
            else jsonify(body)
        response.status_code = status
        response.headers.update(error.headers())
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="ChatBridge"'
        return response

    scope.register_error_handler(Exception, handle)


def as_chatbridge_error(error: Exception) -> ChatBridgeError:
    """Any exception as one of ours: werkzeug's 4xx keep their status (RATE_LIMIT's 429 gains
    its Retry-After), anything else is a logged 500 that says nothing more."""
    if isinstance(error, ChatBridgeError):
        return error
    if isinstance(error, RateLimitExceeded):
        return rate_limited(error)
    if isinstance(error, HTTPException):
        return http_error(error)
    log.exception("unhandled error in %s %s", request.method, request.path)
    return ChatBridgeError("internal server error")


def http_error(error: HTTPException) -> ChatBridgeError:
    """werkzeug's own errors (404, 405, 413, 415 …) with a message naming the problem."""
    if error.code == 404:
        return no_endpoint()
    messages = {
        405: f"{request.method} is not allowed on {request.path}",
        413: f"the request body is larger than the "
             f"{current_service().config.max_upload_mb:g} MB file limit allows",
    }
    allow = dict(error.get_headers()).get("Allow")
    return ClientError(messages.get(error.code, error.description or error.name), error.code,
                       headers={"Allow": allow} if allow else None)


def no_endpoint() -> NotFound:
    return NotFound(f"no such endpoint: {request.method} {request.path}")


def unknown_url() -> ClientError:
    """For an API's catch-all route (which gives unmatched URLs under its prefix that API's
    error shape): 405 with Allow when another route has this path, else 404."""
    adapter = current_app.create_url_adapter(request)
    allowed = set()
    for method in ANY_METHOD:
        with suppress(HTTPException):
            if adapter.match(method=method)[0] != request.endpoint:
                allowed.add(method)
    if not allowed:
        return no_endpoint()
    allowed |= {"OPTIONS"} | ({"HEAD"} if "GET" in allowed else set())
    return ClientError(f"{request.method} is not allowed on {request.path}", 405,
                       headers={"Allow": ", ".join(sorted(allowed))})


def read_json_body() -> dict:
    """The request's JSON object body, or a clear 415/400; its size and nesting bounded by
    MAX_JSON_VALUES (counted before parsing) and MAX_JSON_DEPTH."""
    if not request.is_json:
        raise ClientError("Content-Type must be application/json", 415)
    config = current_service().config
    refuse_many_values(request.get_data(), config.max_json_values)
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # the json module's own limit on nesting
        raise ClientError(f"the body's JSON is nested more than {config.max_json_depth} "
                          "levels deep (MAX_JSON_DEPTH)") from None
    if body is None:
        raise ClientError("the body is not valid JSON")
    if not isinstance(body, dict):
        raise ClientError("the body must be a JSON object")
    refuse_non_finite(request.get_data())
    refuse_deep_nesting(body, config.max_json_depth)
    if ESCAPED_SURROGATE.search(request.get_data()):  # cheap: most bodies have no \uD8xx at all
        refuse_lone_surrogates(body)
    return body


def refuse_non_finite(data: bytes) -> None:
    """A 400 for NaN, Infinity or -Infinity, which Python's json module reads and writes but
    JSON has not: a Responses request's `metadata` or tool schema came back with them in an
    answer no client could parse (found by trying). Parsed again only when the text holds
    such a word at all."""
    if (b"NaN" in data or b"Infinity" in data) and parse_strict_json(data) is None:
        raise ClientError("the body is not valid JSON: NaN and Infinity are not JSON numbers")


def refuse_many_values(data: bytes, limit: int) -> None:
    """A 413 when a JSON text holds more than limit values (object keys not counted), found
    before it is parsed, at C speed where bounds settle it and with work that stops at the
    limit where they do not. The values of a non-empty array or object are one more than the
    commas between them, so the count is the root, plus each non-empty container, plus each
    comma outside a string."""
    most = data.count(b",") + data.count(b"{") + data.count(b"[") + 1  # strings' own add to it
    if most <= limit:
        return
    # Each string is a value or an object key, and each key has a value of its own, so there
    # are at least half as many values as strings: a quarter of the unescaped quotes.
    if (data.count(b'"') - data.count(b'\\"')) // 4 > limit:
        raise too_many_values(limit)
    count = 1
    for token in JSON_TOKEN.finditer(data):
        if token.end() - token.start() == 1:  # a comma or an opening bracket, not a string
            count += 1
            if count > limit:
                raise too_many_values(limit)


def too_many_values(limit: int) -> ClientError:
    return ClientError(f"the body holds more than {limit} JSON values (MAX_JSON_VALUES)", 413)


def refuse_deep_nesting(body: dict, limit: int) -> None:
    """A 400 naming the top-level field that nests objects and arrays more than limit levels
    deep (the body itself is level 1), walked without recursion."""
    for name, value in body.items():
        stack = [(value, 2)] if isinstance(value, (dict, list)) else []
        while stack:
            value, depth = stack.pop()
            if depth > limit:
                raise ClientError(f"'{name}' is nested more than {limit} levels deep "
                                  "(MAX_JSON_DEPTH)")
            children = value.values() if isinstance(value, dict) else value
            stack += [(child, depth + 1) for child in children if isinstance(child, (dict, list))]


def refuse_lone_surrogates(body: dict) -> None:
    """A 400 naming the first field whose text holds half of a UTF-16 surrogate pair: it is not
    text, and no upstream (nor our own JSON writer) takes it."""
    try:
        where = lone_surrogate(body, "")
    except RecursionError:
        where = "the body"
    if where is not None:
        raise ClientError(f"'{where.lstrip('.') or 'the body'}' holds a lone surrogate "
                          "(\\ud800 to \\udfff), which is not text")


def lone_surrogate(value, where: str) -> str | None:
    """Where in a parsed JSON value a key or string holds a lone surrogate, if anywhere."""
    if isinstance(value, str):
        return where if any("\ud800" <= c <= "\udfff" for c in value) else None
    if isinstance(value, dict):
        children = [(f"{where}.{key}", key) for key in value]
        children += [(f"{where}.{key}", item) for key, item in value.items()]
    elif isinstance(value, list):
        children = [(f"{where}[{index}]", item) for index, item in enumerate(value)]
    else:
        return None
    return next((found for path, child in children if (found := lone_surrogate(child, path))), None)


def note_request(chat: ChatRequest) -> RequestLog:
    """Put what the request asks for on its log line."""
    record = g.chat_log
    record.shape, record.provider, record.model = chat.shape, chat.provider, chat.model
    return record


def stream_response(stream: Iterator, writer: StreamWriter, cancel: Cancel) -> Response:
    """A streamed answer; closing it (even before its first byte) stops the upstream work."""
    body = StreamBody(stream)
    response = Response(body, content_type=writer.content_type, direct_passthrough=True, headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no", **writer.headers})
    body.done = response.close  # the response's call_on_close callbacks: the hooks' and this
    response.call_on_close(cancel.cancel)
    return response


class StreamBody:
    """A stream handed to the WSGI server as it is (direct_passthrough): werkzeug's own wrapping
    cost a generator layer and a call per chunk (issue 13). The server iterates the stream
    itself, and its close() closes the stream, then runs the response's close callbacks, as
    werkzeug's ClosingIterator does."""

    def __init__(self, stream: Iterator):
        self.stream, self.done = stream, None

    def __iter__(self):
        return iter(self.stream)

    def close(self) -> None:
        close = getattr(self.stream, "close", None)
        try:
            if close is not None:
                close()
        finally:
            done, self.done = self.done, None  # response.close() calls this close again
            if done is not None:
                done()
