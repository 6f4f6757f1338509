"""The state store's interface and its document model, and the store in this process's memory.

StateStore is what every worker and instance share (chatbridge/state.py has the stores and
their rules). DocumentStore keeps each item as a JSON document changed by one atomic
read-modify-write: FileStateStore's files, or MemoryStateStore here, which is also what the
file and Redis stores fall back to while they cannot keep the state.
"""

import json
import threading
import time
from collections.abc import Callable
from typing import Any


class StateStore:
    """Everything the workers and instances share: rotation counters, cooldown marks and
    per-key counters, conversations and cached uploads.

    DocumentStore below keeps each item as a JSON document (in files by default, in memory
    while the files or Redis cannot keep it); RedisStateStore uses Redis' own atomic commands.
    """

    def take_turn(self, provider: str, first_attempt: Callable | None = None) -> tuple:
        """Advance the provider's counter; return its previous value and the live marks.

        first_attempt(turn, marks) names the key id the request will try first (or None); that
        attempt is counted in the same step, so an answer from the first key costs one write.
        """
        raise NotImplementedError

    def peek(self, provider: str) -> dict:
        """The live marks (name -> epoch seconds until which they hold), taking no turn."""
        raise NotImplementedError

    def note_attempt(self, provider: str, key_id: str, marks: dict, error: str | None,
                     new_attempt: bool = True) -> None:
        """Count an attempt with a key (a failure when error is given; new_attempt=False for a
        failure later in an attempt already counted) and add cooldown marks."""
        raise NotImplementedError

    def key_stats(self, provider: str) -> dict:
        """Per key id: {requests, failures, last_error, last_used}."""
        raise NotImplementedError

    def claim(self, name: str) -> bool:
        """True for the first caller to claim a name (for a day), so workers do a thing once."""
        raise NotImplementedError

    def open_chat(self, chat_id: str, owner: str, ttl: float) -> list | None:
        """A conversation's turns, claiming it for owner if it is new; None if another owns it."""
        raise NotImplementedError

    def load_chat(self, chat_id: str) -> dict | None:
        """A live conversation {"owner": str, "turns": [turn dicts]}, or None."""
        raise NotImplementedError

    def append_chat(self, chat_id: str, owner: str, turns: list, max_turns: int,
                    ttl: float) -> bool:
        """Append turns in one atomic step, keeping the last max_turns; False if not owner's."""
        raise NotImplementedError

    def delete_chat(self, chat_id: str) -> bool:
        raise NotImplementedError

    def save_upload(self, file_id: str, record: dict, ttl: float) -> None:
        raise NotImplementedError

    def load_upload(self, file_id: str) -> dict | None:
        raise NotImplementedError

    # ---- the operator's view (chatbridge/usage.py, chatbridge/key_checks.py)

    def add_usage(self, increments: dict) -> None:
        """Add a worker's usage counts in one update: {"days": {provider: {date: {key_id:
        entry}}}, "minutes": {provider: {epoch minute: {key_id: {requests, failures}}}}},
        entry being {requests, input_tokens, output_tokens, failures: {class: n}}. Days are
        kept for USAGE_DAYS, minutes for an hour."""
        raise NotImplementedError

    def usage(self, provider: str, dates: list, minutes: list) -> dict:
        """A provider's usage on those dates and epoch minutes: {"days": {date: {key_id:
        entry}}, "minutes": {minute (str): {key_id: {requests, failures}}}}."""
        raise NotImplementedError

    def clear_marks(self, provider: str, prefixes: tuple) -> None:
        """End every rest whose mark name starts with one of prefixes."""
        raise NotImplementedError

    def note_check(self, provider: str, key_id: str, record: dict) -> None:
        """Keep a key's last health check {at, result, message}."""
        raise NotImplementedError

    def checks(self, provider: str) -> dict:
        """Per key id, its last health check."""
        raise NotImplementedError

    def lease(self, name: str, seconds: float) -> bool:
        """True for the one caller that takes a free lease; it is then held for seconds, by
        every worker and instance sharing this store."""
        raise NotImplementedError

    def health(self) -> str | None:
        """Why the store cannot keep the shared state now (trying it again when that is due),
        or None while it can."""
        return None

    # /healthz's status while health() names a problem: 503 takes an instance out of its
    # platform's rotation (and Render restarts it), which helps only for a problem of its own
    unhealthy_status = 200

    # Stored Responses-API responses (chatbridge/stored_responses.py)

    def save_response(self, response_id: str, record: dict, ttl: float) -> None:
        """Keep a stored response's record for ttl seconds."""
        raise NotImplementedError

    def load_response(self, response_id: str) -> dict | None:
        """A live stored response's record, or None."""
        raise NotImplementedError

    def delete_response(self, response_id: str) -> bool:
        """Forget a stored response; False if there was none."""
        raise NotImplementedError


USAGE_DAYS = 8  # days of usage kept: the seven shown, and the day a Pacific date trails UTC
USAGE_MINUTES = 61  # minutes of recent counts kept: the hour shown, and the current minute
HEALTH_PROBE_SECONDS = 1.0  # how often a store that looks healthy is tried again by health()
MARK_HORIZON = 25 * 3600.0  # seconds: no rest lasts longer (a day, or a 25-hour day)


def live_mark(until, now: float) -> bool:
    """Whether a stored rest still holds; one further ahead than any rest can last (a state
    file from before rests were clamped, say) is corrupt, and dropped so a new one replaces it."""
    return isinstance(until, (int, float)) and now < until <= now + MARK_HORIZON


def keys_document(doc: dict) -> dict:
    """A provider's key state with every part present and expired or corrupt marks dropped."""
    now = time.time()
    doc["counter"] = doc.get("counter") if isinstance(doc.get("counter"), int) else 0
    marks = doc.get("marks") if isinstance(doc.get("marks"), dict) else {}
    doc["marks"] = {k: v for k, v in marks.items() if live_mark(v, now)}
    doc["stats"] = doc.get("stats") if isinstance(doc.get("stats"), dict) else {}
    return doc


def count_attempt(stats: dict, error: str | None, new_attempt: bool) -> dict:
    """Per-key counters after an attempt, or a failure later in one."""
    stats = {"requests": 0, "failures": 0, "last_error": None, "last_used": None, **stats}
    stats["requests"] += int(new_attempt)
    stats["last_used"] = time.time()
    if error is not None:
        stats["failures"] += 1
        stats["last_error"] = error
    return stats


def add_counts(target: dict, counts: dict) -> None:
    """Add nested counts into target, creating what is missing."""
    for name, value in counts.items():
        if isinstance(value, dict):
            add_counts(target.setdefault(name, {}), value)
        else:
            target[name] = (target.get(name) or 0) + value


def prune_usage(doc: dict, now: float) -> None:
    """Drop the days and minutes a usage document no longer shows."""
    oldest_day = time.strftime("%Y-%m-%d", time.gmtime(now - USAGE_DAYS * 86400))
    oldest_minute = int(now // 60) - USAGE_MINUTES
    for days in doc.get("days", {}).values():
        for date in [d for d in days if d < oldest_day]:
            del days[date]
    for minutes in doc.get("minutes", {}).values():
        for minute in [m for m in minutes if int(m) < oldest_minute]:
            del minutes[minute]


class DocumentStore(StateStore):
    """The state as named JSON documents, each changed by one atomic read-modify-write."""

    def update(self, name: str, change: Callable, ttl: float | None = None) -> Any:
        """Apply change(doc) to a document atomically and return what it returns."""
        raise NotImplementedError

    def read(self, name: str) -> dict | None:
        raise NotImplementedError

    def delete(self, name: str) -> bool:
        raise NotImplementedError

    def take_turn(self, provider, first_attempt=None):
        def turn(doc):
            keys_document(doc)
            doc["counter"] = (doc["counter"] + 1) % (2 ** 31)
            taken, marks = (doc["counter"] - 1) % (2 ** 31), dict(doc["marks"])
            key_id = first_attempt(taken, marks) if first_attempt else None
            if key_id:
                doc["stats"][key_id] = count_attempt(doc["stats"].get(key_id, {}), None, True)
            return taken, marks
        return self.update(f"keys-{provider}", turn)

    def peek(self, provider):
        return keys_document(self.read(f"keys-{provider}") or {})["marks"]

    def note_attempt(self, provider, key_id, marks, error, new_attempt=True):
        def note(doc):
            keys_document(doc)
            for name, until in marks.items():
                doc["marks"][name] = max(until, doc["marks"].get(name, 0))
            doc["stats"][key_id] = count_attempt(doc["stats"].get(key_id, {}), error, new_attempt)
        self.update(f"keys-{provider}", note)

    def key_stats(self, provider):
        return keys_document(self.read(f"keys-{provider}") or {})["stats"]

    def claim(self, name):
        def take(doc):
            taken = bool(doc)
            doc["claimed"] = True
            return not taken
        return self.update(f"claim-{name}", take, ttl=86400)

    def add_usage(self, increments):
        def add(doc):
            add_counts(doc, increments)
            prune_usage(doc, time.time())
        self.update("usage", add)

    def usage(self, provider, dates, minutes):
        doc = self.read("usage") or {}
        days = doc.get("days", {}).get(provider, {})
        recent = doc.get("minutes", {}).get(provider, {})
        return {"days": {d: days[d] for d in dates if d in days},
                "minutes": {str(m): recent[str(m)] for m in minutes if str(m) in recent}}

    def clear_marks(self, provider, prefixes):
        def clear(doc):
            keys_document(doc)
            doc["marks"] = {n: u for n, u in doc["marks"].items() if not n.startswith(prefixes)}
        self.update(f"keys-{provider}", clear)

    def note_check(self, provider, key_id, record):
        self.update(f"checks-{provider}", lambda doc: doc.update({key_id: record}))

    def checks(self, provider):
        return self.read(f"checks-{provider}") or {}

    def lease(self, name, seconds):
        def take(doc):
            now = time.time()
            if isinstance(doc.get("until"), (int, float)) and doc["until"] > now:
                return False
            doc["until"] = now + seconds
            return True
        return self.update(f"lease-{name}", take)

    def open_chat(self, chat_id, owner, ttl):
        def claim_chat(doc):
            doc.setdefault("turns", [])
            return doc["turns"] if doc.setdefault("owner", owner) == owner else None
        return self.update(f"chat-{chat_id}", claim_chat, ttl)

    def load_chat(self, chat_id):
        return self.read(f"chat-{chat_id}")

    def append_chat(self, chat_id, owner, turns, max_turns, ttl):
        def append(doc):
            if doc.setdefault("owner", owner) != owner:
                return False
            doc["turns"] = (doc.get("turns", []) + turns)[-max_turns:]
            return True
        return self.update(f"chat-{chat_id}", append, ttl)

    def delete_chat(self, chat_id):
        return self.delete(f"chat-{chat_id}")

    def save_upload(self, file_id, record, ttl):
        self.update(f"upload-{file_id}", lambda doc: doc.update(record), ttl)

    def load_upload(self, file_id):
        return self.read(f"upload-{file_id}")

    def save_response(self, response_id, record, ttl):
        def replace_record(doc):
            doc.clear()
            doc.update(record)
        self.update(f"response-{response_id}", replace_record, ttl)

    def load_response(self, response_id):
        return self.read(f"response-{response_id}")

    def delete_response(self, response_id):
        return self.delete(f"response-{response_id}")


class MemoryStateStore(DocumentStore):
    """Documents in this process only: what a worker falls back to when Redis is down, or when
    state files cannot be written. backing(name) gives a document it does not hold itself."""

    def __init__(self, backing: Callable | None = None):
        self.docs = {}  # name -> (doc, or None once deleted; expiry epoch or None)
        self.backing = backing
        self.lock = threading.Lock()

    def update(self, name, change, ttl=None):
        with self.lock:
            doc = self.read(name) or {}
            result = change(doc)
            self.put(name, doc, ttl)
        return result

    def put(self, name: str, doc: dict, ttl: float | None = None) -> None:
        expires = time.time() + ttl if ttl is not None else None
        self.docs[name] = (json.loads(json.dumps(doc)), expires)

    def read(self, name):
        if name not in self.docs:
            return self.backing(name) if self.backing else None
        doc, expires = self.docs[name]
        if doc is None or (expires is not None and expires < time.time()):
            return None
        return json.loads(json.dumps(doc))

    def delete(self, name):
        with self.lock:
            existed = self.read(name) is not None
            if self.backing:
                self.docs[name] = (None, None)  # so the backing's copy is not read again
            else:
                self.docs.pop(name, None)
            return existed

    def forget_expired(self) -> None:
        now = time.time()
        for name, (_, expires) in list(self.docs.items()):
            if expires is not None and expires < now:
                del self.docs[name]
