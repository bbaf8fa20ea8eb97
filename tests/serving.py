"""Helpers for the serving tests: a registry of small random models and a deployed Serve on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import torch
import yaml
from PIL import Image

from conftest import REPO_ROOT
from factory import images, onnx_model, registry
from factory.family import StyleFamily
from factory.transform_net import TransformNet

STYLES = REPO_ROOT / "data" / "samples" / "styles"
MAX_BODY = 2_000_000
BODY_TIMEOUT_S = 3


def publish_random_style(root: Path, name: str, seed: int, style_image: str = "udnie.jpg", with_onnx: bool = False,
                         width: float = 1.0) -> str:
    """A random model published as training publishes it (with its ONNX export only when asked: 0.7 s each)."""
    torch.manual_seed(seed)
    style = Image.open(STYLES / style_image).convert("RGB")
    thumbnail = images.encode(images.fit_within(style, 64))
    metadata = {"loss_network": {"source": "random", "random_weights": True}, "steps": seed,
                "quality": {"colour_shift": 0.42, "structure_kept": 0.5 + seed / 10, "preview_photo": "chelsea.png"},
                "architecture": {"name": "johnson2016-instancenorm", "upsample": "nearest", "width": width}}
    net = TransformNet(width=width).eval()
    return registry.publish(str(root), name, net.state_dict(), metadata, thumbnail, thumbnail,
                            onnx_model=onnx_model.export(net) if with_onnx else None)


def publish_random_family(root: Path, names=("a", "b"), seed: int = 0, family: str = "fam", recipe_hash: str = "-",
                          output_norm: bool = True) -> dict[str, str]:
    """A random style family published as training publishes one: {style: version}. output_norm=False: as
    families were published before the output conv had its norm (their architecture does not say)."""
    torch.manual_seed(seed)
    network = StyleFamily(list(names), output_norm=output_norm).eval()
    with torch.no_grad():
        network.style_vectors.add_(0.5 * torch.randn_like(network.style_vectors))
    architecture = {"name": "dumoulin2017-conditional-instancenorm", "upsample": "nearest", "width": 1.0, "family": family,
                    **({"output_norm": True} if output_norm else {})}
    family_metadata = {"styles": list(names), "architecture": architecture, "style_size": network.net.style_size,
                       "loss_network": {"source": "random", "random_weights": True}, "recipe_hash": recipe_hash}
    reference = registry.publish_family(str(root), family, network.net.state_dict(), family_metadata, onnx_model.export(network.net))
    thumbnail = images.encode(images.fit_within(Image.open(STYLES / "udnie.jpg").convert("RGB"), 64))
    return {name: registry.publish(str(root), name, {"style_vector": network.style_vectors[index]},
                                   {"architecture": architecture, "family": reference, "steps": seed}, thumbnail, thumbnail)
            for index, name in enumerate(names)}


def deploy(serving_config: dict, path: Path, address: str, env: dict) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(serving_config))
    return subprocess.run([sys.executable, "-m", "serve.deploy", "--config", str(path), "--address", address,
                           "--write", str(path.with_suffix(".serve.yaml"))],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def served(ray_head, serve_http_port, tmp_path_factory):
    """alpha and beta served by the pool (one replica of two cores, a cache of two models, so styles are
    evicted all the time, and small queues), plus 'slow', a dedicated style with a one-request queue."""
    address, env = ray_head
    root = tmp_path_factory.mktemp("serving")
    for seed, name in enumerate(["alpha", "beta", "slow"]):
        publish_random_style(root / "registry", name, seed)
    port = serve_http_port
    config = {
        "registry": str(root / "registry"),
        "http": {"host": "127.0.0.1", "port": port},
        "pool": {"model_cache_mb": 16, "refresh_s": 1, "cpu_runtime": "onnxruntime"},  # torch runs versions without an export
        # One pool replica with two cores: it runs two styles side by side (test_pool.py).
        # Health checked every 2 s (Serve's 10 s is the default): a replica that would be replaced is, within the tests.
        "defaults": {"num_cpus": 2, "max_replicas": 1, "max_body_bytes": MAX_BODY, "body_timeout_s": BODY_TIMEOUT_S,
                     "max_ongoing_requests": 3, "max_queued_requests": 8, "health_check_period_s": 2},
        "styles": {"slow": {"dedicated": True, "num_cpus": 0.25, "max_replicas": 1, "max_ongoing_requests": 1,
                            "max_queued_requests": 1, "max_batch_size": 1}},
    }
    done = deploy(config, root / "serving.yaml", address, env)
    assert done.returncode == 0, done.stderr[-3000:]
    yield {"base": f"http://127.0.0.1:{port}", "root": root, "config": config, "address": address, "env": env}
    from serve.deploy import _client

    _client(address).delete_applications()
