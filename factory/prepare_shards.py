"""Prepare a training set once: decode, resize and crop every image, and store them in .npy shards.

    python -m factory.prepare_shards --source data/train2014 --dest data/shards/train2014-256
    python -m factory.prepare_shards --source s3://bucket/coco/train2014 --dest s3://bucket/shards/train2014-256

Training reads a shard folder like an image folder (point data.source at it): it finds the manifest
and streams the ready (size, size, 3) uint8 arrays, with no JPEG decoding per epoch. The manifest is
written last, so a half-written shard folder is never taken for a finished one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    # the repository, not this script's folder: its onnx_model.py would shadow ONNX Runtime's own
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import ray

from factory import data, storage
from factory.settings import DataSettings


def prepare(settings: DataSettings, dest: str, images_per_shard: int) -> dict:
    """Decode settings.source into shards under dest; returns the manifest."""
    if storage.exists(storage.join(dest, data.SHARD_MANIFEST)):
        raise ValueError(f"{dest} already holds prepared shards; choose another --dest or delete it first")
    ledger = data.SkipLedger.remote()
    filesystem, paths, oversized = data.list_image_files(settings)
    if oversized:
        ledger.add.remote(oversized)
    dataset = data.content_dataset(settings, paths, filesystem, ledger)
    dest_filesystem, dest_path = storage.pyarrow_filesystem(dest)
    dataset.write_numpy(dest_path, column="image", filesystem=dest_filesystem, min_rows_per_file=images_per_shard)
    shard_paths = data.list_shard_files(dest)
    count = int(data.shard_dataset(shard_paths, dest_filesystem).count())
    skipped = ray.get(ledger.summary.remote())
    manifest = {
        "format": data.SHARD_FORMAT,
        "image_size": settings.image_size,
        "count": count,
        "source": settings.source,
        "skipped": skipped,
        "prepared_at": datetime.now(timezone.utc).isoformat(),
    }
    storage.write_bytes(storage.join(dest, data.SHARD_MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="folder or s3:// prefix of images")
    parser.add_argument("--dest", required=True, help="folder or s3:// prefix for the shards")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square crops (the training size)")
    parser.add_argument("--images-per-shard", type=int, default=1024,
                        help="at least this many images per .npy file (fewer, larger files read faster from S3)")
    args = parser.parse_args(argv)
    try:
        settings = DataSettings(source=args.source, image_size=args.image_size)
        if not ray.is_initialized():
            # Join a cluster only when asked (RAY_ADDRESS, as `ray job submit` sets), never a stale
            # address an earlier `ray start` left behind.
            ray.init(address=None if os.environ.get("RAY_ADDRESS") else "local")
        manifest = prepare(settings, storage.absolute(args.dest), args.images_per_shard)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{manifest['count']} images of {args.image_size}x{args.image_size} in shards at {args.dest}; "
          f"skipped {manifest['skipped']['count']} {manifest['skipped']['by_reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
