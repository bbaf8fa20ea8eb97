"""Benchmark figures kept as data: bench/results/<device>-<date>.json, one section per benchmark.

Later work compares against these files; the README's performance tables name the file each number
comes from. The device is named in the file name and inside it (the GPU's name, or the CPU model and
its core count), since a figure without its machine means nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    """'NVIDIA H200' or 'AMD EPYC 7B13 x2 cores': the machine the figures were measured on."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} x{os.cpu_count()} cores"


def results_path(device: str | None = None, date: datetime.date | None = None) -> Path:
    device = device or device_name()
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return RESULTS / f"{slug}-{(date or datetime.date.today()).isoformat()}.json"


def record(section: str, figures: dict, path: Path | None = None) -> Path:
    """Merge {section: figures} into today's file for this device; returns its path."""
    path = path or results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = json.loads(path.read_text()) if path.exists() else {}
    document["device"] = device_name()
    document[section] = {**figures, "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path
