"""The client APIs, one module each: its request parser, its stream writer, and its
blueprint with an error handler that renders every error in that API's format.

- source.py: the two source backends' /api/chat shapes A and B, /api/upload, /api/chats
- ui_stream.py: the Vercel AI SDK's useChat protocol on the same /api/chat
- openai_chat.py: OpenAI's Chat Completions and model list under /v1
- anthropic.py: Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens); its
  request parser is anthropic_request.py
- responses.py: OpenAI's Responses API under /v1/responses (responses_input.py reads its
  requests, responses_output.py writes its answers)
- gemini_native.py: Gemini's own REST API passed through under /v1beta (and /v1); other models
  answer there through gemini_wire.py, Gemini's request and answer shapes on the neutral path
- admin.py: the operator's /api/keys
- openapi.py: the OpenAPI 3.1 contract of /api and /v1, served at /openapi.json
fields.py validates request fields for all of them; common.py holds their shared plumbing.
"""

from . import admin, anthropic, gemini_native, openai_chat, openapi, responses, source

BLUEPRINTS = (source.bp, admin.bp, openai_chat.models_bp, anthropic.bp, openai_chat.bp, responses.bp,
              gemini_native.bp, openapi.bp)
render_default_error = source.render_error  # for URLs no API owns, and the page's routes
