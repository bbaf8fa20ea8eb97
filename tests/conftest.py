"""Shared fixtures: a real local Ray, a real S3-compatible server, and dirty image folders."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/vgg_files.py


def pytest_configure(config):
    """The Ray token, made as the README's first serving step makes it, once per machine, and token auth
    on: before any test module imports Ray, which settles this process's authentication on what it finds
    then. (In a whole-suite run an earlier ray.init happened to turn it on; a file run alone, or a fresh
    machine, left the dashboard clients of the token-auth cluster tests without it.)"""
    if not (Path.home() / ".ray" / "auth_token").exists() and not os.environ.get("RAY_AUTH_TOKEN"):
        subprocess.run(ray_cli("get-auth-token", "--generate"), check=True, stdout=subprocess.DEVNULL, timeout=120)
    # Every cluster here uses it, as Ray 2.60's do by default: Ray reads the mode once, so it is set first.
    os.environ["RAY_AUTH_MODE"] = "token"


def uses(item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


def cluster_group(item) -> int:
    """0: no cluster; 1: the local Ray; 2: the `ray start` cluster without the served applications (a
    submitted job, which also deploys its own and must not replace them); 3: the served applications."""
    if uses(item, "served"):
        return 3
    return 2 if uses(item, "ray_head") else 1 if uses(item, "ray_local") else 0


def pytest_collection_modifyitems(session, config, items):
    """Each cluster alone on the CPU: first the tests that need no cluster, then every user of the local
    Ray (Ray Train runs), then every user of the `ray start` cluster, its submitted jobs before its served
    applications (a job's training must not share the cluster's CPUs with them). Otherwise the Train runs
    shared two cores with a second cluster and an idle Serve's controller, proxy and health checks. Within
    a group the files keep their order (module fixtures stay contiguous)."""
    items.sort(key=cluster_group)
    local = [item for item in items if uses(item, "ray_local")]
    config.stash[LAST_LOCAL_RAY_USER] = local[-1].nodeid if local else None


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """The local Ray ends after its last user, not at the session's end: the ray_head group runs alone."""
    if item.nodeid == item.config.stash.get(LAST_LOCAL_RAY_USER, None):
        import ray

        if ray.is_initialized():
            from ray import serve

            serve.shutdown()
            ray.shutdown()


LAST_LOCAL_RAY_USER = pytest.StashKey[str]()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One real local Ray for the session: 4 logical CPUs on 2 cores, so Ray Data keeps room to decode
    beside two training workers. Started after the S3 server so its workers inherit the endpoint."""
    import ray

    # No dashboard: nothing here asks it (job submission runs against the ray_head cluster).
    ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def local_serve(ray_local):
    """Serve on the local Ray, handles only (no HTTP proxy), started once for the tests that deploy a
    small deployment of their own; each deletes its application when done."""
    from ray import serve
    from ray.serve.config import ProxyLocation

    serve.start(proxy_location=ProxyLocation.Disabled)
    yield serve
    if ray_local.is_initialized():  # else the local Ray ended after its last user (pytest_runtest_teardown)
        serve.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, reached through boto3 and pyarrow exactly as AWS S3 would be,
    via the standard AWS_ENDPOINT_URL setting."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    settings = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}
    previous = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                process.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.2)
    yield settings
    process.terminate()
    process.wait(timeout=10)
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def write_dirty_image_folder(folder: Path, clean_count: int = 12, size: int = 48) -> dict[str, int]:
    """A content folder as real data comes: RGB JPEGs and PNGs plus a grayscale and a CMYK JPEG
    (both usable) and a corrupt, a truncated, a zero-byte and a non-image file (all skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(clean_count):
        # Smooth gradients with noise: something a style network can learn to reproduce.
        y, x = np.mgrid[0:size, 0:size]
        pixels = np.stack([(x * 5 + index * 20) % 256, (y * 5) % 256, (x + y + index * 7) % 256], axis=-1)
        pixels = np.clip(pixels + rng.normal(0, 10, pixels.shape), 0, 255).astype(np.uint8)
        suffix = "png" if index % 3 == 0 else "jpg"
        Image.fromarray(pixels).save(folder / f"photo_{index:03d}.{suffix}")
    nested = folder / "nested"
    nested.mkdir()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(nested / "grayscale.jpg")
    Image.fromarray(rng.integers(0, 255, (size, size, 4), dtype=np.uint8), "CMYK").save(nested / "cmyk.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    good = (folder / "photo_001.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return {"usable": clean_count + 2, "skipped": 4}


@pytest.fixture
def dirty_images(tmp_path) -> tuple[Path, dict[str, int]]:
    folder = tmp_path / "content"
    return folder, write_dirty_image_folder(folder)


@pytest.fixture(scope="session")
def serve_http_port() -> int:
    """One HTTP port for Ray Serve on the test cluster: Serve keeps the port it first started with."""
    return free_port()


def ray_cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "ray"), *args]


@pytest.fixture(scope="session")
def ray_head():
    """A one-node Ray cluster started the way a user starts one, with token authentication on."""
    # A short temp dir: Ray's unix socket paths must fit in 107 bytes, pytest's tmp_path may not.
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    dashboard_port, metrics_port = free_port(), free_port()
    # Ray 2.60 clusters require token auth; this process's dashboard clients (serve.deploy) too.
    os.environ["RAY_AUTH_MODE"] = "token"
    # `python` in a submitted job is whatever the cluster's PATH finds: this test's interpreter. The
    # metrics port is where Prometheus would scrape the node (tests/test_serving_for_weeks.py does).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TEST_METRICS_EXPORT_PORT": str(metrics_port)}
    head = subprocess.Popen(
        ray_cli("start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=4", f"--temp-dir={temp_dir}",
                # Ports of their own: the defaults (52365, 10001, ...) are taken by the session's other Ray.
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={metrics_port}", f"--ray-client-server-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_job_agent(head, address, env)
        yield address, env
    finally:
        # The whole process group: a graceful SIGTERM drains for 30 s, and `ray stop` would also end
        # the test session's own Ray.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_agent(head, address, env) -> None:
    # Ready when a trivial job runs: the dashboard answers before its job agent can take jobs.
    deadline = time.time() + 180
    while True:
        probe = subprocess.run(ray_cli("job", "submit", "--address", address, "--", "python", "-c", "pass"),
                               env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            break
        assert head.poll() is None, "ray start --head exited"
        assert time.time() < deadline, f"the Ray cluster did not come up: {probe.stderr[-2000:]}"
        time.sleep(2)
