"""cluster.yaml passes Ray's own config preparation and validation, with no cloud call."""

import copy

import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO_ROOT


def load():
    return yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())


def test_ray_prepares_and_validates_the_cluster_config():
    prepared = prepare_config(copy.deepcopy(load()))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "gpu_train", "gpu_serve"}


def test_image_matches_the_pinned_ray_version():
    assert load()["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert f"ray[data,train,serve]=={ray.__version__}" in (REPO_ROOT / "pyproject.toml").read_text()


def test_head_trains_nothing_and_training_runs_on_spot_gpu_nodes():
    types = load()["available_node_types"]
    assert types["head"]["resources"]["GPU"] == 0
    assert types["gpu_train"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in types["gpu_serve"]["node_config"]
    for name in ("gpu_train", "gpu_serve"):  # the launcher gives only the head an IAM role
        assert "instance-profile" in types[name]["node_config"]["IamInstanceProfile"]["Arn"]


def test_only_ssh_and_the_serve_port_are_open_and_auth_is_on():
    config = load()
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert sorted(rule["FromPort"] for rule in rules) == [22, 8000]
    ssh = next(rule for rule in rules if rule["FromPort"] == 22)
    assert all(entry["CidrIp"] != "0.0.0.0/0" for entry in ssh["IpRanges"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]
