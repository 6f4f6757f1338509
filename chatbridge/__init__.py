"""ChatBridge: a Flask backend between chat frontends and LLM APIs.

It keeps the API keys on the server, spreads requests round-robin over many keys with
failover and cooldowns, and relays the model's answer as Server-Sent Events. Upstreams:
Google Gemini (REST) and any OpenAI-compatible API, plus the built-in `echo` model. Clients:
/api/chat in three request shapes, OpenAI's /v1, Gemini's /v1beta, and a chat page at /.

Importing defines things only; create_app() reads the settings and builds the app. The
layout is described in README.md, Layout.
"""

from .web import create_app

__all__ = ["create_app"]
