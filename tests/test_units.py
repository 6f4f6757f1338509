"""The pure parts of app.py: config, key parsing, the SSE reader, translators, error classes."""

import json

import pytest

from chatbridge import config, errors, failures, sse
from chatbridge.redaction import Redactor
from chatbridge.transport import Transport
from chatbridge.upstreams import Registry
from chatbridge.upstreams.base import iter_deltas
from chatbridge.upstreams.gemini import gemini_deltas
from chatbridge.upstreams.openai_compat import TextChunks, openai_deltas
from tests.fakes import gemini_429, gemini_events, gemini_invalid_key

SAMPLE = ('data: {"t": "a\u2028b"}\r\n\r\n: comment\r\ndata: {"t": "سلام 🌍"}\n\n'
          'event: x\rdata: line1\rdata: line2\r\r').encode()
EXPECTED = [("data", '{"t": "a\u2028b"}'), ("data", '{"t": "سلام 🌍"}'), ("data", "line1\nline2")]


@pytest.mark.parametrize("cut", range(len(SAMPLE) + 1))
def test_sse_reader_survives_a_split_at_any_byte(cut):
    assert list(sse.iter_sse_data([SAMPLE[:cut], SAMPLE[cut:]])) == EXPECTED


def test_sse_reader_survives_one_byte_reads():
    assert list(sse.iter_sse_data(SAMPLE[i:i + 1] for i in range(len(SAMPLE)))) == EXPECTED


def test_sse_reader_keeps_a_raw_json_tail_and_a_last_event_without_blank_line():
    body = b'data: {"a": 1}\n\n{\n  "error": {"code": 503}\n}\n'
    assert list(sse.iter_sse_data([body])) == [
        ("data", '{"a": 1}'), ("raw", '{\n  "error": {"code": 503}\n}')]
    assert list(sse.iter_sse_data([b"data: end"])) == [("data", "end")]


def test_gemini_translator_concatenates_parts_and_maps_finish_and_usage():
    event = {"candidates": [{"content": {"parts": [
        {"text": "Th", "thought": True}, {"text": "A"}, {"text": ""}, {"text": "B"},
        {"functionCall": {}}]}, "finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4,
                          "thoughtsTokenCount": 2, "totalTokenCount": 9}}
    assert gemini_deltas(event) == [
        ("usage", {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}),
        ("reasoning", "Th"), ("text", "AB"), ("finish", "length")]
    assert gemini_deltas({"candidates": [{"content": {"role": "model"}}]}) == []
    assert gemini_deltas({"candidates": [{"finishReason": "SAFETY"}]}) == [
        ("finish", "content_filter")]


def test_old_gemini_models_with_stop_on_every_chunk_still_stream_everything():
    chunks = gemini_events(["a", "b", "c"])
    for chunk in chunks:
        chunk["candidates"][0]["finishReason"] = "STOP"
    events = [("data", json.dumps(chunk)) for chunk in chunks]
    deltas = list(iter_deltas(events, gemini_deltas))
    assert [d.value for d in deltas if d.kind == "text"] == ["a", "b", "c"]
    assert deltas[-1] == ("finish", "stop")


def test_openai_translator_reads_reasoning_content_and_ignores_null_content():
    chunk = {"choices": [{"delta": {"content": None, "reasoning_content": "hm"},
                          "finish_reason": None}], "usage": None}
    assert openai_deltas(chunk) == [("reasoning", "hm")]
    assert openai_deltas({"choices": [], "usage": {"total_tokens": 3}}) == [
        ("usage", {"total_tokens": 3})]


@pytest.mark.parametrize("reply, kind", [
    (gemini_429("41.5s"), "rate_limit"),
    (gemini_invalid_key(), "invalid_key"),
])
def test_gemini_errors_are_classified(reply, kind):
    failure = failures.classify_failure(reply.status, json.loads(b"".join(reply.chunks)))
    assert failure.kind == kind
    if kind == "rate_limit":
        assert failure.retry_after == 41.5 and not failure.per_day


@pytest.mark.parametrize("status, body, kind", [
    (401, {"error": {"message": "bad key", "code": "invalid_api_key"}}, "invalid_key"),
    (403, None, "invalid_key"),
    (400, [{"error": {"message": "Please use a valid role: user, model."}}], "rejected"),
    (404, {"error": {"message": "model not found"}}, "rejected"),
    (502, "<html>bad gateway</html>", "server"),
])
def test_http_errors_are_classified(status, body, kind):
    assert failures.classify_failure(status, body).kind == kind


def test_retry_after_comes_from_retry_info_then_header_then_default():
    per_day = json.loads(b"".join(gemini_429(None, per_day=True).chunks))["error"]
    assert failures.per_day_quota(per_day)
    assert failures.retry_delay({}, {"Retry-After": "7"}) == 7
    assert failures.retry_delay({}, {}) == failures.RATE_LIMIT_COOLDOWN


def test_keys_are_trimmed_deduplicated_and_grouped():
    keys = config.parse_keys(" a1 , ,b2,a1, team:c3 ,team:d4,")
    assert [k.secret for k in keys] == ["a1", "b2", "c3", "d4"]
    assert keys[2].group == keys[3].group == "group:team"
    assert len({keys[0].group, keys[1].group, keys[2].group}) == 3
    assert "c3" not in repr(keys) and keys[2].suffix == "…c3"


def test_keys_sharing_their_last_four_characters_are_numbered_in_order():
    keys = config.parse_keys("first-wxyz, other-1234, second-wxyz, third-wxyz")
    assert [k.label for k in keys] == ["…wxyz-1", "…1234", "…wxyz-2", "…wxyz-3"]
    assert {k.suffix for k in keys if k.twin} == {"…wxyz"}  # what logs may show of the key


def test_config_defaults_and_default_model_choice():
    assert config.load_config({}).default_model == "echo"
    assert config.load_config({"ZJU_API_KEY": "sk-1"}).default_model == "deepseek-r1-671b"
    settings = config.load_config({"ZJU_API_KEY": "sk-1", "ALL_GEMINI_API_KEYS": "k",
                                     "GEMINI_MODEL": "gemini-3-pro"})
    assert settings.default_model == "gemini-3-pro"
    assert settings.max_upload_bytes == 20 * 1024 * 1024


def test_config_names_every_bad_setting():
    with pytest.raises(errors.ConfigError) as caught:
        config.load_config({"PORT": "eighty", "MAX_UPLOAD_MB": "-1", "LOG_LANGUAGE": "de",
                                "GEMINI_BASE_URL": "ftp://x"})
    for name in ("PORT", "MAX_UPLOAD_MB", "LOG_LANGUAGE", "GEMINI_BASE_URL"):
        assert name in str(caught.value)


@pytest.mark.parametrize("name, value, message", [
    ("PORT", "eighty", "PORT must be a whole number from 1 to 65535, not 'eighty'"),
    ("CHAT_MAX_TURNS", "1", "CHAT_MAX_TURNS must be a whole number of at least 2, not '1'"),
    ("MAX_UPLOAD_MB", "lots", "MAX_UPLOAD_MB must be a number of at least 0.001, not 'lots'"),
])
def test_config_errors_name_the_kind_of_number_in_words(name, value, message):
    with pytest.raises(errors.ConfigError) as caught:
        config.load_config({name: value})
    assert message in str(caught.value)
    assert "a int" not in str(caught.value) and "a float" not in str(caught.value)


@pytest.mark.parametrize("name, expected", [
    ("echo", ("echo", "echo")),
    ("gemini-2.5-pro", ("gemini", "gemini-2.5-pro")),
    ("gemma-3-27b-it", ("gemini", "gemma-3-27b-it")),
    ("zju/gemini-x", ("zju", "gemini-x")),
    ("gemini/my-tuned", ("gemini", "my-tuned")),
    ("deepseek-v3", ("zju", "deepseek-v3")),
    (None, ("gemini", "gemini-2.5-flash")),
])
def test_model_routing(name, expected):
    settings = config.load_config({"ZJU_API_KEY": "sk-1", "ALL_GEMINI_API_KEYS": "k"})
    assert Registry(settings, Transport(1, 1)).resolve(name) == expected


def test_redaction_masks_configured_and_key_like_strings():
    settings = config.load_config({"ZJU_API_KEY": "weird-secret-1234"})
    text = Redactor(settings.secrets).redact("got weird-secret-1234 and AIzaSyAbcdefghijklmnop and sk-abc***wxyz")
    assert "weird-secret" not in text and "AIzaSy" not in text and "sk-abc" not in text
    assert "…1234" in text


def text_chunk(content, **extra) -> str:
    """An OpenAI chat.completion.chunk payload holding only text, as DeepSeek sends it."""
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None,
                                    "finish_reason": None}], **extra}, ensure_ascii=False)


def stream_deltas(payloads: list) -> list:
    events = [("data", p) for p in payloads + ['{"choices":[{"index":0,"delta":{},'
                                               '"finish_reason":"stop"}]}', "[DONE]"]]
    return list(iter_deltas(events, openai_deltas, TextChunks()))


@pytest.mark.parametrize("text", ['wo"rld\\', "中文\u2028 🌍", "\\u0041", "", "a\\\"b",
                                  'a","reasoning_content":"b', 'a"},"finish_reason":"x'])
def test_quick_text_chunks_read_what_parsing_reads(text):
    """The chunks after the first are read from its learnt shape; whatever the text, the deltas
    are those of a full parse."""
    payloads = [text_chunk("first"), text_chunk(text), text_chunk(text + "!")]
    found = stream_deltas(payloads)
    assert found == list(iter_deltas([("data", p) for p in payloads + [
        '{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}']], openai_deltas))
    expected = ["first", text, text + "!"] if text else ["first", "!"]
    assert [d.value for d in found if d.kind == "text"] == expected


def test_quick_text_chunks_leave_every_other_shape_to_the_parser():
    texts = TextChunks()
    texts.learn(text_chunk("hi"), json.loads(text_chunk("hi")))
    assert texts.text(text_chunk("yo")) == "yo"
    injected = text_chunk("x")[:-len('"}, "logprobs": null, "finish_reason": null}]}')] \
        + '", "reasoning_content": "y"}, "logprobs": null, "finish_reason": null}]}'
    assert json.loads(injected)["choices"][0]["delta"]["reasoning_content"] == "y"
    assert texts.text(injected) is None  # two strings where the shape has one
    assert texts.text(text_chunk("x", usage={"total_tokens": 3})) is None
    assert texts.text(text_chunk("x").replace('"c1"', '"c2"')) is None
    broken = text_chunk("x").replace('"x"', '"x\x01"')  # a control character: not JSON
    assert texts.text(broken) is None


def test_quick_text_chunks_learn_only_from_one_content_key():
    texts = TextChunks()
    twice = text_chunk("hi", extra={"content": "hi"})
    texts.learn(twice, json.loads(twice))
    assert texts.prefix is None and texts.text(twice) is None
