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
