"""Content images: every image file under a folder or S3 prefix, or prepared shards, decoded by Ray Data.

Training workers read them through factory/content_stream.py, each its own share of every epoch, so
each image is used once per epoch across the cluster. Real folders are dirty (COCO has grayscale and
CMYK JPEGs; users have truncated, empty, non-image and enormous files): each bad file is skipped and
recorded in a SkipLedger, so the run can report how many were skipped and why. Skipping has limits:
past data.max_skipped_fraction of the files the pack stops (so many bad files mean a wrong path, not
dirty data), and a file that exists but cannot be read (access denied, a wrong region, throttling) is
retried and then stops the pack, naming the error: skipping it would quietly train on less data.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import numpy as np
import pyarrow.fs
import ray

from factory import images, storage
from factory.settings import DataSettings

logger = logging.getLogger(__name__)
SHARD_MANIFEST = "manifest.json"
SHARD_FORMAT = "style-factory-shards-v1"
# Reads of one file: a transient error (throttling, a dropped connection) gets this many tries, with
# waits of READ_RETRY_BASE_S, doubling, between them.
READ_ATTEMPTS = 4
READ_RETRY_BASE_S = 0.5


class TooManySkipped(RuntimeError):
    pass


class ContentReadError(OSError):
    pass


@ray.remote(num_cpus=0)
class SkipLedger:
    """Which files were skipped, and why; shared by every reading and decoding task of a factory run.

    listed: how many files the data holds, against which max_fraction is counted (0: no limit)."""

    def __init__(self, listed: int = 0, max_fraction: float = 1.0):
        self.reasons: dict[str, str] = {}
        self.listed, self.max_fraction = listed, max_fraction

    def add(self, skipped: dict[str, str]) -> str | None:
        """Records skipped files; returns why the run must stop when they are now too many, else None."""
        self.reasons.update(skipped)
        return self.over_limit()

    def over_limit(self) -> str | None:
        if not self.listed or len(self.reasons) <= self.max_fraction * self.listed:
            return None
        summary = self.summary()
        path, reason = summary["examples"][0]
        return (f"{summary['count']} of {self.listed} content files were unusable ({summary['count'] / self.listed:.1%}), "
                f"more than data.max_skipped_fraction ({self.max_fraction:.1%}): {summary['by_reason']}, e.g. {path}: {reason}. "
                "So many bad files mean a wrong data.source or a broken copy: check it, or raise data.max_skipped_fraction")

    def skipped(self) -> dict[str, str]:
        """Every skipped file and why, for a report that lists them all."""
        return dict(self.reasons)

    def summary(self) -> dict:
        """{'count': unique files skipped, 'by_reason': {reason: count}, 'examples': [(path, reason)]}."""
        kinds = Counter(reason.split(":")[0].split(" (")[0] for reason in self.reasons.values())
        return {"count": len(self.reasons), "by_reason": dict(kinds), "examples": sorted(self.reasons.items())[:10]}


def record_skipped(ledger, skipped: dict[str, str]) -> None:
    """Adds skipped files to the ledger, and stops the caller (a reading task, so the pack) when there
    are now more than data.max_skipped_fraction of them. Waited for: calls from different tasks reach
    the actor in no set order, and the count read at the end of a run must include every finished batch."""
    over_limit = ray.get(ledger.add.remote(skipped))
    if over_limit:
        raise TooManySkipped(over_limit)


def read_with_retries(read, path: str):
    """read() of one content file: None when the file no longer exists (deleted since it was listed, so
    skipped); any other error is retried, then raised as ContentReadError naming the file and the error."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read()
        except FileNotFoundError:
            return None
        except OSError as error:
            last_error = error
            if attempt + 1 < READ_ATTEMPTS:
                time.sleep(READ_RETRY_BASE_S * 2**attempt)
    raise ContentReadError(
        f"could not read {path} in {READ_ATTEMPTS} tries: {last_error}. Only missing files are skipped; this one is "
        "listed but unreadable: check this node's credentials (its instance profile), the bucket's permissions and "
        "the endpoint, then run again (a run resumes where it stopped)"
    )


def read_file(filesystem: pyarrow.fs.FileSystem, path: str) -> bytes | None:
    """A whole file's bytes, with read_with_retries' policy: None when it is gone since it was listed."""
    def read() -> bytes:
        with filesystem.open_input_file(path) as handle:
            return handle.readall()
    return read_with_retries(read, path)


def list_image_files(settings: DataSettings) -> tuple[pyarrow.fs.FileSystem, list[str], dict[str, str]]:
    """All files under data.source, minus hidden ones, and the oversized ones as (path -> reason)."""
    filesystem, root = storage.pyarrow_filesystem(settings.source)
    if not storage.is_s3(settings.source) and filesystem.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        raise FileNotFoundError(
            f"no image folder at {settings.source!r}: put the content images there (for COCO, unzip "
            "train2014.zip into data/, see docs/data-and-weights.md) or set data.source to a folder or s3://bucket/prefix"
        )
    paths, oversized = list_files(filesystem, root, settings.max_file_bytes, "data.max_file_bytes")
    if not paths:
        raise FileNotFoundError(f"no image files under {settings.source!r}: point data.source at a folder or s3://bucket/prefix of JPEG/PNG images")
    return filesystem, paths, oversized


def list_file_sizes(filesystem: pyarrow.fs.FileSystem, root: str) -> list[tuple[str, int | None]]:
    """(path, size in bytes) of every file under root but hidden ones, sorted by path."""
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted((entry.path, entry.size) for entry in entries
                  if entry.type == pyarrow.fs.FileType.File and not any(part.startswith(".") for part in entry.path[len(root):].split("/")))


def too_large(size: int | None, max_file_bytes: int, limit_name: str) -> str | None:
    """The reason a file of this size is skipped, or None when it is within the limit."""
    if size is not None and size > max_file_bytes:
        return f"file too large ({size} bytes > {limit_name}={max_file_bytes})"
    return None


def list_files(filesystem: pyarrow.fs.FileSystem, root: str, max_file_bytes: int, limit_name: str) -> tuple[list[str], dict[str, str]]:
    """Every file under root but hidden ones (sorted), and those over max_file_bytes as (path -> reason)."""
    paths, oversized = [], {}
    for path, size in list_file_sizes(filesystem, root):
        reason = too_large(size, max_file_bytes, limit_name)
        if reason:
            oversized[path] = reason
        else:
            paths.append(path)
    return paths, oversized


def decode_batch(batch: dict[str, np.ndarray], image_size: int, max_pixels: int, ledger) -> dict[str, np.ndarray]:
    """{'bytes', 'path', ...} -> {'image': (n, size, size, 3) uint8, ...}: the files that fail to decode
    are dropped, and the other columns (but bytes and path) follow the images that remain."""
    decoded, kept, skipped = [], [], {}
    for index, (data, path) in enumerate(zip(batch["bytes"], batch["path"])):
        try:
            image = images.decode_rgb(data, max_pixels=max_pixels, min_side=image_size)
            decoded.append(images.resize_and_center_crop(image, image_size))
            kept.append(index)
        except images.ImageRejected as error:
            skipped[str(path)] = str(error)
    if skipped:
        logger.warning("skipped %d unusable image(s), e.g. %s: %s", len(skipped), *next(iter(skipped.items())))
        record_skipped(ledger, skipped)
    stacked = np.stack(decoded) if decoded else np.zeros((0, image_size, image_size, 3), np.uint8)
    others = {name: np.asarray(values)[kept] for name, values in batch.items() if name not in ("bytes", "path")}
    return {"image": stacked, **others}


def quiet_ray_data() -> ray.data.DataContext:
    """This process's Ray Data settings, without each execution's banner and progress bars: a training
    worker starts an execution per epoch, and they would drown the training log."""
    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = False
    context.enable_progress_bars = False
    return context


def content_dataset(settings: DataSettings, paths: list[str], filesystem: pyarrow.fs.FileSystem, ledger) -> ray.data.Dataset:
    """The decoded stream of (size, size, 3) uint8 'image' rows from the files `list_image_files` found."""
    quiet_ray_data()
    dataset = ray.data.read_binary_files(paths, filesystem=filesystem, include_paths=True, shuffle="files")
    return dataset.map_batches(
        decode_batch,
        fn_kwargs={"image_size": settings.image_size, "max_pixels": settings.max_image_pixels, "ledger": ledger},
        batch_size=16,
        batch_format="numpy",
    )


def shard_manifest(settings: DataSettings) -> dict | None:
    """The manifest if data.source is a prepared shard folder (factory/prepare_shards.py), else None."""
    manifest_uri = storage.join(storage.absolute(settings.source), SHARD_MANIFEST)
    if not storage.exists(manifest_uri):
        return None
    manifest = json.loads(storage.read_bytes(manifest_uri))
    if manifest.get("format") != SHARD_FORMAT:
        raise ValueError(f"{manifest_uri} is not a style-factory shard manifest")
    if manifest["image_size"] != settings.image_size:
        raise ValueError(
            f"the shards at {settings.source!r} hold {manifest['image_size']} px images but data.image_size is "
            f"{settings.image_size}: prepare shards at that size (python -m factory.prepare_shards --image-size "
            f"{settings.image_size}) or train at {manifest['image_size']}"
        )
    return manifest


def list_shard_files(source: str) -> list[str]:
    filesystem, root = storage.pyarrow_filesystem(source)
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=False))
    return sorted(entry.path for entry in entries if entry.path.endswith(".npy"))


def shard_dataset(paths: list[str], filesystem: pyarrow.fs.FileSystem) -> ray.data.Dataset:
    """Prepared (size, size, 3) uint8 images as 'image' rows: no decoding, only reading."""
    dataset = ray.data.read_numpy(paths, filesystem=filesystem, shuffle="files")
    return dataset.rename_columns({"data": "image"})
