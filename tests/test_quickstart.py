"""The entry point: `python app.py` with no keys serves the echo model, as the README's quick
start says; importing app or chatbridge does nothing until the app is used."""

import os
import signal
import subprocess
import sys
import time

import requests

from tests.client import events, shape_a_text
from tests.conftest import CLEARED, REPO, free_port


def run_app_py(tmp_path) -> tuple:
    """Start `python app.py` as the README says; return its URL and process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(PORT=str(port), TEMP_DATA_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            requests.get(url + "/healthz", timeout=1)
            return url, process
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("python app.py did not start:\n" + process.communicate()[0])


def stop(process) -> str:
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=10)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0]


def test_python_app_py_serves_echo_and_warns_on_every_start(tmp_path):
    for _ in range(2):
        url, process = run_app_py(tmp_path)
        try:
            response = requests.post(url + "/api/chat", json={"message": "hello there"},
                                     stream=True, timeout=10)
            assert shape_a_text(events(response)) == "hello there"
        finally:
            output = stop(process)
        assert "no API keys configured" in output
        assert "Running on" in output


def run_python(code: str, **settings) -> subprocess.CompletedProcess:
    """Run `python -c code` in the repository with only the given settings."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, **settings},
                          capture_output=True, text=True, timeout=60)


def test_importing_reads_no_settings_and_creates_nothing(tmp_path):
    settings = {"LOG_LANGUAGE": "de", "TEMP_DATA_DIR": str(tmp_path / "never-created")}
    imported = run_python("import app, chatbridge", **settings)
    assert (imported.returncode, imported.stdout, imported.stderr) == (0, "", "")
    assert not (tmp_path / "never-created").exists()
    used = run_python("import app; app.app", **settings)
    assert used.returncode != 0 and "LOG_LANGUAGE" in used.stderr
