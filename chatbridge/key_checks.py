"""Key health checks: does a key work, asked in a way that spends no generation quota.

Rules (issue 12; peers: gemini-balance re-validates failed keys every hour):
- A check lists the upstream's models with that key (Gemini: models.list; OpenAI-compatible:
  GET {base}/models), through the provider's list_models and chatbridge/transport.py.
- A key that passes ends its invalid or out-of-credit rest, and the log says so; one rejected
  as invalid or out of credit rests again (an hour) with the new reason. Other answers (a
  429, an upstream's own failure, no connection) change no rest: they say nothing about the
  key. Rate-limit rests are never ended by a check: a model list does not prove a quota.
- Every check's outcome is kept in the state store ({at, result, message}, shown by GET
  /api/keys), result being "ok" or the failure class (chatbridge/usage.py FAILURE_CLASSES).
- Every KEY_CHECK_MINUTES (0: never), keys resting as invalid are checked again. Each worker
  runs a (green) thread for it, started on its first request, never at import; a lease in
  the state store lets one round run per interval across all workers and instances.
- Keys resting because their account is out of credit (keys.rest_kind "billing") are left
  alone by those rounds: listing models costs no credit, so such a key passes every check,
  comes back, and rests again at its next request. Its rest ends with its time, or when the
  operator resets or checks it by hand (POST /api/keys/.../check, `python -m chatbridge keys
  check`); an ok by hand says that a model list cannot see credit.
"""

import os
import threading
import time

from .errors import ChatBridgeError, UpstreamError
from .keys import KeyPool, billing_mark, invalid_mark, iso_time, rest_kind
from .logs import log
from .relay import Cancel
from .usage import failure_class

LEASE = "key-checks"
MAX_SLEEP_SECONDS = 60.0  # how often a worker asks for the lease, at most
NO_CREDIT_SEEN = "a model list cannot see credit"


def check_key(pool: KeyPool, key) -> tuple:
    """({"result": "ok" or a failure class, "message": str}, the UpstreamError or None)."""
    try:
        models = pool.provider.list_models(key, Cancel())
    except UpstreamError as failure:
        message = pool.redactor.public_text(failure.message)
        return {"result": failure_class(failure), "message": message}, failure
    except ChatBridgeError as error:  # not expected from a model list; said, never raised
        return {"result": "broken", "message": pool.redactor.public_text(error.message)}, None
    return {"result": "ok", "message": f"{len(models)} models listed"}, None


def credit_note(rest: str | None) -> str:
    """What an ok by hand adds to its message: a model list says nothing about credit."""
    if rest == "billing":
        return f"; its out-of-credit rest is ended, but {NO_CREDIT_SEEN}: its next request tells"
    return f" ({NO_CREDIT_SEEN})"


class KeyChecker:
    """Checks keys now (check) and keeps re-checking resting ones (start)."""

    def __init__(self, pools: dict, store, interval_minutes: float):
        self.pools, self.store = pools, store
        self.interval = interval_minutes * 60.0  # seconds; 0: no re-checks
        self.started_pid = None

    def check(self, pool: KeyPool, key, by_hand: bool = True) -> dict:
        """Check one key now, keep the outcome and act on it (the rules above).

        by_hand: the operator asked (admin route, keys check); an ok then says that a model
        list cannot see credit, and ends a rest for billing too."""
        outcome, failure = check_key(pool, key)
        name, now = pool.provider.name, time.time()
        rest = self.rest_of(pool, key, now)
        if outcome["result"] == "ok" and by_hand:
            outcome["message"] += credit_note(rest)
        self.store.note_check(name, key.id, {"at": iso_time(now), **outcome})
        if outcome["result"] == "ok" and rest and (by_hand or rest != "billing"):
            self.store.clear_marks(name, (invalid_mark(key), billing_mark(key)))
            log.info("%s key %s passed its check and is back in the pool", name, key.label)
        elif failure is not None and failure.rests_key:
            pool.note_attempt(key, "*", failure, new_attempt=False)
            if failure.kind != "billing":  # it rests for the new reason only
                self.store.clear_marks(name, (billing_mark(key),))
            log.warning("%s key %s failed its check (%s): %s; it rests for another hour", name,
                        key.label, outcome["result"], outcome["message"])
        return outcome

    def rest_of(self, pool: KeyPool, key, now: float) -> str | None:
        """Why the key rests for every model now: "invalid", "billing" or None."""
        name = pool.provider.name
        last_error = self.store.key_stats(name).get(key.id, {}).get("last_error")
        return rest_kind(key, self.store.peek(name), last_error, now)

    def check_all(self) -> list:
        """Check every configured key now, by hand: [(provider name, key, outcome)]."""
        return [(name, key, self.check(pool, key))
                for name, pool in self.pools.items() for key in pool.keys]

    def recheck_resting(self) -> int:
        """One round: check the keys resting as invalid (not those out of credit), if this
        worker holds the lease for this interval. Returns how many keys it checked."""
        if not self.store.lease(LEASE, self.interval):
            return 0
        checked, now = 0, time.time()
        for name, pool in self.pools.items():
            marks, stats = self.store.peek(name), self.store.key_stats(name)
            for key in pool.keys:
                last_error = stats.get(key.id, {}).get("last_error")
                if rest_kind(key, marks, last_error, now) == "invalid":
                    self.check(pool, key, by_hand=False)
                    checked += 1
        return checked

    def start(self) -> None:
        """Start this process's re-check thread, once (a forked worker starts its own)."""
        if self.started_pid == os.getpid() or not self.interval:
            return
        self.started_pid = os.getpid()
        threading.Thread(target=self.keep_checking, daemon=True, name="key-checks").start()

    def keep_checking(self) -> None:
        while True:
            time.sleep(min(self.interval, MAX_SLEEP_SECONDS))
            try:
                self.recheck_resting()
            except Exception:  # a bug, not an outage (stores fall back on their own)
                log.exception("the key re-check failed")
