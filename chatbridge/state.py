"""Shared state: what every worker and instance must agree on.

Rotation counters, cooldown marks and per-key counters (keys.py), conversations and cached
uploads (conversations.py), per-key usage (usage.py), key checks and their lease
(key_checks.py) live behind StateStore:
- FileStateStore, the default: JSON documents in TEMP_DATA_DIR, each changed under one of 64
  striped flock(2) locks (chatbridge/filelocks.py) and written to a
  temporary file that then replaces it, so a worker killed mid-write never leaves a document
  unreadable. The keys documents, changed by every request, are written over themselves
  instead, padded to their size (FileStateStore.overwrite), and read under their lock.
  An expiring document's mtime is its expiry time. Expired documents and stale
  temporary files are swept at most every SWEEP_SECONDS, by reads and writes alike (and
  sooner while writes fail), so a full disk does not keep its expired uploads. While
  documents cannot be written (ENOSPC, EDQUOT, EROFS, EACCES...), it works like a Redis
  outage: this process's MemoryStateStore, seeded from the files, for WRITE_RETRY_SECONDS at a
  time, said once per outage. Uploads are never kept in memory: they are cached on disk
  within UPLOAD_CACHE_MB, or refused with InsufficientStorage (507).
- RedisStateStore (REDIS_URL, chatbridge/redis_store.py): Redis' atomic commands (INCR,
  hashes, Lua scripts), shared by every instance. While Redis cannot be reached, it falls back
  to MemoryStateStore for REDIS_RETRY_SECONDS (a circuit breaker), and says so in the log.
- MemoryStateStore: this process only.
A lock is held only to read, change and replace a document, never across network I/O.
"""

import errno
import json
import os
import time
from contextlib import suppress
from pathlib import Path


from .config import Config
from .documents import HEALTH_PROBE_SECONDS, DocumentStore, MemoryStateStore, StateStore
from .errors import InsufficientStorage
from .filelocks import FileLocks
from .logs import log
from .redis_store import RedisStateStore

__all__ = ["FileStateStore", "MemoryStateStore", "RedisStateStore", "StateStore", "open_store"]


def open_store(config: Config) -> "StateStore":
    """The store the settings ask for: Redis with REDIS_URL, else files in TEMP_DATA_DIR."""
    if config.redis_url:
        return RedisStateStore(config.redis_url)
    return FileStateStore(config.temp_data_dir, config.upload_cache_bytes)


EXPIRING_DOCUMENTS = ("chat-", "upload-", "claim-", "response-")
OVERWRITTEN_DOCUMENTS = ("keys-",)  # small, never expiring, and changed by every request
ROOM_BYTES = 1024  # an overwritten document's file is this much larger than its JSON
LOCK_STRIPES = 64  # lock files are never deleted (that breaks a lock), so their number is fixed
SWEEP_SECONDS = 60.0
WRITE_RETRY_SECONDS = 5.0  # a failed write costs little, so a freed disk is noticed soon
UPLOAD_CACHE_BYTES = Config().upload_cache_bytes  # UPLOAD_CACHE_MB's default


class FileStateStore(DocumentStore):
    """Documents as JSON files in TEMP_DATA_DIR, each changed under a file lock.

    A write goes to a temporary file that then replaces the document, so a
    worker killed mid-write never leaves it unreadable. A lock is held only to
    read, change and replace, never across network I/O. An expiring document's
    mtime is its expiry time; expired ones are swept away now and then.

    While writes fail, documents change in this process's memory instead (seeded
    from the files, which stay readable), the files are tried again every
    WRITE_RETRY_SECONDS, and the memory is dropped once a write succeeds.
    """

    unhealthy_status = 503  # this instance's own disk: on Render a restart gives it a new one

    def __init__(self, directory: Path, upload_cache_bytes: int = UPLOAD_CACHE_BYTES):
        self.directory = Path(directory)
        (self.directory / "locks").mkdir(parents=True, exist_ok=True)
        self.locks = FileLocks(self.directory / "locks", LOCK_STRIPES)
        self.upload_cache_bytes = upload_cache_bytes
        self.swept = 0.0
        self.fallback = MemoryStateStore(backing=self.read_file)
        self.outage = None  # why writes fail ("ENOSPC"), while they do
        self.retry_at = 0.0
        self.probed = 0.0

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def lock(self, name: str):
        """A context manager holding name's lock stripe across this machine's workers."""
        return self.locks.lock(name)

    def update(self, name, change, ttl=None):
        self.sweep_now_and_then()
        if self.outage and time.monotonic() < self.retry_at:
            return self.fallback.update(name, change, ttl)
        changed = False
        try:
            with self.lock(name):
                doc = self.current(name) or {}
                result, changed = change(doc), True
                self.write(name, json.dumps(doc, ensure_ascii=False).encode(), ttl)
        except OSError as exc:
            self.fail(exc)
            if not changed:
                return self.fallback.update(name, change, ttl)
            self.fallback.put(name, doc, ttl)
            return result
        self.recover()
        return result

    def write(self, name: str, content: bytes, ttl: float | None) -> None:
        """Replace a document with content through a temporary file, removed if it fails;
        a keys document is overwritten in place while it fits its file."""
        if name.startswith(OVERWRITTEN_DOCUMENTS):
            if self.overwrite(name, content):
                return
            content += b" " * ROOM_BYTES  # room to grow: JSON ignores the spaces
        path = self.path(name)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(content)
            if ttl is not None:
                os.utime(temporary, (time.time(), time.time() + ttl))
            os.replace(temporary, path)
        except OSError:
            with suppress(OSError):
                temporary.unlink(missing_ok=True)  # a partial file would hold on to the space
            raise

    def overwrite(self, name: str, content: bytes) -> bool:
        """Write content over the document's file, padded with spaces to its size, under the
        document's lock; False when the file is missing or too small. One pwrite(2) to blocks
        the file already has: it cannot run out of space half-way, a killed process cannot
        stop it half-way, and it costs no rename, which ext4 makes flush the new file (about
        0.7 ms, in every request's rotation turn, under the stripe's lock: issue 13)."""
        try:
            descriptor = os.open(self.path(name), os.O_WRONLY)
        except FileNotFoundError:
            return False
        try:
            size = os.fstat(descriptor).st_size
            if len(content) > size:
                return False
            os.pwrite(descriptor, content.ljust(size), 0)
            return True
        finally:
            os.close(descriptor)

    def read(self, name):
        """A live document; a missing, expired or corrupt one reads as None."""
        self.sweep_now_and_then()
        if name.startswith(OVERWRITTEN_DOCUMENTS):  # a read beside a pwrite could see half of it
            with self.lock(name):
                return self.current(name)
        return self.current(name)

    def current(self, name: str) -> dict | None:
        """While writes fail, this process's newer copy in memory; otherwise the file."""
        return self.fallback.read(name) if self.outage else self.read_file(name)

    def read_file(self, name: str) -> dict | None:
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
        try:
            with self.lock(name):
                existed = self.current(name) is not None
                self.path(name).unlink(missing_ok=True)
        except OSError as exc:
            self.fail(exc)
            existed = self.current(name) is not None
        if self.outage:
            self.fallback.delete(name)
        return existed

    def save_upload(self, file_id, record, ttl):
        """Cache an upload on disk within the upload cache's size; never in memory, where a
        file_id would work on one worker only."""
        self.sweep_now_and_then()
        content = json.dumps(record, ensure_ascii=False).encode()
        with self.lock("upload-cache"):
            if self.cached_uploads()[0] + len(content) > self.upload_cache_bytes:
                self.sweep()
                used, soonest = self.cached_uploads()
                if used + len(content) > self.upload_cache_bytes:
                    raise InsufficientStorage(
                        f"the upload cache is full (UPLOAD_CACHE_MB = "
                        f"{self.upload_cache_bytes / 1024 / 1024:g}): try again later, or send "
                        "the file inline as file_data", retry_after=soonest)
            try:
                self.write(f"upload-{file_id}", content, ttl)
            except OSError as exc:
                self.fail(exc)
                raise InsufficientStorage(f"uploads cannot be stored now ({self.outage}): send "
                                          "the file inline as file_data") from None
        self.recover()

    def cached_uploads(self) -> tuple:
        """(bytes the cached uploads take, seconds until the first of them expires or None)."""
        used, expiries, now = 0, [], time.time()
        for path in self.directory.glob("upload-*.json"):
            with suppress(OSError):
                status = path.stat()
                used += status.st_size
                expiries.append(status.st_mtime - now)
        return used, min((e for e in expiries if e > 0), default=None)

    def fail(self, exc: OSError) -> None:
        """Writes fail: keep state in memory for WRITE_RETRY_SECONDS, saying why once per
        outage (the error's name, never a document), and sweep, which may free the space."""
        self.retry_at = time.monotonic() + WRITE_RETRY_SECONDS
        if self.outage is None:
            self.outage = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            log.error("cannot write the state in %s (%s): rotation, cooldowns and conversations "
                      "are per process, and uploads are refused, until it can (tried again "
                      "every %g s)", self.directory, self.outage, WRITE_RETRY_SECONDS)
        self.sweep_now_and_then(WRITE_RETRY_SECONDS)

    def recover(self) -> None:
        """A write succeeded: the files hold the state again; this process's copies go."""
        if self.outage is not None:
            log.warning("the state in %s can be written again (it could not: %s); what was "
                        "kept in memory meanwhile is dropped", self.directory, self.outage)
            self.outage = None
            self.fallback = MemoryStateStore(backing=self.read_file)

    def health(self):
        """Tries a write, when writes fail and one is due, or at most once a second while they
        work (a disk fills up without a word)."""
        due = self.retry_at if self.outage else self.probed + HEALTH_PROBE_SECONDS
        if time.monotonic() >= due:
            self.probe()
        return f"cannot write: {self.outage}" if self.outage else None

    def probe(self) -> None:
        """Try writing a small temporary file, as a document would be written."""
        self.probed = time.monotonic()
        probe = self.directory / f"health.{os.getpid()}.tmp"
        try:
            probe.write_bytes(b'{"probe": true}')
            probe.unlink()
        except OSError as exc:
            with suppress(OSError):
                probe.unlink(missing_ok=True)
            self.fail(exc)
            return
        self.recover()

    def sweep_now_and_then(self, interval: float = SWEEP_SECONDS) -> None:
        if time.monotonic() - self.swept > interval:
            self.sweep()

    def sweep(self) -> None:
        """Remove expired documents, and temporary files a killed worker left behind."""
        self.swept = time.monotonic()
        self.fallback.forget_expired()
        now = time.time()
        for path in self.directory.iterdir():
            with suppress(OSError):
                expired = path.name.startswith(EXPIRING_DOCUMENTS) and path.stat().st_mtime < now
                stale = path.suffix == ".tmp" and path.stat().st_mtime < now - SWEEP_SECONDS
                if expired or stale:
                    path.unlink()
