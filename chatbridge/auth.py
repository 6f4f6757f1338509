"""Access tokens (ACCESS_TOKENS) for the client APIs; the admin token (ADMIN_TOKEN) is
checked with the same comparison by chatbridge/apis/admin.py.

A client presents its token as `Authorization: Bearer <token>` (OpenAI's SDKs, curl), as
`x-api-key: <token>` (Anthropic's SDKs), or as `x-goog-api-key: <token>` or `?key=<token>`
(Google's SDK). The token stays here: it is never
sent upstream. Tokens are compared in constant time.
"""

import hmac

from flask import g, request

from .config import fingerprint
from .errors import Unauthorized
from .service import current_service


def bearer_token() -> str:
    """The token of an `Authorization: Bearer <token>` header, or ""."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def presented_token() -> str:
    """The token a client sent: as a Bearer token (OpenAI style), x-api-key (Anthropic's) or
    x-goog-api-key / key=."""
    if bearer_token():
        return bearer_token()
    if request.headers.get("x-api-key", "").strip():
        return request.headers["x-api-key"].strip()
    return request.headers.get("x-goog-api-key", "") or request.args.get("key", "")


def google_auth() -> bool:
    """Whether the client authenticates the Google way (x-goog-api-key, or a key= parameter)."""
    return "x-goog-api-key" in request.headers or "key" in request.args


def matches(token: str, expected: tuple) -> bool:
    """Whether a token is one of the expected ones, compared in constant time."""
    found = False
    for candidate in expected:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def require_access_token() -> None:
    """Before each request of a client API: with ACCESS_TOKENS set, one of them is needed
    (401 otherwise); g.owner becomes its fingerprint, which owns chats and uploads."""
    tokens = current_service().config.access_tokens
    if not tokens or request.method == "OPTIONS":  # CORS preflights carry no token
        return
    token = presented_token()
    if not matches(token, tokens):
        raise Unauthorized("missing or wrong access token: send it as Authorization: "
                           "Bearer <token>")
    g.owner = fingerprint(token)
