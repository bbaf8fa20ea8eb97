"""Plain path against fast path, side by side in one run: training throughput and stylising latency.

    python bench/gpu_bench.py                 # on a GPU: the whole set in under 5 minutes
    python bench/gpu_bench.py --tiny          # a quick check of the script itself on a CPU

Training is measured end to end from JPEG files on local disk (synthetic COCO-sized ones unless --data
names a folder), with the factory's own training step (factory/style_pack.py), without Ray:
  plain  one style, batch 4, fp32, PIL decoding in DataLoader workers (the paper's loop)
  fast   a pack of --styles styles sharing each batch of 4, bf16 autocast, channels_last,
         torch.compile, JPEGs decoded on the GPU (nvJPEG via torchvision.io.decode_jpeg)
Images/s count each image once per style it trains. Stylising compares fp32 eager with the serving
fast paths at 1024x1024 and in batches of 512x512: fp16 channels_last eager (what a GPU replica runs
for a size not compiled yet) and the same compiled for the static shape (serve/static_shapes.py, what
it runs once the size's bucket has compiled). Needs only torch and torchvision.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from queue import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torchvision
from PIL import Image

from bench import results
from factory import images
from factory.loss_network import LossNetwork
from factory.settings import LossSettings, ResolvedStyle
from factory.style_pack import PerceptualObjective, StepRunner, StylePack, make_optimizer
from factory.transform_net import TransformNet
from factory.vgg_weights import random_vgg19
from serve.static_shapes import StaticShapes
from serve.style_model import fast_input, fast_network

PAPER_STEPS, FACTORY_STYLES = 40_000, 16


def synthetic_jpegs(folder: Path, count: int, size=(640, 480)) -> list[Path]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    paths = []
    for index in range(count):
        pixels = np.stack([(x + 3 * index) % 256, (y * 2) % 256, (x + y) % 256], axis=-1)
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{index:06d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


class PilDataset(torch.utils.data.Dataset):
    """The plain loop's loader: PIL decode, resize, centre crop, on CPU workers."""

    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = images.decode_rgb(self.paths[index].read_bytes(), max_pixels=10**8)
        return torch.from_numpy(images.resize_and_center_crop(image, self.size)).permute(2, 0, 1)


def pil_batches(paths, size, batch_size, workers):
    loader = torch.utils.data.DataLoader(PilDataset(paths, size), batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
    while True:
        yield from loader


def gpu_decoded_batches(paths, size, batch_size, device):
    """File bytes read by a thread; decoded, resized and cropped on the device in batches."""
    queue: Queue = Queue(maxsize=8)

    def reader():
        rng = np.random.default_rng(0)
        while True:
            for start in range(0, len(paths) - batch_size + 1, batch_size):
                chosen = rng.choice(len(paths), batch_size, replace=False)
                queue.put([torchvision.io.read_file(str(paths[i])) for i in chosen])

    threading.Thread(target=reader, daemon=True).start()
    while True:
        decoded = torchvision.io.decode_jpeg(queue.get(), device=device, mode=torchvision.io.ImageReadMode.RGB)
        batch = []
        for image in decoded:  # (3, H, W) uint8 on the device
            scale = size / min(image.shape[-2:])
            height, width = max(size, round(image.shape[-2] * scale)), max(size, round(image.shape[-1] * scale))
            resized = torch.nn.functional.interpolate(image[None].float(), size=(height, width), mode="bilinear", antialias=True)[0]
            top, left = (height - size) // 2, (width - size) // 2
            batch.append(resized[:, top:top + size, left:left + size])
        yield torch.stack(batch).clamp(0, 255)


def make_runner(style_count, device, precision, channels_last, compile_models, style_image):
    settings = LossSettings(normalisation="none")  # the weights below are the seed's, for the MatConvNet file
    styles = [ResolvedStyle(name=f"style{i}", image_bytes=style_image, image_sha256="-", content_weight=7.5,
                            style_weight=100.0, tv_weight=200.0, steps=PAPER_STEPS, learning_rate=1e-3) for i in range(style_count)]
    pack = StylePack([style.name for style in styles]).to(device)
    loss_network = LossNetwork(random_vgg19(), [settings.content_layer, *settings.style_layers]).to(device)
    if channels_last:
        pack, loss_network = pack.to(memory_format=torch.channels_last), loss_network.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(pack, styles)
    objective = PerceptualObjective(loss_network, settings, styles, device)  # style targets eagerly, as training does
    runner = StepRunner(pack, objective, optimizer, precision, device.type, channels_last)
    if compile_models:
        runner.compile()
    return runner


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_steps_per_second(runner, batches, device, warmup, seconds):
    for _ in range(warmup):  # compilation and cudnn autotuning happen here
        runner.step(next(batches).to(device, non_blocking=True).float())
    synchronize(device)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.step(next(batches).to(device, non_blocking=True).float())
        steps += 1
    synchronize(device)
    return steps / (time.perf_counter() - start)


def stylise_seconds(run, batch, device, repeats):
    with torch.inference_mode():
        for _ in range(3):
            run(batch)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            run(batch)
        synchronize(device)
    return (time.perf_counter() - start) / repeats


def stylise_paths(device, large: int, side: int):
    """A seeded network and the ways it stylises, compiled for a large x large and a side x side batch:
    (the plain fp32 network, [(label, run)], compile seconds, whether the compiler failed). On a CPU
    (--tiny) dynamo's eager backend checks the compiled path's plumbing without a minute of C++, and
    "eager fp16" is the fp32 network (the fast path falls back to it there)."""
    gpu = device.type == "cuda"
    torch.manual_seed(0)
    net = TransformNet().to(device).eval()
    fast_net = fast_network(copy.deepcopy(net)) if gpu else net
    fast_run = (lambda batch: fast_net(fast_input(batch))) if gpu else net
    static = StaticShapes(TransformNet(), device, backend="inductor") if gpu else \
        StaticShapes(TransformNet(), device, dtype=torch.float32, channels_last=False, backend="eager")
    compile_start = time.perf_counter()
    static.warm((large, large))
    static.warm((side, side))
    static.wait_until_idle()
    compile_seconds = time.perf_counter() - compile_start
    prepared = static.prepare(copy.deepcopy(net))

    def compiled_run(batch):
        return static.run(prepared, batch)

    # A compiler that failed would be retried, and fail again, on the measured calls: leave its rows out.
    runs = [("eager fp16", fast_run)] + ([("static compiled", compiled_run)] if not static.failed else [])
    return net, runs, compile_seconds, static.failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder of JPEGs (default: synthetic 640x480 ones)")
    parser.add_argument("--styles", type=int, default=16, help="styles in the fast path's pack")
    parser.add_argument("--seconds", type=float, default=20, help="measuring time per training case")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the script on a CPU in a minute")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    size, styles, seconds, warmup = (64, 2, 5, 2) if args.tiny else (256, args.styles, args.seconds, 15)
    stylise_large, stylise_batch = ((128, (4, 64)) if args.tiny else (1024, (16, 512)))
    paths = sorted(args.data.glob("*.jpg")) if args.data else synthetic_jpegs(Path(tempfile.mkdtemp()), 64 if args.tiny else 512)
    style_image = (Path(__file__).resolve().parent.parent / "data/samples/styles/starry_night.jpg").read_bytes()
    name = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    rows = []

    plain = make_runner(1, device, "fp32", False, False, style_image)
    plain_rate = training_steps_per_second(plain, pil_batches(paths, size, 4, min(8, os.cpu_count() or 1)), device, warmup, seconds) * 4
    del plain
    fast = make_runner(styles, device, "bf16" if gpu else "fp32", gpu, gpu, style_image)
    fast_batches = gpu_decoded_batches(paths, size, 4, device) if gpu else pil_batches(paths, size, 4, 0)
    fast_steps = training_steps_per_second(fast, fast_batches, device, warmup, seconds)
    fast_rate = fast_steps * 4 * styles
    del fast
    rows.append(("train img/s (x styles)", f"{plain_rate:.1f}", f"{fast_rate:.1f}", fast_rate / plain_rate))
    plain_hours = FACTORY_STYLES * PAPER_STEPS * 4 / plain_rate / 3600
    fast_hours = FACTORY_STYLES * PAPER_STEPS * 4 / fast_rate / 3600
    rows.append((f"{FACTORY_STYLES} styles x {PAPER_STEPS // 1000}k steps, h", f"{plain_hours:.2f}", f"{fast_hours:.2f}", plain_hours / fast_hours))

    count, side = stylise_batch
    net, runs, compile_seconds, compile_failed = stylise_paths(device, stylise_large, side)

    one = torch.rand(1, 3, stylise_large, stylise_large, device=device) * 255
    plain_ms = 1e3 * stylise_seconds(net, one, device, 20 if gpu else 3)
    for label, run in runs:
        fast_ms = 1e3 * stylise_seconds(run, one, device, 20 if gpu else 3)
        rows.append((f"stylise {stylise_large}px {label}, ms", f"{plain_ms:.2f}", f"{fast_ms:.2f}", plain_ms / fast_ms))
    many = torch.rand(count, 3, side, side, device=device) * 255
    plain_ips = count / stylise_seconds(net, many, device, 10 if gpu else 2)
    for label, run in runs:
        fast_ips = count / stylise_seconds(run, many, device, 10 if gpu else 2)
        rows.append((f"stylise {side}px x{count} {label}, img/s", f"{plain_ips:.1f}", f"{fast_ips:.1f}", fast_ips / plain_ips))

    print(f"\n{name}, torch {torch.__version__}, {datetime.date.today()}; fast training pack: {styles} styles"
          f"{'' if gpu else ' (CPU: the fast path falls back to the plain one; numbers check the script only)'}")
    print(f"{'measure':<42} {'plain':>10} {'fast':>10} {'fast/plain':>11}")
    for label, plain_value, fast_value, ratio in rows:
        print(f"{label:<42} {plain_value:>10} {fast_value:>10} {ratio:>10.2f}x")
    print(f"compiling the two static stylising shapes took {compile_seconds:.0f} s{'' if not compile_failed else ' and FAILED (see the log)'}")
    if not args.tiny:  # --tiny checks the script; its numbers describe nothing
        figures = {label: {"plain": float(plain_value), "fast": float(fast_value), "ratio": ratio} for label, plain_value, fast_value, ratio in rows}
        path = results.record("gpu_bench", {"torch": torch.__version__, "styles_in_pack": styles, "rows": figures,
                                            "static_shape_compile_s": compile_seconds, "static_shape_compile_failed": compile_failed})
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
