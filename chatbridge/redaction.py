"""Masking keys and tokens in every text that leaves the process.

Every configured key and token, and anything shaped like a Gemini (`AIza…`) or OpenAI-style
(`sk-…`) key, is cut down to its last four characters. Masking comes before shortening, so
a long message never keeps the head of a key that shortening would have cut in two.
"""

import re

KEY_PATTERN = re.compile(r"AIza[0-9A-Za-z_\-]{8,}|sk-[0-9A-Za-z_\-*.]{6,}")
MESSAGE_LIMIT = 500  # characters of an upstream error message passed on


class Redactor:
    """Masks a fixed set of secrets, plus key-like strings."""

    def __init__(self, secrets: list):
        names = "|".join(re.escape(s) for s in sorted(set(secrets), key=len, reverse=True))
        self.pattern = re.compile(f"{names}|{KEY_PATTERN.pattern}" if names else KEY_PATTERN.pattern)

    def redact(self, text: str) -> str:
        """Text with every key-like string masked down to its last four characters."""
        return self.pattern.sub(lambda m: "…" + m.group()[-4:], text)

    def public_text(self, text: str) -> str:
        """An upstream message as clients and logs may see it: redacted, then shortened."""
        return self.redact(text)[:MESSAGE_LIMIT]
