"""Run the benchmark of issue 13 from the repository root: `python -m bench [--quick]`.

Starts on 127.0.0.1 the fake upstreams (bench/upstreams.py over tests/fakes.py), a
redis-server, the naive relay and ChatBridge twice (file store, Redis), each under the
render.yaml gunicorn command; runs the workloads with all paths interleaved; prints the table;
writes results.json and results.png (bench/ for a full run, a temporary directory for --quick,
unless --out says where). Every process is stopped by its PID on the way out, also on errors
and Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report, workloads
from bench.procs import REPO, Gunicorn, Redis, Upstreams

SIZES = {
    "full": {"sequential": 300, "block": 10, "streams": [50, 200], "delays_ms": [0, 20], "rounds": 2,
             "slow_streams": 2000, "slow_seconds": 20, "slow_ramp": 4, "whole": 1000, "whole_concurrency": 50,
             "shapes": 100},
    "quick": {"sequential": 50, "block": 10, "streams": [50, 200], "delays_ms": [0, 20], "rounds": 1,
              "slow_streams": 200, "slow_seconds": 6, "slow_ramp": 1, "whole": 200, "whole_concurrency": 50,
              "shapes": 20},
}
GEMINI_KEYS = "AIzaBenchFakeKeyNumber1aaaa,AIzaBenchFakeKeyNumber2bbbb,AIzaBenchFakeKeyNumber3cccc"
ZJU_KEYS = "sk-benchFakeZjuKeyOne1111,sk-benchFakeZjuKeyTwo2222"
MAIN = ["direct", "naive relay", "ChatBridge", "ChatBridge Redis"]
SHAPES = ["direct", "naive relay", "ChatBridge A", "ChatBridge", "ChatBridge /v1", "direct Gemini",
          "naive relay Gemini", "ChatBridge A Gemini", "ChatBridge B Gemini", "ChatBridge /v1 Gemini",
          "ChatBridge /v1beta"]


STARTED = time.monotonic()


def say(message):
    """A progress line on stderr, with the seconds since the run began."""
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def raise_open_files():
    """Raise the soft open-file limit to the hard one, for this process and the servers it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def start_servers(stack, directory):
    """Every server of the run, each registered on stack to be stopped."""
    servers = {}

    def keep(name, server):
        stack.callback(server.stop)
        servers[name] = server
        say(f"{name} ready (pid {server.pid})")

    keep("upstreams", Upstreams(directory))
    keep("redis", Redis(directory))
    up = servers["upstreams"]
    keep("naive", Gunicorn("naive", "naive_relay:app", REPO / "bench",
                           {"NAIVE_OPENAI_URL": up.openai, "NAIVE_GEMINI_URL": up.gemini}, directory))
    settings = {"ALL_GEMINI_API_KEYS": GEMINI_KEYS, "ZJU_API_KEY": ZJU_KEYS, "GEMINI_BASE_URL": up.gemini,
                "ZJU_BASE_URL": up.openai}
    keep("chatbridge", Gunicorn("chatbridge", "app:app", REPO,
                                {**settings, "TEMP_DATA_DIR": str(directory / "state-files")}, directory))
    keep("chatbridge_redis", Gunicorn("chatbridge_redis", "app:app", REPO,
                                      {**settings, "TEMP_DATA_DIR": str(directory / "state-redis"),
                                       "REDIS_URL": servers["redis"].url}, directory))
    return servers


async def run_workloads(servers, sizes):
    """Every workload, in order; the results by workload."""
    paths = workloads.targets(servers)
    main, shapes = [paths[n] for n in MAIN], [paths[n] for n in SHAPES]
    say("warming up")
    await workloads.warm_up(shapes + [paths["ChatBridge Redis"]])
    say("(1) one stream at a time")
    found = {"sequential": await workloads.sequential(main, servers, sizes["sequential"], sizes["block"])}
    found["concurrent"] = {}
    for delay in sizes["delays_ms"]:
        for streams in sizes["streams"]:
            say(f"(2) {streams} concurrent streams, {delay} ms between chunks")
            found["concurrent"][f"{streams} streams, {delay} ms"] = await workloads.concurrent(
                main, servers, streams, delay / 1000, sizes["rounds"])
    say(f"(3) {sizes['slow_streams']} slow streams per path, one path after another")
    found["slow"] = await workloads.slow(main[:3], servers, sizes["slow_streams"], sizes["slow_seconds"],
                                         sizes["slow_ramp"])
    say("(4) non-streaming")
    found["whole"] = await workloads.whole(main, servers, sizes["whole"], sizes["whole_concurrency"],
                                           sizes["rounds"] * 2)
    say("(5) client APIs and wire formats")
    found["shapes"] = await workloads.sequential(shapes, servers, sizes["shapes"], sizes["block"])
    return found


def machine():
    """What the run ran on."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform()}


def commit():
    """The short hash of the checked-out commit, or None outside git."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    return None


def parse(argv):
    """The command-line options."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: about a minute instead of five")
    parser.add_argument("--out", type=Path, help="directory for results.json and results.png "
                                                 "(default: bench/, or a temporary directory with --quick)")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmark; 0 when it ran (whether or not the targets hold)."""
    options = parse(argv)
    mode = "quick" if options.quick else "full"
    sizes = SIZES[mode]
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed: run `apt-get install redis-server`")
    files = raise_open_files()
    started = datetime.datetime.now(datetime.UTC)
    with contextlib.ExitStack() as stack:
        directory = Path(tempfile.mkdtemp(prefix="chatbridge-bench-"))
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        servers = start_servers(stack, directory)
        found = asyncio.run(run_workloads(servers, sizes))
        commands = {"chatbridge": servers["chatbridge"].command, "naive": servers["naive"].command}
    results = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(), "mode": mode,
               "machine": machine(), "open_file_limit": files, "sizes": sizes, "commands": commands,
               "seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds()),
               "workloads": found}
    results["targets"] = report.targets(results)
    print(report.table(results))
    out = options.out or (Path(tempfile.mkdtemp(prefix="chatbridge-bench-quick-")) if options.quick
                          else REPO / "bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from bench.chart import draw  # matplotlib only once there is something to draw
    draw(results, out / "results.png")
    say(f"wrote {out / 'results.json'} and {out / 'results.png'} ({results['seconds']} s)")
    return 0
