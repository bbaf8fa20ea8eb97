"""Cold loads over a pool of two replicas: how many loads N first requests for a style cost when they
arrive within one load's time, with the router told that a replica holds a style when its load starts
(the pool now) and only when it has finished (the pool before; Serve's own multiplexing tells it at
the start), side by side in one run.

    python bench/cold_loads.py --styles 6 --concurrent 8 --spread-s 0.6

A local Ray (4 logical CPUs), a registry of random styles with their ONNX exports in a temporary folder,
the pool deployed twice under two application names (the "before" one a subclass whose only change is
when it reports), each driven through Serve handles as the front door drives it. The loads are counted
from each replica's own style_factory_model_cache_events metric, scraped from Ray's metrics port.
Figures go to bench/results/ as JSON (section `cold_loads`).
"""

from __future__ import annotations

import argparse
import socket
import statistics
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

    async def _model_for_request(self):
        requested = serve.get_multiplexed_model_id()
        model = await self.cache.get(requested)
        await self.report_held(requested)
        return model


def deploy(pool_class, name: str, registry_uri: str, replicas: int):
    config = {"settings": {"max_batch_size": 1}, "pool": {"cpu_runtime": "onnxruntime", "refresh_s": 5}}
    pool = serve.deployment(pool_class, name="StylePool").options(
        num_replicas=replicas, ray_actor_options={"num_cpus": 1}, user_config=config,
        request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))
    return serve.run(pool.bind(registry_uri), name=name, route_prefix=None)


def first_requests(handle, model_ids: list[str], concurrent: int, spread_s: float, photo: bytes) -> list[float]:
    """For each cold style, `concurrent` requests spread evenly over spread_s; the seconds each took."""
    options = StyliseOptions(max_side=64, strength=1.0, preserve_colors=False, output_format="jpeg")
    seconds = []
    for model_id in model_ids:
        sent = []
        for _ in range(concurrent):
            sent.append((time.perf_counter(), handle.options(multiplexed_model_id=model_id).stylise.remote(photo, options, ())))
            time.sleep(spread_s / concurrent)
        for started, response in sent:
            status, _, _ = response.result(timeout_s=120)
            assert status == 200, status
            seconds.append(time.perf_counter() - started)
    return seconds


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
    parser.add_argument("--styles", type=int, default=6, help="cold styles, each asked for by --concurrent first requests")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--spread-s", type=float, default=0.6, help="the first requests of a style arrive over this long")
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "tests"))
    from serving import publish_random_style  # the tests' helper: random models published as training publishes

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    ray.init(address="local", num_cpus=4, _metrics_export_port=metrics_port,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, include_dashboard=False)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="cold-loads-") as folder:
        photo = images.encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)))
        for way, pool_class in (("reported_when_the_load_starts", StylePool.func_or_class), ("reported_when_it_ends", ReportAfterLoad)):
            root = Path(folder) / way
            model_ids = [f"cold-{index}:{publish_random_style(root, f'cold-{index}', seed=index, with_onnx=True)}"
                         for index in range(args.styles)]
            application = f"cold-{way.replace('_', '-')}"
            handle = deploy(pool_class, application, str(root), args.replicas)
            seconds = first_requests(handle, model_ids, args.concurrent, args.spread_s, photo)
            loads = loads_counted(metrics_port, application, expected_at_least=args.styles)
            serve.delete(application)
            figures[way] = {"loads": loads, "loads_per_style": round(loads / args.styles, 2),
                            "first_request_seconds_median": round(statistics.median(seconds), 3),
                            "first_request_seconds_max": round(max(seconds), 3)}
            print(f"{way:>30}: {loads} loads for {args.styles} styles ({loads / args.styles:.2f} a style, ideal 1.00, "
                  f"at most {args.replicas:.2f}); first requests median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s")
    serve.shutdown()
    ray.shutdown()
    before, after = figures["reported_when_it_ends"]["loads"], figures["reported_when_the_load_starts"]["loads"]
    print(f"duplicate loads: {before - args.styles} before, {after - args.styles} now")
    path = results.record("cold_loads", {**figures, "styles": args.styles, "concurrent": args.concurrent,
                                         "spread_s": args.spread_s, "replicas": args.replicas, "runtime": "onnxruntime"})
    print(f"figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
