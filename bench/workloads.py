"""The paths under test and the workloads of issue 13, run by the asyncio load generator.

Paths are interleaved in one run: sequential workloads take blocks of requests in turn, one
path after another, rotating the order each round; concurrent ones do the same with bursts.
Only the slow-stream workload runs its paths one after another, since holding thousands of
streams open on every path at once would measure the machine, not the path. CPU time is the
serving process tree's (gunicorn master and workers, or the fakes' process), read from /proc
before and after each block, so work for another path is never counted.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.client import Call, Open, json_body, send, summary
from bench.procs import cpu_seconds, rss_bytes

MODEL = "deepseek-v3-671b"
GEMINI_MODEL = "gemini-2.5-flash"
GEMINI_PATH = f"/models/{GEMINI_MODEL}:"
DIRECT_KEY = "sk-bench-direct-key"
TIMEOUT = 120.0


def order(n, delay):
    """The user text that scripts the fakes' answer (bench/upstreams.py)."""
    return f"bench {n} {delay}"


def openai_body(model):
    """An OpenAI chat body for model."""
    return lambda text, stream: {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


def shape_a(model):
    """A /api/chat body of the `message` shape, which always streams."""
    return lambda text, stream: {"message": text, "model": model}


def shape_b(model):
    """A /api/chat body of the `user_content` shape."""
    return lambda text, stream: {"user_content": text, "model": model, "stream": stream}


def gemini_body(text, stream):
    """A Gemini generateContent body."""
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


@dataclass(frozen=True)
class Target:
    """One path: the server that does the work, and how a request to it looks."""

    name: str
    server: str
    port: int
    path: str
    body: Callable
    headers: tuple = ()
    gemini: bool = False  # path ends in `:`, completed by the method

    def call(self, n, delay=0.0, stream=True):
        """The Call asking for n chunks with delay seconds between them."""
        path = self.path
        if self.gemini:
            path += "streamGenerateContent?alt=sse" if stream else "generateContent"
        return Call(self.port, path, json_body(self.body(order(n, delay), stream)), self.headers,
                    f"w{n - 1} ".encode())


def targets(servers):
    """Every path by name: the three of issue 13 (direct, naive relay, ChatBridge), ChatBridge on
    Redis, and ChatBridge's other client APIs, on both wire formats."""
    up, naive, cb = servers["upstreams"], servers["naive"], servers["chatbridge"]
    gemini_key = (("x-goog-api-key", DIRECT_KEY),)
    found = [
        Target("direct", "upstreams", up.port, "/api/ai/v1/chat/completions", openai_body(MODEL),
               (("Authorization", f"Bearer {DIRECT_KEY}"),)),
        Target("naive relay", "naive", naive.port, "/chat/completions", openai_body(MODEL)),
        Target("ChatBridge", "chatbridge", cb.port, "/api/chat", shape_b(MODEL)),
        Target("ChatBridge Redis", "chatbridge_redis", servers["chatbridge_redis"].port, "/api/chat",
               shape_b(MODEL)),
        Target("ChatBridge A", "chatbridge", cb.port, "/api/chat", shape_a(MODEL)),
        Target("ChatBridge /v1", "chatbridge", cb.port, "/v1/chat/completions", openai_body(MODEL)),
        Target("direct Gemini", "upstreams", up.gemini_port, "/v1beta" + GEMINI_PATH, gemini_body, gemini_key,
               True),
        Target("naive relay Gemini", "naive", naive.port, "/v1beta" + GEMINI_PATH, gemini_body, (), True),
        Target("ChatBridge A Gemini", "chatbridge", cb.port, "/api/chat", shape_a(GEMINI_MODEL)),
        Target("ChatBridge B Gemini", "chatbridge", cb.port, "/api/chat", shape_b(GEMINI_MODEL)),
        Target("ChatBridge /v1 Gemini", "chatbridge", cb.port, "/v1/chat/completions", openai_body(GEMINI_MODEL)),
        Target("ChatBridge /v1beta", "chatbridge", cb.port, "/v1beta" + GEMINI_PATH, gemini_body, (), True),
    ]
    return {target.name: target for target in found}


def rotated(items, k):
    """items starting at position k mod their count."""
    k %= len(items)
    return items[k:] + items[:k]


async def warm_up(paths, n=50, count=12):
    """A few requests on every path, several at once so every worker has served some."""
    for target in paths:
        await asyncio.gather(*(send(target.call(n), TIMEOUT) for _ in range(count)))


def with_cpu(rows, cpu, counts):
    """Add CPU milliseconds per request to each summary row."""
    for name, row in rows.items():
        row["cpu_ms_per_stream"] = round(cpu[name] * 1000 / max(1, counts[name]), 3)
    return rows


async def sequential(paths, servers, per_path, block, n=50, delay=0.0):
    """One stream at a time, blocks of `block` requests per path in turn."""
    results = {t.name: [] for t in paths}
    cpu = dict.fromkeys(results, 0.0)
    pids = {name: server.pids() for name, server in servers.items()}
    for round_ in range(-(-per_path // block)):
        for target in rotated(paths, round_):
            before = cpu_seconds(pids[target.server])
            for _ in range(min(block, per_path - len(results[target.name]))):
                results[target.name].append(await send(target.call(n, delay), TIMEOUT))
            cpu[target.name] += cpu_seconds(pids[target.server]) - before
    rows = {name: summary(found) for name, found in results.items()}
    return with_cpu(rows, cpu, {name: len(found) for name, found in results.items()})


async def burst(target, pids, streams, n, delay):
    """streams at once on one path: (results, wall seconds, CPU seconds of its server)."""
    before, start = cpu_seconds(pids), time.perf_counter()
    results = await asyncio.gather(*(send(target.call(n, delay), TIMEOUT) for _ in range(streams)))
    return list(results), time.perf_counter() - start, cpu_seconds(pids) - before


async def concurrent(paths, servers, streams, delay, rounds, n=50):
    """`streams` concurrent streams per burst, bursts on each path in turn, `rounds` times."""
    results = {t.name: [] for t in paths}
    cpu, wall = dict.fromkeys(results, 0.0), dict.fromkeys(results, 0.0)
    pids = {name: server.pids() for name, server in servers.items()}
    for round_ in range(rounds):
        for target in rotated(paths, round_):
            found, seconds, used = await burst(target, pids[target.server], streams, n, delay)
            results[target.name] += found
            cpu[target.name] += used
            wall[target.name] += seconds
    rows = {name: {**summary(found), "wall_s": round(wall[name], 2)} for name, found in results.items()}
    return with_cpu(rows, cpu, {name: len(found) for name, found in results.items()})


async def hold_open(target, server, streams, seconds, ramp):
    """`streams` slow streams (one chunk a second) on one path, opened over `ramp` seconds."""
    workers, opened = server.workers(), Open()
    baseline = rss_bytes(workers)
    call = target.call(max(1, seconds - 2), 1.0)

    async def one(i):
        await asyncio.sleep(i * ramp / streams)
        return await send(call, seconds + ramp + 60, opened)

    tasks = [asyncio.ensure_future(one(i)) for i in range(streams)]
    peak, start = baseline, time.perf_counter()
    for _ in range(int((seconds + ramp + 90) / 0.25)):
        if all(task.done() for task in tasks):
            break
        peak = max(peak, rss_bytes(workers))
        await asyncio.sleep(0.25)
    results = await asyncio.gather(*tasks)
    row = summary(results)
    row.update(most_open=opened.most, wall_s=round(time.perf_counter() - start, 1),
               rss_baseline_mib=round(baseline / 2**20, 1), rss_peak_mib=round(peak / 2**20, 1),
               rss_kib_per_open_stream=round((peak - baseline) / 1024 / max(1, opened.most), 1))
    return row


async def slow(paths, servers, streams, seconds, ramp):
    """Many slow streams held open at once, one path after another."""
    return {t.name: await hold_open(t, servers[t.server], streams, seconds, ramp) for t in paths}


async def whole(paths, servers, requests, concurrency, rounds, n=50):
    """Non-streaming requests, `concurrency` at a time, paths in turn for `rounds` rounds."""
    results = {t.name: [] for t in paths}
    wall, cpu = dict.fromkeys(results, 0.0), dict.fromkeys(results, 0.0)
    pids = {name: server.pids() for name, server in servers.items()}
    each = max(1, requests // rounds // concurrency)
    for round_ in range(rounds):
        for target in rotated(paths, round_):
            call = target.call(n, stream=False)

            async def client(found=results[target.name], call=call):
                for _ in range(each):
                    found.append(await send(call, TIMEOUT))

            before, start = cpu_seconds(pids[target.server]), time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            wall[target.name] += time.perf_counter() - start
            cpu[target.name] += cpu_seconds(pids[target.server]) - before
    rows = {name: summary(found, wall[name]) for name, found in results.items()}
    return with_cpu(rows, cpu, {name: len(found) for name, found in results.items()})
