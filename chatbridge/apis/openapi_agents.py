"""The OpenAPI operations and schemas of the coding agents' APIs under /v1: OpenAI's
Responses API and Anthropic's Messages API. Each vendor's own reference is the full contract;
these name what ChatBridge reads and answers. chatbridge/apis/openapi.py puts them in DOCUMENT."""

from .openapi_base import (
    MODEL, NULLABLE_STRING, POSITIVE, SSE, TEMPERATURE,
    errors, json_body, obj, openai_errors, ref, sse_events,
)

AGENT_SCHEMAS = {}  # added to the document's components

# ---------------------------------------------------------------- OpenAI's Responses API

RESPONSES_REFERENCE = "https://platform.openai.com/docs/api-reference/responses"
AGENT_SCHEMAS.update({
    "ResponseRequest": obj({
        "model": MODEL,
        "input": {"description": "A string, or input items: message (input_text, input_image, "
                                 "input_file, output_text parts), function_call, "
                                 "function_call_output, custom_tool_call, "
                                 "custom_tool_call_output, reasoning; at most MAX_TURNS",
                  "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "instructions": {"type": "string"},
        "stream": {"type": "boolean"},
        "tools": {"type": "array", "items": {"type": "object"},
                  "description": "function and custom tools (a namespace's too); hosted tools "
                                 "such as web_search are left out"},
        "tool_choice": {
            "description": "none, auto, required, or an object of OpenAI's forms: {type: "
                           "function or custom, name} naming one of tools (a namespace's "
                           "function by its name, or as namespace__name when two namespaces "
                           "share it), {type: allowed_tools, mode, tools}, {type: mcp, "
                           "server_label} or a hosted tool's {type}; else a 400",
            "anyOf": [{"enum": ["none", "auto", "required"]},
                      obj({"type": {"type": "string"}, "name": {"type": "string"}}, ("type",))]},
        "parallel_tool_calls": {"type": "boolean"},
        "temperature": TEMPERATURE, "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_output_tokens": POSITIVE,
        "text": obj({"format": {"type": "object"}}),
        "reasoning": obj({"effort": {"type": "string"}, "summary": {"type": "string"}}),
        "store": {"type": "boolean", "description": "Keep the response for CHAT_TTL_HOURS "
                                                    "(default true)"},
        "previous_response_id": {"type": "string"},
        "include": {"type": "array", "items": {"type": "string"}},
        "background": {"type": "boolean", "description": "Only false: ChatBridge runs no "
                                                         "background responses (true is a 400)"},
        "conversation": {"description": "Not taken (a 400): ChatBridge keeps no Conversations "
                                        "objects; continue with previous_response_id"},
    }, ("input",), description="OpenAI's Responses request, as ChatBridge takes it; unknown "
                               f"fields are ignored. See {RESPONSES_REFERENCE}"),
    "Response": obj({
        "id": {"type": "string", "pattern": "^resp_"}, "object": {"const": "response"},
        "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
        "output": {"type": "array", "items": obj({"type": {"type": "string"}}, ("type",))},
        "usage": {"type": ["object", "null"]},
    }, ("id", "object", "status", "output"), description="OpenAI's response object"),
})
AGENT_SCHEMAS["ResponseItemList"] = obj({
    "object": {"const": "list"},
    "data": {"type": "array", "items": obj({"id": {"type": "string"},
                                            "type": {"type": "string"}}, ("id", "type"))},
    "first_id": NULLABLE_STRING, "last_id": NULLABLE_STRING, "has_more": {"type": "boolean"},
}, ("object", "data", "first_id", "last_id", "has_more"),
    description="A page of a response's input items: the earlier responses' input and output "
                "items (previous_response_id), then its request's input, in the reference's "
                "item shapes; inline file bytes read back as null")
RESPONSE_ID = [{"name": "response_id", "in": "path", "required": True,
                "schema": {"type": "string"}}]
ITEM_ID = {"type": "string", "description": "An input item's id"}
INPUT_ITEM_QUERY = [
    {"name": "after", "in": "query", "schema": ITEM_ID,
     "description": "List the items after this one (in the order asked for)"},
    {"name": "before", "in": "query", "schema": ITEM_ID,
     "description": "List the items before this one"},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100,
                                                 "default": 20}},
    {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"], "default": "desc"},
     "description": "asc: oldest first; desc: newest first"},
    {"name": "include[]", "in": "query", "schema": {"type": "array", "items": {"type": "string"}},
     "description": "As the reference's; reasoning.encrypted_content lists reasoning items' "
                    "encrypted_content. `include` is taken too"},
]
RESPONSE_EVENT = obj({"type": {"type": "string"}, "sequence_number": {"type": "integer"}},
                     ("type", "sequence_number"))

V1_RESPONSES = {"post": {
    "operationId": "create_response",
    "summary": "OpenAI's Responses API over the key pool (what Codex CLI speaks)",
    "description": f"As OpenAI documents it: {RESPONSES_REFERENCE}",
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": ref("ResponseRequest"),
        "example": {"model": "echo", "input": "Hello!", "instructions": "Be brief."}}}},
    "responses": {
        "200": {"description": "A response object, or with stream: true its typed events",
                "content": {"application/json": {"schema": ref("Response")},
                            SSE: sse_events(
                                "`event: <type>` and `data: <json>` pairs with sequence_number: "
                                "response.created ... response.completed (or .incomplete; "
                                "error and response.failed after a failure)", RESPONSE_EVENT)}},
        **openai_errors(400, 401, 404, 408, 413, 415, 429, 500, 502, 503),
    },
}}

V1_RESPONSE = {
    "get": {"operationId": "get_response", "summary": "A stored response of this token",
            "parameters": RESPONSE_ID,
            "responses": {"200": json_body(ref("Response"), "The response"),
                          **openai_errors(401, 404, 429)}},
    "delete": {"operationId": "delete_response", "summary": "Forget a stored response",
               "parameters": RESPONSE_ID,
               "responses": {"200": json_body(obj({"id": {"type": "string"},
                                                   "deleted": {"const": True}},
                                                  ("id", "deleted")), "Forgotten"),
                             **openai_errors(401, 404, 429)}},
}
V1_RESPONSE_INPUT_ITEMS = {"get": {
    "operationId": "list_input_items",
    "summary": "A page of a stored response's input items",
    "description": f"As OpenAI documents it: {RESPONSES_REFERENCE}/input-items",
    "parameters": RESPONSE_ID + INPUT_ITEM_QUERY,
    "responses": {"200": json_body(ref("ResponseItemList"), "The page"),
                  **openai_errors(400, 401, 404, 429)}}}
V1_RESPONSE_CANCEL = {"post": {
    "operationId": "cancel_response",
    "summary": "Cancel a background response: ChatBridge makes none, so a stored response is "
               "OpenAI's 400 for a synchronous one (\"Cannot cancel a synchronous response.\")",
    "parameters": RESPONSE_ID,
    "responses": {**openai_errors(400, 401, 404, 429)}}}

# ---------------------------------------------------------------- Anthropic's Messages API
# Anthropic's own reference is the full contract (https://docs.anthropic.com/en/api/messages);
# these schemas name what ChatBridge reads and answers, and let other fields through.

ANTHROPIC_BLOCK = obj({"type": {"type": "string", "description": (
    "text, image and document (a base64 source, or a document's text source), tool_use, "
    "tool_result, thinking (its signature carries Gemini's thought signature back)")}},
    ("type",))
ANTHROPIC_FIELDS = {
    "model": MODEL,
    "messages": {"type": "array", "minItems": 1, "description": "At most MAX_TURNS", "items": obj({
        "role": {"enum": ["user", "assistant", "system"]},
        "content": {"oneOf": [{"type": "string"},
                              {"type": "array", "items": ANTHROPIC_BLOCK,
                               "description": "At most MAX_PARTS"}]},
    }, ("role", "content"))},
    "system": {"oneOf": [{"type": "string"}, {"type": "array", "description": "At most MAX_PARTS",
                                               "items": obj({"type": {"const": "text"},
                                                             "text": {"type": "string"}},
                                                            ("type", "text"))}]},
    "tools": {"type": "array", "description": "At most MAX_TOOLS; server tools are left out",
              "items": obj({"name": {"type": "string"}, "description": {"type": "string"},
                            "input_schema": {"type": "object"}}, ("name",))},
    "tool_choice": obj({"type": {"enum": ["auto", "any", "tool", "none"]},
                        "name": {"type": "string", "description": "For type tool: one of tools"}},
                       ("type",)),
    "thinking": obj({"type": {"enum": ["enabled", "disabled", "adaptive"]},
                     "budget_tokens": POSITIVE}, ("type",)),
}
MESSAGES_REQUEST = obj({
    **ANTHROPIC_FIELDS,
    "max_tokens": {**POSITIVE, "description": "Lowered to what the upstream model writes"},
    "stream": {"type": "boolean"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "stop_sequences": {"type": "array", "items": {"type": "string"}},
}, ("model", "max_tokens", "messages"),
    description="Anthropic's Messages request; unknown fields are ignored")
ANTHROPIC_USAGE = obj({"input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}},
                      ("input_tokens", "output_tokens"))
MESSAGE = obj({
    "id": {"type": "string"}, "type": {"const": "message"}, "role": {"const": "assistant"},
    "model": {"type": "string"},
    "content": {"type": "array", "items": ANTHROPIC_BLOCK},
    "stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]},
    "stop_sequence": NULLABLE_STRING,
    "usage": ANTHROPIC_USAGE,
}, ("id", "type", "role", "model", "content", "stop_reason", "usage"))
ANTHROPIC_ERROR = obj({
    "type": {"const": "error"},
    "error": obj({"type": {"type": "string"}, "message": {"type": "string"}}, ("type", "message")),
    "request_id": {"type": "string"},
}, ("type", "error"), description="Every /v1/messages error, in Anthropic's shape")
MESSAGES_STREAM = sse_events(
    "Anthropic's events, `event: <type>` and `data: <json>` each: message_start, "
    "content_block_start / _delta (text_delta, thinking_delta, signature_delta, "
    "input_json_delta) / _stop, message_delta (stop_reason, usage), message_stop; ping while "
    "the model is silent; an error event for a failure after the stream began.",
    obj({"type": {"type": "string"}}, ("type",)))
AGENT_SCHEMAS.update(AnthropicError=ANTHROPIC_ERROR, MessagesRequest=MESSAGES_REQUEST, Message=MESSAGE)


def anthropic_errors(*statuses: int) -> dict:
    return errors("AnthropicError", *statuses)


V1_MESSAGES = {"post": {
    "operationId": "messages",
    "summary": "Anthropic's Messages API over the key pool (Claude Code's ANTHROPIC_BASE_URL)",
    "description": "The access token may come as x-api-key too; anthropic-version and "
                   "anthropic-beta are accepted. See https://docs.anthropic.com/en/api/messages",
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": ref("MessagesRequest"), "example": {
            "model": "echo", "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hello!"}]}}}},
    "responses": {
        "200": {"description": "A message, or with stream: true its events",
                "content": {"application/json": {"schema": ref("Message")},
                            SSE: MESSAGES_STREAM}},
        **anthropic_errors(400, 401, 404, 408, 413, 415, 429, 500, 503, 529),
    },
}}

V1_COUNT_TOKENS = {"post": {
    "operationId": "count_tokens",
    "summary": "Input tokens of a Messages request: Gemini's countTokens for Gemini models, "
               "else an estimate (a token per four characters)",
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": obj(ANTHROPIC_FIELDS, ("model", "messages")), "example": {
            "model": "echo", "messages": [{"role": "user", "content": "Hello!"}]}}}},
    "responses": {
        "200": json_body(obj({"input_tokens": {"type": "integer"}}, ("input_tokens",)),
                         "The count"),
        **anthropic_errors(400, 401, 404, 408, 413, 415, 429, 500, 503, 529),
    },
}}
