"""The Vercel AI SDK 5 `useChat` protocol on /api/chat: UI messages in, the UI message stream
out (`start`, `text-*`, `reasoning-*`, `finish`, `error`, then `[DONE]`, with the header
`x-vercel-ai-ui-message-stream: v1`). Only fields every 5.x client accepts are written, so
strict 5.0 clients work too. The route is the sources' /api/chat (chatbridge/apis/source.py),
which picks this parser when the body has `messages`.
"""

import uuid
from typing import Any

from ..chat import TEXT_KINDS, Delta, Turn
from ..config import Config
from ..errors import ClientError
from ..sse import StreamWriter, sse
from .fields import bounded, data_url_file


def parse_messages(raw: Any, config: Config) -> tuple:
    """(system text, turns) from UI messages ({id, role, parts}); a 400 naming the message.
    At most MAX_TURNS messages of at most MAX_PARTS parts."""
    if not isinstance(raw, list) or not raw:
        raise ClientError("'messages' must be a non-empty list of UI messages")
    system, turns = [], []
    for index, message in enumerate(bounded(raw, "messages", "messages", config.max_turns,
                                            "MAX_TURNS")):
        role = message.get("role") if isinstance(message, dict) else None
        parts = message.get("parts") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant") or not isinstance(parts, list):
            raise ClientError(f"'messages[{index}]' must have a role (system, user or "
                              "assistant) and a list of parts")
        bounded(parts, f"messages[{index}].parts", "parts", config.max_parts, "MAX_PARTS")
        text = "".join(p["text"] for p in parts
                       if isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str))
        files = tuple(data_url_file(p, f"messages[{index}]", config) for p in parts
                      if isinstance(p, dict) and p.get("type") == "file") if role == "user" else ()
        if role == "system":
            system.append(text)
        elif text.strip() or files:
            turns.append(Turn(role, text, files))
    if not turns or turns[-1].role != "user":
        raise ClientError("the last message must be the user's, with text or a file")
    return "\n\n".join(s for s in system if s.strip()) or None, turns


AI_SDK_FINISHES = {"stop": "stop", "length": "length", "content_filter": "content-filter",
                   "tool_calls": "tool-calls"}  # the AI SDK's FinishReason names


class UIMessageWriter(StreamWriter):
    """The AI SDK 5 UI message stream that useChat reads."""

    headers = {"x-vercel-ai-ui-message-stream": "v1"}

    def __init__(self):
        self.part = None  # (kind, id) of the text or reasoning part being written
        self.parts = 0
        self.finish = "stop"

    def start(self) -> bytes:
        return sse({"type": "start", "messageId": "msg-" + uuid.uuid4().hex})

    def text_event(self, delta: Delta) -> bytes:
        if delta.kind not in TEXT_KINDS:
            return b""
        opened = b""
        if self.part is None or self.part[0] != delta.kind:
            self.parts += 1
            opened = self.end_part() + sse({"type": f"{delta.kind}-start",
                                            "id": f"{delta.kind}-{self.parts}"})
            self.part = (delta.kind, f"{delta.kind}-{self.parts}")
        return opened + sse({"type": f"{delta.kind}-delta", "id": self.part[1],
                             "delta": delta.value})

    def end_part(self) -> bytes:
        if self.part is None:
            return b""
        kind, part_id = self.part
        self.part = None
        return sse({"type": f"{kind}-end", "id": part_id})

    def event(self, delta: Delta) -> bytes:
        if delta.kind == "finish":
            self.finish = AI_SDK_FINISHES.get(delta.value, "other")
        return self.text_event(delta)

    def done(self) -> bytes:
        # How the answer ended, where it was not a plain stop: as message metadata, since a
        # finish chunk's own finishReason field is refused by strict 5.0 clients.
        finish = {"type": "finish"} if self.finish == "stop" else {
            "type": "finish", "messageMetadata": {"finishReason": self.finish}}
        return self.end_part() + sse(finish) + b"data: [DONE]\n\n"

    def error(self, message: str) -> bytes:
        return sse({"type": "error", "errorText": message}) + b"data: [DONE]\n\n"
