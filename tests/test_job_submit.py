"""`ray job submit` of factory/train_all.py against a real `ray start --head` cluster, as users run it;
a job stopped mid-run and submitted again resumes from its checkpoint instead of starting over."""

import subprocess
import time

import pytest
import requests
import yaml

from conftest import REPO_ROOT, ray_cli
from factory import registry
from factory_runs import write_config

pytestmark = pytest.mark.slow


def submit(address, env, config, *extra):
    return ray_cli("job", "submit", "--address", address, "--working-dir", str(REPO_ROOT), *extra,
                   "--", "python", "factory/train_all.py", "--config", str(config))


def test_job_submit_trains_and_a_stopped_job_resubmitted_resumes_and_deploys(ray_head, serve_http_port, dirty_images, tmp_path):
    address, env = ray_head
    folder, _ = dirty_images
    checkpoints = tmp_path / "checkpoints"
    config = write_config(tmp_path / "config.yaml", source=str(folder), registry=str(tmp_path / "registry"),
                          storage_path=str(checkpoints), steps=150, num_workers=1, styles=("the_scream",))  # long enough to be stopped mid-run

    first = subprocess.run(submit(address, env, config, "--no-wait", "--submission-id", "factory-1"),
                           env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    deadline = time.time() + 150
    while len(list(checkpoints.glob("*/checkpoint_*/pack.pt"))) < 2:
        status = subprocess.run(ray_cli("job", "status", "--address", address, "factory-1"), env=env, capture_output=True, text=True)
        if time.time() > deadline or "FAILED" in status.stdout + status.stderr:
            logs = subprocess.run(ray_cli("job", "logs", "--address", address, "factory-1"), env=env, capture_output=True, text=True)
            pytest.fail(f"the submitted job wrote no checkpoints; its log ends:\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}")
        time.sleep(1)
    stop = subprocess.run(ray_cli("job", "stop", "--address", address, "factory-1"), env=env, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert registry.list_styles(str(tmp_path / "registry")) == []  # stopped before it could publish

    serving = tmp_path / "serving.yaml"
    serving.write_text(yaml.safe_dump({"http": {"host": "127.0.0.1", "port": serve_http_port}, "defaults": {"num_cpus": 0.25}}))
    second = subprocess.run(submit(address, env, config, "--submission-id", "factory-2") + ["--deploy", "--serve-config", str(serving)],
                            env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming from checkpoint at step" in second.stdout
    assert "the_scream" in second.stdout and "published" in second.stdout
    _, metadata = registry.load_model(str(tmp_path / "registry"), "the_scream")
    assert metadata["steps"] == 150 and metadata["resumed_at_steps"][0] >= 10

    # --deploy: the factory run ends with the style live on Ray Serve.
    assert "deployed" in second.stdout
    base = f"http://127.0.0.1:{serve_http_port}"
    assert [entry["name"] for entry in requests.get(f"{base}/styles", timeout=30).json()] == ["the_scream"]
    photo = (REPO_ROOT / "data" / "samples" / "held_out" / "rocket.jpg").read_bytes()
    response = requests.post(f"{base}/styles/the_scream?max_side=64", data=photo, timeout=60)
    assert response.status_code == 200 and response.headers["x-model-version"] == metadata["version"]


def test_a_job_with_relative_output_paths_is_refused_before_it_loses_them(ray_head, tmp_path):
    address, env = ray_head
    job = subprocess.run(submit(address, env, "configs/tiny.yaml"), env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode != 0
    assert "registry is the relative path 'data/registry'" in job.stdout + job.stderr
