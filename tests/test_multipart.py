"""The multipart form parser: finds the image, and stays linear-time on hostile bodies."""

import time

import pytest
import requests

from serve.http_input import HTTPError, image_bytes_from_body

BOUNDARY = "----formboundary7MA4YWxk"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


def test_the_image_field_is_found_among_others():
    body = form(("note", None, b"hello"), ("image", "cat.png", b"\x89PNG-bytes\r\n-with-crlf"))
    assert image_bytes_from_body(body, CONTENT_TYPE) == b"\x89PNG-bytes\r\n-with-crlf"


def test_the_first_file_is_taken_when_no_field_is_named_image():
    assert image_bytes_from_body(form(("note", None, b"x"), ("upload", "a.jpg", b"jpeg")), CONTENT_TYPE) == b"jpeg"


def test_forms_as_requests_builds_them_parse():
    prepared = requests.Request("POST", "http://x/", files={"image": ("a.webp", b"RIFF-data", "image/webp")}).prepare()
    assert image_bytes_from_body(prepared.body, prepared.headers["Content-Type"]) == b"RIFF-data"


@pytest.mark.parametrize("body, message", [
    (b"\n" * 2_000_000, "a form with a file field"),
    (form(*[(f"f{i}", None, b"x") for i in range(50_000)]), "too many parts"),
    (f"--{BOUNDARY}\r\n".encode() + b"X-Header: y\r\n" * 5_000, "headers are missing or longer"),
    (form(("note", None, b"x")), "no field named 'image'"),
])
def test_hostile_and_wrong_forms_are_refused_quickly(body, message):
    started = time.perf_counter()
    with pytest.raises(HTTPError, match=message) as refused:
        image_bytes_from_body(body, CONTENT_TYPE)
    assert refused.value.status == 400
    # A bound on blocking, not a speed claim: email.parser held the replica 8 s and 66 s on the first two.
    assert time.perf_counter() - started < 5.0
