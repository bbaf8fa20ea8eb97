"""Serving for weeks, compressed: styles retrained again and again while they are served, as phone photos
come in; does anything grow, does the cache keep what is used, does anything fail?

    ray get-auth-token --generate > /dev/null && export RAY_AUTH_MODE=token && ray start --head --num-cpus 2
    python bench/serve_soak.py --address http://127.0.0.1:8265 --styles 1000 --versions 3

It publishes --styles styles and deploys the pool, then for each of --versions rounds: every style
(from the second round on, its new version, published while serving) is requested once with a
1-3 MB phone-sized JPEG, from --clients clients; after each round it records each Serve process's RSS
by role (front door, HTTP proxy, pool replica), p50/p99 and every non-200. Then a working set of
--working-set styles (fewer than the cache holds) is requested for --seconds: the cache hit rate,
from the pool's own metrics as Prometheus scrapes them. --router serve runs the same with Serve's
default router in the front door's handle, the leak this project's router removes, for a side by
side. Figures go to bench/results/ as JSON (section serve_soak_<router>_<styles>x<versions>).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import requests
import torch
from PIL import Image

from bench import results
from bench.serve_load import drive, percentile
from bench.serve_many import serve_memory_mb, wait_gone
from factory import images, registry
from factory.transform_net import TransformNet
from serve import deploy
from serve.metrics import EXPORTED
from serve.settings import load_serving_config

SERVE_DEFAULT_ROUTER = "ray.serve._private.request_router.pow_2_router:PowerOfTwoChoicesRequestRouter"


def phone_photos(count: int) -> list[bytes]:
    """JPEGs of 4032x3024 with a photo's detail, 1-3 MB each, as phones send them."""
    rng = np.random.default_rng(0)
    bodies = []
    for index in range(count):
        y, x = np.mgrid[0:3024, 0:4032]
        base = np.stack([(x // (3 + index)) % 256, (y // 5) % 256, ((x + y) // 7) % 256], axis=-1).astype(np.int16)
        noisy = np.clip(base + rng.normal(0, 6 + 3 * index, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=85)
        bodies.append(buffer.getvalue())
    return bodies


def publish_round(root: Path, names: list[str], seed: int) -> None:
    """A new version of every style (a random network, as a retrain would publish), in parallel."""
    torch.manual_seed(seed)
    state = TransformNet().eval().state_dict()
    picture = images.encode(Image.new("RGB", (64, 64), (seed * 40 % 256, 90, 140)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as writers:
        list(writers.map(lambda name: registry.publish(str(root), name, state, {"steps": seed}, picture, picture), names))


def metrics_text(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text


def cache_events(port: int) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in metrics_text(port).splitlines():
        if line.startswith(EXPORTED["cache_events"] + "{"):
            event = line.split('event="', 1)[1].split('"', 1)[0]
            counts[event] = counts.get(event, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def request_every_style(base: str, names: list[str], bodies: list[bytes], clients: int, max_side: int) -> dict:
    def one(index_name):
        index, name = index_name
        start = time.perf_counter()
        try:
            status = requests.post(f"{base}/styles/{name}?max_side={max_side}", data=bodies[index % len(bodies)], timeout=300).status_code
        except requests.RequestException as error:
            status = type(error).__name__
        return status, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(one, enumerate(names)))
    latencies = [seconds for status, seconds in answers if status == 200]
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests": len(answers), "statuses": statuses, "p50_ms": 1e3 * statistics.median(latencies) if latencies else None,
            "p99_ms": 1e3 * percentile(latencies, 0.99)}


def wait_until_served(base: str, name: str, version: str, body: bytes, timeout_s: float = 120) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        response = requests.post(f"{base}/styles/{name}?max_side=64", data=body, timeout=120)
        if response.status_code == 200 and response.headers.get("x-model-version") == version:
            return time.perf_counter() - start
        time.sleep(0.5)
    raise RuntimeError(f"{name} version {version} not served within {timeout_s} s")


def soak(args, router: str, address: str, metrics_port: int, bodies: list[bytes]) -> dict:
    base = f"http://127.0.0.1:{args.port}"
    names = [f"soak-{index:04d}" for index in range(args.styles)]
    figures: dict = {"styles": args.styles, "versions": args.versions, "clients": args.clients, "max_side": args.max_side,
                     "body_mb": [round(len(body) / 1e6, 2) for body in bodies], "router": router, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="serve-soak-", dir=args.work_dir) as work:
        root = Path(work) / "registry"
        start = time.perf_counter()
        publish_round(root, names, seed=1)
        figures["publish_round_s"] = time.perf_counter() - start
        serving = load_serving_config(None, registry=str(root), http={"host": "127.0.0.1", "port": args.port},
                                      pool={"front_num_cpus": 0, "model_cache_mb": args.model_cache_mb, "refresh_s": 2},
                                      defaults={"num_cpus": args.pool_cpus, "min_replicas": 1, "max_replicas": 1})
        serve_config = deploy.build_serve_config(serving)
        if router == "serve":  # the leak, for the side by side: Serve's own router in the front door's handle
            for deployment in serve_config["applications"][0]["deployments"]:
                deployment["request_router_config"] = {"request_router_class": SERVE_DEFAULT_ROUTER}
        deploy.apply(serve_config, address)
        deploy.wait_until_running(address, [deploy.FRONT_APP])
        figures["at_start"] = serve_memory_mb()
        for round_number in range(1, args.versions + 1):
            if round_number > 1:
                publish_round(root, names, seed=round_number)
                newest = registry.current_version(str(root), names[-1])
                wait_until_served(base, names[-1], newest, bodies[0])
            round_figures = request_every_style(base, names, bodies, args.clients, args.max_side)
            round_figures["memory"] = serve_memory_mb()
            figures["rounds"].append(round_figures)
            print(f"[{router}] round {round_number}: {round_figures}", flush=True)
        working = names[:args.working_set]
        request_every_style(base, working, bodies, args.clients, args.max_side)  # warm-up: every working style loaded
        time.sleep(12)  # Ray pushes metrics every 10 s
        before = cache_events(metrics_port)
        urls = [f"{base}/styles/{name}?max_side={args.max_side}" for name in working]
        latencies, errors = drive(urls, bodies[0], args.clients, args.seconds)
        time.sleep(12)
        after = cache_events(metrics_port)
        moved = {event: after.get(event, 0) - before.get(event, 0) for event in after}
        looked_up = sum(moved.get(event, 0) for event in ("hits", "loads", "failed_loads", "refused"))
        figures["working_set"] = {"styles": len(working), "seconds": args.seconds, "requests": len(latencies), "errors": errors,
                                  "cache_events": moved, "hit_rate": moved.get("hits", 0) / looked_up if looked_up else None,
                                  "p50_ms": 1e3 * statistics.median(latencies) if latencies else None,
                                  "p99_ms": 1e3 * percentile(latencies, 0.99)}
        figures["at_end"] = serve_memory_mb()
        deploy._client(address).delete_applications()
        wait_gone()
    roles = ("front replica", "HTTP proxy", "pool replica")
    first, last = figures["rounds"][0]["memory"]["rss_mb_by_role"], figures["rounds"][-1]["memory"]["rss_mb_by_role"]
    figures["rss_growth_mb_first_to_last_round"] = {role: last.get(role, 0) - first.get(role, 0) for role in roles}
    figures["rss_growth_mb_start_to_last_round"] = {role: last.get(role, 0) - figures["at_start"]["rss_mb_by_role"].get(role, 0)
                                                    for role in roles}
    figures["non_200"] = sum(count for round_figures in figures["rounds"] for status, count in round_figures["statuses"].items() if status != "200")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", deploy.DEFAULT_DASHBOARD), help="Ray dashboard")
    parser.add_argument("--port", type=int, default=8000, help="Serve's HTTP port")
    parser.add_argument("--styles", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=3, help="rounds: every style gets a new version in each after the first")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-side", type=int, default=256, help="what each request asks for (the upload is a full phone photo)")
    parser.add_argument("--working-set", type=int, default=100, help="styles of the hit-rate phase (the cache holds about 150)")
    parser.add_argument("--seconds", type=float, default=60, help="length of the hit-rate phase")
    parser.add_argument("--model-cache-mb", type=int, default=1024)
    parser.add_argument("--pool-cpus", type=float, default=float(os.cpu_count()))
    parser.add_argument("--router", choices=("forgetful", "serve", "both"), default="forgetful",
                        help="the front door's router: this project's, Serve's default (the leak), or both side by side")
    parser.add_argument("--work-dir", default=None, help="where the registry is written (--styles x --versions x 7 MB)")
    args = parser.parse_args()

    import ray

    ray.init(address="auto", logging_level="ERROR")
    metrics_port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])
    bodies = phone_photos(3)
    print(f"bodies: {[f'{len(body) / 1e6:.2f} MB' for body in bodies]}, metrics on :{metrics_port}", flush=True)
    routers = ("serve", "forgetful") if args.router == "both" else (args.router,)
    for router in routers:
        figures = soak(args, router, args.address, metrics_port, bodies)
        path = results.record(f"serve_soak_{router}_{args.styles}x{args.versions}", figures)
        print(f"[{router}] RSS growth, first to last round (MB): {figures['rss_growth_mb_first_to_last_round']}; "
              f"start to last: {figures['rss_growth_mb_start_to_last_round']}; non-200: {figures['non_200']}; "
              f"working set hit rate {figures['working_set']['hit_rate']}; recorded in {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
