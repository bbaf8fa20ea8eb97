"""How much faster an epoch reads from prepared shards than from JPEG files, measured side by side.

    python bench/data_read.py                       # 400 synthetic COCO-sized JPEGs (640x480)
    python bench/data_read.py --source data/train2014 --limit 5000 --image-size 256

Both paths go through Ray Data the way training reads them; the shards are prepared first (not timed
in the epoch figure, printed separately: it is paid once).
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
from factory.settings import DataSettings


def synthetic_jpegs(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    for index in range(count):  # smooth content plus noise compresses like a photo, not like static
        base = np.stack([(x + index) % 256, (y * 2) % 256, (x + y) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:06d}.jpg", quality=90)


def epoch_seconds(dataset: ray.data.Dataset) -> tuple[float, int]:
    start, rows = time.perf_counter(), 0
    for batch in dataset.iter_batches(batch_size=64, batch_format="numpy"):
        rows += len(batch["image"])
    return time.perf_counter() - start, rows


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
    results = {}
    for name, make in (("JPEG files", lambda: data.content_dataset(settings, paths, filesystem, ledger)),
                       ("prepared shards", lambda: data.shard_dataset(data.list_shard_files(str(work / "shards")), pyarrow.fs.LocalFileSystem()))):
        epoch_seconds(make())  # warm-up: worker start-up is not the data path
        results[name] = epoch_seconds(make())
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
