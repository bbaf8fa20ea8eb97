"""What clients see of a model's metadata keeps storage locations private."""

import json

from serve.registry_view import public_metadata


def test_the_weights_location_is_not_published():
    metadata = {
        "style": "a", "version": "v1", "steps": 10, "quality": {"colour_shift": 0.5},
        "loss_network": {"source": "matconvnet:s3://private-bucket/weights/imagenet-vgg-verydeep-19.mat", "random_weights": False},
        "recipe": {"data": {"source": "s3://private-bucket/train2014"}},
        "run_name": "factory-a-123",
    }
    public = public_metadata(metadata)
    assert "private-bucket" not in json.dumps(public)
    assert public["loss_network"] == {"kind": "matconvnet", "random_weights": False}
    assert public["quality"] == {"colour_shift": 0.5} and public["steps"] == 10
