"""The small exception tree, and the one place upstream failures are classified.

    ChatBridgeError           a failure the client is told about, in its API's error format
    ├── ClientError           the request's own fault: 400 (or 405, 413, 415 by its status)
    │   ├── Unauthorized      401: a missing or wrong access token
    │   ├── NotFound          404: no such endpoint, chat or file_id
    │   └── ModelNotFound     no provider serves the model: 400 on /api (as the sources have
    │                         it), 404 `model_not_found` on the gateways
    ├── NoKeyAvailable        429 + Retry-After while every key rests; 503 when every key was
    │                         rejected as invalid
    ├── InsufficientStorage   507: the upload cache is full (UPLOAD_CACHE_MB) or its disk is
    └── UpstreamError         an upstream answer that is not a usable answer, with its kind
    ClientGone                the client went away, so the upstream work stopped
    ConfigError               settings the service cannot start with

UpstreamError.kind says whose fault a failure is (chatbridge/failures.py decides it from an
upstream's status and body, and lists the rules): the key's (rate_limit, invalid_key,
billing), the upstream's (server, broken, unreachable), the request's (rejected), or the
model's (unusable). Every kind but rejected and unusable fails over to the next key.

Each client API renders these in its own format (chatbridge/apis/); urllib3
exceptions become UpstreamErrors only in failure_from_exception.
"""

import math

import urllib3


class ConfigError(Exception):
    """The environment holds settings the service cannot run with."""


class ClientGone(Exception):
    """The client went away, so the upstream work stopped."""


class ChatBridgeError(Exception):
    """A failure the client is told about. status is the HTTP status of the sources' /api;
    the gateway APIs map some classes to their own (see each module in chatbridge/apis/)."""

    status = 500

    def __init__(self, message: str, status: int | None = None,
                 retry_after: float | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.retry_after = retry_after  # seconds
        self.extra_headers = headers or {}

    def headers(self) -> dict:
        """Headers the error response carries: Retry-After in whole seconds, at least 1."""
        if self.retry_after is None:
            return dict(self.extra_headers)
        return {**self.extra_headers, "Retry-After": str(max(1, math.ceil(self.retry_after)))}


class ClientError(ChatBridgeError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class NotFound(ClientError):
    status = 404


class ModelNotFound(ClientError):
    status = 400


class NoKeyAvailable(ChatBridgeError):
    status = 429


class InsufficientStorage(ChatBridgeError):
    """An upload that cannot be cached now; Retry-After when a cached one expires soon."""

    status = 507


class UpstreamError(ChatBridgeError):
    """An upstream answer that is not a usable answer, classified for failover (kinds above).

    upstream_status is the upstream's own HTTP status, when it answered with one; body is
    its error body as it came (for Gemini's passed-through API); per_day marks a 429 for a
    per-day quota. status is the /api status: 503 when unreachable, else 500.
    """

    def __init__(self, kind: str, message: str, upstream_status: int | None = None,
                 retry_after: float | None = None, per_day: bool = False,
                 body: bytes | None = None, status: int | None = None):
        super().__init__(message, status or (503 if kind == "unreachable" else 500), retry_after)
        self.kind = kind
        self.upstream_status = upstream_status
        self.per_day = per_day
        self.body = body

    @property
    def failover(self) -> bool:
        """Whether another key may do better: not for the request's own fault, nor for an
        answer the model made unusable."""
        return self.kind not in ("rejected", "unusable")

    @property
    def blames_key(self) -> bool:
        """Whether the failure counts against the key that was used."""
        return self.failover

    @property
    def rests_key(self) -> bool:
        """Whether the key rests for every model (invalid, disabled, out of credit)."""
        return self.kind in ("invalid_key", "billing")


def failure_from_exception(exc: BaseException) -> UpstreamError:
    """Turn urllib3's and the socket's network exceptions into one UpstreamError."""
    if isinstance(exc, (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ProxyError,
                        ConnectionRefusedError)):
        return UpstreamError("unreachable", "could not connect to the upstream")
    if isinstance(exc, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return UpstreamError("broken", "the upstream stopped answering (read timeout)")
    return UpstreamError("broken", "the connection to the upstream broke")
