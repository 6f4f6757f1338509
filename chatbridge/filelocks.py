"""Striped locks shared by every worker on one machine, for the file state store.

Each stripe is a lock file held with flock(2) for the few microseconds of a read-change-
replace. The files stay open in each process (opened on first use, again after a fork) and
are never deleted: deleting a lock file breaks the lock for whoever has it open.

Not the filelock package, which the store used before: it opens the lock file, makes its
directory and checks for forks on every acquire, about 170 µs each time on this machine,
which was the largest single cost of a streamed request on the file store (issue 13).

Rules: greenlets and threads of one process take a stripe's in-process lock first (flock
treats one process's descriptor as one owner); the flock is then tried without blocking.
While another worker holds it, this one waits in short real sleeps for up to SPIN_SECONDS:
a holder is inside a read-change-replace that never yields, so it is done within
microseconds. Yielding to the worker's other requests instead (a gevent sleep) put the wait
at the back of the event loop's queue while this process's other requests queued behind the
in-process lock: under 200 concurrent streams a rotation turn took 100 to 900 ms (issue 13).
Only a longer hold (a slow disk) makes the worker poll every POLL_SECONDS, serving its other
requests meanwhile.
"""

import fcntl
import os
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

from gevent import monkey

POLL_SECONDS = 0.001
SPIN_SECONDS = 0.05  # the longest a worker waits for a stripe without serving other requests
SPIN_PAUSE = 0.00005
real_sleep = monkey.get_original("time", "sleep")  # blocks the process, as gevent's would not


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
            take(descriptor)
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


def take(descriptor: int) -> None:
    """flock the descriptor: waiting in real sleeps first, then polling (see the rules)."""
    spin_until = None
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            spin_until = spin_until or now + SPIN_SECONDS
            if now < spin_until:
                real_sleep(SPIN_PAUSE)
            else:
                time.sleep(POLL_SECONDS)
