"""serve/routing.py without a cluster: the forgetful router drops exactly the request that left, whatever
its arguments, and every deployment that Serve's proxies or the front door call is built with it."""

import asyncio
from collections import defaultdict, deque

import numpy as np
import pytest
import torch
from ray.serve._private.common import RequestMetadata
from ray.serve._private.request_router.common import PendingRequest

from serve.routing import ForgetfulRouter


def bare_router() -> ForgetfulRouter:
    """The router's indices alone, as Serve's RequestRouter.__init__ sets them up (the rest needs a cluster)."""
    router = ForgetfulRouter.__new__(ForgetfulRouter)
    router._pending_requests_by_id = {}
    router._pending_requests_by_model_id = defaultdict(deque)
    router._multiplexed_model_id_fallback_match = set()
    return router


def pending(argument, model_id: str, number: int) -> PendingRequest:
    metadata = RequestMetadata(request_id=f"r{number}", internal_request_id=f"i{number}", multiplexed_model_id=model_id)
    return PendingRequest(args=[argument], kwargs={}, metadata=metadata)


@pytest.mark.parametrize("make", [lambda: np.zeros((64, 64, 3), np.uint8), lambda: torch.zeros(3, 64, 64), lambda: b"\xff" * 64],
                         ids=["numpy", "torch", "bytes"])
def test_a_routed_request_leaves_the_model_id_index_whatever_its_arguments(make):
    async def scenario():
        router = bare_router()
        first, second = pending(make(), "style:v1", 1), pending(make(), "style:v1", 2)
        for request in (first, second):
            router._pending_requests_by_id[request.metadata.internal_request_id] = request
            router._pending_requests_by_model_id["style:v1"].append(request)
        router._remove_pending_request_from_indices(second)  # by identity: equal arguments, the other request stays
        assert list(router._pending_requests_by_model_id["style:v1"]) == [first]
        router._remove_pending_request_from_indices(first)
        assert "style:v1" not in router._pending_requests_by_model_id and not router._pending_requests_by_id

    asyncio.run(scenario())


def test_every_deployment_the_proxies_or_the_front_call_routes_with_the_forgetful_router():
    from serve.front_app import Front
    from serve.order_desk import OrderDesk
    from serve.style_app import StyleEndpoint
    from serve.style_pool import StylePool

    for deployment in (Front, StylePool, StyleEndpoint, OrderDesk):
        assert deployment._deployment_config.request_router_config.request_router_class == "serve.routing.ForgetfulRouter", deployment.name
