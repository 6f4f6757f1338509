"""The two source contracts on /api/chat, uploads and the small endpoints: answers under
gunicorn; validation, Flask's own errors and the small endpoints in this process."""

import base64
import io

import pytest
import requests

from tests.client import events, post_chat, shape_a_text, shape_b_text
from tests.conftest import PNG, PNG_B64
from tests.fakes import gemini_stream, openai_completion, openai_stream


def test_shape_a_streams_gemini_text_then_done(server, gemini):
    response = post_chat(server, {"message": "سلام دنیا"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    raw = response.content.decode()
    assert 'data: {"text": "' in raw and "سلام" in raw, "JSON is written unescaped"
    payloads = events(response)
    assert shape_a_text(payloads) == "You said: سلام دنیا"
    assert payloads[-1] == {"done": True}
    sent = gemini.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query == {"alt": "sse"}
    assert sent.headers["x-goog-api-key"] == sent.key and "key" not in sent.query


def test_shape_a_sends_history_system_file_and_settings_to_gemini(server, gemini):
    body = {"message": "and this?", "system_content": "Be brief.", "temperature": 0.2,
            "max_tokens": 100, "history": [{"role": "user", "content": "hi"},
                                           {"role": "assistant", "content": "hello"}],
            "file_data": {"mime_type": "image/png", "data": PNG_B64}}
    assert events(post_chat(server, body))[-1] == {"done": True}
    sent = gemini.requests[-1].json
    assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
    assert sent["contents"][-1]["parts"][1]["inline_data"]["mime_type"] == "image/png"
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["generationConfig"]["temperature"] == 0.2
    assert sent["generationConfig"]["maxOutputTokens"] == 100


def test_shape_a_uses_the_source_defaults(server, gemini):
    events(post_chat(server, {"message": "hi"}))
    config = gemini.requests[-1].json["generationConfig"]
    assert (config["temperature"], config["maxOutputTokens"]) == (0.7, 4096)


def test_shape_a_relays_gemini_thoughts_as_reasoning(server, gemini):
    gemini.script = lambda r: gemini_stream(["Hello", " there"], thoughts=["Let me think"])
    payloads = events(post_chat(server, {"message": "hi"}))
    assert payloads[0] == {"reasoning": "Let me think"}
    assert shape_a_text(payloads) == "Hello there"
    assert gemini.requests[-1].json["generationConfig"]["thinkingConfig"] == {"includeThoughts": True}


def test_shape_a_relays_deepseek_reasoning_from_zju(server, openai):
    openai.script = lambda r: openai_stream(["4"], reasoning=["2+2", " is 4"], keepalive=True)
    payloads = events(post_chat(server, {"message": "2+2?", "model": "deepseek-r1-671b"}))
    assert shape_a_text(payloads, "reasoning") == "2+2 is 4"
    assert shape_a_text(payloads) == "4"
    assert payloads[-1] == {"done": True}
    assert openai.requests[-1].headers["authorization"] == "Bearer " + openai.requests[-1].key


def test_model_prefix_picks_the_provider_and_is_stripped(server, gemini, openai):
    events(post_chat(server, {"message": "hi", "model": "zju/gemini-lookalike"}))
    assert openai.requests[-1].json["model"] == "gemini-lookalike"
    events(post_chat(server, {"message": "hi", "model": "gemini/custom-model"}))
    assert gemini.requests[-1].model == "custom-model"
    events(post_chat(server, {"message": "hi", "model": "gemma-3-27b-it"}))
    assert gemini.requests[-1].model == "gemma-3-27b-it"


def test_shape_b_non_stream_passes_the_upstream_completion(server, openai):
    openai.script = lambda r: openai_completion("Hi!", reasoning="thinking")
    response = post_chat(server, {"user_content": "hi", "model": "deepseek-r1-671b"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi!",
                                             "refusal": None, "reasoning_content": "thinking"}
    assert body["usage"]["total_tokens"] > 0
    assert openai.requests[-1].json["stream"] is False


def test_shape_b_non_stream_from_gemini_is_a_synthesised_completion(server, gemini):
    body = post_chat(server, {"user_content": "hello", "model": "gemini-2.5-flash"}).json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    assert body["model"] == "gemini-2.5-flash"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "You said: hello"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 7
    assert gemini.requests[-1].path.endswith(":generateContent")


@pytest.mark.parametrize("model", ["deepseek-v3-671b", "gemini-2.5-flash"])
def test_shape_b_stream_is_completion_chunks_without_done(server, gemini, openai, model):
    response = post_chat(server, {"user_content": "hello", "model": model, "stream": True})
    assert response.status_code == 200
    assert "[DONE]" not in response.text
    payloads = events(response)
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert len({p["id"] for p in payloads}) == 1
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert shape_b_text(payloads) == "You said: hello"
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(p["choices"][0]["finish_reason"] is None for p in payloads[:-1])


def test_shape_b_stream_carries_reasoning_content(server, openai):
    openai.script = lambda r: openai_stream(["yes"], reasoning=["hmm"])
    payloads = events(post_chat(server, {"user_content": "q", "model": "deepseek-r1-671b",
                                         "stream": True}))
    assert shape_b_text(payloads, "reasoning_content") == "hmm"
    assert shape_b_text(payloads) == "yes"


def test_shape_b_default_model_is_gemini_when_gemini_keys_are_set(server, gemini):
    assert post_chat(server, {"user_content": "x"}).json()["model"] == "gemini-2.5-flash"


def test_zju_image_goes_as_an_image_url_part_and_text_files_inline(server, openai):
    png = {"mime_type": "image/png", "data": PNG_B64}
    events(post_chat(server, {"message": "what?", "model": "deepseek-v3-671b", "file_data": png}))
    content = openai.requests[-1].json["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "what?"}
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    notes = {"mime_type": "text/plain", "filename": "notes.txt",
             "data": base64.b64encode("line one\nخط دو".encode()).decode()}
    events(post_chat(server, {"message": "summarise", "model": "deepseek-v3-671b", "file_data": notes}))
    assert "خط دو" in openai.requests[-1].json["messages"][-1]["content"]


def test_upload_returns_base64_file_data(server):
    response = requests.post(server.url + "/api/upload", timeout=10,
                             files={"file": ("pixel.png", PNG, "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["file_data"] == {"mime_type": "image/png", "data": PNG_B64,
                                 "filename": "pixel.png"}
    assert body["file_id"].startswith("file-")


@pytest.mark.parametrize("sent_type", [None, "application/octet-stream"])
def test_upload_guesses_a_missing_or_generic_type(server, sent_type):
    file = ("notes.pdf", b"%PDF-1.4", sent_type) if sent_type else ("notes.pdf", b"%PDF-1.4")
    response = requests.post(server.url + "/api/upload", files={"file": file}, timeout=10)
    assert response.json()["file_data"]["mime_type"] == "application/pdf"


def test_uploaded_file_goes_to_gemini_inline(server, gemini):
    file_data = requests.post(server.url + "/api/upload", timeout=10,
                              files={"file": ("pixel.png", PNG, "image/png")}).json()["file_data"]
    assert events(post_chat(server, {"message": "", "file_data": file_data}))[-1] == {"done": True}
    part = gemini.requests[-1].json["contents"][-1]["parts"][-1]
    assert part["inline_data"] == {"mime_type": "image/png", "data": file_data["data"]}


# ---------------------------------------------------------------- in this process: refusals and small endpoints


def test_zju_refuses_a_pdf_before_contacting_the_upstream(client, openai):
    pdf = {"mime_type": "application/pdf", "data": base64.b64encode(b"%PDF-1.4").decode()}
    response = client.post("/api/chat", json={"message": "read", "model": "deepseek-v3-671b", "file_data": pdf})
    assert response.status_code == 400
    assert "application/pdf" in response.json["error"]
    assert openai.requests == []


@pytest.mark.parametrize("body, status, words", [
    ({"message": "   "}, 400, "empty"),
    ({"user_content": ""}, 400, "empty"),
    ({"nothing": 1}, 400, "message"),
    ({"message": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"message": "hi", "max_tokens": -3}, 400, "max_tokens"),
    ({"message": "hi", "history": [{"role": "robot", "content": "x"}]}, 400, "history[0]"),
    ({"message": "hi", "history": "nope"}, 400, "history"),
    ({"message": "hi", "file_data": {"mime_type": "image/png", "data": "@@notbase64@@"}}, 400,
     "base64"),
    ({"message": "hi", "file_data": "x"}, 400, "file_data"),
    ({"user_content": "hi", "stream": "yes"}, 400, "stream"),
    ({"message": 5}, 400, "message"),
    ({"message": "hi", "model": ""}, 400, "model"),
])
def test_invalid_fields_are_400_naming_the_problem(client, gemini, body, status, words):
    response = client.post("/api/chat", json=body)
    assert response.status_code == status
    assert words in response.json["error"]
    assert gemini.requests == []


@pytest.mark.parametrize("data, headers, status", [
    (b"{not json", {"Content-Type": "application/json"}, 400),
    (b"[1, 2]", {"Content-Type": "application/json"}, 400),
    (b'{"user_content": "hi"}', {"Content-Type": "text/plain"}, 415),
    (b'{"message": "hi"}', {}, 415),
])
def test_malformed_bodies_get_json_errors(client, data, headers, status):
    response = client.post("/api/chat", data=data, headers=headers)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json["error"]


def test_flask_own_errors_are_json(client):
    for method, path, status in [("GET", "/api/chat", 405), ("POST", "/api/nothing", 404),
                                 ("GET", "/api/upload", 405)]:
        response = client.open(path, method=method)
        assert response.status_code == status
        assert response.json["error"]
    too_big = b'{"message": "' + b"a" * (28 * 1024 * 1024) + b'"}'
    response = client.post("/api/chat", data=too_big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "MB" in response.json["error"]


def test_an_unmatched_url_gets_json_in_its_apis_shape(client):
    openai_style = client.get("/v1/nothing")
    assert openai_style.status_code == 404
    assert set(openai_style.json["error"]) == {"message", "type", "param", "code"}
    assert "/v1/nothing" in openai_style.json["error"]["message"]
    openai_method = client.get("/v1/chat/completions")
    assert openai_method.status_code == 405 and "POST" in openai_method.headers["Allow"].split(", ")
    assert set(openai_method.json["error"]) == {"message", "type", "param", "code"}
    google_style = client.post("/v1beta/files")
    assert google_style.status_code == 404
    assert set(google_style.json["error"]) == {"code", "message", "status"}
    assert google_style.json["error"]["code"] == 404 and google_style.json["error"]["status"] == "NOT_FOUND"
    assert "/v1beta/files" in google_style.json["error"]["message"]
    plain = client.get("/nothing")
    assert plain.status_code == 404
    assert isinstance(plain.json["error"], str) and "/nothing" in plain.json["error"]
    wrong_method = client.get("/api/chat")
    assert wrong_method.status_code == 405
    assert isinstance(wrong_method.json["error"], str) and wrong_method.json["error"]
    assert "POST" in wrong_method.headers["Allow"].split(", ")


def test_inline_file_over_the_limit_is_413(client, gemini):
    data = base64.b64encode(b"\0" * (20 * 1024 * 1024 + 10)).decode()
    response = client.post("/api/chat", json={"message": "x", "file_data": {"mime_type": "image/png",
                                                                            "data": data}})
    assert response.status_code == 413
    assert gemini.requests == []


def test_upload_errors(client):
    missing = client.post("/api/upload", data={"other": (io.BytesIO(b"x"), "a.txt")})
    assert missing.status_code == 400 and "file" in missing.json["error"]
    unnamed = client.post("/api/upload", data={"file": (io.BytesIO(b"x"), "")})
    assert unnamed.status_code == 400
    big = client.post("/api/upload", data={"file": (io.BytesIO(b"\0" * (20 * 1024 * 1024 + 1)), "big.bin")})
    assert big.status_code == 413 and "20 MB" in big.json["error"]


def test_upload_over_the_request_limit_is_a_json_413(client):
    response = client.post("/api/upload", data={"file": (io.BytesIO(b"\0" * (28 * 1024 * 1024)), "big.bin")})
    assert response.status_code == 413
    assert "MB" in response.json["error"]


def test_a_model_name_with_control_characters_is_refused(client, gemini):
    response = client.post("/api/chat", json={"message": "x", "model": "gemini\r\nx"})
    assert response.status_code == 400 and "model" in response.json["error"]
    assert gemini.requests == []


def test_root_answers_json_to_curl_and_html_to_browsers(client):
    as_curl = client.get("/", headers={"Accept": "*/*"})
    assert as_curl.json["providers"] == {"gemini": 3, "zju": 2}
    assert as_curl.json["message"] == "چتبات API آماده است"
    assert as_curl.json["message_en"] == "The chatbot API is ready"
    as_browser = client.get("/", headers={
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"})
    assert as_browser.headers["Content-Type"].startswith("text/html")
    assert "<form" in as_browser.text


def test_healthz_counts_keys_and_shows_none(client):
    body = client.get("/healthz").json
    assert body == {"status": "ok", "providers": {"gemini": 3, "zju": 2}}


def test_cors_preflight_is_answered(client):
    response = client.options("/api/chat", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "http://localhost:3000")


def test_the_page_is_served_with_a_strict_policy(client):
    page = client.get("/", headers={"Accept": "text/html"})
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy
    for response in (page, client.get("/healthz")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
