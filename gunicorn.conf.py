"""gunicorn reads this file from the directory it starts in, so the start command in
render.yaml (`gunicorn ... app:app`) and its flags stay as they are.

on_starting also gives prometheus_client's multiprocess mode a fresh directory
(PROMETHEUS_MULTIPROC_DIR) before any worker forks, child_exit marks a dead worker's live
gauges there, and worker_exit adds a worker's last usage counts to the state store
(chatbridge/metrics.py, chatbridge/usage.py).

on_starting checks ChatBridge's settings once, in the master, before any worker starts: a bad
setting stops the server with one message, printed last, instead of one traceback per worker
(issue: settings that cannot work stop the server at start). The check runs in a child
process, because the master must not import the app, and with it ssl, before gevent patches
the workers.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

# Limits set deliberately rather than left to defaults (issue 11, slow clients). The start
# command's own flags (--workers, --worker-class, --bind, --timeout) still win over these.
# In production Render's proxy sits in front and absorbs slow clients; ChatBridge itself also
# gives a request body REQUEST_BODY_SECONDS to arrive (chatbridge/web.py).
worker_connections = 1000  # open connections per gevent worker
limit_request_line = 8190  # bytes of a request line
limit_request_fields = 100  # header fields
limit_request_field_size = 8190  # bytes of one header field
keepalive = 5  # seconds an idle keep-alive connection stays open
graceful_timeout = 30  # seconds streams in flight get to finish on SIGTERM (a redeploy)

CHECK = """
from chatbridge.config import load_config
from chatbridge.errors import ConfigError
from chatbridge.upstreams import check_aliases
try:
    check_aliases(load_config())
except ConfigError as error:
    raise SystemExit(str(error))
"""


def on_starting(server):
    fresh_metrics_directory()
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            cwd=server.cfg.chdir, timeout=60)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["the settings check failed"]
        sys.exit(f"ChatBridge cannot start: {lines[-1]}")


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
made_directory = []  # the directory on_starting made, removed again on_exit


def fresh_metrics_directory():
    """An empty PROMETHEUS_MULTIPROC_DIR for this server: the operator's, emptied, or a new
    temporary one; counts of an earlier server would otherwise be added to this one's."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)
    else:
        directory = tempfile.mkdtemp(prefix="chatbridge-metrics-")
        made_directory.append(directory)
        os.environ[MULTIPROCESS_DIR] = directory  # the workers inherit it


def child_exit(server, worker):
    """A dead worker's live gauges (open streams) stop counting. This is what
    prometheus_client.multiprocess.mark_process_dead does; importing prometheus_client here
    would import ssl into the master before gevent patches the workers."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if directory:
        for path in glob.glob(os.path.join(directory, f"gauge_live*_{worker.pid}.db")):
            os.remove(path)


def worker_exit(server, worker):
    """In the worker that stops: add its last usage counts to the state store."""
    service = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("chatbridge")
    if service is not None:
        service.usage.flush()


def on_exit(server):
    for directory in made_directory:
        shutil.rmtree(directory, ignore_errors=True)
