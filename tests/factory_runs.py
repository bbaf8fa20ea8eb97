"""Helpers for tests that run the whole factory: a tiny config written to disk."""

from __future__ import annotations

from pathlib import Path

import yaml

from factory.packs import PackPlan
from factory.settings import DataSettings, LossSettings, ResolvedStyle, TrainingSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
STYLES = REPO_ROOT / "data" / "samples" / "styles"


def write_config(path: Path, *, source: str, registry: str, storage_path: str, steps: int, weights=("random",),
                 num_workers: int = 2, styles=("starry_night", "the_scream"), style_images=None, style_settings=None,
                 **training) -> Path:
    """A config small enough for 2 CPU cores: 32 px crops, a few dozen steps. style_settings: {style: its own settings}."""
    style_images = style_images or {name: str(STYLES / f"{name}.jpg") for name in styles}
    config = {
        "name": "test",
        "registry": registry,
        "preview_image": str(REPO_ROOT / "data" / "samples" / "held_out" / "chelsea.png"),
        "evaluation_photos": [str(REPO_ROOT / "data" / "samples" / "held_out" / "chelsea.png")],
        # The dirty test folders hold 4 unusable files of 18 on purpose.
        "data": {"source": source, "image_size": 32, "max_skipped_fraction": 0.5},
        "loss_network": {"weights": list(weights)},
        "loss": {"style_size": 64},
        "training": {"steps": steps, "batch_size": 4, "num_workers": num_workers, "accelerator": "cpu",
                     "styles_per_pack": 4, "checkpoint_every": 10, "log_every": 5, "storage_path": storage_path,
                     "max_concurrent_packs": 1, **training},
        "styles": [{"name": name, "image": style_images[name], **(style_settings or {}).get(name, {})} for name in styles],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def pack_plan(names=("a", "b")) -> PackPlan:
    """A pack of styles with no images: what building, checkpointing and resuming a pack need."""
    styles = tuple(ResolvedStyle(name=name, image_bytes=b"", image_sha256="-", content_weight=1.0, style_weight=10.0,
                                 tv_weight=0.1, steps=10, learning_rate=1e-3) for name in names)
    return PackPlan(run_name="r", styles=styles, steps=10, data=DataSettings(), loss=LossSettings(),
                    training=TrainingSettings(), tensorboard_uri="unused")
