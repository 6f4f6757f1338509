"""The processes of a benchmark run, each started on 127.0.0.1 and stopped by its PID.

Rules: every process starts in a session of its own and is stopped by its own PID (its process
group for gunicorn, whose workers share it), also when the run fails or is interrupted (the
caller holds them in a contextlib.ExitStack); every wait has a deadline. CPU time and resident
memory are read from /proc.
"""

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUNICORN_FLAGS = ["--workers", "3", "--worker-class", "gevent", "--timeout", "600"]  # as in render.yaml
CLEARED = re.compile(r"(?i)^(.*_proxy|all_gemini_api_keys|zju_.*|gemini_.*|redis_url|access_tokens|admin_token"
                     r"|default_model|port|host|cors_origins|temp_data_dir|upstream_.*|key_wait_seconds"
                     r"|sse_ping_seconds|chat_.*|upload_ttl_minutes|max_upload_mb|log_language|naive_.*)$")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_environ(**settings):
    """This process's environment without any ChatBridge setting or proxy, plus settings."""
    environ = {name: value for name, value in os.environ.items() if not CLEARED.match(name)}
    return {**environ, "PYTHONUNBUFFERED": "1", **settings}


def stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name, or None when pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def children(pid):
    """The PIDs whose parent is pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(entry.name)
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids):
    """User plus system CPU seconds of the live processes in pids."""
    total = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_bytes(pids):
    """Resident memory of the live processes in pids."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    return total


class Server:
    """A started process with its log; subclasses say how it becomes ready."""

    def __init__(self, name, command, cwd, environ, log_dir, stdin=None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 - open for the process's lifetime
        self.process = subprocess.Popen(command, cwd=cwd, env=environ, stdin=stdin, stdout=subprocess.PIPE
                                        if stdin else self.log_file, stderr=self.log_file, start_new_session=True)
        self.pid = self.process.pid

    def log_tail(self, lines=30):
        """The last lines of the process's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def pids(self):
        """The process and its children (gunicorn's workers)."""
        return [self.pid, *children(self.pid)]

    def workers(self):
        """The children, or the process itself when it has none."""
        return children(self.pid) or [self.pid]

    def stop(self):
        """SIGINT to the process group, SIGKILL after 10 s, and wait for it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.log_file.close()


class Upstreams(Server):
    """bench/upstreams.py: the project's fake Gemini and OpenAI-compatible servers, scripted."""

    def __init__(self, log_dir):
        super().__init__("upstreams", [sys.executable, "-m", "bench.upstreams"], REPO, clean_environ(),
                         log_dir, stdin=subprocess.PIPE)
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError("the fake upstreams did not start:\n" + self.log_tail())
        bases = json.loads(line)
        self.openai, self.gemini = bases["openai"], bases["gemini"]
        self.port = int(self.openai.split(":")[2].split("/")[0])
        self.gemini_port = int(self.gemini.split(":")[2].split("/")[0])

    def stop(self):
        """Close stdin, which ends the fakes, then stop the process as any other."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        super().stop()


class Gunicorn(Server):
    """An app under the render.yaml gunicorn command, on a free 127.0.0.1 port."""

    def __init__(self, name, app, cwd, settings, log_dir):
        self.port = free_port()
        runtime = Path(log_dir) / f"{name}-runtime"  # gunicorn's control socket, one per server
        runtime.mkdir()
        command = [sys.executable, "-m", "gunicorn", *GUNICORN_FLAGS[:4], "--bind", f"127.0.0.1:{self.port}",
                   *GUNICORN_FLAGS[4:], app]
        super().__init__(name, command, cwd, clean_environ(XDG_RUNTIME_DIR=str(runtime), **settings), log_dir)
        self.command = "gunicorn " + " ".join(command[3:])
        self.wait_until_ready()

    def wait_until_ready(self, workers=3, deadline=60.0):
        """Return once all workers have booted and /healthz answers; raise with the log if never."""
        end = time.monotonic() + deadline
        while time.monotonic() < end and self.process.poll() is None:
            booted = self.log_path.read_text(errors="replace").count("Booting worker")
            if booted >= workers and len(children(self.pid)) >= workers and self.healthy():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n" + self.log_tail())

    def healthy(self):
        """Whether /healthz answers 200."""
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/healthz", timeout=2) as answer:
            return answer.status == 200
        return False


class Redis(Server):
    """A redis-server on a free 127.0.0.1 port (never 6379), saving nothing to disk."""

    def __init__(self, log_dir):
        self.port = free_port()
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(log_dir)]
        super().__init__("redis", command, log_dir, clean_environ(), log_dir)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        end = time.monotonic() + 10
        while time.monotonic() < end and self.process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start:\n" + self.log_tail())
