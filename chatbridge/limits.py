"""Per-client rate limits (RATE_LIMIT) with Flask-Limiter, and the proxies trusted to name a
client's address (TRUSTED_PROXIES).

- The limits count a client's requests to the client APIs (/api/*, /v1/*, /v1beta/*) all
  together; the page, /healthz, /openapi.json, /static, the operator's /api/keys and CORS preflights
  (OPTIONS) are never counted. Unset, nothing is counted.
- The client is its access token (by fingerprint, never the token) when it presents one of
  ACCESS_TOKENS, else its address: a missing or wrong token counts against the address, so
  guessing tokens is limited too.
- The address is the peer of the socket, or with TRUSTED_PROXIES=n the one the n-th proxy
  from us saw: werkzeug's ProxyFix reads X-Forwarded-For from its right-hand end, so entries
  a client writes into it itself are never believed.
- The counts live in the Redis of REDIS_URL when set, shared by every instance; else in each
  worker's memory. While Redis cannot be reached, each worker counts in its memory.
- Over a limit, the request is a RateLimited error (429 with Retry-After: the seconds until
  the window resets), which the error handler of the API that was called renders.
"""

import time
from contextlib import suppress

import redis
from flask import Flask, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from werkzeug.middleware.proxy_fix import ProxyFix

from .auth import matches, presented_token
from .config import Config, fingerprint
from .errors import ClientError
from .service import current_service


class RateLimited(ClientError):
    """429: this client has made as many requests as RATE_LIMIT allows for now."""

    status = 429


def install_rate_limits(app: Flask, config: Config, exempt: tuple = ()) -> None:
    """Trust TRUSTED_PROXIES hops of X-Forwarded-For, and count each client's requests
    against RATE_LIMIT, except those to the blueprints in exempt. Call it after the
    before_request hooks the error handlers need, since the limiter's check raises in its own."""
    if config.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.trusted_proxies)
    if not config.rate_limit:
        return
    limiter = Limiter(
        client_key, application_limits=[config.rate_limit],
        application_limits_exempt_when=lambda: request.method == "OPTIONS",
        strategy="fixed-window", key_prefix="chatbridge", in_memory_fallback_enabled=True,
        storage_uri=storage_uri(config.redis_url),
        storage_options={"socket_timeout": 2, "socket_connect_timeout": 2}
        if config.redis_url else {})
    limiter.init_app(app)
    for blueprint in exempt:
        limiter.exempt(blueprint)
    app.extensions["rate_limits"] = limiter  # the limits hold only a weak reference to it


def storage_uri(redis_url: str) -> str:
    """Where the counts live: REDIS_URL (limits spells a socket path redis+unix://), or memory."""
    if not redis_url:
        return "memory://"
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def client_key() -> str:
    """Whom a request counts against: its valid access token's fingerprint, else its address."""
    tokens = current_service().config.access_tokens
    token = presented_token()
    if tokens and token and matches(token, tokens):
        return "token:" + fingerprint(token)
    return "address:" + (request.remote_addr or "-")


def rate_limited(error: RateLimitExceeded) -> RateLimited:
    """Flask-Limiter's 429 as ours, with the seconds until the breached window resets."""
    breached = current_app.extensions["rate_limits"].current_limit
    retry_after = error.limit.limit.get_expiry()  # the whole window, while its reset is unknown
    if breached is not None:
        with suppress(redis.RedisError):  # Redis went away since the count
            retry_after = breached.window.reset_time - time.time()
    return RateLimited(f"too many requests: at most {error.description} (RATE_LIMIT)",
                       retry_after=retry_after)
