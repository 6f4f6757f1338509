"""Fixtures: fake upstreams on 127.0.0.1; the app in this process (`app`, `client`) for
requests that only meet validation or an error, and under real gunicorn with gevent workers
for streaming, concurrency, disconnects, state shared by workers, and logs."""

import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from playwright.sync_api import sync_playwright

from chatbridge import create_app
from chatbridge.config import load_config
from tests.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, WATCH_POLICY
from tests.fakes import FakeGemini, FakeOpenAI

REPO = Path(__file__).resolve().parent.parent
GEMINI_KEYS = ["AIzaSyX7q2Lm9vR4tW8zB3nK6pD1fH5jC0aaaa", "AIzaSyP4k8Vd2sN7xQ1mT6gY9wE3rU5bZ2bbbb",
               "AIzaSyH9c3Jf6oA2uL8yM1iS4eW7tG0nK5cccc"]  # random-looking, as real keys are
ADMIN_TOKEN = "admin-token-for-tests-0001"
TOKEN = "access-token-for-tests-0001"  # the one ACCESS_TOKENS of token_server
TOKEN_SETTINGS = {"ACCESS_TOKENS": TOKEN}
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PNG = base64.b64decode(PNG_B64)  # one pixel
ZJU_KEYS = ["sk-q8Zr3Tn6Wv1Ky4Mp7Xb2Hd1111", "zjQ7m2Xp9Lk4Vr8Nt1Bw6Hs3Yc5Fd0Ge2222"]  # one without a known prefix
CLEARED = ("ALL_GEMINI_API_KEYS", "ZJU_API_KEY", "GEMINI_BASE_URL", "ZJU_BASE_URL", "REDIS_URL",
           "REQUEST_BODY_SECONDS", "ALLOWED_FILE_TYPES",
           "ACCESS_TOKENS", "ADMIN_TOKEN", "CHAT_MAX_TURNS", "CHAT_TTL_HOURS", "UPLOAD_TTL_MINUTES",
           "GEMINI_MODEL", "DEFAULT_MODEL", "PORT", "CORS_ORIGINS", "TEMP_DATA_DIR",
           "MAX_UPLOAD_MB", "UPSTREAM_CONNECT_TIMEOUT", "UPSTREAM_READ_TIMEOUT",
           "KEY_WAIT_SECONDS", "SSE_PING_SECONDS", "LOG_LANGUAGE", "HOST", "MAX_TURNS", "MAX_PARTS",
           "MAX_TOOLS", "MAX_TEXT_CHARS", "MAX_JSON_VALUES", "MAX_JSON_DEPTH", "RATE_LIMIT",
           "TRUSTED_PROXIES", "UPLOAD_CACHE_MB", "MODEL_ALIASES", "KEY_CHECK_MINUTES",
           "PROMETHEUS_MULTIPROC_DIR", "ZJU_MAX_TOKENS", "HTTP_PROXY", "HTTPS_PROXY",
           "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """A developer's own keys and proxies never reach a test."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def fake_gemini():
    server = FakeGemini().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_openai():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def gemini(fake_gemini):
    """The fake Gemini, reset for this test."""
    fake_gemini.reset()
    yield fake_gemini
    fake_gemini.reset()


@pytest.fixture
def openai(fake_openai):
    fake_openai.reset()
    yield fake_openai
    fake_openai.reset()


class Gunicorn:
    """app:app under gunicorn with gevent workers on a free 127.0.0.1 port."""

    def __init__(self, env: dict, data_dir: Path, workers: int = 3):
        self.env = env
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"gunicorn-{data_dir.name}.log"
        environ = {k: v for k, v in os.environ.items() if k not in CLEARED}
        environ.update(TEMP_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **env)
        command = [sys.executable, "-m", "gunicorn", "--workers", str(workers),
                   "--worker-class", "gevent", "--bind", "127.0.0.1:0", "--timeout", "600",
                   "--graceful-timeout", "2", "--no-control-socket", "app:app"]
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - open for the server's lifetime
        self.interrupted = False
        self.process = subprocess.Popen(command, cwd=REPO, env=environ, stdout=self.log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.url = self.wait_until_ready(workers)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_ready(self, workers: int, deadline: float = 30.0) -> str:
        """The base URL once /healthz answers; the log is shown if it never does."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                break
            found = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", self.log())
            booted = self.log().count("Booting worker")
            if found and booted >= workers:
                try:
                    if requests.get(found.group(1) + "/healthz", timeout=2).ok:
                        return found.group(1)
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not become ready:\n" + self.log())

    def reset_state(self) -> None:
        """Forget rotation counters, cooldowns and conversations between tests."""
        for path in self.data_dir.glob("*.json"):
            path.unlink()

    def interrupt(self) -> None:
        """SIGINT to the process group, once: gunicorn stops at once."""
        if self.process.poll() is None and not self.interrupted:
            os.killpg(self.process.pid, signal.SIGINT)
            self.interrupted = True

    def stop(self) -> None:
        """Interrupt and wait; then make sure the whole process group is gone."""
        self.interrupt()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log_file.close()


@pytest.fixture(scope="session")
def start_gunicorn(tmp_path_factory):
    """A factory for gunicorn servers; every one is stopped at the end of the session."""
    servers = []

    def start(env: dict, workers: int = 3) -> Gunicorn:
        server = Gunicorn(env, tmp_path_factory.mktemp("state"), workers)
        servers.append(server)
        return server

    yield start
    for server in servers:  # all at once: each takes most of a second to stop
        server.interrupt()
    for server in servers:
        server.stop()


def require(found: bool, program: str, install: str) -> None:
    """Skip the test when a system program is missing, saying how to install it; in CI
    (CI=true) fail instead, so a CI image without it cannot pass by skipping."""
    if found:
        return
    message = f"{program} is not installed: run `{install}`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def upstream_env(fake_gemini, fake_openai, **extra) -> dict:
    """Settings with every key of GEMINI_KEYS and ZJU_KEYS, pointed at the fakes."""
    return {"ALL_GEMINI_API_KEYS": ",".join(GEMINI_KEYS), "ZJU_API_KEY": ",".join(ZJU_KEYS),
            "GEMINI_BASE_URL": fake_gemini.base_url, "ZJU_BASE_URL": fake_openai.base_url,
            "KEY_WAIT_SECONDS": "1", "UPSTREAM_READ_TIMEOUT": "5", "SSE_PING_SECONDS": "0.5",
            # no periodic key re-checks unless a test asks: a round would end the rests other
            # tests set up, at a moment that depends on which tests ran before
            "KEY_CHECK_MINUTES": "0",
            **extra}


@pytest.fixture(scope="session")
def main_server(start_gunicorn, fake_gemini, fake_openai):
    """The app with three Gemini keys and two ZJU keys pointed at the fakes."""
    return start_gunicorn(upstream_env(fake_gemini, fake_openai, ADMIN_TOKEN=ADMIN_TOKEN))


@pytest.fixture
def server(main_server, gemini, openai):
    """The main server with fresh key state and fresh fakes."""
    main_server.reset_state()
    yield main_server
    main_server.reset_state()


@pytest.fixture(scope="session")
def token_server(start_gunicorn, fake_gemini, fake_openai):
    """The app with ACCESS_TOKENS=TOKEN."""
    return start_gunicorn(upstream_env(fake_gemini, fake_openai, **TOKEN_SETTINGS))


RESERVED_PORTS = []  # sockets held for the session, so no server started later takes their port


def closed_port() -> int:
    """A port that refuses connections for the whole session: bound here and never listened
    on. (A port found free and let go was taken by a later test's server, which then answered
    the "unreachable" upstream's requests.)"""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    RESERVED_PORTS.append(sock)
    return sock.getsockname()[1]


def unreachable_settings() -> dict:
    """Gemini behind a closed port; GEMINI_MODEL is what /v1/models falls back to."""
    return {"GEMINI_BASE_URL": f"http://127.0.0.1:{closed_port()}/v1beta",
            "GEMINI_MODEL": "gemini-2.5-flash-lite"}


@pytest.fixture(scope="session")
def unreachable_server(start_gunicorn, fake_gemini, fake_openai):
    return start_gunicorn(upstream_env(fake_gemini, fake_openai, **unreachable_settings()))


@pytest.fixture
def make_app(tmp_path, gemini, openai):
    """Builds the app in this process from upstream_env's settings and any others given."""
    numbers = itertools.count()

    def make(**settings):
        state = tmp_path / f"state-{next(numbers)}"
        return create_app(load_config({**upstream_env(gemini, openai, **settings),
                                       "TEMP_DATA_DIR": str(state)}))
    return make


@pytest.fixture
def app(make_app):
    """The app in this process, as Flask's tutorial tests it: upstream_env's keys and fakes."""
    return make_app()


@pytest.fixture
def client(app):
    """Flask's test client for `app`: requests without a socket."""
    return app.test_client()


class RedisServer:
    """A real redis-server on a free 127.0.0.1 port (never 6379), stopped by its PID."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    require(shutil.which("redis-server") is not None, "redis-server", "apt-get install redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# ---------------------------------------------------------------- the pages' browser tests


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright, one per test module."""
    require(Path(CHROMIUM).is_file(), "Chromium", "apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(browser):
    """A fresh browser profile (empty localStorage) per test."""
    context = browser.new_context(viewport=DESKTOP)
    context.add_init_script(WATCH_POLICY)
    yield context
    context.close()
