"""Checks a run makes before any pack asks for a worker: that the outputs can be written, and that every
node up now can reach what its workers read and write (the content, the checkpoints).

A node without the bucket's permissions (a node type with no instance profile), a path that exists
only on the head, or a registry that cannot be written would otherwise surface after the GPU nodes
have started, or after hours of training when the first model is published. Here it stops the run in
seconds, naming the node, the setting and the fix. Nodes that start later (the autoscaler's GPU
nodes) cannot be checked before they exist.
"""

from __future__ import annotations

import secrets

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from factory import storage
from factory.settings import FactoryConfig


def _probe_write(root: str) -> None:
    """Write and delete a small object under root: what publishing or checkpointing will do."""
    probe = storage.join(root, f".preflight-{secrets.token_hex(4)}")
    storage.write_bytes(probe, b"style-factory preflight: safe to delete")
    storage.delete(probe)


def _problem(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:300]}"


def node_problems(source: str, storage_path: str) -> dict[str, str]:
    """{setting: what went wrong} for this node: the content must be listable, and on S3 the
    checkpoint storage writable (a local storage_path is only written by whichever node runs rank 0)."""
    problems = {}
    try:
        if not storage.has_content(source):
            problems["data.source"] = f"nothing at {source} as seen from this node"
    except Exception as error:
        problems["data.source"] = _problem(error)
    if storage.is_s3(storage_path):
        try:
            _probe_write(storage_path)
        except Exception as error:
            problems["training.storage_path"] = _problem(error)
    return problems


@ray.remote(num_cpus=0)
def _node_problems(source: str, storage_path: str) -> tuple[str, dict[str, str]]:
    return ray.util.get_node_ip_address(), node_problems(source, storage_path)


def check(config: FactoryConfig) -> None:
    """Raises ValueError listing every problem found, with what to do; returns quietly when none."""
    problems = []
    for setting, root in (("registry", config.registry), ("training.storage_path", config.training.storage_path)):
        try:
            _probe_write(storage.absolute(root))
        except Exception as error:
            problems.append(f"{setting} {root}: cannot be written from the driver ({_problem(error)})")
    source, storage_path = storage.absolute(config.data.source), storage.absolute(config.training.storage_path)
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    checks = [_node_problems.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(source, storage_path)
              for node in nodes]
    for address, found in ray.get(checks):
        problems += [f"{setting} on node {address}: {message}" for setting, message in found.items()]
    if problems:
        raise ValueError(
            "the run cannot work as configured, so no pack was started:\n  " + "\n  ".join(problems) + "\nOn AWS, every node "
            "type needs an IamInstanceProfile that may read and write the bucket (cluster.yaml, aws/prepare_account.py); "
            "other S3-compatible stores need AWS_ENDPOINT_URL and credentials on every node; local paths must be on a "
            "filesystem every node shares"
        )
