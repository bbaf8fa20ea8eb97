"""Helpers for the serving tests: a registry of small random models and a deployed Serve on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import yaml
from PIL import Image

from conftest import REPO_ROOT
from factory import images, registry
from factory.transform_net import TransformNet

STYLES = REPO_ROOT / "data" / "samples" / "styles"


def publish_random_style(root: Path, name: str, seed: int, style_image: str = "udnie.jpg") -> str:
    torch.manual_seed(seed)
    style = Image.open(STYLES / style_image).convert("RGB")
    thumbnail = images.encode(images.fit_within(style, 64))
    metadata = {"loss_network": {"source": "random", "random_weights": True}, "steps": seed}
    return registry.publish(str(root), name, TransformNet().state_dict(), metadata, thumbnail, thumbnail)


def deploy(serving_config: dict, path: Path, address: str, env: dict) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(serving_config))
    return subprocess.run([sys.executable, "-m", "serve.deploy", "--config", str(path), "--address", address,
                           "--write", str(path.with_suffix(".serve.yaml"))],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
