"""The Responses API's other routes: a stored response's input items (GET
/v1/responses/{id}/input_items) through the official openai SDK's responses.input_items.list
against gunicorn, cancel (POST /v1/responses/{id}/cancel), and the create request's fields
ChatBridge refuses (background, conversation); queries and ownership through Flask's test
client."""

import json

import openai as openai_sdk
import pytest
from openai import OpenAI
from openai.types.responses import (
    ResponseFunctionToolCallItem,
    ResponseFunctionToolCallOutputItem,
    ResponseInputMessageItem,
    ResponseOutputMessage,
)

from tests.conftest import PNG_B64

TIMEOUT = 30
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather",
        "arguments": json.dumps({"city": "Paris"})}
TOOL_HISTORY = [{"role": "user", "content": "weather in Paris?"}, CALL,
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
ALICE, BOB = "token-of-alice-0001", "token-of-bob-00002"


def sdk(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="client-key", max_retries=0,
                  timeout=TIMEOUT)


def text_of(item) -> str:
    return "".join(part.text for part in item.content)


# ---------------------------------------------------------------- input items, with the SDK


def test_the_sdk_lists_a_chains_input_items_newest_first_and_pages_through_them(server):
    with sdk(server) as client:
        first = client.responses.create(model="echo", input=TOOL_HISTORY, tools=[WEATHER])
        with client.responses.stream(model="echo", input="and tomorrow?", tools=[WEATHER],
                                     previous_response_id=first.id) as events:
            second = events.get_final_response()
        page = client.responses.input_items.list(second.id)
        assert page.has_more is False and [i.id for i in page.data] == [page.first_id] + \
            [i.id for i in page.data[1:-1]] + [page.last_id]
        newest, answer, output, call, question = page.data
        assert isinstance(newest, ResponseInputMessageItem) and text_of(newest) == "and tomorrow?"
        assert newest.role == "user" and newest.id.startswith("msg_")
        assert isinstance(answer, ResponseOutputMessage) and answer.id == first.output[0].id
        assert text_of(answer) == first.output_text
        assert isinstance(output, ResponseFunctionToolCallOutputItem) and output.output == "sunny"
        assert isinstance(call, ResponseFunctionToolCallItem) and call.call_id == "call_1"
        assert call.status == "completed" and json.loads(call.arguments) == {"city": "Paris"}
        assert isinstance(question, ResponseInputMessageItem)
        assert text_of(question) == "weather in Paris?"

        oldest_first = client.responses.input_items.list(second.id, order="asc", limit=2)
        assert [i.id for i in oldest_first.data] == [question.id, call.id]
        assert oldest_first.has_more is True
        every = list(oldest_first)  # the SDK asks for the pages after, with after=last_id
        assert [i.id for i in every] == [i.id for i in reversed(page.data)]

        assert [i.id for i in client.responses.input_items.list(first.id).data] == \
            [output.id, call.id, question.id], "the first response lists only its own input"
        asked = client.responses.input_items.list(second.id, include=[
            "reasoning.encrypted_content", "message.input_image.image_url"], limit=100)
        assert [i.id for i in asked.data] == [i.id for i in page.data]  # sent as include[]=


def test_cancel_is_openais_400_for_a_synchronous_response_and_404_for_an_unknown_one(server):
    with sdk(server) as client:
        made = client.responses.create(model="echo", input="hello")
        with pytest.raises(openai_sdk.BadRequestError) as refused:
            client.responses.cancel(made.id)
        assert refused.value.status_code == 400
        assert refused.value.body["message"] == "Cannot cancel a synchronous response."
        assert refused.value.body["type"] == "invalid_request_error"
        with pytest.raises(openai_sdk.NotFoundError):
            client.responses.cancel("resp_0000000000")
        with pytest.raises(openai_sdk.NotFoundError):
            client.responses.input_items.list("resp_0000000000")
        assert client.responses.retrieve(made.id).status == "completed", "cancel changed nothing"


@pytest.mark.parametrize("fields, param, words", [
    ({"background": True}, "background", "does not run background responses"),
    ({"conversation": "conv_123"}, "conversation", "previous_response_id"),
    ({"conversation": {"id": "conv_123"}}, "conversation", "previous_response_id"),
])
def test_background_and_conversation_are_refused_naming_the_field(server, fields, param, words):
    with sdk(server) as client, pytest.raises(openai_sdk.BadRequestError) as refused:
        client.responses.create(model="echo", input="hello", **fields)
    assert refused.value.param == param and param in refused.value.message
    assert words in refused.value.message


def test_background_false_is_taken_and_a_background_not_boolean_is_a_400(make_app):
    http = make_app().test_client()
    assert http.post("/v1/responses", json={"model": "echo", "input": "hi",
                                            "background": False}).status_code == 200
    refused = http.post("/v1/responses", json={"model": "echo", "input": "hi",
                                               "background": "yes"})
    assert refused.status_code == 400 and refused.json["error"]["param"] == "background"


# ---------------------------------------------------------------- queries and ownership


def created(http, body: dict, headers=None) -> dict:
    reply = http.post("/v1/responses", json={"model": "echo", **body}, headers=headers)
    assert reply.status_code == 200, reply.json
    return reply.json


@pytest.mark.parametrize("query, param", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("limit=-1", "limit"),
    ("order=newest", "order"), ("after=msg_unknown", "after"), ("before=msg_unknown", "before"),
    ("include[]=everything", "include"), ("include=reasoning.encrypted", "include"),
])
def test_a_bad_query_is_a_400_naming_the_parameter(make_app, query, param):
    http = make_app().test_client()
    response = created(http, {"input": "hello"})
    reply = http.get(f"/v1/responses/{response['id']}/input_items?{query}")
    assert reply.status_code == 400
    assert set(reply.json["error"]) == {"message", "type", "param", "code"}
    assert reply.json["error"]["param"] == param and param in reply.json["error"]["message"]


def test_input_items_and_cancel_belong_to_the_token_that_made_the_response(make_app):
    http = make_app(ACCESS_TOKENS=f"{ALICE},{BOB}").test_client()
    alice, bob = ({"Authorization": f"Bearer {token}"} for token in (ALICE, BOB))
    response = created(http, {"input": "secret"}, alice)
    path = f"/v1/responses/{response['id']}"
    assert http.get(f"{path}/input_items", headers=alice).json["data"][0]["content"][0]["text"] \
        == "secret"
    for method, route in (("get", "/input_items"), ("post", "/cancel")):
        assert getattr(http, method)(path + route, headers=bob).status_code == 404
        assert getattr(http, method)(path + route).status_code == 401
    assert http.post(f"{path}/cancel", headers=alice).status_code == 400


def test_a_response_not_stored_has_no_input_items(make_app):
    http = make_app().test_client()
    response = created(http, {"input": "hello", "store": False})
    assert http.get(f"/v1/responses/{response['id']}/input_items").status_code == 404


def test_inline_file_bytes_are_not_kept_twice_and_encrypted_reasoning_only_when_asked(make_app):
    http = make_app().test_client()
    image = {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"}
    reasoning = {"type": "reasoning", "id": "rs_given", "summary": [], "encrypted_content": "opaque"}
    response = created(http, {"model": "gemini-2.5-flash", "input": [
        reasoning, {"role": "user", "content": [{"type": "input_text", "text": "see"}, image]}]})
    path = f"/v1/responses/{response['id']}/input_items?order=asc"
    listed = http.get(path).json
    assert PNG_B64 not in json.dumps(listed)
    given, message = listed["data"]
    assert given == {"type": "reasoning", "id": "rs_given", "summary": []}
    assert message["content"][1] == {"type": "input_image", "image_url": None}
    asked = http.get(path + "&include[]=reasoning.encrypted_content").json
    assert asked["data"][0]["encrypted_content"] == "opaque"


def test_a_page_between_after_and_before(make_app):
    http = make_app().test_client()
    turns = [{"role": "user", "content": f"turn {n}"} for n in range(5)]
    response = created(http, {"input": turns})
    path = f"/v1/responses/{response['id']}/input_items"
    ids = [item["id"] for item in http.get(path + "?order=asc").json["data"]]
    assert len(ids) == 5 and len(set(ids)) == 5
    page = http.get(f"{path}?order=asc&after={ids[0]}&before={ids[4]}&limit=2").json
    assert [item["id"] for item in page["data"]] == ids[1:3] and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[1], ids[2])
    newest = http.get(f"{path}?after={ids[1]}").json
    assert newest["data"][0]["id"] == ids[0] and newest["has_more"] is False
    empty = http.get(f"{path}?order=asc&after={ids[4]}").json
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None,
                     "has_more": False}
