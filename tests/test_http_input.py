"""Reading a request body against its limits, and errors as JSON, through Starlette's real request
and application objects (driven over ASGI, no server)."""

import asyncio
import json
import time

import pytest
from starlette.requests import Request

from serve.errors import json_errors_api
from serve.http_input import HTTPError, read_body, refuse_routing_headers


def trickling_request(chunks: list[bytes], pause_s: float) -> Request:
    """A POST whose body arrives in `chunks`, `pause_s` apart, as a slow client sends it."""
    pending = list(chunks)

    async def receive():
        await asyncio.sleep(pause_s)
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}, receive)


def test_a_body_that_arrives_in_time_is_read_whole():
    body = asyncio.run(read_body(trickling_request([b"ab", b"cd", b"ef"], 0.01), max_bytes=1024, timeout_s=5))
    assert body == b"abcdef"


def test_a_trickling_body_is_cut_off_with_408_at_the_deadline():
    start = time.monotonic()
    with pytest.raises(HTTPError) as error:
        asyncio.run(read_body(trickling_request([b"x"] * 1000, 0.05), max_bytes=10_000, timeout_s=0.5))
    assert error.value.status == 408 and "within 0.5 s" in error.value.message
    assert time.monotonic() - start < 2  # cut off at the deadline, not after the 50 s the client would take


def test_a_streamed_body_over_the_limit_is_413_without_reading_the_rest():
    request = trickling_request([b"x" * 600] * 100, 0.0)
    received = []
    receive = request._receive

    async def counted():
        message = await receive()
        received.append(len(message["body"]))
        return message

    request._receive = counted
    with pytest.raises(HTTPError) as error:
        asyncio.run(read_body(request, max_bytes=1024, timeout_s=5))
    assert error.value.status == 413
    assert len(received) == 2  # the cost bounded: two chunks taken (1,200 bytes > 1,024), 98 never read


def call(api, path: str) -> tuple[int, dict]:
    messages = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "root_path": "", "headers": [],
             "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
    try:
        asyncio.run(api(scope, receive, send))
    except RuntimeError:
        pass  # Starlette re-raises an unhandled error after answering, for the server to log
    start = next(message for message in messages if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in messages if message["type"] == "http.response.body")
    return start["status"], json.loads(body)


def test_an_unexpected_error_is_a_json_500_and_a_bad_parameter_a_json_400():
    api = json_errors_api()

    @api.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    @api.get("/number/{value}")
    def number(value: int):
        return {"value": value}

    assert call(api, "/boom") == (500, {"error": "internal error (RuntimeError); the server keeps serving", "status": 500})
    status, error = call(api, "/number/abc")
    assert status == 400 and error["status"] == 400 and "value" in error["error"]


@pytest.mark.parametrize("header", ["serve_multiplexed_model_id", "Serve-Multiplexed-Model-Id", "SERVE_MULTIPLEXED-model_id"])
def test_serves_routing_header_is_refused_in_any_spelling_the_proxy_reads(header):
    """Ray 2.60's proxy routes by this header with - or _ in any case, and keeps a request per value."""
    with pytest.raises(HTTPError) as error:
        refuse_routing_headers({"content-type": "image/jpeg", header: "alpha:forged"})
    assert error.value.status == 400 and "internal routing" in error.value.message


def test_ordinary_headers_pass():
    refuse_routing_headers({"content-type": "image/jpeg", "x-request-id": "abc", "serve-multiplexed": "x"})


def test_a_client_that_leaves_mid_body_is_a_499_not_a_server_error():
    messages = [{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}]

    async def receive():
        return messages.pop(0)

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}, receive)
    with pytest.raises(HTTPError) as error:
        asyncio.run(read_body(request, max_bytes=1024, timeout_s=5))
    assert error.value.status == 499 and "after 3 bytes" in error.value.message
