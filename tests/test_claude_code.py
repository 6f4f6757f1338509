"""The real Claude Code CLI (@anthropic-ai/claude-code, pinned in tests/node) in print mode
(`claude -p`) with ANTHROPIC_BASE_URL at the service under gunicorn: one task against the echo
model, one against the fake Gemini answering with a call to Claude Code's Write tool and then
with text. Its telemetry, update checks and error reports are off; nothing leaves 127.0.0.1."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, TOKEN, require
from tests.fakes import field, gemini_answer, gemini_events, gemini_function_call_events

CLAUDE = REPO / "tests" / "node" / "node_modules" / ".bin" / "claude"
SIGNATURE = "Q2xhdWRlIENvZGUgc2lnbmF0dXJl"
OFFLINE = {  # Claude Code's documented switches; the first implies the others
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1",
}


def claude(server, home: Path, prompt: str, model: str, auth: dict, *options) -> subprocess.CompletedProcess:
    """`claude -p prompt` with a fresh HOME, in home/work, against the service."""
    require(CLAUDE.exists(), "Claude Code", "npm ci --prefix tests/node")
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": server.url,
           **OFFLINE, **auth}
    return subprocess.run([str(CLAUDE), "-p", prompt, "--model", model, *options], cwd=work,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_claude_code_answers_with_the_echo_model(token_server, tmp_path):
    """ANTHROPIC_API_KEY (sent as x-api-key) is the access token."""
    token_server.reset_state()
    done = claude(token_server, tmp_path, "say hello to the bridge", "echo",
                  {"ANTHROPIC_API_KEY": TOKEN})
    assert done.returncode == 0, done.stderr
    assert "say hello to the bridge" in done.stdout
    assert "shape=anthropic" in token_server.log() and "POST /v1/messages" in token_server.log()


def write_then_answer(path: Path):
    """Fake Gemini: call Write with a thought signature; after its result, say it is done."""
    def reply(recorded):
        contents = recorded.json["contents"]
        results = [field(part, "functionResponse") for c in contents for part in c["parts"]
                   if field(part, "functionResponse") is not None]
        if results:
            return gemini_answer(recorded, gemini_events(["The file is ", "written."]))
        arguments = {"file_path": str(path), "content": "written through ChatBridge\n"}
        return gemini_answer(recorded, gemini_function_call_events("Write", arguments, SIGNATURE))
    return reply


@pytest.mark.parametrize("auth", [{"ANTHROPIC_AUTH_TOKEN": "any"}])
def test_claude_code_runs_a_gemini_tool_call(server, gemini, tmp_path, auth):
    target = tmp_path / "work" / "note.txt"
    gemini.script = write_then_answer(target)
    done = claude(server, tmp_path, "write a note", "gemini-2.5-flash", auth,
                  "--allowedTools", "Write")
    assert done.returncode == 0, done.stderr
    assert "The file is written." in done.stdout
    assert target.read_text() == "written through ChatBridge\n"
    generations = [r for r in gemini.requests if r.path.endswith("GenerateContent")]
    final = generations[-1].json["contents"]
    calls = [part for c in final for part in c["parts"] if field(part, "functionCall")]
    assert [(field(p, "functionCall")["name"], field(p, "thoughtSignature")) for p in calls] == [
        ("Write", SIGNATURE)], "the thought signature came back on its call"
    [result] = [field(part, "functionResponse") for c in final for part in c["parts"]
                if field(part, "functionResponse")]
    assert result["name"] == "Write" and str(target) in json.dumps(result["response"])
    assert all(r.key for r in gemini.requests)
