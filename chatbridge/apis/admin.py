"""The operator's routes under /api, behind ADMIN_TOKEN (404 while it is unset): GET
/api/keys, each key's state and counters with only its last four characters. Errors are in
the sources' shape, {"error": "<what is wrong>"}."""

from flask import Blueprint, jsonify

from ..auth import require_admin_token
from ..service import current_service
from .common import install_error_handler
from .source import render_error

bp = Blueprint("admin", __name__)


@bp.get("/api/keys")
def key_status():
    """Per provider, each key's state (ok, cooling with the models and until when, invalid
    until when), requests, failures, last error and last use; never a key."""
    pools = current_service().pools
    return jsonify(providers={name: pool.status() for name, pool in pools.items()})


install_error_handler(bp, render_error)
bp.before_request(require_admin_token)
