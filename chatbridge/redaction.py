"""Masking keys and tokens in every text that leaves the process.

Rules:
- Every configured key and token, and anything shaped like a Gemini (`AIza…`) or OpenAI-style
  (`sk-…`) key, is cut down to its last four characters.
- A fragment of a configured upstream key (FRAGMENT characters or more of it in a row, as an upstream's
  "Incorrect API key provided: zjuSecre****3456" shows) is masked whole.
- In JSON text, keys written with \\u escapes are masked too: the text is read as JSON, its
  strings are masked, and it is written again.
- Masking comes before shortening, so a long message never keeps the head of a key that
  shortening would have cut in two.
"""

import json
import re

KEY_PATTERN = re.compile(r"AIza[0-9A-Za-z_\-]{8,}|sk-[0-9A-Za-z_\-*.]{6,}")
MESSAGE_LIMIT = 500  # characters of an upstream error message passed on
FRAGMENT = 6  # characters of a secret in a row that make a fragment worth masking


class Redactor:
    """Masks a fixed set of secrets, their fragments, plus key-like strings."""

    def __init__(self, secrets: list, fragments_of: list | None = None):
        """secrets are masked whole; fragments_of (the upstream keys, random strings, unlike an
        access token a person may have made of words) also in fragments. Default: secrets."""
        secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        names = "|".join(re.escape(s) for s in secrets)
        self.pattern = re.compile(f"{names}|{KEY_PATTERN.pattern}" if names else KEY_PATTERN.pattern)
        sources = secrets if fragments_of is None else [s for s in fragments_of if s]
        self.windows = {s[i:i + FRAGMENT] for s in sources for i in range(len(s) - FRAGMENT + 1)}

    def redact(self, text: str) -> str:
        """Text with every key-like string masked down to its last four characters, and every
        fragment of a configured secret masked whole."""
        return self.mask_fragments(self.pattern.sub(lambda m: "…" + m.group()[-4:], text))

    def mask_fragments(self, text: str) -> str:
        """Text without any run of FRAGMENT or more characters that occurs in a secret."""
        if not self.windows or len(text) < FRAGMENT:
            return text
        spans = []
        for start in range(len(text) - FRAGMENT + 1):
            if text[start:start + FRAGMENT] in self.windows:
                end = start + FRAGMENT
                if spans and start <= spans[-1][1]:
                    spans[-1][1] = end
                else:
                    spans.append([start, end])
        for start, end in reversed(spans):
            text = text[:start] + "…" + text[end:]
        return text

    def redact_json(self, text: str) -> str:
        """JSON text (an upstream's error body) masked, escaped keys included."""
        if "\\u" not in text:
            return self.redact(text)
        try:
            value = json.loads(text)
        except ValueError:
            return self.redact(text)
        return json.dumps(self.redact_value(value), ensure_ascii=False)

    def redact_value(self, value):
        """A parsed JSON value with every string in it masked."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list):
            return [self.redact_value(item) for item in value]
        if isinstance(value, dict):
            return {self.redact(k): self.redact_value(v) for k, v in value.items()}
        return value

    def public_text(self, text: str) -> str:
        """An upstream message as clients and logs may see it: redacted, then shortened."""
        return self.redact(text)[:MESSAGE_LIMIT]
