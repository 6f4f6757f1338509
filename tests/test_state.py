"""Shared state: Redis across two gunicorn masters, the file store across workers,
conversations by chat_id, uploads by file_id, access tokens and the key status route."""

import base64
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chatbridge.state import FileStateStore, MemoryStateStore, RedisStateStore
from tests.client import ask, events, post_chat, shape_a_text
from tests.conftest import ADMIN_TOKEN, GEMINI_KEYS, REPO, ZJU_KEYS, closed_port, upstream_env
from tests.fakes import Reply, gemini_429, gemini_midstream_error, gemini_stream

K0, K1, K2 = GEMINI_KEYS
CHAT = "chat-0123456789abcdef"


def sent_turns(fake) -> list:
    """The (role, text) turns of the last request the fake Gemini received."""
    return [(c["role"], "".join(p.get("text", "") for p in c["parts"]))
            for c in fake.requests[-1].json["contents"]]


# ---------------------------------------------------------------- Redis, two instances


@pytest.fixture(scope="module")
def redis_pair(start_gunicorn, redis_server, fake_gemini, fake_openai):
    env = upstream_env(fake_gemini, fake_openai, REDIS_URL=redis_server.url, CHAT_MAX_TURNS="4")
    return start_gunicorn(env, workers=2), start_gunicorn(env, workers=2)


@pytest.fixture
def pair(redis_pair, redis_server, gemini, openai):
    redis_server.client.flushall()
    yield redis_pair
    redis_server.client.flushall()


def test_rotation_is_exact_across_two_instances(pair, gemini):
    servers = [pair[i % 2] for i in range(30)]
    with ThreadPoolExecutor(10) as pool:
        assert set(pool.map(lambda s: ask(s).status_code, servers)) == {200}
    assert Counter(gemini.keys_seen()) == {K0: 10, K1: 10, K2: 10}


def test_a_key_cooled_by_one_instance_is_skipped_by_the_other(pair, gemini):
    first, second = pair
    gemini.script = lambda r: gemini_429("30s") if r.key == K0 else None
    assert ask(first).status_code == 200
    assert gemini.keys_seen() == [K0, K1]
    for _ in range(6):
        assert ask(second).status_code == 200
    assert gemini.keys_seen().count(K0) == 1


def test_a_conversation_begun_on_one_instance_continues_on_the_other(pair, gemini):
    first, second = pair
    assert shape_a_text(events(post_chat(first, {"message": "my name is Ada",
                                                 "chat_id": CHAT}))) == "You said: my name is Ada"
    assert ask(second, "what is my name?", chat_id=CHAT).status_code == 200
    assert sent_turns(gemini) == [("user", "my name is Ada"), ("model", "You said: my name is Ada"),
                                  ("user", "what is my name?")]
    history = requests.get(first.url + f"/api/chats/{CHAT}", timeout=5).json()["history"]
    assert [t["role"] for t in history] == ["user", "assistant", "user", "assistant"]


def test_history_keeps_the_last_chat_max_turns(pair, gemini):
    for text in ("one", "two", "three"):
        assert ask(pair[0], text, chat_id=CHAT).status_code == 200
    history = requests.get(pair[1].url + f"/api/chats/{CHAT}", timeout=5).json()["history"]
    assert [t["content"] for t in history] == ["two", "You said: two", "three", "You said: three"]


def test_an_upload_cached_by_one_instance_is_used_by_the_other(pair, gemini):
    uploaded = requests.post(pair[0].url + "/api/upload", timeout=10,
                             files={"file": ("n.txt", b"hello file", "text/plain")}).json()
    assert ask(pair[1], "read it", file_id=uploaded["file_id"]).status_code == 200
    part = gemini.requests[-1].json["contents"][-1]["parts"][-1]
    assert base64.b64decode(part["inline_data"]["data"]) == b"hello file"


@pytest.fixture(scope="module")
def redis_down_server(start_gunicorn, fake_gemini, fake_openai):
    env = upstream_env(fake_gemini, fake_openai, REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    return start_gunicorn(env, workers=1)


def test_requests_still_work_while_redis_is_unreachable(redis_down_server, gemini):
    for _ in range(3):
        assert ask(redis_down_server).status_code == 200
    assert Counter(gemini.keys_seen()) == {K0: 1, K1: 1, K2: 1}, "rotation goes on per process"
    assert ask(redis_down_server, chat_id=CHAT).status_code == 200
    time.sleep(0.3)
    assert "Redis is unreachable" in redis_down_server.log()


# ---------------------------------------------------------------- the file store, three workers


def test_a_conversation_continues_across_workers(server, gemini):
    for text in ("first", "second", "third"):
        assert shape_a_text(events(post_chat(server, {"message": text, "chat_id": CHAT})))
    assert sent_turns(gemini)[:-1] == [("user", "first"), ("model", "You said: first"),
                                       ("user", "second"), ("model", "You said: second")]
    assert requests.delete(server.url + f"/api/chats/{CHAT}", timeout=5).json()["deleted"]
    assert requests.get(server.url + f"/api/chats/{CHAT}", timeout=5).status_code == 404
    assert requests.delete(server.url + f"/api/chats/{CHAT}", timeout=5).status_code == 404


def test_concurrent_requests_on_one_chat_lose_no_turn(server, gemini):
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: ask(server, f"q{i}", chat_id=CHAT).status_code,
                                 range(8)))
    assert statuses == [200] * 8
    history = requests.get(server.url + f"/api/chats/{CHAT}", timeout=5).json()["history"]
    assert len(history) == 16
    for question, answer in zip(history[::2], history[1::2], strict=True):
        assert answer["content"] == "You said: " + question["content"], "pairs stay together"


@pytest.mark.parametrize("reply", [gemini_midstream_error(["half"]),
                                   gemini_stream(["cut"], finish=None)], ids=["error", "cut-off"])
def test_a_failed_answer_adds_nothing(server, gemini, reply):
    assert ask(server, "kept", chat_id=CHAT).status_code == 200
    gemini.script = lambda r: reply
    assert "error" in events(post_chat(server, {"message": "lost", "chat_id": CHAT}))[-1]
    history = requests.get(server.url + f"/api/chats/{CHAT}", timeout=5).json()["history"]
    assert [t["content"] for t in history] == ["kept", "You said: kept"]


def test_an_aborted_answer_adds_nothing(server, gemini):
    chunks = gemini_stream(["partial"], finish=None).chunks
    gemini.script = lambda r: Reply(chunks=chunks, hang=True)
    with requests.post(server.url + "/api/chat", json={"message": "x", "chat_id": CHAT},
                       stream=True, timeout=10) as response:
        next(response.iter_lines())
    assert gemini.wait_for_disconnects(1, 2.0)
    time.sleep(0.2)
    assert requests.get(server.url + f"/api/chats/{CHAT}", timeout=5).status_code == 404


@pytest.mark.parametrize("chat_id", ["short", "x" * 65, "has space in it....", "ünïcode-chat-id-1"])
def test_a_malformed_chat_id_is_400(client, gemini, chat_id):
    body = {"user_content": "hi", "model": "gemini-2.5-flash", "chat_id": chat_id}
    assert client.post("/api/chat", json=body).status_code == 400
    assert gemini.requests == []


def test_an_unknown_file_id_is_404(client, gemini):
    body = {"user_content": "hi", "model": "gemini-2.5-flash", "file_id": "file-doesnotexist000000000"}
    response = client.post("/api/chat", json=body)
    assert response.status_code == 404 and "file_id" in response.json["error"]


def take_turns_forever(directory):
    store = FileStateStore(directory)
    for round_ in itertools.count():
        store.take_turn("gemini")
        store.note_attempt("gemini", "k", {"quota|g|m": time.time() + 60}, "rate_limit: x")
        store.append_chat(CHAT, "", [{"role": "user", "content": "x" * 2000}], 50, 3600)
        if round_ == 0:
            print("writing", flush=True)  # the test kills it some time after this


def test_a_writer_killed_mid_write_leaves_the_state_readable(tmp_path):
    for _ in range(15):
        writer = subprocess.Popen([sys.executable, "-c", "import sys; from tests.test_state import "
                                   "take_turns_forever as t; t(sys.argv[1])", str(tmp_path)],
                                  cwd=REPO, env={**os.environ, "TEMP_DATA_DIR": str(tmp_path)},
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert writer.stdout.readline() == b"writing\n", "the writer started writing"
        time.sleep(random.random() * 0.2)  # however long its import took, kill it mid-work
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        writer.stdout.close()
        for name in ("keys-gemini.json", f"chat-{CHAT}.json"):
            if (tmp_path / name).exists():
                json.loads((tmp_path / name).read_text())
    store = FileStateStore(tmp_path)
    turn, marks = store.take_turn("gemini")
    assert turn > 0 and "quota|g|m" in marks
    assert 0 < len(store.load_chat(CHAT)["turns"]) <= 50


def test_a_worker_killed_under_load_leaves_the_service_working(server, gemini):
    pids = {int(p) for p in subprocess.run(["pgrep", "-P", str(server.process.pid)],
                                           capture_output=True, text=True).stdout.split()}
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(ask, server, chat_id=CHAT) for _ in range(40)]
        time.sleep(0.05)
        os.kill(sorted(pids)[0], signal.SIGKILL)
        [f.exception() for f in futures]
    json.loads((server.data_dir / "keys-gemini.json").read_text())
    json.loads((server.data_dir / f"chat-{CHAT}.json").read_text())
    deadline = time.monotonic() + 10
    while len(server.log().split("Booting worker")) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(ask(server).status_code == 200 for _ in range(6))


# ---------------------------------------------------------------- tokens, ownership, expiry


@pytest.fixture(scope="module", params=["files", "redis"])
def two_token_server(request, start_gunicorn, fake_gemini, fake_openai):
    """An instance with access tokens, keeping its state in files or in Redis."""
    env = upstream_env(fake_gemini, fake_openai, ACCESS_TOKENS="token-of-alice, token-of-bob",
                       UPLOAD_TTL_MINUTES="0.02")
    if request.param == "redis":  # only this one needs redis-server
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url.replace("/0", "/1")
    return start_gunicorn(env, workers=2)


@pytest.fixture
def guarded(request, two_token_server, gemini):
    """The two-token server with its state (in files or in Redis) forgotten."""
    two_token_server.reset_state()
    if "REDIS_URL" in two_token_server.env:
        request.getfixturevalue("redis_server").client.flushall()
    return two_token_server


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_access_tokens_guard_the_api(guarded, gemini):
    missing = ask(guarded)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert ask(guarded, headers=bearer("token-of-eve")).status_code == 401
    assert ask(guarded, headers=bearer("token-of-alice")).status_code == 200
    assert ask(guarded, headers={"x-goog-api-key": "token-of-bob"}).status_code == 200
    assert requests.get(guarded.url + "/healthz", timeout=5).ok
    assert all("token-of" not in str(r.headers) for r in gemini.requests), "never forwarded"


def test_a_chat_belongs_to_the_token_that_created_it(guarded, gemini):
    assert ask(guarded, chat_id=CHAT, headers=bearer("token-of-alice")).status_code == 200
    url = guarded.url + f"/api/chats/{CHAT}"
    assert requests.get(url, headers=bearer("token-of-alice"), timeout=5).status_code == 200
    assert requests.get(url, headers=bearer("token-of-bob"), timeout=5).status_code == 404
    assert ask(guarded, chat_id=CHAT, headers=bearer("token-of-bob")).status_code == 404
    assert requests.delete(url, headers=bearer("token-of-bob"), timeout=5).status_code == 404
    assert requests.get(url, headers=bearer("token-of-alice"), timeout=5).status_code == 200


def test_a_chat_claimed_by_a_slow_answer_cannot_be_taken_over(guarded, gemini):
    gemini.script = lambda r: Reply(chunks=[1.0] + gemini_stream(["bob's answer"]).chunks)
    with ThreadPoolExecutor(1) as pool:
        bobs = pool.submit(lambda: events(post_chat(
            guarded, {"message": "bob's question", "chat_id": CHAT},
            headers=bearer("token-of-bob"))))
        time.sleep(0.4)
        alices = ask(guarded, "alice's question", chat_id=CHAT,
                     headers=bearer("token-of-alice"))
        assert alices.status_code == 404
        assert bobs.result()[-1] == {"done": True}
    url = guarded.url + f"/api/chats/{CHAT}"
    history = requests.get(url, headers=bearer("token-of-bob"), timeout=5).json()["history"]
    assert [t["content"] for t in history] == ["bob's question", "bob's answer"]
    assert requests.get(url, headers=bearer("token-of-alice"), timeout=5).status_code == 404


def test_a_file_id_belongs_to_the_token_that_uploaded_it(guarded, gemini):
    uploaded = requests.post(guarded.url + "/api/upload", headers=bearer("token-of-alice"),
                             files={"file": ("a.txt", b"abc", "text/plain")}, timeout=10).json()
    theirs = ask(guarded, "read", file_id=uploaded["file_id"], headers=bearer("token-of-bob"))
    assert theirs.status_code == 404


def test_cached_uploads_expire(guarded, gemini):
    uploaded = requests.post(guarded.url + "/api/upload", headers=bearer("token-of-alice"),
                             files={"file": ("a.txt", b"abc", "text/plain")}, timeout=10).json()
    fresh = ask(guarded, "read", file_id=uploaded["file_id"], headers=bearer("token-of-alice"))
    assert fresh.status_code == 200
    time.sleep(2.1)  # 0.02 minutes, which Redis rounds up to 2 s
    stale = ask(guarded, "read", file_id=uploaded["file_id"], headers=bearer("token-of-alice"))
    assert stale.status_code == 404 and "expired" in stale.json()["error"]


@pytest.fixture(params=["files", "redis", "memory"])
def store(request, tmp_path):
    """Each state store, fresh; only the Redis one needs redis-server."""
    if request.param == "files":
        return FileStateStore(tmp_path)
    if request.param == "memory":
        return MemoryStateStore()
    redis_server = request.getfixturevalue("redis_server")
    redis_server.client.flushall()
    return RedisStateStore(redis_server.url)


def test_chats_expire_after_their_ttl(store):
    store.append_chat(CHAT, "", [{"role": "user", "content": "x"}], 50, 1)
    assert store.load_chat(CHAT)["turns"] == [{"role": "user", "content": "x"}]
    time.sleep(1.1)
    assert store.load_chat(CHAT) is None


# ---------------------------------------------------------------- key status


def test_key_status_needs_the_admin_token_and_shows_no_key(server, gemini, openai):
    url = server.url + "/api/keys"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, headers=bearer("wrong"), timeout=5).status_code == 401
    gemini.script = lambda r: gemini_429("30s") if r.key == K0 else None
    ask(server)
    response = requests.get(url, headers=bearer(ADMIN_TOKEN), timeout=5)
    assert response.status_code == 200
    first, second, third = response.json()["providers"]["gemini"]
    assert first["key"] == "…aaaa" and first["state"] == "cooling"
    assert list(first["cooling_until"]) == ["gemini-2.5-flash"]
    assert (first["requests"], first["failures"]) == (1, 1)
    assert first["last_error"].startswith("rate_limit")
    assert (second["state"], second["requests"], second["failures"]) == ("ok", 1, 0)
    assert second["last_used"] and third["last_used"] is None
    for secret in GEMINI_KEYS + ZJU_KEYS + [ADMIN_TOKEN]:
        assert secret not in response.text


def test_key_status_is_404_without_an_admin_token(redis_down_server):
    response = requests.get(redis_down_server.url + "/api/keys", headers=bearer("x"), timeout=5)
    assert response.status_code == 404


def test_a_key_in_a_mid_stream_error_is_not_stored(server, gemini):
    gemini.script = lambda r: Reply(chunks=gemini_stream(["some"], finish=None).chunks + [
        b'data: {"error": {"code": 500, "message": "bad key %s"}}\r\n\r\n' % r.key.encode()])
    assert "error" in events(post_chat(server, {"message": "hi"}))[-1]
    status = requests.get(server.url + "/api/keys", headers=bearer(ADMIN_TOKEN), timeout=5)
    assert status.json()["providers"]["gemini"][0]["last_error"].endswith("bad key …aaaa")
    for path in server.data_dir.glob("*.json"):
        assert K0 not in path.read_text()


def test_every_key_invalid_is_503_first_and_after(server, gemini):
    gemini.script = lambda r: Reply(status=401, chunks=[b'{"error": {"message": "no"}}'])
    first, second = ask(server), ask(server)
    assert (first.status_code, second.status_code) == (503, 503)
    assert "ALL_GEMINI_API_KEYS" in first.json()["error"]


def test_files_of_a_stored_conversation_are_kept(server, gemini):
    png = base64.b64encode(b"\x89PNG fake").decode()
    assert ask(server, "", chat_id=CHAT, file_data={"mime_type": "image/png", "data": png}
               ).status_code == 200
    assert ask(server, "and now?", chat_id=CHAT).status_code == 200
    first = gemini.requests[-1].json["contents"][0]
    assert first == {"role": "user", "parts": [{"inline_data": {"mime_type": "image/png",
                                                                "data": png}}]}
    assert all(c["parts"] for c in gemini.requests[-1].json["contents"]), "no empty turns"


def test_deleting_chats_never_breaks_the_locks(tmp_path):
    with ThreadPoolExecutor(4) as pool:
        deleter = pool.submit(delete_chats, tmp_path, 1.5)
        turns = pool.map(lambda _: [FileStateStore(tmp_path).take_turn("gemini")[0]
                                    for _ in range(150)], range(3))
        assert sorted(t for batch in turns for t in batch) == list(range(450))
        deleter.result()


def delete_chats(directory, seconds_):
    store, end = FileStateStore(directory), time.monotonic() + seconds_
    while time.monotonic() < end:
        store.append_chat(CHAT, "", [{"role": "user", "content": "x"}], 5, 60)
        store.delete_chat(CHAT)


def test_expired_documents_are_swept(tmp_path):
    store = FileStateStore(tmp_path)
    store.append_chat(CHAT, "", [{"role": "user", "content": "x"}], 5, 0.5)
    time.sleep(0.6)
    store.swept = 0
    store.save_upload("file-0123456789abcdefgh", {"data": ""}, 60)
    assert not (tmp_path / f"chat-{CHAT}.json").exists()
    assert (tmp_path / "upload-file-0123456789abcdefgh.json").exists()


@pytest.fixture(scope="module")
def hung_redis_server(start_gunicorn, fake_gemini, fake_openai):
    """An instance whose Redis accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    env = upstream_env(fake_gemini, fake_openai,
                       REDIS_URL=f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
    yield start_gunicorn(env, workers=1)
    listener.close()


def test_a_hung_redis_costs_one_timeout_not_one_per_request(hung_redis_server, gemini):
    assert ask(hung_redis_server).status_code == 200
    started = time.monotonic()
    for _ in range(3):
        assert ask(hung_redis_server, chat_id=CHAT).status_code == 200
    assert time.monotonic() - started < 2, "Redis is not retried on every request"


@pytest.mark.parametrize("kind", ["files", "redis"])
def test_a_corrupt_rest_is_dropped_and_replaced(tmp_path, request, kind):
    """A rest further ahead than any can last (from a state file older than the clamps) holds
    no key back, and the next real rest replaces it."""
    if kind == "redis":
        redis_server = request.getfixturevalue("redis_server")
        redis_server.client.flushall()
        store = RedisStateStore(redis_server.url)
    else:
        store = FileStateStore(tmp_path)
    store.note_attempt("gemini", "k", {"quota|g|m": 1e308}, None)
    assert store.peek("gemini") == {}
    soon = time.time() + 30
    store.note_attempt("gemini", "k", {"quota|g|m": soon}, None)
    assert store.peek("gemini") == {"quota|g|m": pytest.approx(soon)}


def test_a_keys_document_is_overwritten_in_place_and_still_grows(tmp_path):
    """The keys documents are written over themselves (no rename per request) while they fit
    their file, and replaced by a larger file when they outgrow it; every state between is
    whole JSON, and nothing is lost across the growth."""
    store = FileStateStore(tmp_path)
    path = tmp_path / "keys-gemini.json"
    store.take_turn("gemini")
    inode, size = path.stat().st_ino, path.stat().st_size
    for _ in range(20):
        store.take_turn("gemini", lambda taken, marks: "k1")
    assert (path.stat().st_ino, path.stat().st_size) == (inode, size)  # overwritten in place
    marks = {f"quota|key{n}|gemini-2.5-flash": time.time() + 60 for n in range(100)}
    store.note_attempt("gemini", "k2", marks, "rate_limit: x")  # larger than the file's room
    assert path.stat().st_size > size
    doc = json.loads(path.read_text())
    assert doc["counter"] == 21 and doc["stats"]["k1"]["requests"] == 20
    assert doc["stats"]["k2"]["failures"] == 1 and set(marks) <= set(doc["marks"])
    turn, seen = store.take_turn("gemini")
    assert turn == 21 and set(marks) <= set(seen)
