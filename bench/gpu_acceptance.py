"""Every GPU check in one command, for the minutes a GPU machine is lent: the GPU tests, then the GPU
figures beside their goals, in one table and one JSON file.

    python bench/gpu_acceptance.py            # on a GPU machine: under 8 minutes on one H100/H200
    python bench/gpu_acceptance.py --tiny     # checks the script on a CPU (its figures mean nothing)

1. `pytest -m gpu tests/test_gpu.py` (compiled bf16 training, resuming across precisions, fp16 serving,
   static shapes, out-of-memory answers, fp16 extremes); the Ray checks skip where Ray is missing.
2. Training images/s (each image counted once per style it trains): the plain loop (one style, batch 4,
   fp32, PIL decoding) against the project's defaults (a pack of 4 styles sharing each batch of 4,
   bf16, channels_last, compiled), end to end from JPEG files (decoded on the GPU) and from prepared
   shards. Goal: the defaults at 5x the plain loop or more (aim: 1,200 images/s per GPU).
3. Stylising: 1024x1024 batch 1 latency (goal 2.5 ms, aim 2.0) and 512x512 batch 16 throughput (goal
   1,500 images/s, aim 3,000), fp16 eager and static-compiled (serve/static_shapes.py).
4. A style pool serving mixed styles on the GPU: needs Ray Serve, which the lent machines lack.

A step that fails prints its error and the run goes on, so one short run yields every figure it can.
Figures go to bench/results/<device>-<date>.json (section gpu_acceptance) with the torch version.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from queue import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench import results
from bench.gpu_bench import (gpu_decoded_batches, make_runner, pil_batches, stylise_paths, stylise_seconds,
                             synthetic_jpegs, training_steps_per_second)
from factory import images

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STYLES_PER_PACK = 4  # factory/settings.py's training.styles_per_pack


def shard_batches(paths: list[Path], size: int, batch_size: int, device: torch.device):
    """Prepared shards as training reads them (factory/prepare_shards.py's .npy of (N, size, size, 3)
    uint8), random rows, to the device, from a reading thread."""
    shard = np.stack([images.resize_and_center_crop(images.decode_rgb(path.read_bytes(), max_pixels=10**8), size) for path in paths])
    path = Path(tempfile.mkdtemp()) / "shard-000000.npy"
    np.save(path, shard)
    rows = np.load(path, mmap_mode="r")
    queue: Queue = Queue(maxsize=8)

    def reader():
        rng = np.random.default_rng(0)
        while True:
            chosen = np.sort(rng.choice(len(rows), batch_size, replace=False))
            queue.put(torch.from_numpy(np.ascontiguousarray(rows[chosen])).pin_memory() if device.type == "cuda" else
                      torch.from_numpy(np.ascontiguousarray(rows[chosen])))

    threading.Thread(target=reader, daemon=True).start()
    while True:
        yield queue.get().to(device, non_blocking=True).permute(0, 3, 1, 2)


class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, figure: str, value, goal: str = "", met: bool | None = None, note: str = "") -> None:
        self.rows.append({"figure": figure, "value": value, "goal": goal, "met": met, "note": note})
        print(f"  {figure}: {value} {goal} {'' if met is None else ('MET' if met else 'MISSED')} {note}".rstrip(), flush=True)

    def failed(self, step: str, error: BaseException) -> None:
        traceback.print_exc()
        self.add(step, "FAILED", note=f"{type(error).__name__}: {str(error)[:200]}")


def add_training_rate(table: Table, figure: str, rate: float, plain_rate: float | None) -> None:
    """A training row beside its goal, 5x the plain loop's images/s (no verdict when the plain loop failed)."""
    ratio = rate / plain_rate if plain_rate else None
    table.add(figure, round(rate, 1), ">= 5x plain (aim 1,200)", None if ratio is None else ratio >= 5,
              f"{ratio:.2f}x plain" if ratio else "")


def run_gpu_tests(table: Table, tiny: bool) -> None:
    env = {**os.environ, **({"GPU_TESTS_DEVICE": "cpu"} if tiny else {})}
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_gpu.py"],
                          # On a CPU (--tiny) the compiles of the same tests take far longer than on a GPU.
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500 if tiny else 420)
    print(done.stdout[-6000:], done.stderr[-2000:], flush=True)
    for line in done.stdout.splitlines():
        for outcome in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            if line.startswith(outcome + " "):
                test = line.split(" ", 1)[1].split(" - ")[0].replace("tests/test_gpu.py::", "")
                table.add(f"test {test[:90]}", outcome, met=None if outcome == "SKIPPED" else outcome == "PASSED",
                          note=line.split(" - ", 1)[1][:120] if " - " in line else "")
    table.add("pytest -m gpu exit code", done.returncode, "0", done.returncode == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on a CPU: checks the script, not a GPU")
    parser.add_argument("--seconds", type=float, default=15, help="measuring time per training case")
    parser.add_argument("--skip-tests", action="store_true", help="the figures only (a rerun after fixing a test)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    device_name = results.device_name()
    started = time.time()
    table = Table()
    print(f"{device_name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {datetime.date.today()}", flush=True)

    if not args.skip_tests:
        try:
            run_gpu_tests(table, args.tiny)
        except Exception as error:
            table.failed("GPU tests", error)

    size, seconds, warmup = (64, 3, 2) if args.tiny else (256, args.seconds, 15)
    style_image = (ROOT / "data/samples/styles/starry_night.jpg").read_bytes()
    paths = synthetic_jpegs(Path(tempfile.mkdtemp()), 32 if args.tiny else 512)
    plain_rate = None
    try:
        plain = make_runner(1, device, "fp32", False, False, style_image)
        plain_rate = training_steps_per_second(plain, pil_batches(paths, size, 4, min(8, os.cpu_count() or 1)), device, warmup, seconds) * 4
        del plain
        table.add("train, plain fp32 loop (1 style, batch 4, PIL), images/s", round(plain_rate, 1))
    except Exception as error:
        table.failed("train, plain loop", error)
    fast = None
    try:
        fast = make_runner(DEFAULT_STYLES_PER_PACK, device, "bf16" if gpu else "fp32", gpu, gpu, style_image)
        batches = gpu_decoded_batches(paths, size, 4, device) if gpu else pil_batches(paths, size, 4, 0)
        rate = training_steps_per_second(fast, batches, device, warmup, seconds) * 4 * DEFAULT_STYLES_PER_PACK
        add_training_rate(table, "train, defaults from JPEG files, images/s", rate, plain_rate)
    except Exception as error:
        table.failed("train, defaults from JPEG files", error)
    try:
        if fast is None:
            fast = make_runner(DEFAULT_STYLES_PER_PACK, device, "bf16" if gpu else "fp32", gpu, gpu, style_image)
        rate = training_steps_per_second(fast, shard_batches(paths, size, 4, device), device, 3, seconds) * 4 * DEFAULT_STYLES_PER_PACK
        add_training_rate(table, "train, defaults from prepared shards, images/s", rate, plain_rate)
    except Exception as error:
        table.failed("train, defaults from shards", error)
    del fast

    large, (count, side) = (128, (4, 64)) if args.tiny else (1024, (16, 512))
    try:
        _, runs, compile_seconds, compile_failed = stylise_paths(device, large, side)
        table.add("stylise: compiling the two static shapes, s", round(compile_seconds, 1), met=None if not compile_failed else False)
        one = torch.rand(1, 3, large, large, device=device) * 255
        many = torch.rand(count, 3, side, side, device=device) * 255
        for label, run in runs:
            milliseconds = 1e3 * stylise_seconds(run, one, device, 50 if gpu else 2)
            table.add(f"stylise {large}x{large} batch 1, {label}, ms", round(milliseconds, 2), "<= 2.5 (aim 2.0)", milliseconds <= 2.5)
            per_second = count / stylise_seconds(run, many, device, 20 if gpu else 2)
            table.add(f"stylise {side}x{side} batch {count}, {label}, images/s", round(per_second, 1), ">= 1,500 (aim 3,000)",
                      per_second >= 1500)
    except Exception as error:
        table.failed("stylise", error)
    try:
        import ray  # noqa: F401
        table.add("pool serving mixed styles on the GPU", "run tests/test_gpu.py's pool test and bench/serve_many.py on a GPU Ray cluster")
    except ImportError:
        table.add("pool serving mixed styles on the GPU", "not measured", note="needs Ray Serve, not on this machine")

    minutes = (time.time() - started) / 60
    print(f"\n{device_name}, torch {torch.__version__}, {minutes:.1f} min in all{' (--tiny: the figures check the script only)' if args.tiny else ''}")
    print(f"{'figure':<80} {'value':>14} {'goal':>26} {'':>7}")
    for row in table.rows:
        verdict = "" if row["met"] is None else ("met" if row["met"] else "MISSED")
        print(f"{row['figure'][:80]:<80} {str(row['value']):>14} {row['goal']:>26} {verdict:>7}  {row['note']}")
    if not args.tiny:
        path = results.record("gpu_acceptance", {"torch": torch.__version__, "cuda": torch.version.cuda, "minutes": round(minutes, 2),
                                                 "rows": table.rows})
        print(f"recorded in {path}")
    return 0 if all(row["met"] is not False for row in table.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
