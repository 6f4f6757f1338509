"""The load generator: a small asyncio HTTP/1.1 client on the standard library.

One connection per request (`Connection: close`) on every path, so no path gains from
keep-alive the others lack. A request's time to first token (TTFT) is the time from before
connecting to the first `data:` line of the body; it succeeds when the status is 200, the body
holds the scripted answer's last word and no `"error"`. Every request has a timeout.
"""

import asyncio
import json
import time
from dataclasses import dataclass


@dataclass
class Result:
    """How one request went; times in seconds."""

    ok: bool
    ttft: float | None
    total: float
    error: str | None = None


@dataclass(frozen=True)
class Call:
    """One request to send: where, what, and the word that ends a whole answer."""

    port: int
    path: str
    body: bytes
    headers: tuple = ()
    last_word: bytes = b""


class Open:
    """How many streams have had their first event and not yet ended, and the most at once."""

    def __init__(self):
        self.now = 0
        self.most = 0

    def began(self):
        """A stream's first event arrived."""
        self.now += 1
        self.most = max(self.most, self.now)

    def ended(self):
        """A stream that had begun ended."""
        self.now -= 1


def request_bytes(call):
    """The request head and body."""
    head = [f"POST {call.path} HTTP/1.1", f"Host: 127.0.0.1:{call.port}", "Content-Type: application/json",
            f"Content-Length: {len(call.body)}", "Connection: close", "Accept: text/event-stream, application/json",
            *(f"{name}: {value}" for name, value in call.headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + call.body


async def read_head(reader):
    """(status, lower-cased headers) of the response."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    for _ in range(200):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_pieces(reader, headers):
    """Yield the body as it arrives: chunked, by Content-Length, or up to the close."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        for _ in range(10**6):
            size = int((await reader.readline()).split(b";")[0], 16)
            if not size:
                return
            yield (await reader.readexactly(size + 2))[:-2]
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        for _ in range(10**6):
            piece = await reader.read(65536)
            if not piece:
                return
            yield piece


async def exchange(call, start, opened):
    """Send call and read the whole answer into a Result."""
    reader, writer = await asyncio.open_connection("127.0.0.1", call.port, limit=2**20)
    body, ttft = b"", None
    try:
        writer.write(request_bytes(call))
        await writer.drain()
        status, headers = await read_head(reader)
        async for piece in read_pieces(reader, headers):
            body += piece
            if ttft is None and (body.startswith(b"data:") or b"\ndata:" in body[-len(piece) - 6:]):
                ttft = time.perf_counter() - start
                if opened:
                    opened.began()
    finally:
        writer.close()
        if ttft is not None and opened:
            opened.ended()
    total = time.perf_counter() - start
    problem = (f"status {status}" if status != 200 else "error event" if b'"error"' in body
               else "cut off" if call.last_word not in body else None)
    return Result(problem is None, ttft, total, problem)


async def send(call, timeout, opened=None):
    """The Result of one call; a timeout or a broken connection is a failed Result."""
    start = time.perf_counter()
    try:
        return await asyncio.wait_for(exchange(call, start, opened), timeout)
    except (OSError, EOFError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError) as error:
        return Result(False, None, time.perf_counter() - start, type(error).__name__)


def json_body(obj):
    """obj as compact JSON bytes."""
    return json.dumps(obj, separators=(",", ":")).encode()


def percentile(values, p):
    """The nearest-rank p-th percentile of values, or None when there are none."""
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(results, seconds=None):
    """TTFT and total p50/p95/p99 in ms, the count and the errors of a list of Results."""
    ok = [r for r in results if r.ok]
    row = {"n": len(results), "errors": len(results) - len(ok)}
    for name, values in (("ttft", [r.ttft for r in ok]), ("total", [r.total for r in ok])):
        for p in (50, 95, 99):
            value = percentile(values, p)
            row[f"{name}_p{p}_ms"] = None if value is None else round(value * 1000, 3)
    kinds = sorted({r.error for r in results if r.error})
    if kinds:
        row["error_kinds"] = kinds
    if seconds:
        row["per_second"] = round(len(ok) / seconds, 1)
    return row
