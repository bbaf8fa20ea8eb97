"""Many styles served two ways, side by side in one run: the style pool, and one application per style.

    ray get-auth-token --generate > /dev/null && export RAY_AUTH_MODE=token && ray start --head --num-cpus 2
    python bench/serve_many.py --address http://127.0.0.1:8265 --styles 200 --per-style-apps 16

Copies of one random model are published under --styles names. For each way it prints: deploy time,
memory of Serve's processes (controller, proxy, replicas; summed RSS and PSS, PSS counting shared
library pages once) and how much the machine's used memory rose, the time to the first answer from
a never-requested style, the time to send one request to each style of the mixed traffic in turn
(the pool loads them then), then requests/s, p50 and p99 of --clients clients sending mixed traffic
(over --mixed styles for the pool, over every style for per-style applications) for --seconds. For
the pool also: how long a style published while serving takes to answer, with no deploy. Every
application it deploys is deleted at the end; figures go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
import torch

from bench import results
from bench.serve_load import drive, percentile
from factory import images, onnx_model, registry
from factory.transform_net import TransformNet
from serve import deploy
from serve.settings import load_serving_config

SERVE_PROCESSES = ("ServeController", "ProxyActor", "ServeReplica")


# Who spends the CPU and holds the memory, by the titles Ray gives its processes (first match wins).
ROLES = (("StylePool", "pool replica"), ("Front", "front replica"), ("StyleEndpoint", "per-style replicas"),
         ("ProxyActor", "HTTP proxy"), ("ServeController", "Serve controller"), ("raylet", "Ray system"),
         ("gcs_server", "Ray system"), ("dashboard", "Ray system"), ("ray::", "Ray system"))


def role_of(title: str) -> str:
    return next((role for marker, role in ROLES if marker in title), "everything else")


def process_titles() -> Iterator[tuple[str, str]]:
    """(pid, command line) of every process on this machine: Ray titles its workers by what they run."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            yield pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile


def serve_memory_mb(leave_out: tuple[str, ...] = ()) -> dict:
    """Summed RSS and PSS (MB) of this machine's Serve processes, found by the titles Ray gives them,
    and the RSS of each role (pool replica, front replica, proxy, ...)."""
    rss = pss = count = 0
    rss_by_role: dict[str, float] = {}
    for pid, title in process_titles():
        if not any(name in title for name in SERVE_PROCESSES) or any(name in title for name in leave_out):
            continue
        try:
            rollup = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        except OSError:
            continue  # gone meanwhile
        process_rss = int(rollup["Rss"].split()[0])
        rss += process_rss
        pss += int(rollup["Pss"].split()[0])
        count += 1
        role = role_of(title)
        rss_by_role[role] = rss_by_role.get(role, 0.0) + process_rss / 1024
    return {"processes": count, "rss_mb": rss / 1024, "pss_mb": pss / 1024,
            "rss_mb_by_role": {role: round(mb) for role, mb in sorted(rss_by_role.items())}}


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds (user + system) each role's processes have used so far; this process is the clients."""
    ticks = os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for pid, title in process_titles():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        role = "bench clients" if int(pid) == os.getpid() else role_of(title)
        spent[role] = spent.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return spent


def cpu_ms_per_request(before: dict[str, float], after: dict[str, float], requests_done: int) -> dict[str, float]:
    return {role: round(1e3 * (after[role] - before.get(role, 0.0)) / max(1, requests_done), 1)
            for role in sorted(after) if after[role] - before.get(role, 0.0) > 0.005 * max(1, requests_done)}


def used_memory_mb() -> float:
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def publish_copies(root: Path, names: list[str]) -> None:
    """One random model under many names, published as training publishes (with its ONNX export)."""
    torch.manual_seed(0)
    net = TransformNet().eval()
    exported = onnx_model.export(net)
    picture = images.encode(images.fit_within(images.decode_rgb(Path("data/samples/styles/udnie.jpg").read_bytes(), max_pixels=10**8), 64))
    for name in names:
        registry.publish(str(root), name, net.state_dict(), {"steps": 0}, picture, picture, onnx_model=exported)


def post_seconds(url: str, body: bytes) -> float:
    start = time.perf_counter()
    response = requests.post(url, data=body, timeout=300)
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    return time.perf_counter() - start


def wait_gone(leave_out: tuple[str, ...] = (), timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while serve_memory_mb(leave_out)["processes"] > 2 and time.time() < deadline:  # the controller and proxy stay
        time.sleep(1)


def measure(name: str, serving: dict, address: str, base: str, styles: list[str], mixed: list[str], body: bytes,
            clients: int, seconds: float, leave_out: tuple[str, ...]) -> dict:
    memory_before = used_memory_mb()
    start = time.perf_counter()
    deploy.deploy(load_serving_config(None, **serving), address, allow_empty=True)
    figures = {"styles": len(styles), "deploy_s": time.perf_counter() - start}
    never_requested = styles[-1]
    figures["first_answer_s"] = post_seconds(f"{base}/styles/{never_requested}", body)
    figures["second_answer_s"] = post_seconds(f"{base}/styles/{never_requested}", body)
    # Steady state: every style of the mixed traffic answers once first, so the traffic measures
    # serving, not loading (per-style applications load theirs while deploying); loading is reported.
    start = time.perf_counter()
    for style in mixed:
        post_seconds(f"{base}/styles/{style}", body)
    figures["first_request_to_each_mixed_style_s"] = time.perf_counter() - start
    cpu_before = cpu_seconds_by_role()
    latencies, errors = drive([f"{base}/styles/{style}" for style in mixed], body, clients, seconds)
    cpu_after = cpu_seconds_by_role()
    figures["cpu_ms_per_request"] = cpu_ms_per_request(cpu_before, cpu_after, len(latencies))
    figures["cpu_busy_fraction"] = (sum(cpu_after.values()) - sum(cpu_before.values())) / (seconds * os.cpu_count())
    figures.update({
        "mixed_styles": len(mixed), "clients": clients, "seconds": seconds,
        "requests_per_second": len(latencies) / seconds, "errors": errors,
        "p50_ms": 1e3 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1e3 * percentile(latencies, 0.99),
    })
    figures["memory"] = serve_memory_mb(leave_out)
    figures["machine_used_mb_rise"] = used_memory_mb() - memory_before
    print(f"{name}: {figures}", flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", deploy.DEFAULT_DASHBOARD), help="Ray dashboard")
    parser.add_argument("--port", type=int, default=8000, help="Serve's HTTP port")
    parser.add_argument("--styles", type=int, default=200, help="styles in the pool")
    parser.add_argument("--mixed", type=int, default=50, help="styles the pool's mixed traffic spreads over")
    parser.add_argument("--per-style-apps", type=int, default=16, help="styles deployed as an application each")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--image-side", type=int, default=256)
    parser.add_argument("--cpu-runtime", default="torch", help="the pool's pool.cpu_runtime: torch (its default) or onnxruntime")
    parser.add_argument("--pool-replicas", type=int, default=1, help="pool replicas (each reserves --pool-cpus)")
    parser.add_argument("--model-cache-mb", type=int, default=1024, help="the pool's model cache (enough for --mixed styles)")
    parser.add_argument("--pool-cpus", type=float, default=float(os.cpu_count()),
                        help="CPUs the pool's one replica reserves (torch uses as many threads, rounded down): the whole machine by "
                             "default, the front door reserving none")
    parser.add_argument("--app-cpus", type=float, default=0.1, help="CPUs each per-style application's replica reserves")
    args = parser.parse_args()

    photo = images.fit_within(images.decode_rgb(Path("data/samples/held_out/chelsea.png").read_bytes(), max_pixels=10**8), args.image_side)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    body, base = buffer.getvalue(), f"http://127.0.0.1:{args.port}"
    http = {"host": "127.0.0.1", "port": args.port}
    with tempfile.TemporaryDirectory(prefix="serve-many-") as work:
        names = [f"style-{index:03d}" for index in range(args.styles)]
        publish_copies(Path(work) / "pool", names)
        pool = measure("pool", {"registry": str(Path(work) / "pool"), "http": http, "pool": {"front_num_cpus": 0, "model_cache_mb": args.model_cache_mb,
                                         "cpu_runtime": args.cpu_runtime},
                                "defaults": {"num_cpus": args.pool_cpus, "min_replicas": args.pool_replicas,
                                             "max_replicas": args.pool_replicas}},
                       args.address, base, names, names[:args.mixed], body, args.clients, args.seconds, leave_out=())
        late = "published-while-serving"
        publish_copies(Path(work) / "pool", [late])
        start = time.perf_counter()
        while requests.post(f"{base}/styles/{late}", data=body, timeout=300).status_code != 200:
            time.sleep(0.2)
        pool["published_while_serving_answers_after_s"] = time.perf_counter() - start
        deploy._client(args.address).delete_applications()
        wait_gone()

        dedicated = names[:args.per_style_apps]
        publish_copies(Path(work) / "apps", dedicated)
        apps = measure("per-style apps", {"registry": str(Path(work) / "apps"), "http": http, "pool": {"front_num_cpus": 0},
                                          "defaults": {"num_cpus": args.app_cpus, "max_replicas": 1},
                                          "styles": {name: {"dedicated": True, "max_replicas": 1} for name in dedicated}},
                       args.address, base, dedicated, dedicated, body, args.clients, args.seconds,
                       leave_out=("StylePool",))  # the idle pool: it holds no model and per-style serving never had one
        deploy._client(args.address).delete_applications()

    rows = [
        ("styles served", pool["styles"], apps["styles"], ""),
        ("deploy, s", pool["deploy_s"], apps["deploy_s"], ""),
        ("Serve processes", pool["memory"]["processes"], apps["memory"]["processes"], ""),
        ("Serve processes RSS, MB", pool["memory"]["rss_mb"], apps["memory"]["rss_mb"], ""),
        ("Serve processes PSS, MB", pool["memory"]["pss_mb"], apps["memory"]["pss_mb"], ""),
        ("machine's used memory rise, MB", pool["machine_used_mb_rise"], apps["machine_used_mb_rise"], ""),
        ("first answer, never-requested style, s", pool["first_answer_s"], apps["first_answer_s"], ""),
        ("second answer, same style, s", pool["second_answer_s"], apps["second_answer_s"], ""),
        ("one request to each mixed style in turn, s", pool["first_request_to_each_mixed_style_s"],
         apps["first_request_to_each_mixed_style_s"], ""),
        (f"mixed traffic ({args.clients} clients), req/s", pool["requests_per_second"], apps["requests_per_second"],
         f"x{pool['requests_per_second'] / apps['requests_per_second']:.2f}" if apps["requests_per_second"] else ""),
        ("  over styles", pool["mixed_styles"], apps["mixed_styles"], ""),
        ("  p50, ms", pool["p50_ms"], apps["p50_ms"], ""),
        ("  p99, ms", pool["p99_ms"], apps["p99_ms"], ""),
        ("  errors", pool["errors"] or "none", apps["errors"] or "none", ""),
        ("published while serving: answers after, s", pool["published_while_serving_answers_after_s"], "(needs a deploy)", ""),
    ]
    print(f"\nimage {photo.width}x{photo.height} JPEG, {args.seconds:.0f} s of traffic per way, pool runtime {args.cpu_runtime}, "
          f"on {results.device_name()}")
    print(f"{'':<44} {'pool':>12} {'per-style apps':>16} {'pool/apps':>10}")
    for label, left, right, ratio in rows:
        print(f"{label:<44} {left:>12.2f} {right:>16.2f} {ratio:>10}" if isinstance(left, float) and isinstance(right, float)
              else f"{label:<44} {str(left):>12} {str(right):>16} {ratio:>10}")
    path = results.record(f"serve_many_{args.cpu_runtime}", {"image": f"{photo.width}x{photo.height}", "pool_cpu_runtime": args.cpu_runtime,
                                                             "pool": pool, "per_style_apps": apps})
    print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
