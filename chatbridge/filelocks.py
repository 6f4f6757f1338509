"""Striped locks shared by every worker on one machine, for the file state store.

Each stripe is a lock file held with flock(2) for the few microseconds of a read-change-
replace. The files stay open in each process (opened on first use, again after a fork) and
are never deleted: deleting a lock file breaks the lock for whoever has it open.

Not the filelock package, which the store used before: it opens the lock file, makes its
directory and checks for forks on every acquire, about 170 µs each time on this machine,
which was the largest single cost of a streamed request on the file store (issue 13).

Rules: greenlets and threads of one process take a stripe's in-process lock first (flock
treats one process's descriptor as one owner); the flock is then tried without blocking,
and retried after POLL_SECONDS, so that under gevent a worker waiting for another worker
keeps serving its other requests instead of blocking in the kernel.
"""

import fcntl
import os
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

POLL_SECONDS = 0.001


class FileLocks:
    """`stripes` lock files in `directory`; lock(name) holds the one name hashes to."""

    def __init__(self, directory: Path, stripes: int):
        self.paths = [Path(directory) / f"{n:02d}.lock" for n in range(stripes)]
        self.local = [threading.Lock() for _ in range(stripes)]
        self.descriptors = {}  # stripe -> open descriptor, for the process self.pid
        self.pid = None

    @contextmanager
    def lock(self, name: str):
        """Hold the stripe of name across every process on this machine."""
        stripe = zlib.crc32(name.encode()) % len(self.paths)
        with self.local[stripe]:
            descriptor = self.descriptor(stripe)
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)

    def descriptor(self, stripe: int) -> int:
        """The stripe's lock file, open in this process (a forked child opens its own: a
        descriptor shared with the parent would be one owner for flock)."""
        if self.pid != os.getpid():
            self.descriptors, self.pid = {}, os.getpid()
        if stripe not in self.descriptors:
            self.descriptors[stripe] = os.open(self.paths[stripe], os.O_RDWR | os.O_CREAT, 0o600)
        return self.descriptors[stripe]
