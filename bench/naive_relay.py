"""The baseline of issue 13: a naive relay that does nothing but pass bytes on.

Flask, `requests.post(stream=True)` and `iter_content`: no parsing, no key pool, no connection
pooling (a new connection upstream per request). The benchmark serves it with the render.yaml
gunicorn command from bench/ (`... naive_relay:app`), with NAIVE_OPENAI_URL and
NAIVE_GEMINI_URL pointing at the fakes. Paths under /v1beta go to Gemini, the rest to the
OpenAI-compatible base.
"""

import os

import requests
from flask import Flask, Response, request

app = Flask(__name__)
OPENAI_URL = os.environ.get("NAIVE_OPENAI_URL", "")
GEMINI_URL = os.environ.get("NAIVE_GEMINI_URL", "")
KEY = "naive-relay-key"


@app.get("/healthz")
def healthz():
    """Say the relay is up."""
    return "ok"


@app.post("/<path:path>")
def relay(path):
    """Forward the body upstream and stream the answer back as it arrives."""
    if path.startswith("v1beta/"):
        url, headers = f"{GEMINI_URL}/{path.removeprefix('v1beta/')}", {"x-goog-api-key": KEY}
    else:
        url, headers = f"{OPENAI_URL}/{path}", {"Authorization": f"Bearer {KEY}"}
    upstream = requests.post(url, params=request.args, data=request.get_data(), stream=True,
                             headers={**headers, "Content-Type": "application/json"}, timeout=(10, 300))

    def body():
        try:
            yield from upstream.iter_content(chunk_size=None)
        finally:
            upstream.close()

    return Response(body(), status=upstream.status_code, content_type=upstream.headers.get("Content-Type"))
