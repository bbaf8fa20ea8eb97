"""How much faster an epoch reads from prepared shards than from JPEG files, measured side by side.

    python bench/data_read.py                       # 400 synthetic COCO-sized JPEGs (640x480)
    python bench/data_read.py --source data/train2014 --limit 5000 --image-size 256

Both are read the way a training worker reads them (factory/content_stream.py, through Ray Data);
the shards are prepared first (not timed in the epoch figure, printed separately: it is paid once).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow.fs
import ray
from PIL import Image

from factory import data, prepare_shards
from factory.content_stream import ContentSource, content_batches, shard_chunks
from factory.settings import DataSettings


def synthetic_jpegs(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    for index in range(count):  # smooth content plus noise compresses like a photo, not like static
        base = np.stack([(x + index) % 256, (y * 2) % 256, (x + y) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:06d}.jpg", quality=90)


def epoch_seconds(source: ContentSource) -> tuple[float, int]:
    """One epoch as a training worker reads it (factory/content_stream.py, one worker, batches of 64):
    from the last batch of a warm-up epoch to the last batch of the next, so worker start-up is not
    counted but each epoch's new Ray Data execution is."""
    stream = content_batches(source, seed=0, rank=0, world_size=1, batch_size=64)
    last_batch_at, rows = {}, 0
    for images, position in stream:
        if position.epoch == 2:
            break
        rows += len(images) if position.epoch == 1 else 0
        last_batch_at[position.epoch] = time.perf_counter()
    stream.close()
    return last_batch_at[1] - last_batch_at[0], rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="folder of images (default: synthetic JPEGs)")
    parser.add_argument("--count", type=int, default=400, help="synthetic images to make")
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="data-read-"))
    source = Path(args.source) if args.source else work / "jpegs"
    if not args.source:
        source.mkdir()
        synthetic_jpegs(source, args.count)
    ray.init(include_dashboard=False, log_to_driver=False)
    settings = DataSettings(source=str(source), image_size=args.image_size)

    started = time.perf_counter()
    prepare_shards.prepare(settings, str(work / "shards"), images_per_shard=256)
    prepare_seconds = time.perf_counter() - started

    ledger = data.SkipLedger.remote()
    filesystem, paths, _ = data.list_image_files(settings)
    shards, local = data.list_shard_files(str(work / "shards")), pyarrow.fs.LocalFileSystem()
    sources = {
        "JPEG files": ContentSource(tuple(paths), False, filesystem, args.image_size, settings.max_image_pixels, ledger),
        "prepared shards": ContentSource(tuple(shard_chunks(shards, local)), True, local, args.image_size,
                                         settings.max_image_pixels, ledger),
    }
    results = {name: epoch_seconds(source) for name, source in sources.items()}
    cpus = int(ray.cluster_resources().get("CPU", 0))
    print(f"one epoch of {results['JPEG files'][1]} images at {args.image_size} px, Ray Data on {cpus} CPUs")
    print(f"{'read from':<18} {'seconds':>8} {'images/s':>10}")
    for name, (seconds, rows) in results.items():
        print(f"{name:<18} {seconds:8.2f} {rows / seconds:10.1f}")
    print(f"shards / JPEG epoch speed: {results['JPEG files'][0] / results['prepared shards'][0]:.1f}x "
          f"(preparing the shards once took {prepare_seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
