"""Fitting a run to the Ray cluster it runs on: which accelerator, how many packs at once, how many
CPUs a CPU worker gets. Decided before any pack asks for a worker, so that a misfit is an error with
what to set, not a run that waits forever or trains on CPUs a hundred times slower than asked for.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import ray

from factory.settings import FactoryConfig, TrainingSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("factory")

# CPUs kept free beside CPU training workers for Ray Data's reading and decoding: without one, the
# data pipeline waits for a CPU forever while the workers wait for data.
DATA_PIPELINE_CPUS = 1


def cpus_to_train(training: TrainingSettings) -> int:
    """CPUs a CPU training pack needs: its workers', and the data pipeline's."""
    return training.num_workers * training.cpus_per_worker + DATA_PIPELINE_CPUS


def init_ray(config: FactoryConfig) -> str | None:
    """Start or join Ray; returns the dashboard URL when this call started the connection."""
    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a running cluster
        return ray.init().dashboard_url
    # A local Ray of this run's own. address="local" because a bare ray.init() joins whatever address an
    # earlier `ray start` left in /tmp/ray/ray_current_cluster, even one long dead (a killed cluster never
    # clears it), and then fails on num_cpus. Joining a running cluster is asked for with RAY_ADDRESS.
    # It gets room for Ray Data's decoding beside the training workers, or a small laptop's pipeline stalls.
    needed = cpus_to_train(config.training)
    env_vars = {
        "PYTHONPATH": str(REPO_ROOT),
        # Ray Data logs a line per epoch ("Dataset ... execution finished"); a small data set has an
        # epoch every few steps, which drowned the factory's own progress lines. Warnings still show.
        "RAY_DATA_LOG_LEVEL": os.environ.get("RAY_DATA_LOG_LEVEL", "WARNING"),
    }
    return ray.init(address="local", num_cpus=max(os.cpu_count() or 1, needed),
                    runtime_env={"env_vars": env_vars}).dashboard_url


def on_a_cluster() -> bool:
    """Whether this run joined a cluster (ray job submit, RAY_ADDRESS) or sees nodes besides its own."""
    return bool(os.environ.get("RAY_ADDRESS")) or sum(node["Alive"] for node in ray.nodes()) > 1


def use_gpu(config: FactoryConfig) -> bool:
    """training.accelerator resolved. 'auto' on a cluster with no GPU in sight is refused: an autoscaling
    cluster starts GPU nodes only when something asks for a GPU, so auto would settle on its CPUs."""
    accelerator = config.training.accelerator
    if accelerator != "auto":
        return accelerator == "gpu"
    if ray.cluster_resources().get("GPU", 0) > 0:
        return True
    if on_a_cluster():
        raise ValueError(
            "training.accelerator is auto and the Ray cluster has no GPU now. An autoscaling cluster starts GPU nodes "
            "only when a task asks for a GPU, so auto would train on CPUs, about a hundred times slower. Set "
            "training.accelerator: gpu to ask for GPU workers (configs/coco_s3.yaml does), or cpu to train on CPUs on purpose"
        )
    return False


def concurrent_packs(config: FactoryConfig, gpu: bool, pack_count: int) -> int:
    """How many packs to start at once. On GPUs (or with custom worker resources, which name node
    types) every pack starts and asks for its workers; Ray queues what does not fit yet, so an
    autoscaling cluster sees the whole demand and starts nodes for it. Counting the GPUs present at
    the start would see none on a cluster whose GPU nodes have not started, and train one pack at a time."""
    training = config.training
    if training.max_concurrent_packs:
        return min(pack_count, training.max_concurrent_packs)
    if gpu or training.worker_resources:
        return pack_count
    # CPU training on the machines at hand: as many packs as fit, keeping one CPU for Ray Data's
    # decoding (packs queued behind a full machine would starve the running ones' data pipelines).
    fits = int((ray.cluster_resources().get("CPU", 1) - DATA_PIPELINE_CPUS) // (training.num_workers * training.cpus_per_worker))
    return max(1, min(pack_count, fits))


def fit_cpu_workers_to_cluster(config: FactoryConfig, gpu: bool) -> FactoryConfig:
    """CPU training on a cluster smaller than the config asks for (a 2-core laptop's `ray start --head`
    has 2 CPUs; configs/tiny.yaml gives its worker 2): the workers would take every CPU, and Ray Data's
    reads would wait for one forever. Give each worker fewer CPUs, keeping one for the data pipeline,
    and say so. Left alone: GPU training and custom worker resources, whose nodes an autoscaler adds."""
    training = config.training
    if gpu or training.worker_resources:
        return config
    available = int(ray.cluster_resources().get("CPU", 0))
    if available >= cpus_to_train(training):
        return config
    fitted = (available - DATA_PIPELINE_CPUS) // training.num_workers
    if fitted < 1:
        raise ValueError(
            f"the Ray cluster has {available} CPU(s); training on CPU with {training.num_workers} worker(s) needs at least "
            f"{training.num_workers + DATA_PIPELINE_CPUS} (one per worker, one for reading data): start Ray with more (ray start --num-cpus N) "
            "or lower training.num_workers"
        )
    logger.warning("the Ray cluster has %d CPUs: each of the %d training worker(s) gets %d instead of %d, leaving one "
                   "for reading data", available, training.num_workers, fitted, training.cpus_per_worker)
    return dataclasses.replace(config, training=dataclasses.replace(training, cpus_per_worker=fitted))


def worker_resources(training: TrainingSettings, gpu: bool) -> dict:
    """What each of a pack's workers asks Ray for."""
    return {"CPU": training.cpus_per_worker, **({"GPU": 1} if gpu else {}), **training.worker_resources}
