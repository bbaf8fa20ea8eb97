"""The generated Serve config and the endpoint's health check, without a cluster."""

import pytest
import torch
import yaml

from serve import deploy
from serve.settings import load_serving_config
from serve.style_model import StyleModel
from serving import publish_random_style


def test_generated_config_is_one_application_per_style_and_valid_for_serve(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    for seed, name in enumerate(["alpha", "rare"]):
        publish_random_style(tmp_path / "registry", name, seed)
    serving = tmp_path / "serving.yaml"
    serving.write_text(yaml.safe_dump({"registry": str(tmp_path / "registry"), "styles": {"rare": {"min_replicas": 0, "num_gpus": 0.25}}}))
    assert deploy.main(["--config", str(serving), "--dry-run", "--write", str(tmp_path / "serve_config.yaml")]) == 0

    config = yaml.safe_load((tmp_path / "serve_config.yaml").read_text())
    ServeDeploySchema.model_validate(config)  # what `serve deploy` itself checks
    apps = {app["name"]: app for app in config["applications"]}
    assert list(apps) == ["gallery", "style-alpha", "style-rare"]
    assert apps["style-rare"]["route_prefix"] == "/styles/rare"
    rare = apps["style-rare"]["deployments"][0]
    assert rare["autoscaling_config"]["min_replicas"] == 0  # scale to zero
    assert rare["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.25}
    assert apps["style-alpha"]["deployments"][0]["autoscaling_config"]["min_replicas"] == 1
    assert apps["gallery"]["args"]["styles"].keys() == {"alpha", "rare"}


def test_bad_serving_settings_are_refused_with_the_setting_named(tmp_path):
    with pytest.raises(ValueError, match="max_replicas must be"):
        load_serving_config(None, styles={"alpha": {"min_replicas": 3, "max_replicas": 2}})
    with pytest.raises(ValueError, match="unknown setting.*'replicas'"):
        load_serving_config(None, styles={"alpha": {"replicas": 3}})
    with pytest.raises(ValueError, match="invalid style name"):
        load_serving_config(None, styles={"../x": {}})


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
    model = StyleModel(str(tmp_path), "alpha", version)
    inputs = [torch.rand(3, 16, 16) * 255, torch.rand(3, 8, 12) * 255, torch.rand(3, 16, 16) * 255]
    outputs = model.forward_by_size(inputs)
    with torch.inference_mode():
        for tensor, output in zip(inputs, outputs):
            assert output.shape == tensor.shape
            assert torch.allclose(output, model.net(tensor.unsqueeze(0))[0], atol=1e-3)


class FailsOnMarkedImages(StyleModel):
    """The published model, except that it raises on any batch holding an image marked 13 in its corner."""

    def _run(self, batch):
        if (batch[:, 0, 0, 0] == 13.0).any():
            raise RuntimeError("this image breaks the model")
        return super()._run(batch)


def test_one_failing_image_fails_alone_and_its_batch_neighbours_get_their_pictures(tmp_path):
    version = publish_random_style(tmp_path, "alpha", 0)
    model = FailsOnMarkedImages(str(tmp_path), "alpha", version)
    inputs = [torch.rand(3, 16, 16) * 255 for _ in range(3)]
    inputs[1][0, 0, 0] = 13.0
    outputs = model.forward_by_size(inputs)
    assert isinstance(outputs[1], RuntimeError)
    for index in (0, 2):
        assert isinstance(outputs[index], torch.Tensor) and outputs[index].shape == (3, 16, 16)


class CountsBatches(StyleModel):
    def _run(self, batch):
        self.batch_sizes.append(batch.shape[0])
        return super()._run(batch)


def test_a_batch_of_large_images_runs_within_the_pixel_budget(tmp_path):
    version = publish_random_style(tmp_path, "alpha", 0)
    model = CountsBatches(str(tmp_path), "alpha", version, max_batch_pixels=2 * 32 * 32)
    model.batch_sizes = []
    outputs = model.forward_by_size([torch.rand(3, 32, 32) * 255 for _ in range(5)] + [torch.rand(3, 8, 8) * 255])
    assert len(outputs) == 6 and all(isinstance(output, torch.Tensor) for output in outputs)
    assert sorted(model.batch_sizes) == [1, 1, 2, 2]  # 5 large ones in runs of 2 (+ 1), the small one alone
