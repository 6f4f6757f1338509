"""The operator's routes, behind ADMIN_TOKEN (404 while it is unset, 401 without it): GET
/api/keys (each key's state, why it rests, its usage and last check, named by its last four
characters and, when keys share them, its position: `…abcd-2`), POST
/api/keys/<provider>/<suffix>/reset and .../check, and GET /metrics
(Prometheus, chatbridge/metrics.py). Errors are in the sources' shape, {"error": "<what is
wrong>"}."""

import time

from flask import Blueprint, Response, jsonify

from ..auth import bearer_token, matches
from ..errors import ClientError, NotFound, Unauthorized
from ..keys import KeyPool, billing_mark, invalid_mark, key_status, quota_mark
from ..logs import log
from ..metrics import CONTENT_TYPE
from ..service import current_service
from .common import install_error_handler, no_endpoint
from .source import render_error

bp = Blueprint("admin", __name__)


@bp.get("/api/keys", endpoint="key_status")
def key_status_view():
    """Per provider, each key's entry (key_entries)."""
    pools = current_service().pools
    return jsonify(providers={name: key_entries(pool) for name, pool in pools.items()})


@bp.post("/api/keys/<provider>/<suffix>/reset")
def reset_key(provider: str, suffix: str):
    """End a key's rests, all of them (a rate-limit rest is its group's): {"key": entry}."""
    pool, key = find_key(provider, suffix)
    current_service().store.clear_marks(pool.provider.name, (invalid_mark(key), billing_mark(key),
                                                              quota_mark(key, "")))
    log.info("%s key %s: its rest was ended by hand", pool.provider.name, key.label)
    return jsonify(key=key_entries(pool, key)[0])


@bp.post("/api/keys/<provider>/<suffix>/check")
def check_key(provider: str, suffix: str):
    """Check a key now with a model list (chatbridge/key_checks.py): {"key": entry, "check":
    {"result": "ok" or the failure class, "message": str}}. An ok ends any rest but a rate
    limit's, one for billing too, and its message says that a model list cannot see credit."""
    pool, key = find_key(provider, suffix)
    outcome = current_service().checker.check(pool, key)
    return jsonify(key=key_entries(pool, key)[0], check=outcome)


@bp.get("/metrics")
def metrics():
    """Prometheus' text format, every gunicorn worker's counts added up."""
    return Response(current_service().metrics.render(), content_type=CONTENT_TYPE)


def find_key(provider: str, suffix: str) -> tuple:
    """(pool, key) for a provider's name and a key's label (its last four characters, and
    `-2` … when keys share them: ApiKey.label), `…` optional; else 404 (400 for last four
    characters that several keys share, naming their labels)."""
    pool = current_service().pools.get(provider)
    if pool is None:
        raise NotFound(f"no provider {provider!r} with keys")
    name = suffix.removeprefix("…")
    key = next((k for k in pool.keys if k.label.removeprefix("…") == name), None)
    if key is None:
        twins = [k.label.removeprefix("…") for k in pool.keys if k.twin and k.secret[-4:] == name]
        if twins:
            raise ClientError(f"{len(twins)} {provider!r} keys end in {name!r}: name one as "
                              + " or ".join(twins))
        raise NotFound(f"no {provider!r} key ends in {name!r}")
    return pool, key


def key_entries(pool: KeyPool, only=None) -> list:
    """Each key's entry in GET /api/keys (or only that key's): key_status's fields (key, group,
    state, cooling_until, invalid_until, requests, failures, last_error, last_used, reason),
    its usage (today, days, recent: chatbridge/usage.py) and its last check (checked: {at,
    result, message} or null)."""
    svc, name, now = current_service(), pool.provider.name, time.time()
    keys = [only] if only is not None else pool.keys
    marks, stats = svc.store.peek(name), svc.store.key_stats(name)
    checks = svc.store.checks(name)
    usage = svc.usage.report(name, [key.id for key in keys])
    return [{**key_status(key, marks, stats.get(key.id, {}), now), **usage[key.id],
             "checked": checks.get(key.id)} for key in keys]


def require_admin_token() -> None:
    """Before each admin request: 404 while ADMIN_TOKEN is unset, 401 without it. Only as
    `Authorization: Bearer`, as the README says: the client APIs' other ways (x-api-key, and
    Google's ?key=, which puts the token in URLs, proxy logs and browser history) are not
    taken for the operator's token."""
    admin_token = current_service().config.admin_token
    if not admin_token:
        raise no_endpoint()
    if not matches(bearer_token(), (admin_token,)):
        raise Unauthorized("this needs the admin token: Authorization: Bearer <ADMIN_TOKEN>")


install_error_handler(bp, render_error)
bp.before_request(require_admin_token)
