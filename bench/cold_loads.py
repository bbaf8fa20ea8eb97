"""Cold loads over a pool of two replicas: how many loads N first requests for a style cost when they
arrive within one load's time, with the router told that a replica holds a style when its load starts
(the pool now) and only when it has finished (the pool before; Serve's own multiplexing tells it at
the start), side by side in one run.

    python bench/cold_loads.py --styles 8 --concurrent 8 --spread-s 1.0 --rounds 3   # about 4 minutes on 2 cores

A local Ray (4 logical CPUs), a registry of random styles with their ONNX exports in a temporary folder,
the pool deployed twice under two application names (the "before" one a subclass whose only change is
when it reports), each driven through Serve handles as the front door drives it. The loads are counted
from each replica's own style_factory_model_cache_events metric, scraped from Ray's metrics port.
Figures go to bench/results/ as JSON (section `cold_loads`).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import ray
import requests
from PIL import Image
from ray import serve
from ray.serve.config import RequestRouterConfig

from bench import results
from factory import images
from serve.http_input import StyliseOptions
from serve.routing import ForgetfulRouter
from serve.style_pool import StylePool

REPO = Path(__file__).resolve().parent.parent
LOADS = 'ray_style_factory_model_cache_events_total'


class ReportAfterLoad(StylePool.func_or_class):
    """The pool as it was: the router hears of a style only once this replica has loaded it."""

    async def _model_for_request(self, cache):
        requested = serve.get_multiplexed_model_id()
        model = await cache.get(requested)
        await self.held.announce(requested)
        return model


def application_name(way: str) -> str:
    return "cold-" + way.replace("_", "-")


def deploy(pool_class, name: str, registry_uri: str, replicas: int):
    config = {"settings": {"max_batch_size": 1}, "pool": {"cpu_runtime": "onnxruntime", "refresh_s": 5}}
    pool = serve.deployment(pool_class, name="StylePool").options(
        num_replicas=replicas, ray_actor_options={"num_cpus": 0.5}, user_config=config,
        request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))
    return serve.run(pool.bind(registry_uri), name=name, route_prefix=None)


def first_requests(handle, model_ids: list[str], concurrent: int, spread_s: float, photo: bytes) -> None:
    """For each cold style, `concurrent` requests spread evenly over spread_s, each answered 200."""
    options = StyliseOptions(max_side=64, strength=1.0, preserve_colors=False, output_format="jpeg")
    for model_id in model_ids:
        sent = []
        for _ in range(concurrent):
            sent.append(handle.options(multiplexed_model_id=model_id).stylise.remote(photo, options, ()))
            time.sleep(spread_s / concurrent)
        for response in sent:
            status, _, _ = response.result(timeout_s=120)
            assert status == 200, status


def loads_counted(metrics_port: int, application: str, expected_at_least: int, timeout_s: float = 60) -> int:
    """The application's replicas' model loads, once Ray's metrics agent has them (pushed every few seconds)."""
    deadline, total = time.time() + timeout_s, 0
    while time.time() < deadline:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith(LOADS + "{") and 'event="loads"' in line and f'application="{application}"' in line)
        if total >= expected_at_least:
            time.sleep(6)  # one more push: loads still on their way
            text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
            return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith(LOADS + "{") and 'event="loads"' in line and f'application="{application}"' in line))
        time.sleep(2)
    return int(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", type=int, default=8, help="cold styles, each asked for by --concurrent first requests")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--spread-s", type=float, default=1.0, help="the first requests of a style arrive over this long")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="fresh styles for each way, this many times, alternating")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "tests"))
    from serving import publish_random_style  # the tests' helper: random models published as training publishes

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    ray.init(address="local", num_cpus=4, _metrics_export_port=metrics_port,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, include_dashboard=False)
    ways = {"reported_when_the_load_starts": StylePool.func_or_class, "reported_when_it_ends": ReportAfterLoad}
    loads = {way: [] for way in ways}
    with tempfile.TemporaryDirectory(prefix="cold-loads-") as folder:
        photo = images.encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)))
        handles = {}
        for way, pool_class in ways.items():
            handles[way] = deploy(pool_class, application_name(way), str(Path(folder) / way), args.replicas)
        counted = {way: 0 for way in ways}
        for round_index in range(args.rounds):
            # Both ways each round, in turn, each with styles it has never seen: the spread shows round to round.
            for way in (list(ways) if round_index % 2 == 0 else list(reversed(ways))):
                root = Path(folder) / way
                model_ids = [f"r{round_index}-{index}:{publish_random_style(root, f'r{round_index}-{index}', seed=index, with_onnx=True)}"
                             for index in range(args.styles)]
                first_requests(handles[way], model_ids, args.concurrent, args.spread_s, photo)
                total = loads_counted(metrics_port, application_name(way), expected_at_least=counted[way] + args.styles)
                loads[way].append(total - counted[way])
                counted[way] = total
                print(f"round {round_index + 1}, {way:>30}: {loads[way][-1]} loads for {args.styles} styles", flush=True)
    serve.shutdown()
    ray.shutdown()
    figures = {way: {"loads_per_round": loads[way], "loads_per_style": round(sum(loads[way]) / (args.styles * args.rounds), 2)}
               for way in ways}
    for way, figure in figures.items():
        print(f"{way:>30}: loads per round {figure['loads_per_round']} for {args.styles} styles each "
              f"({figure['loads_per_style']:.2f} a style; ideal 1.00, at most {args.replicas})")
    path = results.record("cold_loads", {**figures, "styles": args.styles, "concurrent": args.concurrent, "rounds": args.rounds,
                                         "spread_s": args.spread_s, "replicas": args.replicas, "runtime": "onnxruntime"})
    print(f"figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
