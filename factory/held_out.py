"""The photos every published model is judged on: never ones it trained on. No Ray, no torch.

A model's preview and its quality figures (factory/quality.py) on one of its own training photos say
how well it fits what it saw, not how it stylises a client's photo. The run refuses, before any
training, a preview or evaluation photo inside data.source; the figures are the mean over every
evaluation photo, and each photo's own are kept beside them in the model's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from factory import images, storage
from factory.settings import FactoryConfig

PREVIEW_MAX_SIDE = 512  # previews and the figures on them: the size a person looks at


@dataclass(frozen=True)
class HeldOutPhotos:
    """The preview photo and the evaluation photos, decoded and fitted within PREVIEW_MAX_SIDE."""

    preview: "images.Image.Image"
    preview_name: str
    evaluation: dict[str, "images.Image.Image"]  # {file name: photo}, in the config's order


def inside(uri: str, folder: str) -> bool:
    """Whether uri names a file under folder (local paths compared resolved; S3 keys by prefix)."""
    if storage.is_s3(uri) != storage.is_s3(folder):
        return False
    if storage.is_s3(uri):
        return uri.startswith(folder.rstrip("/") + "/")
    return PurePosixPath(storage.absolute(folder)) in PurePosixPath(storage.absolute(uri)).parents


def check_held_out(config: FactoryConfig) -> None:
    """Refuses a preview or evaluation photo that is one of the training photos (under data.source)."""
    for setting, uri in [("preview_image", config.preview_image), *(("evaluation_photos", uri) for uri in config.evaluation_photos)]:
        if inside(uri, config.data.source):
            raise ValueError(
                f"{setting} {uri!r} is inside data.source ({config.data.source}): a model's figures on a photo it trained on say how "
                "well it fits what it saw, not how it stylises a new photo. Point it at a photo outside data.source "
                "(data/samples/held_out/ has two that the bundled samples never train on)")


def read_held_out(config: FactoryConfig) -> HeldOutPhotos:
    check_held_out(config)

    def read(uri: str):
        return images.fit_within(images.decode_rgb(storage.read_bytes(uri), max_pixels=images.CONFIG_IMAGE_MAX_PIXELS), PREVIEW_MAX_SIDE)

    evaluation = {}
    for uri in config.evaluation_photos:
        name = PurePosixPath(uri).name
        if name in evaluation:
            raise ValueError(f"evaluation_photos names two photos called {name!r}; the figures are kept by file name: rename one")
        evaluation[name] = read(uri)
    return HeldOutPhotos(read(config.preview_image), PurePosixPath(config.preview_image).name, evaluation)
