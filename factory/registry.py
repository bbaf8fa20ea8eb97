"""The model registry: where training publishes finished styles and serving reads them.

Layout under the registry root (a folder or s3://bucket/prefix):

    <style>/current.json                      {"version": ..., "published_at": ...}, written last
    <style>/versions/<version>/model.pt        TransformNet state dict (tensors only)
    <style>/versions/<version>/model.onnx      the same network for ONNX Runtime (CPU serving); older versions lack it
    <style>/versions/<version>/metadata.json   style, image hash, loss network, config, steps, losses...
    <style>/versions/<version>/thumbnail.jpg   the style image, at most 256 px
    <style>/versions/<version>/preview.jpg     a sample photo stylised by this model

A version's files are written first, `current.json` last: it is one small atomic write (a rename on
disk, a PUT on S3), so a reader that follows it never sees a half-written model, and a retrained
style replaces the old one in one step while the old version stays readable.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from factory import storage
from factory.style_names import validate_style_name

if TYPE_CHECKING:
    from factory.transform_net import TransformNet

FORMAT_VERSION = 1
MODEL_FILE, METADATA_FILE, THUMBNAIL_FILE, PREVIEW_FILE = "model.pt", "metadata.json", "thumbnail.jpg", "preview.jpg"
ONNX_FILE = "model.onnx"
MAX_MODEL_BYTES = 64 * 1024 * 1024  # a TransformNet is about 7 MB; anything far bigger is not ours


class ModelNotFound(LookupError):
    pass


def version_uri(registry: str, style: str, version: str, filename: str = "") -> str:
    validate_style_name(style)
    parts = [style, "versions", version] + ([filename] if filename else [])
    return storage.join(registry, *parts)


def publish(registry: str, style: str, state_dict: dict, metadata: dict, thumbnail_jpeg: bytes, preview_jpeg: bytes,
            onnx_model: bytes | None = None) -> str:
    """Write a complete new version of `style` (with its ONNX export when given: factory/onnx_model.py),
    then point current.json at it. Returns the version."""
    import torch  # here, not at the top: the serving front door reads the registry without torch (~470 MB a process)

    validate_style_name(style)
    now = datetime.now(timezone.utc)
    version = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in state_dict.items()}, buffer)
    model_bytes = buffer.getvalue()
    metadata = {
        **metadata,
        "format": FORMAT_VERSION,
        "style": style,
        "version": version,
        "published_at": now.isoformat(),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        **({"onnx_sha256": hashlib.sha256(onnx_model).hexdigest()} if onnx_model else {}),
    }
    storage.write_bytes(version_uri(registry, style, version, MODEL_FILE), model_bytes)
    if onnx_model:
        storage.write_bytes(version_uri(registry, style, version, ONNX_FILE), onnx_model)
    storage.write_bytes(version_uri(registry, style, version, THUMBNAIL_FILE), thumbnail_jpeg)
    storage.write_bytes(version_uri(registry, style, version, PREVIEW_FILE), preview_jpeg)
    storage.write_bytes(version_uri(registry, style, version, METADATA_FILE), json.dumps(metadata, indent=2, sort_keys=True).encode())
    pointer = {"version": version, "published_at": metadata["published_at"]}
    storage.write_bytes(storage.join(registry, style, "current.json"), json.dumps(pointer).encode())
    return version


def current_version(registry: str, style: str) -> str:
    validate_style_name(style)
    try:
        pointer = json.loads(storage.read_bytes(storage.join(registry, style, "current.json")))
    except FileNotFoundError:
        raise ModelNotFound(f"no published model named {style!r} in registry {registry!r}") from None
    return pointer["version"]


def list_styles(registry: str) -> list[str]:
    """Names of the styles with a complete published version, sorted."""
    return [name for name in style_folders(registry) if storage.exists(storage.join(registry, name, "current.json"))]


def style_folders(registry: str) -> list[str]:
    """Names of the registry's folders that can be styles (published or still being written), sorted."""
    names = []
    for name in storage.list_subfolders(registry):
        try:
            validate_style_name(name)
        except ValueError:
            continue  # not ours (a stray folder); never turn it into a URL
        names.append(name)
    return sorted(names)


def read_metadata(registry: str, style: str, version: str | None = None) -> dict:
    version = version or current_version(registry, style)
    return json.loads(storage.read_bytes(version_uri(registry, style, version, METADATA_FILE)))


def read_file(registry: str, style: str, filename: str, version: str | None = None) -> bytes:
    if filename not in (MODEL_FILE, ONNX_FILE, METADATA_FILE, THUMBNAIL_FILE, PREVIEW_FILE):
        raise ValueError(f"unknown registry file {filename!r}")
    return storage.read_bytes(version_uri(registry, style, version or current_version(registry, style), filename))


def load_model(registry: str, style: str, version: str | None = None) -> tuple[TransformNet, dict]:
    """The published network (eval mode, CPU) and its metadata. Never unpickles code."""
    metadata = read_metadata(registry, style, version)
    return load_net(registry, metadata), metadata


def load_net(registry: str, metadata: dict) -> TransformNet:
    """The network of the version `metadata` describes (eval mode, CPU), sha256-checked, weights only."""
    import torch

    from factory.transform_net import TransformNet

    model_bytes = _read_checked(registry, metadata, MODEL_FILE, metadata["model_sha256"])
    state_dict = torch.load(io.BytesIO(model_bytes), map_location="cpu", weights_only=True)
    net = TransformNet(upsample=metadata.get("architecture", {}).get("upsample", "nearest"))
    net.load_state_dict(state_dict)
    return net.eval()


def load_onnx(registry: str, metadata: dict) -> bytes | None:
    """The version's ONNX export, sha256-checked; None for a version published without one."""
    if "onnx_sha256" not in metadata:
        return None
    return _read_checked(registry, metadata, ONNX_FILE, metadata["onnx_sha256"])


def _read_checked(registry: str, metadata: dict, filename: str, sha256: str) -> bytes:
    data = storage.read_bytes(version_uri(registry, metadata["style"], metadata["version"], filename))
    if len(data) > MAX_MODEL_BYTES:
        raise ValueError(f"{filename} of {metadata['style']!r} is {len(data)} bytes, more than a TransformNet can be")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{filename} of {metadata['style']!r} version {metadata['version']} does not match its recorded sha256")
    return data
