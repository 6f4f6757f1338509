"""Stored responses of OpenAI's Responses API (`store`, `previous_response_id`), kept in the
shared state store.

Rules:
- A response is stored when its request has `store` true (OpenAI's default) and the answer
  reached its end (completed or incomplete); a failed or stopped answer stores nothing.
- Each record holds the whole conversation up to it (the earlier turns, the request's input
  and the answer) as neutral turns, so `previous_response_id` costs one read, the response
  object as it was answered, for GET /v1/responses/{id}, and its input items in the API's
  shapes (the earlier responses' input and output items, then its request's: GET
  /v1/responses/{id}/input_items, chatbridge/apis/responses_items.py). Instructions are not
  carried over, as OpenAI documents for `previous_response_id`.
- A response belongs to the access token that made it (its fingerprint, "" while
  ACCESS_TOKENS is unset); for any other token it does not exist (404). It expires
  CHAT_TTL_HOURS after it was made, like a chat_id conversation.
- Files of stored turns are kept as cached uploads for as long (file_ids), as conversations
  keep them (chatbridge/conversations.py); a file the cache cannot take is left out.
"""

import re

from .chat import Turn
from .config import Config
from .conversations import Conversations
from .errors import ClientError, NotFound
from .state import StateStore

RESPONSE_ID = re.compile(r"resp_[A-Za-z0-9_-]{8,100}")


class PreviousResponseNotFound(ClientError):
    """OpenAI's 400 for a previous_response_id it does not hold."""

    code = "previous_response_not_found"
    param = "previous_response_id"


def no_response(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.")


class StoredResponses:
    """Stored responses and the conversations they continue, for one owner at a time."""

    def __init__(self, store: StateStore, conversations: Conversations, config: Config):
        self.store, self.conversations, self.config = store, conversations, config

    @property
    def ttl(self) -> float:
        return self.config.chat_ttl_hours * 3600

    def record(self, response_id: str, owner: str) -> dict | None:
        """A live response's record if owner made it."""
        if not RESPONSE_ID.fullmatch(response_id):
            return None
        record = self.store.load_response(response_id)
        return record if record and record.get("owner", "") == owner else None

    def get(self, response_id: str, owner: str) -> dict:
        """The response object as it was answered; 404 if it is not owner's or has expired."""
        record = self.record(response_id, owner)
        if record is None:
            raise no_response(response_id)
        return record["response"]

    def delete(self, response_id: str, owner: str) -> None:
        self.get(response_id, owner)
        if not self.store.delete_response(response_id):
            raise no_response(response_id)

    def input_items(self, response_id: str, owner: str) -> list:
        """A stored response's input items, oldest first; 404 as get."""
        record = self.record(response_id, owner)
        if record is None:
            raise no_response(response_id)
        return record.get("input_items", [])

    def context_before(self, response_id: str, owner: str) -> tuple:
        """(the conversation up to and including a stored response, as Turns; the input items
        a response continuing it starts with: its input items and its output), in one read;
        400 previous_response_not_found if it is not owner's or has expired."""
        record = self.record(response_id, owner)
        if record is None:
            raise PreviousResponseNotFound(f"Previous response with id '{response_id}' not found.")
        turns = [self.turn_of(stored, owner) for stored in record.get("turns", [])]
        return turns, record.get("input_items", []) + record["response"].get("output", [])

    def save(self, response: dict, turns: list, owner: str, input_items: list = ()) -> None:
        """Store a response object, the whole conversation it ends and its input items."""
        stored = [self.stored_turn(turn, response["id"], owner) for turn in turns]
        self.store.save_response(response["id"], {"owner": owner, "turns": stored,
                                                  "response": response,
                                                  "input_items": list(input_items)}, self.ttl)

    def stored_turn(self, turn: Turn, response_id: str, owner: str) -> dict:
        """A Turn as JSON; its files as cached uploads (those it came with, or new ones)."""
        file_ids = list(turn.file_ids) + self.conversations.keep_files(
            response_id, turn.files[len(turn.file_ids):], owner)
        stored = {"role": turn.role, "content": turn.text}
        extra = {"file_ids": file_ids, "tool_calls": [dict(c) for c in turn.tool_calls],
                 "tool_call_id": turn.tool_call_id, "tool_name": turn.tool_name,
                 "reasoning": turn.reasoning}
        stored.update((name, value) for name, value in extra.items() if value)
        return stored

    def turn_of(self, stored: dict, owner: str) -> Turn:
        """A stored turn with the files that are still cached."""
        turn = self.conversations.stored_turn(stored, owner)
        return Turn(turn.role, turn.text, turn.files, turn.file_ids,
                    tuple(stored.get("tool_calls", ())), stored.get("tool_call_id", ""),
                    stored.get("tool_name", ""), stored.get("reasoning", ""))
