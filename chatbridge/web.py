"""The Flask app: create_app, the hooks every request passes, and the chat page.

create_app(config) builds everything (nothing happens at import): it reads the settings
unless given a Config, sets up logging, opens the state store, registers one blueprint per
client API (chatbridge/apis/), limits each client's requests (chatbridge/limits.py) and says
once per server what is configured. Every response
gets nosniff and no-referrer; the page also gets a strict Content-Security-Policy (its own
scripts and styles only). One log line per request, written when its body has been sent, when
the request is also counted in the metrics and its key's usage (chatbridge/metrics.py, usage.py);
each worker starts its key re-checks on its first request (chatbridge/key_checks.py).
"""

import logging
import os
import re
import sys
import uuid
from pathlib import Path

import gevent
from flask import Blueprint, Flask, Response, current_app, g, jsonify, render_template, request
from gevent import monkey
from flask_cors import CORS
from werkzeug.routing import PathConverter

from .apis import BLUEPRINTS, admin, openapi, render_default_error
from .apis.common import install_error_handler
from .config import PROJECT_DIR, Config, load_config
from .errors import ClientError
from .limits import install_rate_limits
from .logs import RequestLog, log, setup_logging
from .metrics import api_of
from .service import Service, current_service

PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
               "form-action 'self'")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a client's own X-Request-ID, if sane
GREETING = {"fa": "چتبات API آماده است", "en": "The chatbot API is ready"}

page = Blueprint("page", __name__)


class AnyPath(PathConverter):
    """werkzeug's <path:...>, also across an encoded newline (%0A), so an API's catch-all
    still answers such a URL in that API's error format."""

    regex = "(?s:[^/].*?)"


def create_app(config: Config | None = None) -> Flask:
    """Build the Flask app from the environment's settings, or from the Config given (tests)."""
    config = config or load_config()
    setup_logging(config.log_language)
    app = Flask(__name__, root_path=str(PROJECT_DIR))  # templates/ and static/ beside app.py
    app.json.ensure_ascii = False
    app.url_map.converters["path"] = AnyPath
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes * 4 // 3 + 1024 * 1024
    app.extensions["chatbridge"] = Service(config)
    CORS(app, origins=list(config.cors_origins), expose_headers=["Retry-After", "X-Request-ID"])
    app.register_blueprint(page)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    install_error_handler(app, render_default_error)
    app.before_request(start_record)
    app.before_request(read_body_in_time)
    install_rate_limits(app, config, exempt=(page, admin.bp, openapi.bp))
    app.after_request(secure_headers)
    app.after_request(log_when_done)
    app.before_request(start_key_checks)
    app.after_request(count_when_done)
    announce(app.extensions["chatbridge"])
    return app


@page.get("/")
def index():
    """The chat page for browsers; a JSON greeting (in Persian, as the source had it, and in
    English) for everything else."""
    config = current_service().config
    if any(kind in ("text/html", "application/xhtml+xml") for kind, _ in request.accept_mimetypes):
        return render_template("index.html", default_model=config.default_model,
                               access_tokens=bool(config.access_tokens))
    return jsonify(message=GREETING["fa"], message_en=GREETING["en"], service="ChatBridge",
                   providers=key_counts(), default_model=config.default_model)


@page.get("/admin")
def admin_page():
    """The operator's page (templates/admin.html): it holds no data, so it needs no token;
    its script calls the admin API (chatbridge/apis/admin.py) with ADMIN_TOKEN."""
    return render_template("admin.html")


@page.get("/healthz")
def healthz():
    """{"status": "ok", "providers": {name: number of keys}}; never a key. While the state store
    cannot keep the state, "degraded" with why in "state", and the store's unhealthy status
    (503 for this instance's own disk, so its platform takes it out of rotation)."""
    store = current_service().store
    problem = store.health()
    if problem:
        return jsonify(status="degraded", providers=key_counts(), state=problem), \
            store.unhealthy_status
    return jsonify(status="ok", providers=key_counts())


def key_counts() -> dict:
    return {p.name: len(p.keys) for p in current_service().providers.keyed()}


def start_record():
    sent = request.headers.get("X-Request-ID", "")
    request_id = sent if REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
    g.chat_log = RequestLog(client=request.remote_addr or "-", request_id=request_id)
    g.owner = ""  # the access token's fingerprint, set by auth.require_access_token


def read_body_in_time() -> None:
    """Read a request's body (kept for the view) within REQUEST_BODY_SECONDS, else 408: a
    client that sends its headers and then a byte now and then must not hold a connection and
    its greenlet for long (under gevent, whose timers can interrupt a read). A chunked body,
    which names no length, is cut at the limit by werkzeug: that is a 413 too."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    config = current_service().config
    too_slow = ClientError(f"the request body did not arrive within {config.request_body_seconds:g}"
                           " s (REQUEST_BODY_SECONDS)", 408)
    with gevent.Timeout(config.request_body_seconds if monkey.is_module_patched("socket") else None,
                        too_slow):
        data = request.get_data(cache=True)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit and len(data) >= limit:
        raise ClientError(f"the request body is larger than the {config.max_upload_mb:g} MB file "
                          "limit allows", 413)


def secure_headers(response: Response) -> Response:
    """No sniffing and no referrer anywhere; the page may run only its own scripts and styles."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


def log_when_done(response: Response) -> Response:
    """Log one line per request once its body has been sent (streams included). The line is
    masked like everything else that leaves: its path, model and outcome are the client's own
    text, and a key pasted into a model name reached the log whole (found by trying)."""
    record, method, path = g.chat_log, request.method, request.path
    response.headers["X-Request-ID"] = record.request_id
    level = logging.DEBUG if path == "/healthz" else logging.INFO
    redact = current_service().redactor.redact
    response.call_on_close(lambda: log.log(level, redact(record.line(method, path,
                                                                     response.status_code))))
    return response


def start_key_checks() -> None:
    """Start this worker's key re-checks on its first request (chatbridge/key_checks.py)."""
    current_service().checker.start()


def count_when_done(response: Response) -> Response:
    """Count a request in the metrics and its key's usage once its body has been sent, and a
    stream among the open ones while it is being sent."""
    service, record = current_service(), g.chat_log
    api = api_of(record.shape, request.endpoint)
    streaming = response.is_streamed and response.mimetype == "text/event-stream"
    if streaming:
        service.metrics.open_streams.inc()
    response.call_on_close(lambda: request_done(service, record, response.status_code, api,
                                                streaming))
    return response


def request_done(service: Service, record: RequestLog, status: int, api: str | None,
                 streaming: bool) -> None:
    if streaming:
        service.metrics.open_streams.dec()
    service.request_done(record, status, api)


def announce(service: Service) -> None:
    """Say once per server (not once per worker) what is configured and what is missing or open."""
    config = service.config
    master = gunicorn_master()
    if master and not service.store.claim(f"announced-{master}"):
        return
    counts = {p.name: len(p.keys) for p in service.providers.keyed()}
    if not any(counts.values()):
        log.warning("no API keys configured (%s): only the built-in 'echo' model is available",
                    ", ".join(p.key_variable for p in service.providers.keyed()))
    else:
        log.info("keys loaded: %s; default model %s",
                 " ".join(f"{name}={count}" for name, count in counts.items()), config.default_model)
    if "*" in config.cors_origins:
        log.warning("CORS allows every origin; in production set CORS_ORIGINS to your "
                    "frontend's origins")
    if not config.access_tokens:
        log.warning("ACCESS_TOKENS is not set: /api is open to anyone who can reach it")
    if config.rate_limit:
        log.info("rate limit per client: %s, counted %s", config.rate_limit,
                 "in Redis (REDIS_URL)" if config.redis_url else "by each worker")
    log.info("shared state: %s", "Redis (REDIS_URL)" if config.redis_url else
             f"files in {config.temp_data_dir}")


def gunicorn_master() -> str | None:
    """Names the gunicorn master of this worker by pid and start time; None outside gunicorn."""
    if "gunicorn.arbiter" not in sys.modules:
        return None
    parent = os.getppid()
    try:  # field 22 of /proc/PID/stat; the start time tells apart masters that reuse a pid
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return f"{parent}-{started}"
