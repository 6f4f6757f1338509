"""Prometheus metrics, made with the official prometheus_client (issue 12's names and labels).

- chatbridge_requests_total{api, provider, outcome}: api is source_a, source_b, ui_stream,
  openai, gemini, anthropic or responses (the request's shape), or anthropic_count_tokens
  (POST /v1/messages/count_tokens, which asks for no message); outcome ok, client_error,
  rate_limited, upstream_error or disconnected.
- chatbridge_upstream_attempts_total{provider, key, result}: result ok or the failure class
  (chatbridge/usage.py FAILURE_CLASSES); a failure after an attempt's first text is not a
  second attempt, and counts only in the request's outcome.
- chatbridge_time_to_first_token_seconds{provider}, chatbridge_request_duration_seconds{api}:
  histograms.
- chatbridge_tokens_total{provider, key, kind}: input and output tokens from the upstream's usage.
- chatbridge_keys{provider, state}: keys ok, cooling and invalid, read from the shared state at
  each scrape.
- chatbridge_open_streams: responses streaming now.
A key appears only as its last four characters.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR to a fresh directory before
the workers fork and marks dead workers there, and every worker's counts are added up at each
scrape (prometheus_client's multiprocess mode). Without it (`python app.py`, the tests' app in
one process) the metrics are this process's, in a registry of the app's own.
"""

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from .logs import RequestLog

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
APIS = {"A": "source_a", "B": "source_b", "ui": "ui_stream", "v1": "openai", "native": "gemini",
        "anthropic": "anthropic", "responses": "responses"}
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# a chat request refused before its shape was read counts under its route's API
ENDPOINT_APIS = {"openai.chat_completions": "openai", "gemini.gemini_native": "gemini",
                 "source.chat": "source_a", "anthropic.messages": "anthropic",
                 "responses.create_response": "responses"}
# operations that share their API's shape but are no chat: an api of their own, so they swell
# neither its request counts nor its durations
OPERATION_APIS = {"anthropic.count_tokens": "anthropic_count_tokens"}
KEY_STATES = ("ok", "cooling", "invalid")
CONTENT_TYPE = CONTENT_TYPE_LATEST


def key_label(key) -> str:
    """What a metric may show of a key: its last four characters."""
    return key.secret[-4:]


def api_of(shape: str, endpoint: str | None) -> str | None:
    """The api label of a request: its operation's (OPERATION_APIS), its shape's, or for a chat
    request refused before its shape was known, its route's; None for requests that are no
    chat (uploads, model lists, pages)."""
    endpoint = endpoint or ""
    return OPERATION_APIS.get(endpoint) or APIS.get(shape) or ENDPOINT_APIS.get(endpoint)


def outcome_of(record: RequestLog, status: int) -> str:
    """A finished request's outcome label, from its status (for a stream that ended with an
    error event, that error's) and its log line's outcome."""
    status = record.error_status or status
    if record.outcome == "client disconnected" or status == 499:
        return "disconnected"
    if status == 429:
        return "rate_limited"
    if 400 <= status < 500:
        return "client_error"
    if status >= 500 or record.outcome != "ok":
        return "upstream_error"  # a stream that ended with an error event counts here too
    return "ok"


class KeyStates:
    """A collector: chatbridge_keys{provider, state}, counted from the pools at scrape time."""

    def __init__(self, pools: dict):
        self.pools = pools

    def collect(self):
        family = GaugeMetricFamily("chatbridge_keys", "Keys by state: ok, cooling, invalid",
                                   labels=["provider", "state"])
        for name, pool in self.pools.items():
            states = [entry["state"] for entry in pool.status()]
            for state in KEY_STATES:
                family.add_metric([name, state], states.count(state))
        yield family


class Metrics:
    """The app's metrics; render() is the text GET /metrics answers."""

    def __init__(self, pools: dict):
        self.registry = CollectorRegistry()  # the app's own, so two apps in a process never clash
        self.key_states = KeyStates(pools)
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        if not self.multiprocess:
            self.registry.register(self.key_states)
        self.requests = Counter("chatbridge_requests", "Client requests by API and outcome",
                                ["api", "provider", "outcome"], registry=self.registry)
        self.attempts = Counter("chatbridge_upstream_attempts", "Upstream attempts per key",
                                ["provider", "key", "result"], registry=self.registry)
        self.ttft = Histogram("chatbridge_time_to_first_token_seconds",
                              "Seconds from a request to its first token", ["provider"],
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.duration = Histogram("chatbridge_request_duration_seconds",
                                  "Seconds from a request to its last byte", ["api"],
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.tokens = Counter("chatbridge_tokens", "Tokens by the upstream's usage",
                              ["provider", "key", "kind"], registry=self.registry)
        self.children = {}
        self.open_streams = Gauge("chatbridge_open_streams", "Responses streaming now",
                                  registry=self.registry, multiprocess_mode="livesum")

    def child(self, metric, *labels):
        """metric.labels(*labels), looked up once: prometheus_client checks labels each time."""
        child = self.children.get((metric, labels))
        if child is None:
            child = self.children[metric, labels] = metric.labels(*labels)
        return child

    def attempt(self, provider: str, key, result: str) -> None:
        self.child(self.attempts, provider, key_label(key), result).inc()

    def request_done(self, record: RequestLog, status: int, api: str | None) -> None:
        """Count a finished chat request (api_of); others are not counted."""
        if api is None:
            return
        provider = record.provider if record.provider != "-" else "none"
        self.child(self.requests, api, provider, outcome_of(record, status)).inc()
        self.child(self.duration, api).observe(time.monotonic() - record.started)
        if record.first_token is not None:
            self.child(self.ttft, record.provider).observe(record.first_token - record.started)
        if record.usage and record.key != "-":
            for kind, field in (("input", "prompt_tokens"), ("output", "completion_tokens")):
                count = record.usage.get(field)
                if isinstance(count, int) and count > 0:
                    self.child(self.tokens, record.provider, record.key[-4:], kind).inc(count)

    def render(self) -> bytes:
        """The metrics in Prometheus' text format: every worker's, under gunicorn."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(self.key_states)
        return generate_latest(registry)
