"""Mixed-style requests through a pool replica's model code: four styles as one family (one model id,
one batch with a vector per image) against four separate networks (one model id each, so Serve splits
the batch into four), side by side in one run, on the CPU as a pool replica runs them (pool.cpu_runtime:
torch, the default, and onnxruntime).

    python bench/family_serving.py                 # 8 requests a round, 2 of each style, 256x256; about 4 min
    python bench/family_serving.py --side 512

A third column cuts the family's batch into runs as small as the separate styles' (max_batch_pixels):
what the conditional network itself costs, apart from the batch's size. What it measures is the
model's part of a replica's work (serve/style_model.py's forward_by_size, as serve/style_pool.py's
batches call it); decoding, encoding and HTTP are the same either way. Random weights: the figures
are about time, not looks. Figures go to bench/results/<device>-<date>.json
under "family_serving" (a run with other options under "family_serving_<side>px_<per-style>").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import torch

from bench import results
from factory import registry
from serve.style_model import StyleModel
from serving import publish_random_family, publish_random_style

STYLES = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=256, help="each request's image side (pixels)")
    parser.add_argument("--per-style", type=int, default=2, help="requests of each style in a round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of each run")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing to bench/results/")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="family-serving-")) / "registry"
    names = [f"style-{index}" for index in range(STYLES)]
    versions = publish_random_family(root, [f"fam-{name}" for name in names], family="serving")
    for index, name in enumerate(names):
        publish_random_style(root, f"own-{name}", seed=index, with_onnx=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    requests = [(name, torch.rand(3, args.side, args.side) * 255) for name in names for _ in range(args.per_style)]
    per_second = {runtime: images_per_second(str(root), names, versions, requests, runtime, args) for runtime in ("torch", "onnxruntime")}
    print(f"\non {results.device_name()}, torch {torch.__version__}, {args.threads} thread(s); {len(requests)} requests a round "
          f"({args.per_style} of each of {STYLES} styles), {args.side}x{args.side}, median of {args.rounds} rounds; images/s")
    print(f"{'runtime':<12} {'one model id per style':>23} {'one id per family':>18} {'(x separate)':>13} "
          f"{f'same, runs of {args.per_style}':>18} {'(x separate)':>13}")
    for runtime, figures in per_second.items():
        print(f"{runtime:<12} {figures['separate']:>23.2f} {figures['family']:>18.2f} {figures['family'] / figures['separate']:>12.2f}x "
              f"{figures['family_small_runs']:>18.2f} {figures['family_small_runs'] / figures['separate']:>12.2f}x")
    if not args.no_record:
        figures = {"side": args.side, "styles": STYLES, "per_style": args.per_style, "rounds": args.rounds, "threads": args.threads,
                   "images_per_second": per_second}
        section = "family_serving" if (args.side, args.per_style) == (256, 2) else f"family_serving_{args.side}px_{args.per_style}"
        print(f"recorded in {results.record(section, figures)}")
    return 0


def images_per_second(uri: str, names: list[str], versions: dict, requests: list, runtime: str, args) -> dict[str, float]:
    cpu, fast = torch.device("cpu"), runtime == "onnxruntime"
    separate = {name: StyleModel(uri, f"own-{name}", registry.current_version(uri, f"own-{name}"), device=cpu, fast=fast,
                                 cpu_threads=args.threads, memory_arena=False) for name in names}
    family = StyleModel(uri, "serving", registry.read_family_metadata(uri, "serving")["family"]["version"], device=cpu, fast=fast,
                        cpu_threads=args.threads, memory_arena=False, family=True)
    assert family.runtime == runtime and all(model.runtime == runtime for model in separate.values())
    vectors = {name: family.style_vectors.vector(f"fam-{name}", versions[f"fam-{name}"]) for name in names}

    def one_id_per_style():  # Serve's batches, split by model id: a run per style
        for name in names:
            separate[name].forward_by_size([image for style, image in requests if style == name])

    def one_id_per_family():  # one batch, each image with its own style's vector
        family.max_batch_pixels = whole_batch
        family.forward_by_size([image for _, image in requests], [vectors[style] for style, _ in requests])

    def one_id_per_family_in_small_runs():  # the same batch cut (max_batch_pixels) into runs as small as the separate ones
        family.max_batch_pixels = args.per_style * args.side ** 2
        family.forward_by_size([image for _, image in requests], [vectors[style] for style, _ in requests])

    whole_batch = family.max_batch_pixels

    runs = {"separate": one_id_per_style, "family": one_id_per_family, "family_small_runs": one_id_per_family_in_small_runs}
    timings = {label: [] for label in runs}
    for run in runs.values():
        run()  # warm: sessions' first runs allocate
    for _ in range(args.rounds):  # interleaved, so a slow moment of the machine touches both
        for label, run in runs.items():
            start = time.perf_counter()
            run()
            timings[label].append(time.perf_counter() - start)
    return {label: len(requests) / statistics.median(seconds) for label, seconds in timings.items()}

if __name__ == "__main__":
    sys.exit(main())
