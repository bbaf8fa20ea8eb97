"""The generated Serve config, the serving settings and the model runner, without a cluster."""

import weakref

import pytest
import torch
import yaml

from serve import deploy
from serve.settings import load_serving_config
from serve.style_model import RunFailure, StyleModel
from serving import publish_random_style


def test_generated_config_is_the_pool_plus_one_application_per_dedicated_style_and_valid_for_serve(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    for seed, name in enumerate(["alpha", "rare", "hot"]):
        publish_random_style(tmp_path / "registry", name, seed)
    serving = tmp_path / "serving.yaml"
    serving.write_text(yaml.safe_dump({"registry": str(tmp_path / "registry"), "pool": {"model_cache_mb": 64},
                                       "styles": {"rare": {"dedicated": True, "min_replicas": 0, "num_gpus": 0.25},
                                                  "hot": {"dedicated": False}, "unpublished": {"dedicated": True}}}))
    assert deploy.main(["--config", str(serving), "--dry-run", "--write", str(tmp_path / "serve_config.yaml")]) == 0

    config = yaml.safe_load((tmp_path / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config)  # what `serve deploy` itself checks
    apps = {app["name"]: app for app in config["applications"]}
    assert list(apps) == ["front", "style-rare"]  # alpha and hot are pooled; "unpublished" has nothing to serve yet
    assert apps["front"]["route_prefix"] == "/" and apps["style-rare"]["route_prefix"] == "/styles/rare"
    assert "alpha" not in yaml.safe_dump(apps["front"])  # pooled styles are found at run time, not listed in the config
    front, pool, desk = apps["front"]["deployments"]
    assert (front["name"], pool["name"], desk["name"]) == ("Front", "StylePool", "OrderDesk")
    assert desk["num_replicas"] == 1 and desk["user_config"]["enabled"] is False  # orders are off unless the config says
    assert pool["user_config"]["pool"]["model_cache_mb"] == 64 and front["user_config"]["dedicated"] == ["rare", "unpublished"]
    assert front["max_ongoing_requests"] > pool["max_ongoing_requests"] * pool["autoscaling_config"]["max_replicas"]
    rare = apps["style-rare"]["deployments"][0]
    assert rare["autoscaling_config"]["min_replicas"] == 0  # scale to zero
    assert rare["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.25}


def test_publishing_a_pooled_style_leaves_the_serve_config_unchanged(tmp_path):
    config = load_serving_config(None, registry=str(tmp_path / "registry"))
    publish_random_style(tmp_path / "registry", "alpha", 0)
    before = deploy.build_serve_config(config)
    publish_random_style(tmp_path / "registry", "alpha", 1)
    publish_random_style(tmp_path / "registry", "beta", 2)
    assert deploy.build_serve_config(config) == before  # so Serve has nothing to redeploy


def test_the_front_door_process_does_not_load_torch():
    # Torch adds about 470 MB to a process; the front only parses HTTP and routes to the pool.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import sys, serve.front_app; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_health_check_fails_when_the_model_is_not_usable(tmp_path):
    version = publish_random_style(tmp_path, "alpha", 0)
    model = StyleModel(str(tmp_path), "alpha", version)  # what each StyleEndpoint replica's health check calls
    model.check_health()  # a healthy model passes
    with torch.no_grad():
        next(model.net.parameters()).fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        model.check_health()


def test_requests_of_the_same_size_share_a_batch_and_keep_their_order(tmp_path):
    version = publish_random_style(tmp_path, "alpha", 0)
    model = CountsBatches(str(tmp_path), "alpha", version)
    model.batch_sizes = []
    inputs = [torch.rand(3, 16, 16) * 255, torch.rand(3, 8, 12) * 255, torch.rand(3, 16, 16) * 255]
    outputs = model.forward_by_size(inputs)
    assert sorted(model.batch_sizes) == [1, 2]  # the two 16x16 images ran as one batch
    with torch.inference_mode():
        for tensor, output in zip(inputs, outputs):
            assert output.shape == tensor.shape
            assert torch.allclose(output, model.net(tensor.unsqueeze(0))[0], atol=1e-3)


class FailsOnMarkedImages(StyleModel):
    """The published model, except that it raises on any batch holding an image marked 13 in its corner."""

    def _run(self, batch, styles=None):
        if (batch[:, 0, 0, 0] == 13.0).any():
            raise RuntimeError("this image breaks the model")
        return super()._run(batch, styles)


def test_one_failing_image_fails_alone_and_its_batch_neighbours_get_their_pictures(tmp_path):
    version = publish_random_style(tmp_path, "alpha", 0)
    model = FailsOnMarkedImages(str(tmp_path), "alpha", version)
    inputs = [torch.rand(3, 16, 16) * 255 for _ in range(3)]
    inputs[1][0, 0, 0] = 13.0
    outputs = model.forward_by_size(inputs)
    assert isinstance(outputs[1], RunFailure) and not outputs[1].out_of_memory and "RuntimeError" in outputs[1].reason
    for index in (0, 2):
        assert isinstance(outputs[index], torch.Tensor) and outputs[index].shape == (3, 16, 16)


class RunsOutOfMemoryOnBatches(StyleModel):
    """A batch of several images holds a large activation and runs out of memory, as on a full GPU."""

    def _run(self, batch, styles=None):
        if batch.shape[0] > 1:
            activations = torch.empty(4_000_000)
            self.failed_batch_activations = weakref.ref(activations)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        self.alive_at_retry.append(self.failed_batch_activations() is not None)
        return super()._run(batch, styles)


def test_after_running_out_of_memory_the_failed_batch_is_freed_before_the_images_are_retried_alone(tmp_path):
    """The retry ran inside the except block: the exception's traceback kept the failed batch's
    activations alive (on a GPU, the very memory that ran out) while the images ran again."""
    version = publish_random_style(tmp_path, "alpha", 0)
    model = RunsOutOfMemoryOnBatches(str(tmp_path), "alpha", version)
    model.alive_at_retry = []
    outputs = model.forward_by_size([torch.rand(3, 16, 16) * 255 for _ in range(3)])
    assert model.alive_at_retry == [False, False, False]
    assert all(isinstance(output, torch.Tensor) for output in outputs)
    assert not any(isinstance(output, BaseException) for output in outputs)  # no exception (nor its traceback) kept


def test_a_model_whose_output_is_not_finite_fails_its_request_instead_of_answering_black(tmp_path):
    version = publish_random_style(tmp_path, "alpha", 0)
    model = StyleModel(str(tmp_path), "alpha", version)
    with torch.no_grad():
        next(model.net.parameters()).fill_(float("nan"))
    output = model.forward_by_size([torch.rand(3, 16, 16) * 255])[0]
    assert isinstance(output, RunFailure) and "non-finite" in output.reason


class CountsBatches(StyleModel):
    def _run(self, batch, styles=None):
        self.batch_sizes.append(batch.shape[0])
        return super()._run(batch, styles)


def test_a_batch_of_large_images_runs_within_the_pixel_budget(tmp_path):
    version = publish_random_style(tmp_path, "alpha", 0)
    model = CountsBatches(str(tmp_path), "alpha", version, max_batch_pixels=2 * 32 * 32)
    model.batch_sizes = []
    outputs = model.forward_by_size([torch.rand(3, 32, 32) * 255 for _ in range(5)] + [torch.rand(3, 8, 8) * 255])
    assert len(outputs) == 6 and all(isinstance(output, torch.Tensor) for output in outputs)
    assert sorted(model.batch_sizes) == [1, 1, 2, 2]  # 5 large ones in runs of 2 (+ 1), the small one alone


def test_the_grafana_dashboard_charts_every_exported_metric_and_nothing_else():
    """tests/test_serving_for_weeks.py scrapes these names from Ray's metrics endpoint after a request."""
    import json
    import re

    from conftest import REPO_ROOT
    from serve.metrics import EXPORTED

    dashboard = json.loads((REPO_ROOT / "serve" / "grafana_dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {re.sub(r"_bucket$", "", name) for expr in expressions for name in re.findall(r"ray_style_factory_\w+", expr)}
    assert queried == set(EXPORTED.values())


def test_the_request_metric_names_only_the_most_requested_styles():
    """Per-style series stay bounded however many styles there are: the top few by name, the rest 'other'."""
    from serve.metrics import OTHER_STYLES, StyleLabels

    now = [0.0]
    labels = StyleLabels(top=2, every_s=60, clock=lambda: now[0])
    assert [labels.label(style) for style in ("a", "b", "c")] == ["a", "b", OTHER_STYLES]
    for _ in range(5):
        labels.label("c")
    now[0] = 61  # re-ranked: c is now among the two most requested, b is not
    assert labels.label("c") == "c" and labels.label("b") == OTHER_STYLES
    assert {labels.label(f"style-{index}") for index in range(1000)} == {OTHER_STYLES}


def test_the_documented_prometheus_config_drops_serves_per_model_id_gauge_and_keeps_ours():
    """Serve's gauge gets one series per style:version ever held; the scrape config in docs/operations.md
    drops it (Prometheus anchors the regex, as fullmatch does), and nothing of ours."""
    import inspect
    import re

    from ray.serve import multiplex

    from conftest import REPO_ROOT
    from serve.metrics import EXPORTED

    blocks = re.findall(r"```yaml\n(scrape_configs:.*?)```", (REPO_ROOT / "docs" / "operations.md").read_text(), re.DOTALL)
    assert len(blocks) == 1
    rules = yaml.safe_load(blocks[0])["scrape_configs"][0]["metric_relabel_configs"]
    dropped = [rule["regex"] for rule in rules if rule["action"] == "drop" and rule["source_labels"] == ["__name__"]]
    gauge = re.search(r'"(serve_registered_multiplexed_model_id)"', inspect.getsource(multiplex)).group(1)  # as Ray names it
    assert any(re.fullmatch(regex, "ray_" + gauge) for regex in dropped)
    assert not [name for name in EXPORTED.values() for regex in dropped if re.fullmatch(regex, name)]
