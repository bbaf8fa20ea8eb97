"""Running a run's packs side by side, and saying what the ones still waiting for workers wait for.

On an autoscaling cluster a pack's workers start when GPU nodes do; with no spot capacity or no quota
they never do, and Ray Train waits without a word. So every training.waiting_log_s the driver logs,
for each pack whose workers have not started, what it asks for and what the cluster has; past
training.start_deadline_s such packs are given up (packs already training go on to the end).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable

import ray

from factory.packs import PackPlan
from factory.settings import TrainingSettings

logger = logging.getLogger("factory")
POLL_S = 1.0


@ray.remote(num_cpus=0)
class PackBoard:
    """Which packs' workers have started: rank 0 of each says so as soon as it runs."""

    def __init__(self):
        self.started: set[str] = set()

    def mark_started(self, run_name: str) -> None:
        self.started.add(run_name)

    def started_packs(self) -> set[str]:
        return set(self.started)


def _resources_text(resources: dict) -> str:
    return "{" + ", ".join(f"{name}: {value:g}" for name, value in sorted(resources.items())) + "}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def waiting_report(waiting: dict[str, float], asked: dict, workers: int, now: float) -> str:
    """One log line: the packs waiting and for how long, what each asks for, what the cluster has."""
    nodes = sum(node["Alive"] for node in ray.nodes())
    total = {"GPU": 0, **{name: value for name, value in ray.cluster_resources().items()
                          if not name.startswith(("node:", "memory", "object_store", "accelerator_type:"))}}
    free = {name: ray.available_resources().get(name, 0) for name in total}
    packs = ", ".join(f"{name} ({_duration(now - since)})" for name, since in sorted(waiting.items()))
    return (f"{len(waiting)} pack(s) waiting for their workers: {packs}; each asks for {workers} worker(s) of "
            f"{_resources_text(asked)}. The cluster has {nodes} node(s) up with {_resources_text(total)} "
            f"({_resources_text(free)} free). On an autoscaling cluster the nodes come when the autoscaler starts "
            "them: if none come, `ray status` and `ray monitor cluster.yaml` say why (spot capacity, service quotas)")


def run_packs(plans: list[PackPlan], run: Callable[[PackPlan], list], concurrent: int, training: TrainingSettings,
              board, asked: dict) -> tuple[list, list[PackPlan]]:
    """run(plan) for every plan, `concurrent` at a time: (their outcomes, the plans given up past the
    start deadline). A given-up pack's thread is left waiting: the caller ends the process."""
    submitted: dict[str, float] = {}

    def tracked(plan: PackPlan) -> list:
        submitted[plan.run_name] = time.time()
        return run(plan)

    executor = ThreadPoolExecutor(max_workers=concurrent)
    futures: dict[Future, PackPlan] = {executor.submit(tracked, plan): plan for plan in plans}
    pending, outcomes, given_up = set(futures), [], []
    last_report = time.time()
    while pending:
        done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
        for future in done:
            outcomes += future.result()
        now = time.time()
        started = ray.get(board.started_packs.remote())
        waiting = {futures[future].run_name: submitted[futures[future].run_name] for future in pending
                   if futures[future].run_name in submitted and futures[future].run_name not in started}
        if waiting and now - last_report >= training.waiting_log_s:
            logger.warning(waiting_report(waiting, asked, training.num_workers, now))
            last_report = now
        if training.start_deadline_s:
            overdue = {name for name, since in waiting.items() if now - since > training.start_deadline_s}
            for future in [future for future in pending if futures[future].run_name in overdue]:
                logger.error("pack %s found no workers in %.0f s (training.start_deadline_s): given up",
                             futures[future].run_name, training.start_deadline_s)
                given_up.append(futures[future])
                pending.discard(future)
    executor.shutdown(wait=not given_up, cancel_futures=True)
    return outcomes, given_up
