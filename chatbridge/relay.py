"""Relaying an answer to the client: the stream pump, heartbeats and cancellation.

Rules:
- The status is settled before the first byte (the views open the upstream first, except
  shape A, which fails over inside its stream); once streaming, any failure is one terminal
  error event in the client's protocol.
- A silent upstream cannot hide a departed client: a `: ping` goes out every SSE_PING_SECONDS
  of silence, and when the client has gone the next write fails and the upstream is closed.
  Under gevent workers the client's own greenlet reads the upstream, and the answer carries
  markers (chat.FLUSH, chat.SILENCE) that say when to write and when to ping: a second
  greenlet per stream, handing each chunk over, cost a third more CPU at 20 ms between chunks
  and a second deep stack per open stream (issue 13). In threads (`python app.py`) a pump
  thread reads the upstream and pings come from its queue's timeout.
- A client that goes away, at any point, closes the upstream request, so no tokens are spent
  for nobody (Cancel).
"""

import queue
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import gevent
import gevent.socket
from gevent import monkey

from .chat import COMPLETE_FINISHES, FIRST_TOKEN_KINDS, SILENCE
from .errors import ChatBridgeError, ClientGone, UpstreamError
from .logs import RequestLog, log
from .sse import StreamWriter
from .transport import UpstreamResponse, close_upstream, release_upstream


class Cancel:
    """Lets the response writer stop upstream work nobody will read."""

    def __init__(self):
        self.cancelled = False
        self.response = None
        self.worker = None  # the greenlet reading the upstream, under gevent

    def watch(self) -> None:
        """Note the current greenlet as the upstream reader, so cancel() can stop it anywhere."""
        if monkey.is_module_patched("threading"):
            self.worker = gevent.getcurrent()

    def track(self, response: UpstreamResponse) -> None:
        self.response = response
        if self.cancelled:
            close_upstream(response)

    def check(self) -> None:
        """Raise ClientGone once the client has gone."""
        if self.cancelled:
            raise ClientGone()

    @contextmanager
    def client_watch(self, environ: dict):
        """While a view opens the upstream (before any byte goes to the client, so no write can
        tell): cancel as soon as the client closes its connection. Under gevent workers only."""
        sock = environ.get("gunicorn.socket")
        if sock is None or not monkey.is_module_patched("socket"):
            yield
            return
        previous, self.worker = self.worker, gevent.getcurrent()
        watcher = gevent.spawn(self.cancel_when_closed, sock)
        try:
            yield
        finally:
            watcher.kill(block=False)
            self.worker = previous

    def cancel_when_closed(self, sock) -> None:
        with suppress(Exception):
            gevent.socket.wait_read(sock.fileno())
            if sock.recv(1, socket.MSG_PEEK) == b"":  # an end of file: the client left
                self.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        if self.response is not None:
            close_upstream(self.response)
        if self.worker is not None and self.worker is not gevent.getcurrent():
            # also stops a request still waiting for the upstream's headers
            gevent.kill(self.worker, ClientGone)


@dataclass
class Answer:
    """An upstream answer that has passed the failover checks: its first deltas and the rest.

    on_failure(error) runs when the rest fails (a 429 after some text still rests the key).
    """

    head: list
    rest: Iterator
    response: UpstreamResponse | None = None
    cancel: Cancel | None = None
    on_failure: Callable | None = None

    def deltas(self) -> Iterator:
        completed = False
        try:
            # no FLUSH after the head: the read that brought its last delta puts one in the
            # rest, after any further deltas it brought
            yield from self.head
            yield from self.rest
            completed = True
        except UpstreamError as failure:
            if self.on_failure is not None:
                self.on_failure(failure)
            raise
        finally:
            self.close(completed)

    def close(self, completed: bool = False) -> None:
        """Close the upstream response; after an answer that ended as the upstream meant, its
        connection goes back to the pool instead, off the client's path (under gevent)."""
        if self.response is None:
            return
        if completed and monkey.is_module_patched("threading"):
            if self.cancel is not None:
                self.cancel.response = None  # nothing left to cancel
            gevent.spawn(release_upstream, self.response)
        else:
            close_upstream(self.response)


def in_green_threads() -> bool:
    return monkey.is_module_patched("threading")


def pumped(source: Iterator, interval: float, cancel: Cancel) -> Iterator:
    """source's items, read in a thread of their own (`python app.py`, whose threads cannot
    wait for a socket with a timeout), and chat.SILENCE whenever it is silent for `interval`
    seconds."""
    items = queue.Queue()

    def pump():
        cancel.watch()
        try:
            for item in source:
                items.put((True, item))
            items.put((False, None))
        except BaseException as exc:  # handed to the writer, which decides
            items.put((False, exc))

    threading.Thread(target=pump, daemon=True, name="upstream-pump").start()
    while True:
        try:
            more, item = items.get(timeout=interval)
        except queue.Empty:
            yield SILENCE
            continue
        if not more:
            if item is not None:
                raise item
            return
        yield item


def opening(call: Callable, cancel: Cancel, interval: float):
    """call()'s result, made in a greenlet of its own while the stream yields chat.SILENCE every
    `interval` seconds (a generator: `answer = yield from opening(...)`), so an answer opened
    inside its stream (shape A, failing over) keeps the client's connection alive. In threads
    call() runs at once, as the pump already pings."""
    if not in_green_threads():
        return call()

    def watched():
        cancel.watch()
        try:
            return call(), None
        except Exception as exc:  # raised in the stream, not printed by gevent's hub
            return None, exc
    task = gevent.spawn(watched)
    try:
        while not task.ready():
            task.join(interval)
            if not task.ready():
                yield SILENCE
        result, failure = task.get()
        if failure is not None:
            raise failure
        return result
    finally:
        task.kill(block=False)
        cancel.worker = None


def relay(source: Iterator, writer: StreamWriter, record: RequestLog, cancel: Cancel,
          ping_seconds: float, on_success: Callable | None = None) -> Iterator:
    """Write an answer's deltas to the client; any failure becomes one terminal error event.
    Deltas are gathered until a chat.FLUSH, then written at once; chat.SILENCE writes a ping.

    on_success(text) runs with the whole answer's text before the client is told it is done,
    if the answer really completed (chatbridge.chat.COMPLETE_FINISHES).
    """
    answer, pending = Written(record, on_success is not None), []
    green = in_green_threads()
    try:
        yield writer.start()
        for delta in source if green else pumped(source, ping_seconds, cancel):
            if delta.kind != "flush":
                answer.note(delta)
                pending.append(writer.event(delta))
            elif pending:
                yield b"".join(pending)
                pending = []
            elif delta.value:
                yield writer.ping
        if on_success and answer.finish in COMPLETE_FINISHES:
            on_success("".join(answer.texts))
        yield b"".join(pending) + writer.done()
    except GeneratorExit:
        record.outcome = "client disconnected"
        raise
    except Exception as exc:
        message = failure_text(exc)
        record.outcome = f"error: {message}"
        record.error_status = exc.status if isinstance(exc, ChatBridgeError) else 500
        yield b"".join(pending) + writer.error(message)
    finally:
        cancel.cancel()
        if green:  # in threads the pump may still be inside it
            with suppress(Exception):
                source.close()


class Written:
    """What the relay notes of the deltas it writes: the first token's time, the usage, the
    finish reason, and the text when asked to keep it."""

    def __init__(self, record: RequestLog, keep_text: bool):
        self.record, self.keep_text = record, keep_text
        self.texts, self.finish = [], None

    def note(self, delta) -> None:
        kind = delta.kind
        if self.record.first_token is None and kind in FIRST_TOKEN_KINDS:
            self.record.mark_first_token()
        if kind == "text":
            if self.keep_text:
                self.texts.append(delta.value)
        elif kind == "finish":
            self.finish = delta.value
        elif kind == "usage":
            self.record.usage = delta.value


def failure_text(exc: Exception) -> str:
    """What a client may read about a failure: never a key, never a traceback. Upstream
    messages were made public where they were caught (keys.KeyPool.failover, Answer.on_failure)."""
    if isinstance(exc, ChatBridgeError):
        return exc.message
    log.exception("unexpected error while streaming")
    return "internal error while streaming the answer"
