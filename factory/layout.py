"""Where the factory's files live under one root: `data/` on one machine, `s3://<bucket>` on a cluster.

One layout, followed by the download (factory/download.py), the shard preparation, the configs
(configs/coco.yaml under data/, configs/coco_s3.yaml under s3://my-style-factory) and docs/aws.md's
commands; tests/test_layout.py holds them to it. The local root keeps the seed's layout.
"""

from __future__ import annotations

from factory import storage

COCO_IMAGES = "train2014"  # COCO's train2014.zip, unpacked: 82,783 JPEGs
VGG19_MAT = "imagenet-vgg-verydeep-19.mat"  # MatConvNet's VGG-19
VGG19_PTH = "vgg19.pth"  # torchvision's VGG-19 state dict
COCO_SHARDS = "shards/train2014-256"  # COCO decoded once into 256 px .npy shards (factory/prepare_shards.py)
STYLE_IMAGES = "styles"  # the paintings, one file per style
REGISTRY = "registry"  # published models (factory/registry.py)
CHECKPOINTS = "checkpoints"  # Ray Train runs: checkpoints and TensorBoard events
CONFIGS = "configs"  # factory configs a job reads from S3 (KubeRay's RayJob: --config s3://...)

LOCAL_ROOT = "data"
EXAMPLE_BUCKET_ROOT = "s3://my-style-factory"  # what docs/aws.md and configs/coco_s3.yaml name; users put their bucket


def under(root: str, relative: str) -> str:
    """A layout path under a root: under('s3://b', COCO_IMAGES) -> 's3://b/train2014'."""
    return storage.join(root, relative)
