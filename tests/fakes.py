"""Fake Gemini and OpenAI-compatible upstreams on 127.0.0.1 that speak the wire formats in wire-formats.md."""

import json
import re
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit
import contextlib

GEMINI_MODEL = "gemini-2.5-flash"
GEMINI_RESPONSE_ID = "fAkErEsPoNsE01"
GEMINI_PROMPT_TOKENS = 7
OPENAI_MODEL = "deepseek-v3-671b"
OPENAI_ID = "chatcmpl-fake0001"
OPENAI_CREATED = 1767225600
OPENAI_PROMPT_TOKENS = 9
HANG_LIMIT = 30.0
JSON_TYPE = "application/json; charset=UTF-8"

GEMINI_STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
GEMINI_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
         "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
GEMINI_REQUEST_FIELDS = {
    "contents", "model", "tools", "labels", "systemInstruction", "system_instruction",
    "generationConfig", "generation_config", "safetySettings", "safety_settings",
    "toolConfig", "tool_config", "cachedContent", "cached_content",
}
GEMINI_ACTION = re.compile(r"^/v1beta/models/([^/:]+):(generateContent|streamGenerateContent|countTokens)$")
GEMINI_MODEL_PATH = re.compile(r"^/v1beta/models/([^/:]+)$")
GEMINI_MODELS = {GEMINI_MODEL: "Gemini 2.5 Flash", "gemini-2.5-pro": "Gemini 2.5 Pro"}
# Field names in camelCase; requests may spell them in snake_case too (proto3 JSON, wire-formats §3).
GEMINI_PART_FIELDS = {
    "text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
    "codeExecutionResult", "thought", "thoughtSignature", "videoMetadata", "mediaResolution", "partMetadata",
}
GEMINI_TOOL_FIELDS = {
    "functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext",
    "computerUse", "fileSearch", "googleMaps",
}
GEMINI_FUNCTION_FIELDS = {
    "name", "description", "parameters", "parametersJsonSchema", "response", "responseJsonSchema", "behavior",
}
GEMINI_GENERATION_FIELDS = {
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "presencePenalty",
    "frequencyPenalty", "seed", "responseMimeType", "responseSchema", "responseJsonSchema",
    "responseLogprobs", "logprobs", "responseModalities", "mediaResolution", "speechConfig",
    "thinkingConfig", "imageConfig", "enableEnhancedCivicAnswers",
}
GEMINI_COUNT_FIELDS = {"contents", "generateContentRequest"}
ERROR_TYPE = "type.googleapis.com/google.rpc."


@dataclass
class Reply:
    """What a fake sends for one request."""

    status: int = 200
    chunks: list = field(default_factory=list)
    headers: dict = field(default_factory=dict)
    chunked: bool = True
    hang: bool = False
    drop: bool = False
    silent: bool = False  # send no status line at all: with hang, wait for the client; else close at once
    reset: bool = False  # with drop: end with a TCP RST (SO_LINGER 0) instead of a FIN


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict
    headers: dict
    body: bytes
    json: object
    key: str | None
    model: str | None
    stream: bool
    at: float


# ---------------------------------------------------------------- shared builders

def dumps(obj, pretty=False):
    """Encode obj as UTF-8 JSON: one line, or indented by 2 like Google's REST bodies."""
    return json.dumps(obj, ensure_ascii=False, indent=2 if pretty else None).encode()


def json_reply(obj, status=200, pretty=False):
    """A Reply whose body is one JSON document."""
    return Reply(status=status, chunks=[dumps(obj, pretty)])


def count_tokens(text):
    """A deterministic stand-in for a tokenizer: one token per 4 characters, rounded up."""
    return -(-len(text or "") // 4)


def split_text(text, n=3):
    """Split text into about n pieces for streaming."""
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def split_every_byte(chunks):
    """Split every bytes item into one-byte pieces; other items (sleeps) pass through."""
    return [piece for item in chunks
            for piece in ([item[i:i + 1] for i in range(len(item))] if isinstance(item, bytes) else [item])]


def parse_json(body):
    """The body as JSON, or None when it is empty, not JSON or nested too deep to parse."""
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None


# ---------------------------------------------------------------- Gemini builders

def gemini_usage(candidates=0, thoughts=0, prompt=GEMINI_PROMPT_TOKENS):
    """Cumulative usageMetadata; candidatesTokenCount is absent while only thoughts have streamed."""
    usage = {"promptTokenCount": prompt}
    if candidates:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = prompt + candidates + thoughts
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def gemini_chunk(text=None, thought=None, finish=None, usage=None, parts=()):
    """One GenerateContentResponse; with no text, thought or other parts the content has no parts."""
    parts = ([{"text": thought, "thought": True}] if thought is not None else []) + \
        ([{"text": text}] if text is not None else []) + list(parts)
    content = {"parts": parts, "role": "model"} if parts else {"role": "model"}
    candidate = {"content": content, **({"finishReason": finish} if finish else {}), "index": 0}
    return {"candidates": [candidate], "usageMetadata": usage or gemini_usage(),
            "modelVersion": GEMINI_MODEL, "responseId": GEMINI_RESPONSE_ID}


def gemini_events(texts, thoughts=(), finish="STOP"):
    """Thought chunks then text chunks, cumulative usage, finishReason only on the last chunk."""
    pieces = [("thought", t) for t in thoughts] + [("text", t) for t in texts] or [("text", None)]
    counts = {"thought": 0, "text": 0}
    events = []
    for i, (kind, piece) in enumerate(pieces):
        counts[kind] += count_tokens(piece)
        last = i == len(pieces) - 1
        usage = gemini_usage(counts["text"], counts["thought"])
        events.append(gemini_chunk(**{kind: piece}, finish=finish if last else None, usage=usage))
    return events


def gemini_sse(events, crlf=True):
    """SSE frames `data: <one-line json>` ended by CRLF CRLF (as Gemini sends) or LF LF."""
    end = b"\r\n\r\n" if crlf else b"\n\n"
    return [b"data: " + dumps(event) + end for event in events]


def gemini_array(events):
    """The JSON-array stream sent without alt=sse: `[{...}\\n,\\r\\n{...}\\n]`, one write per object."""
    pieces = [b"\n,\r\n" + dumps(event, pretty=True) for event in events]
    pieces[0] = b"[" + pieces[0][4:]
    return pieces + [b"\n]"]


def gemini_stream(texts, thoughts=(), finish="STOP"):
    """A 200 SSE stream; finish=None leaves finishReason out, as in a stream that was cut off."""
    return Reply(chunks=gemini_sse(gemini_events(texts, thoughts, finish)))


def gemini_function_call_events(name, args, signature=None, text=None):
    """Optional text, then a last chunk whose one part is a functionCall (with its thoughtSignature)."""
    part = {"functionCall": {"name": name, "args": args}}
    if signature is not None:
        part["thoughtSignature"] = signature
    events = gemini_events([text], finish=None) if text else []
    tokens = count_tokens(text) + count_tokens(json.dumps(args))
    return events + [gemini_chunk(parts=[part], finish="STOP", usage=gemini_usage(tokens))]


def gemini_function_call(name, args, signature=None, text=None):
    """A 200 SSE stream ending in a functionCall part, finishReason STOP."""
    return Reply(chunks=gemini_sse(gemini_function_call_events(name, args, signature, text)))


def gemini_function_call_object(name, args, signature=None, text=None):
    """The same answer as one :generateContent object."""
    return json_reply(gemini_merge(gemini_function_call_events(name, args, signature, text)), pretty=True)


def gemini_merge(events):
    """Streamed chunks as the one object :generateContent gives: parts joined, the last chunk's metadata."""
    parts = []
    for event in events:
        for part in event["candidates"][0]["content"].get("parts", []):
            plain = set(part) <= {"text", "thought"}
            if parts and plain and set(parts[-1]) <= {"text", "thought"} \
                    and part.get("thought") == parts[-1].get("thought"):
                parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
            else:
                parts.append(dict(part))
    last = events[-1]
    content = {"parts": parts, "role": "model"} if parts else {"role": "model"}
    return {**last, "candidates": [{**last["candidates"][0], "content": content}]}


def gemini_answer(recorded, events):
    """The events in the form the request asked for: SSE, a JSON array, or one merged object."""
    if not recorded.stream:
        return json_reply(gemini_merge(events), pretty=True)
    if recorded.query.get("alt") == "sse":
        return Reply(chunks=gemini_sse(events))
    return Reply(chunks=gemini_array(events))


def gemini_status(code, status_name, message, details=()):
    """A google.rpc.Status error object."""
    error = {"code": code, "message": message, "status": status_name}
    if details:
        error["details"] = list(details)
    return {"error": error}


def gemini_error(status, status_name, message, details=()):
    """A pretty-printed google.rpc.Status error reply."""
    return json_reply(gemini_status(status, status_name, message, details), status, pretty=True)


def gemini_missing_key():
    """Gemini's 403 for a request without any API key."""
    return gemini_error(403, "PERMISSION_DENIED", (
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API."))


def gemini_invalid_key():
    """Gemini's 400 (not 401) for a wrong API key, detected by ErrorInfo reason API_KEY_INVALID."""
    message = "API key not valid. Please pass a valid API key."
    return gemini_error(400, "INVALID_ARGUMENT", message, [
        {"@type": ERROR_TYPE + "ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com"}},
        {"@type": ERROR_TYPE + "LocalizedMessage", "locale": "en-US", "message": message},
    ])


def gemini_429(retry_delay="12.5s", per_day=False):
    """429 RESOURCE_EXHAUSTED with Help, QuotaFailure and (unless retry_delay is None) RetryInfo."""
    period = "Day" if per_day else "Minute"
    message = "You exceeded your current quota, please check your plan and billing details."
    details = [
        {"@type": ERROR_TYPE + "Help", "links": [{"description": "Learn more about Gemini API quotas",
                                                  "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": ERROR_TYPE + "QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": f"GenerateRequestsPer{period}PerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": GEMINI_MODEL},
            "quotaValue": "250" if per_day else "10"}]},
    ]
    if retry_delay is not None:
        message += f" Please retry in {retry_delay}."
        details.append({"@type": ERROR_TYPE + "RetryInfo", "retryDelay": retry_delay})
    return gemini_error(429, "RESOURCE_EXHAUSTED", message, details)


def gemini_blocked(reason="SAFETY"):
    """HTTP 200 SSE whose only event carries promptFeedback.blockReason and no candidates."""
    event = {"promptFeedback": {"blockReason": reason, "safetyRatings": [
                 {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]},
             "usageMetadata": gemini_usage(), "modelVersion": GEMINI_MODEL, "responseId": GEMINI_RESPONSE_ID}
    return Reply(chunks=gemini_sse([event]))


def gemini_code_status(code):
    """The google.rpc.Status object Gemini uses for an HTTP code."""
    return gemini_status(code, GEMINI_STATUS_NAMES.get(code, "UNKNOWN"), GEMINI_MESSAGES.get(code, "Error."))


def gemini_midstream_error(texts, code=503):
    """Some text events, then `data: {"error": {...}}` instead of a finish."""
    events = gemini_events(texts, finish=None) + [gemini_code_status(code)]
    return Reply(chunks=gemini_sse(events))


def gemini_raw_error_tail(texts):
    """Some text events, then a raw pretty-printed error JSON without `data:`, then the end of the body."""
    tail = dumps(gemini_code_status(503), pretty=True)
    return Reply(chunks=gemini_sse(gemini_events(texts, finish=None)) + [tail])


def camel(name):
    """A proto field name in lowerCamelCase, which is how JSON parsers also accept snake_case."""
    return re.sub(r"_([a-z])", lambda match: match.group(1).upper(), name)


def unknown_field(obj, fields, where):
    """Gemini's message for the first field of obj it does not know, or None."""
    unknown = sorted(name for name in obj if camel(name) not in fields)
    if not unknown:
        return None
    at = f" at '{where}'" if where else ""
    return f'Invalid JSON payload received. Unknown name "{unknown[0]}"{at}: Cannot find field.'


def field(obj, name):
    """obj's value for a camelCase field spelled either way."""
    return next((value for key, value in obj.items() if camel(key) == name), None)


def gemini_problem(body):
    """Why Gemini would reject this request body with 400 INVALID_ARGUMENT, or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    unknown = sorted(set(body) - GEMINI_REQUEST_FIELDS)
    if unknown:
        return f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
    contents = body.get("contents")
    if not contents or not isinstance(contents, list):
        return "* GenerateContentRequest.contents: contents is not specified"
    if any(c.get("role", "user") not in ("user", "model") for c in contents):
        return "Please use a valid role: user, model."
    return (gemini_contents_problem(contents)
            or unknown_field(field(body, "generationConfig") or {}, GEMINI_GENERATION_FIELDS, "generation_config")
            or gemini_tools_problem(body.get("tools") or []))


def gemini_contents_problem(contents):
    """Unknown or missing parts, and function responses that answer no function call turn."""
    for i, content in enumerate(contents):
        parts = content.get("parts")
        if not parts:
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
        for j, part in enumerate(parts):
            problem = unknown_field(part, GEMINI_PART_FIELDS, f"contents[{i}].parts[{j}]")
            if problem:
                return problem
        responses = [p for p in parts if field(p, "functionResponse") is not None]
        if responses:
            previous = contents[i - 1] if i else {}
            calls = [p for p in previous.get("parts", []) if field(p, "functionCall") is not None]
            if not calls or previous.get("role") != "model":
                return ("Please ensure that function response turn comes immediately after a function "
                        "call turn.")
            if len(calls) != len(responses):
                return ("Please ensure that the number of function response parts is equal to the number "
                        "of function call parts of the function call turn.")
    return None


def gemini_tools_problem(tools):
    """Unknown fields in tools or function declarations, or a declaration without a name."""
    for i, tool in enumerate(tools):
        problem = unknown_field(tool, GEMINI_TOOL_FIELDS, f"tools[{i}]")
        if problem:
            return problem
        for j, declaration in enumerate(field(tool, "functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{j}]"
            problem = unknown_field(declaration, GEMINI_FUNCTION_FIELDS, where)
            if problem:
                return problem
            if not declaration.get("name"):
                return f"* GenerateContentRequest.{where}.name: Name cannot be empty."
    return None


def gemini_count_problem(body):
    """Why Gemini would reject this countTokens body, or None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    problem = unknown_field(body, GEMINI_COUNT_FIELDS, "")
    if problem:
        return problem
    request = field(body, "generateContentRequest")
    if request is not None:
        return gemini_problem({k: v for k, v in request.items() if k != "model"})
    return gemini_problem({"contents": body.get("contents")})


def gemini_texts(body):
    """Every text part of a request's contents and system instruction, a countTokens body included."""
    request = field(body, "generateContentRequest") or body
    turns = list(request.get("contents") or []) + [field(request, "systemInstruction") or {}]
    return [part["text"] for turn in turns for part in turn.get("parts", []) if "text" in part]


def gemini_last_user_text(contents):
    """The joined text parts of the last user turn."""
    for content in reversed(contents):
        if content.get("role", "user") == "user":
            return "".join(p["text"] for p in content.get("parts", []) if "text" in p)
    return ""


# ---------------------------------------------------------------- OpenAI builders

def openai_usage(completion=0, reasoning=0):
    """A usage object; reasoning tokens are reported inside completion_tokens."""
    total_completion = completion + reasoning
    usage = {"prompt_tokens": OPENAI_PROMPT_TOKENS, "completion_tokens": total_completion,
             "total_tokens": OPENAI_PROMPT_TOKENS + total_completion}
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def openai_chunk(delta=None, finish=None, usage=None):
    """One chat.completion.chunk; delta=None gives the usage chunk with `choices: []`."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {"id": OPENAI_ID, "object": "chat.completion.chunk", "created": OPENAI_CREATED,
            "model": OPENAI_MODEL, "choices": choices, "usage": usage}


def openai_sse(objs):
    """SSE frames `data: <json>\\n\\n`; a str item (e.g. "[DONE]") is sent verbatim."""
    return [b"data: " + (obj.encode() if isinstance(obj, str) else
                         json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()) + b"\n\n"
            for obj in objs]


def openai_stream(texts, reasoning=(), finish="stop", done=True, keepalive=False, usage=False):
    """A 200 chat.completion.chunk stream; finish=None and done=False make it a cut-off stream."""
    objs = [openai_chunk({"role": "assistant", "content": ""})]
    objs += [openai_chunk({"content": None, "reasoning_content": r}) for r in reasoning]
    after = {"reasoning_content": None} if reasoning else {}
    objs += [openai_chunk({"content": t, **after}) for t in texts]
    objs += [openai_chunk({}, finish)] if finish else []
    tokens = sum(map(count_tokens, texts)), sum(map(count_tokens, reasoning))
    objs += [openai_chunk(usage=openai_usage(*tokens))] if usage else []
    frames = openai_sse(objs + (["[DONE]"] if done else []))
    if keepalive:
        frames = [piece for frame in frames for piece in (b": keep-alive\n\n", frame)]
    return Reply(chunks=frames)


def openai_completion(text, reasoning=None, finish="stop"):
    """A non-streamed chat.completion; reasoning adds DeepSeek's message.reasoning_content."""
    message = {"role": "assistant", "content": text, "refusal": None}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return json_reply({
        "id": OPENAI_ID, "object": "chat.completion", "created": OPENAI_CREATED, "model": OPENAI_MODEL,
        "choices": [{"index": 0, "finish_reason": finish, "logprobs": None, "message": message}],
        "usage": openai_usage(count_tokens(text), count_tokens(reasoning)),
    })


def openai_error(status, message, code="invalid_request_error", type_="invalid_request_error"):
    """An OpenAI-style error reply with all four keys."""
    return json_reply({"error": {"message": message, "type": type_, "param": None, "code": code}}, status)


def openai_insufficient_quota():
    """OpenAI's 429 for an account out of credit (code insufficient_quota): a billing error,
    not a rate limit; listing models still works with such a key."""
    return openai_error(429, "You exceeded your current quota, please check your plan and "
                             "billing details.", code="insufficient_quota", type_="insufficient_quota")


def openai_midstream_error(texts):
    """Some content deltas, then `data: {"error": {...}}` and no [DONE]."""
    error = {"error": {"message": "The server had an error while processing your request.",
                       "type": "server_error", "param": None, "code": None}}
    objs = [openai_chunk({"role": "assistant", "content": ""})] + [openai_chunk({"content": t}) for t in texts]
    return Reply(chunks=openai_sse(objs + [error]))


def openai_tool_call_stream(name, argument_pieces, call_id="call_fake1", usage=False):
    """A role chunk, tool_calls deltas (id, type and name first, then argument pieces), finish tool_calls."""
    first = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
    objs = [openai_chunk({"role": "assistant", "content": None}), openai_chunk({"tool_calls": [first]})]
    objs += [openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
             for piece in argument_pieces]
    objs += [openai_chunk({}, "tool_calls")]
    objs += [openai_chunk(usage=openai_usage(count_tokens("".join(argument_pieces))))] if usage else []
    return Reply(chunks=openai_sse(objs + ["[DONE]"]))


def openai_tool_call_completion(name, arguments, call_id="call_fake1"):
    """A non-streamed chat.completion whose message calls one function."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
    return json_reply({
        "id": OPENAI_ID, "object": "chat.completion", "created": OPENAI_CREATED, "model": OPENAI_MODEL,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": message}],
        "usage": openai_usage(count_tokens(arguments)),
    })


def openai_problem(body):
    """Why an OpenAI-compatible upstream would reject this chat body with 400, or None."""
    if not isinstance(body, dict) or not body.get("messages"):
        return "Invalid request: 'messages' is required"
    called = set()
    for i, message in enumerate(body["messages"]):
        called |= {call.get("id") for call in message.get("tool_calls") or []}
        if message.get("role") == "tool" and message.get("tool_call_id") not in called:
            return (f"Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    f"message with 'tool_calls'. (messages.[{i}].role)")
    return None


def openai_last_user_text(messages):
    """The text of the last user message, whose content is a string or a list of parts."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content") or ""
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


# ---------------------------------------------------------------- HTTP machinery

def merge_headers(*dicts):
    """Merge header dicts case-insensitively, later ones winning."""
    merged = {}
    for headers in dicts:
        merged.update({name.lower(): (name, value) for name, value in headers.items()})
    return list(merged.values())


class _HTTPServer(ThreadingHTTPServer):
    """A threaded server with a deep accept queue that stays quiet about clients going away."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        """Ignore socket errors from vanished clients; report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Reads one request, asks the owning FakeServer for a Reply and writes it."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def setup(self):
        """Register the connection so stop() can close it."""
        super().setup()
        self.server.fake.track(self.connection, True)

    def finish(self):
        """Unregister the connection."""
        self.server.fake.track(self.connection, False)
        super().finish()

    def log_message(self, format, *args):
        """Stay silent."""

    def do_GET(self):
        """Serve a GET."""
        self.serve()

    def do_POST(self):
        """Serve a POST."""
        self.serve()

    def serve(self):
        """Record the request and send the reply, noting a client that went away mid-write."""
        fake = self.server.fake
        recorded = fake.record(self.command, self.path, self.headers, self.read_body())
        try:
            self.send_reply(fake.reply_for(recorded), fake.content_type(recorded))
        except (BrokenPipeError, ConnectionResetError):
            fake.note_disconnect()
            self.close_connection = True

    def read_body(self):
        """Read the whole request body so the connection can be reused."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked_body()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def read_chunked_body(self):
        """Read a chunked request body and its (ignored) trailers."""
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline().strip():
            pass
        return body

    def send_reply(self, reply, content_type):
        """Write the status, headers and body items of a Reply, then end it as the Reply asks."""
        if reply.silent:
            self.close_connection = True
            return self.wait_for_close() if reply.hang else self.drop()
        self.send_response(reply.status)
        framing = {"Transfer-Encoding": "chunked"} if reply.chunked else {"Connection": "close"}
        for name, value in merge_headers({"Content-Type": content_type}, framing, reply.headers):
            self.send_header(name, value)
        self.end_headers()
        for item in reply.chunks:
            if isinstance(item, (int, float)):
                time.sleep(item)
            elif item:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(item), item) if reply.chunked else item)
        self.close_connection = self.close_connection or reply.hang or reply.drop or not reply.chunked
        if reply.hang:
            self.wait_for_close()
        elif reply.drop:
            self.drop(reset=reply.reset)
        elif reply.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def wait_for_close(self):
        """Leave the response unfinished until the client closes (recorded) or HANG_LIMIT passes."""
        fake = self.server.fake
        deadline = time.monotonic() + HANG_LIMIT
        while time.monotonic() < deadline and not fake.stopping.is_set():
            if self.peer_closed():
                fake.note_disconnect()
                return

    def peer_closed(self):
        """Whether the client has closed its end, polling for up to 50 ms. (poll, not select:
        a long test session keeps enough connections open to pass select's limit of 1024
        descriptors, and select then fails as if the client had gone.)"""
        try:
            poller = select.poll()
            poller.register(self.connection, select.POLLIN)
            if not poller.poll(50):
                return False
            if self.connection.recv(1, socket.MSG_PEEK):
                time.sleep(0.05)
                return False
            return True
        except (OSError, ValueError):
            return True

    def drop(self, reset=False):
        """Close the socket without the terminating 0-chunk; with reset, by a TCP RST (the
        kernel sends one when a socket lingering 0 seconds is closed)."""
        with contextlib.suppress(OSError):
            if reset:
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                return
            self.connection.shutdown(socket.SHUT_RDWR)


class FakeServer:
    """A recording fake upstream: scripted replies, or the subclass's default behaviour."""

    prefix = ""

    def __init__(self):
        self.requests = []
        self.disconnects = []
        self.valid_keys = None
        self.script = None
        self.stopping = threading.Event()
        self._changed = threading.Condition()
        self._connections = set()
        self._httpd = None

    def start(self):
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        """Stop serving, end hanging replies, and close the listening and open sockets."""
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._changed:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def port(self):
        """The bound port."""
        return self._httpd.server_address[1]

    @property
    def base_url(self):
        """The URL a client configures as its API base."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def reset(self):
        """Forget requests, disconnects, script and valid_keys."""
        with self._changed:
            self.requests.clear()
            self.disconnects.clear()
        self.script = None
        self.valid_keys = None

    def keys_seen(self):
        """The key of every recorded request, in order."""
        return [r.key for r in self.requests]

    def wait_for_disconnects(self, n, timeout):
        """Wait until at least n client disconnects have been recorded."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.disconnects) >= n, timeout)

    def track(self, sock, is_open):
        """Add or remove an open client connection."""
        with self._changed:
            (self._connections.add if is_open else self._connections.discard)(sock)

    def note_disconnect(self):
        """Record that a client went away."""
        with self._changed:
            self.disconnects.append(time.monotonic())
            self._changed.notify_all()

    def record(self, method, target, headers, body):
        """Build and store the Recorded for a request."""
        at = time.monotonic()
        url = urlsplit(target)
        path, query = unquote(url.path), dict(parse_qsl(url.query, keep_blank_values=True))
        headers = {name.lower(): value for name, value in headers.items()}
        data = parse_json(body)
        key, model, stream = self.identify(path, query, headers, data)
        recorded = Recorded(method, path, query, headers, body, data, key, model, stream, at)
        with self._changed:
            self.requests.append(recorded)
        return recorded

    def reply_for(self, recorded):
        """The script's Reply, else the default; an exception becomes a visible 500."""
        try:
            reply = (self.script and self.script(recorded)) or self.default_reply(recorded)
            return self.adapt(recorded, reply)
        except Exception as exc:
            return Reply(500, [f"fake upstream failed: {exc!r}".encode()], {"Content-Type": "text/plain"})

    def default_reply(self, recorded):
        """Route, then check the key, then answer."""
        route = self.route(recorded)
        if route is None:
            return self.not_found()
        if not recorded.key:
            return self.missing_key()
        if self.valid_keys is not None and recorded.key not in self.valid_keys:
            return self.invalid_key()
        return route(recorded)

    def content_type(self, recorded):
        """The Content-Type used when a Reply does not set one (errors are overridden in adapt)."""
        return "text/event-stream" if self.is_sse(recorded) else JSON_TYPE

    def adapt(self, recorded, reply):
        """Give error replies a JSON Content-Type unless they chose their own."""
        if reply.status < 400 or any(name.lower() == "content-type" for name in reply.headers):
            return reply
        return replace(reply, headers={"Content-Type": JSON_TYPE, **reply.headers})

    def is_sse(self, recorded):
        """Whether the request asked for an SSE stream."""
        return recorded.stream

    def identify(self, path, query, headers, data):
        """Return (key, model, stream) for a request."""
        raise NotImplementedError

    def route(self, recorded):
        """The bound method answering this request, or None."""
        raise NotImplementedError


class FakeGemini(FakeServer):
    """Fake generativelanguage.googleapis.com/v1beta."""

    prefix = "/v1beta"
    missing_key = staticmethod(gemini_missing_key)
    invalid_key = staticmethod(gemini_invalid_key)

    @staticmethod
    def not_found():
        """Gemini's 404."""
        return gemini_error(404, "NOT_FOUND", "Requested entity was not found.")

    def identify(self, path, query, headers, data):
        """Key from x-goog-api-key or ?key=, model and method from the path."""
        match = GEMINI_ACTION.match(path)
        model, action = match.groups() if match else (None, None)
        if not match and (match := GEMINI_MODEL_PATH.match(path)):
            model = match.group(1)
        return headers.get("x-goog-api-key") or query.get("key"), model, action == "streamGenerateContent"

    def is_sse(self, recorded):
        """Only streamGenerateContent?alt=sse is SSE."""
        return recorded.stream and recorded.query.get("alt") == "sse"

    def adapt(self, recorded, reply):
        """Array-wrap a JSON error body when the request used the JSON-array stream (no alt=sse)."""
        reply = super().adapt(recorded, reply)
        array_stream = recorded.stream and not self.is_sse(recorded)
        if reply.status < 400 or not array_stream or len(reply.chunks) != 1:
            return reply
        body = reply.chunks[0]
        return replace(reply, chunks=[b"[" + body + b"\n]"]) if body.lstrip().startswith(b"{") else reply

    def route(self, recorded):
        """models list and one model on GET, generation and token counts on POST."""
        if recorded.method == "GET" and recorded.path == "/v1beta/models":
            return self.list_models
        if recorded.method == "GET" and GEMINI_MODEL_PATH.match(recorded.path):
            return self.get_model
        if recorded.method == "POST" and GEMINI_ACTION.match(recorded.path):
            return self.count if recorded.path.endswith(":countTokens") else self.generate
        return None

    @staticmethod
    def model_object(name):
        """One Model resource as models.list and models.get give it."""
        return {"name": f"models/{name}", "version": "001", "displayName": GEMINI_MODELS[name],
                "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
                "thinking": True}

    def list_models(self, recorded):
        """GET /v1beta/models."""
        return json_reply({"models": [self.model_object(name) for name in GEMINI_MODELS]}, pretty=True)

    def get_model(self, recorded):
        """GET /v1beta/models/{model}; 404 for a name not in the list."""
        if recorded.model not in GEMINI_MODELS:
            return gemini_error(404, "NOT_FOUND", f"models/{recorded.model} is not found for API version "
                                                  "v1beta, or is not supported for generateContent.")
        return json_reply(self.model_object(recorded.model), pretty=True)

    def count(self, recorded):
        """POST /v1beta/models/{model}:countTokens: totalTokens of all the text."""
        problem = gemini_count_problem(recorded.json)
        if problem:
            return gemini_error(400, "INVALID_ARGUMENT", problem)
        return json_reply({"totalTokens": count_tokens("".join(gemini_texts(recorded.json)))}, pretty=True)

    def generate(self, recorded):
        """Echo the last user turn as an SSE stream, a JSON-array stream or one object."""
        problem = gemini_problem(recorded.json)
        if problem:
            return gemini_error(400, "INVALID_ARGUMENT", problem)
        text = "You said: " + gemini_last_user_text(recorded.json["contents"])
        if not recorded.stream:
            return json_reply(gemini_events([text])[0], pretty=True)
        events = gemini_events(split_text(text))
        return Reply(chunks=gemini_sse(events) if self.is_sse(recorded) else gemini_array(events))


class FakeOpenAI(FakeServer):
    """Fake OpenAI-compatible gateway under the ZJU prefix /api/ai/v1 (and plain /v1)."""

    prefix = "/api/ai/v1"
    prefixes = ("/api/ai/v1", "/v1")

    @staticmethod
    def missing_key():
        """401 for a request without a Bearer token."""
        return openai_error(401, "You didn't provide an API key. You need to provide your API key in an "
                                 "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                            code="invalid_api_key")

    @staticmethod
    def invalid_key():
        """401 for a wrong key."""
        return openai_error(401, "Incorrect API key provided", code="invalid_api_key")

    @staticmethod
    def not_found():
        """404 for an unknown route."""
        return openai_error(404, "Not found", code="not_found")

    def identify(self, path, query, headers, data):
        """Key from the Bearer token, model and stream from the body."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        body = data if isinstance(data, dict) else {}
        key = token.strip() if scheme.lower() == "bearer" else ""
        return key or None, body.get("model"), bool(body.get("stream"))

    def route(self, recorded):
        """chat/completions on POST, models on GET, under either prefix."""
        routes = {("POST", "/chat/completions"): self.chat, ("GET", "/models"): self.list_models}
        for prefix in self.prefixes:
            if recorded.path.startswith(prefix + "/"):
                return routes.get((recorded.method, recorded.path[len(prefix):]))
        return None

    def list_models(self, recorded):
        """GET {prefix}/models."""
        return json_reply({"object": "list", "data": [
            {"id": name, "object": "model", "created": OPENAI_CREATED, "owned_by": "system"}
            for name in ("deepseek-r1-671b", "deepseek-v3-671b")]})

    def chat(self, recorded):
        """Echo the last user message, streamed or as one chat.completion."""
        body = recorded.json
        problem = openai_problem(body)
        if problem:
            return openai_error(400, problem)
        text = "You said: " + openai_last_user_text(body["messages"])
        if not recorded.stream:
            return openai_completion(text)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return openai_stream(split_text(text), usage=include_usage)
