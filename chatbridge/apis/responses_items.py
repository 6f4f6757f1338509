"""The input items of stored responses (GET /v1/responses/{response_id}/input_items), and the
create request's fields ChatBridge refuses (`background`, `conversation`).

Source: OpenAI's API reference, "Responses" > "List input items" (a list object {object:
"list", data, first_id, last_id, has_more}; query after, limit 1-100 (default 20), order asc
or desc (default desc), include) and the openai SDK's types (ResponseItemList, ResponseItem).

Rules:
- A stored response keeps its input items: the items of the response it continues
  (previous_response_id: that response's input items, then its output), then its request's
  `input`, so a chain lists the whole conversation the model was given, as OpenAI does.
- A request's items are kept as sent, in the reference's item shapes: a string input is one
  user message, a message's string content one input_text (output_text for the assistant)
  part; an item without an id gets one (msg_, fc_, ...), and calls and outputs a status.
- Inline file bytes (an input_image's data: URL, an input_file's file_data) are not kept
  twice: the conversation's files live in the upload cache (chatbridge/conversations.py),
  and such a part reads back with image_url null or without file_data. A file_id is kept.
- Reasoning items' encrypted_content is listed only with include=reasoning.encrypted_content;
  other include values of the reference are taken and change nothing (ChatBridge has no
  hosted tools or logprobs). `before` (an item id, as older references had it) is taken too.
"""

import uuid
from typing import Any

from flask import Request

from ..errors import ClientError

INCLUDABLE = ("file_search_call.results", "web_search_call.results",
              "web_search_call.action.sources", "message.input_image.image_url",
              "computer_call_output.output.image_url", "code_interpreter_call.outputs",
              "reasoning.encrypted_content", "message.output_text.logprobs")
ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
               "custom_tool_call": "ctc", "custom_tool_call_output": "ctco", "reasoning": "rs"}
WITH_STATUS = ("function_call", "function_call_output", "custom_tool_call",
               "custom_tool_call_output")
DEFAULT_LIMIT, MAX_LIMIT = 20, 100


class FieldError(ClientError):
    """A 400 naming the request field (or query parameter) it is about."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def refuse_unsupported(body: dict) -> None:
    """400 for `background: true` and `conversation`, which ChatBridge cannot honour: it runs
    no background responses and keeps no Conversations objects."""
    background = body.get("background")
    if background is not None and not isinstance(background, bool):
        raise FieldError("'background' must be true or false", "background")
    if background:
        raise FieldError("ChatBridge does not run background responses: send the request "
                         "without 'background' (or with false), streamed if it is long",
                         "background")
    if body.get("conversation") is not None:
        raise FieldError("ChatBridge keeps no Conversations objects: continue a conversation "
                         "with previous_response_id instead of 'conversation'", "conversation")


# ---------------------------------------------------------------- keeping them


def request_items(raw: Any) -> list:
    """A (validated) request `input` as the input items kept with its response."""
    if isinstance(raw, str):
        return [kept_message({"role": "user", "content": raw})]
    return [kept_item(item) for item in raw]


def kept_item(item: dict) -> dict:
    """One input item in the reference's shape, with an id, without inline file bytes."""
    kind = item.get("type") or "message"
    if kind == "message":
        return kept_message(item)
    kept = {**item, "type": kind}
    kept.setdefault("id", new_item_id(kind))
    if kind in WITH_STATUS:
        kept.setdefault("status", "completed")
    if isinstance(kept.get("output"), list):
        kept["output"] = [without_bytes(part) for part in kept["output"]]
    return kept


def kept_message(item: dict) -> dict:
    """A message item: string content as one text part; parts without inline file bytes."""
    role, content = item.get("role"), item.get("content")
    if isinstance(content, str) or content is None:
        kind = "output_text" if role == "assistant" else "input_text"
        part = {"type": kind, "text": content or ""}
        content = [{**part, "annotations": []} if role == "assistant" else part]
    else:
        content = [without_bytes(part) for part in content]
    kept = {**item, "type": "message", "content": content}
    kept.setdefault("id", new_item_id("message"))
    kept.setdefault("status", "completed")
    return kept


def without_bytes(part: Any) -> Any:
    """A content part without inline file bytes (kept in the upload cache instead)."""
    if not isinstance(part, dict):
        return part
    if part.get("type") == "input_image" and str(part.get("image_url", "")).startswith("data:"):
        return {**part, "image_url": None}
    if part.get("type") == "input_file" and "file_data" in part:
        return {name: value for name, value in part.items() if name != "file_data"}
    return part


def new_item_id(kind: str) -> str:
    return f"{ID_PREFIXES.get(kind, 'item')}_{uuid.uuid4().hex}"


# ---------------------------------------------------------------- listing them


def list_page(items: list, request: Request) -> dict:
    """One page of input items for the query (the rules above), as a list object."""
    after, before = (request.args.get(name) or None for name in ("after", "before"))
    limit, order = page_limit(request), request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise FieldError("'order' must be asc or desc", "order")
    include = query_list(request, "include")
    unknown = [value for value in include if value not in INCLUDABLE]
    if unknown:
        raise FieldError(f"'include' may hold only {', '.join(INCLUDABLE)}; not "
                         f"{', '.join(map(repr, unknown))}", "include")
    ordered = items if order == "asc" else items[::-1]
    start = position(ordered, after, "after") + 1 if after else 0
    end = position(ordered, before, "before") if before else len(ordered)
    window = ordered[start:end]
    data = [shown(item, include) for item in window[:limit]]
    return {"object": "list", "data": data,
            "first_id": data[0].get("id") if data else None,
            "last_id": data[-1].get("id") if data else None,
            "has_more": len(window) > limit}


def page_limit(request: Request) -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise FieldError(f"'limit' must be a whole number from 1 to {MAX_LIMIT}", "limit")
    return int(raw)


def query_list(request: Request, name: str) -> list:
    """A list query parameter, sent as name[]=a&name[]=b (the openai SDK) or name=a&name=b."""
    return request.args.getlist(f"{name}[]") + request.args.getlist(name)


def position(items: list, item_id: str, param: str) -> int:
    """Where an item id is in items; 400 naming the parameter if it is not there."""
    for index, item in enumerate(items):
        if item.get("id") == item_id:
            return index
    raise FieldError(f"'{param}' names no input item of this response: {item_id!r}", param)


def shown(item: dict, include: list) -> dict:
    """An item as listed: a reasoning item's encrypted_content only when asked for."""
    if item.get("type") == "reasoning" and "reasoning.encrypted_content" not in include:
        return {name: value for name, value in item.items() if name != "encrypted_content"}
    return item
