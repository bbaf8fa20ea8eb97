"""A bulk stylise job on Ray Data against a plain loop over the same files in one process, side by side.

    python bench/batch_stylise.py                    # 48 JPEGs of 640x480, full width, 3 rounds

The loop is `python -m factory.stylize a.jpg b.jpg ... -o folder/` (ONNX Runtime on every core, one photo
after another); the job is `python -m factory.stylize folder/ -o out/` on a local Ray with one model
actor on every core, then with one actor per core. Both read, decode, stylise, encode and write the
same JPEGs with the same published model. Rounds alternate the three so that a slow minute of the
machine hits them alike. Prints images/s and the job's ratio over the loop; JSON section `batch_stylise`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import ray
from PIL import Image

from bench import results
from factory import bulk_stylize, onnx_model, registry, stylize
from factory.transform_net import TransformNet


def write_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """JPEGs like photos to a codec: smooth gradients with noise (content does not change the cost)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    paths = []
    for index in range(count):
        pixels = np.stack([(x + index * 9) % 256, (y * 2) % 256, (x + y + index) % 256], axis=-1) + rng.normal(0, 12, (height, width, 3))
        paths.append(folder / f"photo_{index:03d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def publish(root: Path, width: float) -> str:
    net = TransformNet(width=width).eval()
    metadata = {"architecture": {"name": "johnson2016-instancenorm", "upsample": "nearest", "width": width}}
    registry.publish(str(root), "bench", net.state_dict(), metadata, b"t", b"p", onnx_model=onnx_model.export(net))
    return str(root)


def time_loop(registry_uri: str, photos: list[Path], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # a line per photo
        assert stylize.main(["--registry", registry_uri, "--style", "bench", *map(str, photos), "-o", str(out)]) == 0
    return time.perf_counter() - started


def time_job(registry_uri: str, source: Path, out: Path, workers: int, cpus_per_worker: float, batch_size: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    settings = bulk_stylize.BulkSettings(source=str(source), output=str(out), styles=("bench",), registry=registry_uri,
                                         workers=workers, cpus_per_worker=cpus_per_worker, batch_size=batch_size)
    started = time.perf_counter()
    report = bulk_stylize.run(settings, out=io.StringIO())
    assert report["status"] == "complete" and report["outputs_written"] == len(list(source.iterdir()))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of each JPEG")
    parser.add_argument("--width", type=float, default=1.0, help="the network's width (1.0: the paper's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    photo_width, photo_height = map(int, args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="batch-stylise-"))
    try:
        photos = write_photos(work / "photos", args.photos, photo_width, photo_height)
        registry_uri = publish(work / "registry", args.width)
        # One logical CPU beside the cores for the reading and writing tasks (as the tests' Ray has).
        ray.init(address="local", num_cpus=cores + 1, include_dashboard=False, logging_level="ERROR")
        (work / "one").mkdir()
        shutil.copy(photos[0], work / "one" / photos[0].name)
        arms = {"loop": lambda: time_loop(registry_uri, photos, work / "loop"),
                f"job, 1 actor x {cores} threads": lambda: time_job(registry_uri, work / "photos", work / "job1", 1, cores, args.batch_size),
                f"job, {cores} actors x 1 thread": lambda: time_job(registry_uri, work / "photos", work / "jobn", cores, 1, args.batch_size),
                # What a job costs before and after its photos: the same job over one photo.
                "job over one photo (its start)": lambda: time_job(registry_uri, work / "one", work / "job0", cores, 1, args.batch_size)}
        seconds = {name: [] for name in arms}
        for round_number in range(args.rounds):
            for name, run in arms.items():
                seconds[name].append(run())
                print(f"round {round_number + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    loop = statistics.median(seconds["loop"])
    rows = []
    start = statistics.median(seconds["job over one photo (its start)"])
    for name, each in seconds.items():
        median = statistics.median(each)
        if name.startswith("job over one photo"):
            print(f"{name:32s} {median:.1f} s")
            continue
        # A job's rate less its start: what a catalogue of thousands, where the start is nothing, sees.
        steady = loop / (median - start) if name.startswith("job") else 1.0
        rows.append({"arm": name, "seconds": each, "median_s": median, "images_per_s": args.photos / median, "over_loop": loop / median,
                     "over_loop_less_start": steady})
        print(f"{name:32s} {args.photos / median:6.2f} images/s (median of {len(each)}: {median:.1f} s), x{loop / median:.2f} the loop, "
              f"x{steady:.2f} less the job's start")
    figures = {"job_start_s": start, "photos": args.photos, "photo_size": args.size, "network_width": args.width, "batch_size": args.batch_size,
               "cores": cores, "rounds": args.rounds, "rows": rows}
    print(f"recorded in {results.record('batch_stylise', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
