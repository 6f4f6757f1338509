"""Helpers and shared field schemas of the OpenAPI document (chatbridge/apis/openapi.py and
openapi_agents.py): refs, JSON bodies, objects, each API's error responses, event streams."""

SSE = "text/event-stream"

# ---------------------------------------------------------------- helpers


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def obj(properties: dict, required: tuple = (), **extra) -> dict:
    """A JSON object schema; objects in answers may gain fields, so extra ones are allowed."""
    schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


STATUS_TEXT = {
    400: "An invalid body or field, or a request beyond a limit (the message names the field, "
         "the limit and its setting)",
    401: "A missing or wrong token",
    404: "No such chat, file_id, model or endpoint",
    408: "The request body did not arrive within REQUEST_BODY_SECONDS",
    413: "A body, file or text over its limit (MAX_UPLOAD_MB, MAX_TEXT_CHARS, MAX_JSON_VALUES)",
    415: "The body is not Content-Type: application/json, or a file's type is not in "
         "ALLOWED_FILE_TYPES",
    429: "Every key is resting, or this client is over RATE_LIMIT; Retry-After says when to "
         "try again",
    500: "The upstream answered with an error (its message included), or an unexpected failure",
    502: "The upstream failed with every key",
    503: "The upstream could not be reached, or every key was rejected",
    507: "The upload cache is full (UPLOAD_CACHE_MB), or the disk refused the file",
    529: "The upstream is overloaded: it failed with every key",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds until a retry can succeed",
                               "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def errors(schema: str, *statuses: int) -> dict:
    """Error responses in one API's format (schema), for the statuses given."""
    responses = {}
    for status in statuses:
        response = json_body(ref(schema), STATUS_TEXT[status])
        if status == 429:
            response["headers"] = RETRY_AFTER
        responses[str(status)] = response
    return responses


def api_errors(*statuses: int) -> dict:
    return errors("Error", *statuses)


def openai_errors(*statuses: int) -> dict:
    return errors("OpenAIError", *statuses)


# ---------------------------------------------------------------- request schemas

CHAT_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"}
MODEL = {"type": "string", "minLength": 1, "maxLength": 200,
         "description": "echo (built in); a gemini/ or zju/ prefix picks the provider, else names "
                        "starting with gemini or gemma go to Gemini and others to the "
                        "OpenAI-compatible upstream. Default DEFAULT_MODEL"}
TEMPERATURE = {"type": "number", "minimum": 0, "maximum": 2}
POSITIVE = {"type": "integer", "minimum": 1}

NULLABLE_STRING = {"type": ["string", "null"]}

def sse_events(description: str, *payloads: dict) -> dict:
    """A text/event-stream whose events' data is [DONE] or JSON matching one of payloads (the
    schema of a 3.1 event stream describes each event, as Open API 3.2's itemSchema does)."""
    return {"schema": obj({
        "event": {"type": "string"},
        "id": {"type": "string"},
        "data": {"if": {"const": "[DONE]"}, "then": True, "else": {
            "type": "string", "contentMediaType": "application/json",
            "contentSchema": {"anyOf": list(payloads)}}},
    }, ("data",), description=description)}
