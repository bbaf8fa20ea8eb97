"""What Ray's own AWS bootstrap makes of cluster.yaml, against moto's EC2 and IAM on 127.0.0.1 (boto3
through AWS_ENDPOINT_URL, as against AWS): no SSH from the whole internet, and a head that may pass
the workers' role to the instances it starts."""

import importlib.util
import json

import boto3
import pytest
import yaml
from ray.autoscaler._private.aws.config import bootstrap_aws
from ray.autoscaler._private.util import prepare_config

from conftest import REPO_ROOT

REGION = "us-west-2"
OFFICE = "198.51.100.0/24"


def prepare_account():
    spec = importlib.util.spec_from_file_location("prepare_account", REPO_ROOT / "aws" / "prepare_account.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cluster_config(security_group_id: str | None) -> dict:
    config = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())
    for node_type in config["available_node_types"].values():
        if "SecurityGroupIds" not in node_type["node_config"]:
            continue  # a node type that names no group: Ray creates one
        if security_group_id:
            node_type["node_config"]["SecurityGroupIds"] = [security_group_id]  # what the user pastes over REPLACE_ME
        else:
            del node_type["node_config"]["SecurityGroupIds"]
    return prepare_config(config)


def ssh_sources(ec2) -> dict[str, set[str]]:
    """Every security group's name -> the ranges its rules let SSH in from."""
    return {group["GroupName"]: {ip["CidrIp"] for rule in group["IpPermissions"]
                                 if rule.get("FromPort", 0) <= 22 <= rule.get("ToPort", 65535) or rule["IpProtocol"] == "-1"
                                 for ip in rule.get("IpRanges", [])}
            for group in ec2.describe_security_groups()["SecurityGroups"]}


@pytest.fixture
def aws(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the launcher writes the key pair it creates under ~/.ssh
    return boto3.client("ec2", region_name=REGION), boto3.client("iam", region_name=REGION)


def test_without_our_group_rays_bootstrap_would_open_ssh_to_everyone(aws):
    """Why cluster.yaml names a group: the one Ray creates takes SSH from 0.0.0.0/0 (Ray 2.60)."""
    ec2, _ = aws
    bootstrap_aws(cluster_config(None))
    assert "0.0.0.0/0" in ssh_sources(ec2)["ray-autoscaler-style-factory"]


def test_the_cluster_comes_up_with_ssh_only_from_the_users_range_and_a_head_that_may_pass_the_worker_role(aws):
    ec2, iam = aws
    made = prepare_account().prepare(REGION, OFFICE, "my-style-factory")
    before = {group["GroupId"] for group in ec2.describe_security_groups()["SecurityGroups"]}

    bootstrapped = bootstrap_aws(cluster_config(made["security_group_id"]))

    assert {group["GroupId"] for group in ec2.describe_security_groups()["SecurityGroups"]} == before  # Ray made none
    for node_type in bootstrapped["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"] == [made["security_group_id"]]
    group = ec2.describe_security_groups(GroupIds=[made["security_group_id"]])["SecurityGroups"][0]
    assert ssh_sources(ec2)[group["GroupName"]] == {OFFICE}
    ports = {(rule.get("FromPort"), rule["IpProtocol"]) for rule in group["IpPermissions"]}
    assert ports == {(22, "tcp"), (8000, "tcp"), (None, "-1")}  # SSH, Serve, and node to node
    node_to_node = next(rule for rule in group["IpPermissions"] if rule["IpProtocol"] == "-1")
    assert [pair["GroupId"] for pair in node_to_node["UserIdGroupPairs"]] == [group["GroupId"]] and not node_to_node["IpRanges"]

    # The head runs as our profile, not a role the launcher made, and that role may pass exactly the workers' role.
    head = bootstrapped["available_node_types"]["head"]["node_config"]["IamInstanceProfile"]["Arn"]
    assert head == made["head_instance_profile_arn"]
    assert not [role for role in iam.list_roles()["Roles"] if role["RoleName"].startswith("ray-autoscaler")]
    worker_profile = bootstrapped["available_node_types"]["gpu_train"]["node_config"]["IamInstanceProfile"]["Arn"]
    assert worker_profile == made["worker_instance_profile_arn"]
    worker_role = iam.get_instance_profile(InstanceProfileName="style-factory-worker")["InstanceProfile"]["Roles"][0]["Arn"]
    document = iam.get_role_policy(RoleName="style-factory-head", PolicyName="pass-worker-role")["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    passes = [statement["Resource"] for statement in document["Statement"] if statement["Action"] == "iam:PassRole"]
    assert passes == [worker_role]
    assert sorted(iam.list_role_policies(RoleName="style-factory-head")["PolicyNames"]) == ["bucket", "ec2-autoscaler", "pass-worker-role"]
    assert iam.list_attached_role_policies(RoleName="style-factory-head")["AttachedPolicies"] == []


def test_preparing_twice_changes_nothing_and_the_whole_internet_is_refused(aws, capsys):
    module = prepare_account()
    first = module.prepare(REGION, OFFICE, "my-style-factory")
    assert module.prepare(REGION, OFFICE, "my-style-factory") == first
    assert module.main(["--region", REGION, "--ssh-cidr", "0.0.0.0/0", "--bucket", "b"]) == 2
    assert "whole internet" in capsys.readouterr().err
