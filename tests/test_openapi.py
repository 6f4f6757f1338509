"""The OpenAPI contract (chatbridge/apis/openapi.py): its paths and methods are exactly the
app's routes under /api and /v1, it is a valid OpenAPI 3.1 document, and schemathesis finds
no 500 and no answer that differs from it on a live server (gunicorn, gevent workers, the
echo model only: no keys, so nothing is spent)."""

import re

import hypothesis
import pytest
import requests
import schemathesis
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chatbridge.apis.openapi import DOCUMENT
from tests.conftest import ADMIN_TOKEN

AUTOMATIC = {"HEAD", "OPTIONS"}  # Flask adds these to every route
# The Gemini pass-through shares /v1/models/<path> for POST; it is Google's API, out of scope.
OUT_OF_SCOPE = {"openai.unknown", "gemini.unknown", "gemini.gemini_native", "anthropic.unknown"}


def shape(path: str) -> str:
    """A path with its parameters unnamed: /api/chats/<chat_id> and /api/chats/{chat_id}
    are both /api/chats/{}."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def routes(app) -> set:
    """(path shape, method) of every route under /api and /v1 that the contract covers."""
    return {(shape(rule.rule), method) for rule in app.url_map.iter_rules()
            if rule.rule.startswith(("/api/", "/v1/")) and rule.endpoint not in OUT_OF_SCOPE
            for method in rule.methods - AUTOMATIC}


def documented(prefixes=("/api/", "/v1/")) -> set:
    return {(shape(path), method.upper()) for path, item in DOCUMENT["paths"].items()
            if path.startswith(prefixes)
            for method in item if method in ("get", "post", "put", "patch", "delete")}


def test_every_route_is_documented_and_every_documented_operation_is_a_route(app):
    assert routes(app) == documented()
    assert {("/healthz", "GET"), ("/openapi.json", "GET")} <= documented(("/healthz", "/openapi"))


def test_the_document_is_valid_openapi_3_1(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == DOCUMENT
    validate(response.get_json())  # raises on any violation of the OpenAPI 3.1 schema


def test_the_document_needs_no_access_token(token_server):
    assert requests.get(token_server.url + "/openapi.json", timeout=10).json()["openapi"] == "3.1.0"
    assert requests.get(token_server.url + "/v1/models", timeout=10).status_code == 401


@pytest.mark.parametrize(("url", "error"), [
    ("/v1/models/a%0Ab", {"message": "the model 'a\\nb' does not exist", "type": "invalid_request_error",
                          "param": None, "code": "model_not_found"}),
    ("/v1/x%0Ay", {"message": "no such endpoint: GET /v1/x\ny", "type": "invalid_request_error",
                   "param": None, "code": None}),
    ("/v1beta/x%0Ay", {"code": 404, "message": "no such endpoint: GET /v1beta/x\ny",
                       "status": "NOT_FOUND"}),
])
def test_an_encoded_newline_in_a_path_keeps_the_apis_error_format(client, url, error):
    """Found by schemathesis: werkzeug's <path:...> stopped at a newline, so such URLs fell
    through every API's catch-all to the /api error format."""
    response = client.get(url)
    assert (response.status_code, response.get_json()) == (404, {"error": error})


@pytest.fixture(scope="module")
def live_server(start_gunicorn):
    """No keys, so only the echo model answers; ADMIN_TOKEN set, so /api/keys answers too."""
    return start_gunicorn({"ADMIN_TOKEN": ADMIN_TOKEN}, workers=2)


# Loaded from the module, not from the server: the test above proves the server serves it as is
# (and schemathesis' from_fixture does not run under this pytest).
schema = schemathesis.openapi.from_dict(DOCUMENT)
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance, response_headers_conformance]


@schema.parametrize()
@hypothesis.settings(max_examples=15, derandomize=True, deadline=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_the_live_service_keeps_the_contract(case, live_server):
    case.call_and_validate(base_url=live_server.url, checks=CHECKS, timeout=30,
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
