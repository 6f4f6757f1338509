"""Gemini's request and answer shapes on the neutral path: what /v1beta (and Google's /v1)
serve for a model that is not passed through to Gemini (the built-in echo, or a model of
another upstream by its name or alias). Source: the Gemini API reference, GenerateContentRequest,
GenerateContentResponse, models.countTokens, Model.

Rules:
- Field names are taken in camelCase or snake_case, as Google's JSON parser takes them.
- contents: roles user and model; parts text (model parts with `thought` are its reasoning),
  inlineData files, functionCall (with its thoughtSignature), functionResponse. A
  functionResponse answers the earlier call of its id, else the earliest unanswered call of
  its name. fileData (a file URI) is refused: only Gemini itself can read it.
- generationConfig: temperature, topP, maxOutputTokens, stopSequences, candidateCount (1 only),
  responseMimeType application/json (JSON mode) with responseSchema or responseJsonSchema,
  thinkingConfig.includeThoughts. tools.functionDeclarations become function tools
  (parameters or parametersJsonSchema, with OpenAPI's upper-case types in lower case);
  toolConfig.functionCallingConfig.mode NONE, AUTO, ANY (with one allowed name: that tool).
- Answers: each delta is one GenerateContentResponse chunk; function calls go out whole, in the
  last chunk with finishReason and usageMetadata.
"""

import json
import re
import uuid
from typing import Any

from ..chat import ChatRequest, Delta, ToolCallTracker, Turn, parse_strict_json
from ..config import Config
from ..errors import ClientError
from ..sse import StreamWriter
from .fields import bounded, check_text, checked_file

FINISH_REASONS = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS",
                  "content_filter": "SAFETY"}  # any other neutral reason is OTHER
TOKEN_LIMITS = {"inputTokenLimit": 1_048_576, "outputTokenLimit": 65_536}  # as Gemini 2.5's


def get(obj: Any, name: str) -> Any:
    """A field by its camelCase name, or its snake_case one."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(name)
    return obj.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)) \
        if value is None else value


def parse_generate(body: dict, provider: str, model: str, stream: bool, config: Config) -> ChatRequest:
    """A GenerateContentRequest as a ChatRequest (400 naming the field)."""
    turns = parse_contents(get(body, "contents"), config)
    system = parse_system(get(body, "systemInstruction"), config)
    check_text(system, turns, config)
    generation = get(body, "generationConfig") or {}
    if not isinstance(generation, dict):
        raise ClientError("'generationConfig' must be an object")
    tools = parse_tools(get(body, "tools"), config)
    return ChatRequest(
        shape="native", provider=provider, model=model, turns=turns, system=system,
        stream=stream, tools=tools or None, tool_choice=parse_tool_choice(body) if tools else None,
        empty_answers=True, **generation_settings(generation))


def parse_contents(raw: Any, config: Config) -> list:
    """Turns from Gemini contents, at most MAX_TURNS of at most MAX_PARTS parts each."""
    if not isinstance(raw, list) or not raw:
        raise ClientError("'contents' must be a non-empty list of {role, parts}")
    turns, pending = [], []  # pending: calls not yet answered, as (id, name)
    for index, content in enumerate(bounded(raw, "contents", "contents", config.max_turns,
                                            "MAX_TURNS")):
        where = f"contents[{index}]"
        parts = get(content, "parts")
        if not isinstance(parts, list):
            raise ClientError(f"'{where}.parts' must be a list of parts")
        bounded(parts, f"{where}.parts", "parts", config.max_parts, "MAX_PARTS")
        role = get(content, "role") or "user"
        if role == "model":
            turns += model_turn(parts, where, pending)
        elif role in ("user", "function", "tool"):
            turns += user_turns(parts, where, config, pending)
        else:
            raise ClientError(f"'{where}.role' must be user or model")
    if not any(turn.role in ("user", "tool") for turn in turns):
        raise ClientError("'contents' needs at least one user content")
    return turns


def model_turn(parts: list, where: str, pending: list) -> list:
    """A model content as an assistant turn (none if empty): text, thoughts, function calls."""
    texts, thoughts, calls = [], [], []
    for part in parts:
        call = get(part, "functionCall")
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{uuid.uuid4().hex[:24]}"
            args = call.get("args") if isinstance(call.get("args"), dict) else {}
            signature = get(part, "thoughtSignature")
            calls.append({"id": call_id, "name": call["name"], "arguments": json.dumps(args),
                          "signature": signature if isinstance(signature, str) else None})
            pending.append((call_id, call["name"]))
        elif isinstance(get(part, "text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
        elif not isinstance(part, dict):
            raise ClientError(f"'{where}.parts' must hold objects")
    if not "".join(texts).strip() and not calls:
        return []
    return [Turn("assistant", "".join(texts), tool_calls=tuple(calls), reasoning="".join(thoughts))]


def user_turns(parts: list, where: str, config: Config, pending: list) -> list:
    """A user content as turns: a tool turn per functionResponse, then its text and files."""
    texts, files, results = [], [], []
    for part in parts:
        if not isinstance(part, dict):
            raise ClientError(f"'{where}.parts' must hold objects")
        if isinstance(get(part, "text"), str):
            texts.append(part["text"])
        elif get(part, "inlineData") is not None:
            files.append(inline_file(get(part, "inlineData"), where, config))
        elif get(part, "functionResponse") is not None:
            results.append(tool_result(get(part, "functionResponse"), where, pending))
        elif get(part, "fileData") is not None:
            raise ClientError(f"'{where}.parts' has fileData: only Gemini models can read a "
                              "file URI; send the file as inlineData")
    text = "\n".join(texts)
    return results + ([Turn("user", text, tuple(files))] if text.strip() or files else [])


def inline_file(blob: Any, where: str, config: Config):
    data, mime = get(blob, "data"), get(blob, "mimeType")
    if not isinstance(data, str) or not isinstance(mime, str):
        raise ClientError(f"'{where}.parts[].inlineData' must have string mimeType and data (base64)")
    return checked_file(mime, data, "", f"'{where}.parts[].inlineData'", config)


def tool_result(response: Any, where: str, pending: list) -> Turn:
    """A functionResponse as a tool turn answering the call it names."""
    name, call_id = get(response, "name"), get(response, "id")
    if not isinstance(name, str):
        raise ClientError(f"'{where}.parts[].functionResponse' must have a name")
    match = next((p for p in pending if p[0] == call_id), None) or \
        next((p for p in pending if p[1] == name), None)
    if match is None:
        raise ClientError(f"'{where}.parts[].functionResponse' answers no earlier functionCall "
                          f"named {name!r}")
    pending.remove(match)
    result = response.get("response")
    text = json.dumps(result, ensure_ascii=False) if not isinstance(result, str) else result
    if isinstance(result, dict) and set(result) in ({"result"}, {"output"}) and isinstance(
            next(iter(result.values())), str):
        text = next(iter(result.values()))  # the SDK wraps a plain result so: {"result": text}
    return Turn("tool", text, tool_call_id=match[0], tool_name=name)


def parse_system(raw: Any, config: Config) -> str | None:
    """systemInstruction: a Content's text parts (at most MAX_PARTS), or a string."""
    if raw is None or isinstance(raw, str):
        return raw or None
    parts = get(raw, "parts")
    if not isinstance(parts, list):
        raise ClientError("'systemInstruction' must be a content with text parts")
    bounded(parts, "systemInstruction.parts", "parts", config.max_parts, "MAX_PARTS")
    return "\n".join(get(p, "text") for p in parts if isinstance(get(p, "text"), str)) or None


def generation_settings(generation: dict) -> dict:
    """ChatRequest fields from generationConfig, each checked."""
    def number(name, low, high):
        value = get(generation, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high):
            raise ClientError(f"'generationConfig.{name}' must be a number from {low} to {high:g}")
        return value
    if get(generation, "candidateCount") not in (None, 1):
        raise ClientError("'generationConfig.candidateCount' must be 1")
    stop = get(generation, "stopSequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise ClientError("'generationConfig.stopSequences' must be a list of strings")
    tokens = number("maxOutputTokens", 1, float("inf"))
    thinking = get(get(generation, "thinkingConfig"), "includeThoughts")
    return dict(temperature=number("temperature", 0, 2), top_p=number("topP", 0, 1),
                max_tokens=int(tokens) if tokens else None, stop=stop or None,
                response_format=response_format(generation),
                thinking=thinking if isinstance(thinking, bool) else None)


def response_format(generation: dict) -> dict | None:
    """JSON mode as OpenAI's response_format: json_schema when a schema is given."""
    if get(generation, "responseMimeType") != "application/json":
        return None
    schema = get(generation, "responseJsonSchema") or get(generation, "responseSchema")
    if isinstance(schema, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    return {"type": "json_object"}


def parse_tools(raw: Any, config: Config) -> list:
    """functionDeclarations as OpenAI function tools (other tools, such as googleSearch,
    only Gemini can run: left out), at most MAX_TOOLS."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ClientError("'tools' must be a list of {functionDeclarations: [...]}")
    lists = [get(tool, "functionDeclarations") or [] for tool in raw]
    if not all(isinstance(declarations, list) for declarations in lists):
        raise ClientError("'tools[].functionDeclarations' must be a list")
    declarations = [d for declarations in lists for d in declarations]
    bounded(declarations, "tools", "function declarations", config.max_tools, "MAX_TOOLS")
    tools = []
    for declaration in declarations:
        if not isinstance(get(declaration, "name"), str):
            raise ClientError("'tools[].functionDeclarations[]' must each have a name")
        parameters = get(declaration, "parametersJsonSchema") or get(declaration, "parameters")
        function = {"name": declaration["name"],
                    "description": str(declaration.get("description") or ""),
                    "parameters": lower_types(parameters) if isinstance(parameters, dict) else {}}
        tools.append({"type": "function", "function": function})
    return tools


def lower_types(schema: Any) -> Any:
    """A schema with OpenAPI's upper-case type names (STRING, OBJECT) in JSON Schema's case."""
    if isinstance(schema, list):
        return [lower_types(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {key: value.lower() if key == "type" and isinstance(value, str) else lower_types(value)
            for key, value in schema.items()}


def parse_tool_choice(body: dict) -> Any:
    """toolConfig.functionCallingConfig as OpenAI's tool_choice."""
    config = get(get(body, "toolConfig"), "functionCallingConfig") or {}
    mode, allowed = str(get(config, "mode") or "AUTO").upper(), get(config, "allowedFunctionNames")
    if mode == "ANY" and isinstance(allowed, list) and len(allowed) == 1 and isinstance(allowed[0], str):
        return {"type": "function", "function": {"name": allowed[0]}}
    return {"NONE": "none", "ANY": "required"}.get(mode, "auto")


def count_request(body: dict, provider: str, model: str, config: Config) -> ChatRequest:
    """A countTokens body ({contents} or {generateContentRequest}) as a ChatRequest."""
    inner = get(body, "generateContentRequest")
    return parse_generate(inner if isinstance(inner, dict) else body, provider, model, False, config)


# ---------------------------------------------------------------- answers


def usage_metadata(usage: dict | None) -> dict:
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {"promptTokenCount": prompt, "candidatesTokenCount": completion,
            "totalTokenCount": usage.get("total_tokens", prompt + completion)}


def function_call_part(call: dict) -> dict:
    args = parse_strict_json(call["arguments"])
    part = {"functionCall": {"id": call["id"], "name": call["name"],
                                "args": args if isinstance(args, dict) else {}}}
    if call.get("signature"):
        part["thoughtSignature"] = call["signature"]
    return part


class Candidate:
    """Collects an answer's deltas into Gemini's candidate parts and usage."""

    def __init__(self, model: str):
        self.model, self.response_id = model, uuid.uuid4().hex[:22]
        self.calls, self.tracker, self.usage = {}, ToolCallTracker(), None

    def response(self, parts: list, finish: str | None = None) -> dict:
        candidate = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = FINISH_REASONS.get(str(finish), "OTHER")
        body = {"candidates": [candidate], "modelVersion": self.model, "responseId": self.response_id}
        if finish is not None:
            body["usageMetadata"] = usage_metadata(self.usage)
        return body

    def take(self, delta: Delta) -> list:
        """The parts a delta adds now (function calls wait for the end: they go out whole)."""
        if delta.kind == "text":
            return [{"text": delta.value}]
        if delta.kind == "reasoning":
            return [{"text": delta.value, "thought": True}]
        if delta.kind == "tool_call":
            index, new = self.tracker.place(delta.value)
            if new:
                self.calls[index] = {**delta.value, "id": delta.value.get("id") or
                                     f"call_{uuid.uuid4().hex[:24]}"}
            else:
                self.calls[index]["arguments"] += delta.value["arguments"]
        elif delta.kind == "usage":
            self.usage = delta.value
        return []

    def call_parts(self) -> list:
        return [function_call_part(self.calls[i]) for i in sorted(self.calls)]


def whole_response(deltas: list, model: str) -> dict:
    """A whole GenerateContentResponse from an answer's deltas."""
    candidate, parts, finish = Candidate(model), [], "stop"
    for delta in deltas:
        if delta.kind == "finish":
            finish = delta.value
        for part in candidate.take(delta):
            if parts and parts[-1].keys() == part.keys() and "text" in part:
                parts[-1]["text"] += part["text"]
            else:
                parts.append(part)
    return candidate.response(parts + candidate.call_parts(), finish)


class GeminiChunkWriter(StreamWriter):
    """Neutral deltas as Gemini's stream: SSE events (alt=sse) or one JSON array. No pings:
    google-genai reads any line that is not data as JSON."""

    ping = b""

    def __init__(self, model: str, sse_events: bool):
        self.candidate, self.sse_events, self.written = Candidate(model), sse_events, False
        if not sse_events:
            self.content_type = "application/json; charset=UTF-8"

    def write(self, body: dict) -> bytes:
        text = json.dumps(body, ensure_ascii=False).encode()
        if self.sse_events:
            return b"data: " + text + b"\r\n\r\n"
        first, self.written = not self.written, True
        return (b"[" if first else b",\r\n") + text

    def event(self, delta: Delta) -> bytes:
        if delta.kind == "finish":
            # An empty text part, not no parts: google-genai's chunk.text is then "" rather than
            # None, which Google's own `print(chunk.text, end="")` loop printed as "None".
            parts = self.candidate.call_parts() or [{"text": ""}]
            return self.write(self.candidate.response(parts, delta.value))
        parts = self.candidate.take(delta)
        return self.write(self.candidate.response(parts)) if parts else b""

    def done(self) -> bytes:
        return b"" if self.sse_events else (b"]" if self.written else b"[]")

    def error(self, message: str) -> bytes:
        error = {"error": {"code": 500, "message": message, "status": "INTERNAL"}}
        body = json.dumps(error, ensure_ascii=False).encode()
        if self.sse_events:
            return b"data: " + body + b"\r\n\r\n"
        return (b",\r\n" + body + b"]") if self.written else (b"[" + body + b"]")


def model_entry(name: str, description: str) -> dict:
    """A Model resource as models.list and models.get give it."""
    return {"name": f"models/{name}", "version": "1", "displayName": name,
            "description": description, **TOKEN_LIMITS,
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"]}
