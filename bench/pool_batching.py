"""Requests for different styles that arrive together: one pass per style, or one pass for all of them?

    python bench/pool_batching.py                # CPU, or the GPU when there is one

For K styles with one image each, it times K passes (what the style pool does: Serve splits a batch
by model id) against one torch.func.vmap pass over the K styles' stacked weights, checks that both
give the same pixels, and prints the ratio. Figures go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.func import functional_call, stack_module_state, vmap

from bench import results
from factory.transform_net import TransformNet


def median_seconds(run, device: torch.device, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def compare(styles: int, side: int, device: torch.device, repeats: int) -> dict:
    nets = [TransformNet().eval().to(device) for _ in range(styles)]
    photos = torch.rand(styles, 1, 3, side, side, device=device) * 255  # (K, 1, 3, H, W): one image per style
    weights, buffers = stack_module_state(nets)
    skeleton = copy.deepcopy(nets[0]).to("meta")

    def one_style(style_weights, style_buffers, photo):
        return functional_call(skeleton, (style_weights, style_buffers), (photo,))

    with torch.inference_mode():
        per_style = lambda: [net(photos[index]) for index, net in enumerate(nets)]  # noqa: E731
        stacked = lambda: vmap(one_style)(weights, buffers, photos)  # noqa: E731
        difference = (stacked() - torch.stack(per_style())).abs().max().item()
        per_style_s = median_seconds(per_style, device, repeats)
        stacked_s = median_seconds(stacked, device, repeats)
    return {"styles": styles, "side": side, "per_style_ms": 1e3 * per_style_s, "vmap_ms": 1e3 * stacked_s,
            "vmap_speedup": per_style_s / stacked_s, "max_abs_difference": difference}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = [(4, 256), (8, 128)] + ([(16, 512), (32, 256)] if device.type == "cuda" else [])
    rows = [compare(styles, side, device, args.repeats) for styles, side in cases]
    print(f"on {results.device_name()}: K styles, one image each")
    print(f"{'K':>3} {'side':>5} {'K passes, ms':>13} {'vmap, ms':>9} {'vmap speed-up':>14} {'max |diff|':>11}")
    for row in rows:
        print(f"{row['styles']:>3} {row['side']:>5} {row['per_style_ms']:>13.1f} {row['vmap_ms']:>9.1f} "
              f"{row['vmap_speedup']:>13.2f}x {row['max_abs_difference']:>11.5f}")
    print(f"recorded in {results.record('pool_batching', {'cases': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
