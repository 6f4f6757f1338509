"""The operator's routes under /api, behind ADMIN_TOKEN (404 while it is unset): GET
/api/keys, each key's state and counters with only its last four characters. Errors are in
the sources' shape, {"error": "<what is wrong>"}."""

from flask import Blueprint, jsonify

from ..auth import matches, presented_token
from ..errors import Unauthorized
from ..service import current_service
from .common import install_error_handler, no_endpoint
from .source import render_error

bp = Blueprint("admin", __name__)


@bp.get("/api/keys")
def key_status():
    """Per provider, each key's state (ok, cooling with the models and until when, invalid
    until when), requests, failures, last error and last use; never a key."""
    pools = current_service().pools
    return jsonify(providers={name: pool.status() for name, pool in pools.items()})


def require_admin_token() -> None:
    """Before each admin request: 404 while ADMIN_TOKEN is unset, 401 without it."""
    admin_token = current_service().config.admin_token
    if not admin_token:
        raise no_endpoint()
    if not matches(presented_token(), (admin_token,)):
        raise Unauthorized("this needs the admin token: Authorization: Bearer <ADMIN_TOKEN>")


install_error_handler(bp, render_error)
bp.before_request(require_admin_token)
