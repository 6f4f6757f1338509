"""HTTP to the upstreams: the one module that uses `requests`.

One pooled session per app. Keys travel in headers, never in a URL; redirects are never
followed (a 3xx is an upstream failure) and no cookie is kept. Streams are read with
the raw stream's read1, so events go out as they arrive (iter_lines holds back a
non-chunked upstream's events); streamed requests ask for no compression, which would make
events arrive in bursts. Network exceptions become UpstreamErrors here
(errors.failure_from_exception).
"""

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import gevent
import requests
import urllib3

from .chat import parse_json
from .errors import UpstreamError, failure_from_exception
from .failures import classify_failure

READ_SIZE = 64 * 1024
DRAIN_SECONDS = 1.0
ERROR_BODY_LIMIT = 64 * 1024


class Transport:
    """A pooled HTTP session with the configured connect and read timeouts (seconds)."""

    def __init__(self, connect_timeout: float, read_timeout: float):
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        # No cookie an upstream sets goes back to it, nor to any other upstream.
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        # The environment's proxies are looked up once per upstream host, not on every request,
        # and no ~/.netrc entry may replace the key's Authorization header.
        self.session.trust_env = False
        self.proxies = {}
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=1000)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def send(self, method: str, url: str, headers: dict, stream: bool,
             **body) -> requests.Response:
        """One upstream HTTP request (body: json= or data=); network errors become UpstreamErrors."""
        if stream:
            headers["Accept-Encoding"] = "identity"  # compressed SSE would arrive in bursts
        try:
            response = self.session.request(method, url, headers=headers, stream=stream, **body,
                                            timeout=self.timeout, allow_redirects=False,
                                            proxies=self.proxies_for(url))
        except requests.RequestException as exc:
            raise failure_from_exception(exc) from None
        if response.is_redirect:  # following it would hand the key and prompt to another host
            response.close()
            raise UpstreamError("server", f"the upstream answered with a redirect (HTTP "
                                          f"{response.status_code}), which is not followed")
        return response


    def proxies_for(self, url: str) -> dict:
        """The proxies HTTP(S)_PROXY and NO_PROXY give for an upstream's host, looked up once."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self.proxies:
            self.proxies[origin] = requests.utils.get_environ_proxies(origin)
        return self.proxies[origin]


def iter_body(response: requests.Response) -> Iterator:
    """Raw bytes from an upstream response as they arrive, network errors made failures."""
    try:
        while True:
            chunk = response.raw.read1(READ_SIZE, decode_content=True)  # a CDN may gzip anyway
            if not chunk:
                return
            yield chunk
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise failure_from_exception(exc) from None


def read_error_body(response: requests.Response) -> Any:
    """The parsed JSON of an upstream error response, read up to a limit; else its text."""
    try:
        body = b"".join(iter_limited(response, ERROR_BODY_LIMIT))
    except UpstreamError:
        body = b""
    text = body.decode("utf-8", errors="replace")
    return parse_json(text) or text[:500]


def iter_limited(response: requests.Response, limit: int) -> Iterator:
    """A response's bytes until at least limit bytes have come."""
    size = 0
    for chunk in iter_body(response):
        size += len(chunk)
        yield chunk
        if size >= limit:
            return


def release_upstream(response: requests.Response) -> None:
    """Put a finished stream's connection back in the pool once the rest of its body (the last
    empty chunk after OpenAI's [DONE], say) has come, within DRAIN_SECONDS; else close it. Runs
    in its own greenlet: a new TCP connection per request would cost more than this."""
    drained = False
    with suppress(Exception), gevent.Timeout(DRAIN_SECONDS, False):
        while response.raw.read1(READ_SIZE, decode_content=True):
            pass
        drained = True
    if drained:
        response.raw.release_conn()
    else:
        close_upstream(response)


def close_upstream(response: requests.Response) -> None:
    """Close an upstream response now, even while another greenlet or thread reads it."""
    with suppress(ValueError, RuntimeError, OSError, AttributeError):
        response.raw.shutdown()  # wakes a reader blocked in recv
    with suppress(ValueError, RuntimeError, OSError):  # "reentrant call" while another reads it
        response.close()


@contextmanager
def opened_stream(response: requests.Response, cancel):
    """A streaming upstream response that answered 200, closed if anything fails while it is
    being opened (a status other than 200 becomes a classified UpstreamError). cancel (a
    relay.Cancel) closes it if the client goes away meanwhile."""
    cancel.track(response)
    try:
        if response.status_code != 200:
            raise classify_failure(response.status_code, read_error_body(response),
                                   response.headers)
        yield response
    except BaseException:
        close_upstream(response)
        raise
