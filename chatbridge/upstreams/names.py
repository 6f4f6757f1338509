"""What a model name that nothing serves is told: the models that are available, and a
"did you mean" for a near miss (issue 10: `ECHO` or `gemni-2.5-flash` must not be told that a
key is missing for a provider the user did not mean).

Rules:
- The message always lists the available models (at most LISTED_NAMES, then how many more).
- A near miss is a name equal but for case, else difflib's closest match (ratio 0.75 or more)
  among the available names and the default models of providers without keys (then naming
  the setting that would serve it).
- The missing setting is named when the name clearly meant its provider; otherwise the
  message only says where such names go, so the reader can still tell.
"""

import difflib

from ..errors import ModelNotFound

LISTED_NAMES = 30
NEAR_MISS = 0.75  # difflib's ratio: `gemni-2.5-flash` ~ `gemini-2.5-flash` is 0.97, `gpt-4` ~ `echo` 0.2


def has_glob(pattern: str) -> bool:
    """Whether a MODEL_ALIASES pattern holds fnmatch wildcards."""
    return any(c in pattern for c in "*?[")


def near_miss(name: str, candidates: list) -> str | None:
    """The candidate a misspelt name most likely meant, if one is close enough."""
    folded = {c.lower(): c for c in candidates}
    if name.lower() in folded:
        return folded[name.lower()]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=NEAR_MISS)
    return close[0] if close else None


def listing(names: list) -> str:
    """Model names for a message, at most LISTED_NAMES of them."""
    shown = ", ".join(names[:LISTED_NAMES])
    more = len(names) - LISTED_NAMES
    return shown + (f" and {more} more (GET /v1/models)" if more > 0 else "")


def unknown_model(requested: str, target: str, provider, meant: bool, available: list,
                  suggestible: dict) -> ModelNotFound:
    """The ModelNotFound for a name whose provider has no keys.

    requested is the name as sent, target the model its alias maps it to (or itself);
    suggestible maps each name a near miss may have meant to the setting it needs (None when
    it is available).
    """
    alias = f" (MODEL_ALIASES maps it to {target!r})" if target != requested else ""
    message = f"the model {requested!r}{alias} is not available"
    if meant:
        message += f": {provider.display_name} serves it, but {provider.key_variable} is not set"
    guess = None if meant else near_miss(target, [n for n in suggestible if n != target])
    if guess:
        needs = suggestible[guess]
        message += f" (did you mean {guess!r}" + (f", which needs {needs}" if needs else "") + "?)"
    message += f"; available models: {listing(available)}"
    if not meant:
        message += (f"; names no other provider claims go to {provider.display_name}, which "
                    f"needs {provider.key_variable}")
    return ModelNotFound(message)
