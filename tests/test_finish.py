"""How an answer ended, as every client API tells it (issue 9, sections 1 and 5).

Each case asks one question in every shape it concerns: shape A (`message`), shape B
(`user_content`, streamed and whole), useChat's `messages` and /v1/chat/completions (streamed
and whole). Streams go through gunicorn (`server`); whole answers through the in-process app
(`client`). `answer()` reads any of them into one Ending, in the shape's own words.
"""

import json
from typing import NamedTuple

import pytest
import requests

from tests.client import TIMEOUT, events, post_chat, shape_a_text, shape_b_text, sse_data
from tests.fakes import (
    JSON_TYPE,
    Reply,
    count_tokens,
    gemini_answer,
    gemini_array,
    gemini_blocked,
    gemini_events,
    gemini_merge,
    gemini_sse,
    json_reply,
    openai_completion,
    openai_stream,
    openai_tool_call_completion,
    openai_tool_call_stream,
    openai_usage,
)
from tests.test_ai_sdk import use_chat, user

GEMINI = "gemini-2.5-flash"
DEEPSEEK = "deepseek-v3-671b"
CHAT = "finish-reasons-chat-0001"
SSE_TYPE = "text/event-stream"

STREAMS = ("A", "B-stream", "ui", "v1-stream")
WHOLE = ("B", "v1")
SHAPES = STREAMS + WHOLE
GATEWAY = ("v1-stream", "v1")  # /v1/chat/completions; the rest is /api/chat

# Gemini's Candidate.finishReason vocabulary (API reference, v1beta) in the neutral words.
GEMINI_FINISHES = {
    "MAX_TOKENS": "length",
    **dict.fromkeys(["SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                     "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER",
                     "MODEL_ARMOR", "JAILBREAK"], "content_filter"),
    **dict.fromkeys(["OTHER", "NO_IMAGE", "FINISH_REASON_UNSPECIFIED", "A_REASON_NOT_YET_INVENTED"],
                    "other"),
}
GEMINI_UNUSABLE = ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS",
                   "MISSING_THOUGHT_SIGNATURE", "MALFORMED_RESPONSE"]
OPENAI_FINISHES = {"length": "length", "content_filter": "content_filter", "function_call": "tool_calls",
                   "end_turn": "other"}
DEEPSEEK_UNUSABLE = "insufficient_system_resource"


class Ending(NamedTuple):
    """How a client saw an answer end: status, text, finish reason in the shape's own words
    (None when it ended in an error), error message (None when it finished)."""

    status: int
    text: str
    finish: str | None
    error: str | None


def spoken(shape: str, neutral: str) -> str:
    """A neutral finish reason as the shape says it: shape A as is, the AI SDK's names for
    useChat, OpenAI's finish_reason (other is stop) for shape B and /v1."""
    if shape == "A":
        return neutral
    if shape == "ui":
        return {"content_filter": "content-filter", "tool_calls": "tool-calls"}.get(neutral, neutral)
    return "stop" if neutral == "other" else neutral


def request_of(shape: str, model: str, text: str) -> tuple:
    """The path and body of a question in a shape."""
    if shape == "A":
        return "/api/chat", {"message": text, "model": model}
    if shape in ("B", "B-stream"):
        return "/api/chat", {"user_content": text, "model": model, "stream": shape == "B-stream"}
    if shape == "ui":
        return "/api/chat", {"messages": [user(text)], "model": model}
    return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}],
                                    "stream": shape == "v1-stream"}


def answer(request, shape: str, model: str = GEMINI) -> Ending:
    """Ask "hi" in a shape and read how the answer ended: a stream from gunicorn (the `server`
    fixture), a whole answer from the in-process app (`client`)."""
    path, body = request_of(shape, model, "hi")
    if shape in STREAMS:
        response = requests.post(request.getfixturevalue("server").url + path, json=body, timeout=TIMEOUT)
        status, content = response.status_code, response.content
    else:
        response = request.getfixturevalue("client").post(path, json=body)
        status, content = response.status_code, response.data
    if status != 200:
        error = json.loads(content)["error"]
        return Ending(status, "", None, error["message"] if shape in GATEWAY else error)
    return READERS[shape](content)


def read_shape_a(body: bytes) -> Ending:
    """Text events, then one `{"done": true}` (with `finish_reason` unless it is stop) or `{"error"}`."""
    assert body.endswith(b"\n\n")
    payloads = [json.loads(data) for data in sse_data(body)]
    last = payloads[-1]
    assert not any("done" in p or "error" in p for p in payloads[:-1]), "one terminal event, last"
    if "error" in last:
        assert list(last) == ["error"]
        return Ending(200, shape_a_text(payloads), None, last["error"])
    finish = last.get("finish_reason", "stop")
    assert last == ({"done": True} if finish == "stop" else {"done": True, "finish_reason": finish})
    return Ending(200, shape_a_text(payloads), finish, None)


def read_chunks(body: bytes, gateway: bool) -> Ending:
    """chat.completion.chunk events with one finish_reason, or an error: /v1's object then
    [DONE], the ZJU source's string and no [DONE]."""
    datas = sse_data(body)
    if gateway:
        assert datas[-1] == "[DONE]"
        datas = datas[:-1]
    assert "[DONE]" not in datas
    payloads = [json.loads(data) for data in datas]
    finishes = [p["choices"][0]["finish_reason"] for p in payloads
                if p.get("choices") and p["choices"][0]["finish_reason"]]
    errors = [p["error"] for p in payloads if "error" in p]
    assert len(finishes) + len(errors) == 1, payloads
    if errors:
        assert "error" in payloads[-1]
        return Ending(200, shape_b_text(payloads), None, errors[0]["message"] if gateway else errors[0])
    return Ending(200, shape_b_text(payloads), finishes[0], None)


def read_ui(body: bytes) -> Ending:
    """The AI SDK stream: start … then one finish (its reason, when not stop, as message
    metadata) or one error, then [DONE]."""
    datas = sse_data(body)
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(data) for data in datas[:-1]]
    assert chunks[0]["type"] == "start"
    assert [c["type"] in ("finish", "error") for c in chunks].count(True) == 1
    last = chunks[-1]
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    if last["type"] == "error":
        return Ending(200, text, None, last["errorText"])
    finish = last.get("messageMetadata", {}).get("finishReason", "stop")
    assert last == ({"type": "finish"} if finish == "stop" else
                    {"type": "finish", "messageMetadata": {"finishReason": finish}})
    return Ending(200, text, finish, None)


def read_completion(body: bytes) -> Ending:
    """One chat.completion."""
    completion = json.loads(body)
    assert completion["object"] == "chat.completion"
    choice = completion["choices"][0]
    return Ending(200, choice["message"]["content"] or "", choice["finish_reason"], None)


READERS = {"A": read_shape_a, "B-stream": lambda b: read_chunks(b, False), "ui": read_ui,
           "v1-stream": lambda b: read_chunks(b, True), "B": read_completion, "v1": read_completion}


def gemini_ending(texts: list, finish: str | None):
    """A script: Gemini answers texts then finish (None: no finishReason at all), in the form asked."""
    return lambda recorded: gemini_answer(recorded, gemini_events(texts, finish=finish))


def openai_ending(texts: list, finish: str | None, done: bool = True):
    """A script: the OpenAI-compatible upstream answers texts then finish_reason, streamed or whole."""
    def reply(recorded):
        if recorded.stream:
            return openai_stream(texts, finish=finish, done=done)
        return openai_completion("".join(texts), finish=finish)
    return reply


def status_of_refusal(shape: str, gateway_status: int) -> int:
    """Shape A reports a failure as an event in a 200 stream; the others with a status."""
    if shape == "A":
        return 200
    return gateway_status if shape in GATEWAY else 500


# ---------------------------------------------------------------- section 1: finish reasons


def finish_cases(reasons, in_openai_shapes) -> list:
    """(reason, shape): every reason in shape A and useChat; in shape B and /v1, which said
    length and content_filter for the older reasons already, the reasons given."""
    return [(reason, shape) for reason in reasons for shape in SHAPES
            if shape in ("A", "ui") or reason in in_openai_shapes]


@pytest.mark.parametrize("reason, shape", finish_cases(
    GEMINI_FINISHES, ["LANGUAGE", "IMAGE_OTHER", "MODEL_ARMOR", "JAILBREAK"]))
def test_a_gemini_finish_reason_reaches_the_client(request, gemini, reason, shape):
    gemini.script = gemini_ending(["Once upon ", "a time"], reason)
    assert answer(request, shape) == Ending(200, "Once upon a time", spoken(shape, GEMINI_FINISHES[reason]), None)
    assert len(gemini.requests) == 1


@pytest.mark.parametrize("reason, shape", finish_cases(OPENAI_FINISHES, ["function_call", "end_turn"]))
def test_an_openai_compatible_finish_reason_reaches_the_client(request, openai, reason, shape):
    openai.script = openai_ending(["Once upon ", "a time"], reason)
    expected = Ending(200, "Once upon a time", spoken(shape, OPENAI_FINISHES[reason]), None)
    assert answer(request, shape, DEEPSEEK) == expected
    assert len(openai.requests) == 1


@pytest.mark.parametrize("shape", WHOLE)
def test_a_whole_answer_that_calls_tools_and_says_stop_is_tool_calls(request, openai, shape):
    completion = json.loads(openai_tool_call_completion("get_weather", '{"city": "Paris"}').chunks[0])
    # OpenAI itself says stop after a call forced by a named tool_choice (vllm-project/vllm#25054)
    completion["choices"][0]["finish_reason"] = "stop"
    openai.script = lambda recorded: json_reply(completion)
    assert answer(request, shape, DEEPSEEK).finish == "tool_calls"


@pytest.mark.parametrize("package", ["ai", "ai-strict"])
@pytest.mark.parametrize("model, script, finish", [
    (GEMINI, gemini_ending(["Once upon ", "a time"], "MAX_TOKENS"), "length"),
    (GEMINI, gemini_ending(["Once upon ", "a time"], "SAFETY"), "content-filter"),
    (GEMINI, gemini_ending(["Once upon ", "a time"], "OTHER"), "other"),
    (DEEPSEEK, lambda recorded: openai_tool_call_stream("get_weather", ['{"city": "Paris"}']), "tool-calls"),
], ids=["length", "content-filter", "other", "tool-calls"])
def test_use_chat_reads_how_the_answer_ended_as_message_metadata(server, gemini, openai, package, model,
                                                                 script, finish):
    gemini.script = openai.script = script
    result = use_chat(server, [user("tell me a story")], package, model=model)
    assert result["ok"], result["error"]
    assert result["chunks"][-1] == {"type": "finish", "messageMetadata": {"finishReason": finish}}
    assert result["message"]["metadata"] == {"finishReason": finish}
    texts = [p["text"] for p in result["message"]["parts"] if p["type"] == "text"]
    assert texts == ([] if finish == "tool-calls" else ["Once upon a time"])


@pytest.mark.parametrize("shape", STREAMS)
@pytest.mark.parametrize("upstream, reason", [("gemini", reason) for reason in GEMINI_UNUSABLE]
                         + [("openai", DEEPSEEK_UNUSABLE)])
def test_an_unusable_ending_after_text_is_an_error_naming_it(request, gemini, openai, upstream, reason, shape):
    gemini.script = gemini_ending(["Let me call ", "a tool"], reason)
    openai.script = openai_ending(["Let me call ", "a tool"], reason)
    ending = answer(request, shape, GEMINI if upstream == "gemini" else DEEPSEEK)
    assert (ending.status, ending.text, ending.finish) == (200, "Let me call a tool", None)
    assert reason in ending.error
    assert len(gemini.requests) + len(openai.requests) == 1, "text had gone out: no other key"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reason", GEMINI_UNUSABLE)
def test_an_unusable_ending_before_text_is_not_retried(request, gemini, reason, shape):
    gemini.script = gemini_ending([], reason)
    ending = answer(request, shape)
    assert (ending.status, ending.text, ending.finish) == (status_of_refusal(shape, 502), "", None)
    assert reason in ending.error
    assert len(gemini.requests) == 1, "the model broke the answer, not the key"


@pytest.mark.parametrize("shape", WHOLE)
def test_a_whole_answer_that_ran_out_of_resources_fails_over(request, openai, shape):
    broken = openai_ending(["Half an "], DEEPSEEK_UNUSABLE)
    openai.script = lambda recorded: broken(recorded) if len(openai.requests) == 1 else None
    assert answer(request, shape, DEEPSEEK) == Ending(200, "You said: hi", "stop", None)
    assert len(set(openai.keys_seen())) == 2, "the second key answered"


STOPPED_EARLY = [("gemini", "SAFETY", "content_filter"), ("gemini", "MAX_TOKENS", "length"),
                 ("gemini", "RECITATION", "content_filter"), ("gemini", "JAILBREAK", "content_filter"),
                 ("gemini", "OTHER", "other"), ("openai", "content_filter", "content_filter"),
                 ("openai", "length", "length")]


@pytest.mark.parametrize("upstream, reason, neutral, shape", [
    (*case, shape) for case in STOPPED_EARLY for shape in SHAPES
    if shape not in GATEWAY or case[1] in ("JAILBREAK", "OTHER")])  # /v1 said the rest already
def test_a_stop_before_any_text_names_its_reason(request, gemini, openai, upstream, reason, neutral, shape):
    gemini.script = gemini_ending([], reason)
    openai.script = openai_ending([], reason)
    ending = answer(request, shape, GEMINI if upstream == "gemini" else DEEPSEEK)
    if shape in GATEWAY:  # OpenAI's API can say it: an empty answer
        assert ending == Ending(200, "", spoken(shape, neutral), None)
    else:
        assert (ending.status, ending.text, ending.finish) == (status_of_refusal(shape, 400), "", None)
        assert f"(reason: {reason})" in ending.error
    assert len(gemini.requests) + len(openai.requests) == 1, "the request's own fault: no other key"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "OTHER"])
def test_a_blocked_prompt_in_the_form_not_asked_for_names_its_reason(request, gemini, reason, shape):
    sse = gemini_blocked(reason).chunks
    event = json.loads(sse[0].removeprefix(b"data: "))
    gemini.script = lambda recorded: (  # JSON to a stream, SSE to a whole request
        Reply(chunks=[json.dumps([event]).encode()], headers={"Content-Type": JSON_TYPE}) if recorded.stream
        else Reply(chunks=sse, headers={"Content-Type": SSE_TYPE}))
    ending = answer(request, shape)
    assert (ending.status, ending.text, ending.finish) == (status_of_refusal(shape, 400), "", None)
    assert f"(reason: {reason})" in ending.error
    assert len(gemini.requests) == 1


# ---------------------------------------------------------------- section 1: completion


@pytest.mark.parametrize("shape", STREAMS)
@pytest.mark.parametrize("upstream", ["gemini", "openai"])
def test_a_connection_dropped_after_the_finish_reason_is_complete(request, gemini, openai, upstream, shape):
    gemini.script = lambda recorded: Reply(chunks=gemini_sse(gemini_events(["all ", "done"])), drop=True)
    openai.script = lambda recorded: Reply(chunks=openai_stream(["all ", "done"], done=False).chunks, drop=True)
    ending = answer(request, shape, GEMINI if upstream == "gemini" else DEEPSEEK)
    assert ending == Ending(200, "all done", "stop", None)


@pytest.mark.parametrize("shape", STREAMS)
@pytest.mark.parametrize("upstream", ["openai-done", "gemini-json"])
def test_a_stream_without_a_finish_reason_is_cut_off(request, gemini, openai, upstream, shape):
    gemini.script = lambda recorded: Reply(chunks=gemini_array(gemini_events(["half an ", "answer"], finish=None)),
                                           headers={"Content-Type": JSON_TYPE})
    openai.script = openai_ending(["half an ", "answer"], None, done=True)  # [DONE] does not finish it
    ending = answer(request, shape, GEMINI if upstream.startswith("gemini") else DEEPSEEK)
    assert (ending.status, ending.text, ending.finish) == (200, "half an answer", None)
    assert "cut off" in ending.error


@pytest.mark.parametrize("shape", WHOLE)
@pytest.mark.parametrize("upstream", ["gemini", "openai"])
def test_a_whole_answer_without_a_finish_reason_is_an_error(request, gemini, openai, upstream, shape):
    gemini.script = gemini_ending(["half an ", "answer"], None)
    openai.script = openai_ending(["half an ", "answer"], None)
    ending = answer(request, shape, GEMINI if upstream == "gemini" else DEEPSEEK)
    assert (ending.status, ending.finish) == (502 if shape in GATEWAY else 500, None)
    assert "finish reason" in ending.error


# ---------------------------------------------------------------- section 1: conversations

UNFINISHED = {"length": "MAX_TOKENS", "content_filter": "SAFETY", "other": "OTHER",
              "unusable": "MALFORMED_FUNCTION_CALL", "cut-off": None}
STREAMED_UNFINISHED = {name: finish for name, finish in UNFINISHED.items() if finish}  # test_state: cut-off


@pytest.mark.parametrize("finish", STREAMED_UNFINISHED.values(), ids=STREAMED_UNFINISHED)
def test_a_streamed_answer_that_did_not_complete_is_not_stored(server, gemini, finish):
    assert events(post_chat(server, {"message": "kept", "chat_id": CHAT}))[-1] == {"done": True}
    gemini.script = gemini_ending(["Once upon "], finish)
    payloads = events(post_chat(server, {"message": "lost", "chat_id": CHAT}))
    assert shape_a_text(payloads) == "Once upon "
    history = requests.get(server.url + f"/api/chats/{CHAT}", timeout=TIMEOUT).json()["history"]
    assert [turn["content"] for turn in history] == ["kept", "You said: kept"]


@pytest.mark.parametrize("finish", UNFINISHED.values(), ids=UNFINISHED)
def test_a_whole_answer_that_did_not_complete_is_not_stored(client, gemini, finish):
    body = {"user_content": "kept", "model": GEMINI, "chat_id": CHAT}
    assert client.post("/api/chat", json=body).status_code == 200
    gemini.script = gemini_ending(["Once upon "], finish)
    client.post("/api/chat", json={**body, "user_content": "lost"})
    history = client.get(f"/api/chats/{CHAT}").json["history"]
    assert [turn["content"] for turn in history] == ["kept", "You said: kept"]


def test_an_unfinished_first_answer_leaves_no_conversation(client, gemini):
    gemini.script = gemini_ending(["Once upon "], "MAX_TOKENS")
    response = client.post("/api/chat", json={"user_content": "hi", "model": GEMINI, "chat_id": CHAT})
    assert response.json["choices"][0]["finish_reason"] == "length"
    assert client.get(f"/api/chats/{CHAT}").status_code == 404


# ---------------------------------------------------------------- section 5: read what was sent

OPENAI_WHOLE = {
    "stop": (lambda: openai_completion("The whole answer", finish="stop"), "The whole answer", "stop"),
    "length": (lambda: openai_completion("The whole ans", finish="length"), "The whole ans", "length"),
    "tool-call": (lambda: openai_tool_call_completion("get_weather", '{"city": "Paris"}'), "", "tool_calls"),
}


@pytest.mark.parametrize("shape", STREAMS)
@pytest.mark.parametrize("kind", OPENAI_WHOLE)
def test_a_json_answer_to_a_streaming_request_is_streamed(request, openai, kind, shape):
    make, text, neutral = OPENAI_WHOLE[kind]
    openai.script = lambda recorded: Reply(chunks=make().chunks, headers={"Content-Type": JSON_TYPE})
    assert answer(request, shape, DEEPSEEK) == Ending(200, text, spoken(shape, neutral), None)
    assert len(openai.requests) == 1 and openai.requests[0].stream


def test_a_json_answer_to_a_streaming_request_keeps_its_usage_and_tool_call(server, openai):
    whole = openai_tool_call_completion("get_weather", '{"city": "Paris"}', call_id="call_whole")
    openai.script = lambda recorded: Reply(chunks=whole.chunks, headers={"Content-Type": JSON_TYPE})
    response = requests.post(server.url + "/v1/chat/completions", timeout=TIMEOUT, json={
        "model": DEEPSEEK, "messages": [{"role": "user", "content": "weather?"}], "stream": True,
        "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    payloads = [json.loads(data) for data in sse_data(response.content)[:-1]]
    calls = [call for p in payloads if p["choices"] for call in p["choices"][0]["delta"].get("tool_calls", [])]
    assert calls == [{"index": 0, "id": "call_whole", "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"] == json.loads(whole.chunks[0])["usage"]


@pytest.mark.parametrize("shape", STREAMS)
@pytest.mark.parametrize("form", ["array", "object"])
@pytest.mark.parametrize("finish, neutral", [("STOP", "stop"), ("MAX_TOKENS", "length")])
def test_a_gemini_json_answer_to_a_streaming_request_is_streamed(request, gemini, finish, neutral, form, shape):
    chunks = gemini_events(["Hello ", "from ", "an array"], finish=finish)
    body = gemini_array(chunks) if form == "array" else json_reply(gemini_merge(chunks), pretty=True).chunks
    gemini.script = lambda recorded: Reply(chunks=body, headers={"Content-Type": JSON_TYPE})
    assert answer(request, shape) == Ending(200, "Hello from an array", spoken(shape, neutral), None)
    assert len(gemini.requests) == 1 and gemini.requests[0].stream


ASSEMBLED = ["An ", "assembled ", "answer"]
SSE_ANSWERS = {
    "openai": (DEEPSEEK, lambda: openai_stream(ASSEMBLED, finish="length", usage=True)),
    "gemini": (GEMINI, lambda: Reply(chunks=gemini_sse(gemini_events(ASSEMBLED, finish="MAX_TOKENS")))),
}


@pytest.mark.parametrize("shape", WHOLE)
@pytest.mark.parametrize("upstream", SSE_ANSWERS)
def test_an_sse_answer_to_a_whole_request_is_assembled(client, gemini, openai, upstream, shape):
    model, make = SSE_ANSWERS[upstream]
    gemini.script = openai.script = lambda recorded: Reply(chunks=make().chunks, headers={"Content-Type": SSE_TYPE})
    path, body = request_of(shape, model, "hi")
    completion = client.post(path, json=body).json
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "An assembled answer"
    assert completion["choices"][0]["finish_reason"] == "length"
    if upstream == "openai":
        assert completion["usage"] == openai_usage(sum(map(count_tokens, ASSEMBLED)))
    assert not any(r.stream for r in gemini.requests + openai.requests), "asked for a whole answer"


@pytest.mark.parametrize("shape", WHOLE)
def test_an_sse_tool_call_to_a_whole_request_is_assembled(client, openai, shape):
    stream = openai_tool_call_stream("get_weather", ['{"city": ', '"Paris"}'], call_id="call_sse")
    openai.script = lambda recorded: Reply(chunks=stream.chunks, headers={"Content-Type": SSE_TYPE})
    path, body = request_of(shape, DEEPSEEK, "weather?")
    choice = client.post(path, json=body).json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [{"id": "call_sse", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]

