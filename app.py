"""ChatBridge's entry point: `gunicorn app:app` in production, `python app.py` to develop.

Everything lives in the chatbridge/ package. The app is built on first use of `app`, not at
import (PEP 562), so importing this module reads no settings and creates nothing.
"""

import sys

from chatbridge import create_app
from chatbridge.errors import ConfigError


def __getattr__(name: str):
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    try:
        app = create_app()
    except ConfigError as error:
        sys.exit(f"ChatBridge cannot start: {error}")  # the message, not a traceback
    app.run(host="0.0.0.0", port=app.extensions["chatbridge"].config.port, threaded=True)
