"""The served styles over real HTTP on 127.0.0.1: pooled ones (alpha, beta) and a dedicated one (slow)."""

import concurrent.futures
import io
import socket
import threading
import time
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from factory import images, registry
from image_files import jpeg_declaring, mpo_photo, png_16_bit_gradient, png_declaring, webp_with_broken_exif
from serve.deploy import _client
from serving import BODY_TIMEOUT_S, MAX_BODY, deploy, publish_random_style, served  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow


def photo_bytes(size=(96, 64), fmt="JPEG", seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def server_timing_ms(response: requests.Response) -> dict[str, float]:
    """{"decode": 3.1, "queue": 0.4, "model": 812.0, "encode": 2.2} from the Server-Timing header."""
    steps = [entry.strip().split(";dur=") for entry in response.headers["server-timing"].split(",")]
    return {name: float(milliseconds) for name, milliseconds in steps}


def good_request_works(base):
    response = requests.post(f"{base}/styles/alpha", data=photo_bytes(), timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"


def test_stylises_raw_jpeg_into_jpeg_of_the_same_size(served):
    response = requests.post(f"{served['base']}/styles/alpha", data=photo_bytes((96, 64)), timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg" and response.headers["x-style"] == "alpha"
    assert Image.open(io.BytesIO(response.content)).size == (96, 64)


@pytest.mark.parametrize("style", ["alpha", "slow"], ids=["pool", "dedicated"])
def test_the_answer_says_where_its_time_went(served, style):
    response = requests.post(f"{served['base']}/styles/{style}", data=photo_bytes((96, 64)), timeout=60)
    assert response.status_code == 200, response.text
    steps = server_timing_ms(response)
    # "load" first when the request waited for its model (the pool caches two, and evicts all the time)
    assert list(steps) in (["decode", "queue", "model", "encode"], ["load", "decode", "queue", "model", "encode"])
    assert all(milliseconds >= 0 for milliseconds in steps.values()) and steps["model"] > 0


def test_output_is_the_models_output(served):
    data = photo_bytes((40, 32), "PNG", seed=3)
    response = requests.post(f"{served['base']}/styles/beta?format=png", data=data, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    net, _ = registry.load_model(str(served["root"] / "registry"), "beta")
    with torch.inference_mode():
        expected = images.to_image(net(images.to_tensor(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0))[0])
    difference = np.abs(np.asarray(Image.open(io.BytesIO(response.content)), int) - np.asarray(expected, int))
    assert difference.max() <= 1


def test_multipart_webp_in_and_webp_out_by_accept_header_with_max_side(served):
    files = {"image": ("photo.webp", photo_bytes((200, 100), "WEBP"), "image/webp")}
    response = requests.post(f"{served['base']}/styles/beta?max_side=50", files=files, headers={"Accept": "image/webp"}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    assert response.headers["vary"] == "Accept"
    assert Image.open(io.BytesIO(response.content)).size == (50, 25)


def test_strength_zero_gives_back_the_photo_and_preserve_colors_keeps_its_colours(served):
    red = io.BytesIO()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(red, "PNG")
    original = requests.post(f"{served['base']}/styles/alpha?strength=0&format=png", data=red.getvalue(), timeout=60)
    assert np.abs(np.asarray(Image.open(io.BytesIO(original.content)), int) - [220, 30, 30]).max() <= 1
    kept = requests.post(f"{served['base']}/styles/alpha?preserve_colors=true&format=png", data=red.getvalue(), timeout=60)
    mean = np.asarray(Image.open(io.BytesIO(kept.content)), float).mean(axis=(0, 1))
    assert mean[0] > mean[1] + 40 and mean[0] > mean[2] + 40  # still red whatever the style did


def test_listing_has_every_style_with_working_thumbnail_and_preview_urls(served):
    listing = requests.get(f"{served['base']}/styles", timeout=30).json()
    assert {"alpha", "beta", "slow"} <= {entry["name"] for entry in listing}  # test_pool.py may be publishing more
    assert listing[0]["metadata"]["loss_network"]["random_weights"] is True
    dedicated = {entry["name"]: entry["dedicated"] for entry in listing}
    assert dedicated["slow"] is True and dedicated["alpha"] is False  # the page offers no blend where none is served
    for url in (listing[0]["thumbnail_url"], listing[1]["preview_url"]):
        assert url.startswith("/gallery/")  # served by the gallery: the page never wakes a style's replicas
        response = requests.get(served["base"] + url, timeout=30)
        assert response.status_code == 200 and response.content.startswith(b"\xff\xd8")
    for url in ("/styles/alpha/thumbnail.jpg", "/styles/alpha/preview.jpg"):  # each style's own copies stay
        assert requests.get(served["base"] + url, timeout=30).status_code == 200
    assert requests.get(served["base"] + "/gallery/alpha/model.pt", timeout=30).status_code == 404
    page = requests.get(served["base"] + "/", timeout=30)
    assert page.status_code == 200 and "<title>style-factory</title>" in page.text


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buffer, "PNG")  # ~100 kB that decodes to 100 megapixels
    return buffer.getvalue()


def truncated() -> bytes:
    data = photo_bytes((64, 64))
    return data[: len(data) // 2]


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "GIF")
    return buffer.getvalue()


BAD_REQUESTS = {
    "empty body": ("post", "/styles/alpha", b"", 400, "empty request body"),
    "not an image": ("post", "/styles/alpha", b"hello world" * 20, 415, "not an image"),
    "truncated image": ("post", "/styles/alpha", truncated(), 400, "unusable image"),
    "unsupported format": ("post", "/styles/alpha", gif(), 415, "unsupported image format GIF"),
    "a video": ("post", "/styles/alpha", b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom" + b"\0" * 200, 415, "a video: the HTTP API stylises images"),
    "video jobs": ("post", "/videos", b"\0\0\0\x18ftypmp42" + b"\0" * 200, 501, "python -m factory.stylize --style <style> clip.mp4"),
    "body over the limit": ("post", "/styles/alpha", b"\0" * (MAX_BODY + 1), 413, "over the limit"),
    "decompression bomb": ("post", "/styles/alpha", bomb(), 413, "over the limit"),
    "PNG declaring 20000x20000": ("post", "/styles/alpha", png_declaring(20_000, 20_000), 413, "over the limit of"),
    "JPEG declaring 60000x60000": ("post", "/styles/alpha", jpeg_declaring(60_000, 60_000), 413, "over the limit of"),
    "unknown style": ("post", "/styles/nope", photo_bytes(), 404, "unknown style 'nope'"),
    "path tricks": ("post", "/styles/..%2F..%2Fetc%2Fpasswd", photo_bytes(), 400, "invalid style name"),
    "upper-case name": ("get", "/styles/ALPHA", b"", 400, "invalid style name"),
    "wrong method": ("delete", "/styles/alpha", b"", 405, "not allowed"),
    "bad option": ("post", "/styles/alpha?strength=2", photo_bytes(), 400, "strength must be between"),
    "bad format": ("post", "/styles/alpha?format=bmp", photo_bytes(), 400, "format must be one of"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(served, case):
    method, path, body, status, message = BAD_REQUESTS[case]
    response = requests.request(method, served["base"] + path, data=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["status"] == status and message in error["error"]
    good_request_works(served["base"])


def test_a_chunked_body_over_the_limit_is_413_though_no_length_was_declared(served):
    chunks = (b"\0" * 100_000 for _ in range(MAX_BODY // 100_000 + 2))  # a generator: requests sends it chunked
    response = requests.post(f"{served['base']}/styles/alpha", data=chunks, timeout=60)
    assert response.status_code == 413 and "over the limit" in response.json()["error"]
    good_request_works(served["base"])


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (1000, 2)], ids=["1x1", "4x4", "1000x2"])
def test_tiny_images_get_a_result_at_their_size(served, size):
    response = requests.post(f"{served['base']}/styles/alpha?format=png", data=photo_bytes(size, "PNG"), timeout=60)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == size


@pytest.mark.parametrize("make", [mpo_photo, png_16_bit_gradient, webp_with_broken_exif], ids=["mpo", "png16", "broken-exif"])
def test_photos_as_phones_and_editors_write_them_are_stylised(served, make):
    response = requests.post(f"{served['base']}/styles/alpha", data=make(), timeout=60)
    assert response.status_code == 200, response.text


def test_an_empty_or_wrong_registry_path_does_not_undeploy_the_running_styles(served, tmp_path):
    config = {**served["config"], "registry": str(tmp_path / "no-such-registry")}
    done = deploy(config, tmp_path / "wrong.yaml", served["address"], served["env"])
    assert done.returncode == 2 and "no-such-registry" in done.stderr and "--allow-empty" in done.stderr
    good_request_works(served["base"])


@pytest.mark.parametrize("style", ["alpha", "slow"], ids=["pool", "dedicated"])
def test_a_slow_body_is_cut_off_with_408_while_other_clients_are_served(served, style):
    host, port = served["base"].removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=60)
    # Ray's proxy lets a client lift Serve's request timeout with this header: the app's own deadline must hold.
    client.sendall(f"POST /styles/{style} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n"
                   "x-request-timeout-seconds: 0\r\n\r\n".encode())
    stop = threading.Event()

    def trickle():  # a byte every 0.2 s: 100 kB would take 5 hours
        while not stop.is_set():
            try:
                client.sendall(b"x")
            except OSError:
                return
            time.sleep(0.2)

    start = time.monotonic()
    threading.Thread(target=trickle, daemon=True).start()
    good_request_works(served["base"])  # served meanwhile
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
            answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
        chunk = client.recv(4096)
        if not chunk:
            break
        answer += chunk
    stop.set()
    client.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b'"status":408' in answer and b"did not arrive within" in answer
    assert time.monotonic() - start < BODY_TIMEOUT_S + 10
    good_request_works(served["base"])


def test_head_answers_like_get_without_a_body(served):
    for path in ("/styles/alpha", "/styles/alpha/thumbnail.jpg", "/styles/alpha/preview.jpg"):
        response = requests.head(served["base"] + path, timeout=30)
        assert response.status_code == 200, (path, response.status_code, response.text)
        assert response.content == b""


def test_concurrent_load_completes_without_server_errors(served):
    body = photo_bytes((64, 64))

    def one(index):
        response = requests.post(f"{served['base']}/styles/{'alpha' if index % 2 else 'beta'}", data=body, timeout=120)
        return response.status_code, response.text[:200] if response.status_code != 200 else ""

    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:  # within what one pool replica takes (3, and 8 queued)
        answers = list(pool.map(one, range(40)))
    assert answers == [(200, "")] * 40


def shed(url: str, clients: int, max_side: int) -> list[tuple[int, str]]:
    big = photo_bytes((max_side, max_side))  # a second or more of CPU each: the replicas stay busy

    def one(_):
        response = requests.post(f"{url}?max_side={max_side}", data=big, timeout=300)
        return response.status_code, response.text[:200] + f" retry-after={response.headers.get('retry-after')}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(one, range(clients)))


@pytest.mark.parametrize("style, clients, max_side", [("slow", 6, 1024), ("alpha", 20, 512)], ids=["dedicated", "pool"])
def test_requests_past_a_full_queue_are_shed_with_503(served, style, clients, max_side):
    results = shed(f"{served['base']}/styles/{style}", clients, max_side)
    statuses = [status for status, _ in results]
    assert 503 in statuses and 200 in statuses, results
    assert set(statuses) <= {200, 503}, results
    if style == "alpha":  # the pool's queue overflows before Serve's proxy sheds: a JSON answer that says why
        shed_texts = [text for status, text in results if status == 503]
        assert any("at capacity" in text for text in shed_texts), shed_texts
        assert all("retry-after=5" in text for text in shed_texts), shed_texts  # when to come back
    good_request_works(served["base"])


def replica_ids(address, app) -> set[str]:
    deployments = _client(address).get_serve_details()["applications"][app]["deployments"]
    return {replica["replica_id"] for deployment in deployments.values() for replica in deployment["replicas"]}


def test_serve_status_shows_every_application_running(served):
    serve_cli = str(Path(sys.executable).parent / "serve")
    done = subprocess.run([serve_cli, "status", "--address", served["address"]], env=served["env"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for app in ("front", "style-slow"):
        assert f"{app}:" in done.stdout
    assert "DEPLOY_FAILED" not in done.stdout and "RUNNING" in done.stdout


def test_retraining_a_dedicated_style_redeploys_it_alone(served):
    front_before = replica_ids(served["address"], "front")
    old_version = requests.post(f"{served['base']}/styles/slow", data=photo_bytes(), timeout=60).headers["x-model-version"]
    new_version = publish_random_style(served["root"] / "registry", "slow", seed=42)

    done = deploy(served["config"], served["root"] / "serving.yaml", served["address"], served["env"])
    assert done.returncode == 0, done.stderr[-3000:]

    response = requests.post(f"{served['base']}/styles/slow", data=photo_bytes(), timeout=60)
    assert response.status_code == 200 and response.headers["x-model-version"] == new_version != old_version
    # The front and pool kept their replicas (autoscaling may still have added or removed one; a
    # redeploy would have replaced them all).
    assert replica_ids(served["address"], "front") & front_before
    good_request_works(served["base"])


@pytest.mark.parametrize("style", ["alpha", "slow"], ids=["pool", "dedicated"])
@pytest.mark.parametrize("header", ["serve_multiplexed_model_id", "Serve-Multiplexed-Model-Id"])
def test_a_client_may_not_choose_serves_routing_model_id(served, header, style):
    """Serve's proxy routes by this header, in either spelling, and keeps one request per value it saw."""
    response = requests.post(f"{served['base']}/styles/{style}", data=photo_bytes(), headers={header: f"{style}:forged"}, timeout=60)
    assert response.status_code == 400 and "internal routing" in response.json()["error"]
    good_request_works(served["base"])
