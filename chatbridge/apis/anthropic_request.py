"""Parsing Anthropic Messages requests (POST /v1/messages and /v1/messages/count_tokens) into
the neutral ChatRequest, for chatbridge/apis/anthropic.py, whose docstring lists the rules.

Every check names the field (`messages[2].content[0].tool_use_id`) in a 400 (413 for a file
over MAX_UPLOAD_MB or text over MAX_TEXT_CHARS, 415 for a file type not allowed).
Reference: https://docs.anthropic.com/en/api/messages
"""

import json
import mimetypes
import re
from typing import Any
from urllib.parse import urlsplit

from ..chat import Attachment, ChatRequest, Turn
from ..config import Config
from ..errors import ClientError
from ..logs import log
from .fields import (
    bounded,
    check_file_type,
    check_text,
    checked_file,
    model_field,
    optional,
    positive_field,
    stream_field,
)

# What Claude Code puts first in its system prompt: metadata for Anthropic's billing, not an
# instruction; it changes with every version, so it would only defeat an upstream's caching.
BILLING_HEADER = "x-anthropic-billing-header:"
WEB_URL = re.compile(r"https?://[^\s/?#]+[^\s]{0,2000}")
IGNORED_BLOCKS = {"redacted_thinking", "server_tool_use", "web_search_tool_result",
                  "web_fetch_tool_result", "code_execution_tool_result", "mcp_tool_use",
                  "mcp_tool_result", "container_upload", "tool_reference"}


def parse_request(body: dict, config: Config, registry, counting: bool = False) -> ChatRequest:
    """Validate a Messages (or count_tokens) request into a ChatRequest (400 naming the field)."""
    system, turns = parse_messages(body.get("messages"), config)
    system = "\n\n".join(filter(None, [system_text(body.get("system"), config), system])) or None
    check_text(system, turns, config)
    provider, model = model_field(body, registry)
    registry.check_files(provider, turns)
    max_tokens = positive_field(body, "max_tokens")  # an integer: 1e30 is a 400, never rounded
    if not counting and max_tokens is None:
        raise ClientError("'max_tokens' is required: a positive integer")
    stop = optional(body, "stop_sequences", list, lambda v: all(isinstance(s, str) for s in v),
                    "a list of strings")
    tools = parse_tools(body.get("tools"), config)
    choice = parse_tool_choice(body.get("tool_choice"), tools, body.get("tools") or [])
    max_tokens = None if counting else max_tokens
    thinking, budget = parse_thinking(body.get("thinking"))
    settings = {"max_tokens": max_tokens, "stop": stop or None,
                "temperature": optional(body, "temperature", (int, float), lambda v: 0 <= v <= 1,
                                        "a number from 0 to 1"),
                "top_p": optional(body, "top_p", (int, float), lambda v: 0 <= v <= 1,
                                  "a number from 0 to 1")}
    return ChatRequest(
        shape="anthropic", provider=provider, model=model, turns=turns, system=system,
        stream=stream_field(body), tools=tools, tool_choice=choice and choice[0],
        thinking=thinking, thinking_budget=budget, include_usage=True, empty_answers=True,
        passthrough=openai_fields(settings, tools, choice), **settings)


def openai_fields(settings: dict, tools: list | None, choice: tuple | None) -> dict:
    """The request's settings in Chat Completions terms, for the OpenAI-compatible upstream."""
    fields = {**settings, "tools": tools, "tool_choice": choice and choice[0]}
    if choice and choice[1]:
        fields["parallel_tool_calls"] = False
    return {name: value for name, value in fields.items() if value is not None}


def system_text(raw: Any, config: Config) -> str:
    """The `system` field: a string or at most MAX_PARTS text blocks (cache_control ignored)."""
    if raw is None or isinstance(raw, str):
        return raw or ""
    if isinstance(raw, list):
        bounded(raw, "system", "blocks", config.max_parts, "MAX_PARTS")
    if not isinstance(raw, list) or not all(isinstance(b, dict) and b.get("type") == "text"
                                            and isinstance(b.get("text"), str) for b in raw):
        raise ClientError("'system' must be a string or a list of {type: text, text} blocks")
    return "\n\n".join(b["text"] for b in raw if not b["text"].startswith(BILLING_HEADER))


def parse_messages(raw: Any, config: Config) -> tuple:
    """System text (from `role: system` messages, which Claude Code sends) and turns from
    Anthropic messages, at most MAX_TURNS."""
    if not isinstance(raw, list) or not raw:
        raise ClientError("'messages' must be a non-empty list")
    system, turns, calls = [], [], {}  # calls: tool_use id -> name, for tool_result blocks
    for index, message in enumerate(bounded(raw, "messages", "messages", config.max_turns,
                                            "MAX_TURNS")):
        where = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise ClientError(f"'{where}.role' must be user or assistant")
        blocks = content_blocks(message.get("content"), where, config)
        if role == "system":
            system.append("\n".join(b["text"] for b in blocks if b.get("type") == "text"
                                    and isinstance(b.get("text"), str)))
        elif role == "user":
            turns += user_turns(blocks, where, config, calls)
        else:
            turns += assistant_turns(blocks, where, calls)
    if not any(turn.role in ("user", "tool") for turn in turns):
        raise ClientError("'messages' needs at least one user message")
    if turns[-1].role == "assistant":
        raise ClientError("the last message must be the user's: an assistant prefill is not "
                          "supported")
    return "\n\n".join(s for s in system if s.strip()), turns


def content_blocks(content: Any, where: str, config: Config) -> list:
    """A message's content as blocks: a string is one text block; at most MAX_PARTS."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ClientError(f"'{where}.content' must be a string or a list of content blocks")
    bounded(content, f"{where}.content", "blocks", config.max_parts, "MAX_PARTS")
    if not all(isinstance(block, dict) and isinstance(block.get("type"), str) for block in content):
        raise ClientError(f"'{where}.content' must hold objects with a 'type'")
    return content


def text_field(block: dict, name: str, where: str) -> str:
    value = block.get(name)
    if not isinstance(value, str):
        raise ClientError(f"'{where}.{name}' must be a string")
    return value


def user_turns(blocks: list, where: str, config: Config, calls: dict) -> list:
    """A user message as turns: its tool results first (one tool turn each), then its text
    and files (images a tool returned included) as a user turn."""
    results, texts, files = [], [], []
    for index, block in enumerate(blocks):
        at, kind = f"{where}.content[{index}]", block["type"]
        if kind == "tool_result":
            result, result_files = tool_result(block, at, config, calls)
            results.append(result)
            files += result_files
        elif kind == "text":
            texts.append(text_field(block, "text", at))
        elif kind in ("image", "document"):
            file = source_file(block, at, config)
            (texts if isinstance(file, str) else files).append(file)
        elif kind not in IGNORED_BLOCKS:
            raise ClientError(f"'{at}.type' {kind!r} is not supported here: send text, image, "
                              "document or tool_result blocks")
    text = "\n".join(t for t in texts if t)
    return results + ([Turn("user", text, tuple(files))] if text.strip() or files else [])


def tool_result(block: dict, at: str, config: Config, calls: dict) -> tuple:
    """A tool_result block as a tool turn (an error result as {"error": text}), and the images
    it holds."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or call_id not in calls:
        raise ClientError(f"'{at}.tool_use_id' must name a tool_use block of an earlier "
                          "assistant message")
    content = block.get("content")
    texts, files = [], []
    if content is None or isinstance(content, str):
        texts.append(content or "")
    else:
        for index, part in enumerate(content_blocks(content, at, config)):
            if part["type"] in ("image", "document"):
                file = source_file(part, f"{at}.content[{index}]", config)
                (texts if isinstance(file, str) else files).append(file)
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = json.dumps({"error": text}, ensure_ascii=False)
    return Turn("tool", text, tool_call_id=call_id, tool_name=calls[call_id]), files


def source_file(block: dict, at: str, config: Config):
    """An image or document block's file (an Attachment), or a plain-text document's text."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") if isinstance(source.get("media_type"), str) else ""
        title = block.get("title") if isinstance(block.get("title"), str) else ""
        return checked_file(media_type, source["data"], title, at, config)
    if kind == "text" and isinstance(source.get("data"), str):
        return source["data"]
    if kind == "url" and isinstance(source.get("url"), str):
        return url_file(block, source["url"], at, config)
    if kind == "file":
        raise ClientError(f"'{at}.source' of type file (Anthropic's Files API) is not supported: "
                          "send the file as {type: base64, media_type, data} or a url")
    raise ClientError(f"'{at}.source' must be {{type: base64, media_type, data}}, {{type: url, "
                      "url}} (or a document's {type: text, media_type: text/plain, data})")


def url_file(block: dict, url: str, at: str, config: Config) -> Attachment:
    """A file the upstream fetches itself from an http(s) URL (ChatBridge never does): its
    type from the URL's extension, else a JPEG image or a PDF document, as Anthropic takes."""
    if not WEB_URL.fullmatch(url):
        raise ClientError(f"'{at}.source.url' must be an http or https URL")
    guessed = mimetypes.guess_type(urlsplit(url).path)[0] or ""
    family = "image/" if block["type"] == "image" else ""
    mime_type = guessed if guessed.startswith(family) and guessed else (
        "image/jpeg" if family else "application/pdf")
    check_file_type(mime_type, at, config)
    title = block.get("title") if isinstance(block.get("title"), str) else ""
    return Attachment(mime_type, "", title, url=url)


def assistant_turns(blocks: list, where: str, calls: dict) -> list:
    """An assistant message as a turn: its text, its thinking as reasoning, its tool_use blocks
    as calls, each with the signature of the thinking block before it."""
    texts, thoughts, tool_calls, signature = [], [], [], None
    for index, block in enumerate(blocks):
        at, kind = f"{where}.content[{index}]", block["type"]
        if kind == "text":
            texts.append(text_field(block, "text", at))
        elif kind == "thinking":
            thoughts.append(block.get("thinking") if isinstance(block.get("thinking"), str) else "")
            signature = block.get("signature") if isinstance(block.get("signature"), str) else None
        elif kind == "tool_use":
            tool_calls.append(tool_use(block, at, signature or None))
            calls[tool_calls[-1]["id"]] = tool_calls[-1]["name"]
            signature = None
        elif kind not in IGNORED_BLOCKS:
            raise ClientError(f"'{at}.type' {kind!r} is not supported in an assistant message")
    text = "\n".join(t for t in texts if t)
    if not text.strip() and not tool_calls:
        return []  # upstreams refuse empty turns
    return [Turn("assistant", text, tool_calls=tuple(tool_calls), reasoning="".join(thoughts))]


def tool_use(block: dict, at: str, signature: str | None) -> dict:
    """A tool_use block as a neutral call {"id", "name", "arguments", "signature"}."""
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str) \
            or not isinstance(block.get("input", {}), dict):
        raise ClientError(f"'{at}' must be {{type: tool_use, id, name, input: an object}}")
    return {"id": block["id"], "name": block["name"], "signature": signature,
            "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}


def parse_tools(raw: Any, config: Config) -> list | None:
    """Client tools ({name, description, input_schema}) as OpenAI function tools; server tools
    the upstream cannot run are left out and logged. At most MAX_TOOLS."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ClientError("'tools' must be a list of {name, description, input_schema}")
    tools = []
    for index, tool in enumerate(bounded(raw, "tools", "tools", config.max_tools, "MAX_TOOLS")):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise ClientError(f"'tools[{index}]' must be {{name, description, input_schema}}")
        if tool.get("type") not in (None, "custom"):
            log.info("left out the server tool %r (%s): no upstream runs it", tool["name"],
                     tool.get("type"))
            continue
        schema, description = tool.get("input_schema"), tool.get("description", "")
        if not isinstance(schema, dict) or not isinstance(description, str):
            raise ClientError(f"'tools[{index}]' must have an input_schema object and a "
                              "string description")
        # JSON Schema's "$schema" is metadata that Gemini's function declarations do not take
        parameters = {k: v for k, v in schema.items() if k != "$schema"}
        tools.append({"type": "function", "function": {
            "name": tool["name"], "parameters": parameters,
            **({"description": description} if description else {})}})
    return tools or None


def parse_tool_choice(raw: Any, tools: list | None, offered: list) -> tuple | None:
    """tool_choice as (Chat Completions' tool_choice, whether parallel calls are off); None
    without tools the upstream runs. An object of type auto, any, none or tool, whose `name`
    must name one of `tools` (offered, as sent); a server tool's is auto, since it is left
    out. Else a 400."""
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("auto", "any", "none", "tool"):
        raise ClientError("'tool_choice' must be an object: {type: auto}, {type: any}, "
                          "{type: none} or {type: tool, name}")
    name = raw.get("name")
    if kind == "tool" and name not in [t.get("name") for t in offered if isinstance(t, dict)]:
        raise ClientError(f"'tool_choice.name' must name one of 'tools', not {name!r}")
    if not tools:
        return None
    functions = [tool["function"]["name"] for tool in tools]
    choice = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or (
        {"type": "function", "function": {"name": name}} if name in functions else "auto")
    return choice, raw.get("disable_parallel_tool_use") is True


def parse_thinking(raw: Any) -> tuple:
    """`thinking` as (ChatRequest.thinking, its budget in tokens)."""
    if raw is None:
        return None, None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        raise ClientError("'thinking' must be {type: enabled, budget_tokens}, {type: disabled} "
                          "or {type: adaptive}")
    if kind == "disabled":
        return False, None
    budget = optional(raw, "budget_tokens", int, lambda v: v > 0, "a positive integer") \
        if kind == "enabled" else None
    if raw.get("display") == "omitted":  # the client will not show thoughts: do not ask for them
        return False, budget
    return (True if kind == "enabled" else None), budget
