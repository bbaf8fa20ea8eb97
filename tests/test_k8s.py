"""The KubeRay manifests under k8s/: valid against KubeRay's own CRD schemas (../shared/kuberay-crds/),
on the pinned Ray, with the serve config serve.deploy writes, and with nothing exposed or embedded
that should not be."""

import functools
import tomllib

import jsonschema
import pytest
import ray
import yaml

from conftest import REPO_ROOT
from factory import layout
from factory.settings import load_config
from serve import deploy
from serve.settings import load_serving_config

CRDS = REPO_ROOT.parent / "shared" / "kuberay-crds"
MANIFESTS = sorted((REPO_ROOT / "k8s").glob("*.yaml"))
IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"


def ray_documents() -> list[tuple[str, dict]]:
    return [(path.name, document) for path in MANIFESTS for document in yaml.safe_load_all(path.read_text())
            if document and document.get("apiVersion") == "ray.io/v1"]


def by_kind(kind: str) -> dict:
    return next(document for _, document in ray_documents() if document["kind"] == kind)


@functools.cache
def crd_schema(kind: str) -> dict:
    if not CRDS.is_dir():  # a clone of the project alone: CI has the shared folder and runs these
        pytest.skip(f"KubeRay's CRD schemas are not at {CRDS} (the workplace's shared folder next to the checkout)")
    crd = yaml.safe_load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text())
    return next(version for version in crd["spec"]["versions"] if version["name"] == "v1")["schema"]["openAPIV3Schema"]


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not define. The API server drops them without a word (kubectl apply
    --validate=strict refuses them): a misspelt field would silently do nothing."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict) and "properties" in schema:
        found = [f"{path}.{key}" for key in value if key not in schema["properties"]]
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
        return found
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [problem for key, item in value.items() for problem in unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")]
    if isinstance(value, list) and "items" in schema:
        return [problem for index, item in enumerate(value) for problem in unknown_fields(item, schema["items"], f"{path}[{index}]")]
    return []


def pod_templates(document: dict) -> list[dict]:
    cluster = document["spec"].get("rayClusterSpec") or document["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster.get("workerGroupSpecs", [])]


def test_there_is_a_training_job_and_a_service():
    assert sorted(document["kind"] for _, document in ray_documents()) == ["RayJob", "RayService"]


@pytest.mark.parametrize("name, document", ray_documents(), ids=[name for name, _ in ray_documents()])
def test_every_kuberay_document_is_valid_against_kuberays_schema_with_no_unknown_field(name, document):
    schema = crd_schema(document["kind"])
    jsonschema.validate(document, schema)
    assert unknown_fields(document, schema) == []


def test_the_unknown_field_check_finds_a_misspelt_field():
    document = yaml.safe_load(yaml.safe_dump(by_kind("RayJob")))
    document["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    document["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert len(unknown_fields(document, crd_schema("RayJob"))) == 2


@pytest.mark.parametrize("kind", ["RayJob", "RayService"])
def test_every_pod_runs_the_pinned_ray_image_as_the_service_account_with_token_auth_inside_the_cluster(kind):
    document = by_kind(kind)
    pinned = next(dep for dep in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"] if dep.startswith("ray["))
    assert pinned.endswith(f"=={ray.__version__}")
    cluster = document["spec"].get("rayClusterSpec") or document["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token" and cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP" and not cluster["headGroupSpec"].get("enableIngress")
    for template in pod_templates(document):
        assert template["spec"]["serviceAccountName"] == "style-factory"  # S3 through IRSA
        for container in template["spec"]["containers"]:
            assert container["image"] == IMAGE
            assert not {variable["name"] for variable in container.get("env", [])} & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    gpu_groups = [group for group in cluster["workerGroupSpecs"]
                  if group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu_groups and all(group["maxReplicas"] > group["minReplicas"] for group in gpu_groups)


def test_the_service_serves_what_serve_deploy_writes_for_the_kubernetes_serving_config():
    written = deploy.build_serve_config(load_serving_config(REPO_ROOT / "configs" / "serve_k8s.yaml"))
    assert yaml.safe_load(by_kind("RayService")["spec"]["serveConfigV2"]) == written, (
        "k8s/rayservice.yaml is out of date: paste the output of "
        "`python -m serve.deploy --config configs/serve_k8s.yaml --dry-run` into its serveConfigV2")
    assert all(application["args"]["registry"].startswith("s3://") for application in written["applications"])
    pool = next(deployment for deployment in written["applications"][0]["deployments"] if deployment["name"] == "StylePool")
    assert pool["ray_actor_options"]["num_gpus"] > 0


def test_the_job_trains_from_s3_on_the_gpu_workers_and_installs_exactly_the_projects_dependencies():
    job = by_kind("RayJob")
    config_uri = job["spec"]["entrypoint"].split("--config ", 1)[1].split()[0]
    # The user's copy of configs/coco_s3.yaml, uploaded where the README's K8s steps put it.
    assert config_uri == layout.under(layout.EXAMPLE_BUCKET_ROOT, layout.CONFIGS + "/coco_s3.yaml")
    config = load_config(REPO_ROOT / "configs" / "coco_s3.yaml")
    assert config.registry.startswith("s3://") and config.data.source.startswith("s3://")
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert any(set(config.training.worker_resources) <= set(group.get("resources", {})) for group in workers)
    dependencies = [dep for dep in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"] if not dep.startswith("ray[")]
    for runtime_env in (yaml.safe_load(job["spec"]["runtimeEnvYAML"]), load_serving_config(REPO_ROOT / "configs" / "serve_k8s.yaml").runtime_env):
        assert runtime_env["pip"] == dependencies
        assert runtime_env["working_dir"].endswith(".zip")


def test_the_heads_run_no_training_and_the_pods_service_account_carries_the_s3_role():
    """What the manifests must keep for the code to work: the training job's head with no CPUs for
    workers (num-cpus 0, so packs land on the GPU workers), the serving head with room for the front
    door (pool replicas ask for a GPU the head lacks), and IRSA's role annotation on the one service
    account every pod runs as (no keys anywhere: S3 comes from that role)."""
    accounts = [document for path in MANIFESTS for document in yaml.safe_load_all(path.read_text())
                if document and document.get("kind") == "ServiceAccount"]
    assert [account["metadata"]["name"] for account in accounts] == ["style-factory"]
    assert accounts[0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    serving = load_serving_config(REPO_ROOT / "configs" / "serve_k8s.yaml")
    for kind, head_cpus in (("RayJob", 0), ("RayService", 1)):
        document = by_kind(kind)
        cluster = document["spec"].get("rayClusterSpec") or document["spec"]["rayClusterConfig"]
        assert float(cluster["headGroupSpec"]["rayStartParams"]["num-cpus"]) == head_cpus, kind
        if kind == "RayService":
            assert serving.pool.front_num_cpus <= head_cpus and serving.defaults.num_gpus > 0  # pool replicas: on GPU workers
        for template in pod_templates(document):
            assert template["spec"]["serviceAccountName"] == accounts[0]["metadata"]["name"]
