"""The upstream providers and the registry that picks one for a model name.

Routing a model name: `echo` is built in; a `gemini/` or `zju/` prefix picks that provider
(and is stripped: `zju/qwen3` sends `qwen3`); otherwise the first provider in PROVIDERS that
claims the name serves it (names starting with gemini or gemma go to Gemini, every other
name to the OpenAI-compatible upstream).

A new provider is one module beside these (a Provider subclass, chatbridge/upstreams/base.py)
and one line in PROVIDERS, plus its settings in chatbridge/config.py.
"""

from ..config import Config
from ..errors import ClientError, ModelNotFound
from ..transport import Transport
from .base import Provider
from .echo import EchoProvider
from .gemini import GeminiProvider, NativeCall
from .openai_compat import OpenAICompatProvider

# In routing order: the last one claims every name the others do not.
PROVIDERS = (EchoProvider, GeminiProvider, OpenAICompatProvider)

__all__ = ["PROVIDERS", "NativeCall", "Provider", "Registry"]


class Registry:
    """The configured providers by name."""

    def __init__(self, config: Config, transport: Transport):
        self.providers = {cls.name: cls.from_config(config, transport) for cls in PROVIDERS}
        self.default_model = config.default_model

    def __getitem__(self, name: str) -> Provider:
        return self.providers[name]

    def keyed(self) -> list:
        """The providers that answer with keys from a pool, in registry order."""
        return [p for p in self.providers.values() if p.needs_keys]

    def route(self, name: str) -> tuple:
        """The provider a model name routes to, and the name without an explicit prefix."""
        prefix, _, rest = name.partition("/")
        if rest and prefix in self.providers and self.providers[prefix].needs_keys:
            return self.providers[prefix], rest
        return next(p for p in self.providers.values() if p.claims(name)), name

    def resolve(self, name: str | None) -> tuple:
        """(provider name, model) for a requested model or the default; ModelNotFound when
        its provider has no keys."""
        provider, model = self.route((name or self.default_model).strip())
        if provider.needs_keys and not provider.keys:
            raise ModelNotFound(f"model {model!r} is served by {provider.display_name}, "
                                f"but {provider.key_variable} is not set")
        return provider.name, model

    def check_files(self, provider: str, turns: list) -> None:
        """A 400 for files a provider cannot take, before contacting it."""
        for file in (f for turn in turns for f in turn.files):
            refusal = self.providers[provider].file_refusal(file.mime_type)
            if refusal:
                raise ClientError(refusal)

    def listed_name(self, provider: Provider, model: str) -> str:
        """A model name as /v1/models lists it: prefixed unless it routes back on its own."""
        return model if self.route(model)[0] is provider else f"{provider.name}/{model}"

    def fallback_model(self, provider: Provider) -> str:
        """What to list for a provider whose own list cannot be had."""
        routes_here = self.route(self.default_model)[0] is provider
        return provider.fallback_model(self.default_model if routes_here else None)
