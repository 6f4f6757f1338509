"""Conversations by chat_id and the upload cache by file_id, kept in the shared state store.

Rules:
- A conversation belongs to the access token that started it (its fingerprint, or "" while
  ACCESS_TOKENS is unset); any other token gets 404, as if it did not exist. The chat is
  claimed atomically when its first request arrives, so a slow answer cannot be taken over.
- A turn pair (the question and the whole answer) is stored only when the answer completes,
  in one atomic append keeping the last CHAT_MAX_TURNS turns; a failed or stopped answer
  adds nothing. Conversations expire CHAT_TTL_HOURS after their last turn.
- Files of a stored turn are kept as cached uploads (file_ids), so a conversation sends them
  again while they live; uploads expire after UPLOAD_TTL_MINUTES and belong to their token.
  A file the upload cache cannot take (full, or its disk) is left out of the stored turn, and
  the log says so: the answer the client already has is not failed for it.
"""

import secrets
from functools import partial

from .chat import Attachment, ChatRequest, Turn
from .config import Config
from .errors import InsufficientStorage, NotFound
from .logs import log
from .state import StateStore


def no_chat(chat_id: str) -> NotFound:
    return NotFound(f"no chat {chat_id!r}")


def attachment_of(record: dict) -> Attachment:
    """A cached upload's record as an Attachment."""
    return Attachment(record["mime_type"], record["data"], record.get("filename", ""))


class Conversations:
    """chat_id conversations and cached uploads, for one owner at a time (owner: a token's
    fingerprint)."""

    def __init__(self, store: StateStore, config: Config):
        self.store, self.config = store, config

    @property
    def chat_ttl(self) -> float:
        return self.config.chat_ttl_hours * 3600

    def cached_upload(self, file_id: str, owner: str) -> dict | None:
        """An upload's record, if it is still cached and was uploaded with the same token."""
        record = self.store.load_upload(file_id)
        return record if record and record.get("owner", "") == owner else None

    def cache_upload(self, file: Attachment, owner: str, ttl: float | None = None) -> str:
        """Cache a file for ttl seconds (UPLOAD_TTL_MINUTES unless given); its new file_id."""
        ttl = self.config.upload_ttl_minutes * 60 if ttl is None else ttl
        file_id = "file-" + secrets.token_urlsafe(24)
        self.store.save_upload(file_id, {"mime_type": file.mime_type, "data": file.data,
                                         "filename": file.filename, "owner": owner}, ttl)
        return file_id

    def history(self, chat_id: str, owner: str) -> list:
        """A stored conversation's turns; another token's chat is a 404, as if it did not exist."""
        stored = self.store.load_chat(chat_id)
        if stored is None or stored.get("owner", "") != owner or not stored.get("turns"):
            raise no_chat(chat_id)
        return stored["turns"]

    def delete(self, chat_id: str, owner: str) -> None:
        self.history(chat_id, owner)
        if not self.store.delete_chat(chat_id):
            raise no_chat(chat_id)

    def resume(self, chat: ChatRequest, owner: str) -> None:
        """Claim the chat_id for this token (or 404) and put its stored turns first."""
        if not chat.chat_id:
            return
        stored = self.store.open_chat(chat.chat_id, owner, self.chat_ttl)
        if stored is None:
            raise no_chat(chat.chat_id)
        turns = [turn for turn in map(partial(self.stored_turn, owner=owner), stored)
                 if turn.text.strip() or turn.files]
        while turns and turns[0].role != "user":
            turns.pop(0)  # trimming may have cut a pair; upstreams want the user first
        chat.turns = turns + chat.turns

    def stored_turn(self, stored: dict, owner: str) -> Turn:
        """A stored turn with the files that are still cached."""
        cached = [(i, self.cached_upload(i, owner)) for i in stored.get("file_ids", [])]
        return Turn(stored["role"], stored.get("content", ""),
                    tuple(attachment_of(record) for _, record in cached if record),
                    tuple(i for i, record in cached if record))

    def remember(self, chat: ChatRequest, owner: str, answer: str) -> None:
        """Append the user's turn (its files cached) and the whole answer, in one step."""
        if not chat.chat_id:
            return
        question = chat.turns[-1]
        file_ids = list(question.file_ids) + self.keep_files(
            chat.chat_id, question.files[len(question.file_ids):], owner)
        user = {"role": "user", "content": question.text, **({"file_ids": file_ids} if file_ids
                                                              else {})}
        turns = [user, {"role": "assistant", "content": answer}]
        if not self.store.append_chat(chat.chat_id, owner, turns, self.config.chat_max_turns,
                                      self.chat_ttl):
            log.warning("chat %s changed hands during the answer; its turns were not stored",
                        chat.chat_id)

    def keep_files(self, chat_id: str, files: tuple, owner: str) -> list:
        """Cache a stored turn's files for the conversation's lifetime; the file_ids of those
        the upload cache took."""
        file_ids = []
        for file in files:
            try:
                file_ids.append(self.cache_upload(file, owner, self.chat_ttl))
            except InsufficientStorage as exc:
                log.warning("chat %s: a turn is stored without a file it had, which was not "
                            "cached: %s", chat_id, exc.message)
        return file_ids
