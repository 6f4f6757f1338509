"""The key pool: rotation, cooldowns, reservation and failover, one pool per provider.

The rules, in the order a request meets them:
1. Rotation. Each provider has one rotation counter in the state store, shared by every
   worker and instance: request number R starts at key R mod n and tries the keys in order.
2. Rests. A key whose quota is used up (chatbridge/failures.py says which errors mean what)
   rests for that model only, and so does every key of its group (`project:key` in the
   settings: keys of one Google project share its quota), for the delay the upstream stated
   (failures.retry_delay, else 60 s; never more than a day); a per-day quota rests it until
   midnight Pacific, when Gemini resets it. A key rejected as invalid or disabled, or whose
   account is out of credit, rests for an hour for every model (an invalid mark; out of
   credit adds a billing mark, which keeps the periodic re-check away from the key: a model
   list cannot see credit, chatbridge/key_checks.py). An upstream's own failure
   (5xx, overload) rests no key. Rests are marks in the state store, so every worker skips
   the key; a mark is read as at most MAX_MARK_AHEAD from now, so no stored number rests a
   key longer or breaks GET /api/keys.
3. Reservation. A request whose keys all rest waits up to KEY_WAIT_SECONDS for the first to
   come back, else gets 429 with Retry-After at once, so the upstream is not hammered; when
   every key rests as invalid it gets 503.
4. Failover. A request tries its keys in order until one gives a usable answer; it fails
   over on every UpstreamError kind but `rejected` (the request's own fault) and `unusable`
   (an answer the model itself broke), which are returned at once without blaming the key.
   Once the client has seen content, there is no failover: the stream ends with an error.
5. Counting. Every attempt counts against its key (requests, failures, last error, last
   use), shown by GET /api/keys with only the key's last four characters, and goes to
   KeyPool.observe (the metrics and per-key usage, counted in memory: chatbridge/usage.py).
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config import ApiKey
from .errors import NoKeyAvailable, UpstreamError
from .failures import MAX_RETRY_DELAY, RATE_LIMIT_COOLDOWN, sane_delay
from .logs import RequestLog, log
from .redaction import Redactor
from .state import StateStore

INVALID_KEY_COOLDOWN = 3600.0  # seconds a key rests after the upstream called it invalid
BILLING_COOLDOWN = 3600.0  # seconds a key rests after its account ran out of credit
MAX_MARK_AHEAD = MAX_RETRY_DELAY + 3600.0  # the longest rest: a day, or a 25-hour day (DST)
LAST_DATETIME = 253402300799.0  # 9999-12-31T23:59:59Z, the last second a datetime can hold


def next_pacific_midnight(now: float) -> float:
    """When Gemini's per-day quotas reset: the next midnight in California (epoch seconds)."""
    try:
        zone = ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:
        zone = timezone(timedelta(hours=-8))
    local = datetime.fromtimestamp(now, zone)
    return (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def iso_time(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC; one a datetime cannot hold as the nearest one it can."""
    epoch = min(max(epoch, 0.0), LAST_DATETIME) if math.isfinite(epoch) else 0.0
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def mark_until(until: Any, now: float) -> float:
    """A stored mark as trusted: at most MAX_MARK_AHEAD from now; 0 (no rest) unless a number."""
    if not isinstance(until, (int, float)) or math.isnan(until):
        return 0.0
    return min(until, now + MAX_MARK_AHEAD)


def quota_mark(key: ApiKey, model: str) -> str:
    return f"quota|{key.group}|{model}"


def invalid_mark(key: ApiKey) -> str:
    return f"invalid|{key.id}"


def billing_mark(key: ApiKey) -> str:
    """Set beside the invalid mark while a key rests because its account is out of credit."""
    return f"billing|{key.id}"


def rest_until(failure: UpstreamError, now: float) -> float:
    """Until when (epoch seconds) a rate-limited key rests: at most MAX_RETRY_DELAY unless the
    quota is per day."""
    if failure.per_day:
        return next_pacific_midnight(now)
    delay = sane_delay(failure.retry_after)
    return now + (RATE_LIMIT_COOLDOWN if delay is None else delay)


@dataclass
class KeyPlan:
    """The keys one request may try, in order, and when a cooling one comes back."""

    turn: int
    keys: list
    retry_at: float | None = None  # epoch seconds
    all_invalid: bool = False
    counted: ApiKey | None = None  # the first key, whose attempt take_turn already counted


class KeyPool:
    """One provider's keys with their shared rotation counter and cooldowns.

    provider is a chatbridge.upstreams Provider (its keys, display_name and key_variable).
    """

    def __init__(self, provider, store: StateStore, redactor: Redactor, wait_seconds: float):
        self.provider, self.keys, self.store = provider, provider.keys, store
        self.redactor = redactor  # errors are stored and logged as clients may see them
        self.wait_seconds = wait_seconds
        self.observe = ignore_attempt  # observe(key, failure or None, new_attempt): metrics, usage

    def plan(self, model: str, turn: int | None = None) -> KeyPlan:
        """Order the usable keys from this request's turn (taking a new turn unless given one,
        and then counting the attempt with the first usable key in the same step)."""
        first = []

        def first_attempt(taken: int, marks: dict) -> str | None:
            first[:] = self.usable(taken, marks, model)[0][:1]
            return first[0].id if first else None

        if turn is None:
            turn, marks = self.store.take_turn(self.provider.name, first_attempt)
        else:
            marks = self.store.peek(self.provider.name)
        usable, quota_returns = self.usable(turn, marks, model)
        counted = first[0] if first and usable and usable[0] is first[0] else None
        return KeyPlan(turn, usable, min(quota_returns, default=None),
                       not usable and not quota_returns, counted)

    def usable(self, turn: int, marks: dict, model: str) -> tuple:
        """(the keys that may be tried, in order from turn; when the resting ones come back)."""
        now = time.time()
        ordered = [self.keys[(turn + i) % len(self.keys)] for i in range(len(self.keys))]
        usable, quota_returns = [], []
        for key in ordered:
            invalid = mark_until(marks.get(invalid_mark(key), 0), now) > now
            quota = mark_until(marks.get(quota_mark(key, model), 0), now)
            if quota > now and not invalid:
                quota_returns.append(quota)
            if not invalid and quota <= now:
                usable.append(key)
        return usable, quota_returns

    def reserve(self, model: str) -> KeyPlan:
        """The keys a request may try; waits briefly for a cooling key, else NoKeyAvailable."""
        plan = self.plan(model)
        delay = plan.retry_at - time.time() if plan.retry_at else None
        if not plan.keys and delay is not None and delay <= self.wait_seconds:
            time.sleep(max(0.0, delay) + 0.01)
            plan = self.plan(model, plan.turn)
        if plan.keys:
            return plan
        raise self.unavailable(model, plan)

    def unavailable(self, model: str, plan: KeyPlan, detail: str = "") -> NoKeyAvailable:
        """The error when no key may be tried: every one invalid (503) or resting (429)."""
        if plan.all_invalid:
            return NoKeyAvailable(f"every key in {self.provider.key_variable} was rejected by the "
                                  "upstream in the last hour (invalid, disabled or out of "
                                  "credit)" + detail, 503)
        retry_at = plan.retry_at or time.time() + 1
        return NoKeyAvailable(f"every {self.provider.key_noun} is rate-limited for {model}; "
                              "try again later", retry_after=retry_at - time.time())

    def note_attempt(self, key: ApiKey, model: str, failure: UpstreamError | None = None,
                     new_attempt: bool = True) -> None:
        """Count an attempt; rest a rate-limited or invalid key so no worker tries it too soon."""
        now, marks = time.time(), {}
        if failure is not None and failure.kind == "rate_limit":
            marks[quota_mark(key, model)] = rest_until(failure, now)
        elif failure is not None and failure.rests_key:
            rest = BILLING_COOLDOWN if failure.kind == "billing" else INVALID_KEY_COOLDOWN
            marks[invalid_mark(key)] = now + rest
            if failure.kind == "billing":
                marks[billing_mark(key)] = now + rest
        if failure is not None and not failure.blames_key:
            failure = None  # the request's own fault does not count against the key
        error = f"{failure.kind}: {self.redactor.public_text(failure.message)}" if failure else None
        if marks or error or new_attempt:  # else there is nothing to write
            self.store.note_attempt(self.provider.name, key.id, marks, error, new_attempt)

    def failover(self, plan: KeyPlan, model: str, attempt: Callable, cancel,
                 record: RequestLog) -> Any:
        """Try the planned keys in order until attempt(key) gives a usable answer.

        cancel is the request's relay.Cancel; record its log line.
        """
        failures, exhausted_groups = [], set()
        for key in plan.keys:
            cancel.check()
            if key.group in exhausted_groups:
                continue  # keys of one Google project share its quota
            record.attempts += 1
            record.key, record.key_id = key.suffix, key.id
            counted = key is plan.counted  # take_turn has counted this attempt already
            try:
                answer = attempt(key)
            except UpstreamError as failure:
                cancel.check()  # the client left and its upstream was closed: not the key's fault
                failure.message = self.redactor.public_text(failure.message)
                self.note_attempt(key, model, failure, new_attempt=not counted)
                self.observe(key, failure, True)
                log.warning("%s key %s failed (%s): %s", self.provider.name, key.label,
                            failure.kind, failure.message)
                if not failure.failover:
                    raise self.not_retried(failure) from None
                if failure.kind == "rate_limit":
                    exhausted_groups.add(key.group)
                failures.append(failure)
                continue
            if not counted:
                self.note_attempt(key, model)
            self.observe(key, None, True)
            return answer
        cancel.check()
        raise self.give_up(model, plan, failures)

    def not_retried(self, failure: UpstreamError) -> UpstreamError:
        """The error for a failure no other key would mend: the request's own fault, or an
        answer the model made unusable."""
        message = failure.message if failure.upstream_status is None else \
            f"{self.provider.display_name} answered with an error ({failure.upstream_status}): " \
            f"{failure.message}"
        body = self.redactor.redact_json(failure.body.decode("utf-8", "replace")).encode() \
            if failure.body else None
        return UpstreamError(failure.kind, message, failure.upstream_status, body=body, status=500)

    def give_up(self, model: str, plan: KeyPlan, failures: list) -> Exception:
        """The error for a request whose attempts all failed."""
        kinds = {f.kind for f in failures}
        if kinds and kinds <= {"rate_limit", "invalid_key", "billing"}:
            detail = f" (last: {failures[-1].message})" if "rate_limit" not in kinds else ""
            return self.unavailable(model, self.plan(model, plan.turn), detail)
        if failures and all(f.kind == "unreachable" for f in failures):
            return UpstreamError("unreachable", f"could not reach {self.provider.display_name}")
        last = failures[-1] if failures else UpstreamError("server", "no key could be tried")
        if last.upstream_status is None:
            return UpstreamError(last.kind, last.message, status=500)
        return UpstreamError(last.kind, f"{self.provider.display_name} answered with an error "
                             f"({last.upstream_status}): {last.message}", last.upstream_status,
                             status=500)

    def status(self) -> list:
        """Each key's state and counters, with only its last four characters."""
        name = self.provider.name
        marks, stats, now = self.store.peek(name), self.store.key_stats(name), time.time()
        return [key_status(key, marks, stats.get(key.id, {}), now) for key in self.keys]


def ignore_attempt(key: ApiKey, failure: UpstreamError | None, new_attempt: bool) -> None:
    """KeyPool.observe until the service sets its own."""


REST_REASONS = {"invalid_key": "invalid", "billing": "billing"}  # of an invalid mark


def rest_kind(key: ApiKey, marks: dict, last_error: str | None, now: float) -> str | None:
    """Why a key rests for every model: "billing" (out of credit), "invalid", or None.

    The billing mark says so; for a rest stored before billing marks existed, the last error
    (the one that rested the key, or its last failed check) does."""
    if mark_until(marks.get(invalid_mark(key), 0), now) <= now:
        return None
    if mark_until(marks.get(billing_mark(key), 0), now) > now:
        return "billing"
    return REST_REASONS.get((last_error or "").partition(":")[0], "invalid")


def key_status(key: ApiKey, marks: dict, counters: dict, now: float) -> dict:
    """One key's entry in GET /api/keys."""
    prefix = quota_mark(key, "")
    marks = {name: mark_until(until, now) for name, until in marks.items()}
    cooling = {name[len(prefix):]: iso_time(until) for name, until in marks.items()
               if name.startswith(prefix) and until > now}
    invalid = marks.get(invalid_mark(key), 0)
    state = "invalid" if invalid > now else "cooling" if cooling else "ok"
    reason = "rate_limited" if state == "cooling" else \
        rest_kind(key, marks, counters.get("last_error"), now)
    return {
        "key": key.label,
        "group": key.group.removeprefix("group:") if key.group.startswith("group:") else None,
        "state": state,
        "reason": reason,
        "cooling_until": cooling,
        "invalid_until": iso_time(invalid) if invalid > now else None,
        "requests": counters.get("requests", 0),
        "failures": counters.get("failures", 0),
        "last_error": counters.get("last_error"),
        "last_used": iso_time(counters["last_used"]) if counters.get("last_used") else None,
    }
