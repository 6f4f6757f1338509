"""Rotation, failover and cooldowns of the key pool, through gunicorn with 3 gevent workers."""

import json
import multiprocessing
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chatbridge.keys import next_pacific_midnight
from chatbridge.state import FileStateStore
from tests.client import ask, events, post_chat, shape_a_text
from tests.conftest import GEMINI_KEYS, ZJU_KEYS, upstream_env
from tests.fakes import (
    Reply,
    gemini_429,
    gemini_code_status,
    gemini_error,
    gemini_events,
    gemini_invalid_key,
    gemini_sse,
    openai_error,
)

K0, K1, K2 = GEMINI_KEYS


def test_rotation_counts_are_exact_across_workers(server, gemini):
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda _: ask(server).status_code, range(30)))
    assert statuses == [200] * 30
    assert Counter(gemini.keys_seen()) == {K0: 10, K1: 10, K2: 10}


def take_turns(directory, count, results):
    store = FileStateStore(directory)
    results.extend([store.take_turn("gemini")[0] for _ in range(count)])


def test_counter_is_shared_by_processes(tmp_path):
    with multiprocessing.Manager() as manager:
        results = manager.list()
        workers = [multiprocessing.Process(target=take_turns, args=(tmp_path, 100, results))
                   for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert sorted(results) == list(range(300))


def test_a_corrupt_counter_starts_again_at_zero(tmp_path):
    (tmp_path / "keys-gemini.json").write_text("{half a file")
    assert FileStateStore(tmp_path).take_turn("gemini") == (0, {})


def test_429_fails_over_and_cools_the_key_for_that_model_only(server, gemini):
    gemini.script = lambda r: gemini_429("30s") if r.key == K0 and r.model == "gemini-2.5-flash" \
        else None
    assert ask(server).status_code == 200
    assert gemini.keys_seen() == [K0, K1]
    for _ in range(3):
        assert ask(server).status_code == 200
    assert gemini.keys_seen()[2:] == [K1, K2, K1], "the cooling key is skipped, not retried"
    gemini.reset()
    for _ in range(3):
        assert ask(server, model="gemini-2.5-pro").status_code == 200
    assert K0 in gemini.keys_seen(), "the key still serves another model"


def test_a_cooled_key_comes_back_after_its_retry_delay(server, gemini):
    gemini.script = lambda r: gemini_429("1s") if r.key == K0 and len(gemini.requests) == 1 \
        else None
    assert ask(server).status_code == 200
    for _ in range(3):
        ask(server)
    assert gemini.keys_seen().count(K0) == 1
    time.sleep(1.2)
    for _ in range(3):
        ask(server)
    assert gemini.keys_seen().count(K0) == 2


def test_invalid_key_is_skipped_for_every_model(server, gemini):
    gemini.script = lambda r: gemini_invalid_key() if r.key == K0 else None
    response = post_chat(server, {"message": "hi"})
    assert shape_a_text(events(response)) == "You said: hi"
    assert gemini.keys_seen() == [K0, K1]
    for model in ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash", "gemma-3-4b-it"):
        assert ask(server, model=model).status_code == 200
    assert gemini.keys_seen().count(K0) == 1


@pytest.mark.parametrize("status", [401, 403, 500, 503])
def test_key_and_server_faults_fail_over(server, gemini, status):
    gemini.script = lambda r: Reply(status=status, chunks=[b'{"error": {"code": %d}}' % status]) \
        if r.key == K0 else None
    assert ask(server).status_code == 200
    assert gemini.keys_seen() == [K0, K1]


def test_a_200_whose_first_event_is_an_error_fails_over(server, gemini):
    gemini.script = lambda r: Reply(chunks=gemini_sse([gemini_code_status(503)])) \
        if r.key == K0 else None
    payloads = events(post_chat(server, {"message": "hi"}))
    assert shape_a_text(payloads) == "You said: hi"
    assert payloads[-1] == {"done": True}
    assert not any("error" in p for p in payloads)
    assert gemini.keys_seen() == [K0, K1]


def test_a_200_with_no_content_fails_over(server, gemini):
    gemini.script = lambda r: Reply(chunks=[]) if r.key == K0 else None
    assert ask(server, stream=True).status_code == 200
    assert gemini.keys_seen() == [K0, K1]


def test_a_request_fault_is_not_retried_on_other_keys(server, gemini):
    gemini.script = lambda r: gemini_error(400, "INVALID_ARGUMENT", "Bad thing in the request.")
    response = ask(server)
    assert response.status_code == 500
    assert "Bad thing in the request." in response.json()["error"]
    payloads = events(post_chat(server, {"message": "hi"}))
    assert "Bad thing" in payloads[-1]["error"]
    assert len(gemini.requests) == 2, "one attempt per request"
    gemini.script = None
    assert ask(server).status_code == 200, "the key was not cooled"


def test_every_key_429_gives_429_with_retry_after(server, gemini):
    gemini.script = lambda r: gemini_429("30s")
    response = ask(server)
    assert response.status_code == 429
    assert 29 <= int(response.headers["Retry-After"]) <= 31
    assert sorted(gemini.keys_seen()) == sorted(GEMINI_KEYS)
    started = time.monotonic()
    again = post_chat(server, {"message": "hi"})
    assert again.status_code == 429, "Shape A also answers 429 before contacting anyone"
    assert time.monotonic() - started < 0.8
    assert len(gemini.requests) == 3, "no upstream was hammered"


def test_a_short_cooldown_is_waited_out(server, gemini):
    gemini.script = lambda r: gemini_429("0.6s") if len(gemini.requests) <= 3 else None
    assert ask(server).status_code == 429
    started = time.monotonic()
    response = ask(server)
    assert response.status_code == 200
    assert 0.3 < time.monotonic() - started < 3


def test_per_day_quota_cools_until_midnight_pacific(server, gemini):
    gemini.script = lambda r: gemini_429(None, per_day=True)
    response = ask(server)
    assert response.status_code == 429
    expected = next_pacific_midnight(time.time()) - time.time()
    assert abs(int(response.headers["Retry-After"]) - expected) < 5
    assert ask(server).status_code == 429
    assert len(gemini.requests) == 3


def test_zju_429_uses_retry_after_header(server, openai):
    openai.script = lambda r: Reply(status=429, headers={"Retry-After": "40"}, chunks=[
        b'{"error": {"message": "Rate limit reached", "type": "rate_limit", "code": 429}}'])
    response = ask(server, model="deepseek-v3-671b")
    assert response.status_code == 429
    assert 39 <= int(response.headers["Retry-After"]) <= 41
    assert sorted(openai.keys_seen()) == sorted(ZJU_KEYS)


@pytest.fixture(scope="module")
def grouped_server(start_gunicorn, fake_gemini, fake_openai):
    keys = f"projA:{K0}, projA:{K1}, {K2}"
    return start_gunicorn(upstream_env(fake_gemini, fake_openai, ALL_GEMINI_API_KEYS=keys))


def test_a_group_cools_together(grouped_server, gemini):
    grouped_server.reset_state()
    gemini.script = lambda r: gemini_429("30s") if r.key in (K0, K1) else None
    assert ask(grouped_server).status_code == 200
    assert gemini.keys_seen() == [K0, K2], "K1 shares K0's project quota"
    for _ in range(4):
        assert ask(grouped_server).status_code == 200
    assert set(gemini.keys_seen()[2:]) == {K2}


def test_keys_never_appear_in_responses_or_logs(server, gemini, openai):
    openai.script = lambda r: openai_error(401, f"Incorrect API key provided: {r.key}.",
                                           "invalid_api_key")
    gemini.script = lambda r: gemini_error(400, "INVALID_ARGUMENT", f"Key {r.key} is odd.")
    bodies = [ask(server, model="deepseek-v3-671b").text, ask(server).text,
              post_chat(server, {"message": "x", "model": "deepseek-v3-671b"}).text,
              requests.get(server.url + "/healthz", timeout=5).text,
              requests.get(server.url + "/", timeout=5).text]
    time.sleep(0.3)
    log = server.log()
    assert "Incorrect API key provided" in bodies[0]
    for secret in GEMINI_KEYS + ZJU_KEYS:
        for text in bodies + [log]:
            assert secret not in text
            assert secret[:10] not in text


def test_invalid_and_rate_limited_keys_together_give_429_with_the_real_delay(server, gemini):
    gemini.script = lambda r: gemini_invalid_key() if r.key == K0 else gemini_429("30s")
    first = ask(server)
    assert first.status_code == 429
    assert 29 <= int(first.headers["Retry-After"]) <= 31
    second = ask(server)
    assert second.status_code == 429
    assert 29 <= int(second.headers["Retry-After"]) <= 31
    assert len(gemini.requests) == 3


def test_a_connection_error_fails_over(server, gemini):
    gemini.script = lambda r: Reply(silent=True) if r.key == K0 else None
    assert shape_a_text(events(post_chat(server, {"message": "hi"}))) == "You said: hi"
    assert gemini.keys_seen() == [K0, K1]


def test_a_429_after_some_text_still_rests_the_key(server, gemini):
    def script(r):
        if r.key == K0 and len(gemini.requests) == 1:
            return Reply(chunks=gemini_sse(gemini_events(["partial"], finish=None)
                                           + [json.loads(b"".join(gemini_429("30s").chunks))]))
        return None

    gemini.script = script
    payloads = events(post_chat(server, {"message": "hi"}))
    assert shape_a_text(payloads) == "partial" and "quota" in payloads[-1]["error"]
    for _ in range(3):
        assert ask(server).status_code == 200
    assert gemini.keys_seen().count(K0) == 1


def test_an_event_of_unexpected_shape_fails_over(server, openai):
    openai.script = lambda r: Reply(chunks=[b'data: {"choices": [{"delta": "odd"}]}\n\n']) \
        if r.key == ZJU_KEYS[0] else None
    assert ask(server, model="deepseek-v3-671b", stream=True).status_code == 200
    assert openai.keys_seen() == ZJU_KEYS


def test_zju_keys_rotate_and_fail_over_on_401(server, openai):
    for _ in range(4):
        assert ask(server, model="deepseek-v3-671b").status_code == 200
    assert Counter(openai.keys_seen()) == {ZJU_KEYS[0]: 2, ZJU_KEYS[1]: 2}
    openai.reset()
    server.reset_state()
    openai.valid_keys = {ZJU_KEYS[1]}
    assert ask(server, model="deepseek-v3-671b").status_code == 200
    assert openai.keys_seen() == ZJU_KEYS


def test_the_request_log_line_tells_the_story(server, gemini):
    gemini.script = lambda r: gemini_429("30s") if r.key == K0 else None
    events(post_chat(server, {"message": "hi"}))
    time.sleep(0.3)
    line = [x for x in server.log().splitlines() if "POST /api/chat 200 shape=A" in x][-1]
    assert "[INFO] 127.0.0.1 POST /api/chat 200 shape=A " in line, "the line begins with the client"
    assert "provider=gemini model=gemini-2.5-flash key=…bbbb attempts=2" in line
    assert re.search(r"ttft=\d+\.\d{3}s duration=\d+\.\d{3}s outcome=ok", line)


def test_a_forged_log_line_stays_on_one_line(server):
    response = requests.post(server.url + "/api/ch%0A[2026-01-01] [INFO] FORGED", timeout=5)
    assert response.status_code == 404
    assert post_chat(server, {"message": "x", "model": "m\n[FORGED]"}).status_code == 400
    time.sleep(0.3)
    assert not any(line.startswith("[2026-01-01] [INFO] FORGED")
                   for line in server.log().splitlines())
    assert "\\x0a[2026-01-01]" in server.log()


def test_keys_without_a_known_prefix_are_redacted_even_in_long_messages(server, openai):
    secret = ZJU_KEYS[1]
    openai.script = lambda r: openai_error(400, "x" * 470 + f" bad key {r.key} here")
    server_text = ask(server, model="deepseek-v3-671b").text
    openai.reset()
    openai.script = lambda r: openai_error(400, "x" * 470 + f" bad key {r.key} here")
    server_text += ask(server, model="deepseek-v3-671b").text
    time.sleep(0.3)
    for text in (server_text, server.log()):
        assert secret[:12] not in text
