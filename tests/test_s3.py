"""The factory with everything on S3 (data, VGG-19 weights, checkpoints, registry), against a real
S3-compatible server on 127.0.0.1, through the same boto3 and pyarrow code paths as AWS."""

import boto3
import pytest

import vgg_files
from factory import registry, storage, train_all
from factory_runs import STYLES, write_config

pytestmark = pytest.mark.slow


def upload_folder(client, folder, bucket, prefix):
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_training_reads_and_writes_everything_on_s3(ray_local, s3_server, dirty_images, tmp_path, capsys):
    folder, expected = dirty_images
    client = boto3.client("s3")
    client.create_bucket(Bucket="factory")
    upload_folder(client, folder, "factory", "coco/train2014")
    weights = vgg_files.write_pth(tmp_path / "vgg19.pth", vgg_files.matconvnet_convs())
    client.upload_file(str(weights), "factory", "weights/vgg19.pth")
    for name in ("starry_night", "udnie"):
        client.upload_file(str(STYLES / f"{name}.jpg"), "factory", f"styles/{name}.jpg")

    config = write_config(
        tmp_path / "config.yaml", source="s3://factory/coco/train2014", registry="s3://factory/registry",
        storage_path="s3://factory/checkpoints", steps=20, styles=("starry_night", "udnie"),
        weights=["s3://factory/weights/missing.mat", "s3://factory/weights/vgg19.pth"],
        style_images={name: f"s3://factory/styles/{name}.jpg" for name in ("starry_night", "udnie")},
    )
    assert train_all.main(["--config", str(config)]) == 0

    assert f"skipped content files: {expected['skipped']}" in capsys.readouterr().out
    assert registry.list_styles("s3://factory/registry") == ["starry_night", "udnie"]
    net, metadata = registry.load_model("s3://factory/registry", "udnie")
    assert metadata["loss_network"] == {"source": "torchvision-state-dict:s3://factory/weights/vgg19.pth", "random_weights": False}
    assert metadata["steps"] == 20
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="factory", Prefix="checkpoints/")
            for item in page.get("Contents", [])]
    assert any(key.endswith("/pack.pt") for key in keys), keys
    assert any("/tensorboard/events.out.tfevents." in key for key in keys), keys
    assert storage.read_bytes(f"s3://factory/registry/udnie/versions/{metadata['version']}/preview.jpg").startswith(b"\xff\xd8")


def test_missing_weights_on_s3_stop_before_training_with_instructions(s3_server, tmp_path, capsys):
    boto3.client("s3").create_bucket(Bucket="empty")
    config = write_config(tmp_path / "config.yaml", source="s3://empty/coco", registry="s3://empty/registry",
                          storage_path="s3://empty/checkpoints", steps=2, weights=["s3://empty/imagenet-vgg-verydeep-19.mat"])
    assert train_all.main(["--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "s3://empty/imagenet-vgg-verydeep-19.mat: not found" in error and "Download" in error
