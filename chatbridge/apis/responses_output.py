"""The answers of OpenAI's Responses API (chatbridge/apis/responses.py): the `response` object
and its typed stream events, built from neutral deltas.

Source: OpenAI's API reference, "Responses" (the response object) and "Streaming events".
Rules:
- One Output builds both: fed the deltas in order, it keeps the output items and returns the
  events each delta makes, so a streamed and a whole answer carry the same items.
- Output items in the order they start: `reasoning` (its text as one summary_text), `message`
  (one output_text part), `function_call` (call_id, name, arguments as a JSON string;
  `namespace` for a function of a namespace tool), `custom_tool_call` (the free-form `input`
  of a custom tool, which the upstream saw as a function with one string parameter).
- Every event has `type` and a `sequence_number` counting from 0, and goes out as an
  `event:` line and a `data:` line. An item is closed (`.done` events) when the next one starts.
- Gemini's thought signatures, when `include` has "reasoning.encrypted_content", travel in the
  `encrypted_content` of a last reasoning item, {call_id: signature}, so that a client sending
  the whole conversation back (Codex) gets them onto the right functionCall part again.
- status: `completed`; `incomplete` with incomplete_details.reason `max_output_tokens` or
  `content_filter` when the answer was cut; `failed` with `error` when it broke midway
  (then an `error` event, then `response.failed`).
"""

import base64
import json
import time
import uuid

from ..chat import Delta, ToolCallTracker, parse_json
from ..sse import StreamWriter

SIGNATURES_PREFIX = "chatbridge.signatures."
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def encrypted_signatures(signatures: dict) -> str:
    """Thought signatures by call_id as an opaque encrypted_content string."""
    raw = json.dumps(signatures, separators=(",", ":")).encode()
    return SIGNATURES_PREFIX + base64.urlsafe_b64encode(raw).decode()


def signatures_in(encrypted: object) -> dict:
    """The thought signatures by call_id in an encrypted_content string of ours ({} for any
    other, such as OpenAI's own)."""
    if not isinstance(encrypted, str) or not encrypted.startswith(SIGNATURES_PREFIX):
        return {}
    try:
        raw = base64.urlsafe_b64decode(encrypted[len(SIGNATURES_PREFIX):])
    except ValueError:
        return {}
    found = parse_json(raw.decode("utf-8", "replace"))
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(found, dict) else {}


def response_usage(usage: dict | None) -> dict:
    """OpenAI's Chat Completions usage as the Responses API's."""
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    details = usage.get("completion_tokens_details") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": details.get("reasoning_tokens") or 0},
            "total_tokens": usage.get("total_tokens") or prompt + completion}


class Output:
    """The output items of one answer, built from its deltas (rules above).

    base: the response object's fields other than id, status, output, usage and error (the
    request's settings, echoed). custom: names of custom tools; namespaces: upstream function
    name -> (namespace, name) of a namespace tool's function. signatures: whether to carry
    thought signatures in encrypted_content.
    """

    def __init__(self, base: dict, custom=(), namespaces=None, signatures: bool = False):
        self.response = {"id": new_id("resp"), "object": "response",
                         "created_at": int(time.time()), "status": "in_progress",
                         "error": None, "incomplete_details": None, **base,
                         "output": [], "usage": None}
        self.custom, self.namespaces = set(custom), namespaces or {}
        self.carry_signatures = signatures
        self.sequence = 0
        self.open = None  # the index in output of the item still being written
        self.calls = ToolCallTracker()
        self.call_items = {}  # call position -> index in output
        self.usage, self.finish, self.signatures = None, None, {}

    @property
    def items(self) -> list:
        return self.response["output"]

    def event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def snapshot(self) -> dict:
        return json.loads(json.dumps(self.response))

    def start(self) -> list:
        return [self.event("response.created", response=self.snapshot()),
                self.event("response.in_progress", response=self.snapshot())]

    def add(self, delta: Delta) -> list:
        """The events one delta makes."""
        if delta.kind == "text":
            return self.text(delta.value)
        if delta.kind == "reasoning":
            return self.reasoning(delta.value)
        if delta.kind == "tool_call":
            return self.tool_call(delta.value)
        if delta.kind == "usage":
            self.usage = delta.value
        elif delta.kind == "finish":
            self.finish = delta.value
        return []

    def begin(self, item: dict) -> list:
        """Close the open item and start another."""
        events = self.close()
        self.items.append(item)
        self.open = len(self.items) - 1
        shown = {k: v for k, v in item.items()
                 if k != "arguments" or item["type"] == "function_call"}
        return events + [self.event("response.output_item.added", output_index=self.open,
                                    item={**shown, **self.empty_content(item)})]

    @staticmethod
    def empty_content(item: dict) -> dict:
        """How an item looks when it is added, before any of its content."""
        kind = item["type"]
        if kind == "message":
            return {"content": []}
        if kind == "reasoning":
            return {"summary": []}
        return {"arguments": ""} if kind == "function_call" else {"input": ""}

    def current(self, kind: str) -> dict | None:
        item = self.items[self.open] if self.open is not None else None
        return item if item is not None and item["type"] == kind else None

    def text(self, piece: str) -> list:
        events = []
        item = self.current("message")
        if item is None:
            item = {"id": new_id("msg"), "type": "message", "status": "in_progress",
                    "role": "assistant", "content": [{"type": "output_text", "annotations": [],
                                                      "logprobs": [], "text": ""}]}
            events = self.begin(item)
            events.append(self.event("response.content_part.added", **self.where(),
                                     content_index=0, part=self.blank_text()))
        item["content"][0]["text"] += piece
        return events + [self.event("response.output_text.delta", **self.where(), content_index=0,
                                    delta=piece, logprobs=[])]

    @staticmethod
    def blank_text() -> dict:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}

    def reasoning(self, piece: str) -> list:
        events = []
        item = self.current("reasoning")
        if item is None or not item["summary"]:
            item = {"id": new_id("rs"), "type": "reasoning",
                    "summary": [{"type": "summary_text", "text": ""}]}
            events = self.begin(item)
            events.append(self.event("response.reasoning_summary_part.added", **self.where(),
                                     summary_index=0, part={"type": "summary_text", "text": ""}))
        item["summary"][0]["text"] += piece
        return events + [self.event("response.reasoning_summary_text.delta", **self.where(),
                                    summary_index=0, delta=piece)]

    def where(self) -> dict:
        return {"item_id": self.items[self.open]["id"], "output_index": self.open}

    def tool_call(self, piece: dict) -> list:
        position, new = self.calls.place(piece)
        if new:
            events = self.begin(self.call_item(piece))
            self.call_items[position] = self.open
        else:
            events = []
        index = self.call_items[position]
        item = self.items[index]
        item["arguments"] = item.get("arguments", "") + (piece.get("arguments") or "")
        if piece.get("signature"):
            self.signatures[item["call_id"]] = piece["signature"]
        if item["type"] == "function_call" and piece.get("arguments"):
            events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=index, delta=piece["arguments"]))
        return events

    def call_item(self, piece: dict) -> dict:
        """A function_call or custom_tool_call item for a call's first piece."""
        name = piece.get("name") or ""
        call_id = piece.get("id") or new_id("call")
        namespace, own_name = self.namespaces.get(name, (None, name))
        named = {"name": own_name, **({"namespace": namespace} if namespace is not None else {})}
        if name in self.custom:
            return {"id": new_id("ctc"), "type": "custom_tool_call", "call_id": call_id,
                    **named, "arguments": ""}
        return {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                "call_id": call_id, **named, "arguments": ""}

    def upstream_name(self, item: dict) -> str:
        """The name the upstream gave a call item's function (qualified by its namespace when
        the request had to)."""
        pair = (item.get("namespace"), item["name"])
        return next((name for name, named in self.namespaces.items() if named == pair),
                    item["name"])

    def close(self) -> list:
        """The .done events of the open item, which is then complete."""
        if self.open is None:
            return []
        index, item = self.open, self.items[self.open]
        self.open = None
        where = {"item_id": item["id"], "output_index": index}
        events = []
        if item["type"] == "message":
            part = item["content"][0]
            item["status"] = "completed"
            events += [self.event("response.output_text.done", **where, content_index=0,
                                  text=part["text"], logprobs=[]),
                       self.event("response.content_part.done", **where, content_index=0,
                                  part=part)]
        elif item["type"] == "reasoning" and item["summary"]:
            text = item["summary"][0]["text"]
            events += [self.event("response.reasoning_summary_text.done", **where,
                                  summary_index=0, text=text),
                       self.event("response.reasoning_summary_part.done", **where,
                                  summary_index=0, part=item["summary"][0])]
        elif item["type"] == "function_call":
            item["status"] = "completed"
            item["arguments"] = item["arguments"] or "{}"
            events.append(self.event("response.function_call_arguments.done", **where,
                                     name=item["name"], arguments=item["arguments"]))
        elif item["type"] == "custom_tool_call":
            events += self.close_custom(item, where)
        return events + [self.event("response.output_item.done", output_index=index, item=item)]

    def close_custom(self, item: dict, where: dict) -> list:
        """A custom tool's call: its free-form input is the one string argument."""
        arguments = item.pop("arguments")
        parsed = parse_json(arguments)
        text = parsed.get("input") if isinstance(parsed, dict) else None
        item["input"] = text if isinstance(text, str) else arguments
        return [self.event("response.custom_tool_call_input.delta", **where, delta=item["input"]),
                self.event("response.custom_tool_call_input.done", **where, input=item["input"])]

    def end(self) -> list:
        """The last events: the open item closed, the signatures' reasoning item, and
        response.completed or response.incomplete."""
        events = self.close()
        if self.carry_signatures and self.signatures:
            events += self.begin({"id": new_id("rs"), "type": "reasoning", "summary": [],
                                  "encrypted_content": encrypted_signatures(self.signatures)})
            events += self.close()
        reason = INCOMPLETE_REASONS.get(str(self.finish))
        self.response.update(status="incomplete" if reason else "completed",
                             usage=response_usage(self.usage),
                             incomplete_details={"reason": reason} if reason else None)
        kind = "response.incomplete" if reason else "response.completed"
        return events + [self.event(kind, response=self.snapshot())]

    def fail(self, message: str) -> list:
        """An error event and response.failed, for an answer that broke midway."""
        events = self.close()
        self.response.update(status="failed", usage=response_usage(self.usage),
                             error={"code": "server_error", "message": message})
        return events + [self.event("error", code="server_error", message=message, param=None),
                         self.event("response.failed", response=self.snapshot())]

    def whole(self, deltas) -> dict:
        """The response object of a whole answer."""
        for delta in deltas:
            self.add(delta)
        self.end()
        return self.response


def typed_events(events: list) -> bytes:
    """Events as SSE, each with its `event:` line (as OpenAI sends them)."""
    return b"".join(b"event: " + event["type"].encode() + b"\ndata: "
                    + json.dumps(event, ensure_ascii=False).encode() + b"\n\n" for event in events)


class ResponseEventWriter(StreamWriter):
    """The Responses API's typed stream events. on_end(output) runs with the finished Output
    before response.completed (or .incomplete) goes out, to store it."""

    def __init__(self, output: Output, on_end=None):
        self.output, self.on_end = output, on_end

    def start(self) -> bytes:
        return typed_events(self.output.start())

    def event(self, delta: Delta) -> bytes:
        return typed_events(self.output.add(delta))

    def done(self) -> bytes:
        events = self.output.end()
        if self.on_end is not None:
            self.on_end(self.output)
        return typed_events(events)

    def error(self, message: str) -> bytes:
        return typed_events(self.output.fail(message))
