"""The provider interface every upstream implements, and what HTTP providers share.

A provider turns a neutral ChatRequest into its wire format and its events back into neutral
Deltas (chatbridge.chat). HttpProvider does the rest the same way for every HTTP upstream:
send with a pool key, check the status, read the SSE stream, and decide whether an answer is
usable (content, or a finish reason the client API can report) before failover gives up on
the key. Nothing outside chatbridge/upstreams/ asks which provider it holds.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..chat import COMPLETE_FINISHES, CONTENT_KINDS, ChatRequest, Delta, Finish, parse_json
from ..config import ApiKey, Config
from ..errors import UpstreamError
from ..failures import classify_failure, failure_from_event
from ..relay import Answer, Cancel
from ..sse import iter_sse_data
from ..transport import Transport, iter_body, iter_stream, opened_stream


@dataclass
class WholeAnswer:
    """A non-streaming answer: its deltas, and the upstream's own OpenAI chat.completion when
    it sent one (passed on unchanged to clients that asked for one)."""

    deltas: list
    chat_completion: dict | None = None

    @property
    def finish(self) -> Finish:
        return next(d.value for d in self.deltas if d.kind == "finish")

    @property
    def complete(self) -> bool:
        """Whether the answer ended as the model meant it to (stop or tool calls)."""
        return self.finish in COMPLETE_FINISHES


class Provider:
    """One upstream. name is its registry key and its model prefix (`gemini/...`)."""

    name = ""
    display_name = ""  # in error messages
    key_noun = ""  # "every {key_noun} is rate-limited"
    key_variable = ""  # the setting that holds its keys
    owned_by = ""  # in GET /v1/models
    quota_zone = "UTC"  # where the upstream's quota day starts (an IANA time zone)
    needs_keys = True
    counts_tokens = False  # whether count_tokens asks the upstream (with a key)

    def __init__(self, keys: tuple = (), default_model: str = ""):
        self.keys = keys
        self.default_model = default_model

    @classmethod
    def from_config(cls, config: Config, transport: Transport) -> "Provider":
        raise NotImplementedError

    def claims(self, model: str) -> bool:
        """Whether a model name without a provider prefix is served here."""
        return False

    def file_refusal(self, mime_type: str) -> str | None:
        """Why a file of this type cannot be sent here, or None when it can."""
        return None

    def fallback_model(self, default_model: str | None) -> str:
        """The model to list when the upstream's own list cannot be had; default_model is
        DEFAULT_MODEL when it routes here."""
        return self.default_model

    def answer(self, chat: ChatRequest) -> Iterator:
        """The deltas of an answer made without any key (needs_keys False)."""
        raise NotImplementedError

    def open_stream(self, chat: ChatRequest, key: ApiKey, cancel: Cancel) -> Answer:
        """Open a streaming answer and read up to its first content, or raise UpstreamError."""
        raise NotImplementedError

    def fetch_answer(self, chat: ChatRequest, key: ApiKey, cancel: Cancel) -> WholeAnswer:
        """A whole (non-streaming) answer, or UpstreamError."""
        raise NotImplementedError

    def list_models(self, key: ApiKey, cancel: Cancel) -> list:
        """The upstream's model names, or UpstreamError."""
        raise NotImplementedError

    def count_tokens(self, chat: ChatRequest, key: ApiKey | None, cancel: Cancel) -> int:
        """The input tokens chat would cost. Here an estimate (estimate_tokens); a provider
        whose upstream can count (Gemini's countTokens) overrides it, and may raise
        UpstreamError."""
        return estimate_tokens(chat)


class HttpProvider(Provider):
    """An upstream over HTTP: subclasses build requests and translate events."""

    def __init__(self, keys: tuple, base_url: str, transport: Transport, default_model: str = ""):
        super().__init__(keys, default_model)
        self.base_url, self.transport = base_url, transport

    def chat_request(self, chat: ChatRequest, key: ApiKey, stream: bool) -> tuple:
        """URL, headers (the key in a header, never the URL) and JSON body of a chat call."""
        raise NotImplementedError

    def deltas(self, event: dict) -> list:
        """The deltas in one upstream event (a stream chunk or a whole answer)."""
        raise NotImplementedError

    def models_request(self, key: ApiKey) -> tuple:
        """URL and headers of the model list."""
        raise NotImplementedError

    def model_names(self, body: dict) -> list:
        """The model names in a model list body."""
        raise NotImplementedError

    def chat_completion(self, body: dict) -> dict | None:
        """The upstream's answer as an OpenAI chat.completion, if it is one."""
        return None

    def post(self, chat: ChatRequest, key: ApiKey, stream: bool):
        url, headers, body = self.chat_request(chat, key, stream)
        return self.transport.send("POST", url, headers, stream, json=body)

    def open_stream(self, chat, key, cancel):
        with opened_stream(self.post(chat, key, stream=True), cancel) as response:
            if says_json(response):  # an upstream that ignored stream: true answered whole
                events = json_events(b"".join(iter_body(response)))
            else:
                events = iter_sse_data(iter_stream(response))
            rest = iter_deltas(events, self.deltas, self.text_chunks())
            return Answer(read_until_content(rest, chat.empty_answers), rest, response, cancel)

    def text_chunks(self):
        """A quick reader for the stream's chunks that hold only text, learning from the
        stream's first (see openai_compat.TextChunks), or None."""
        return None

    def fetch_answer(self, chat, key, cancel):
        response = self.post(chat, key, stream=False)
        if response.status_code != 200:
            text = response.content.decode("utf-8", errors="replace")
            raise classify_failure(response.status_code, parse_json(text) or text, response.headers)
        if says_sse(response):  # an upstream that streamed anyway: read it all
            deltas = list(iter_deltas(iter_sse_data([response.content]), self.deltas))
            body = None
        else:
            body = parse_json(response.content.decode("utf-8", errors="replace"))
            if not isinstance(body, dict):
                raise UpstreamError("broken", "the upstream answered with something that is not JSON")
            deltas = whole_deltas(translate_event(self.deltas, body))
        read_until_content(iter(deltas), chat.empty_answers)
        return WholeAnswer(deltas, self.chat_completion(body) if body else None)

    def list_models(self, key, cancel):
        url, headers = self.models_request(key)
        response = self.transport.send("GET", url, headers, stream=False)
        body = parse_json(response.text)
        if response.status_code != 200 or not isinstance(body, dict):
            raise classify_failure(response.status_code, body, response.headers)
        return self.model_names(body)


def estimate_tokens(chat: ChatRequest) -> int:
    """A rough input token count for upstreams that cannot count: about four characters of
    text per token (OpenAI's rule of thumb for English), plus 258 per attached file (Gemini's
    flat rate for an image) and 4 per message for its framing. At least 1."""
    chars = len(chat.system or "") + (len(json.dumps(chat.tools)) if chat.tools else 0)
    tokens = 0
    for turn in chat.turns:
        chars += len(turn.text) + len(turn.reasoning) + sum(len(str(c.get("arguments", "")))
                                                            for c in turn.tool_calls)
        tokens += 4 + 258 * len(turn.files)
    return max(1, tokens + (chars + 3) // 4)


def says_json(response) -> bool:
    return response.headers.get("Content-Type", "").lower().startswith("application/json")


def says_sse(response) -> bool:
    return response.headers.get("Content-Type", "").lower().startswith("text/event-stream")


def json_events(body: bytes) -> list:
    """A whole JSON answer (one object, or Gemini's array of chunks) as SSE-like events."""
    parsed = parse_json(body.decode("utf-8", errors="replace"))
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items or not all(isinstance(item, dict) for item in items):
        raise UpstreamError("broken", "the upstream answered with something that is not JSON")
    return [("data", json.dumps(item)) for item in items]


def whole_deltas(deltas: list) -> list:
    """A whole answer's deltas, which must end with a finish reason like a stream's."""
    finish = next((d.value for d in deltas if d.kind == "finish"), None)
    if finish is None:
        raise UpstreamError("broken", "the upstream's answer has no finish reason (incomplete)")
    check_finish(finish)
    return deltas


def iter_deltas(events: Iterable, translate, texts=None) -> Iterator:
    """Upstream SSE events to deltas; finish and usage come last. texts, if given, reads the
    chunks that hold only text without parsing them (texts.text), once it has learnt them from
    a parsed one (texts.learn).

    Completion is what the upstream says, not what the socket does: once a finish reason has
    come, a connection that then breaks does not undo the answer; a stream that ends without
    one (even after `[DONE]`) is cut off. An unusable ending raises, after the text before it.
    """
    finish, usage, events = None, None, iter(events)
    while True:
        try:
            kind, payload = next(events)
        except StopIteration:
            break
        except UpstreamError:
            if finish is None:
                raise
            break  # the answer was complete; only the connection broke afterwards
        if kind == "raw":
            raise_error_tail(payload)
            continue
        if kind == "flush":  # the relay's markers (chat.FLUSH, chat.SILENCE) pass through
            yield Delta(kind, payload)
            continue
        if texts is not None:
            text = texts.text(payload)
            if text is not None:
                if text:
                    yield Delta("text", text)
                continue
        if payload.strip() == "[DONE]":
            break
        event = parse_json(payload)
        if not isinstance(event, dict):
            raise UpstreamError("broken", "the upstream sent an event that is not JSON")
        if texts is not None:
            texts.learn(payload, event)
        for delta in translate_event(translate, event):
            if delta.kind == "finish":
                finish = delta.value
            elif delta.kind == "usage":
                usage = delta.value
            else:
                yield delta
        check_finish(finish)
    if finish is None:
        raise UpstreamError("broken", "the upstream stream ended before the answer was "
                                      "complete (cut off)")
    if usage:
        yield Delta("usage", usage)
    yield Delta("finish", finish)


def check_finish(finish: Finish | None) -> None:
    """Raise for an answer that ended unusably, naming the upstream's reason."""
    if finish == "error":
        raise UpstreamError(finish.failure, f"the answer ended with {finish.upstream}: "
                                            f"{finish.detail}")


def raise_error_tail(payload: str) -> None:
    """Raise the error in a raw JSON tail after the events (Gemini ends a failed stream so)."""
    tail = parse_json(payload)
    if isinstance(tail, list) and tail:
        tail = tail[0]
    if isinstance(tail, dict) and "error" in tail:
        raise failure_from_event(tail["error"])


def translate_event(translate, event: dict) -> list:
    """An upstream event's deltas; an event of an unexpected shape is a broken answer."""
    try:
        return translate(event)
    except (AttributeError, TypeError, KeyError, IndexError):
        raise UpstreamError("broken", "the upstream sent an event of an unexpected shape") from None


def read_until_content(deltas: Iterator, empty_answers: bool = False) -> list:
    """Read deltas up to the first content. An answer with none fails over, unless a finish
    reason says why: the token limit, a filter or another stop is the request's own fault,
    named in the error, or an empty answer where the client API can say so (empty_answers,
    as OpenAI's finish_reason does)."""
    head = []
    for delta in deltas:
        if delta.kind == "flush":  # nothing goes out before the answer has started
            continue
        head.append(delta)
        if delta.kind in CONTENT_KINDS:
            return head
        if delta.kind == "finish" and delta.value != "stop":
            check_finish(delta.value)
            if empty_answers:
                return head
            raise UpstreamError("rejected", f"the answer was stopped {STOPPED_BY.get(delta.value, '')}"
                                            f"before any text (reason: {delta.value.upstream})")
    raise UpstreamError("broken", "the upstream finished without any content")


STOPPED_BY = {"content_filter": "by its content filter ", "length": "by the token limit "}
