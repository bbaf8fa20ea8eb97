"""What serving for weeks needs and a short test would never meet: routing that forgets finished
requests whatever the number of model ids, and metrics an operator can scrape. Real Serve, real HTTP,
Ray's real metrics endpoint. (A model that stops producing pictures: tests/test_operations.py.)"""

import re
import sys
import time

import pytest
import ray
import requests
from ray import serve
from ray.serve.config import RequestRouterConfig

from serve.metrics import EXPORTED
from serve.routing import ForgetfulRouter
from serving import served  # noqa: F401 (a fixture)
from test_serve import good_request_works

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this module


class Sink:
    async def take(self, body: bytes) -> int:
        return len(body)


class Caller:
    """Calls Sink as the front door calls the pool: one multiplexed model id per style version."""

    def __init__(self, sink):
        self.sink = sink

    async def send(self, ids: int, size: int) -> tuple[int, int]:
        for index in range(ids):
            await self.sink.options(multiplexed_model_id=f"style:{index}").take.remote(b"x" * size)
        router = self.sink._router._asyncio_router._request_router  # Ray 2.60's, observed, not changed
        kept = [request for waiting in router._pending_requests_by_model_id.values() for request in waiting]
        return len(router._pending_requests_by_model_id), sum(len(request.args[0]) for request in kept)


@pytest.mark.parametrize("router, kept_ids", [(None, 40), (ForgetfulRouter, 0)], ids=["serve's default", "forgetful"])
def test_the_caller_keeps_no_finished_request_per_model_id(local_serve, router, kept_ids):
    """Serve's default router keeps the last request (and its argument, here a 1 MB photo) of every
    model id until that id is routed again: every retrain leaves one behind in the front door."""
    options = {"request_router_config": RequestRouterConfig(request_router_class=router)} if router else {}
    sink = serve.deployment(Sink).options(ray_actor_options={"num_cpus": 0}, **options).bind()
    caller = serve.run(serve.deployment(Caller).options(ray_actor_options={"num_cpus": 0}).bind(sink), name="router", route_prefix=None)
    try:
        ids, retained = caller.send.remote(40, 1_000_000).result(timeout_s=120)
    finally:
        serve.delete("router")
    assert ids == kept_ids and retained == kept_ids * 1_000_000


def scrape(served) -> str:
    return requests.get(f"http://127.0.0.1:{served['env']['TEST_METRICS_EXPORT_PORT']}/metrics", timeout=30).text


def metric(text: str, name: str, **tags) -> float:
    """The sum of a metric's samples whose tags include these."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in tags.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_request_served_moves_the_metrics_prometheus_scrapes(served):
    before = metric(scrape(served), EXPORTED["requests"], style="alpha", status="200")
    for _ in range(3):
        good_request_works(served["base"])
    deadline = time.time() + 60  # Ray pushes metrics to the node's endpoint every 10 s
    while time.time() < deadline:
        text = scrape(served)
        if metric(text, EXPORTED["requests"], style="alpha", status="200") >= before + 3:
            break
        time.sleep(2)
    else:
        pytest.fail(f"{EXPORTED['requests']} did not move: {[line for line in text.splitlines() if 'style_factory' in line][:10]}")
    # Latency by status only: a style tag there would be a histogram's dozen series per style.
    assert metric(text, EXPORTED["request_seconds"] + "_count", status="200") >= 3
    assert not [line for line in text.splitlines() if line.startswith(EXPORTED["request_seconds"]) and "style=" in line]
    assert metric(text, EXPORTED["cache_events"], event="hits") + metric(text, EXPORTED["cache_events"], event="loads") >= 3
    assert metric(text, EXPORTED["model_seconds"] + "_count") >= 3
    # The front door's health check sets the registry's age and size: seconds, and the styles it serves.
    assert re.search(EXPORTED["refresh_age"] + r"\{", text) and metric(text, EXPORTED["styles"]) >= 2
