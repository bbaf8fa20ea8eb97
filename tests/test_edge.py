"""The edge the docs require, run as written: Debian's nginx with the docs' server block (only its two
ports changed) in front of the served Serve, over real HTTP. Serve's routing headers are stripped, the
body limit holds at the edge, a stylise passes through, and a client that trickles its body is held by
nginx, never by a replica. Skips, saying why, where nginx is missing (.ci/run installs it)."""

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import REPO_ROOT, free_port
from serving import served  # noqa: F401 (a fixture)
from test_serve import photo_bytes

pytestmark = pytest.mark.slow
DOC = REPO_ROOT / "docs" / "operations.md"  # the page whose ```nginx block operators copy
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def documented_server_block() -> str:
    blocks = re.findall(r"```nginx\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1, f"{DOC.name} should hold exactly one nginx block, found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def edge(served, tmp_path_factory):
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    block = documented_server_block()
    port = free_port()
    assert "listen 80;" in block and "proxy_pass http://127.0.0.1:8000;" in block, "the documented block changed shape"
    block = block.replace("listen 80;", f"listen 127.0.0.1:{port};").replace(
        "proxy_pass http://127.0.0.1:8000;", f"proxy_pass http://127.0.0.1:{served['config']['http']['port']};")
    prefix = tmp_path_factory.mktemp("nginx")
    (prefix / "logs").mkdir()
    temp = {name: prefix / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (prefix / "nginx.conf").write_text(
        f"user root;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log {prefix}/logs/access.log;\n"
        f"  client_body_temp_path {temp['body']}; proxy_temp_path {temp['proxy']}; fastcgi_temp_path {temp['fastcgi']};\n"
        f"  uwsgi_temp_path {temp['uwsgi']}; scgi_temp_path {temp['scgi']};\n"
        f"{block}}}\n")
    process = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "nginx did not start"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=20)


def test_a_stylise_passes_through_the_edge(edge):
    response = requests.post(f"{edge}/styles/alpha", data=photo_bytes(), timeout=60)
    assert response.status_code == 200 and response.headers["x-style"] == "alpha"


@pytest.mark.parametrize("header", ["serve_multiplexed_model_id", "Serve-Multiplexed-Model-Id"])
def test_serves_routing_header_never_reaches_serve(edge, served, header):
    """Sent straight to Serve, the app refuses it (400); through the edge it is gone before Serve sees it."""
    forged = {header: "alpha:forged"}
    assert requests.post(f"{served['base']}/styles/alpha", data=photo_bytes(), headers=forged, timeout=60).status_code == 400
    assert requests.post(f"{edge}/styles/alpha", data=photo_bytes(), headers=forged, timeout=60).status_code == 200


def test_a_body_over_the_edges_limit_is_refused_at_the_edge(edge):
    response = requests.post(f"{edge}/styles/alpha", data=b"\0" * (21 * 1024 * 1024), timeout=60)
    assert response.status_code == 413 and response.headers.get("server", "").startswith("nginx")


def test_a_client_that_trickles_its_body_is_held_by_the_edge_not_by_a_replica(edge, served):
    """The dedicated style 'slow' takes one request at a time: while a client sends a body slowly through
    the edge, it keeps answering others, and the edge drops the trickle after client_body_timeout."""
    stalled = socket.create_connection((edge.split("//")[1].split(":")[0], int(edge.rsplit(":", 1)[1])))
    stalled.sendall(b"POST /styles/slow HTTP/1.1\r\nHost: edge\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n" + b"\xff" * 1000)
    started = time.time()
    for _ in range(3):
        assert requests.post(f"{edge}/styles/slow", data=photo_bytes(), timeout=30).status_code == 200
    stalled.settimeout(30)
    answer = stalled.recv(4096)  # nginx gives up on the body (408, or a closed connection) within its timeout
    assert time.time() - started < 25 and (answer == b"" or b" 408 " in answer.split(b"\r\n")[0])
    stalled.close()
