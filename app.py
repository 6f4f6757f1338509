"""ChatBridge's entry point: `gunicorn app:app` in production, `python app.py` to develop.

Everything lives in the chatbridge/ package. The app is built on first use of `app`, not at
import (PEP 562), so importing this module reads no settings and creates nothing.
"""

import sys

from chatbridge import create_app
from chatbridge.errors import ConfigError
from chatbridge.logs import DevRequestHandler, redact_access_log


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
    service = app.extensions["chatbridge"]
    redact_access_log(service.redactor)
    app.run(host=service.config.host, port=service.config.port, threaded=True,
            request_handler=DevRequestHandler)
