"""The Redis state store (REDIS_URL): every worker and instance share Redis' atomic commands
(INCR, hashes, Lua scripts). While Redis cannot be reached, each process falls back to its own
MemoryStateStore for REDIS_RETRY_SECONDS (a circuit breaker), and says so in the log.
chatbridge/state.py picks the store; chatbridge/documents.py has the interface."""

import json
import math
import time
from collections.abc import Callable
from functools import wraps

import redis

from .documents import (HEALTH_PROBE_SECONDS, USAGE_DAYS, USAGE_MINUTES, MemoryStateStore,
                        StateStore, live_mark)
from .logs import log

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
                result = method(store, *args)
            except redis.RedisError as exc:
                store.fail(exc)
            else:
                store.outage = None
                return result
        return getattr(store.fallback, method.__name__)(*args)

    return run


class RedisStateStore(StateStore):
    """State in Redis (REDIS_URL), shared by every instance, with Redis' atomic commands.

    While Redis cannot be reached, operations fall back to this process's memory
    (rotation and cooldowns become per-process), Redis is tried again every
    REDIS_RETRY_SECONDS, and the outage is logged, never raised at the user. /healthz says so
    but answers 200: every instance shares Redis, so taking them out of rotation would only
    stop a service that still answers.
    """

    def __init__(self, url: str):
        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                          health_check_interval=30, decode_responses=True)
        self.scripts = {name: self.redis.register_script(source) for name, source in
                        (("note", NOTE_ATTEMPT), ("open", OPEN_CHAT), ("append", APPEND_CHAT))}
        self.fallback = MemoryStateStore()
        self.retry_at = 0.0
        self.outage = None  # the error that made Redis unreachable, while it is
        self.probed = 0.0

    def fail(self, exc: redis.RedisError) -> None:
        """Redis cannot be reached: this process's memory for the next REDIS_RETRY_SECONDS."""
        self.retry_at = time.monotonic() + REDIS_RETRY_SECONDS
        self.outage = type(exc).__name__
        log.error("Redis is unreachable (%s); state is per process for the next %d s, "
                  "and conversation turns saved meanwhile stay in this process",
                  self.outage, REDIS_RETRY_SECONDS)

    def health(self):
        """PINGs Redis when a retry is due, or at most once a second while it answers."""
        due = self.retry_at if self.outage else self.probed + HEALTH_PROBE_SECONDS
        if time.monotonic() >= due:
            self.probed = time.monotonic()
            try:
                self.redis.ping()
                self.outage = None
            except redis.RedisError as exc:
                self.fail(exc)
        return f"Redis unreachable: {self.outage}" if self.outage else None

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

    @redis_or_memory
    def save_response(self, response_id, record, ttl):
        self.redis.set(f"chatbridge:response:{response_id}", json.dumps(record, ensure_ascii=False),
                       ex=seconds(ttl))

    @redis_or_memory
    def load_response(self, response_id):
        record = self.redis.get(f"chatbridge:response:{response_id}")
        return json.loads(record) if record else None

    @redis_or_memory
    def delete_response(self, response_id):
        return self.redis.delete(f"chatbridge:response:{response_id}") > 0

    @redis_or_memory
    def add_usage(self, increments):
        pipe = self.redis.pipeline(transaction=False)
        for kind, prefix, lifetime in (("days", "usage", USAGE_DAYS * 86400),
                                       ("minutes", "minutes", USAGE_MINUTES * 60)):
            for provider, periods in increments.get(kind, {}).items():
                for period, keys in periods.items():
                    name = f"chatbridge:{prefix}:{provider}:{period}"
                    for field_name, count in usage_fields(keys).items():
                        pipe.hincrby(name, field_name, count)
                    pipe.expire(name, lifetime)
        pipe.execute()

    @redis_or_memory
    def usage(self, provider, dates, minutes):
        pipe = self.redis.pipeline(transaction=False)
        for date in dates:
            pipe.hgetall(f"chatbridge:usage:{provider}:{date}")
        for minute in minutes:
            pipe.hgetall(f"chatbridge:minutes:{provider}:{minute}")
        found = pipe.execute()
        days, recent = found[:len(dates)], found[len(dates):]
        return {"days": {d: usage_entries(f) for d, f in zip(dates, days, strict=True) if f},
                "minutes": {str(m): usage_entries(f)
                            for m, f in zip(minutes, recent, strict=True) if f}}

    @redis_or_memory
    def clear_marks(self, provider, prefixes):
        name = f"chatbridge:marks:{provider}"
        ended = [mark for mark in self.redis.hkeys(name) if mark.startswith(prefixes)]
        if ended:
            self.redis.hdel(name, *ended)

    @redis_or_memory
    def note_check(self, provider, key_id, record):
        self.redis.hset(f"chatbridge:checks:{provider}", key_id, json.dumps(record))

    @redis_or_memory
    def checks(self, provider):
        return {key_id: json.loads(record) for key_id, record in
                self.redis.hgetall(f"chatbridge:checks:{provider}").items()}

    @redis_or_memory
    def lease(self, name, seconds):
        return bool(self.redis.set(f"chatbridge:lease:{name}", "1", nx=True,
                                   px=max(1, int(seconds * 1000))))

    @staticmethod
    def live(marks: dict) -> dict:
        now = time.time()
        parsed = {name: float(until) for name, until in marks.items()}
        return {name: until for name, until in parsed.items() if live_mark(until, now)}


def usage_fields(keys: dict) -> dict:
    """Usage counts per key id as flat hash fields: `{key_id}|requests`,
    `{key_id}|failures|rate_limited` ..."""
    fields = {}
    for key_id, entry in keys.items():
        for name, value in entry.items():
            if isinstance(value, dict):
                fields.update({f"{key_id}|{name}|{cls}": n for cls, n in value.items()})
            else:
                fields[f"{key_id}|{name}"] = value
    return fields


def usage_entries(fields: dict) -> dict:
    """Flat hash fields back as usage counts per key id."""
    keys = {}
    for field_name, value in fields.items():
        key_id, name, *cls = field_name.split("|")
        entry = keys.setdefault(key_id, {})
        if cls:
            entry.setdefault(name, {})[cls[0]] = int(value)
        else:
            entry[name] = int(value)
    return keys


def seconds(ttl: float) -> int:
    """A TTL as Redis takes it: whole seconds, at least one."""
    return max(1, math.ceil(ttl))

