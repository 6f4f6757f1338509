"""gunicorn reads this file from the directory it starts in, so the start command in
render.yaml (`gunicorn ... app:app`) and its flags stay as they are.

on_starting checks ChatBridge's settings once, in the master, before any worker starts: a bad
setting stops the server with one message, printed last, instead of one traceback per worker
(issue: settings that cannot work stop the server at start). The check runs in a child
process, because the master must not import the app, and with it ssl, before gevent patches
the workers.
"""

import subprocess
import sys

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
try:
    load_config()
except ConfigError as error:
    raise SystemExit(str(error))
"""


def on_starting(server):
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            cwd=server.cfg.chdir, timeout=60)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["the settings check failed"]
        sys.exit(f"ChatBridge cannot start: {lines[-1]}")
