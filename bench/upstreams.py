"""The fake upstreams of tests/fakes.py in a process of their own, scripted for the benchmark.

A chat request whose last user text is `bench <chunks> <delay>` is answered with <chunks> text
deltas (`w0 `, `w1 `, ...) and <delay> seconds between the frames, in the wire format asked
for (OpenAI chunks, Gemini SSE, Gemini's JSON array, or one whole answer). Every other request
gets the fakes' own default answer.

Run as `python -m bench.upstreams`: prints {"openai": base, "gemini": base} as one JSON line,
then serves until its stdin closes or LIFETIME seconds pass.
"""

import json
import re
import select
import sys
from dataclasses import replace

from tests.fakes import (
    FakeGemini, FakeOpenAI, Reply, gemini_answer, gemini_events, gemini_last_user_text,
    openai_completion, openai_last_user_text, openai_stream,
)

ORDER = re.compile(r"\bbench (\d+) ([0-9.]+)")
LIFETIME = 3600.0


def words(n):
    """The n text deltas of a scripted answer; the last one, `w<n-1> `, proves it arrived whole."""
    return [f"w{i} " for i in range(n)]


def paced(frames, delay):
    """The frames with a sleep of delay seconds between each two (the fakes sleep on a number)."""
    if not delay:
        return list(frames)
    return [item for frame in frames for item in (delay, frame)][1:]


def order(text):
    """(chunks, delay) from a `bench <chunks> <delay>` text, or None."""
    match = ORDER.search(text or "")
    return (int(match.group(1)), float(match.group(2))) if match else None


def answer_openai(recorded):
    """A scripted chat.completion stream or object, or None for the fake's default."""
    body = recorded.json if isinstance(recorded.json, dict) else {}
    wanted = recorded.method == "POST" and order(openai_last_user_text(body.get("messages") or []))
    if not wanted:
        return None
    n, delay = wanted
    if not recorded.stream:
        return openai_completion("".join(words(n)))
    return Reply(chunks=paced(openai_stream(words(n)).chunks, delay))


def answer_gemini(recorded):
    """A scripted Gemini answer in the form the request asked for, or None for the default."""
    body = recorded.json if isinstance(recorded.json, dict) else {}
    wanted = recorded.method == "POST" and order(gemini_last_user_text(body.get("contents") or []))
    if not wanted:
        return None
    n, delay = wanted
    reply = gemini_answer(recorded, gemini_events(words(n)))
    return replace(reply, chunks=paced(reply.chunks, delay))


def forgetful(fake, answer):
    """A script that answers and keeps no record, so a long run does not grow the fake's memory."""
    def script(recorded):
        fake.requests.clear()
        return answer(recorded)
    return script


def main():
    """Serve both fakes until stdin closes or LIFETIME passes."""
    openai, gemini = FakeOpenAI().start(), FakeGemini().start()
    try:
        openai.script = forgetful(openai, answer_openai)
        gemini.script = forgetful(gemini, answer_gemini)
        print(json.dumps({"openai": openai.base_url, "gemini": gemini.base_url}), flush=True)
        select.select([sys.stdin], [], [], LIFETIME)
    finally:
        openai.stop()
        gemini.stop()


if __name__ == "__main__":
    main()
