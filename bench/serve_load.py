"""Load-generate against one style endpoint and compare with the same model run in process.

    python bench/serve_load.py --url http://127.0.0.1:8000 --style starry_night \
        --registry data/registry --clients 8 --seconds 20

Prints requests/s, p50/p95/p99 latency and errors over HTTP, then the same image through the model in
this process (no HTTP, no Serve), and the ratio: what HTTP, encoding and Serve cost per image.
Every request goes to --url only, and the loop stops after --seconds.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
import torch

from bench import results
from factory import images, registry
from serve.style_model import StyleModel


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def drive(urls: list[str], body: bytes, clients: int, seconds: float) -> tuple[list[float], dict[str, int]]:
    """`clients` threads POST `body` back to back for `seconds`, each request to a random one of `urls`."""
    latencies, errors, lock = [], {}, threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(seed: int):
        session, choose = requests.Session(), random.Random(seed)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                status = session.post(choose.choice(urls), data=body, timeout=120).status_code
            except requests.RequestException as error:
                status = type(error).__name__
            with lock:
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def in_process_seconds(model: StyleModel, tensor: torch.Tensor, repeats: int) -> float:
    model.forward_by_size([tensor])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model.forward_by_size([tensor])
    return (time.perf_counter() - start) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Serve's base URL")
    parser.add_argument("--style", required=True)
    parser.add_argument("--registry", default="data/registry", help="for the in-process comparison")
    parser.add_argument("--image", default="data/samples/held_out/chelsea.png")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()

    photo = images.fit_within(images.decode_rgb(Path(args.image).read_bytes(), max_pixels=10**8), args.max_side)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    url = f"{args.url.rstrip('/')}/styles/{args.style}?max_side={args.max_side}"
    latencies, errors = drive([url], buffer.getvalue(), args.clients, args.seconds)

    model = StyleModel(args.registry, args.style, registry.current_version(args.registry, args.style))
    per_image = in_process_seconds(model, images.to_tensor(photo), repeats=5)

    rate = len(latencies) / args.seconds
    device = torch.cuda.get_device_name() if model.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"image {photo.width}x{photo.height}, {args.clients} clients, {args.seconds:.0f} s; in-process device: {device}")
    print(f"{'path':<28} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors")
    print(f"{'HTTP via Serve':<28} {rate:8.2f} {1e3 * statistics.median(latencies) if latencies else float('nan'):8.1f} "
          f"{1e3 * percentile(latencies, 0.95):8.1f} {1e3 * percentile(latencies, 0.99):8.1f}  {errors or 'none'}")
    print(f"{'model in process (1 at a time)':<28} {1 / per_image:8.2f} {1e3 * per_image:8.1f}")
    if latencies:
        print(f"HTTP p50 latency / in-process time: {statistics.median(latencies) / per_image:.2f}x")
        path = results.record("serve_load", {
            "image": f"{photo.width}x{photo.height}", "clients": args.clients, "seconds": args.seconds,
            "http_requests_per_second": rate, "http_p50_ms": 1e3 * statistics.median(latencies),
            "http_p95_ms": 1e3 * percentile(latencies, 0.95), "http_p99_ms": 1e3 * percentile(latencies, 0.99),
            "errors": errors, "in_process_ms": 1e3 * per_image,
        })
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
