"""The built-in `echo` model: the user's message back, word by word. It needs no key, so a
fresh clone answers with nothing configured."""

import re
import time

from ..chat import Delta, Finish
from ..config import ECHO_MODEL
from .base import Provider, WholeAnswer

ECHO_WORD_DELAY = 0.02  # seconds between echoed words, so the echo visibly streams


class EchoProvider(Provider):
    name = ECHO_MODEL
    display_name = "echo"
    owned_by = "chatbridge"
    needs_keys = False

    @classmethod
    def from_config(cls, config, transport):
        return cls(default_model=ECHO_MODEL)

    def claims(self, model):
        return model == ECHO_MODEL

    def answer(self, chat):
        text = chat.message
        for file in chat.turns[-1].files:
            text += f"\n\n(received {file.filename or 'a file'}, {file.mime_type}, {file.size} bytes)"
        text = text.strip()
        for index, word in enumerate(re.findall(r"\s*\S+\s*", text) or [text]):
            if index:
                time.sleep(ECHO_WORD_DELAY)
            yield Delta("text", word)
        words = len(text.split())
        yield Delta("usage", {"prompt_tokens": words, "completion_tokens": words,
                              "total_tokens": 2 * words})
        yield Delta("finish", Finish("stop"))

    def fetch_answer(self, chat, key, cancel):
        return WholeAnswer(list(self.answer(chat)))
