"""Shared state: what every worker and instance must agree on.

Rotation counters, cooldown marks and per-key counters (keys.py), conversations and cached
uploads (conversations.py) live behind StateStore:
- FileStateStore, the default: JSON documents in TEMP_DATA_DIR, each changed under one of 64
  striped file locks (never deleted: deleting a lock file breaks the lock) and written to a
  temporary file that then replaces it, so a worker killed mid-write never leaves a document
  unreadable. An expiring document's mtime is its expiry time.
- RedisStateStore (REDIS_URL): Redis' atomic commands (INCR, hashes, Lua scripts), shared by
  every instance. While Redis cannot be reached, it falls back to MemoryStateStore for
  REDIS_RETRY_SECONDS (a circuit breaker), and says so in the log.
- MemoryStateStore: this process only.
A lock is held only to read, change and replace a document, never across network I/O.
"""

import json
import math
import os
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import suppress
from functools import wraps
from pathlib import Path
from typing import Any

import redis
from filelock import FileLock

from .config import Config
from .logs import log


def open_store(config: Config) -> "StateStore":
    """The store the settings ask for: Redis with REDIS_URL, else files in TEMP_DATA_DIR."""
    return RedisStateStore(config.redis_url) if config.redis_url else FileStateStore(config.temp_data_dir)


class StateStore:
    """Everything the workers and instances share: rotation counters, cooldown marks and
    per-key counters, conversations and cached uploads.

    DocumentStore below keeps each item as a JSON document (in files by default, in
    memory as the Redis fallback); RedisStateStore uses Redis' own atomic commands.
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


EXPIRING_DOCUMENTS = ("chat-", "upload-", "claim-")
LOCK_STRIPES = 64  # lock files are never deleted (that breaks a lock), so their number is fixed
SWEEP_SECONDS = 60.0


class FileStateStore(DocumentStore):
    """Documents as JSON files in TEMP_DATA_DIR, each changed under a file lock.

    A write goes to a temporary file that then replaces the document, so a
    worker killed mid-write never leaves it unreadable. A lock is held only to
    read, change and replace, never across network I/O. An expiring document's
    mtime is its expiry time; expired ones are swept away now and then.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        (self.directory / "locks").mkdir(parents=True, exist_ok=True)
        self.locks = [FileLock(self.directory / "locks" / f"{n:02d}.lock", poll_interval=0.001)
                      for n in range(LOCK_STRIPES)]
        self.swept = 0.0

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def lock(self, name: str) -> FileLock:
        return self.locks[zlib.crc32(name.encode()) % LOCK_STRIPES]

    def update(self, name, change, ttl=None):
        path = self.path(name)
        with self.lock(name):
            doc = self.read(name) or {}
            result = change(doc)
            temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(doc, ensure_ascii=False))
            if ttl is not None:
                os.utime(temporary, (time.time(), time.time() + ttl))
            os.replace(temporary, path)
        if ttl is not None and time.monotonic() - self.swept > SWEEP_SECONDS:
            self.sweep()
        return result

    def read(self, name):
        """A live document; a missing, expired or corrupt one reads as None."""
        path = self.path(name)
        try:
            if name.startswith(EXPIRING_DOCUMENTS) and path.stat().st_mtime < time.time():
                return None
            doc = json.loads(path.read_text())
            if isinstance(doc, dict):
                return doc
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        log.warning("state file %s is unreadable; starting it again", path.name)
        return None

    def delete(self, name):
        with self.lock(name):
            existed = self.read(name) is not None
            self.path(name).unlink(missing_ok=True)
        return existed

    def sweep(self) -> None:
        """Remove expired documents, and temporary files a killed worker left behind."""
        self.swept = time.monotonic()
        now = time.time()
        for path in self.directory.iterdir():
            with suppress(OSError):
                expired = path.name.startswith(EXPIRING_DOCUMENTS) and path.stat().st_mtime < now
                stale = path.suffix == ".tmp" and path.stat().st_mtime < now - SWEEP_SECONDS
                if expired or stale:
                    path.unlink()


class MemoryStateStore(DocumentStore):
    """Documents in this process only: what a worker falls back to when Redis is down."""

    def __init__(self):
        self.docs = {}
        self.lock = threading.Lock()

    def update(self, name, change, ttl=None):
        with self.lock:
            doc = self.read(name) or {}
            result = change(doc)
            expires = time.time() + ttl if ttl is not None else None
            self.docs[name] = (json.loads(json.dumps(doc)), expires)
        return result

    def read(self, name):
        doc, expires = self.docs.get(name, (None, None))
        if doc is None or (expires is not None and expires < time.time()):
            return None
        return json.loads(json.dumps(doc))

    def delete(self, name):
        with self.lock:
            return self.docs.pop(name, None) is not None


REDIS_RETRY_SECONDS = 15
NOTE_ATTEMPT = """
local now = tonumber(ARGV[3])
local marks = redis.call('HGETALL', KEYS[1])
for i = 1, #marks, 2 do
  if tonumber(marks[i + 1]) < now then redis.call('HDEL', KEYS[1], marks[i]) end
end
for i = 6, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') or 0
  if tonumber(ARGV[i + 1]) > old or old > now + 90000 then  -- beyond MARK_HORIZON: corrupt
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('HINCRBY', KEYS[2], ARGV[4] .. ':requests', tonumber(ARGV[5]))
redis.call('HSET', KEYS[2], ARGV[4] .. ':last_used', ARGV[3])
if ARGV[1] == '1' then
  redis.call('HINCRBY', KEYS[2], ARGV[4] .. ':failures', 1)
  redis.call('HSET', KEYS[2], ARGV[4] .. ':last_error', ARGV[2])
end
"""
OPEN_CHAT = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return redis.call('LRANGE', KEYS[2], 0, -1)
"""
APPEND_CHAT = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


def redis_or_memory(method: Callable) -> Callable:
    """Run a RedisStateStore method on Redis; while Redis is down, on this process's memory."""

    @wraps(method)
    def run(store, *args):
        if time.monotonic() >= store.retry_at:
            try:
                return method(store, *args)
            except redis.RedisError as exc:
                store.retry_at = time.monotonic() + REDIS_RETRY_SECONDS
                log.error("Redis is unreachable (%s); state is per process for the next %d s, "
                          "and conversation turns saved meanwhile stay in this process",
                          type(exc).__name__, REDIS_RETRY_SECONDS)
        return getattr(store.fallback, method.__name__)(*args)

    return run


class RedisStateStore(StateStore):
    """State in Redis (REDIS_URL), shared by every instance, with Redis' atomic commands.

    While Redis cannot be reached, operations fall back to this process's memory
    (rotation and cooldowns become per-process), Redis is tried again every
    REDIS_RETRY_SECONDS, and the outage is logged, never raised at the user.
    """

    def __init__(self, url: str):
        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                          health_check_interval=30, decode_responses=True)
        self.scripts = {name: self.redis.register_script(source) for name, source in
                        (("note", NOTE_ATTEMPT), ("open", OPEN_CHAT), ("append", APPEND_CHAT))}
        self.fallback = MemoryStateStore()
        self.retry_at = 0.0

    @redis_or_memory
    def take_turn(self, provider, first_attempt=None):
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(f"chatbridge:counter:{provider}")
        pipe.hgetall(f"chatbridge:marks:{provider}")
        counter, marks = pipe.execute()
        taken, marks = (counter - 1) % (2 ** 31), self.live(marks)
        key_id = first_attempt(taken, marks) if first_attempt else None
        if key_id:
            stats = f"chatbridge:stats:{provider}"
            pipe.hincrby(stats, f"{key_id}:requests", 1)
            pipe.hset(stats, f"{key_id}:last_used", repr(time.time()))
            pipe.execute()
        return taken, marks

    @redis_or_memory
    def peek(self, provider):
        return self.live(self.redis.hgetall(f"chatbridge:marks:{provider}"))

    @redis_or_memory
    def note_attempt(self, provider, key_id, marks, error, new_attempt=True):
        pairs = [item for name, until in marks.items() for item in (name, repr(until))]
        self.scripts["note"](
            keys=[f"chatbridge:marks:{provider}", f"chatbridge:stats:{provider}"],
            args=["1" if error is not None else "0", error or "", repr(time.time()), key_id,
                  "1" if new_attempt else "0", *pairs])

    @redis_or_memory
    def key_stats(self, provider):
        stats = {}
        for field_name, value in self.redis.hgetall(f"chatbridge:stats:{provider}").items():
            key_id, _, name = field_name.partition(":")
            entry = stats.setdefault(key_id, {"requests": 0, "failures": 0, "last_error": None,
                                              "last_used": None})
            entry[name] = value if name == "last_error" else float(value)
        for entry in stats.values():
            entry["requests"], entry["failures"] = int(entry["requests"]), int(entry["failures"])
        return stats

    @redis_or_memory
    def claim(self, name):
        return bool(self.redis.set(f"chatbridge:claim:{name}", "1", nx=True, ex=86400))

    @redis_or_memory
    def open_chat(self, chat_id, owner, ttl):
        name = f"chatbridge:chat:{chat_id}"
        turns = self.scripts["open"](keys=[f"{name}:owner", name], args=[owner, seconds(ttl)])
        return None if turns is None else [json.loads(turn) for turn in turns]

    @redis_or_memory
    def load_chat(self, chat_id):
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(f"chatbridge:chat:{chat_id}:owner")
        pipe.lrange(f"chatbridge:chat:{chat_id}", 0, -1)
        owner, turns = pipe.execute()
        if owner is None:
            return None
        return {"owner": owner, "turns": [json.loads(turn) for turn in turns]}

    @redis_or_memory
    def append_chat(self, chat_id, owner, turns, max_turns, ttl):
        name = f"chatbridge:chat:{chat_id}"
        encoded = [json.dumps(turn, ensure_ascii=False) for turn in turns]
        return bool(self.scripts["append"](keys=[f"{name}:owner", name],
                                           args=[owner, seconds(ttl), max_turns, *encoded]))

    @redis_or_memory
    def delete_chat(self, chat_id):
        name = f"chatbridge:chat:{chat_id}"
        return self.redis.delete(name, f"{name}:owner") > 0

    @redis_or_memory
    def save_upload(self, file_id, record, ttl):
        self.redis.set(f"chatbridge:upload:{file_id}", json.dumps(record), ex=seconds(ttl))

    @redis_or_memory
    def load_upload(self, file_id):
        record = self.redis.get(f"chatbridge:upload:{file_id}")
        return json.loads(record) if record else None

    @staticmethod
    def live(marks: dict) -> dict:
        now = time.time()
        parsed = {name: float(until) for name, until in marks.items()}
        return {name: until for name, until in parsed.items() if live_mark(until, now)}


def seconds(ttl: float) -> int:
    """A TTL as Redis takes it: whole seconds, at least one."""
    return max(1, math.ceil(ttl))

