"""The app's long-lived parts, built once by create_app and shared by every request: the
providers, their key pools, the state store, conversations and the upstream HTTP session.

It answers a ChatRequest from whichever client API: reserve keys, then stream or complete
the answer with failover (keys.py), or from a provider that needs no key.
"""

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from flask import current_app, has_request_context, request

from .chat import ChatRequest
from .config import ECHO_MODEL, Config
from .conversations import Conversations
from .errors import ChatBridgeError, UpstreamError
from .key_checks import KeyChecker
from .keys import KeyPlan, KeyPool
from .logs import RequestLog, log
from .metrics import Metrics
from .redaction import Redactor
from .relay import Answer, Cancel, relay
from .sse import StreamWriter
from .state import open_store
from .transport import Transport
from .upstreams import Registry
from .upstreams.base import WholeAnswer
from .usage import UsageBook, failure_class

MODEL_LIST_SECONDS = 600.0  # how long an upstream's model list is cached
FAILED_LIST_SECONDS = 60.0  # a failed one is tried again sooner


def current_service() -> "Service":
    """The Service of the app handling this request."""
    return current_app.extensions["chatbridge"]


class Service:
    """Everything a request needs beyond itself, made from one Config."""

    def __init__(self, config: Config):
        self.config = config
        self.store = open_store(config)
        self.transport = Transport(config.connect_timeout, config.read_timeout,
                                   config.ping_seconds)
        self.providers = Registry(config, self.transport)
        self.redactor = Redactor(config.secrets, config.key_secrets)
        self.pools = {p.name: KeyPool(p, self.store, self.redactor, config.key_wait_seconds)
                      for p in self.providers.keyed()}
        self.conversations = Conversations(self.store, config)
        self.models_cache = {}
        self.watch_keys()

    def watch_keys(self) -> None:
        """The operator's view (issue 12): metrics, per-key usage and key health checks."""
        self.metrics = Metrics(self.pools)
        self.usage = UsageBook(self.store, {p.name: p.quota_zone for p in self.providers.keyed()})
        self.checker = KeyChecker(self.pools, self.store, self.config.key_check_minutes)
        for name, pool in self.pools.items():
            pool.observe = partial(self.attempt_done, name)

    def attempt_done(self, provider: str, key, failure: UpstreamError | None,
                     new_attempt: bool) -> None:
        """Count an upstream attempt in the metrics and the key's usage (in memory)."""
        result = failure_class(failure) if failure is not None else "ok"
        self.usage.attempt(provider, key.id, result, new_attempt)
        if new_attempt:
            self.metrics.attempt(provider, key, result)

    def request_done(self, record: RequestLog, status: int, api: str | None) -> None:
        """Count a finished request in the metrics (api: metrics.api_of), and its tokens in its
        key's usage."""
        self.metrics.request_done(record, status, api)
        if record.usage and record.key_id:
            self.usage.tokens(record.provider, record.key_id, record.usage)

    def resume(self, chat: ChatRequest, owner: str) -> None:
        """Put a chat_id conversation's stored turns first, and check its files again."""
        self.conversations.resume(chat, owner)
        self.providers.check_files(chat.provider, chat.turns)

    def reserve(self, chat: ChatRequest) -> KeyPlan | None:
        """The keys this request may try (None for a provider that needs none); else
        NoKeyAvailable."""
        pool = self.pools.get(chat.provider)
        return pool.reserve(chat.model) if pool else None

    def failover(self, chat: ChatRequest, plan: KeyPlan, attempt: Callable, cancel: Cancel,
                 record: RequestLog) -> Any:
        """attempt(key) with the planned keys in turn until one gives a usable answer; a client
        that leaves meanwhile cancels it."""
        with cancel.client_watch(request.environ if has_request_context() else {}):
            return self.pools[chat.provider].failover(plan, chat.model, attempt, cancel, record)

    def stream_answer(self, chat: ChatRequest, plan: KeyPlan | None, cancel: Cancel,
                      record: RequestLog) -> Answer:
        """The answer to stream: from a keyless provider, or from the first key that works."""
        provider = self.providers[chat.provider]
        if plan is None:
            return Answer([], provider.answer(chat))

        def attempt(key):
            answer = provider.open_stream(chat, key, cancel)
            answer.on_failure = lambda failure: self.failed_midway(chat, key, failure, cancel)
            return answer
        return self.failover(chat, plan, attempt, cancel, record)

    def failed_midway(self, chat: ChatRequest, key, failure: UpstreamError, cancel: Cancel) -> None:
        """After content went out: make the message public, and rest the key if it asks; a
        stream closed because its client left is no failure of the key."""
        failure.message = self.redactor.public_text(failure.message)
        if not cancel.cancelled:
            self.pools[chat.provider].note_attempt(key, chat.model, failure, new_attempt=False)
            self.pools[chat.provider].observe(key, failure, False)

    def complete(self, chat: ChatRequest, plan: KeyPlan | None, cancel: Cancel,
                 record: RequestLog) -> WholeAnswer:
        """A whole answer."""
        provider = self.providers[chat.provider]
        if plan is None:
            return provider.fetch_answer(chat, None, cancel)
        answer = self.failover(chat, plan, lambda key: provider.fetch_answer(chat, key, cancel),
                               cancel, record)
        record.usage = next((d.value for d in answer.deltas if d.kind == "usage"), None)
        return answer

    def count_tokens(self, chat: ChatRequest, record: RequestLog | None = None) -> int:
        """The input tokens chat would cost: counted by an upstream that can (through the key
        pool, with failover), else estimated (chatbridge.upstreams.base.estimate_tokens)."""
        provider, cancel = self.providers[chat.provider], Cancel()
        if not (provider.needs_keys and provider.counts_tokens):
            return provider.count_tokens(chat, None, cancel)
        return self.failover(chat, self.reserve(chat),
                             lambda key: provider.count_tokens(chat, key, cancel), cancel,
                             record or RequestLog())

    def relay(self, source: Iterator, writer: StreamWriter, record: RequestLog, cancel: Cancel,
              on_success: Callable | None = None) -> Iterator:
        """The bytes of a streamed answer in writer's protocol (relay.relay)."""
        return relay(source, writer, record, cancel, self.config.ping_seconds, on_success)

    def model_list(self) -> list:
        """(name, owned_by) of echo, the models each keyed provider offers, named so that they
        route back to their provider, then the MODEL_ALIASES names without globs whose model
        is available (owned by that model's provider)."""
        models = [(ECHO_MODEL, "chatbridge")]
        for provider in self.providers.keyed():
            if provider.keys:
                models += [(self.providers.listed_name(provider, m), provider.owned_by)
                           for m in self.upstream_models(provider)]
        models += [(alias, provider.owned_by) for alias, provider in self.providers.alias_entries()]
        # an upstream's name that an alias sends to a provider without keys would be refused
        return [(name, owner) for name, owner in dict(models).items()
                if self.providers.answers(name)]

    def upstream_models(self, provider) -> list:
        """An upstream's model names, cached for 10 minutes; its fallback model if it fails."""
        expires, names = self.models_cache.get(provider.name, (0.0, []))
        if expires > time.monotonic():
            return names
        chat = ChatRequest(shape="models", provider=provider.name, model="*", turns=[])
        lifetime, cancel = MODEL_LIST_SECONDS, Cancel()
        try:
            names = self.failover(chat, self.reserve(chat),
                                  lambda key: provider.list_models(key, cancel), cancel,
                                  RequestLog())
        except ChatBridgeError as exc:
            log.warning("could not list the %s models (%s); offering the default", provider.name,
                        exc.message)
            names, lifetime = [self.providers.fallback_model(provider)], FAILED_LIST_SECONDS
        self.models_cache[provider.name] = (time.monotonic() + lifetime, names)
        self.providers.listed[provider.name] = names  # for the unknown-model errors
        return names
