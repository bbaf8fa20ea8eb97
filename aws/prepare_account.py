"""Create, once per AWS account and region, what cluster.yaml names: a security group and two roles.

    python aws/prepare_account.py --region us-west-2 --ssh-cidr 203.0.113.0/24 --bucket my-style-factory

- Security group `style-factory` (default VPC, or --vpc-id): SSH only from --ssh-cidr, Serve's port
  8000 from --serve-cidr (default: the same range), port 80 (the nginx front door of docs/operations.md) from
  --public-cidr (default: closed), and all traffic between the cluster's own nodes.
  cluster.yaml names it in every node type's SecurityGroupIds, so Ray's launcher creates no group of
  its own: the one it would create opens SSH to 0.0.0.0/0 whatever cluster.yaml asks for.
- Role and instance profile `style-factory-worker`: read and write the bucket (COCO, checkpoints,
  the registry).
- Role and instance profile `style-factory-head`: the bucket; the EC2 calls Ray's autoscaler makes;
  and iam:PassRole on the worker role only, without which the autoscaler's RunInstances for a worker
  that names its instance profile is refused.

What exists already is kept (a missing rule or policy is added). It prints the values for cluster.yaml.
Credentials and endpoint come from the usual AWS settings (AWS_PROFILE, AWS_ENDPOINT_URL, ...).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

import boto3
from botocore.exceptions import ClientError

NAME = "style-factory"
EC2_TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}
# What Ray's autoscaler on the head does with EC2: look, start (spot too), tag, stop and terminate.
# Ray's own default head role has all of EC2 (AmazonEC2FullAccess); this is that, narrowed.
AUTOSCALER_EC2 = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Resource": "*", "Action": ["ec2:Describe*", "ec2:RunInstances", "ec2:CreateTags",
                                                    "ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"]},
    {"Effect": "Allow", "Action": "ssm:GetParameters",  # cluster.yaml's ImageId: resolve:ssm:/aws/service/deeplearning/...
     "Resource": "arn:aws:ssm:*::parameter/aws/service/deeplearning/*"},
    {"Effect": "Allow", "Action": "iam:CreateServiceLinkedRole", "Resource": "*",  # the first spot request of an account
     "Condition": {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}}},
]}


def bucket_policy(bucket: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": f"arn:aws:s3:::{bucket}"},
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": f"arn:aws:s3:::{bucket}/*"},
    ]}


def pass_role_policy(worker_role_arn: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iam:PassRole", "Resource": worker_role_arn},
        {"Effect": "Allow", "Action": "iam:GetInstanceProfile", "Resource": "*"},
    ]}


def ensure_role(iam, name: str, inline: dict[str, dict]) -> str:
    """The role's ARN; created with an EC2 trust policy if missing, its policies put (idempotently)."""
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                              Description="style-factory (aws/prepare_account.py)")["Role"]["Arn"]
    for policy_name, document in inline.items():
        iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document))
    return arn


def ensure_instance_profile(iam, name: str, role: str) -> str:
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except iam.exceptions.NoSuchEntityException:
        profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    if role not in {existing["RoleName"] for existing in profile.get("Roles", [])}:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role)
    return profile["Arn"]


def default_vpc(ec2) -> str:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ValueError("this region has no default VPC: pass --vpc-id, and list its subnets as SubnetIds in cluster.yaml")
    return vpcs[0]["VpcId"]


def ensure_security_group(ec2, vpc_id: str, ssh_cidr: str, serve_cidr: str, public_cidr: str | None = None) -> str:
    found = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [NAME]}, {"Name": "vpc-id", "Values": [vpc_id]}])
    if found["SecurityGroups"]:
        group_id = found["SecurityGroups"][0]["GroupId"]
    else:
        group_id = ec2.create_security_group(GroupName=NAME, VpcId=vpc_id,
                                             Description="style-factory Ray cluster: SSH from one range, Serve, and node to node")["GroupId"]
    rules = [
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]},  # the nodes among themselves
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": ssh_cidr, "Description": "SSH for ray up"}]},
        {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 8000, "IpRanges": [{"CidrIp": serve_cidr, "Description": "Ray Serve"}]},
    ]
    if public_cidr:
        rules.append({"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
                      "IpRanges": [{"CidrIp": public_cidr, "Description": "nginx in front of Ray Serve"}]})
    for rule in rules:
        try:
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[rule])
        except ClientError as error:
            if error.response["Error"]["Code"] != "InvalidPermission.Duplicate":
                raise
    return group_id


def private_range(cidr: str, what: str) -> str:
    network = ipaddress.ip_network(cidr, strict=False)
    if network.prefixlen == 0:
        raise ValueError(f"{what} {cidr} is the whole internet: give your office or VPN range, e.g. 203.0.113.0/24")
    return str(network)


def prepare(region: str, ssh_cidr: str, bucket: str, serve_cidr: str | None = None, vpc_id: str | None = None,
            public_cidr: str | None = None) -> dict:
    ssh_cidr = private_range(ssh_cidr, "--ssh-cidr")
    iam, ec2 = boto3.client("iam", region_name=region), boto3.client("ec2", region_name=region)
    worker_role = ensure_role(iam, f"{NAME}-worker", {"bucket": bucket_policy(bucket)})
    ensure_role(iam, f"{NAME}-head", {"bucket": bucket_policy(bucket), "ec2-autoscaler": AUTOSCALER_EC2,
                                      "pass-worker-role": pass_role_policy(worker_role)})
    return {
        "security_group_id": ensure_security_group(ec2, vpc_id or default_vpc(ec2), ssh_cidr, serve_cidr or ssh_cidr, public_cidr),
        "head_instance_profile_arn": ensure_instance_profile(iam, f"{NAME}-head", f"{NAME}-head"),
        "worker_instance_profile_arn": ensure_instance_profile(iam, f"{NAME}-worker", f"{NAME}-worker"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--region", required=True, help="cluster.yaml's provider.region")
    parser.add_argument("--ssh-cidr", required=True, help="the range SSH may come from (your office or VPN)")
    parser.add_argument("--serve-cidr", help="the range Serve's port 8000 may be reached from (default: --ssh-cidr; "
                                             "0.0.0.0/0 only for a public service behind your own proxy)")
    parser.add_argument("--public-cidr", help="the range port 80 (nginx in front of Serve, see docs/operations.md) may be "
                                              "reached from: 0.0.0.0/0 for a public service (default: port 80 closed)")
    parser.add_argument("--bucket", required=True, help="the S3 bucket of data, checkpoints and registry")
    parser.add_argument("--vpc-id", help="a VPC other than the region's default")
    args = parser.parse_args(argv)
    try:
        made = prepare(args.region, args.ssh_cidr, args.bucket, args.serve_cidr, args.vpc_id, args.public_cidr)
    except (ValueError, ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("put these in cluster.yaml (every node type's SecurityGroupIds, and the IamInstanceProfile ARNs):")
    for key, value in made.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
