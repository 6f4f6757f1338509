"""Google Gemini's REST API (generateContent, streamGenerateContent with alt=sse, models).

Wire format: ../shared/reference/wire-formats.md and the Gemini API reference. The key goes
in the x-goog-api-key header, never in a `key=` URL parameter. Besides translating neutral
requests, this provider passes Gemini's own API through unchanged for /v1beta (NativeCall).
"""

import json
import re
from dataclasses import dataclass, replace
from urllib.parse import quote, urlencode

from ..chat import ChatRequest, Delta, Finish, Turn, parse_json, parse_strict_json
from ..config import ApiKey
from ..errors import UpstreamError
from ..failures import classify_failure, failure_from_event
from ..logs import log
from ..relay import Answer, Cancel
from ..sse import iter_sse_data
from ..transport import iter_stream, opened_stream
from .base import HttpProvider

# Candidate.finishReason (Gemini API reference, GenerateContentResponse) in the neutral
# vocabulary of chatbridge.chat.Finish; any reason not listed is "other".
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
FILTER_FINISHES = {"SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                   "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER",
                   "MODEL_ARMOR", "JAILBREAK"}
UNUSABLE_FINISHES = {  # the answer cannot be used as it is
    "MALFORMED_FUNCTION_CALL": "the model's function call was not valid",
    "UNEXPECTED_TOOL_CALL": "the model called a tool the request did not offer",
    "TOO_MANY_TOOL_CALLS": "the model made too many tool calls in a row",
    "MISSING_THOUGHT_SIGNATURE": "a function call sent back lacked its thought signature",
    "MALFORMED_RESPONSE": "the model's answer was malformed",
}
SETTING_NAMES = {"temperature": "temperature", "max_tokens": "maxOutputTokens"}


@dataclass(frozen=True)
class NativeCall:
    """A request to Gemini's own REST API, passed through with a pool key: models/{model}
    (empty for the list), its :action, the query without the client's key, the raw body."""

    method: str
    model: str
    action: str
    query: dict
    body: bytes


class GeminiProvider(HttpProvider):
    """Gemini over its REST API; serves model names starting with gemini or gemma, and the
    `gemini/` prefix. Its own API is passed through for /v1beta (NativeCall)."""

    name = "gemini"
    display_name = "Gemini"
    quota_zone = "America/Los_Angeles"  # per-day quotas reset at midnight Pacific time
    key_noun = "Gemini key"
    key_variable = "ALL_GEMINI_API_KEYS"
    owned_by = "google"
    counts_tokens = True

    @classmethod
    def from_config(cls, config, transport):
        return cls(config.gemini_keys, config.gemini_base_url, transport, config.gemini_model)

    def claims(self, model):
        return model.startswith(("gemini", "gemma"))

    def open_stream(self, chat, key, cancel):
        return self.without_unsupported(chat, lambda c: super(GeminiProvider, self).open_stream(
            c, key, cancel))

    def fetch_answer(self, chat, key, cancel):
        return self.without_unsupported(chat, lambda c: super(GeminiProvider, self).fetch_answer(
            c, key, cancel))

    def without_unsupported(self, chat: ChatRequest, call):
        """call(chat); when Gemini refuses a feature the model does not take, once more on the
        same key without it, and say so in the log."""
        try:
            return call(chat)
        except UpstreamError as failure:
            feature = unsupported_feature(failure)
            if failure.kind != "rejected" or feature is None:
                raise
            log.warning("%s does not take %s; asking again without it", chat.model, feature)
            return call(without(chat, feature))

    def chat_request(self, chat, key, stream):
        takes = accepts(chat.model)
        system = chat.system if takes.system_instruction else None
        turns = chat.turns if system or not chat.system else with_system_text(chat.turns, chat.system)
        body = {"contents": gemini_contents(turns), "generationConfig": gemini_generation(chat),
                **gemini_tools(chat)}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = f"{self.base_url}/models/{quote(chat.model, safe='')}:{method}"
        return url, {"x-goog-api-key": key.secret}, body

    def deltas(self, event):
        return gemini_deltas(event)

    def count_tokens(self, chat, key, cancel):
        """Gemini's own count (models/{model}:countTokens) of the request chat would make."""
        return self.without_unsupported(chat, lambda c: self.count_request(c, key))

    def count_request(self, chat: ChatRequest, key: ApiKey) -> int:
        url, headers, body = self.chat_request(chat, key, stream=False)
        url = url.rpartition(":")[0] + ":countTokens"
        request = {"generateContentRequest": {"model": f"models/{chat.model}", **body}}
        response = self.transport.send("POST", url, headers, stream=False, json=request)
        parsed = parse_json(response.text)
        if response.status_code != 200:
            raise classify_failure(response.status_code, parsed, response.headers)
        total = parsed.get("totalTokens", 0) if isinstance(parsed, dict) else None  # proto3
        if not isinstance(total, int) or isinstance(total, bool):  # JSON leaves out a zero
            raise UpstreamError("broken", "Gemini's countTokens answer has no totalTokens")
        return total

    def models_request(self, key):
        return f"{self.base_url}/models?pageSize=1000", {"x-goog-api-key": key.secret}

    def model_names(self, body):
        """The names of the listed models that generate content; malformed entries are skipped."""
        models = body.get("models")
        names = [generating_model(m) for m in models] if isinstance(models, list) else []
        return [name for name in names if name]

    def send_native(self, call: NativeCall, key: ApiKey, stream: bool):
        """A Gemini REST call as the client made it, but with a pool key in the header."""
        target = "models" + (f"/{quote(call.model, safe='')}" if call.model else "") + (
            f":{call.action}" if call.action else "")
        query = f"?{urlencode(call.query)}" if call.query else ""
        headers = {"x-goog-api-key": key.secret, "Content-Type": "application/json"}
        return self.transport.send(call.method, f"{self.base_url}/{target}{query}", headers,
                                   stream, data=call.body or None)

    def fetch_native(self, call: NativeCall, key: ApiKey, cancel: Cancel) -> tuple:
        """Gemini's answer to a non-streaming call, unchanged: (body bytes, content type)."""
        response = self.send_native(call, key, stream=False)
        if response.status_code != 200:
            failure = classify_failure(response.status_code, parse_json(response.text),
                                       response.headers)
            failure.body = response.content
            raise failure
        return response.content, response.headers.get("Content-Type",
                                                       "application/json; charset=UTF-8")

    def open_native_stream(self, call: NativeCall, key: ApiKey, cancel: Cancel) -> Answer:
        """Gemini's stream, unchanged; an SSE stream must first show an event that is no error."""
        with opened_stream(self.send_native(call, key, stream=True), cancel) as response:
            if call.query.get("alt") != "sse":  # the JSON-array form, relayed as it comes
                return Answer([], map(native_bytes, iter_stream(response)), response, cancel)
            events = iter_sse_data(iter_stream(response))
            head = first_native_event(events)
            return Answer([head], map(native_delta, events), response, cancel)


def native_bytes(chunk) -> Delta:
    """A piece of a passed-through body as a bytes delta; the relay's markers as they are."""
    return chunk if chunk.__class__ is Delta else Delta("bytes", chunk)


def native_delta(event: tuple) -> Delta:
    """A passed-through SSE event as an event delta, a line that is none as a bytes delta (an
    error tail), the relay's markers as they are."""
    kind, payload = event
    if kind == "data":
        return Delta("event", payload)
    if kind == "flush":
        return Delta(kind, payload)
    return Delta("bytes", payload.encode() + b"\n")


def first_native_event(events) -> Delta:
    """The first event of a passed-through Gemini stream, unless it is an error."""
    for kind, payload in events:
        if kind == "flush":
            continue
        event = parse_json(payload)
        if isinstance(event, list) and event:
            event = event[0]
        if isinstance(event, dict) and "error" in event:
            raise failure_from_event(event["error"])
        if kind == "data":
            return Delta("event", payload)
    raise UpstreamError("broken", "the upstream finished without any content")


# ---------------------------------------------------------------- what each model takes


@dataclass(frozen=True)
class Accepts:
    """What a Gemini model takes in a request."""

    system_instruction: bool = True
    thinking: bool = True  # thinkingConfig.includeThoughts
    # the most generationConfig.maxOutputTokens and thinkingConfig.thinkingBudget it takes
    # (Gemini's model pages; a larger value is a 400 INVALID_ARGUMENT)
    max_output_tokens: int = 65536
    thinking_budget: int = 24576


# What Gemini answers (400 INVALID_ARGUMENT) when a model does not take a feature.
UNSUPPORTED = ((re.compile(r"developer instruction is not enabled|system instruction", re.I),
                "system_instruction"),
               (re.compile(r"thinking", re.I), "thinking"),
               (re.compile(r"function calling is not enabled", re.I), "tools"),
               (re.compile(r"json mode is not enabled", re.I), "json_mode"))


def accepts(model: str) -> Accepts:
    """The one place that knows what each model family takes: Gemma on the Gemini API takes
    no system instruction and does not think; Gemini 1.x and 2.0 do not think; 2.5 and later
    take everything. Gemma, 1.x and 2.0 write at most 8192 tokens, 2.5 and later 65536; Pro
    models think for at most 32768 tokens, the others 24576."""
    if model.startswith("gemma"):
        return Accepts(system_instruction=False, thinking=False, max_output_tokens=8192)
    if model.startswith(("gemini-1", "gemini-2.0")):
        return Accepts(thinking=False, max_output_tokens=8192)
    return Accepts(thinking=model.startswith("gemini-"),
                   thinking_budget=32768 if "-pro" in model else 24576)


def thinking_model(model: str) -> bool:
    """Whether to ask a Gemini model for its thoughts (2.5 and later)."""
    return accepts(model).thinking


def with_system_text(turns: list, system: str) -> list:
    """For a model without system instructions: the system text leads the first user turn."""
    first = next((i for i, turn in enumerate(turns) if turn.role == "user"), None)
    if first is None:
        return turns
    turn = turns[first]
    return turns[:first] + [replace(turn, text=f"{system}\n\n{turn.text}".strip())] + turns[first + 1:]


def unsupported_feature(failure: UpstreamError) -> str | None:
    """The feature a refusal names as one the model does not take, if it names one."""
    return next((feature for pattern, feature in UNSUPPORTED if pattern.search(failure.message)),
                None)


def without(chat: ChatRequest, feature: str) -> ChatRequest:
    """The request without a feature the model does not take."""
    if feature == "system_instruction" and chat.system:
        return replace(chat, system=None, turns=with_system_text(chat.turns, chat.system))
    if feature == "tools":
        return replace(chat, tools=None, tool_choice=None)
    if feature == "json_mode":
        return replace(chat, response_format=None)
    return replace(chat, thinking=False, thinking_budget=None)


def generating_model(entry) -> str | None:
    """A models.list entry's name, if it is a well-formed model that generates content."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None
    methods = entry.get("supportedGenerationMethods")
    if not isinstance(methods, list) or "generateContent" not in methods:
        return None
    return entry["name"].removeprefix("models/") or None


def gemini_parts(turn: Turn) -> list:
    """A turn's Gemini parts: text, inline files, function calls or a function's result."""
    if turn.role == "tool":
        result = parse_strict_json(turn.text)
        response = result if isinstance(result, dict) else {"result": turn.text if result is None
                                                             else result}
        return [{"functionResponse": {"name": turn.tool_name, "response": response}}]
    parts = [{"text": turn.text}] if turn.text else []
    parts += [{"file_data": {"mime_type": f.mime_type, "file_uri": f.url}} if f.url else
              {"inline_data": {"mime_type": f.mime_type, "data": f.data}} for f in turn.files]
    for call in turn.tool_calls:
        args = parse_strict_json(call["arguments"])
        part = {"functionCall": {"name": call["name"], "args": args if isinstance(args, dict)
                                 else {}}}
        if call.get("signature"):
            part["thoughtSignature"] = call["signature"]
        parts.append(part)
    return parts


def gemini_contents(turns: list) -> list:
    """Gemini contents: roles user and model; consecutive function results share one turn."""
    contents = []
    for turn in turns:
        role = "model" if turn.role == "assistant" else "user"
        if turn.role == "tool" and contents and contents[-1].get("results"):
            contents[-1]["parts"] += gemini_parts(turn)
            continue
        contents.append({"role": role, "parts": gemini_parts(turn),
                         **({"results": True} if turn.role == "tool" else {})})
    return [{"role": c["role"], "parts": c["parts"]} for c in contents]


def gemini_generation(chat: ChatRequest) -> dict:
    """generationConfig: the client API's default settings, then the request's own."""
    generation = {SETTING_NAMES[name]: value for name, value in chat.default_settings.items()}
    takes = accepts(chat.model)
    # clients of APIs where max_tokens is required ask for more than a model writes (Claude
    # Code: 32000 or more), which Gemini would refuse
    max_tokens = min(chat.max_tokens, takes.max_output_tokens) if chat.max_tokens else None
    settings = {"temperature": chat.temperature, "maxOutputTokens": max_tokens,
                "topP": chat.top_p, "stopSequences": chat.stop}
    generation.update({name: value for name, value in settings.items() if value is not None})
    response_format = (chat.response_format or {}).get("type")
    if response_format in ("json_object", "json_schema"):
        generation["responseMimeType"] = "application/json"
        schema = (chat.response_format.get("json_schema") or {}).get("schema")
        if schema:
            generation["responseJsonSchema"] = schema
    thinking = {}
    if chat.thinking if chat.thinking is not None else thinking_model(chat.model):
        thinking["includeThoughts"] = True
    if chat.thinking_budget:  # a budget, with or without the thoughts in the answer
        thinking["thinkingBudget"] = min(chat.thinking_budget, takes.thinking_budget)
    if thinking:
        generation["thinkingConfig"] = thinking
    return generation


def gemini_tools(chat: ChatRequest) -> dict:
    """OpenAI function tools and tool_choice as Gemini tools and toolConfig."""
    if not chat.tools:
        return {}
    declarations = [{"name": t["function"]["name"],
                     **({"description": t["function"]["description"]}
                        if t["function"].get("description") else {}),
                     **({"parametersJsonSchema": t["function"]["parameters"]}
                        if t["function"].get("parameters") else {})} for t in chat.tools]
    tools = {"tools": [{"functionDeclarations": declarations}]}
    choice = chat.tool_choice
    if isinstance(choice, dict):
        tools["toolConfig"] = {"functionCallingConfig": {
            "mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}}
    elif choice in ("none", "auto", "required"):
        mode = {"none": "NONE", "auto": "AUTO", "required": "ANY"}[choice]
        tools["toolConfig"] = {"functionCallingConfig": {"mode": mode}}
    return tools


def gemini_usage(meta: dict) -> dict:
    """Gemini usageMetadata (a running total) in OpenAI's usage shape."""
    prompt = meta.get("promptTokenCount", 0)
    completion = meta.get("candidatesTokenCount", 0) + meta.get("thoughtsTokenCount", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": meta.get("totalTokenCount", prompt + completion)}


def gemini_finish(reason: str) -> Finish:
    """A Gemini finishReason in the neutral vocabulary (chatbridge.chat.Finish)."""
    if reason in UNUSABLE_FINISHES:
        return Finish("error", reason, UNUSABLE_FINISHES[reason])
    neutral = FINISH_REASONS.get(reason) or ("content_filter" if reason in FILTER_FINISHES else "other")
    return Finish(neutral, reason)


def gemini_deltas(event: dict) -> list:
    """The deltas in one Gemini GenerateContentResponse (a stream chunk or a whole answer)."""
    if "error" in event:
        raise failure_from_event(event["error"])
    candidates = event.get("candidates") or []
    blocked = (event.get("promptFeedback") or {}).get("blockReason")
    if not candidates and blocked:
        raise UpstreamError("rejected", f"Gemini blocked the prompt (reason: {blocked})")
    deltas = [Delta("usage", gemini_usage(event["usageMetadata"]))] if event.get(
        "usageMetadata") else []
    candidate = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
    texts, calls = {"reasoning": [], "text": []}, []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if isinstance(part, dict) and isinstance(part.get("text"), str) and part["text"]:
            texts["reasoning" if part.get("thought") else "text"].append(part["text"])
        elif isinstance(part, dict) and (part.get("functionCall") or {}).get("name"):
            calls.append(function_call_delta(part))
    deltas += [Delta(kind, "".join(pieces)) for kind, pieces in texts.items() if pieces] + calls
    if candidate.get("finishReason"):
        deltas.append(Delta("finish", gemini_finish(candidate["finishReason"])))
    return deltas


def function_call_delta(part: dict) -> Delta:
    """A functionCall part as a tool_call delta; its thought signature rides along."""
    call = part["functionCall"]
    return Delta("tool_call", {
        "index": None, "id": call.get("id"), "name": call.get("name", ""),
        "arguments": json.dumps(call.get("args") or {}, ensure_ascii=False),
        "signature": part.get("thoughtSignature")})
