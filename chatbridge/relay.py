"""Relaying an answer to the client: the stream pump, heartbeats and cancellation.

Rules:
- The status is settled before the first byte (the views open the upstream first, except
  shape A, which fails over inside its stream); once streaming, any failure is one terminal
  error event in the client's protocol.
- The upstream is read in its own (green) thread, so a silent upstream cannot hide a
  departed client: a `: ping` goes out every SSE_PING_SECONDS of silence, and when the
  client has gone the next write fails and the upstream is closed.
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
import gevent.queue
import gevent.socket
from gevent import monkey

from .chat import COMPLETE_FINISHES, FIRST_TOKEN_KINDS
from .errors import ChatBridgeError, ClientGone, UpstreamError
from .logs import RequestLog, log
from .sse import PING, StreamWriter
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


def with_heartbeats(source: Iterator, interval: float, cancel: Cancel) -> Iterator:
    """Yield lists of source's items as they arrive (all that are waiting, so a burst costs one
    write), and PING whenever the source is silent for `interval` seconds."""
    items = hand_over_queue()

    def pump():
        cancel.watch()
        try:
            for item in source:
                items.put((True, item))
            items.put((False, None))
        except BaseException as exc:  # handed to the writer, which decides
            items.put((False, exc))

    if monkey.is_module_patched("threading"):
        gevent.spawn(pump)  # a bare greenlet: a patched Thread costs an Event, locks and a registry
    else:
        threading.Thread(target=pump, daemon=True, name="upstream-pump").start()
    while True:
        try:
            handed = [items.get(timeout=interval)]
        except queue.Empty:
            yield PING
            continue
        while handed[-1][0] and not items.empty():
            handed.append(items.get_nowait())
        batch = [item for more, item in handed if more]
        if batch:
            yield batch
        more, item = handed[-1]
        if not more:
            if item is not None:
                raise item
            return


def hand_over_queue():
    """A queue between the pump and the writer: gevent's own under gevent workers (its get with
    a timeout costs a fraction of the patched queue.Queue's), the standard one in threads."""
    if monkey.is_module_patched("threading"):
        return gevent.queue.Queue()
    return queue.Queue()


def relay(source: Iterator, writer: StreamWriter, record: RequestLog, cancel: Cancel,
          ping_seconds: float, on_success: Callable | None = None) -> Iterator:
    """Write an answer's deltas to the client; any failure becomes one terminal error event.

    on_success(text) runs with the whole answer's text before the client is told it is done,
    if the answer really completed (chatbridge.chat.COMPLETE_FINISHES).
    """
    texts, finish = [], None
    try:
        yield writer.start()
        for batch in with_heartbeats(source, ping_seconds, cancel):
            if batch is PING:
                yield writer.ping
                continue
            if record.first_token is None and any(d.kind in FIRST_TOKEN_KINDS for d in batch):
                record.mark_first_token()
            for item in batch:
                if item.kind == "text" and on_success:
                    texts.append(item.value)
                elif item.kind == "finish":
                    finish = item.value
                elif item.kind == "usage":
                    record.usage = item.value
            yield b"".join(map(writer.event, batch))
        if on_success and finish in COMPLETE_FINISHES:
            on_success("".join(texts))
        yield writer.done()
    except GeneratorExit:
        record.outcome = "client disconnected"
        raise
    except Exception as exc:
        message = failure_text(exc)
        record.outcome = f"error: {message}"
        record.error_status = exc.status if isinstance(exc, ChatBridgeError) else 500
        yield writer.error(message)
    finally:
        cancel.cancel()


def failure_text(exc: Exception) -> str:
    """What a client may read about a failure: never a key, never a traceback. Upstream
    messages were made public where they were caught (keys.KeyPool.failover, Answer.on_failure)."""
    if isinstance(exc, ChatBridgeError):
        return exc.message
    log.exception("unexpected error while streaming")
    return "internal error while streaming the answer"
