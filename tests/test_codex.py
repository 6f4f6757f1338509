"""The real Codex CLI (@openai/codex, pinned in tests/node) through /v1/responses (issue 10):
`codex exec` with a provider whose base_url is the service and wire_api = "responses", offline
(no update check, no analytics, no plugins), against echo and against fake upstreams that
answer with a tool call and then with text after the tool's output."""

import json
import os
import subprocess

import pytest

from tests.conftest import REPO
from tests.fakes import (
    field,
    gemini_answer,
    gemini_events,
    gemini_function_call_events,
    openai_stream,
    openai_tool_call_stream,
)

CODEX = REPO / "tests" / "node" / "node_modules" / ".bin" / "codex"
TOKEN_VARIABLE = "CHATBRIDGE_TOKEN"
MARKER = "codex-was-here"
SIGNATURE = "c2lnbmF0dXJlIG9mIGEgdGhvdWdodA=="
CONFIG = """\
model_provider = "chatbridge"
check_for_update_on_startup = false

[model_providers.chatbridge]
name = "ChatBridge"
base_url = "{url}/v1"
env_key = "{variable}"
wire_api = "responses"

[analytics]
enabled = false

[features]
plugins = false
"""


def codex(server, tmp_path, model, prompt):
    """Run `codex exec` against the server; its final message (stdout) once it exits 0. Its
    sandbox is off (danger-full-access): the one command the fakes ask for is an echo in a
    temporary directory, and a container may lack the namespaces bubblewrap needs."""
    if not CODEX.exists():
        pytest.fail("Codex is not installed: run `npm ci --prefix tests/node` first")
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(CONFIG.format(url=server.url, variable=TOKEN_VARIABLE))
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(home),
               TOKEN_VARIABLE: "any-token-while-access-tokens-is-unset", "NO_COLOR": "1"}
    result = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "danger-full-access",
         "-m", model, prompt], cwd=work, env=environ, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def posted(fake):
    return [r for r in fake.requests if r.method == "POST"]


def test_codex_runs_a_task_on_echo(server, tmp_path):
    assert codex(server, tmp_path, "echo", "hello from codex").strip() == "hello from codex"


def shell_then_answer(recorded):
    """Fake OpenAI-compatible upstream: run a shell command, then say what it printed."""
    messages = recorded.json["messages"]
    if messages[-1]["role"] == "tool":
        seen = MARKER if MARKER in messages[-1]["content"] else "nothing"
        return openai_stream([f"The command printed {seen}."])
    arguments = json.dumps({"cmd": f"echo {MARKER}"})
    return openai_tool_call_stream("exec_command", [arguments[:10], arguments[10:]], "call_shell")


def test_codex_runs_a_tool_call_from_an_openai_compatible_upstream(server, openai, tmp_path):
    openai.script = shell_then_answer
    answer = codex(server, tmp_path, "deepseek-v3-671b", "Print the marker.")
    assert f"The command printed {MARKER}." in answer
    first, last = posted(openai)[0].json, posted(openai)[-1].json
    names = [tool["function"]["name"] for tool in first["tools"]]
    assert "exec_command" in names and "web_search" not in names
    assert first["messages"][0]["role"] == "system", "Codex's developer messages are the system text"
    assert [m["role"] for m in last["messages"][-2:]] == ["assistant", "tool"]


def shell_then_answer_gemini(recorded):
    """Fake Gemini: a functionCall with a thought signature, then text after its response."""
    contents = recorded.json["contents"]
    results = [field(p, "functionResponse") for c in contents for p in c["parts"]
               if field(p, "functionResponse")]
    if results:
        seen = MARKER if MARKER in json.dumps(results) else "nothing"
        return gemini_answer(recorded, gemini_events([f"The command printed {seen}."]))
    return gemini_answer(recorded, gemini_function_call_events(
        "exec_command", {"cmd": f"echo {MARKER}"}, SIGNATURE))


def test_codex_tool_loop_on_gemini_keeps_the_thought_signature(server, gemini, tmp_path):
    gemini.script = shell_then_answer_gemini
    answer = codex(server, tmp_path, "gemini-2.5-flash", "Print the marker.")
    assert f"The command printed {MARKER}." in answer
    calls = [p for c in posted(gemini)[-1].json["contents"] for p in c["parts"] if field(p, "functionCall")]
    assert [field(p, "functionCall")["name"] for p in calls] == ["exec_command"]
    assert field(calls[0], "thoughtSignature") == SIGNATURE
