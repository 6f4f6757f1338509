"""An outbound proxy between ChatBridge and its upstreams: HTTP_PROXY / HTTPS_PROXY are
honoured and NO_PROXY bypasses them (chatbridge/transport.py looks them up once per origin).

The proxy is a small forwarding HTTP proxy on 127.0.0.1 that records what passes through."""

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

HI = [{"role": "user", "content": "hi"}]


class ForwardingProxy(BaseHTTPRequestHandler):
    """Forwards an absolute-URI request to its origin and relays the whole answer back."""

    seen: list = []

    def forward(self):
        target = urlsplit(self.path)
        self.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-connection", "connection", "keep-alive")}
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            upstream.request(self.command, target.path + (f"?{target.query}" if target.query else ""),
                             body=body, headers=headers)
            answer = upstream.getresponse()
            content = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = forward

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy():
    ForwardingProxy.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ForwardingProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", ForwardingProxy.seen
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_requests_go_through_the_proxy_that_http_proxy_names(make_app, monkeypatch, proxy, openai):
    url, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", url)
    client = make_app().test_client()
    answer = client.post("/v1/chat/completions", json={"model": "deepseek-v3-671b", "messages": HI})
    assert answer.status_code == 200, answer.json
    assert answer.json["choices"][0]["message"]["content"]
    assert [(method, path.startswith(openai.base_url)) for method, path, _ in seen] == [
        ("POST", True)]
    assert seen[0][2].startswith("Bearer ")  # the key travels in a header, never in the URL
    assert len(openai.requests) == 1


def test_no_proxy_bypasses_the_proxy(make_app, monkeypatch, proxy, openai):
    url, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client = make_app().test_client()
    answer = client.post("/v1/chat/completions", json={"model": "deepseek-v3-671b", "messages": HI})
    assert answer.status_code == 200, answer.json
    assert seen == [] and len(openai.requests) == 1
