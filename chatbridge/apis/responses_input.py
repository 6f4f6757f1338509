"""Reading a Responses API request (chatbridge/apis/responses.py) into the neutral ChatRequest.

Source: OpenAI's API reference, "Responses: create" (input items, tools, text.format,
reasoning). Rules:
- `input` is a string (one user message) or a list of items: `message` (roles user,
  assistant, system, developer; content a string or input_text / input_image / input_file /
  output_text parts), `function_call` and `custom_tool_call` (the assistant's calls),
  `function_call_output` and `custom_tool_call_output` (their results, which must answer a
  call made earlier, here or in the previous response), and `reasoning` (its summary goes back
  as the assistant's reasoning; its encrypted_content, when it is ours, holds Gemini's
  thought signatures by call_id). An assistant's reasoning, text and calls in a row are one
  turn. Items of other types (hosted tools' calls, item_reference) are left out and logged.
  Images and files in tool results (Codex's view_image) follow the results as a user turn,
  since no upstream takes a file inside a function's result.
- system and developer messages and `instructions` become the system text, in that order.
- Images and files come as base64 data: URLs or as a file_id from /api/upload; URLs to fetch
  are refused (400), since ChatBridge fetches nothing on a client's behalf.
- `tools`: `function` tools; `custom` tools (Codex's apply_patch) become a function with one
  string parameter `input`, their grammar in its description; the tools of a `namespace` tool
  are offered by their own names, qualified by the namespace (`crm__get`) when another tool
  has the same name (a call names its namespace too); two tools of one name in one scope are
  a 400; hosted tools (web_search, file_search, ...) are left out and logged, never refused,
  since agents send them whatever the model.
- `tool_choice` is one of the reference's forms or a 400 (param `tool_choice`); a function or
  custom tool it names must be among `tools`.
- Every list is measured against its limit (MAX_TURNS, MAX_PARTS, MAX_TOOLS) before
  anything is built from it; each problem is a 400 naming the field.
"""

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..chat import Attachment, Turn
from ..config import Config
from ..errors import ClientError
from ..logs import log
from .fields import DATA_URL, bounded, checked_file, data_url_file, guess_mime, optional
from .responses_output import signatures_in

INPUT_ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
CALL_OUTPUTS = ("function_call_output", "custom_tool_call_output")
CUSTOM_INPUT = "input"  # the one parameter of a custom tool, as the upstream sees it
TOOL_FILES = "(The files the tool calls above returned.)"
# tool_choice's forms for OpenAI's hosted tools (its reference's ToolChoiceTypes, apply_patch
# and shell)
HOSTED_CHOICES = ("file_search", "web_search_preview", "web_search_preview_2025_03_11", "computer",
                  "computer_use", "computer_use_preview", "image_generation", "code_interpreter",
                  "apply_patch", "shell")


class InputReader:
    """Turns and system text from `input` items (rules above). known_calls: call_id -> name
    of the calls in the turns before (a previous response's); namespaces: upstream name ->
    (namespace, name) of the functions of namespace tools (parse_tools)."""

    def __init__(self, config: Config, cached_upload: Callable, known_calls: dict,
                 namespaces: dict | None = None):
        self.config, self.cached_upload = config, cached_upload
        self.upstream_names = {pair: name for name, pair in (namespaces or {}).items()}
        self.call_names = dict(known_calls)
        self.system, self.turns, self.skipped = [], [], set()
        self.pending = {"text": [], "calls": [], "reasoning": []}  # the assistant's turn
        self.signatures = {}
        self.tool_files = []  # files of the tool results in a row, shown after them

    def read(self, raw: Any) -> tuple:
        """(system text or None, turns)."""
        if isinstance(raw, str):
            return None, [Turn("user", raw)]
        if not isinstance(raw, list) or not raw:
            raise ClientError("'input' must be a string or a non-empty list of items")
        items = bounded(raw, "input", "items", self.config.max_turns, "MAX_TURNS")
        for item in items:  # signatures first: our reasoning item comes after its calls
            if isinstance(item, dict) and item.get("type") == "reasoning":
                self.signatures.update(signatures_in(item.get("encrypted_content")))
        for index, item in enumerate(items):
            self.item(item, f"input[{index}]")
        self.flush()
        self.show_tool_files()
        if self.skipped:
            log.info("input items left out (nothing upstream takes them): %s",
                     ", ".join(sorted(self.skipped)))
        return "\n\n".join(s for s in self.system if s.strip()) or None, self.turns

    def item(self, item: Any, where: str) -> None:
        if not isinstance(item, dict):
            raise ClientError(f"'{where}' must be an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if not isinstance(kind, str):
            raise ClientError(f"'{where}.type' must name an input item type, such as message")
        handlers = {"message": self.message, "function_call": self.function_call,
                    "custom_tool_call": self.function_call, "reasoning": self.reasoning}
        handlers.update(dict.fromkeys(CALL_OUTPUTS, self.call_output))
        if kind not in CALL_OUTPUTS:
            self.show_tool_files()
        if kind in handlers:
            handlers[kind](item, where)
        else:
            self.skipped.add(kind)

    def message(self, item: dict, where: str) -> None:
        role = item.get("role")
        if role not in INPUT_ROLES:
            raise ClientError(f"'{where}.role' must be user, assistant, system or developer")
        text, files = self.content(item.get("content"), where, files_allowed=role == "user")
        if role in ("system", "developer"):
            self.system.append(text)
        elif role == "assistant":
            self.pending["text"].append(text)
        else:
            self.flush()
            self.turns.append(Turn("user", text, files))

    def function_call(self, item: dict, where: str) -> None:
        call_id, name = item.get("call_id"), item.get("name")
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise ClientError(f"'{where}' must have a call_id and a name")
        name = self.upstream_names.get((item.get("namespace"), name), name)
        if item["type"] == "custom_tool_call":
            value = optional(item, "input", str, hint="a string") or ""
            arguments = json.dumps({CUSTOM_INPUT: value}, ensure_ascii=False)
        else:
            arguments = item.get("arguments") or ""
            if not isinstance(arguments, str):
                raise ClientError(f"'{where}.arguments' must be a JSON string")
        self.call_names[call_id] = name
        self.pending["calls"].append({"id": call_id, "name": name, "arguments": arguments or "{}",
                                      "signature": self.signatures.get(call_id)})

    def call_output(self, item: dict, where: str) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or call_id not in self.call_names:
            raise ClientError(f"'{where}.call_id' must name a function_call or custom_tool_call "
                              "of an earlier item (or of the previous response)")
        self.flush()
        output = item.get("output")
        text, files = (output, ()) if isinstance(output, str) else self.content(output, where, True)
        text = text or (f"({len(files)} file(s), shown after the results)" if files else "")
        self.turns.append(Turn("tool", text, tool_call_id=call_id,
                               tool_name=self.call_names[call_id]))
        self.tool_files += files

    def show_tool_files(self) -> None:
        """Files in tool results (Codex's view_image) as a user turn after the results, since
        no upstream takes a file inside a function's result."""
        if self.tool_files:
            self.turns.append(Turn("user", TOOL_FILES, tuple(self.tool_files)))
            self.tool_files = []

    def reasoning(self, item: dict, where: str) -> None:
        for name in ("summary", "content"):
            parts = item.get(name) or []
            if not isinstance(parts, list):
                raise ClientError(f"'{where}.{name}' must be a list")
            self.pending["reasoning"] += [p["text"] for p in parts if isinstance(p, dict)
                                          and isinstance(p.get("text"), str)]

    def flush(self) -> None:
        """The assistant's pending reasoning, text and calls as one turn (none if empty:
        upstreams refuse empty turns)."""
        text = "\n".join(t for t in self.pending["text"] if t)
        calls, reasoning = self.pending["calls"], "\n\n".join(self.pending["reasoning"])
        if text.strip() or calls:
            self.turns.append(Turn("assistant", text, tool_calls=tuple(calls), reasoning=reasoning))
        self.pending = {"text": [], "calls": [], "reasoning": []}

    def content(self, content: Any, where: str, files_allowed: bool) -> tuple:
        """(text, files) of a message's content: a string or up to MAX_PARTS parts."""
        if content is None or isinstance(content, str):
            return content or "", ()
        if not isinstance(content, list):
            raise ClientError(f"'{where}.content' must be a string or a list of parts")
        texts, files = [], []
        for part in bounded(content, f"{where}.content", "parts", self.config.max_parts,
                            "MAX_PARTS"):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in TEXT_PARTS and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("input_image", "input_file") and files_allowed:
                files.append(self.file(part, f"{where}.content"))
            elif kind in ("input_image", "input_file"):
                texts.append(f"[{kind} left out]")  # in a system or assistant message
            elif kind != "refusal":  # an assistant's refusal is not sent back
                raise ClientError(f"'{where}.content' may hold only input_text, input_image, "
                                  "input_file and output_text parts")
        return "\n".join(texts), tuple(files)

    def file(self, part: dict, where: str) -> Attachment:
        """An input_image or input_file part: a base64 data: URL, or a cached upload's file_id."""
        file_id = part.get("file_id")
        if isinstance(file_id, str) and file_id:
            record = self.cached_upload(file_id)
            if record is None:
                raise ClientError(f"'{where}' names file_id {file_id!r}, which is not a cached "
                                  "upload of this token (or has expired)")
            return Attachment(record["mime_type"], record["data"], record.get("filename", ""))
        filename = part.get("filename") if isinstance(part.get("filename"), str) else ""
        url = part.get("image_url") if part["type"] == "input_image" else part.get("file_data")
        if isinstance(url, str) and DATA_URL.fullmatch(url):
            return data_url_file({"url": url, "filename": filename}, where, self.config)
        if part["type"] == "input_file" and isinstance(url, str) and url:  # bare base64
            return checked_file(guess_mime(filename), url, filename, where, self.config)
        raise ClientError(f"the {part['type']} in '{where}' must be a base64 data: URL or a "
                          "file_id from /api/upload: ChatBridge fetches no URLs")


def known_calls(turns: list) -> dict:
    """call_id -> name of the calls in earlier turns."""
    return {call["id"]: call["name"] for turn in turns for call in turn.tool_calls}


def parse_tools(raw: Any, config: Config) -> tuple:
    """(function tools in Chat Completions' shape or None, custom tool names, upstream name ->
    (namespace, name) of the functions of namespace tools) from `tools` (rules above)."""
    if raw is None:
        return None, (), {}
    if not isinstance(raw, list):
        raise ClientError("'tools' must be a list of tools")
    bounded(raw, "tools", "tools", config.max_tools, "MAX_TOOLS")
    entries, hosted = [], set()  # entries: (namespace or None, tool, where)
    for index, tool in enumerate(raw):
        where = f"tools[{index}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "namespace":
            inner = tool.get("tools")
            if not isinstance(inner, list) or not isinstance(tool.get("name"), str):
                raise ClientError(f"'{where}' must be {{type: namespace, name, tools: [...]}}")
            entries += [(tool["name"], member, f"{where}.tools[{number}]") for number, member
                        in enumerate(bounded(inner, f"{where}.tools", "tools", config.max_tools,
                                             "MAX_TOOLS"))]
        elif kind in ("function", "custom"):
            entries.append((None, tool, where))
        elif isinstance(kind, str):
            hosted.add(kind)
        else:
            raise ClientError(f"'{where}' must be a tool object with a type")
    bounded(entries, "tools", "functions (with the namespaces' own)", config.max_tools,
            "MAX_TOOLS")
    if hosted:
        log.info("hosted tools left out (the upstream cannot run them): %s",
                 ", ".join(sorted(hosted)))
    functions, custom, namespaces = [], [], {}
    for (namespace, tool, where), name in zip(entries, upstream_names(entries), strict=True):
        functions.append(function_tool(tool, where, name, custom))
        if namespace is not None:
            namespaces[name] = (namespace, tool["name"])
    return functions or None, tuple(custom), namespaces


def upstream_names(entries: list) -> list:
    """The name the upstream sees for each tool: its own, qualified by its namespace
    (`crm__get`) when another tool has the same name, since a call names its namespace too
    (OpenAI's reference: a function_call's `namespace`); a 400 for two tools one name."""
    counts = Counter(tool_name(tool, where) for _, tool, where in entries)
    names = []
    for namespace, tool, where in entries:
        name = tool["name"]
        if namespace is not None and counts[name] > 1:
            name = qualified(namespace, name)
        if name in names:
            scope = f" in namespace {namespace!r}" if namespace is not None else ""
            raise ClientError(f"'{where}' is a second tool named {tool['name']!r}{scope}: tool names "
                              "must be unique (within a namespace)")
        names.append(name)
    return names


def qualified(namespace: str, name: str) -> str:
    """A namespace's function as the upstream sees it when its name is not unique (Codex's own
    form for MCP tools: `mcp__server__tool`)."""
    return f"{namespace.rstrip('_')}__{name}"


def tool_name(tool: Any, where: str) -> str:
    """A function or custom tool's name (a 400 for anything else)."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    name = tool.get("name") if kind in ("function", "custom") else None
    description = tool.get("description") if isinstance(tool, dict) else None
    if not isinstance(name, str) or not name or not isinstance(description or "", str):
        raise ClientError(f"'{where}' must be {{type: function or custom, name, description?}}")
    return name


def function_tool(tool: dict, where: str, name: str, custom: list) -> dict:
    """A function or custom tool as a Chat Completions function tool named name; a custom
    tool's name goes to custom."""
    description = tool.get("description")
    if tool["type"] == "function":
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ClientError(f"'{where}.parameters' must be a JSON schema object")
    else:
        custom.append(name)
        parameters = custom_parameters(tool.get("format"))
    return {"type": "function", "function": {
        "name": name, **({"description": description} if description else {}),
        **({"parameters": parameters} if parameters else {})}}


def custom_parameters(form: Any) -> dict:
    """A custom tool's one string parameter; a grammar, when the tool has one, in its
    description, so the model writes what the tool parses."""
    described = "The tool's free-form input."
    if isinstance(form, dict) and form.get("type") == "grammar":
        described += (f" It must follow this {form.get('syntax', '')} grammar:\n"
                      f"{form.get('definition', '')}")
    return {"type": "object", "properties": {CUSTOM_INPUT: {"type": "string",
                                                            "description": described}},
            "required": [CUSTOM_INPUT]}


class InvalidToolChoice(ClientError):
    """A 400 for `tool_choice`, with OpenAI's `param`."""

    param = "tool_choice"


def parse_tool_choice(raw: Any, tools: list | None, custom=(), namespaces=None) -> Any:
    """`tool_choice` in Chat Completions' terms (none, auto, required or one function; None
    without tools), from the forms of OpenAI's reference ("Responses: create", tool_choice):
    a mode, {type: function or custom, name} naming one of `tools`, {type: allowed_tools,
    mode, tools}, or a hosted tool's form (hosted tools are left out: auto). Else a 400."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise InvalidToolChoice(f"'tool_choice' {raw!r} must be none, auto, required or an "
                                    "object such as {type: function, name}")
        return raw if tools else None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in ("function", "custom"):
        name = chosen_tool(raw, kind, tools or [], custom, namespaces or {})
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools" and raw.get("mode") in ("auto", "required") \
            and isinstance(raw.get("tools"), list):
        return raw["mode"] if tools else None
    if kind in HOSTED_CHOICES or (kind == "mcp" and isinstance(raw.get("server_label"), str)):
        return "auto" if tools else None
    raise InvalidToolChoice("'tool_choice' must be none, auto, required, {type: function, name}, "
                            "{type: custom, name}, {type: allowed_tools, mode, tools}, "
                            "{type: mcp, server_label} or a hosted tool's {type}")


def chosen_tool(raw: dict, kind: str, tools: list, custom, namespaces: dict) -> str:
    """The upstream name of the function or custom tool tool_choice names: its own name, or a
    namespace's function by its name when only one namespace has it."""
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidToolChoice(f"'tool_choice' of type {kind} must have a name")
    offered = [tool["function"]["name"] for tool in tools
               if (tool["function"]["name"] in custom) == (kind == "custom")]
    if name in offered:
        return name
    matches = [upstream for upstream in offered if namespaces.get(upstream, ("", ""))[1] == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InvalidToolChoice(f"'tool_choice.name' {name!r} is a function of several "
                                f"namespaces: name one of {', '.join(matches)}")
    raise InvalidToolChoice(f"'tool_choice.name' {name!r} names no {kind} tool among 'tools'")


def parse_text_format(text: Any) -> dict | None:
    """`text.format` as Chat Completions' response_format (None for plain text)."""
    if text is None:
        return None
    form = text.get("format") if isinstance(text, dict) else None
    if form is None and isinstance(text, dict):
        return None
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(form.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {
            "name": form.get("name") or "answer", "schema": form["schema"],
            **({"strict": form["strict"]} if isinstance(form.get("strict"), bool) else {})}}
    raise ClientError("'text.format' must be {type: text}, {type: json_object} or "
                      "{type: json_schema, name, schema: an object}")
