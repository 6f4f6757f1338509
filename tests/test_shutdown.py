"""A redeploy (SIGTERM) lets streams in flight finish within gunicorn's graceful timeout and
leaves no state file half-written (issue 11, protection: graceful shutdown)."""

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from tests.client import events, post_chat, shape_a_text
from tests.conftest import upstream_env
from tests.fakes import Reply, gemini_events, gemini_sse


def test_sigterm_lets_a_stream_in_flight_finish(start_gunicorn, fake_gemini, fake_openai, gemini):
    server = start_gunicorn(upstream_env(fake_gemini, fake_openai), workers=1)
    gemini.script = lambda r: Reply(chunks=gemini_sse(gemini_events(["one "], finish=None)) + [1.5]
                                    + gemini_sse(gemini_events(["two"])))
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(lambda: events(post_chat(server, {"message": "hi", "chat_id":
                                                               "graceful-chat-0001"})))
        time.sleep(0.6)  # the stream has begun
        os.kill(server.process.pid, signal.SIGTERM)
        payloads = answer.result(timeout=30)
    assert shape_a_text(payloads) == "one two" and payloads[-1] == {"done": True}
    assert server.process.wait(timeout=30) == 0
    for path in server.data_dir.glob("*.json"):
        json.loads(path.read_text())  # every state file whole
    assert (server.data_dir / "chat-graceful-chat-0001.json").exists(), "the finished turn was kept"
