"""The built-in `echo` model: the user's message back, as a model would stream it. It needs no
key, so a fresh clone answers with nothing configured, and it is a faithful stand-in on every
client API (issue 10).

Rules:
- It answers the last user turn's text (plus a note per attached file); after tool results
  (the last turns are role tool) it answers with their text.
- Streaming is paced so the whole answer takes under ECHO_SECONDS: a short text goes word by
  word, ECHO_WORD_DELAY apart; a long one in at most ECHO_PIECES pieces of several words (a
  1 MB paste streams in about two seconds, not an hour). A whole (non-streaming) answer is
  not paced.
- JSON mode: response_format json_object answers {"echo": text}; json_schema answers an
  object with the schema's required fields filled with placeholders of their types
  (chatbridge/upstreams/placeholder.py), strings carrying the text.
- Tools: when the request offers tools (and tool_choice is not none) and the text starts with
  `/tool NAME {json}`, the answer is that call (finish tool_calls). A NAME the request does
  not offer, or arguments that are not a JSON object, is a 400 naming the offered tools,
  raised before the answer starts.
- Reasoning: when the request asks for it (thinking true), a one-line thought comes first.
- Usage: the prompt is estimate_tokens(chat); the answer CHARS_PER_TOKEN characters a token.
  An answer longer than max_tokens such tokens is cut there and finishes with length, as a
  model's would (JSON too); a tool call is never cut.
"""

import json
import re
import time
import uuid

from ..chat import FLUSH, Delta, Finish, Turn, parse_strict_json
from ..config import ECHO_MODEL
from ..errors import ClientError
from .base import Provider, WholeAnswer, estimate_tokens
from .placeholder import placeholder

ECHO_WORD_DELAY = 0.02  # seconds between pieces, so the echo visibly streams
ECHO_SECONDS = 2.0  # the longest an echoed answer streams
ECHO_PIECES = 90  # at most this many pieces: 90 × 20 ms stays under ECHO_SECONDS
CHARS_PER_TOKEN = 4  # as estimate_tokens counts a prompt
WORDS = re.compile(r"\s*\S+\s*")
TOOL_COMMAND = re.compile(r"/tool\s+(\S+)\s*(.*)", re.S)


class EchoProvider(Provider):
    name = ECHO_MODEL
    display_name = "echo"
    owned_by = "chatbridge"
    needs_keys = False

    @classmethod
    def from_config(cls, config, transport):
        return cls(default_model=ECHO_MODEL)

    def claims(self, model):
        return model == ECHO_MODEL

    def answer(self, chat):
        """The answer's deltas, paced; a /tool command that cannot be answered raises
        ClientError here, before anything streams."""
        return paced(echo_deltas(chat))

    def fetch_answer(self, chat, key, cancel):
        return WholeAnswer(echo_deltas(chat))


def echo_deltas(chat) -> list:
    """The whole answer as deltas: reasoning, then text or a tool call, usage, finish."""
    text = answered_text(chat.turns)
    deltas = [Delta("reasoning", f"The user wrote {len(text.split())} words; I repeat them.")] \
        if chat.thinking else []
    call = tool_call(chat, text)
    if call is not None:
        deltas.append(Delta("tool_call", call))
        answer, finish = call["arguments"], Finish("tool_calls")
    else:
        answer, finish = json_answer(chat.response_format, text), Finish("stop")
        if chat.max_tokens and len(answer) > chat.max_tokens * CHARS_PER_TOKEN:
            answer, finish = answer[:chat.max_tokens * CHARS_PER_TOKEN], Finish("length")
        deltas += [Delta("text", piece) for piece in pieces(answer)]
    prompt = estimate_tokens(chat)
    completion = max(1, -(-len(answer) // CHARS_PER_TOKEN))
    deltas.append(Delta("usage", {"prompt_tokens": prompt, "completion_tokens": completion,
                                  "total_tokens": prompt + completion}))
    return deltas + [Delta("finish", finish)]


def paced(deltas: list):
    """Yield deltas with ECHO_WORD_DELAY between the pieces of content, and a chat.FLUSH before
    each pause, so what came before it goes out."""
    started = False
    for delta in deltas:
        if delta.kind in ("text", "tool_call", "reasoning"):
            if started:
                yield FLUSH
                time.sleep(ECHO_WORD_DELAY)
            started = True
        yield delta


def answered_text(turns: list) -> str:
    """What echo repeats: the trailing tool results' text, else the last user turn's text with
    a note per file."""
    results = []
    for turn in reversed(turns):
        if turn.role != "tool":
            break
        results.insert(0, turn.text)
    if results:
        return "\n".join(results)
    turn = next((t for t in reversed(turns) if t.role == "user"), Turn("user", ""))
    text = turn.text
    for file in turn.files:
        text += f"\n\n(received {file.filename or 'a file'}, {file.mime_type}, {file.size} bytes)"
    return text.strip()


def pieces(text: str) -> list:
    """text in at most ECHO_PIECES pieces of whole words (one word each while it is short)."""
    words = WORDS.findall(text) or [text]
    size = -(-len(words) // ECHO_PIECES)  # words per piece, rounded up
    return ["".join(words[i:i + size]) for i in range(0, len(words), size)]


def json_answer(response_format: dict | None, text: str) -> str:
    """The answer's text: text itself, or in JSON mode a JSON object made from it."""
    kind = (response_format or {}).get("type")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        value = placeholder(schema, text) if isinstance(schema, dict) else {"echo": text}
        return json.dumps(value, ensure_ascii=False)
    if kind == "json_object":
        return json.dumps({"echo": text}, ensure_ascii=False)
    return text


def tool_call(chat, text: str) -> dict | None:
    """The call a `/tool NAME {json}` text asks for, when the request offers tools."""
    match = TOOL_COMMAND.match(text)
    if not match or not chat.tools or chat.tool_choice == "none":
        return None
    name, raw = match.group(1), match.group(2).strip() or "{}"
    offered = [(t.get("function") or {}).get("name") for t in chat.tools if isinstance(t, dict)]
    if name not in offered:
        raise ClientError(f"echo: /tool {name}: the request offers no tool of that name "
                          f"(it offers {', '.join(map(str, offered))})")
    arguments = parse_strict_json(raw)
    if not isinstance(arguments, dict):
        raise ClientError(f"echo: /tool {name}: the arguments must be a JSON object, "
                          "e.g. /tool get_weather {\"city\": \"Paris\"}")
    return {"index": 0, "id": "call_" + uuid.uuid4().hex[:24], "name": name,
            "arguments": json.dumps(arguments, ensure_ascii=False), "signature": None}
