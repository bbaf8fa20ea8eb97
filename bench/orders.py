"""From POST /orders to the first stylised image with the new style, on a running Ray cluster.

    ray get-auth-token --generate > /dev/null && export RAY_AUTH_MODE=token
    ray start --head --num-cpus 4
    python bench/orders.py --address http://127.0.0.1:8265
    ray stop

It trains a style family at the tiny settings (configs/tiny.yaml, pack_mode family: starry_night and
the_scream) into a registry of its own, deploys the front door with orders on (the recipe:
configs/tiny.yaml), and times, each from the POST to the first 200 from /styles/<name>:
  - a style joining the family (--joins of them, one after another: the spread);
  - a style with a network of its own;
  - four own-network orders placed at once, trained as one run (orders.batch_max: 4), until all four
    answer; and the same four with batch_max 1, one run after another, on the same cluster.
Figures go to bench/results/ as JSON, section `orders`. Run it alone: it measures wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench import results
from factory import orders
from serve import deploy
from serve.settings import load_serving_config

REPO = Path(__file__).resolve().parent.parent
PAINTINGS = ["udnie.jpg", "shipwreck.jpg", "woman-with-hat-matisse.jpg", "the_scream.jpg", "starry_night.jpg"]
PHOTO = (REPO / "data" / "samples" / "held_out" / "rocket.jpg").read_bytes()
TOKEN = "bench-token-0123456789abcdef"
FAMILY = "benchfam"


def train_family(registry: Path, checkpoints: Path) -> None:
    """The family orders join, trained as train_all trains one (on a local Ray of its own: setup, not timed)."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "factory/train_all.py", "--config", "configs/tiny.yaml", "--set", "training.pack_mode=family",
                           "--set", f"name={FAMILY}", "--set", f"registry={registry}", "--set", f"training.storage_path={checkpoints}",
                           "--no-contact-sheet"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"training the family failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def serving_config(registry: Path, tokens: Path, port: int, batch_max: int) -> dict:
    checkpoints = registry.parent / "order-checkpoints"  # not the checkout's data/checkpoints
    return {
        "registry": str(registry),
        "http": {"host": "127.0.0.1", "port": port},
        "pool": {"refresh_s": 1},
        "defaults": {"num_cpus": 0.5, "max_replicas": 1},
        "orders": {"enabled": True, "training_config": "configs/tiny.yaml", "default_family": FAMILY, "tokens_file": str(tokens),
                   "overrides": [f"training.storage_path={checkpoints}"],
                   "max_running": 1, "batch_max": batch_max, "batch_wait_s": 3, "per_token_concurrent": 10, "poll_s": 1},
    }


def place(base: str, name: str, painting: str, family: str | None) -> str:
    form = {"painting": (painting, (REPO / "data" / "samples" / "styles" / painting).read_bytes()), "name": (None, name)}
    if family is not None:
        form["family"] = (None, family)
    answer = requests.post(f"{base}/orders", files=form, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    if answer.status_code != 202:
        raise RuntimeError(f"POST /orders for {name}: {answer.status_code} {answer.text[:300]}")
    return answer.json()["id"]


def first_image(base: str, order_id: str, name: str, timeout_s: float = 3600) -> None:
    """Waits until the order is live and its style has answered a photo."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        seen = requests.get(f"{base}/orders/{order_id}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        if seen.status_code == 200 and seen.json()["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"order {name}: {seen.json()}")
        if seen.status_code == 200 and seen.json()["status"] == "published":
            answer = requests.post(f"{base}/styles/{name}", data=PHOTO, timeout=120)
            if answer.status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"order {name} was not live within {timeout_s:.0f} s")


def phases(registry: Path, order_id: str) -> dict:
    """Where an order's time went, from its record (waiting in the queue, its run) and its style's metadata
    (the run's training loop, and its rate per style): the rest of the run is its fixed cost."""
    order = orders.read(str(registry), order_id)
    throughput = registry_metadata(registry, order.name)["throughput"]
    return {"queued_s": round(order.started_at - order.created_at, 1), "run_s": round(order.finished_at - order.started_at, 1),
            "training_s": round(throughput["train_seconds"], 1),
            "images_per_second_per_style": round(throughput["images_per_second_per_style"], 2)}


def registry_metadata(registry: Path, name: str) -> dict:
    from factory import registry as published

    return published.read_metadata(str(registry), name)


def one_order(base: str, registry: Path, name: str, painting: str, family: str | None) -> dict:
    start = time.perf_counter()
    order_id = place(base, name, painting, family)
    first_image(base, order_id, name)
    figures = {"order_to_image_s": round(time.perf_counter() - start, 1), **phases(registry, order_id)}
    print(f"{name}: {figures}", flush=True)
    return figures


def four_at_once(base: str, registry: Path, label: str) -> dict:
    start = time.perf_counter()
    placed = [(place(base, f"{label}_{index}", PAINTINGS[index], ""), f"{label}_{index}") for index in range(4)]
    for order_id, name in placed:
        first_image(base, order_id, name)
    seconds = time.perf_counter() - start
    each = {orders.read(str(registry), order_id).job: phases(registry, order_id) for order_id, _ in placed}  # one a run
    every = [phases(registry, order_id) for order_id, _ in placed]
    figures = {"four_to_images_s": round(seconds, 1), "orders_per_hour": round(4 * 3600 / seconds, 1), "runs": len(each),
               "training_s": round(sum(entry["training_s"] for entry in each.values()), 1),
               "images_per_second_per_style": round(statistics.mean(entry["images_per_second_per_style"] for entry in every), 2)}
    print(f"{label}: {figures}", flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", deploy.DEFAULT_DASHBOARD), help="Ray dashboard")
    parser.add_argument("--port", type=int, default=8000, help="Serve's HTTP port")
    parser.add_argument("--joins", type=int, default=3, help="joining orders timed one after another")
    parser.add_argument("--no-record", action="store_true", help="print only; write nothing under bench/results/")
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="bench-orders-") as folder:
        root = Path(folder)
        tokens = root / "tokens"
        tokens.write_text(TOKEN + "\n")
        print("training the family the orders join (not timed) ...", flush=True)
        train_family(root / "registry", root / "checkpoints")
        try:
            deploy.deploy(load_serving_config(None, **serving_config(root / "registry", tokens, args.port, 4)), args.address)
            joins = [one_order(base, root / "registry", f"join_{index}", PAINTINGS[index % len(PAINTINGS)], None) for index in range(args.joins)]
            own = one_order(base, root / "registry", "own_0", PAINTINGS[0], "")
            batched = four_at_once(base, root / "registry", "batched")
            deploy.deploy(load_serving_config(None, **serving_config(root / "registry", tokens, args.port, 1)), args.address)
            in_a_row = four_at_once(base, root / "registry", "in_a_row")
        finally:
            deploy._client(args.address).delete_applications()
    join_times = [join["order_to_image_s"] for join in joins]
    figures = {
        "recipe": "configs/tiny.yaml (150 steps, 96 px, batch 2; a join: 30 steps at learning rate 0.1), random VGG-19",
        "join_order_to_image_s": {"mean": round(statistics.mean(join_times), 1),
                                  "sd": round(statistics.stdev(join_times), 1) if len(join_times) > 1 else None,
                                  "min": min(join_times), "max": max(join_times), "each": joins},
        "own_network_order_to_image_s": own,
        "four_batched": batched,
        "four_in_a_row": in_a_row,
        "batched_throughput_ratio": round(in_a_row["four_to_images_s"] / batched["four_to_images_s"], 2),
    }
    print(f"join: {figures['join_order_to_image_s']['mean']} s (sd {figures['join_order_to_image_s']['sd']}); own network: "
          f"{own['order_to_image_s']} s; four batched {batched['four_to_images_s']} s, in a row {in_a_row['four_to_images_s']} s: "
          f"x{figures['batched_throughput_ratio']}", flush=True)
    if not args.no_record:
        print(f"recorded in {results.record('orders', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
