"""HTTP to the upstreams: the one module that sends, on urllib3's connection pools.

One pool manager per app, connections kept alive and reused. Keys travel in headers, never in
a URL; redirects are never followed (a 3xx is an upstream failure) and no cookie is kept (none
is ever sent). Streams ask for no compression, which would make events arrive in bursts, and
their bodies are read as they arrive (iter_stream), with the markers the relay writes by
(chat.FLUSH after each read, chat.SILENCE after silence_seconds without a byte, under gevent).
Network exceptions become UpstreamErrors here (errors.failure_from_exception).

urllib3 is used without requests on purpose: requests' per-request work (merging settings,
hooks, cookie jars, re-preparing the request) was about a seventh of a worker's CPU per
stream in the profile of issue 13, for features ChatBridge turns off.
"""

import http.client
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import gevent
import urllib3
from gevent import monkey
from requests.utils import get_environ_proxies

from .chat import FLUSH, SILENCE, parse_json
from .errors import UpstreamError, failure_from_exception
from .failures import classify_failure

READ_SIZE = 64 * 1024
DRAIN_SECONDS = 1.0
ERROR_BODY_LIMIT = 64 * 1024
POOL_SIZE = 1000  # connections kept per upstream host: one per concurrent stream
CHUNK_LINE_LIMIT = 4096  # bytes: a chunk-size line longer than this is not HTTP
USER_AGENT = "ChatBridge"
RESPONSE_BUFFER = 1024  # bytes of http.client's read buffer per upstream response (it has 8 KiB)
NETWORK_ERRORS = (urllib3.exceptions.HTTPError, OSError, ValueError)


class Transport:
    """Pooled HTTP with the configured connect and read timeouts (seconds); a stream's reader
    says when silence_seconds pass without a byte (iter_stream), under gevent workers."""

    def __init__(self, connect_timeout: float, read_timeout: float,
                 silence_seconds: float | None = None):
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.read_timeout, self.silence_seconds = read_timeout, silence_seconds
        self.direct = urllib3.PoolManager(num_pools=8, maxsize=POOL_SIZE)
        self.direct.pool_classes_by_scheme = LEAN_POOLS
        self.proxied = {}  # proxy URL -> its ProxyManager
        self.routes = {}  # upstream origin -> its connection pool, or its proxy's manager

    def send(self, method: str, url: str, headers: dict, stream: bool,
             json: Any = None, data: bytes | None = None) -> "UpstreamResponse":
        """One upstream HTTP request with a JSON or bytes body; network errors become
        UpstreamErrors, and a redirect is one too."""
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate", **headers}
        if stream:
            headers["Accept-Encoding"] = "identity"  # compressed SSE would arrive in bursts
        try:
            body = data if json is None else dumps(json)
            if json is not None:
                headers["Content-Type"] = "application/json"
            opener, target = self.route(url)
            raw = opener.urlopen(method, target, body=body, headers=headers, timeout=self.timeout,
                                 retries=False, redirect=False, preload_content=False,
                                 assert_same_host=False)
        except NETWORK_ERRORS as exc:
            raise failure_from_exception(exc) from None
        response = UpstreamResponse(raw)
        if not stream:
            response.load()
        elif self.silence_seconds and monkey.is_module_patched("socket"):
            response.silence = (self.silence_seconds, self.read_timeout)
        if response.is_redirect:  # following it would hand the key and prompt to another host
            response.close()
            raise UpstreamError("server", f"the upstream answered with a redirect (HTTP "
                                          f"{response.status_code}), which is not followed")
        return response

    def route(self, url: str) -> tuple:
        """(what to call urlopen on, the URL to give it) for an upstream URL: the origin's own
        connection pool and the path, or the manager of the proxy that HTTP(S)_PROXY and
        NO_PROXY name for its host and the whole URL. Looked up once per origin: going through
        the PoolManager on every request (parsing the URL, building its pool key) was a
        twentieth of a stream's CPU (issue 13)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        opener = self.routes.get(origin)
        if opener is None or getattr(opener, "pool", True) is None:  # a pool closed since
            opener = self.routes[origin] = self.opener(origin, parts.scheme)
        if isinstance(opener, urllib3.PoolManager):
            return opener, url
        return opener, url[len(origin):] or "/"

    def opener(self, origin: str, scheme: str):
        """The connection pool for an origin, or its proxy's manager."""
        proxy = get_environ_proxies(origin).get(scheme)
        if not proxy:
            return self.direct.connection_from_url(origin)
        if proxy not in self.proxied:
            self.proxied[proxy] = urllib3.ProxyManager(proxy, num_pools=8, maxsize=POOL_SIZE)
            self.proxied[proxy].pool_classes_by_scheme = LEAN_POOLS
        return self.proxied[proxy]


class LeanResponse(http.client.HTTPResponse):
    """http.client's response with a RESPONSE_BUFFER-byte read buffer instead of 8 KiB: only
    the status line, the headers and chunk-size lines pass through it (streamed bodies are read
    past it, whole socket reads at a time). With 2,000 streams open, the larger buffers were
    about 3 KiB of each stream's memory (issue 13)."""

    def __init__(self, sock, *args, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # nothing was read through it yet; the socket stays open
        self.fp = sock.makefile("rb", RESPONSE_BUFFER)


class LeanHTTPConnection(urllib3.connection.HTTPConnection):
    response_class = LeanResponse


class LeanHTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = LeanResponse


class LeanPool(urllib3.HTTPConnectionPool):
    ConnectionCls = LeanHTTPConnection


class LeanTLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = LeanHTTPSConnection


LEAN_POOLS = {"http": LeanPool, "https": LeanTLSPool}  # urllib3's pool_classes_by_scheme


def dumps(body: Any) -> bytes:
    """A request body as compact UTF-8 JSON; ValueError for NaN or infinity, which JSON lacks."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class UpstreamResponse:
    """An upstream's answer: status_code, headers (case-insensitive), and its body, read
    whole (content, text) or piece by piece as it arrives (read, iter_body)."""

    def __init__(self, raw: urllib3.BaseHTTPResponse):
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers
        self.reader = None
        self._content = None
        self.silence = None  # (seconds that count as silence, the read timeout) for iter_stream

    @property
    def is_redirect(self) -> bool:
        return self.status_code in (301, 302, 303, 307, 308) and "Location" in self.headers

    def load(self) -> None:
        """Read the whole body now (a non-streamed request), network errors made failures."""
        try:
            self._content = self.raw.read(decode_content=True)
        except NETWORK_ERRORS as exc:
            raise failure_from_exception(exc) from None
        finally:
            self.raw.release_conn()

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = b"".join(iter_body(self))
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def read(self, wait: float | None = None) -> bytes | None:
        """The next bytes of the body as they arrive; b"" at its end; None once `wait` seconds
        have passed without any (under gevent only)."""
        if self.reader is None:
            self.reader = body_reader(self.raw)
        return self.reader(wait)

    def close(self) -> None:
        with suppress(*NETWORK_ERRORS, RuntimeError):
            self.raw.close()


def body_reader(raw: urllib3.BaseHTTPResponse):
    """A function that returns the body's next bytes (b"" at the end): a chunked, unencoded
    body is unframed here from whatever the socket has (ChunkedBody); any other through
    urllib3's read1, which decodes a gzipped one."""
    message = getattr(raw, "_fp", None)  # the http.client response under urllib3's
    socket_file = getattr(message, "fp", None)
    identity = raw.headers.get("Content-Encoding", "identity").lower() in ("", "identity")
    if identity and getattr(message, "chunked", False) and message.chunk_left is None \
            and socket_file is not None:
        return ChunkedBody(raw, socket_file).read

    def read(wait):
        waits = wait is not None and socket_file is not None and message.fp is not None \
            and message.length != 0  # a body read to its Content-Length has ended
        if waits and not arrives(socket_file.peek, wait):
            return None  # peeked, not read: urllib3 closes the connection on an interrupted read
        return raw.read1(READ_SIZE, decode_content=True)
    return read


def arrives(read, wait: float):
    """read()'s result, or None if nothing came within `wait` seconds (a gevent.Timeout, which
    leaves a socket file as it was: a socket timeout would mark it unreadable for good)."""
    with gevent.Timeout(wait, False):
        return read()
    return None


class ChunkedBody:
    """Unframes HTTP/1.1 chunked encoding from raw socket reads.

    http.client returns one chunk per read1, and urllib3 wraps each read in several layers:
    for an SSE stream that sends each event as a chunk, that was a fifth of a worker's CPU per
    stream (issue 13). Here one socket read yields all the chunks it holds. Trailers after the
    last chunk are skipped. At the end the http.client response is closed as http.client closes
    a body it read to the end, so its connection can go back to the pool.
    """

    def __init__(self, raw: urllib3.BaseHTTPResponse, socket_file):
        self.raw = raw
        self.socket_file = socket_file
        self.buffer = b""
        self.left = 0  # bytes of the current chunk's data still to come
        self.crlf = 0  # bytes of the CRLF after it still to come
        self.done = False

    def read(self, wait: float | None = None) -> bytes | None:
        """The chunk data that has come (b"" at the end), or None after `wait` seconds of
        silence; a chunk cut in two stays in the buffer for the next call."""
        try:
            while not self.done:
                if wait is None:
                    data = self.socket_file.read1(READ_SIZE)
                else:
                    data = arrives(partial(self.socket_file.read1, READ_SIZE), wait)
                    if data is None:
                        return None
                if not data:
                    raise urllib3.exceptions.ProtocolError("the upstream closed the connection "
                                                           "before the end of its chunked body")
                self.buffer += data
                pieces = self.unframe()
                if pieces:
                    return b"".join(pieces)
        except BaseException:
            # as urllib3 does on a broken body: close the body's socket file and the connection
            # (a close from another greenlet while this one read could not: "reentrant call")
            with suppress(Exception):
                self.socket_file.close()
            with suppress(Exception):
                self.raw.close()
            raise
        return b""

    def unframe(self) -> list:
        """The chunk data whole in the buffer so far; the rest stays for the next read."""
        pieces, buffer, position = [], self.buffer, 0
        while True:
            if self.left:
                piece = buffer[position:position + self.left]
                pieces.append(piece)
                position, self.left = position + len(piece), self.left - len(piece)
                if self.left:
                    break
                self.crlf = 2
            if self.crlf:  # the CRLF that ends each chunk's data
                skipped = min(self.crlf, len(buffer) - position)
                position, self.crlf = position + skipped, self.crlf - skipped
                if self.crlf:
                    break
            end = buffer.find(b"\r\n", position)
            if end < 0:
                if len(buffer) - position > CHUNK_LINE_LIMIT:
                    raise urllib3.exceptions.ProtocolError("the upstream sent a malformed chunk")
                break
            size = chunk_size(buffer[position:end])
            if size == 0:
                return self.trailers(pieces, buffer[end + 2:])
            position, self.left = end + 2, size
        self.buffer = buffer[position:]
        return [piece for piece in pieces if piece]

    def trailers(self, pieces: list, rest: bytes) -> list:
        """After the last chunk: skip trailer fields up to the blank line, then end."""
        while not (rest.startswith(b"\r\n") or b"\r\n\r\n" in rest):
            more = self.socket_file.read1(READ_SIZE)
            if not more or len(rest) > CHUNK_LINE_LIMIT:
                break
            rest += more
        self.done, self.buffer = True, b""
        self.raw._fp.close()  # as http.client does at a body's end: the connection stays open
        return [piece for piece in pieces if piece]


def chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (extensions after ';' ignored)."""
    try:
        size = int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        size = -1
    if size < 0:
        raise urllib3.exceptions.ProtocolError("the upstream sent a malformed chunk size")
    return size


def iter_body(response: UpstreamResponse) -> Iterator:
    """Raw bytes from an upstream response as they arrive, network errors made failures."""
    if response._content is not None:
        yield response._content
        return
    try:
        while chunk := response.read():
            yield chunk
    except NETWORK_ERRORS as exc:
        raise failure_from_exception(exc) from None


def iter_stream(response: UpstreamResponse) -> Iterator:
    """A streamed body's bytes as they arrive, each read followed by chat.FLUSH, and chat.SILENCE
    for each response.silence seconds without a byte (under gevent); the read timeout counts the
    whole silence, as one blocking read's would."""
    wait, read_timeout = response.silence or (None, None)
    quiet = 0.0
    try:
        while (chunk := response.read(wait)) != b"":
            if chunk is None:
                quiet += wait
                if quiet >= read_timeout:
                    raise TimeoutError()
                yield SILENCE
                continue
            quiet = 0.0
            yield chunk
            yield FLUSH
    except NETWORK_ERRORS as exc:
        raise failure_from_exception(exc) from None


def read_error_body(response: UpstreamResponse) -> Any:
    """The parsed JSON of an upstream error response, read up to a limit; else its text."""
    try:
        body = b"".join(iter_limited(response, ERROR_BODY_LIMIT))
    except UpstreamError:
        body = b""
    text = body.decode("utf-8", errors="replace")
    return parse_json(text) or text[:500]


def iter_limited(response: UpstreamResponse, limit: int) -> Iterator:
    """A response's bytes until at least limit bytes have come."""
    size = 0
    for chunk in iter_body(response):
        size += len(chunk)
        yield chunk
        if size >= limit:
            return


def release_upstream(response: UpstreamResponse) -> None:
    """Put a finished stream's connection back in the pool once the rest of its body (the last
    empty chunk after OpenAI's [DONE], say) has come, within DRAIN_SECONDS; else close it. Runs
    in its own greenlet: a new TCP connection per request would cost more than this."""
    drained = False
    with suppress(Exception), gevent.Timeout(DRAIN_SECONDS, False):
        while response.read():
            pass
        drained = True
    if drained and reusable(response):
        response.raw.release_conn()
    else:
        close_upstream(response)


def reusable(response: UpstreamResponse) -> bool:
    """Whether the connection may serve another request: HTTP/1.1 and no `Connection: close`."""
    return response.raw.version >= 11 and \
        "close" not in response.headers.get("Connection", "").lower()


def close_upstream(response: UpstreamResponse) -> None:
    """Close an upstream response now, even while another greenlet or thread reads it."""
    connection = response.raw.connection
    with suppress(OSError, AttributeError):  # wakes a reader blocked in recv, and tells the
        connection.sock.shutdown(socket.SHUT_RDWR)  # upstream at once, whoever holds the socket
    with suppress(ValueError, RuntimeError, OSError):  # "reentrant call" while another reads it
        response.close()


@contextmanager
def opened_stream(response: UpstreamResponse, cancel):
    """A streaming upstream response that answered 200, closed if anything fails while it is
    being opened (a status other than 200 becomes a classified UpstreamError). cancel (a
    relay.Cancel) closes it if the client goes away meanwhile."""
    cancel.track(response)
    try:
        if response.status_code != 200:
            raise classify_failure(response.status_code, read_error_body(response),
                                   response.headers)
        yield response
    except BaseException:
        close_upstream(response)
        raise
