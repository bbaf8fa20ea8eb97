"""What the front door sees of a registry on S3 (moto's server on 127.0.0.1), and what the pool loads from it."""

import boto3
import torch

from factory import registry
from serve.registry_view import RegistryView, parse_model_id
from serve.style_model import StyleModel
from serving import publish_random_style


def test_a_refresh_sees_new_and_retrained_styles_on_s3_but_never_a_half_written_one(s3_server, tmp_path):
    boto3.client("s3").create_bucket(Bucket="view")
    uri = "s3://view/registry"
    first = publish_random_style(uri, "alpha", seed=0)
    view = RegistryView(uri, refresh_s=1)
    assert {name: style.version for name, style in view.styles.items()} == {"alpha": first}

    retrained = publish_random_style(uri, "alpha", seed=1)
    publish_random_style(uri, "beta", seed=2)
    half_written = publish_random_style(str(tmp_path), "gamma", seed=3)  # every file but current.json, as mid-publish
    for filename in (registry.MODEL_FILE, registry.METADATA_FILE, registry.THUMBNAIL_FILE, registry.PREVIEW_FILE):
        boto3.client("s3").upload_file(str(tmp_path / "gamma" / "versions" / half_written / filename), "view",
                                       f"registry/gamma/versions/{half_written}/{filename}")
    view.refresh()

    assert sorted(view.styles) == ["alpha", "beta"]
    assert view.styles["alpha"].version == retrained != first and view.styles["alpha"].metadata["steps"] == 1
    assert "source" not in view.styles["beta"].metadata["loss_network"]  # never where weights live
    assert view.picture("beta", registry.THUMBNAIL_FILE).startswith(b"\xff\xd8")
    assert view.picture("beta", registry.MODEL_FILE) is None and view.picture("gamma", registry.THUMBNAIL_FILE) is None

    style, version = parse_model_id(view.styles["alpha"].model_id)  # what a pool replica loads for a request
    model = StyleModel(uri, style, version)
    assert model.metadata["version"] == retrained
    assert model.forward_by_size([torch.rand(3, 16, 16) * 255])[0].shape == (3, 16, 16)
