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
    assert set(prepared["available_node_types"]) == {"head", "gpu_train", "gpu_serve", "cpu_data"}


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


def test_every_node_names_the_prepared_security_group_and_auth_is_on():
    """Ray creates (and opens SSH to everyone in) a group only for node types that name none:
    tests/test_aws_bootstrap.py checks what its bootstrap does with this file."""
    config = load()
    assert "security_group" not in config["provider"]
    groups = {tuple(node_type["node_config"]["SecurityGroupIds"]) for node_type in config["available_node_types"].values()}
    assert len(groups) == 1
    assert config["available_node_types"]["head"]["node_config"]["IamInstanceProfile"]["Arn"].endswith("/style-factory-head")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]


def test_gpu_nodes_boot_a_current_deep_learning_ami_in_any_region():
    """Ray's default AMI carries CUDA 11.2 drivers, too old for the CUDA 12 torch in the image."""
    types = load()["available_node_types"]
    for name in ("gpu_train", "gpu_serve"):
        image = types[name]["node_config"]["ImageId"]
        assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-")
        assert image.endswith("/latest/ami-id")
