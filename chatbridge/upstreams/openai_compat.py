"""Any OpenAI-compatible Chat Completions API: the ZJU Chat API, DeepSeek, OpenRouter, vLLM,
Ollama. Its user-facing name stays `zju` (the `zju/` model prefix, ZJU_API_KEY, ZJU_BASE_URL),
after the source it replaces.

Requests go to `{ZJU_BASE_URL}/chat/completions` with `Authorization: Bearer <key>`; the
stream is read until `data: [DONE]`. DeepSeek's `reasoning_content` (and OpenRouter's
`reasoning`) arrive as reasoning deltas and go back on assistant turns.
"""

import base64
import re
from json.decoder import scanstring

from ..chat import Delta, Finish, Turn
from ..failures import failure_from_event
from .base import HttpProvider

FALLBACK_MODEL = "deepseek-r1-671b"  # the ZJU source's default model
# finish_reason (OpenAI API reference, chat completion object); any other is "other"
FINISH_REASONS = {"stop": "stop", "length": "length", "content_filter": "content_filter",
                  "tool_calls": "tool_calls", "function_call": "tool_calls", "eos": "stop"}
UNUSABLE_FINISHES = {  # DeepSeek's
    "insufficient_system_resource": "the upstream ran out of resources during the answer",
}


class OpenAICompatProvider(HttpProvider):
    """An OpenAI-compatible Chat Completions API; serves every model name no other provider
    claims, and the `zju/` prefix. Its non-streaming answers pass to OpenAI clients unchanged."""

    name = "zju"
    display_name = "the OpenAI-compatible upstream"
    key_noun = "key of the OpenAI-compatible upstream"
    key_variable = "ZJU_API_KEY"
    owned_by = "zju"

    def claims(self, model):
        return True  # every name no other provider claims

    max_tokens = 0  # ZJU_MAX_TOKENS: the most output tokens a request may ask for; 0: any

    @classmethod
    def from_config(cls, config, transport):
        provider = cls(config.openai_compat_keys, config.openai_compat_base_url, transport,
                       FALLBACK_MODEL)
        provider.max_tokens = config.openai_compat_max_tokens
        return provider

    def file_refusal(self, mime_type):
        if openai_takes(mime_type):
            return None
        return (f"{mime_type} files cannot go to the OpenAI-compatible upstream; send an image "
                "or a text file, or use a Gemini model")

    def fallback_model(self, default_model):
        return default_model or self.default_model

    def chat_request(self, chat, key, stream):
        messages = [{"role": "system", "content": chat.system}] if chat.system else []
        messages += [openai_message(turn) for turn in chat.turns]
        if chat.passthrough is not None:  # the client's own fields, as sent
            body = dict(chat.passthrough)
        else:  # as the ZJU source: only what the request set, no defaults of ours
            settings = {"temperature": chat.temperature, "max_tokens": chat.max_tokens,
                        "top_p": chat.top_p, "stop": chat.stop, "tools": chat.tools,
                        "tool_choice": chat.tool_choice if chat.tools else None,
                        "response_format": chat.response_format}
            body = {name: value for name, value in settings.items() if value is not None}
        body.update(model=chat.model, messages=messages, stream=stream)
        for name in ("max_tokens", "max_completion_tokens"):  # lowered to ZJU_MAX_TOKENS
            if self.max_tokens and isinstance(body.get(name), int) and body[name] > self.max_tokens:
                body[name] = self.max_tokens
        if stream and chat.include_usage:
            body["stream_options"] = {"include_usage": True}
        return f"{self.base_url}/chat/completions", {"Authorization": f"Bearer {key.secret}"}, body

    def deltas(self, event):
        return openai_deltas(event)

    def text_chunks(self):
        return TextChunks()

    def chat_completion(self, body):
        return body

    def models_request(self, key):
        return f"{self.base_url}/models", {"Authorization": f"Bearer {key.secret}"}

    def model_names(self, body):
        """The ids of the listed models; malformed entries are skipped."""
        models = body.get("data")
        return [m["id"] for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)
                and m["id"]] if isinstance(models, list) else []


def openai_takes(mime_type: str) -> bool:
    """Whether a file can go to the OpenAI-compatible upstream (as an image part or as text)."""
    return mime_type.startswith(("image/", "text/")) or mime_type == "application/json"


def openai_message(turn: Turn) -> dict:
    """A turn as an OpenAI message: text files inlined, images as image_url parts."""
    if turn.role == "tool":
        return {"role": "tool", "tool_call_id": turn.tool_call_id, "content": turn.text}
    if turn.tool_calls:
        return {"role": "assistant", "content": turn.text or None, "tool_calls": [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in turn.tool_calls], **({"reasoning_content": turn.reasoning}
                                          if turn.reasoning else {})}
    text = turn.text
    for file in turn.files:
        if not file.mime_type.startswith("image/"):
            content = file.url or base64.b64decode(file.data).decode("utf-8", errors="replace")
            text = f"{text}\n\n[file {file.filename or ''}]\n{content}".strip()
    images = [{"type": "image_url", "image_url": {
        "url": f.url or f"data:{f.mime_type};base64,{f.data}"}}
              for f in turn.files if f.mime_type.startswith("image/")]
    if not images:
        return {"role": turn.role, "content": text}
    return {"role": turn.role, "content": ([{"type": "text", "text": text}] if text else []) + images}


def openai_deltas(event: dict) -> list:
    """The deltas in one OpenAI chat.completion.chunk (or a whole chat.completion)."""
    text = plain_text(event)
    if text is not None:
        return [Delta("text", text)] if text else []
    if "error" in event:
        raise failure_from_event(event["error"])
    deltas = [Delta("usage", event["usage"])] if isinstance(event.get("usage"), dict) else []
    choices = event.get("choices") or []
    choice = choices[0] if isinstance(choices[0] if choices else None, dict) else {}
    delta = choice.get("delta") or choice.get("message") or {}
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        deltas.append(Delta("reasoning", reasoning))
    if isinstance(delta.get("content"), str) and delta["content"]:
        deltas.append(Delta("text", delta["content"]))
    for call in delta.get("tool_calls") or []:
        function = call.get("function") or {}
        deltas.append(Delta("tool_call", {
            "index": call.get("index"), "id": call.get("id"), "name": function.get("name"),
            "arguments": function.get("arguments") or "", "signature": None}))
    if choice.get("finish_reason"):
        deltas.append(Delta("finish", openai_finish(str(choice["finish_reason"]))))
    return deltas


def plain_text(event: dict) -> str | None:
    """The text of a chunk that holds nothing but text (most of a stream), else None: a quick
    look first, since every chunk goes through openai_deltas (issue 13)."""
    choices = event.get("choices")
    if type(choices) is not list or len(choices) != 1 or event.get("usage") is not None \
            or "error" in event:
        return None
    choice = choices[0]
    delta = choice.get("delta") if type(choice) is dict and not choice.get("finish_reason") else None
    if type(delta) is not dict or delta.keys() - {"content", "role"}:
        return None
    content = delta.get("content")
    return content if type(content) is str else None


CONTENT_KEY = re.compile(r'[{,]\s*"content"\s*:\s*"')


class TextChunks:
    """Reads the chunks of one stream that hold only text without parsing them (issue 13: the
    JSON decode and the look at the chunk's structure were a fifth of a stream's CPU).

    An OpenAI-compatible stream's text chunks are alike byte for byte but for the text (id,
    created and model stay the same). From the first one parsed, learn() keeps the bytes
    before and after its one `"content"` string; a payload with that prefix and suffix around
    exactly one JSON string (json.decoder.scanstring) is a chunk of the same structure, so
    text() returns that string. Any other payload gives None and is parsed as usual.
    """

    def __init__(self):
        self.prefix = self.suffix = None
        self.tries = 3  # learning stops if the text chunks keep differing (an id per chunk)

    def text(self, payload: str) -> str | None:
        prefix = self.prefix
        if prefix is None or not payload.startswith(prefix) or not payload.endswith(self.suffix):
            return None
        try:
            text, end = scanstring(payload, len(prefix))
        except ValueError:  # not one complete JSON string there
            return None
        return text if end == len(payload) - len(self.suffix) else None

    def learn(self, payload: str, event: dict) -> None:
        """Take payload's shape if it is a text chunk (plain_text) whose text is its only
        `"content"` key's string."""
        if not self.tries or not plain_text(event):
            return
        self.tries -= 1
        keys = list(CONTENT_KEY.finditer(payload))
        if len(keys) != 1:
            return
        start = keys[0].end()
        try:
            text, end = scanstring(payload, start)
        except ValueError:
            return
        if text == plain_text(event):
            self.prefix, self.suffix = payload[:start], payload[end:]


def openai_finish(reason: str) -> Finish:
    """An OpenAI-compatible finish_reason in the neutral vocabulary (chatbridge.chat.Finish)."""
    if reason in UNUSABLE_FINISHES:  # the upstream's fault, so another key may do better
        return Finish("error", reason, UNUSABLE_FINISHES[reason], failure="server")
    return Finish(FINISH_REASONS.get(reason, "other"), reason)
