"""The upstream providers and the registry that picks one for a model name.

Routing a model name: MODEL_ALIASES first (the first pattern that matches replaces the name
with its model, once); then `echo` is built in; a `gemini/` or `zju/` prefix picks that provider
(and is stripped: `zju/qwen3` sends `qwen3`); otherwise the first provider in PROVIDERS that
claims the name serves it (names starting with gemini or gemma go to Gemini, every other
name to the OpenAI-compatible upstream).

An alias that takes a model ChatBridge answers by itself (`echo`) to a provider without keys
stops the start (ConfigError): that name would be listed by every model list, yet answer
nothing. Any other alias to a provider without keys is left out of the model lists, and a
request for it is told which setting is missing, so one MODEL_ALIASES can serve deployments
with different keys.

A name whose provider has no keys is a ModelNotFound that lists the models that are
available and suggests a near miss (chatbridge/upstreams/names.py); when the name clearly meant
that provider (its prefix, a name only it claims, or its default model), it also names the
missing setting.

A new provider is one module beside these (a Provider subclass, chatbridge/upstreams/base.py)
and one line in PROVIDERS, plus its settings in chatbridge/config.py.
"""

from fnmatch import fnmatchcase

from ..config import Config
from ..errors import ClientError, ConfigError
from ..transport import Transport
from .base import Provider
from .echo import EchoProvider
from .gemini import GeminiProvider, NativeCall
from .names import has_glob, unknown_model
from .openai_compat import OpenAICompatProvider

# In routing order: the last one claims every name the others do not.
PROVIDERS = (EchoProvider, GeminiProvider, OpenAICompatProvider)

__all__ = ["PROVIDERS", "NativeCall", "Provider", "Registry", "check_aliases"]


class Registry:
    """The configured providers by name."""

    def __init__(self, config: Config, transport: Transport):
        self.providers = {cls.name: cls.from_config(config, transport) for cls in PROVIDERS}
        self.default_model = config.default_model
        self.aliases = config.model_aliases
        self.listed = {}  # provider name -> its upstream's model names, once the service has them
        self.refuse_dead_aliases()

    def __getitem__(self, name: str) -> Provider:
        return self.providers[name]

    @property
    def catch_all(self) -> Provider:
        """The last provider, which claims every name the others do not."""
        return list(self.providers.values())[-1]

    def keyed(self) -> list:
        """The providers that answer with keys from a pool, in registry order."""
        return [p for p in self.providers.values() if p.needs_keys]

    def route(self, name: str) -> tuple:
        """The provider a model name routes to, and the name without an explicit prefix."""
        prefix, _, rest = name.partition("/")
        if rest and prefix in self.providers and self.providers[prefix].needs_keys:
            return self.providers[prefix], rest
        return next(p for p in self.providers.values() if p.claims(name)), name

    def aliased(self, name: str) -> str:
        """The model a MODEL_ALIASES pattern maps name to (the first that matches), or name."""
        return next((model for pattern, model in self.aliases if fnmatchcase(name, pattern)), name)

    def resolve(self, name: str | None, prefer: str | None = None) -> tuple:
        """(provider name, model) for a requested model (or the default), after its alias;
        ModelNotFound, listing what is available, when its provider has no keys.

        prefer names the provider whose own API the client speaks (gemini on /v1beta): a name
        that is no alias and that only the catch-all claims goes there while it has keys, as
        that API's own catalogue holds names such as learnlm-2.0-flash.
        """
        requested = (name or self.default_model).strip()
        target = self.aliased(requested)
        provider, model = self.route(target)
        preferred = self.providers.get(prefer)
        if preferred is not None and preferred.keys and target == requested and \
                provider is self.catch_all and not target.startswith(f"{provider.name}/"):
            provider = preferred
        if provider.needs_keys and not provider.keys:
            raise unknown_model(requested, target, provider, self.meant(target, provider),
                                self.available(), self.suggestible())
        return provider.name, model

    def answers(self, name: str) -> bool:
        """Whether a model name reaches a provider that can answer it (keyless, or keyed)."""
        provider = self.route(self.aliased(name))[0]
        return bool(provider.keys) or not provider.needs_keys

    def refuse_dead_aliases(self) -> None:
        """ConfigError for an alias that takes a keyless model (echo) to a provider without
        keys: the model lists name that model on their own, so it would be listed and refused."""
        for provider in self.providers.values():
            name = provider.default_model
            if provider.needs_keys or self.answers(name):
                continue
            pattern, model = next(entry for entry in self.aliases if fnmatchcase(name, entry[0]))
            target = self.route(model)[0]
            raise ConfigError(
                f"invalid settings: MODEL_ALIASES sends {name!r}, which ChatBridge answers itself, "
                f"to {model!r} (by {pattern}={model}), but {target.key_variable} is not set: "
                f"set it, or drop the alias")

    def meant(self, name: str, provider: Provider) -> bool:
        """Whether a name clearly asks for this provider: its prefix, a name it claims before
        the catch-all (the last provider), or its default model."""
        prefixed = name.partition("/")[0] == provider.name
        specific = provider is not self.catch_all
        return prefixed or specific or name == provider.default_model

    def available(self) -> list:
        """The model names that answer now, without asking an upstream: the keyless models,
        each keyed provider's listed models (or its fallback), the exact aliases."""
        names = [p.default_model for p in self.providers.values() if not p.needs_keys]
        for provider in (p for p in self.keyed() if p.keys):
            names += [self.listed_name(provider, m) for m in
                      self.listed.get(provider.name) or [self.fallback_model(provider)]]
        names += [alias for alias, _ in self.alias_entries()]
        return [name for name in dict.fromkeys(names) if self.answers(name)]

    def suggestible(self) -> dict:
        """Names a near miss may have meant: the available ones (None), and the default models
        of providers without keys (their key setting)."""
        names = {p.default_model: p.key_variable for p in self.keyed() if not p.keys}
        return {**names, **dict.fromkeys(self.available())}

    def neutral_models(self) -> list:
        """(name, provider name) of the models ChatBridge itself names, for Gemini's model
        list: the keyless ones, then the available exact aliases."""
        own = [(p.default_model, p.name) for p in self.providers.values()
               if not p.needs_keys and self.answers(p.default_model)]
        return own + [(alias, provider.name) for alias, provider in self.alias_entries()]

    def alias_entries(self) -> list:
        """(alias, provider) for each MODEL_ALIASES pattern without globs whose model is
        available, for the model lists."""
        entries = []
        for pattern, model in self.aliases:
            if not has_glob(pattern) and self.aliased(pattern) == model and self.answers(pattern):
                entries.append((pattern, self.route(model)[0]))
        return entries

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


def check_aliases(config: Config) -> None:
    """The start-up check of MODEL_ALIASES against the keys (Registry.refuse_dead_aliases),
    without building a transport: for gunicorn's master, which checks the settings once."""
    Registry(config, None)
