"""How many packs a run starts at once: all of them where Ray should queue them for the autoscaler."""

import pytest

from factory.settings import load_config
from factory.cluster_fit import concurrent_packs, fit_cpu_workers_to_cluster

STYLE = "styles=[{name: a, image: a.jpg}]"


def test_gpu_packs_all_start_so_the_autoscaler_sees_the_whole_demand():
    # The decision must not depend on the GPUs present right now (none here, as on a cluster whose GPU
    # nodes have not started yet; whether or not this session's Ray is up).
    config = load_config(None, [STYLE, "training.accelerator=gpu"])
    assert concurrent_packs(config, gpu=True, pack_count=7) == 7


def test_custom_worker_resources_also_queue_in_ray():
    config = load_config(None, [STYLE, "training.worker_resources={train_node: 0.001}"])
    assert concurrent_packs(config, gpu=False, pack_count=5) == 5


def test_max_concurrent_packs_bounds_them():
    config = load_config(None, [STYLE, "training.max_concurrent_packs=2"])
    assert concurrent_packs(config, gpu=True, pack_count=7) == 2


@pytest.mark.slow  # needs a running Ray: the session's local one, with 4 CPUs
def test_cpu_workers_shrink_to_leave_a_cpu_for_reading_data_or_the_run_is_refused(ray_local):
    asks_too_much = load_config(None, [STYLE, "training.num_workers=2", "training.cpus_per_worker=2"])
    assert fit_cpu_workers_to_cluster(asks_too_much, gpu=False).training.cpus_per_worker == 1  # 2 x 1 + 1 for Ray Data = 3 <= 4
    fits = load_config(None, [STYLE, "training.num_workers=1", "training.cpus_per_worker=3"])
    assert fit_cpu_workers_to_cluster(fits, gpu=False) == fits
    assert fit_cpu_workers_to_cluster(asks_too_much, gpu=True) == asks_too_much  # GPU nodes bring their own CPUs
    with pytest.raises(ValueError, match="needs at least 5 .*ray start --num-cpus"):
        fit_cpu_workers_to_cluster(load_config(None, [STYLE, "training.num_workers=4"]), gpu=False)
