"""A pool replica's model cache (serve/model_cache.py): what Serve's own multiplexed cache got wrong for
weeks of retraining. No Ray: real threads and an event loop, a clock the test moves."""

import asyncio
import threading
import time

import pytest

from serve.model_cache import ModelCache, ModelUnavailable


class Store:
    """Models by id; ids in `broken` fail to load; each load takes `seconds` and is counted."""

    def __init__(self, broken=(), seconds=0.0):
        self.broken, self.seconds, self.loads = set(broken), seconds, []
        self.lock = threading.Lock()
        self.running = self.most_running = 0

    def load(self, model_id):
        with self.lock:
            self.loads.append(model_id)
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        if model_id in self.broken:
            raise ValueError(f"{model_id}: model.pt does not match its recorded sha256")
        if model_id.startswith("deleted"):
            raise FileNotFoundError(f"no file for {model_id}")
        return f"model {model_id}"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_load_that_always_fails_evicts_nothing_and_is_not_retried_within_the_ttl():
    store, clock = Store(broken={"corrupt:v1"}), Clock()
    cache = ModelCache(store.load, capacity=2, failure_ttl_s=30, clock=clock)

    async def scenario():
        await cache.get("a:v1")
        await cache.get("b:v1")
        for _ in range(5):  # a client asking for it again and again
            with pytest.raises(ModelUnavailable, match="sha256") as error:
                await cache.get("corrupt:v1")
            assert not error.value.missing
        assert list(cache.models) == ["a:v1", "b:v1"]  # Serve's cache lost one healthy model per failed load
        assert store.loads.count("corrupt:v1") == 1 and cache.counts.refused == 4
        clock.now = 31  # after the TTL it is tried again
        with pytest.raises(ModelUnavailable):
            await cache.get("corrupt:v1")
        assert store.loads.count("corrupt:v1") == 2 and list(cache.models) == ["a:v1", "b:v1"]

    run(scenario())


def test_a_deleted_version_is_reported_missing():
    cache = ModelCache(Store().load, capacity=2)
    with pytest.raises(ModelUnavailable) as error:
        run(cache.get("deleted:v1"))
    assert error.value.missing


def test_the_least_recently_used_model_goes_only_once_the_new_one_is_in():
    store = Store()
    cache = ModelCache(store.load, capacity=2)

    async def scenario():
        await cache.get("a:v1")
        await cache.get("b:v1")
        await cache.get("a:v1")  # a hit: now b is the least recently used
        await cache.get("c:v1")
        return list(cache.models)

    assert run(scenario()) == ["a:v1", "c:v1"]
    assert cache.counts.hits == 1 and cache.counts.loads == 3 and cache.counts.evictions == 1


def test_cold_loads_of_different_models_run_side_by_side_within_their_bound_and_one_models_waiters_share_its_load():
    store = Store(seconds=0.3)
    cache = ModelCache(store.load, capacity=8, max_concurrent_loads=3)

    async def scenario():
        started = time.perf_counter()
        models = await asyncio.gather(*(cache.get(f"style{index}:v1") for index in range(4)), cache.get("style0:v1"))
        return models, time.perf_counter() - started

    models, seconds = run(scenario())
    assert models[0] == models[4] == "model style0:v1"
    assert sorted(store.loads) == [f"style{index}:v1" for index in range(4)]  # style0 loaded once for two requests
    # Serve's cache loads one at a time behind a lock (4 x 0.3 s); unbounded, a burst of cold styles
    # would hold that many half-built models in memory at once.
    assert store.most_running == 3
    print(f"four cold loads of 0.3 s each took {seconds:.2f} s")


def test_loads_run_on_the_caches_own_threads_not_the_pool_that_decodes_and_runs_models():
    threads = []
    cache = ModelCache(lambda model_id: threads.append(threading.current_thread().name) or model_id, capacity=2)

    async def scenario():
        loop = asyncio.get_running_loop()
        blocked = [loop.run_in_executor(None, time.sleep, 0.5) for _ in range(64)]  # the default pool, saturated
        started = time.perf_counter()
        await cache.get("a:v1")
        waited = time.perf_counter() - started
        await asyncio.gather(*blocked)
        return waited

    assert run(scenario()) < 0.5 and threads[0].startswith("model-load")


def test_a_loaded_model_found_unusable_is_dropped_and_refused_for_the_ttl_while_the_others_stay():
    store, clock = Store(), Clock()
    cache = ModelCache(store.load, capacity=3, failure_ttl_s=30, clock=clock)

    async def scenario():
        await cache.get("good:v1")
        await cache.get("broken:v1")
        cache.fail("broken:v1", "model broken produces non-finite output")
        assert list(cache.models) == ["good:v1"]
        clock.now = 10
        with pytest.raises(ModelUnavailable, match="non-finite") as error:
            await cache.get("broken:v1")
        assert error.value.kind == "broken" and error.value.retry_after_s == 20 and store.loads.count("broken:v1") == 1
        clock.now = 31
        assert await cache.get("broken:v1") == "model broken:v1"  # tried again after the TTL

    run(scenario())
    assert cache.counts.failed_models == 1


def test_a_transient_failure_says_how_long_it_is_refused():
    clock = Clock()
    cache = ModelCache(Store(broken={"a:v1"}).load, capacity=2, failure_ttl_s=30, clock=clock, classify=lambda error: "transient")

    async def scenario():
        for now, left in ((0, 30), (12, 18)):
            clock.now = now
            with pytest.raises(ModelUnavailable) as error:
                await cache.get("a:v1")
            assert error.value.kind == "transient" and error.value.retry_after_s == left

    run(scenario())


def test_a_smaller_capacity_drops_the_least_recently_used_models_at_once():
    cache = ModelCache(Store().load, capacity=3)

    async def scenario():
        for name in ("a", "b", "c", "a"):
            await cache.get(f"{name}:v1")

    run(scenario())
    cache.resize(1, failure_ttl_s=5)
    assert list(cache.models) == ["a:v1"] and cache.failure_ttl_s == 5


def test_events_reach_the_metrics_hook():
    heard = []
    cache = ModelCache(Store(broken={"x:v1"}).load, capacity=1, on_event=lambda event, seconds: heard.append(event))

    async def scenario():
        await cache.get("a:v1")
        await cache.get("a:v1")
        await cache.get("b:v1")
        for _ in range(2):
            with pytest.raises(ModelUnavailable):
                await cache.get("x:v1")

    run(scenario())
    assert heard == ["loads", "hits", "loads", "evictions", "failed_loads", "refused"]


def test_failures_are_remembered_only_for_their_ttl_not_for_the_life_of_the_replica():
    """Weeks of deleted versions each fail once: the failure cache holds those of the last TTL only."""
    store, clock = Store(), Clock()
    cache = ModelCache(store.load, capacity=2, failure_ttl_s=30, clock=clock)

    async def scenario():
        for day in range(100):
            clock.now = day * 86400.0
            with pytest.raises(ModelUnavailable):
                await cache.get(f"deleted:v{day}")
        assert list(cache.failures) == ["deleted:v99"]

    run(scenario())

