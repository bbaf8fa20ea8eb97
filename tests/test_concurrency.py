"""How many packs a run starts at once: all of them where Ray should queue them for the autoscaler."""

import ray

from factory.settings import load_config
from factory.train_all import concurrent_packs

STYLE = "styles=[{name: a, image: a.jpg}]"


def test_gpu_packs_all_start_so_the_autoscaler_sees_the_whole_demand():
    # Not connected to Ray: the decision must not depend on the GPUs present right now (none, on a
    # cluster whose GPU nodes have not started yet).
    assert not ray.is_initialized()
    config = load_config(None, [STYLE, "training.accelerator=gpu"])
    assert concurrent_packs(config, gpu=True, pack_count=7) == 7


def test_custom_worker_resources_also_queue_in_ray():
    config = load_config(None, [STYLE, "training.worker_resources={train_node: 0.001}"])
    assert concurrent_packs(config, gpu=False, pack_count=5) == 5


def test_max_concurrent_packs_bounds_them():
    config = load_config(None, [STYLE, "training.max_concurrent_packs=2"])
    assert concurrent_packs(config, gpu=True, pack_count=7) == 2
