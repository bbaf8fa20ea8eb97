"""What an operator does to a running pool, and what goes wrong under it, on real Serve over real HTTP:
a config change deployed while styles are warm, a replica replaced with a request in flight, the
registry's storage gone for longer than any health check waits (a folder moved away; the S3 server's
cable cut), a model that gives non-finite pictures, a rollback while serving. Each checks the same
replica processes answer throughout where nothing should have replaced them."""

import copy
import os
import socket
import subprocess
import sys
import time

import pytest
import ray
import requests
import yaml
from ray import serve

from factory import registry
from serve import deploy as serve_deploy
from serve.deploy import _client
from serve.settings import EndpointSettings, load_serving_config
from serving import deploy, publish_random_style, served  # noqa: F401 (a fixture)
from tcp_relay import TcpRelay
from test_serve import good_request_works, photo_bytes, server_timing_ms

pytestmark = pytest.mark.slow
# The outages: 20 s with stale_after_s at its least (2 s) by default, so that the old behaviour would have
# lost the front door within about 8 s; TEST_OUTAGE_S=75 TEST_STALE_AFTER_S=20 runs the issue's own numbers.
OUTAGE_S = float(os.environ.get("TEST_OUTAGE_S", 20))
STALE_AFTER_S = float(os.environ.get("TEST_STALE_AFTER_S", 2))
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this module


def replica_actors(address: str, app: str) -> dict[str, set[str]]:
    """{deployment: its replicas' actor ids}: a replaced replica is a new actor."""
    deployments = _client(address).get_serve_details()["applications"][app]["deployments"]
    return {name: {replica["actor_id"] for replica in deployment["replicas"]} for name, deployment in deployments.items()}


def stylise(base: str, style: str, **options) -> requests.Response:
    return requests.post(f"{base}/styles/{style}", data=photo_bytes(), params=options, timeout=60)


def test_a_config_change_reaches_the_running_replicas_without_replacing_them(served):
    """Raising max_replicas (and any limit) is applied in place: the same processes answer, caches warm."""
    base, address = served["base"], served["address"]
    assert stylise(base, "alpha").status_code == 200  # warm
    before = replica_actors(address, "front")

    changed = copy.deepcopy(served["config"])
    changed["defaults"]["max_replicas"] += 1
    changed["defaults"]["max_ongoing_requests"] += 1
    changed["pool"]["failure_ttl_s"] = 31
    try:
        done = deploy(changed, served["root"] / "changed.yaml", address, served["env"])
        assert done.returncode == 0, done.stderr[-3000:]
        applied = _client(address).get_serve_details()["applications"]["front"]["deployments"]["StylePool"]
        assert applied["deployment_config"]["autoscaling_config"]["max_replicas"] == changed["defaults"]["max_replicas"]
        assert applied["deployment_config"]["user_config"]["pool"]["failure_ttl_s"] == 31
        assert replica_actors(address, "front") == before
        warm = stylise(base, "alpha")
        assert warm.status_code == 200 and "load" not in server_timing_ms(warm)  # the model never left the cache
    finally:
        done = deploy(served["config"], served["root"] / "serving.yaml", address, served["env"])
        assert done.returncode == 0, done.stderr[-3000:]
    assert replica_actors(address, "front") == before


class Slow:
    """A deployment whose one method takes longer than Serve's default graceful shutdown (20 s)."""

    async def wait(self, seconds: float) -> str:
        import asyncio

        await asyncio.sleep(seconds)
        return "answered"


def test_a_replica_replaced_with_a_request_in_flight_finishes_it_first(local_serve):
    """serve.deploy's deployment options give a replica being replaced the request timeout to finish."""
    options = serve_deploy.deployment_options(EndpointSettings(min_replicas=1, max_replicas=1), request_timeout_s=40)
    drain = {key: options[key] for key in ("graceful_shutdown_timeout_s", "health_check_period_s", "health_check_timeout_s")}
    handle = serve.run(serve.deployment(Slow).options(ray_actor_options={"num_cpus": 0}, **drain).bind(), name="drain", route_prefix=None)
    try:
        answer = handle.wait.remote(25)
        time.sleep(2)  # the request is running on the first replica
        # A new resource request replaces the replica (a heavyweight change), as an upgrade or a scale-down would.
        serve.run(serve.deployment(Slow).options(ray_actor_options={"num_cpus": 0.01}, **drain).bind(), name="drain",
                  route_prefix=None, blocking=False)
        assert answer.result(timeout_s=120) == "answered"  # with Serve's default of 20 s it was cut at 20 s
    finally:
        serve.delete("drain")


def test_the_registry_folder_moved_away_for_longer_than_any_health_check_waits_takes_no_style_down(served):
    """With stale_after_s at its least and health checks every 2 s, the registry is unreadable for 20 s (OUTAGE_S):
    warm styles answer 200 throughout, saying how old the listing is; a cold one is 503 with Retry-After;
    no replica is replaced; a style published once storage is back is live within refresh_s."""
    base, address, root = served["base"], served["address"], served["root"] / "registry"
    publish_random_style(root, "cold", seed=21)
    deadline = time.time() + 30
    while stylise(base, "alpha").status_code != 200 or "cold" not in requests.get(f"{base}/styles", timeout=30).text:
        assert time.time() < deadline
        time.sleep(0.5)
    strict = copy.deepcopy(served["config"])
    strict["pool"]["stale_after_s"] = STALE_AFTER_S  # by default the least allowed: twice refresh_s
    done = deploy(strict, served["root"] / "strict.yaml", address, served["env"])
    assert done.returncode == 0, done.stderr[-3000:]
    before = replica_actors(address, "front")
    moved = root.with_name("registry-away")
    root.rename(moved)
    try:
        answers, ages = [], []
        started = time.time()
        while time.time() - started < OUTAGE_S:
            response = stylise(base, "alpha")
            answers.append(response.status_code)
            ages.append(response.headers.get("x-registry-age-seconds"))
            time.sleep(1)
        cold = stylise(base, "cold")
    finally:
        moved.rename(root)
    print(f"registry folder away {OUTAGE_S:g} s: {answers.count(200)} of {len(answers)} warm requests answered 200, last age {ages[-1]} s")
    assert set(answers) == {200}, answers
    assert int(ages[-1]) >= OUTAGE_S - 5  # the listing's age grew, and the answers said so
    assert cold.status_code == 503 and int(cold.headers["retry-after"]) >= 1, cold.text
    assert replica_actors(address, "front") == before
    publish_random_style(root, "after-outage", seed=22)
    deadline = time.time() + 2 * served["config"]["pool"]["refresh_s"] + 5
    while stylise(base, "after-outage").status_code != 200:
        assert time.time() < deadline, "a style published after the outage did not go live"
        time.sleep(0.2)
    assert int(stylise(base, "alpha").headers["x-registry-age-seconds"]) <= 2
    done = deploy(served["config"], served["root"] / "serving.yaml", address, served["env"])
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def s3_front(served, s3_server, tmp_path):
    """A second front door and pool (at /s3) on a registry in moto's S3, reached through a relay whose
    cable the test cuts. The served applications stay deployed beside it."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="outage")
    uri = "s3://outage/registry"
    for seed, name in enumerate(["warm", "cold"]):
        publish_random_style(uri, name, seed=30 + seed)
    relay = TcpRelay(int(s3_server["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    config = load_serving_config(None, registry=uri, http=served["config"]["http"],
                                              pool={"refresh_s": 1, "stale_after_s": STALE_AFTER_S},
                                              defaults={"num_cpus": 0.5, "max_replicas": 1, "health_check_period_s": 2})
    application = serve_deploy.build_serve_config(config)["applications"][0]
    application.update(name="front-s3", route_prefix="/s3", runtime_env={"env_vars": {**s3_server, "AWS_ENDPOINT_URL": relay.url}})
    running = yaml.safe_load((served["root"] / "serving.serve.yaml").read_text())
    serve_deploy.apply({**running, "applications": running["applications"] + [application]}, served["address"])
    serve_deploy.wait_until_running(served["address"], ["front", "front-s3"])
    yield {"base": served["base"] + "/s3", "uri": uri, "relay": relay}
    relay.restore() if relay.listener is None else None
    serve_deploy.apply(running, served["address"])
    serve_deploy.wait_until_running(served["address"], ["front"])


def test_the_s3_server_unreachable_for_longer_than_any_health_check_waits_takes_no_style_down(served, s3_front):
    base, relay = s3_front["base"], s3_front["relay"]
    assert stylise(base, "warm").status_code == 200
    before = replica_actors(served["address"], "front-s3")
    relay.cut()
    try:
        answers, started = [], time.time()
        while time.time() - started < OUTAGE_S:
            answers.append(stylise(base, "warm").status_code)
            time.sleep(1)
        cold = stylise(base, "cold")
    finally:
        relay.restore()
    print(f"S3 unreachable {OUTAGE_S:g} s: {answers.count(200)} of {len(answers)} warm requests answered 200")
    assert set(answers) == {200}, answers
    assert cold.status_code == 503 and "retry-after" in cold.headers, cold.text
    assert replica_actors(served["address"], "front-s3") == before
    publish_random_style(s3_front["uri"], "after-outage", seed=33)
    deadline = time.time() + 10
    while stylise(base, "after-outage").status_code != 200:
        assert time.time() < deadline, "a style published after the outage did not go live"
        time.sleep(0.2)


def test_a_model_with_non_finite_output_is_refused_and_no_replica_is_replaced(served):
    """Its requests get a 500 naming its version, then the refusal for failure_ttl_s; the health check
    runs a model that has produced a picture, so the pool replica and its other models stay."""
    import torch

    from factory import images
    from factory.transform_net import TransformNet

    base, root = served["base"], served["root"] / "registry"
    before = replica_actors(served["address"], "front")
    net = TransformNet().eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.fill_(float("nan"))
    picture = images.encode(images.to_image(torch.zeros(3, 16, 16)))
    version = registry.publish(str(root), "broken", net.state_dict(), {"steps": 1}, picture, picture)  # its only version
    try:
        deadline = time.time() + 30
        while (response := stylise(base, "broken")).status_code == 404:
            assert time.time() < deadline
            time.sleep(0.5)
        answers = [response] + [stylise(base, "broken") for _ in range(5)]
        assert all(answer.status_code == 500 for answer in answers)  # never a black 200
        assert version in answers[-1].json()["error"] and "non-finite" in answers[-1].json()["error"]
        time.sleep(4 * served["config"]["defaults"]["health_check_period_s"])  # three failed checks would replace it
        good_request_works(base)
        assert replica_actors(served["address"], "front") == before
    finally:
        registry.withdraw(str(root), "broken")


def test_a_rollback_while_serving_is_answered_by_the_old_version_within_refresh_s(served):
    from conftest import REPO_ROOT

    base, root = served["base"], served["root"] / "registry"
    old = publish_random_style(root, "rolled", seed=40)
    new = publish_random_style(root, "rolled", seed=41)
    deadline = time.time() + 30
    while stylise(base, "rolled").headers.get("x-model-version") != new:
        assert time.time() < deadline
        time.sleep(0.5)
    done = subprocess.run([sys.executable, "-m", "factory.registry", "--registry", str(root), "rollback", "rolled"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rolled_at = time.time()
    while (answer := stylise(base, "rolled")).headers.get("x-model-version") != old:
        assert time.time() - rolled_at < 2 * served["config"]["pool"]["refresh_s"] + 5, "the old version was not served"
        time.sleep(0.2)
    assert answer.status_code == 200 and requests.get(f"{base}/styles/rolled", timeout=30).json()["version"] == old


def test_every_deployed_deployment_routes_with_the_forgetful_router(served):
    applications = _client(served["address"]).get_serve_details()["applications"]
    routers = {name: deployment["deployment_config"]["request_router_config"]["request_router_class"]
               for application in applications.values() for name, deployment in application["deployments"].items()}
    assert set(routers) == {"Front", "StylePool", "OrderDesk", "StyleEndpoint"}
    assert set(routers.values()) == {"serve.routing.ForgetfulRouter"}


def test_a_client_that_leaves_mid_request_is_counted_as_499_not_as_a_server_error(served):
    from serve.metrics import EXPORTED
    from test_serving_for_weeks import metric, scrape

    big = photo_bytes((1600, 1600))
    host, port = "127.0.0.1", served["config"]["http"]["port"]
    for _ in range(2):
        with socket.create_connection((host, port)) as connection:
            connection.sendall(b"POST /styles/alpha?max_side=1600 HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                               + f"Content-Length: {len(big)}\r\n\r\n".encode() + big)
            time.sleep(0.5)  # stylising has begun; the client goes
    deadline = time.time() + 60
    while metric(scrape(served), EXPORTED["requests"], status="499") < 1:
        assert time.time() < deadline, "no 499 recorded for a client that left"
        time.sleep(2)
