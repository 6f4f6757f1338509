"""The OpenAPI 3.1 contract of the client APIs under /api and /v1, served as JSON at
GET /openapi.json (no access token needed, never rate-limited).

- The document is data: DOCUMENT is built once, at import, from the schemas below and the
  coding agents' APIs in openapi_agents.py; the small helpers in openapi_base.py only spell
  out what every operation of an API repeats (its error format, its statuses, Retry-After on
  a 429).
- It covers /api/chat (its three request shapes as oneOf), /api/upload, /api/chats/{chat_id},
  /api/keys, /v1/chat/completions, /v1/models, /v1/models/{model}, /v1/responses and
  /v1/responses/{response_id}, Anthropic's /v1/messages and /v1/messages/count_tokens, /healthz
  and itself. The Gemini pass-through (/v1beta, and POST /v1/models/{model}:{method}) is
  Google's own API and out of its scope; so are the chat page and the catch-alls that answer
  unknown URLs.
- tests/test_openapi.py keeps it honest: its paths and methods are exactly the app's routes,
  it validates as OpenAPI 3.1, and schemathesis runs it against a live server.
"""

from flask import Blueprint, jsonify

from .openapi_agents import AGENT_SCHEMAS, V1_COUNT_TOKENS, V1_MESSAGES, V1_RESPONSE, V1_RESPONSES
from .openapi_agents import V1_RESPONSE_CANCEL, V1_RESPONSE_INPUT_ITEMS
from .openapi_base import (
    CHAT_ID, MODEL, NULLABLE_STRING, POSITIVE, SSE, TEMPERATURE,
    api_errors, json_body, obj, openai_errors, ref, sse_events,
)

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi():
    """This service's OpenAPI document."""
    return jsonify(DOCUMENT)


# ---------------------------------------------------------------- request schemas


FILE_DATA = obj({
    "mime_type": {"type": "string"},
    "data": {"type": "string", "description": "base64 (a data: URL is accepted too)"},
    "filename": {"type": "string"},
}, ("mime_type", "data"), description="A file, as /api/upload returns it; at most MAX_UPLOAD_MB")

SOURCE_FIELDS = {
    "model": MODEL,
    "system_content": {"type": "string"},
    "history": {"type": "array", "description": "Earlier turns, at most MAX_TURNS",
                "items": obj({"role": {"enum": ["user", "assistant", "model"]},
                              "content": {"type": "string"}}, ("role", "content"))},
    "file_data": FILE_DATA,
    "file_id": {**CHAT_ID, "description": "A file_id /api/upload returned"},
    "chat_id": {**CHAT_ID, "description": "A conversation ChatBridge keeps, chosen by the client"},
    "temperature": TEMPERATURE,
    "max_tokens": POSITIVE,
}

SHAPE_A = obj({"message": {"type": "string", "description": "May be empty when a file is sent"},
               **SOURCE_FIELDS}, ("message",),
              title="Shape A (message): always streams",
              **{"not": {"anyOf": [{"required": ["user_content"]}, {"required": ["messages"]}]}})

SHAPE_B = obj({"user_content": {"type": "string", "description": "May be empty when a file is sent"},
               "stream": {"type": "boolean"}, **SOURCE_FIELDS}, ("user_content",),
              title="Shape B (user_content): a chat.completion, or chunks with stream: true",
              **{"not": {"required": ["messages"]}})

UI_PART = obj({
    "type": {"type": "string", "description": "text and file parts are read; others are ignored"},
    "text": {"type": "string"},
    "url": {"type": "string", "description": "a file part's base64 data: URL"},
    "mediaType": {"type": "string"},
    "filename": {"type": "string"},
}, ("type",))

USE_CHAT = obj({
    "id": {"type": "string"},
    "trigger": {"type": "string"},
    "model": MODEL,
    "messages": {"type": "array", "minItems": 1,
                 "description": "UI messages, at most MAX_TURNS; the last is the user's",
                 "items": obj({"id": {"type": "string"},
                               "role": {"enum": ["system", "user", "assistant"]},
                               "parts": {"type": "array", "items": UI_PART,
                                         "description": "At most MAX_PARTS"}},
                              ("role", "parts"))},
    "temperature": TEMPERATURE,
    "max_tokens": POSITIVE,
}, ("messages",), title="The Vercel AI SDK's useChat (messages): the UI message stream")

CONTENT_PART = {"oneOf": [
    obj({"type": {"const": "text"}, "text": {"type": "string"}}, ("type", "text")),
    obj({"type": {"const": "image_url"},
         "image_url": obj({"url": {"type": "string", "description": "a base64 data: URL"}},
                          ("url",))}, ("type", "image_url")),
    obj({"type": {"const": "refusal"}, "refusal": {"type": "string"}}, ("type",)),
]}
TOOL_CALL = obj({
    "id": {"type": "string"},
    "type": {"const": "function"},
    "function": obj({"name": {"type": "string"}, "arguments": {"type": "string"}}, ("name",)),
    "extra_content": obj({"google": obj({"thought_signature": {"type": "string"}})},
                         description="Gemini's thought signature, as Google carries it"),
}, ("id", "function"))

OPENAI_MESSAGE = obj({
    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"oneOf": [{"type": "string"}, {"type": "null"},
                          {"type": "array", "items": CONTENT_PART,
                           "description": "At most MAX_PARTS"}]},
    "tool_calls": {"type": "array", "items": TOOL_CALL},
    "tool_call_id": {"type": "string"},
    "reasoning_content": {"type": "string"},
    "name": {"type": "string"},
}, ("role",))

CHAT_COMPLETION_REQUEST = obj({
    "model": MODEL,
    "messages": {"type": "array", "minItems": 1, "items": OPENAI_MESSAGE,
                 "description": "At most MAX_TURNS; at least one user message"},
    "stream": {"type": "boolean"},
    "stream_options": obj({"include_usage": {"type": "boolean"}}),
    "temperature": TEMPERATURE,
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "max_tokens": POSITIVE,
    "max_completion_tokens": POSITIVE,
    "n": {"const": 1},
    "stop": {"oneOf": [{"type": "string"},
                       {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
    "response_format": obj({
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": obj({"name": {"type": "string"}, "schema": {"type": "object"}}),
    }, ("type",)),
    "tools": {"type": "array", "description": "At most MAX_TOOLS", "items": obj({
        "type": {"const": "function"},
        "function": obj({"name": {"type": "string"}, "description": {"type": "string"},
                         "parameters": {"type": "object"}}, ("name",)),
    }, ("type", "function"))},
    "tool_choice": {"oneOf": [
        {"enum": ["none", "auto", "required"]},
        obj({"type": {"const": "function"},
             "function": obj({"name": {"type": "string"}}, ("name",))}, ("function",)),
    ]},
}, ("messages",), description="OpenAI's Chat Completions request, as ChatBridge takes it; "
                               "other fields pass through to an OpenAI-compatible upstream")

# ---------------------------------------------------------------- answer schemas

USAGE = obj({"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
             "total_tokens": {"type": "integer"}})
ANSWER_TOOL_CALL = obj({"id": {"type": "string"}, "type": {"const": "function"},
                        "function": obj({"name": {"type": "string"},
                                         "arguments": {"type": "string"}})})
CHAT_COMPLETION = obj({
    "id": {"type": "string"},
    "object": {"const": "chat.completion"},
    "created": {"type": "integer"},
    "model": {"type": "string"},
    "choices": {"type": "array", "items": obj({
        "index": {"type": "integer"},
        "message": obj({"role": {"const": "assistant"}, "content": NULLABLE_STRING,
                        "reasoning_content": {"type": "string"},
                        "tool_calls": {"type": "array", "items": ANSWER_TOOL_CALL}}, ("role",)),
        "finish_reason": {"enum": ["stop", "length", "content_filter", "tool_calls"]},
    }, ("index", "message", "finish_reason"))},
    "usage": USAGE,
}, ("id", "object", "created", "model", "choices"))

MODEL_ENTRY = obj({"id": {"type": "string"}, "object": {"const": "model"},
                   "created": {"type": "integer"}, "owned_by": {"type": "string"}},
                  ("id", "object", "created", "owned_by"))

FAILURE_CLASS_NAMES = ["rate_limited", "invalid", "billing", "overloaded", "broken", "unreachable",
                       "rejected"]
KEY_STATUS = obj({
    "key": {"type": "string", "description": "The key's last four characters"},
    "group": NULLABLE_STRING,
    "state": {"enum": ["ok", "cooling", "invalid"]},
    "cooling_until": {"type": "object", "additionalProperties": {"type": "string"},
                      "description": "Per model, until when (ISO 8601)"},
    "invalid_until": NULLABLE_STRING,
    "requests": {"type": "integer"},
    "failures": {"type": "integer"},
    "last_error": NULLABLE_STRING,
    "last_used": NULLABLE_STRING,
    "reason": {"enum": [*FAILURE_CLASS_NAMES, None],
               "description": "Why the key rests (the failure class), or null"},
    "today": ref("KeyDay"),
    "days": {"type": "array", "items": ref("KeyDay"),
             "description": "The last 7 days that have data, newest first"},
    "recent": {"type": "array", "minItems": 60, "maxItems": 60, "items": obj({
        "minute": {"type": "string", "description": "YYYY-MM-DDTHH:MM:00Z"},
        "requests": {"type": "integer"}, "failures": {"type": "integer"},
    }, ("minute", "requests", "failures")), "description": "The last hour by minute, oldest first"},
    "checked": {"oneOf": [{"type": "null"}, ref("KeyCheck")],
                "description": "The last health check (a model list with the key)"},
}, ("key", "state", "requests", "failures", "reason", "today", "days", "recent", "checked"))
FAILURE_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"},
                  "description": "Failures by class (rate_limited, invalid, billing, ...)"}
KEY_DAY = obj({
    "date": {"type": "string", "description": "YYYY-MM-DD: Pacific time for Gemini, else UTC"},
    "requests": {"type": "integer"}, "failures": FAILURE_COUNTS,
    "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
}, ("date", "requests", "failures", "input_tokens", "output_tokens"))
KEY_CHECK = obj({"at": {"type": "string"}, "result": {"enum": ["ok", *FAILURE_CLASS_NAMES]},
                 "message": {"type": "string"}}, ("result", "message"))

CHUNK = obj({
    "id": {"type": "string"},
    "object": {"const": "chat.completion.chunk"},
    "created": {"type": "integer"},
    "model": {"type": "string"},
    "choices": {"type": "array", "items": obj({
        "index": {"type": "integer"},
        "delta": obj({"role": {"const": "assistant"}, "content": NULLABLE_STRING,
                      "reasoning_content": {"type": "string"},
                      "tool_calls": {"type": "array", "items": {"type": "object"}}}),
        "finish_reason": {"enum": ["stop", "length", "content_filter", "tool_calls", None]},
    }, ("index", "delta", "finish_reason"))},
    "usage": {"oneOf": [USAGE, {"type": "null"}]},
}, ("id", "object", "created", "model", "choices"))

SHAPE_A_EVENT = {"oneOf": [
    obj({"text": {"type": "string"}}, ("text",)),
    obj({"reasoning": {"type": "string"}}, ("reasoning",)),
    obj({"done": {"const": True}, "finish_reason": {"enum": ["length", "content_filter", "other"]}},
        ("done",)),
]}
UI_MESSAGE_CHUNK = obj({"type": {"enum": [
    "start", "text-start", "text-delta", "text-end", "reasoning-start", "reasoning-delta",
    "reasoning-end", "finish", "error"]}, "id": {"type": "string"}, "delta": {"type": "string"},
    "messageId": {"type": "string"}, "errorText": {"type": "string"},
    "messageMetadata": obj({"finishReason": {"type": "string"}})}, ("type",))


API_STREAM = sse_events(
    "Server-Sent Events, `data: <json>` each; `: ping` comments while the model is silent. "
    "Shape A: {text} and {reasoning} deltas, then exactly one {done: true} (with finish_reason "
    "when not a plain stop) or {error}. Shape B: chat.completion.chunk objects, no [DONE], "
    "{error: message} on failure. useChat: the AI SDK 5 UI message stream (start, text-*, "
    "reasoning-*, finish, error, then [DONE]), with the header "
    "x-vercel-ai-ui-message-stream: v1.",
    SHAPE_A_EVENT, ref("ChatCompletionChunk"), UI_MESSAGE_CHUNK, ref("Error"))
V1_STREAM = sse_events(
    "Server-Sent Events of chat.completion.chunk objects (reasoning as reasoning_content "
    "deltas; a usage chunk with stream_options.include_usage), then `data: [DONE]`; a failure "
    "after the first chunk is an OpenAI error object, then [DONE].",
    ref("ChatCompletionChunk"), ref("OpenAIError"))

SCHEMAS = {
    "Error": obj({"error": {"type": "string"}}, ("error",),
                 description="Every /api error, and every other URL that does not exist"),
    "OpenAIError": obj({"error": obj({
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": NULLABLE_STRING, "code": NULLABLE_STRING,
    }, ("message", "type", "param", "code"))}, ("error",),
        description="Every /v1 error, in OpenAI's shape"),
    "ChatShapeA": SHAPE_A,
    "ChatShapeB": SHAPE_B,
    "UseChatRequest": USE_CHAT,
    "ChatCompletionRequest": CHAT_COMPLETION_REQUEST,
    "ChatCompletion": CHAT_COMPLETION,
    "ChatCompletionChunk": CHUNK,
    "Model": MODEL_ENTRY,
    "KeyStatus": KEY_STATUS,
    "KeyDay": KEY_DAY,
    "KeyCheck": KEY_CHECK,
}

SCHEMAS.update(AGENT_SCHEMAS)

# ---------------------------------------------------------------- operations

CHAT_ID_PARAMETER = {"name": "chat_id", "in": "path", "required": True, "schema": CHAT_ID}

API_CHAT = {"post": {
    "operationId": "chat",
    "summary": "A chat answer, in one of three request shapes",
    "description": "The shape is told by the body's field: `messages` (useChat), else "
                   "`user_content` (shape B), else `message` (shape A). Problems found before "
                   "any upstream is contacted are JSON errors with a status; once streaming, "
                   "a failure is one terminal error event.",
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        ref("ChatShapeA"), ref("ChatShapeB"), ref("UseChatRequest")]}, "examples": {
        "shape_a": {"summary": "Shape A: a stream", "value": {
            "message": "hello there", "model": "echo", "history": [
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]}},
        "shape_b": {"summary": "Shape B: a chat.completion", "value": {
            "user_content": "Hi!", "model": "echo", "system_content": "Be brief."}},
        "shape_b_stream": {"summary": "Shape B: chunks", "value": {
            "user_content": "Hi!", "stream": True}},
        "use_chat": {"summary": "useChat: the UI message stream", "value": {
            "id": "chat-1", "trigger": "submit-message", "messages": [
                {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hi!"}]}]}},
    }}}},
    "responses": {
        "200": {"description": "The answer: a stream (shape A, useChat, shape B with stream: "
                               "true) or a chat.completion (shape B)",
                "content": {SSE: API_STREAM,
                            "application/json": {"schema": ref("ChatCompletion")}}},
        **api_errors(400, 401, 404, 408, 413, 415, 429, 500, 503),
    },
}}

API_UPLOAD = {"post": {
    "operationId": "upload",
    "summary": "A file as base64 file_data and a file_id to send with a chat message",
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": obj(
        {"file": {"type": "string", "contentMediaType": "application/octet-stream"}},
        ("file",))}}},
    "responses": {
        "200": json_body(obj({
            "success": {"const": True},
            "file_id": CHAT_ID,
            "file_data": obj({"mime_type": {"type": "string"}, "data": {"type": "string"},
                              "filename": {"type": "string"}}, ("mime_type", "data", "filename")),
        }, ("success", "file_id", "file_data")), "The file, cached for UPLOAD_TTL_MINUTES"),
        **api_errors(400, 401, 408, 413, 415, 429, 507),
    },
}}

API_CHATS = {
    "parameters": [CHAT_ID_PARAMETER],
    "get": {
        "operationId": "chat_history",
        "summary": "A stored conversation: its last CHAT_MAX_TURNS turns",
        "responses": {
            "200": json_body(obj({"chat_id": {"type": "string"}, "history": {
                "type": "array", "items": obj({"role": {"enum": ["user", "assistant"]},
                                               "content": {"type": "string"}}, ("role", "content"))
            }}, ("chat_id", "history")), "The conversation, in the shape `history` takes"),
            **api_errors(400, 401, 404, 429),
        },
    },
    "delete": {
        "operationId": "delete_chat",
        "summary": "Forget a stored conversation",
        "responses": {
            "200": json_body(obj({"deleted": {"const": True}, "chat_id": {"type": "string"}},
                                 ("deleted", "chat_id")), "Forgotten"),
            **api_errors(400, 401, 404, 429),
        },
    },
}

API_KEYS = {"get": {
    "operationId": "key_status",
    "summary": "Each key's state and counters, with only its last four characters",
    "description": "For the operator, with the ADMIN_TOKEN; 404 while ADMIN_TOKEN is unset.",
    "security": [{"adminToken": []}],
    "responses": {
        "200": json_body(obj({"providers": {"type": "object", "additionalProperties": {
            "type": "array", "items": ref("KeyStatus")}}}, ("providers",)), "Per provider, its keys"),
        **api_errors(401, 404),
    },
}}

KEY_PARAMETERS = [
    {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"},
     "description": "gemini or zju"},
    {"name": "suffix", "in": "path", "required": True, "schema": {"type": "string"},
     "description": "The key's last four characters"},
]
API_KEY_RESET = {"post": {
    "operationId": "reset_key",
    "summary": "End a key's rests by hand (a rate-limit rest is its whole group's)",
    "security": [{"adminToken": []}],
    "parameters": KEY_PARAMETERS,
    "responses": {
        "200": json_body(obj({"key": ref("KeyStatus")}, ("key",)), "The key, resting no more"),
        **api_errors(401, 404),
    },
}}
API_KEY_CHECK = {"post": {
    "operationId": "check_key",
    "summary": "Check a key now with a request that spends no generation quota (a model list)",
    "description": "An ok ends the key's invalid or out-of-credit rest. A model list cannot "
                   "see credit: the periodic re-check leaves out-of-credit rests alone, and "
                   "an ok here says so in its message.",
    "security": [{"adminToken": []}],
    "parameters": KEY_PARAMETERS,
    "responses": {
        "200": json_body(obj({"key": ref("KeyStatus"), "check": ref("KeyCheck")},
                             ("key", "check")), "The key after its check, and the check"),
        **api_errors(401, 404),
    },
}}

V1_CHAT_COMPLETIONS = {"post": {
    "operationId": "chat_completions",
    "summary": "OpenAI's Chat Completions over the key pool",
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": ref("ChatCompletionRequest"), "examples": {
            "whole": {"summary": "A chat.completion", "value": {
                "model": "echo", "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hello!"}]}},
            "stream": {"summary": "Chunks, then [DONE]", "value": {
                "model": "echo", "messages": [{"role": "user", "content": "Hello!"}],
                "stream": True, "stream_options": {"include_usage": True}}},
        }}}},
    "responses": {
        "200": {"description": "A chat.completion, or with stream: true a stream of chunks",
                "content": {"application/json": {"schema": ref("ChatCompletion")},
                            SSE: V1_STREAM}},
        **openai_errors(400, 401, 404, 408, 413, 415, 429, 500, 502, 503),
    },
}}

V1_MODELS = {"get": {
    "operationId": "models",
    "summary": "echo, the Gemini models the keys can use, the other upstream's models and the "
               "MODEL_ALIASES names without wildcards",
    "responses": {
        "200": json_body(obj({"object": {"const": "list"},
                              "data": {"type": "array", "items": ref("Model")}},
                             ("object", "data")), "The models, in OpenAI's list shape"),
        **openai_errors(401, 429, 500),
    },
}}

V1_MODEL = {"get": {
    "operationId": "model",
    "summary": "One model, as OpenAI's models.retrieve",
    "parameters": [{"name": "model", "in": "path", "required": True,
                    "schema": {"type": "string"}}],
    "responses": {
        "200": json_body(ref("Model"), "The model"),
        **openai_errors(401, 404, 429, 500),
    },
}}

HEALTHZ = {"get": {
    "operationId": "healthz",
    "summary": "Liveness, and how many keys each provider has (never a key)",
    "security": [],
    "responses": {"200": json_body(obj({
        "status": {"type": "string"},
        "providers": {"type": "object", "additionalProperties": {"type": "integer"}},
    }, ("status", "providers")), "Serving")},
}}

OPENAPI_JSON = {"get": {
    "operationId": "openapi",
    "summary": "This document",
    "security": [],
    "responses": {"200": json_body({"type": "object"}, "The OpenAPI 3.1 document")},
}}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "ChatBridge",
        "version": "1",
        "description": (
            "A backend between chat frontends and LLM APIs, with a pool of upstream keys. "
            "/api speaks the source backends' shapes and the Vercel AI SDK's useChat; /v1 "
            "speaks OpenAI's Chat Completions and Responses APIs and Anthropic's Messages. "
            "With ACCESS_TOKENS set, all of them need one of those "
            "tokens as a bearer token (open while it is unset); GET /api/keys needs the "
            "ADMIN_TOKEN. Out of scope here: the Gemini pass-through under /v1beta (and POST "
            "/v1/models/{model}:{method}), which is Google's own REST API, documented by Google."),
    },
    "security": [{"accessToken": []}, {}],
    "paths": {
        "/api/chat": API_CHAT,
        "/api/upload": API_UPLOAD,
        "/api/chats/{chat_id}": API_CHATS,
        "/api/keys": API_KEYS,
        "/api/keys/{provider}/{suffix}/reset": API_KEY_RESET,
        "/api/keys/{provider}/{suffix}/check": API_KEY_CHECK,
        "/v1/chat/completions": V1_CHAT_COMPLETIONS,
        "/v1/models": V1_MODELS,
        "/v1/models/{model}": V1_MODEL,
        "/v1/responses": V1_RESPONSES,
        "/v1/responses/{response_id}": V1_RESPONSE,
        "/v1/responses/{response_id}/input_items": V1_RESPONSE_INPUT_ITEMS,
        "/v1/responses/{response_id}/cancel": V1_RESPONSE_CANCEL,
        "/v1/messages": V1_MESSAGES,
        "/v1/messages/count_tokens": V1_COUNT_TOKENS,
        "/healthz": HEALTHZ,
        "/openapi.json": OPENAPI_JSON,
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "accessToken": {"type": "http", "scheme": "bearer",
                            "description": "One of ACCESS_TOKENS (x-api-key, x-goog-api-key or ?key= "
                                           "work too)"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "The ADMIN_TOKEN"},
        },
    },
}
