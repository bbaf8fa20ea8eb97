"""The IAM policies aws/prepare_account.py grants hold every AWS call the cluster makes, and docs/aws.md's
list for users who write the policy themselves is the same list. moto does not enforce IAM, so this
is where a dropped permission would show before a real account refuses it."""

import fnmatch
import re

import pytest

from conftest import REPO_ROOT
from factory import layout

import sys
sys.path.insert(0, str(REPO_ROOT / "aws"))
import prepare_account  # noqa: E402

BUCKET = "my-style-factory"


def actions(policy: dict) -> set[str]:
    found = set()
    for statement in policy["Statement"]:
        listed = statement["Action"]
        found |= {listed} if isinstance(listed, str) else set(listed)
    return found


def allows(policy: dict, action: str, resource: str) -> bool:
    return any(statement["Effect"] == "Allow"
               and any(fnmatch.fnmatchcase(action, pattern) for pattern in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]))
               and any(fnmatch.fnmatchcase(resource, pattern) for pattern in ([statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]))
               for statement in policy["Statement"])


HEAD = [prepare_account.bucket_policy(BUCKET), prepare_account.AUTOSCALER_EC2,
        prepare_account.pass_role_policy("arn:aws:iam::123456789012:role/style-factory-worker")]
WORKER = [prepare_account.bucket_policy(BUCKET)]

# What the code calls: factory/storage.py (boto3 and pyarrow), the preflight's probe, Ray Train's
# checkpoints, Ray's autoscaler on the head (autoscaler/_private/aws/node_provider.py and config.py).
S3_CALLS = [("s3:GetObject", f"arn:aws:s3:::{BUCKET}/{layout.REGISTRY}/a/current.json"),
            ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/{layout.CHECKPOINTS}/run/checkpoint/pack.pt"),
            ("s3:DeleteObject", f"arn:aws:s3:::{BUCKET}/{layout.REGISTRY}/.preflight-0000"),
            ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}"),  # list_objects_v2, and HeadBucket's region lookup
            ("s3:GetBucketLocation", f"arn:aws:s3:::{BUCKET}")]
AUTOSCALER_CALLS = [("ec2:DescribeInstances", "*"), ("ec2:DescribeSubnets", "*"), ("ec2:DescribeSecurityGroups", "*"),
                    ("ec2:DescribeImages", "*"), ("ec2:RunInstances", "*"), ("ec2:CreateTags", "*"),
                    ("ec2:TerminateInstances", "*"), ("ec2:StopInstances", "*"), ("ec2:StartInstances", "*"),
                    ("ssm:GetParameters", "arn:aws:ssm:us-west-2::parameter/aws/service/deeplearning/ami/x86_64/"
                                          "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"),
                    ("iam:PassRole", "arn:aws:iam::123456789012:role/style-factory-worker"),
                    ("iam:GetInstanceProfile", "arn:aws:iam::123456789012:instance-profile/style-factory-worker"),
                    ("iam:CreateServiceLinkedRole", "*")]


@pytest.mark.parametrize("action, resource", S3_CALLS + AUTOSCALER_CALLS)
def test_the_head_may_make_every_call_the_cluster_makes_from_it(action, resource):
    assert any(allows(policy, action, resource) for policy in HEAD), f"{action} on {resource}"


@pytest.mark.parametrize("action, resource", S3_CALLS)
def test_the_workers_may_read_and_write_the_bucket(action, resource):
    assert any(allows(policy, action, resource) for policy in WORKER), f"{action} on {resource}"


def test_the_workers_may_not_launch_or_pass_roles():
    for action, resource in AUTOSCALER_CALLS:
        assert not any(allows(policy, action, resource) for policy in WORKER), action


def test_the_head_passes_only_the_worker_role():
    assert not any(allows(policy, "iam:PassRole", "arn:aws:iam::123456789012:role/admin") for policy in HEAD)


def test_the_readme_lists_every_action_the_script_grants():
    section = (REPO_ROOT / "docs" / "aws.md").read_text()
    listed = set(re.findall(r"`((?:s3|ec2|ssm|iam):[A-Za-z*]+)`", section))
    granted = set().union(*(actions(policy) for policy in HEAD))
    assert granted <= listed, f"docs/aws.md's head policy lacks {sorted(granted - listed)}"
