"""The operator's view (issue 12): Prometheus metrics added up across gunicorn's gevent workers,
per-key usage on the file store and on Redis, key health checks (periodic, by hand, and the
`python -m chatbridge keys check` command), resets, and the admin token on all of it."""

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN, GEMINI_KEYS, REPO, ZJU_KEYS, upstream_env
from tests.fakes import (
    Reply,
    gemini_429,
    gemini_chunk,
    gemini_invalid_key,
    gemini_sse,
    gemini_usage,
    openai_insufficient_quota,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
GEMINI = "gemini-2.5-flash"
FIXED_USAGE = gemini_usage(candidates=5, thoughts=2, prompt=11)  # 11 in, 7 out (thinking counts)


def fixed_reply(recorded):
    """key 0 is rejected as invalid; every other answer has the same usage."""
    if recorded.key == GEMINI_KEYS[0]:
        return gemini_invalid_key()
    if recorded.method == "POST":
        return Reply(chunks=gemini_sse([gemini_chunk(text="Hello there", finish="STOP",
                                                     usage=FIXED_USAGE)]))
    return None


def chat(url: str, model: str = GEMINI, stream: bool = True) -> dict | None:
    """One /v1/chat/completions request on a new connection; the usage the client was told."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi there"}],
            "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
    with requests.post(f"{url}/v1/chat/completions", json=body, timeout=30, stream=stream) as reply:
        assert reply.status_code == 200, reply.text
        if not stream:
            return reply.json()["usage"]
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith(b"data: {")]
        return next(e["usage"] for e in events if e.get("usage"))


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list, name: str, **labels) -> float:
    """The sum of the samples of that name whose labels include those given."""
    return sum(s.value for s in found
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def key_entries(url: str, provider: str = "gemini") -> list:
    reply = requests.get(f"{url}/api/keys", headers=ADMIN, timeout=10)
    assert reply.status_code == 200
    return reply.json()["providers"][provider]


def wait_for(condition, seconds: float = 15.0):
    """condition()'s first true value within seconds, else the last one (for the assert)."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


# ---------------------------------------------------------------- metrics

@pytest.fixture(scope="module")
def metrics_server(start_gunicorn, fake_gemini, fake_openai):
    return start_gunicorn(upstream_env(fake_gemini, fake_openai, ADMIN_TOKEN=ADMIN_TOKEN))


def test_metrics_add_up_across_three_gevent_workers(metrics_server, gemini, openai):
    gemini.script = lambda recorded: time.sleep(0.2)  # slow enough that workers share the load
    with ThreadPoolExecutor(8) as pool:
        streamed = list(pool.map(lambda _: chat(metrics_server.url), range(12)))
        whole = list(pool.map(lambda _: chat(metrics_server.url, "deepseek-r1-671b", False),
                              range(6)))
    for _ in range(2):  # refused before any upstream is asked
        assert requests.post(f"{metrics_server.url}/v1/chat/completions", json={"model": 1},
                             timeout=10).status_code == 400
    served_by = set(re.findall(r"\[(\d+)\] \[INFO\] 127\.0\.0\.1 POST /v1/chat/completions 200",
                               metrics_server.log()))
    assert len(served_by) >= 2, "the requests should have been spread over the workers"

    def scrape():  # a request is counted once its response is closed, just after its last byte
        reply = requests.get(f"{metrics_server.url}/metrics", headers=ADMIN, timeout=10)
        assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/plain")
        assert not any(key in reply.text for key in GEMINI_KEYS + ZJU_KEYS)
        found = samples(reply.text)
        counted = value(found, "chatbridge_request_duration_seconds_count", api="openai")
        return found if counted == 20 else None
    found = wait_for(scrape, 5)
    assert found
    total = "chatbridge_requests_total"
    assert value(found, total, api="openai", provider="gemini", outcome="ok") == 12
    assert value(found, total, api="openai", provider="zju", outcome="ok") == 6
    assert value(found, total, api="openai", outcome="client_error") == 2
    attempts = [s for s in found if s.name == "chatbridge_upstream_attempts_total"]
    assert {s.labels["key"] for s in attempts} <= {k[-4:] for k in GEMINI_KEYS + ZJU_KEYS}
    assert value(found, "chatbridge_upstream_attempts_total", provider="gemini", result="ok") == 12
    for kind, field in (("input", "prompt_tokens"), ("output", "completion_tokens")):
        assert value(found, "chatbridge_tokens_total", provider="gemini", kind=kind) == \
            sum(u[field] for u in streamed) > 0
        assert value(found, "chatbridge_tokens_total", provider="zju", kind=kind) == \
            sum(u[field] for u in whole) > 0
    assert value(found, "chatbridge_time_to_first_token_seconds_count", provider="gemini") == 12
    assert value(found, "chatbridge_keys", provider="gemini", state="ok") == 3
    assert value(found, "chatbridge_keys", provider="zju", state="ok") == 2
    assert value(found, "chatbridge_open_streams") == 0


def test_a_stream_in_flight_is_an_open_stream(metrics_server, gemini):
    gemini.script = lambda recorded: Reply(chunks=gemini_sse([gemini_chunk(text="first")]),
                                           hang=True)
    body = {"model": GEMINI, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with requests.post(f"{metrics_server.url}/v1/chat/completions", json=body, stream=True,
                       timeout=30) as reply:
        next(reply.iter_lines())
        found = samples(requests.get(f"{metrics_server.url}/metrics", headers=ADMIN,
                                     timeout=10).text)
        assert value(found, "chatbridge_open_streams") == 1


# ---------------------------------------------------------------- per-key usage and checks

@pytest.fixture(scope="module")
def file_server(start_gunicorn, fake_gemini, fake_openai):
    """Resting invalid keys are checked again every 1.2 s."""
    return start_gunicorn(upstream_env(fake_gemini, fake_openai, ADMIN_TOKEN=ADMIN_TOKEN,
                                       KEY_CHECK_MINUTES="0.02"))


@pytest.fixture(scope="module")
def redis_usage_server(start_gunicorn, fake_gemini, fake_openai, redis_server):
    url = redis_server.url.rsplit("/", 1)[0] + "/7"  # a database of its own: nothing else counts
    redis_server.client.execute_command("SELECT", 7)
    redis_server.client.flushdb()
    redis_server.client.execute_command("SELECT", 0)
    return start_gunicorn(upstream_env(fake_gemini, fake_openai, ADMIN_TOKEN=ADMIN_TOKEN,
                                       REDIS_URL=url, KEY_CHECK_MINUTES="0"))


@pytest.mark.parametrize("store", ["files", "redis"])
def test_usage_per_key_matches_the_upstreams_usage(store, request, gemini):
    server = request.getfixturevalue("file_server" if store == "files" else "redis_usage_server")
    if store == "files":
        server.reset_state()
    gemini.script = fixed_reply
    for _ in range(6):
        assert chat(server.url)["prompt_tokens"] == 11
    generated = [r.key for r in gemini.requests if r.method == "POST"]
    expected = {key[-4:]: generated.count(key) for key in GEMINI_KEYS}
    assert expected[GEMINI_KEYS[0][-4:]] == 1  # rejected once, then resting

    def settled():
        entries = {e["key"][-4:]: e for e in key_entries(server.url)}
        return entries if all(entries[k]["today"]["requests"] == n
                              for k, n in expected.items()) else None
    entries = wait_for(settled)  # the other workers flush within 2 s
    assert entries, key_entries(server.url)
    pacific = datetime.now(ZoneInfo("America/Los_Angeles")).date().isoformat()
    for suffix, count in expected.items():
        today = entries[suffix]["today"]
        assert today["date"] == pacific and entries[suffix]["days"][0] == today
        rejected = suffix == GEMINI_KEYS[0][-4:]
        assert today["failures"] == ({"invalid": 1} if rejected else {})
        assert today["input_tokens"] == (0 if rejected else 11 * count)
        assert today["output_tokens"] == (0 if rejected else 7 * count)
        recent = entries[suffix]["recent"]
        assert len(recent) == 60 and sum(m["requests"] for m in recent) == count
        assert sum(m["failures"] for m in recent) == int(rejected)
    resting = entries[GEMINI_KEYS[0][-4:]]
    assert resting["state"] == "invalid" and resting["reason"] == "invalid"


def test_a_rejected_key_comes_back_after_a_check_passes(file_server, gemini):
    file_server.reset_state()
    gemini.valid_keys = set(GEMINI_KEYS[1:])
    for _ in range(3):
        chat(file_server.url)
    suffix = GEMINI_KEYS[0][-4:]

    def entry():
        return next(e for e in key_entries(file_server.url) if e["key"].endswith(suffix))
    assert entry()["state"] == "invalid"
    failed = wait_for(lambda: (e := entry())["checked"] and e)  # the periodic check, 1.2 s
    assert failed["checked"]["result"] == "invalid" and failed["state"] == "invalid"
    assert failed["reason"] == "invalid"
    assert any(r.method == "GET" and r.path == "/v1beta/models" and r.key == GEMINI_KEYS[0]
               for r in gemini.requests)

    gemini.valid_keys = None  # the upstream takes the key again
    back = wait_for(lambda: (e := entry())["state"] == "ok" and e)
    assert back and back["checked"]["result"] == "ok" and back["reason"] is None
    assert wait_for(lambda: f"gemini key …{suffix} passed its check and is back" in
                    file_server.log(), 5)
    generated = len(gemini.requests)
    chat(file_server.url)
    chat(file_server.url)
    chat(file_server.url)
    assert GEMINI_KEYS[0] in [r.key for r in gemini.requests[generated:]]


def test_the_periodic_check_leaves_a_key_out_of_credit_resting(file_server, openai):
    """A model list costs no credit, so it cannot tell a key out of credit: the rounds leave
    its rest alone (else it came back every round and rested again at its next request)."""
    file_server.reset_state()
    out_of_credit, invalid = ZJU_KEYS
    openai.valid_keys = {out_of_credit}  # the other one is rejected as invalid
    openai.script = lambda r: openai_insufficient_quota() \
        if r.key == out_of_credit and r.method == "POST" else None
    body = {"model": "deepseek-r1-671b", "messages": [{"role": "user", "content": "hi"}]}
    reply = requests.post(f"{file_server.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 503, reply.text

    def entries():
        return {e["key"][-4:]: e for e in key_entries(file_server.url, "zju")}

    def models_listed(key):
        return sum(r.method == "GET" and r.path.endswith("/models") and r.key == key
                   for r in openai.requests)
    # two rounds (1.2 s apart) checked the invalid key, which comes after it in each round
    assert wait_for(lambda: models_listed(invalid) >= 2), openai.requests
    entry = entries()[out_of_credit[-4:]]
    assert (entry["state"], entry["reason"], entry["checked"]) == ("invalid", "billing", None)
    assert models_listed(out_of_credit) == 0
    assert entries()[invalid[-4:]]["checked"]["result"] == "invalid"

    # by hand, a check still ends the rest, and says what a model list cannot see
    reply = requests.post(f"{file_server.url}/api/keys/zju/{out_of_credit[-4:]}/check",
                          headers=ADMIN, timeout=10)
    assert reply.status_code == 200
    check, key = reply.json()["check"], reply.json()["key"]
    assert check["result"] == "ok" and "a model list cannot see credit" in check["message"]
    assert "out-of-credit rest is ended" in check["message"]
    assert (key["state"], key["reason"]) == ("ok", None)
    assert models_listed(out_of_credit) == 1


def test_a_stopping_worker_adds_its_last_counts_to_the_state(start_gunicorn, gemini, openai):
    server = start_gunicorn(upstream_env(gemini, openai, ADMIN_TOKEN=ADMIN_TOKEN), workers=1)
    gemini.script = fixed_reply
    started = time.monotonic()
    chat(server.url)
    server.stop()  # before the worker's first flush, 2 s after its first request
    assert time.monotonic() - started < 2.0, "stopped too late to tell worker_exit's flush apart"
    usage = json.loads((server.data_dir / "usage.json").read_text())
    days = usage["days"]["gemini"]
    assert sum(entry["requests"] for day in days.values() for entry in day.values()) == \
        len([r for r in gemini.requests if r.method == "POST"])
    assert sum(entry.get("input_tokens", 0) for day in days.values() for entry in day.values()) == 11
    assert "Worker exiting" in server.log()


@pytest.mark.parametrize("store", ["files", "redis"])
def test_one_holder_of_the_key_check_lease_at_a_time(store, tmp_path, request):
    from chatbridge.state import FileStateStore, RedisStateStore
    if store == "redis":
        server = request.getfixturevalue("redis_server")
        server.client.delete("chatbridge:lease:test-lease")
        stores = [RedisStateStore(server.url) for _ in range(2)]
    else:
        stores = [FileStateStore(tmp_path / "state") for _ in range(2)]
    assert [s.lease("test-lease", 0.5) for s in stores + stores] == [True, False, False, False]
    time.sleep(0.6)
    assert [s.lease("test-lease", 0.5) for s in reversed(stores)] == [True, False]


def test_days_are_newest_first_and_kept_for_a_week(tmp_path):
    from chatbridge.documents import USAGE_DAYS
    from chatbridge.state import FileStateStore
    from chatbridge.usage import UsageBook
    store = FileStateStore(tmp_path / "state")
    now = time.time()
    dates = [time.strftime("%Y-%m-%d", time.gmtime(now - n * 86400)) for n in range(12)]
    store.add_usage({"days": {"zju": {d: {"k1": {"requests": n + 1}} for n, d in enumerate(dates)}}})
    kept = store.usage("zju", dates, [])["days"]
    assert sorted(kept, reverse=True) == dates[:USAGE_DAYS + 1]  # and the day before the oldest
    book = UsageBook(store, {"zju": "UTC"})
    book.attempt("zju", "k1", "overloaded")
    report = book.report("zju", ["k1", "k2"])
    assert [d["date"] for d in report["k1"]["days"]] == dates[:7]
    assert report["k1"]["today"] == {"date": dates[0], "requests": 2, "failures": {"overloaded": 1},
                                     "input_tokens": 0, "output_tokens": 0}
    assert report["k2"]["days"] == [] and report["k2"]["today"]["requests"] == 0
    assert report["k1"]["recent"][-1]["failures"] == 1 and len(report["k2"]["recent"]) == 60


# ---------------------------------------------------------------- by hand: check, reset

def test_check_now_and_reset_by_hand(make_app, gemini):
    client = make_app(ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    suffix = GEMINI_KEYS[1][-4:]
    gemini.valid_keys = {GEMINI_KEYS[0], GEMINI_KEYS[2]}
    reply = client.post(f"/api/keys/gemini/{suffix}/check", headers=ADMIN)
    assert reply.status_code == 200
    assert reply.json["check"]["result"] == "invalid"
    assert reply.json["check"]["message"]
    key = reply.json["key"]
    assert key["state"] == "invalid" and key["reason"] == "invalid"
    assert key["checked"]["result"] == "invalid" and key["key"] == f"…{suffix}"
    assert GEMINI_KEYS[1] not in reply.text

    reply = client.post(f"/api/keys/gemini/{suffix}/reset", headers=ADMIN)
    assert reply.status_code == 200
    assert reply.json["key"]["state"] == "ok" and reply.json["key"]["reason"] is None

    gemini.valid_keys = None
    reply = client.post(f"/api/keys/gemini/…{suffix}/check", headers=ADMIN)
    assert reply.json["check"]["result"] == "ok" and reply.json["key"]["state"] == "ok"


def test_reset_ends_a_rate_limit_rest(make_app, gemini):
    client = make_app(ADMIN_TOKEN=ADMIN_TOKEN, KEY_WAIT_SECONDS="0").test_client()
    gemini.script = lambda recorded: gemini_429("600s")
    body = {"model": GEMINI, "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 429
    entries = client.get("/api/keys", headers=ADMIN).json["providers"]["gemini"]
    assert {e["state"] for e in entries} == {"cooling"}
    assert {e["reason"] for e in entries} == {"rate_limited"}
    assert all(e["today"]["failures"] == {"rate_limited": 1} for e in entries)
    suffix = GEMINI_KEYS[2][-4:]
    reply = client.post(f"/api/keys/gemini/{suffix}/reset", headers=ADMIN)
    assert reply.status_code == 200 and reply.json["key"]["cooling_until"] == {}
    states = {e["key"]: e["state"] for e in
              client.get("/api/keys", headers=ADMIN).json["providers"]["gemini"]}
    assert states[f"…{suffix}"] == "ok" and list(states.values()).count("cooling") == 2


def test_a_reset_ends_an_out_of_credit_rest_whole(make_app, openai):
    """After a reset, a later rest of the key is for its own reason, not the billing before."""
    client = make_app(ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    out_of_credit = ZJU_KEYS[0]
    openai.script = lambda r: openai_insufficient_quota() if r.key == out_of_credit else None
    body = {"model": "deepseek-r1-671b", "messages": [{"role": "user", "content": "hi"}]}

    def entry():
        entries = client.get("/api/keys", headers=ADMIN).json["providers"]["zju"]
        return next(e for e in entries if e["key"] == f"…{out_of_credit[-4:]}")
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert (entry()["state"], entry()["reason"]) == ("invalid", "billing")
    reply = client.post(f"/api/keys/zju/{out_of_credit[-4:]}/reset", headers=ADMIN)
    assert (reply.json["key"]["state"], reply.json["key"]["reason"]) == ("ok", None)
    openai.script, openai.valid_keys = None, {ZJU_KEYS[1]}
    for _ in range(2):  # the second request starts at the reset key, rejected now as invalid
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert (entry()["state"], entry()["reason"]) == ("invalid", "invalid")


@pytest.mark.parametrize("path", ["/api/keys/gemini/zzzz/reset", "/api/keys/nope/aaaa/check",
                                  "/api/keys/echo/aaaa/reset"])
def test_an_unknown_key_or_provider_is_404(client_with_admin, path):
    reply = client_with_admin.post(path, headers=ADMIN)
    assert reply.status_code == 404 and set(reply.json) == {"error"}


@pytest.fixture
def client_with_admin(make_app):
    return make_app(ADMIN_TOKEN=ADMIN_TOKEN).test_client()


@pytest.mark.parametrize("method, path", [
    ("get", "/metrics"), ("get", "/api/keys"),
    ("post", f"/api/keys/gemini/{GEMINI_KEYS[0][-4:]}/reset"),
    ("post", f"/api/keys/gemini/{GEMINI_KEYS[0][-4:]}/check")])
def test_the_admin_routes_need_the_admin_token(make_app, gemini, method, path):
    closed = make_app().test_client()
    assert getattr(closed, method)(path, headers=ADMIN).status_code == 404
    client = make_app(ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    wrong = getattr(client, method)(path, headers={"Authorization": "Bearer wrong-token-0001"})
    assert wrong.status_code == 401 and set(wrong.json) == {"error"}
    assert getattr(client, method)(path).status_code == 401
    assert gemini.requests == []  # no check ran for a refused request


@pytest.mark.parametrize("path", ["/metrics", "/api/keys"])
def test_the_admin_token_counts_only_as_a_bearer_token(client_with_admin, path):
    """Google's ?key= would put the operator's token in URLs and logs (found by trying it)."""
    assert client_with_admin.get(path, headers=ADMIN).status_code == 200
    for headers, query in (({"x-api-key": ADMIN_TOKEN}, ""),
                           ({"x-goog-api-key": ADMIN_TOKEN}, ""), ({}, f"?key={ADMIN_TOKEN}")):
        reply = client_with_admin.get(path + query, headers=headers)
        assert reply.status_code == 401 and set(reply.json) == {"error"}


def test_metrics_in_one_process_count_the_test_clients_requests(make_app, gemini):
    client = make_app(ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    body = {"model": GEMINI, "messages": [{"role": "user", "content": "hi"}]}
    for path, json_body, status in (("/v1/chat/completions", body, 200),
                                     ("/api/chat", {"user_content": ""}, 400)):
        with client.post(path, json=json_body) as reply:  # counted once closed
            assert reply.status_code == status
    found = samples(client.get("/metrics", headers=ADMIN).text)
    total = "chatbridge_requests_total"
    assert value(found, total, api="openai", provider="gemini", outcome="ok") == 1
    assert value(found, total, api="source_b", outcome="client_error") == 1


def test_count_tokens_requests_are_counted_apart_from_messages(make_app):
    """count_tokens shares the Messages shape but asks for no message: api anthropic_count_tokens."""
    client = make_app(ADMIN_TOKEN=ADMIN_TOKEN).test_client()
    body = {"model": "echo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    for path, json_body, status in (("/v1/messages", body, 200), ("/v1/messages/count_tokens", body, 200),
                                     ("/v1/messages/count_tokens", body, 200),
                                     ("/v1/messages/count_tokens", {"messages": []}, 400)):
        with client.post(path, json=json_body) as reply:
            assert reply.status_code == status
    found = samples(client.get("/metrics", headers=ADMIN).text)
    total = "chatbridge_requests_total"
    assert value(found, total, api="anthropic", provider="echo", outcome="ok") == 1
    assert value(found, total, api="anthropic_count_tokens", provider="echo", outcome="ok") == 2
    assert value(found, total, api="anthropic_count_tokens", outcome="client_error") == 1
    assert value(found, "chatbridge_request_duration_seconds_count", api="anthropic") == 1
    assert value(found, "chatbridge_request_duration_seconds_count", api="anthropic_count_tokens") == 3


def test_a_stream_that_ends_for_want_of_keys_counts_as_rate_limited(make_app, gemini):
    client = make_app(ADMIN_TOKEN=ADMIN_TOKEN, KEY_WAIT_SECONDS="0").test_client()
    gemini.script = lambda recorded: gemini_429("600s")
    with client.post("/api/chat", json={"message": "hi", "model": GEMINI}) as reply:
        assert reply.status_code == 200 and b'"error"' in reply.data  # shape A streams at once
    found = samples(client.get("/metrics", headers=ADMIN).text)
    assert value(found, "chatbridge_requests_total", api="source_a", provider="gemini",
                 outcome="rate_limited") == 1
    assert value(found, "chatbridge_upstream_attempts_total", provider="gemini",
                 result="rate_limited") == 3


# ---------------------------------------------------------------- python -m chatbridge keys check

def run_check(env: dict, tmp_path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("ALL_GEMINI_API_KEYS",
                                                                "ZJU_API_KEY", "REDIS_URL")}
    environ.update(env, TEMP_DATA_DIR=str(tmp_path / "cli-state"))
    return subprocess.run([sys.executable, "-m", "chatbridge", "keys", "check"], cwd=REPO,
                          env=environ, capture_output=True, text=True, timeout=60)


def test_the_keys_check_command_prints_a_table_and_fails_for_a_bad_key(tmp_path, gemini,
                                                                       openai):
    env = upstream_env(gemini, openai)
    gemini.valid_keys = set(GEMINI_KEYS[1:])
    result = run_check(env, tmp_path)
    assert result.returncode == 1, result.stderr
    rows = [line.split(None, 3) for line in result.stdout.splitlines()[1:6]]
    assert result.stdout.splitlines()[0].split() == ["provider", "key", "result", "message"]
    assert [row[:3] for row in rows] == [
        ["gemini", GEMINI_KEYS[0][-4:], "invalid"], ["gemini", GEMINI_KEYS[1][-4:], "ok"],
        ["gemini", GEMINI_KEYS[2][-4:], "ok"], ["zju", ZJU_KEYS[0][-4:], "ok"],
        ["zju", ZJU_KEYS[1][-4:], "ok"]]
    assert "4 of 5 keys ok, 1 failed" in result.stdout
    assert "models listed (a model list cannot see credit)" in rows[1][3]
    assert not any(key in result.stdout + result.stderr for key in GEMINI_KEYS + ZJU_KEYS)
    assert [r.path for r in gemini.requests] == ["/v1beta/models"] * 3  # no generation quota

    gemini.valid_keys = None
    result = run_check(env, tmp_path)
    assert result.returncode == 0 and "5 of 5 keys ok" in result.stdout


def test_the_keys_check_command_ends_an_out_of_credit_rest_and_says_what_it_cannot_see(
        tmp_path, gemini, openai):
    """Checked by hand, a key resting out of credit comes back (the operator asked), and the
    table says that its credit was not seen."""
    from chatbridge.config import fingerprint
    from chatbridge.state import FileStateStore
    key_id, until = fingerprint(ZJU_KEYS[0]), time.time() + 3600
    store = FileStateStore(tmp_path / "cli-state")
    store.note_attempt("zju", key_id, {f"invalid|{key_id}": until, f"billing|{key_id}": until},
                       "billing: Insufficient credits")
    result = run_check(upstream_env(gemini, openai), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if ZJU_KEYS[0][-4:] in line)
    assert "out-of-credit rest is ended, but a model list cannot see credit" in row
    assert FileStateStore(tmp_path / "cli-state").peek("zju") == {}


def test_the_keys_check_command_without_keys_or_with_bad_settings(tmp_path):
    result = run_check({}, tmp_path)
    assert result.returncode == 1 and "no keys configured" in result.stderr
    result = run_check({"KEY_CHECK_MINUTES": "-1", "ALL_GEMINI_API_KEYS": "k" * 20}, tmp_path)
    assert result.returncode == 2 and "KEY_CHECK_MINUTES" in result.stderr


TWIN = "AIzaSyQ1w2E3r4T5y6U7i8O9p0AsDfGhJkaaaa"  # ends as GEMINI_KEYS[0] does


def test_keys_that_share_their_last_four_characters_are_named_by_position(make_app, gemini):
    """Two keys ending in the same four characters: each has its own name (…aaaa-1, …aaaa-2),
    and reset and check act on the key named, never on the first that ends so."""
    keys = [GEMINI_KEYS[0], TWIN, GEMINI_KEYS[1]]
    client = make_app(ADMIN_TOKEN=ADMIN_TOKEN, ALL_GEMINI_API_KEYS=",".join(keys)).test_client()
    names = [e["key"] for e in client.get("/api/keys", headers=ADMIN).json["providers"]["gemini"]]
    assert names == ["…aaaa-1", "…aaaa-2", f"…{GEMINI_KEYS[1][-4:]}"]
    gemini.valid_keys = {GEMINI_KEYS[0], GEMINI_KEYS[1]}
    reply = client.post("/api/keys/gemini/aaaa-2/check", headers=ADMIN)
    assert reply.json["key"]["key"] == "…aaaa-2" and reply.json["check"]["result"] == "invalid"
    assert [r.key for r in gemini.requests] == [TWIN]
    states = {e["key"]: e["state"] for e in client.get("/api/keys", headers=ADMIN).json["providers"]["gemini"]}
    assert (states["…aaaa-1"], states["…aaaa-2"]) == ("ok", "invalid")
    reply = client.post("/api/keys/gemini/…aaaa-2/reset", headers=ADMIN)
    assert reply.json["key"]["key"] == "…aaaa-2" and reply.json["key"]["state"] == "ok"
    ambiguous = client.post("/api/keys/gemini/aaaa/reset", headers=ADMIN)
    assert ambiguous.status_code == 400
    assert ambiguous.json == {"error": "2 'gemini' keys end in 'aaaa': name one as aaaa-1 or aaaa-2"}
    assert TWIN not in str(ambiguous.json) and TWIN[:-4] not in client.get("/api/keys", headers=ADMIN).text
