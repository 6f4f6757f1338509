"""Per-key usage: requests, failures by class and tokens per day, and the last hour by minute.

Rules (issue 12):
- A day is the provider's quota day: Pacific time for Gemini, whose daily quotas reset at
  midnight there (Provider.quota_zone), UTC otherwise. Days are kept for seven days (and one
  more, for the day a Pacific date trails UTC), per-minute counts for an hour.
- Counting costs no state-store write on the request's path: each worker adds its counts up in
  memory, and a background (green) thread of its own adds them to the store in one update at
  most every FLUSH_SECONDS, and at exit (gunicorn.conf.py's worker_exit, and atexit). What a
  worker killed with SIGKILL had not yet flushed is lost.
- Tokens are the upstream's own usage figures (Delta("usage"): prompt_tokens, completion_tokens,
  thinking included), counted once per answer.
- A failure counts against its key by its class (FAILURE_CLASSES); a request's own fault
  (`rejected`) counts as a request but not as a failure of the key.
"""

import atexit
import os
import threading
import time
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .documents import StateStore, add_counts
from .errors import UpstreamError
from .logs import log

FLUSH_SECONDS = 2.0
SHOWN_DAYS = 7
SHOWN_MINUTES = 60
# chatbridge.errors.UpstreamError kinds as the operator's failure classes (issue 12's names)
FAILURE_CLASSES = {"rate_limit": "rate_limited", "invalid_key": "invalid", "billing": "billing",
                   "server": "overloaded", "broken": "broken", "unreachable": "unreachable",
                   "rejected": "rejected", "unusable": "rejected"}
NOT_THE_KEYS = ("ok", "rejected")  # results that are no failure of the key


def failure_class(failure: UpstreamError) -> str:
    """An upstream failure's class: rate_limited, invalid, billing, overloaded, broken,
    unreachable or rejected."""
    return FAILURE_CLASSES.get(failure.kind, "broken")


def zone_of(name: str):
    """A time zone by its IANA name; Pacific Standard Time if the system has no tz data."""
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:
        return UTC if name == "UTC" else timezone(timedelta(hours=-8))


def day_of(zone, epoch: float) -> date:
    return datetime.fromtimestamp(epoch, zone).date()


def empty_day(day: str) -> dict:
    return {"date": day, "requests": 0, "failures": {}, "input_tokens": 0, "output_tokens": 0}


class UsageBook:
    """This worker's usage counts since its last flush, and the reports read back from the store.

    zones maps provider names to their quota day's IANA time zone.
    """

    def __init__(self, store: StateStore, zones: dict, flush_seconds: float = FLUSH_SECONDS):
        self.store, self.flush_seconds = store, flush_seconds
        self.zones = {name: zone_of(zone) for name, zone in zones.items()}
        self.pending = {}
        self.days = {}  # provider -> (epoch minute, its quota day then)
        self.lock = threading.Lock()
        self.flusher_pid = None

    def attempt(self, provider: str, key_id: str, result: str, new_attempt: bool = True) -> None:
        """Count an attempt with a key (result "ok" or a failure class); new_attempt=False for
        a failure later in an attempt already counted (a stream cut after its first text)."""
        failed = result not in NOT_THE_KEYS
        day = {"requests": int(new_attempt)}
        if failed:
            day["failures"] = {result: 1}
        self.add(provider, key_id, day, {"requests": int(new_attempt), "failures": int(failed)})

    def tokens(self, provider: str, key_id: str, usage: dict) -> None:
        """Count an answer's tokens from the upstream's usage (OpenAI's shape)."""
        counts = {"input_tokens": usage.get("prompt_tokens"),
                  "output_tokens": usage.get("completion_tokens")}
        counts = {name: n for name, n in counts.items() if isinstance(n, int) and n > 0}
        if counts:
            self.add(provider, key_id, counts, None)

    def add(self, provider: str, key_id: str, day: dict, minute: dict | None) -> None:
        now = time.time()
        today = self.today(provider, now)
        with self.lock:
            days = self.pending.setdefault("days", {}).setdefault(provider, {})
            add_counts(days.setdefault(today, {}).setdefault(key_id, {}), day)
            if minute is not None:
                minutes = self.pending.setdefault("minutes", {}).setdefault(provider, {})
                add_counts(minutes.setdefault(str(int(now // 60)), {}).setdefault(key_id, {}),
                           minute)
        if self.flusher_pid != os.getpid():
            self.start_flusher()

    def today(self, provider: str, now: float) -> str:
        """The provider's quota day as YYYY-MM-DD, worked out once a minute."""
        minute, day = self.days.get(provider, (None, ""))
        if minute != now // 60:
            day = day_of(self.zones.get(provider, UTC), now).isoformat()
            self.days[provider] = (now // 60, day)
        return day

    def flush(self) -> None:
        """Add this worker's counts to the store in one update."""
        with self.lock:
            pending, self.pending = self.pending, {}
        if pending:
            self.store.add_usage(pending)

    def start_flusher(self) -> None:
        """The background (green) thread that flushes; one per process, started on first use."""
        self.flusher_pid = os.getpid()
        threading.Thread(target=self.keep_flushing, daemon=True, name="usage-flush").start()
        atexit.register(self.flush)

    def keep_flushing(self) -> None:
        while True:
            time.sleep(self.flush_seconds)
            try:
                self.flush()
            except Exception:  # the store falls back on its own; this is a bug, not an outage
                log.exception("could not add the usage counts to the state")

    def report(self, provider: str, key_ids: list) -> dict:
        """Per key id: {"today": day, "days": [days with data, newest first], "recent": [60
        minutes, oldest first]}, day being {date, requests, failures: {class: n},
        input_tokens, output_tokens} and a minute {minute, requests, failures}."""
        self.flush()  # so a single process sees its own requests at once
        now = time.time()
        today = day_of(self.zones.get(provider, UTC), now)
        dates = [(today - timedelta(days=n)).isoformat() for n in range(SHOWN_DAYS)]
        minutes = list(range(int(now // 60) - SHOWN_MINUTES + 1, int(now // 60) + 1))
        stored = self.store.usage(provider, dates, minutes)
        return {key_id: key_report(key_id, stored, dates, minutes) for key_id in key_ids}


def key_report(key_id: str, stored: dict, dates: list, minutes: list) -> dict:
    days = [{**empty_day(d), **stored["days"][d][key_id]} for d in dates
            if key_id in stored["days"].get(d, {})]
    recent = []
    for minute in minutes:
        counts = stored["minutes"].get(str(minute), {}).get(key_id, {})
        recent.append({"minute": datetime.fromtimestamp(minute * 60, UTC).strftime(
            "%Y-%m-%dT%H:%M:00Z"), "requests": counts.get("requests", 0),
            "failures": counts.get("failures", 0)})
    today = days[0] if days and days[0]["date"] == dates[0] else empty_day(dates[0])
    return {"today": today, "days": days, "recent": recent}

