"""The model registry: where training publishes finished styles and serving reads them.

Layout under the registry root (a folder or s3://bucket/prefix):

    <style>/current.json                      {"version": ..., "published_at": ...}, written last
    <style>/versions/<version>/model.pt        TransformNet state dict (tensors only)
    <style>/versions/<version>/model.onnx      the same network for ONNX Runtime (CPU serving); older versions lack it
    <style>/versions/<version>/model.int8.onnx its int8 copy (factory/onnx_int8.py), where it keeps the style's figures
    <style>/versions/<version>/metadata.json   style, image hash, loss network, config, steps, losses...
    <style>/versions/<version>/thumbnail.jpg   the style image, at most 256 px
    <style>/versions/<version>/preview.jpg     a sample photo stylised by this model

    index.json                                 every style's current.json in one object, for serving's refresh

    _families/<family>/current.json                      the family's latest version
    _families/<family>/versions/<version>/model.pt       a style family's shared network (factory/family.py)
    _families/<family>/versions/<version>/model.onnx     the same, taking each image's style vector as an input
    _families/<family>/versions/<version>/metadata.json  its styles, architecture, loss network, run

A style of a family is a style like any other (its own current.json, versions, metadata, pictures);
its model.pt holds only its style vector, and its metadata names the family version it belongs to
(with that version's sha256s). "_families" is not a valid style name, so it is never listed as one.

A version's files are written first, `current.json` last: it is one small atomic write (a rename on
disk, a PUT on S3), so a reader that follows it never sees a half-written model, and a retrained
style replaces the old one in one step while the old version stays readable.

`index.json` lets a server learn every style's current version in one (conditional) GET rather than
one per style. Each publish updates it after `current.json`; the per-style pointers stay the truth.
Two publishers in different processes can overwrite each other's update (S3 has no lock here), so
readers also scan the pointers from time to time (serve/registry_view.py), which repairs the lag; a
registry from before the index is scanned until its first publish writes one.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import threading
import weakref
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from factory import storage
from factory.style_names import is_style_name, validate_style_name

if TYPE_CHECKING:
    import torch

    from factory.family import FamilyStyle
    from factory.onnx_model import OnnxTransformNet
    from factory.transform_net import TransformNet

FORMAT_VERSION = 1
MODEL_FILE, METADATA_FILE, THUMBNAIL_FILE, PREVIEW_FILE = "model.pt", "metadata.json", "thumbnail.jpg", "preview.jpg"
ONNX_FILE, INT8_ONNX_FILE = "model.onnx", "model.int8.onnx"
INDEX_FILE, POINTER_FILE = "index.json", "current.json"
MAX_MODEL_BYTES = 64 * 1024 * 1024  # a TransformNet is about 7 MB; anything far bigger is not ours


class ModelNotFound(LookupError):
    pass


FAMILIES_FOLDER = "_families"
_FAMILY_NETS = weakref.WeakValueDictionary()  # (registry, family, version, sha256) -> its network, while a style holds it
_FAMILY_NETS_LOCK = threading.Lock()


def version_uri(registry: str, style: str, version: str, filename: str = "") -> str:
    validate_style_name(style)
    parts = [style, "versions", version] + ([filename] if filename else [])
    return storage.join(registry, *parts)


def publish(registry: str, style: str, state_dict: dict, metadata: dict, thumbnail_jpeg: bytes, preview_jpeg: bytes,
            onnx_model: bytes | None = None, int8_onnx_model: bytes | None = None) -> str:
    """Write a complete new version of `style` (with its ONNX export when given: factory/onnx_model.py,
    and that export's int8 copy: factory/onnx_int8.py), then point current.json at it. Returns the version."""
    validate_style_name(style)
    now, version = _new_version()
    model_bytes = _tensor_bytes(state_dict)
    metadata = {
        **metadata,
        "format": FORMAT_VERSION,
        "style": style,
        "version": version,
        "published_at": now.isoformat(),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        **({"onnx_sha256": hashlib.sha256(onnx_model).hexdigest()} if onnx_model else {}),
        **({"int8_onnx_sha256": hashlib.sha256(int8_onnx_model).hexdigest()} if int8_onnx_model else {}),
    }
    storage.write_bytes(version_uri(registry, style, version, MODEL_FILE), model_bytes)
    if onnx_model:
        storage.write_bytes(version_uri(registry, style, version, ONNX_FILE), onnx_model)
    if int8_onnx_model:
        storage.write_bytes(version_uri(registry, style, version, INT8_ONNX_FILE), int8_onnx_model)
    storage.write_bytes(version_uri(registry, style, version, THUMBNAIL_FILE), thumbnail_jpeg)
    storage.write_bytes(version_uri(registry, style, version, PREVIEW_FILE), preview_jpeg)
    storage.write_bytes(version_uri(registry, style, version, METADATA_FILE), json.dumps(metadata, indent=2, sort_keys=True).encode())
    pointer = {"version": version, "published_at": metadata["published_at"]}
    storage.write_bytes(storage.join(registry, style, POINTER_FILE), json.dumps(pointer).encode())
    _add_to_index(registry, style, pointer)
    return version


def _new_version() -> tuple[datetime, str]:
    now = datetime.now(timezone.utc)
    return now, f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _tensor_bytes(state_dict: dict) -> bytes:
    import torch  # here, not at the top: the serving front door reads the registry without torch (~470 MB a process)

    buffer = io.BytesIO()
    # clone: a tensor that is a view (a family's style vector is a row of its table) would save the whole table
    torch.save({key: value.detach().cpu().clone() for key, value in state_dict.items()}, buffer)
    return buffer.getvalue()


def family_uri(registry: str, family: str, version: str = "", filename: str = "") -> str:
    validate_style_name(family)
    parts = [FAMILIES_FOLDER, family] + (["versions", version] if version else []) + ([filename] if filename else [])
    return storage.join(registry, *parts)


def publish_family(registry: str, family: str, state_dict: dict, metadata: dict, onnx_model: bytes) -> dict:
    """Write a new version of a style family's shared network; returns what its styles' metadata
    records of it ({"name", "version", "model_sha256", "onnx_sha256"}). Publish the styles after it."""
    now, version = _new_version()
    model_bytes = _tensor_bytes(state_dict)
    reference = {"name": family, "version": version, "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
                 "onnx_sha256": hashlib.sha256(onnx_model).hexdigest()}
    metadata = {**metadata, "format": FORMAT_VERSION, "family": reference, "published_at": now.isoformat()}
    storage.write_bytes(family_uri(registry, family, version, MODEL_FILE), model_bytes)
    storage.write_bytes(family_uri(registry, family, version, ONNX_FILE), onnx_model)
    storage.write_bytes(family_uri(registry, family, version, METADATA_FILE), json.dumps(metadata, indent=2, sort_keys=True).encode())
    storage.write_bytes(family_uri(registry, family, filename=POINTER_FILE), json.dumps({"version": version, "published_at": metadata["published_at"]}).encode())
    return reference


def read_family_metadata(registry: str, family: str, version: str | None = None) -> dict:
    """A family version's metadata (its current one by default); ModelNotFound when there is none."""
    try:
        version = version or json.loads(storage.read_bytes(family_uri(registry, family, filename=POINTER_FILE)))["version"]
        return json.loads(storage.read_bytes(family_uri(registry, family, version, METADATA_FILE)))
    except FileNotFoundError:
        raise ModelNotFound(f"no published style family {family!r}{f' version {version}' if version else ''} in registry {registry!r}") from None


_INDEX_LOCK = threading.Lock()  # packs publish from several threads of one driver


def read_index_styles(registry: str) -> dict[str, dict] | None:
    """{style: pointer} from index.json; None for a registry without one."""
    try:
        return json.loads(storage.read_bytes(storage.join(registry, INDEX_FILE)))["styles"]
    except FileNotFoundError:
        return None


def _add_to_index(registry: str, style: str, pointer: dict) -> None:
    """index.json with this style's new pointer; built from the pointers when the registry has none yet."""
    with _INDEX_LOCK:
        styles = read_index_styles(registry)
        if styles is None:
            styles = scan_pointers(registry)
        styles[style] = pointer
        write_index(registry, styles)


def list_versions(registry: str, style: str) -> list[str]:
    """The style's version folders, oldest first (a version's name begins with its UTC publishing time)."""
    validate_style_name(style)
    return sorted(storage.list_subfolders(storage.join(registry, style, "versions")))


def list_family_versions(registry: str, family: str) -> list[str]:
    """A family's version folders, oldest first."""
    return sorted(storage.list_subfolders(storage.join(family_uri(registry, family), "versions")))


def list_families(registry: str) -> list[str]:
    return [name for name in storage.list_subfolders(storage.join(registry, FAMILIES_FOLDER)) if is_style_name(name)]


def make_current(registry: str, style: str, version: str) -> dict:
    """Point the style at one of its published versions (a rollback): the same atomic pointer write as a
    publish, then the index. The pointer's published_at is now, when this version became current, so
    readers that never go back to an older pointer take it (serve/registry_view.py)."""
    validate_style_name(style)
    metadata = read_metadata(registry, style, version)  # FileNotFoundError: not a complete version
    if "family" in metadata and not storage.exists(family_uri(registry, metadata["family"]["name"], metadata["family"]["version"], MODEL_FILE)):
        raise ModelNotFound(f"{style!r} version {version} belongs to family {metadata['family']['name']!r} version "
                            f"{metadata['family']['version']}, which is no longer in the registry (pruned)")
    pointer = {"version": version, "published_at": datetime.now(timezone.utc).isoformat()}
    storage.write_bytes(storage.join(registry, style, POINTER_FILE), json.dumps(pointer).encode())
    _add_to_index(registry, style, pointer)
    return pointer


def withdraw(registry: str, style: str) -> None:
    """Stop publishing `style`: out of index.json, then its current.json gone, so servers drop it at their
    next refresh. Its version files stay (requests in flight may still read them); delete them later."""
    validate_style_name(style)
    with _INDEX_LOCK:
        styles = read_index_styles(registry)
        if styles is not None and styles.pop(style, None) is not None:
            write_index(registry, styles)
    storage.delete(storage.join(registry, style, POINTER_FILE))


def write_index(registry: str, styles: dict[str, dict]) -> None:
    index = {"format": FORMAT_VERSION, "written_at": datetime.now(timezone.utc).isoformat(), "styles": dict(sorted(styles.items()))}
    storage.write_bytes(storage.join(registry, INDEX_FILE), json.dumps(index).encode())


def scan_pointers(registry: str) -> dict[str, dict]:
    """{style: its current.json} read style by style (a listing and a GET each on S3): what index.json caches."""
    pointers = {}
    for name in style_folders(registry):
        try:
            pointers[name] = json.loads(storage.read_bytes(storage.join(registry, name, POINTER_FILE)))
        except FileNotFoundError:
            continue  # its first version is still being written
    return pointers


def read_pointer(registry: str, style: str) -> dict:
    """The style's current.json: {"version": ..., "published_at": ...}."""
    validate_style_name(style)
    try:
        return json.loads(storage.read_bytes(storage.join(registry, style, POINTER_FILE)))
    except FileNotFoundError:
        raise ModelNotFound(f"no published model named {style!r} in registry {registry!r}") from None


def current_version(registry: str, style: str) -> str:
    return read_pointer(registry, style)["version"]


def list_styles(registry: str) -> list[str]:
    """Names of the styles with a complete published version, sorted."""
    return [name for name in style_folders(registry) if storage.exists(storage.join(registry, name, POINTER_FILE))]


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
    if filename not in (MODEL_FILE, ONNX_FILE, INT8_ONNX_FILE, METADATA_FILE, THUMBNAIL_FILE, PREVIEW_FILE):
        raise ValueError(f"unknown registry file {filename!r}")
    return storage.read_bytes(version_uri(registry, style, version or current_version(registry, style), filename))


def load_model(registry: str, style: str, version: str | None = None) -> tuple[TransformNet, dict]:
    """The published network (eval mode, CPU) and its metadata. Never unpickles code."""
    metadata = read_metadata(registry, style, version)
    return load_net(registry, metadata), metadata


def load_net(registry: str, metadata: dict) -> "TransformNet | FamilyStyle":
    """The network of the version `metadata` describes (eval mode, CPU), sha256-checked, weights only. A
    family's style comes as a FamilyStyle, called like a TransformNet, sharing its family's network with
    the other styles of that family version loaded in this process."""
    from factory.transform_net import TransformNet

    state_dict = _load_state_dict(registry, metadata)
    if "family" in metadata:
        from factory.family import FamilyStyle

        return FamilyStyle(load_family_net(registry, metadata["family"], metadata.get("architecture", {}), metadata["style"]),
                           state_dict["style_vector"]).eval()
    architecture = metadata.get("architecture", {})  # versions from before widths existed are full width
    net = TransformNet.from_architecture(architecture)
    _load_weights(net, state_dict, metadata)
    return net.eval()


def load_family_net(registry: str, family: dict, architecture: dict, style: str = "") -> "TransformNet":
    """A family version's network (family: its reference, as its styles' metadata records it), sha256-
    checked; one object per process while anything holds it. `style`: who asked, for error messages."""
    import torch

    from factory.transform_net import TransformNet

    # The sha256 is part of the key: a style whose metadata records other bytes never gets this network.
    key = (registry, family["name"], family["version"], family["model_sha256"])
    what = {"style": f"{style + ': ' if style else ''}family {family['name']}", "version": family["version"], "architecture": architecture}
    with _FAMILY_NETS_LOCK:
        net = _FAMILY_NETS.get(key)
        if net is None:
            uri = family_uri(registry, family["name"], family["version"], MODEL_FILE)
            state_dict = torch.load(io.BytesIO(_read_checked(uri, family["model_sha256"], what)), map_location="cpu", weights_only=True)
            net = TransformNet.from_architecture(architecture, conditional=True)
            _load_weights(net, state_dict, what)
            _FAMILY_NETS[key] = net = net.eval()
    return net


def _load_weights(net, state_dict: dict, metadata: dict) -> None:
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as error:  # torch's message lists every layer; its first mismatch says enough
        mismatch = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error)[:200])
        raise ValueError(f"model.pt of {metadata['style']!r} version {metadata['version']} does not fit the architecture its "
                         f"metadata records ({metadata.get('architecture', {})}): {mismatch}") from None


def _served_precision(metadata: dict, precision: str) -> str:
    """What a version runs in when asked for precision: "int8" only where its int8 copy was published
    (never for a family's style: its family's export has none)."""
    return "int8" if precision == "int8" and "int8_onnx_sha256" in metadata and "family" not in metadata else "fp32"


def load_onnx(registry: str, metadata: dict, precision: str = "fp32") -> bytes | None:
    """The version's ONNX export (a family's style: its family's), sha256-checked; with precision "int8",
    its int8 copy where one was published (else the fp32 export). None for a version published without one."""
    if "family" in metadata:
        return _read_family_onnx(registry, metadata["family"], metadata)
    if _served_precision(metadata, precision) == "int8":
        return _read_checked(version_uri(registry, metadata["style"], metadata["version"], INT8_ONNX_FILE), metadata["int8_onnx_sha256"], metadata)
    if "onnx_sha256" not in metadata:
        return None
    return _read_checked(version_uri(registry, metadata["style"], metadata["version"], ONNX_FILE), metadata["onnx_sha256"], metadata)


def load_onnx_net(registry: str, metadata: dict, precision: str = "auto", **options) -> "OnnxTransformNet | None":
    """The version's ONNX export in ONNX Runtime (options: OnnxTransformNet's), with a family style's
    vector fed to it; None for a version published without an export. precision: "fp32", "int8" (its
    int8 copy where published) or "auto" (onnx_int8.cpu_precision: int8 on cores with int8 units)."""
    from factory import onnx_int8

    served = _served_precision(metadata, onnx_int8.cpu_precision(precision))
    onnx = load_onnx(registry, metadata, served)
    if onnx is None:
        return None
    from factory.onnx_model import OnnxTransformNet

    return OnnxTransformNet(onnx, style_vector=load_style_vector(registry, metadata) if "family" in metadata else None,
                            precision=served, **options)


def load_family_onnx_net(registry: str, family: dict, **options) -> "OnnxTransformNet":
    """A family version's ONNX export in ONNX Runtime (family: its reference), taking each image's style
    vector with the call: one session for every style of the family and any blend of them."""
    from factory.onnx_model import OnnxTransformNet

    what = {"style": f"family {family['name']}", "version": family["version"]}
    return OnnxTransformNet(_read_family_onnx(registry, family, what), **options)


def _read_family_onnx(registry: str, family: dict, metadata: dict) -> bytes:
    return _read_checked(family_uri(registry, family["name"], family["version"], ONNX_FILE), family["onnx_sha256"], metadata)


def load_style_vector(registry: str, metadata: dict) -> "torch.Tensor":
    """A family style's vector, from its own small model.pt (the family's network is not read)."""
    return _load_state_dict(registry, metadata)["style_vector"]


def _load_state_dict(registry: str, metadata: dict) -> dict:
    """The version's model.pt, sha256-checked, tensors only."""
    import torch

    model_bytes = _read_checked(version_uri(registry, metadata["style"], metadata["version"], MODEL_FILE), metadata["model_sha256"], metadata)
    return torch.load(io.BytesIO(model_bytes), map_location="cpu", weights_only=True)


def _read_checked(uri: str, sha256: str, metadata: dict) -> bytes:
    data = storage.read_bytes(uri)
    filename = uri.rsplit("/", 1)[-1]
    if len(data) > MAX_MODEL_BYTES:
        raise ValueError(f"{filename} of {metadata['style']!r} is {len(data)} bytes, more than a TransformNet can be")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{filename} of {metadata['style']!r} version {metadata['version']} ({uri}) does not match its recorded sha256")
    return data


if __name__ == "__main__":  # python -m factory.registry list | show | rollback | withdraw | prune
    import sys

    from factory.registry_cli import main

    sys.exit(main())
