"""useChat's protocol on /api/chat, read by the Vercel AI SDK's own client code (tests/node)."""

import json
import subprocess

import pytest
import requests

from tests.conftest import GEMINI_KEYS, PNG_B64, REPO
from tests.fakes import gemini_429, gemini_midstream_error, gemini_stream

HARNESS = REPO / "tests" / "node" / "read_ui_stream.mjs"


def use_chat(server, messages, package, **body) -> dict:
    """What useChat's transport and stream reader make of the service's answer."""
    if not (REPO / "tests" / "node" / "node_modules" / package).exists():
        pytest.fail("the AI SDK is not installed: run `npm ci --prefix tests/node` first")
    request = {"id": "chat-1", "messages": messages, "trigger": "submit-message", "body": body}
    result = subprocess.run(["node", str(HARNESS), package, server.url + "/api/chat"],
                            input=json.dumps(request), capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def user(text, *files):
    parts = [{"type": "file", "mediaType": "image/png", "filename": "dot.png",
              "url": f"data:image/png;base64,{data}"} for data in files]
    return {"id": f"u-{text}", "role": "user", "parts": parts + [{"type": "text", "text": text}]}


def parts_of(result, kind):
    return [p["text"] for p in (result["message"] or {}).get("parts", []) if p["type"] == kind]


SDKS = pytest.mark.parametrize("package", ["ai", "ai-strict"])


@SDKS
def test_text_streams_into_the_message(server, gemini, package):
    result = use_chat(server, [user("hello")], package)
    assert result["ok"], result["error"]
    assert parts_of(result, "text") == ["You said: hello"]
    types = [c["type"] for c in result["chunks"]]
    assert types[0] == "start" and types[-1] == "finish"
    assert types[1:-1] == ["text-start"] + ["text-delta"] * (len(types) - 4) + ["text-end"]


@SDKS
def test_thoughts_become_a_reasoning_part(server, gemini, package):
    gemini.script = lambda r: gemini_stream(["It is ", "orange."], thoughts=["Colours…"])
    result = use_chat(server, [user("colour?")], package)
    assert result["ok"], result["error"]
    assert parts_of(result, "reasoning") == ["Colours…"]
    assert parts_of(result, "text") == ["It is orange."]


@SDKS
def test_an_image_part_reaches_gemini_inline(server, gemini, package):
    result = use_chat(server, [user("what is this?", PNG_B64)], package)
    assert result["ok"], result["error"]
    parts = gemini.requests[-1].json["contents"][-1]["parts"]
    assert {"inline_data": {"mime_type": "image/png", "data": PNG_B64}} in parts
    assert {"text": "what is this?"} in parts


def test_the_whole_conversation_goes_upstream(server, gemini):
    messages = [{"id": "s", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
                user("look", PNG_B64),
                {"id": "a1", "role": "assistant", "parts": [
                    {"type": "step-start"}, {"type": "reasoning", "text": "hm", "state": "done"},
                    {"type": "text", "text": "A dot.", "state": "done"}]},
                user("what colour?")]
    assert use_chat(server, messages, "ai")["ok"]
    sent = gemini.requests[-1].json
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
    assert sent["contents"][0]["parts"] == [{"text": "look"}, {"inline_data": {
        "mime_type": "image/png", "data": PNG_B64}}]
    assert sent["contents"][1]["parts"] == [{"text": "A dot."}]


@SDKS
def test_a_mid_stream_failure_is_an_error_chunk(server, gemini, package):
    gemini.script = lambda r: gemini_midstream_error(["half an "])
    result = use_chat(server, [user("hi")], package)
    assert not result["ok"]
    assert result["error"] == "The model is overloaded. Please try again later."
    assert parts_of(result, "text") == ["half an "]


@SDKS
def test_an_error_before_the_stream_is_a_json_error_the_hook_shows(server, gemini, package):
    gemini.script = lambda r: gemini_429("30s")
    result = use_chat(server, [user("hi")], package)
    assert not result["ok"] and result["chunks"] == [], "a non-2xx answer, not a started stream"
    assert "rate-limited" in json.loads(result["error"])["error"]
    assert sorted(gemini.keys_seen()) == sorted(GEMINI_KEYS)
    again = use_chat(server, [user("hi")], package)
    assert json.loads(again["error"]) == {"error": "every Gemini key is rate-limited for "
                                                   "gemini-2.5-flash; try again later"}
    bad = use_chat(server, [user("hi"), {"id": "a", "role": "assistant", "parts": [
        {"type": "text", "text": "Hello!"}]}], package, model="deepseek-v3-671b")
    assert "the last message must be the user's" in json.loads(bad["error"])["error"]


def test_the_model_can_be_chosen_in_the_body(server, openai):
    result = use_chat(server, [user("hi")], "ai", model="deepseek-v3-671b")
    assert result["ok"] and parts_of(result, "text") == ["You said: hi"]
    assert openai.requests[-1].json["model"] == "deepseek-v3-671b"


def test_the_stream_has_the_protocol_header_and_ends_with_done(server, gemini):
    response = requests.post(server.url + "/api/chat", json={"messages": [user("hi")]},
                             timeout=10)
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("messages, words", [
    ([], "non-empty"),
    ([{"role": "user", "content": "hi"}], "parts"),
    ([{"role": "user", "parts": [{"type": "file", "url": "https://example.com/a.png"}]}],
     "data: URL"),
    ([{"role": "user", "parts": [{"type": "text", "text": "  "}]}], "last message"),
])
def test_bad_ui_messages_are_400(client, gemini, messages, words):
    response = client.post("/api/chat", json={"messages": messages})
    assert response.status_code == 400 and words in response.json["error"]
    assert gemini.requests == []
