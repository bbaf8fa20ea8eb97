"""Training runs for the benchmarks: factory/train_all.py run in this process into a registry and
checkpoint folder of its own, and each published model's figures read back from the registry."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from factory import registry, train_all


def train_into(config: str | Path, folder: Path, label: str, steps: int | None, *settings: str) -> dict[str, dict]:
    """{style: figures} of the config's styles trained with `settings` (KEY=VALUE) into folder/registry-<label>."""
    registry_uri = str(folder / f"registry-{label}")
    arguments = ["--config", str(config), "--registry", registry_uri, "--set", f"training.storage_path={folder / f'checkpoints-{label}'}"]
    if steps:
        arguments += ["--steps", str(steps)]
    for setting in settings:
        arguments += ["--set", setting]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):  # the run's table; its figures are read from the registry below
        code = train_all.main(arguments)
    if code != 0:
        raise RuntimeError(f"the {label} run failed:\n{output.getvalue()[-2000:]}")
    figures = {}
    for style in registry.list_styles(registry_uri):
        metadata = registry.read_metadata(registry_uri, style)
        figures[style] = {"colour_shift": metadata["quality"]["colour_shift"], "structure_kept": metadata["quality"]["structure_kept"],
                          "final_loss": metadata["final_losses"].get("total"), "steps": metadata["steps"],
                          "train_seconds": metadata["throughput"]["train_seconds"]}
    return figures
