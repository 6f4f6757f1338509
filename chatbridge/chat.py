"""The neutral chat request and answer that every client API and every provider speaks.

Client APIs (chatbridge/apis/) parse their requests into a ChatRequest and write Deltas in
their own protocol; providers (chatbridge/upstreams/) turn a ChatRequest into their wire
format and their events back into Deltas.
"""

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

TEXT_KINDS = ("text", "reasoning")
CONTENT_KINDS = TEXT_KINDS + ("tool_call",)  # what counts as an answer having started
FIRST_TOKEN_KINDS = CONTENT_KINDS + ("event", "bytes")  # passed-through Gemini streams too


@dataclass(frozen=True)
class Attachment:
    """A file sent with a message, as base64; or as a URL the upstream fetches itself
    (Anthropic's `url` sources), with no data."""

    mime_type: str
    data: str
    filename: str = ""
    url: str = ""

    @property
    def size(self) -> int:
        """Decoded size in bytes."""
        return len(self.data) * 3 // 4 - self.data[-2:].count("=")


@dataclass(frozen=True)
class Turn:
    """One message of the conversation: who said it, its text and its files."""

    role: str  # user, assistant, or tool (a function's result)
    text: str
    files: tuple = ()
    file_ids: tuple = ()  # the uploads the files came from, so a stored conversation keeps them
    tool_calls: tuple = ()  # an assistant's calls: {"id", "name", "arguments", "signature"}
    tool_call_id: str = ""  # a tool turn answers this call
    tool_name: str = ""
    reasoning: str = ""  # an assistant's reasoning_content, which DeepSeek's thinking mode wants back


@dataclass
class ChatRequest:
    """A validated chat request, whichever API it came in; the last turn is the user's.

    shape names the client API on the log line (A, B, ui, v1, native, models). provider is
    the name of the provider that serves model (chatbridge.upstreams).
    """

    shape: str
    provider: str
    model: str
    turns: list
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = True
    chat_id: str | None = None
    top_p: float | None = None
    stop: list | None = None
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: Any = None
    include_usage: bool = False
    thinking: bool | None = None  # ask for the model's reasoning; None: as the model allows
    thinking_budget: int | None = None  # tokens the model may think for (Anthropic's budget_tokens)
    # Settings the client API implies where the request gives none (the Persian source's
    # temperature 0.7 and 4096 tokens); an upstream whose own defaults its source relied on
    # (the OpenAI-compatible one, as the ZJU source used it) does not take them.
    default_settings: dict = field(default_factory=dict)
    # The client's own fields as sent, for an upstream that speaks the client's API (OpenAI
    # Chat Completions); None when the client spoke another API.
    passthrough: dict | None = None
    # Whether the client API can say "stopped before any text" (OpenAI's finish_reason), so
    # such an answer is an empty answer, not an error.
    empty_answers: bool = False
    native: Any = None  # a NativeCall, for Gemini's own API passed through

    @property
    def message(self) -> str:
        return self.turns[-1].text


class Delta(NamedTuple):
    """One neutral piece of an answer.

    kind: text and reasoning (str), tool_call ({"index", "id", "name", "arguments",
    "signature"}), usage (OpenAI's usage dict), finish (a Finish), and for Gemini's
    passed-through API event (an SSE data payload) and bytes (raw body bytes); and flush, the
    markers below.
    """

    kind: str
    value: Any


# Markers a streamed answer carries between its deltas, from the upstream read up to the relay
# (chatbridge.relay), which reads the upstream in the client's own greenlet (issue 13): FLUSH
# after what one read brought, so a burst goes out in one write but nothing waits on the next
# read; SILENCE after SSE_PING_SECONDS without a byte, so a ping goes out. Every layer passes
# them on; only the relay writes them.
FLUSH = Delta("flush", None)
SILENCE = Delta("flush", "silence")


FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "other", "error")
COMPLETE_FINISHES = ("stop", "tool_calls")  # an answer that ended as the model meant it to


class Finish(str):
    """How an answer ended, in the neutral vocabulary FINISH_REASONS, remembering the
    upstream's own word for it (Gemini's finishReason, OpenAI's finish_reason).

    stop: the model finished; length: the token limit cut it; content_filter: a safety,
    recitation, blocklist or similar filter stopped it; tool_calls: it asks for tools; other:
    any reason the client API cannot say more precisely; error: the answer is unusable (a
    malformed tool call), which the relay turns into an error naming the reason. It compares
    equal to its neutral reason, so `finish == "length"` reads as it should.
    """

    upstream: str
    detail: str  # for an "error" ending: what it means, for the error message
    failure: str  # for an "error" ending: the UpstreamError kind it is (chatbridge.errors)

    def __new__(cls, reason: str, upstream: str = "", detail: str = "", failure: str = "unusable"):
        finish = super().__new__(cls, reason)
        finish.upstream, finish.detail, finish.failure = upstream or reason, detail, failure
        return finish

    @property
    def complete(self) -> bool:
        return self in COMPLETE_FINISHES


class ToolCallTracker:
    """Tells which call each streamed tool_call delta belongs to, for the writers.

    A piece with an index belongs to the call at that index, unless it brings an id other than
    that call's (servers that put every call at index 0 tell them apart so). Without an index
    (OpenAI-compatible servers that omit it, Gemini's complete functionCall parts), a piece
    with an id other than the current call's, or with a name but no id, starts a new call; an
    arguments-only piece continues the last call. Calls get positions 0, 1, 2 … in the order
    they start.
    """

    def __init__(self):
        self.count = 0
        self.by_index = {}  # upstream index -> (position, id)
        self.by_id = {}  # id -> position
        self.current = None  # the position of the call being written

    def __len__(self) -> int:
        return self.count

    def place(self, piece: dict) -> tuple:
        """(position, whether this piece starts the call)."""
        index, call_id = piece.get("index"), piece.get("id")
        if index is not None:
            position, held = self.by_index.get(index, (None, None))
            if position is None or (call_id and held and call_id != held):
                position = None
            self.by_index[index] = (position, call_id or held)
        elif call_id:
            position = self.by_id.get(call_id)
        else:
            position = None if piece.get("name") else self.current
        new = position is None
        if new:
            position, self.count = self.count, self.count + 1
            if index is not None:
                self.by_index[index] = (position, call_id)
        if call_id:
            self.by_id[call_id] = position
        self.current = position
        return position, new


def parse_json(text: Any) -> Any:
    """Parsed JSON, or None for anything that is not JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def parse_strict_json(text: Any) -> Any:
    """Parsed JSON as RFC 8259 defines it, or None: json.loads also takes NaN, Infinity and
    -Infinity, and json.dumps writes them back out, which no client's JSON parser reads. For
    tool call arguments, which are parsed here and sent on as objects (a model's
    `{"a": NaN}` made /v1/messages and /v1beta answer with a body that is not JSON)."""
    try:
        return json.loads(text, parse_constant=refuse_constant)
    except (TypeError, ValueError):
        return None


def refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
