"""A client that sends its headers and then its body a byte at a time cannot hold the service
(issue 11, item 5): its body must arrive within REQUEST_BODY_SECONDS, and /healthz answers
meanwhile."""

import json
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

SLOW_HEAD = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100000\r\n\r\n{")


@pytest.fixture(scope="module")
def patient_server(start_gunicorn):
    return start_gunicorn({"REQUEST_BODY_SECONDS": "1"}, workers=1)


def slow_clients(server, count: int) -> list:
    address = urlsplit(server.url)
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((address.hostname, address.port), timeout=10)
        sock.sendall(SLOW_HEAD)
        sockets.append(sock)
    return sockets


def answer_of(sock: socket.socket) -> tuple:
    """(status, JSON body) of the answer the server sent on a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_body_that_does_not_arrive_in_time_is_a_408(patient_server):
    started = time.monotonic()
    sockets = slow_clients(patient_server, 40)
    try:
        for _ in range(3):
            health = requests.get(patient_server.url + "/healthz", timeout=2)
            assert health.status_code == 200, "the slow clients hold nothing the others need"
        answers = [answer_of(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert time.monotonic() - started < 6
    assert {status for status, _ in answers} == {408}
    assert all("REQUEST_BODY_SECONDS" in body["error"] for _, body in answers)


def test_a_body_that_arrives_in_time_is_answered(patient_server):
    response = requests.post(patient_server.url + "/api/chat", timeout=10,
                             json={"user_content": "hello", "model": "echo"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hello"


def test_a_chunked_body_over_the_limit_is_a_413(patient_server):
    """Issue 11, item 8: without a Content-Length the limit still holds, as a 413."""
    def body():
        yield b'{"message": "'
        for _ in range(30):
            yield b"a" * (1024 * 1024)
        yield b'"}'
    response = requests.post(patient_server.url + "/api/chat", data=body(), timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "MB" in response.json()["error"]
