"""Stylising a whole folder or S3 prefix of photos on Ray Data: the catalogue path.

    python -m factory.stylize --style starry_night photos/ -o stylised/
    python -m factory.stylize --style mosaic --style udnie s3://bucket/photos/ -o s3://bucket/out/

Reading and decoding, then encoding and writing, run as Ray tasks; stylising runs in a pool of model
actors that each hold every style of the job, so a photo is read and decoded once whatever the number
of styles (torch actors on GPUs, several to a GPU with --gpus-per-worker 0.5; ONNX Runtime actors on
CPUs). Each result goes to <output>/<style>/<the photo's name relative to the source>. Outputs are
written whole or not at all (a rename, an S3 PUT), so those already there are skipped: a stopped job
run again resumes. Files that cannot be used are skipped, counted and listed in the report beside the
outputs (<output>/_stylise_report.json), with training's limit: past max_skipped_fraction of the files
the job stops, since so many mean a wrong path rather than a few bad photos. Clips among the photos
are stylised after them, each a task of its own (factory/bulk_videos.py), under the same rules.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow.fs
import ray

from factory import bulk_videos, data, images, registry, storage, stylize, video
from factory.cluster_fit import REPO_ROOT
from factory.settings import DataSettings
from factory.style_names import validate_style_name

REPORT_NAME = "_stylise_report.json"
# Photos a reading task takes at most, read side by side (on S3 each is a request of tens of ms).
PHOTOS_PER_TASK = 16
PROGRESS_EVERY_S = 5.0


class JobStopped(RuntimeError):
    """The job stopped before every output was written; the report says why and how far it got."""


@dataclass(frozen=True)
class BulkSettings:
    source: str  # folder or s3:// prefix of photos, read recursively (hidden files left out)
    output: str  # folder or s3:// prefix; results go to <output>/<style>/<relative name>
    styles: tuple[str, ...]  # published styles; each photo is read once for all of them
    registry: str = "data/registry"
    device: str = "cpu"  # "cpu": ONNX Runtime actors (torch where a version has no export); "cuda": torch on GPUs
    workers: int = 0  # model actors at most; 0: as many as the cluster's CPUs (GPUs) give
    cpus_per_worker: float = 1.0  # CPU actors: the threads each runs the network with
    gpus_per_worker: float = 1.0  # GPU actors: under 1 puts several on a GPU (small networks leave one idle)
    batch_size: int = 8  # photos per forward pass; only photos of one size are stacked together
    max_side: int = 0  # shrink photos so the longer side is at most this (0: full size)
    max_pixels: int = 50_000_000  # larger photos are skipped (a 45 MP camera fits): memory is ~130 bytes a pixel on CPU
    max_file_bytes: int = DataSettings.max_file_bytes
    max_video_bytes: int = 16 * 1024**3  # a clip is copied whole to a task's disk when it comes from S3
    max_skipped_fraction: float = DataSettings.max_skipped_fraction
    quality: int = 95  # JPEG and WebP outputs
    cpu_precision: str = "auto"  # CPU actors: a style's int8 copy where it has one and the cores have int8 units (factory/onnx_int8.py)

    def __post_init__(self):
        if not self.styles:
            raise ValueError("no style given: name at least one published style with --style")
        for style in self.styles:
            validate_style_name(style)
        if len(set(self.styles)) != len(self.styles):
            raise ValueError(f"a style is named twice in {list(self.styles)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda for a bulk job, got {self.device!r}")
        checks = [(self.workers >= 0, "--workers must be 0 (as the cluster gives) or more"),
                  (self.cpus_per_worker > 0, "--cpus-per-worker must be more than 0"),
                  (0 < self.gpus_per_worker <= 1 or self.gpus_per_worker == int(self.gpus_per_worker),
                   "--gpus-per-worker must be a fraction of one GPU (0.25, 0.5) or a whole number"),
                  (1 <= self.batch_size <= 256, "--batch-size must be 1..256"),
                  (self.max_side >= 0, "--max-side must be 0 (full size) or more"),
                  (0 <= self.max_skipped_fraction <= 1, "--max-skipped-fraction must be 0..1"),
                  (1 <= self.quality <= 100, "--quality must be 1..100"),
                  (self.cpu_precision in ("auto", "fp32", "int8"), "--cpu-precision must be auto, fp32 or int8")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        source, output = storage.absolute(self.source).rstrip("/"), storage.absolute(self.output).rstrip("/")
        if output == source or output.startswith(source + "/"):
            raise ValueError(f"the output {self.output!r} is inside the source {self.source!r}: the next run would stylise "
                             "the results again; write them elsewhere")


@dataclass
class Plan:
    """What a job has to do: the photos with at least one style still to write, and what was found."""

    filesystem: pyarrow.fs.FileSystem
    todo: list[dict]  # {"path", "relative", "styles": "a,b"}: the styles still to write for that photo
    videos: list[dict]  # the same for each clip (factory/video.py's suffixes), stylised by bulk_videos
    listed: int  # files found under the source, oversized ones included
    already_there: int  # outputs found written by an earlier run
    oversized: dict[str, str]


def output_name(relative: str) -> str:
    """The result's name: the photo's, with ".jpg" added where its format is not one we write (.bmp, .tif)."""
    return relative if os.path.splitext(relative)[1].lower() in stylize.OUTPUT_FORMATS else f"{relative}.jpg"


def existing_outputs(uri: str) -> set[str]:
    """Names (relative to uri) of the outputs already written there; hidden ones are unfinished writes."""
    filesystem, root = storage.pyarrow_filesystem(uri)
    paths, _ = data.list_files(filesystem, root, sys.maxsize, "")
    return {path[len(root) + 1:] for path in paths}


def make_plan(settings: BulkSettings) -> Plan:
    filesystem, root = storage.pyarrow_filesystem(settings.source)
    if not storage.is_s3(settings.source) and filesystem.get_file_info(root).type != pyarrow.fs.FileType.Directory:
        raise FileNotFoundError(f"no folder at {settings.source!r}: give a folder or s3://bucket/prefix of photos")
    files = data.list_file_sizes(filesystem, root)
    if not files:
        raise FileNotFoundError(f"no files under {settings.source!r}: give a folder or s3://bucket/prefix of photos")
    oversized = {}
    for path, size in files:  # a clip may be far larger than a photo
        reason = (data.too_large(size, settings.max_video_bytes, "max_video_bytes") if video.is_video(path)
                  else data.too_large(size, settings.max_file_bytes, "--max-file-bytes"))
        if reason:
            oversized[path] = reason
    written = {style: existing_outputs(storage.join(settings.output, style)) for style in settings.styles}
    todo, videos, already_there = [], [], 0
    for path in (path for path, _ in files if path not in oversized):
        relative = path[len(root) + 1:]
        clip = video.is_video(path)
        name = bulk_videos.video_output_name(relative) if clip else output_name(relative)
        missing = [style for style in settings.styles if name not in written[style]]
        already_there += len(settings.styles) - len(missing)
        if missing:
            (videos if clip else todo).append({"path": path, "relative": relative, "styles": ",".join(missing)})
    return Plan(filesystem, todo, videos, len(files), already_there, oversized)


def read_photos(batch: dict, filesystem: pyarrow.fs.FileSystem, settings: BulkSettings, ledger) -> dict:
    """Photo files -> decoded RGB pixels, as flat bytes with their height and width (photos differ in
    size, and a binary column travels between tasks as any other); unusable files go to the ledger."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [str(path) for path in batch["path"]]
    with ThreadPoolExecutor(max_workers=max(1, len(paths))) as readers:
        contents = list(readers.map(lambda path: data.read_file(filesystem, path), paths))
    rows, skipped = defaultdict(list), {}
    for index, (path, content) in enumerate(zip(paths, contents)):
        if content is None:
            skipped[path] = "missing: deleted since it was listed"
            continue
        try:
            image = images.decode_rgb(content, max_pixels=settings.max_pixels, max_side=settings.max_side or None)
        except images.ImageRejected as error:
            skipped[path] = str(error)
            continue
        if settings.max_side:
            image = images.fit_within(image, settings.max_side)
        rows["pixels"].append(image.tobytes())
        rows["height"].append(image.height)
        rows["width"].append(image.width)
        rows["relative"].append(str(batch["relative"][index]))
        rows["styles"].append(str(batch["styles"][index]))
    if skipped:
        data.record_skipped(ledger, skipped)  # raises TooManySkipped past the limit: the job stops
    return _columns(rows, ("pixels", "height", "width", "relative", "styles"))


class Stylist:
    """A model actor: every style of the job loaded once, photos of one size stylised in batches."""

    def __init__(self, registry_uri: str, metadata: dict[str, dict], device: str, threads: int, cpu_precision: str):
        import torch

        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.nets = {style: stylize.load_style_net(registry_uri, style_metadata, self.device, threads, cpu_precision)
                     for style, style_metadata in metadata.items()}

    def __call__(self, batch: dict) -> dict:
        rows = defaultdict(list)
        for style, net in self.nets.items():
            wanted = [index for index, styles in enumerate(batch["styles"]) if style in str(styles).split(",")]
            for (height, width), indices in _by_size(batch, wanted).items():
                stacked = np.stack([np.frombuffer(batch["pixels"][index], np.uint8).reshape(height, width, 3) for index in indices])
                stylised = stylize.stylise_frames(net, stacked, self.device)
                for index, pixels in zip(indices, stylised):
                    rows["pixels"].append(pixels.tobytes())
                    rows["height"].append(height)
                    rows["width"].append(width)
                    rows["relative"].append(str(batch["relative"][index]))
                    rows["style"].append(style)
        return _columns(rows, ("pixels", "height", "width", "relative", "style"))


def _by_size(batch: dict, indices: list[int]) -> dict[tuple[int, int], list[int]]:
    groups = defaultdict(list)
    for index in indices:
        groups[(int(batch["height"][index]), int(batch["width"][index]))].append(index)
    return groups


def write_results(batch: dict, output: str, quality: int) -> dict:
    """Stylised pixels -> files at <output>/<style>/<name>, each written whole (a rename, an S3 PUT)."""
    from PIL import Image

    for pixels, height, width, relative, style in zip(batch["pixels"], batch["height"], batch["width"], batch["relative"], batch["style"]):
        name = output_name(str(relative))
        image = Image.frombytes("RGB", (int(width), int(height)), bytes(pixels))
        encoded = images.encode(image, stylize.OUTPUT_FORMATS[os.path.splitext(name)[1].lower()], quality=quality)
        storage.write_bytes(storage.join(output, str(style), name), encoded)
    return {"style": np.asarray(batch["style"], dtype=object), "relative": np.asarray(batch["relative"], dtype=object)}


def _columns(rows: dict, names: tuple[str, ...]) -> dict:
    """Batch columns, empty ones included (a task whose photos were all skipped still returns a batch)."""
    return {name: np.asarray(rows[name], dtype=object if name in ("pixels", "relative", "styles", "style") else np.int64)
            for name in names}


def worker_count(settings: BulkSettings) -> int:
    """Model actors at most: --workers, else as many as the cluster's CPUs (less one for reading and
    writing) or GPUs hold."""
    if settings.workers:
        return settings.workers
    resources = ray.cluster_resources()
    if settings.device == "cuda":
        gpus = resources.get("GPU", 0)
        if not gpus:
            raise ValueError("--device cuda, but the cluster has no GPU now: start GPU nodes, or give --workers N so an "
                             "autoscaling cluster starts them")
        return max(1, int(gpus / settings.gpus_per_worker))
    return max(1, int((resources.get("CPU", 1) - 1) / settings.cpus_per_worker))


class Progress:
    """One line every few seconds: outputs written of those to write, the rate and an ETA (a log line,
    not a bar: `ray job submit` and `ray job logs` show lines)."""

    def __init__(self, total: int, already_there: int, out=sys.stderr):
        self.total, self.already_there, self.out = total, already_there, out
        self.done, self.started, self.last = 0, time.monotonic(), 0.0

    def add(self, count: int, ledger) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            skipped = ray.get(ledger.summary.remote())["count"]
            print(f"stylised {self.done}/{self.total} ({self.done / max(self.total, 1):.0%}), {rate:.1f} images/s, "
                  f"ETA {_duration(eta)}; {self.already_there} already there, {skipped} file(s) skipped", file=self.out, flush=True)


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def run(settings: BulkSettings, out=sys.stderr) -> dict:
    """Stylises every photo under settings.source not yet done; returns the report (also written as
    <output>/_stylise_report.json). Raises JobStopped, after writing the report, when it stops early: too
    many unusable files, a file listed but unreadable, a model that would not load."""
    started = datetime.now(timezone.utc)
    versions = {style: registry.read_metadata(settings.registry, style) for style in settings.styles}  # one version a job
    plan = make_plan(settings)
    total = sum(len(item["styles"].split(",")) for item in plan.todo + plan.videos)
    print(f"{plan.listed} file(s) under {settings.source}: {total} output(s) to write for {', '.join(settings.styles)}"
          f"{f' ({len(plan.videos)} clip(s))' if plan.videos else ''}, {plan.already_there} already there", file=out, flush=True)
    ledger = data.SkipLedger.remote(plan.listed, settings.max_skipped_fraction)
    stopped, progress = None, Progress(total, plan.already_there, out)  # progress.done: the outputs written, also when stopped
    try:
        if plan.oversized:
            data.record_skipped(ledger, plan.oversized)
        if plan.todo:
            _stylise(settings, plan, versions, ledger, progress)
        if plan.videos:
            _stylise_videos(settings, plan, versions, ledger, progress)
    except Exception as error:  # a task's TooManySkipped or ContentReadError arrives wrapped by Ray
        stopped = ray.get(ledger.over_limit.remote()) or str(error).strip().splitlines()[-1]
    report = {
        "source": settings.source, "output": settings.output, "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "status": "stopped" if stopped else "complete",
        "stopped_because": stopped, "styles": {style: metadata["version"] for style, metadata in versions.items()},
        "files_listed": plan.listed, "outputs_written": progress.done, "outputs_already_there": plan.already_there,
        "outputs_still_to_write": total - progress.done if stopped else 0,
        "skipped": {**ray.get(ledger.summary.remote()), "files": ray.get(ledger.skipped.remote())},
    }
    del report["skipped"]["examples"]
    storage.write_bytes(storage.join(settings.output, REPORT_NAME), json.dumps(report, indent=2).encode())
    if stopped:
        raise JobStopped(f"{stopped}. The report: {storage.join(settings.output, REPORT_NAME)}; run again to go on "
                         "(what was written is skipped)")
    return report


def _stylise(settings: BulkSettings, plan: Plan, versions: dict[str, dict], ledger, progress: Progress) -> None:
    data.quiet_ray_data()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its "execution finished" lines, between ours
    cpu = settings.device == "cpu"
    # Blocks of one forward pass each: every actor gets work from the start, and results are written as
    # each pass ends (blocks of 16 left one of two actors idle on a small job, and wrote in bursts).
    photos_per_block = min(PHOTOS_PER_TASK, settings.batch_size)
    workers = min(worker_count(settings), -(-len(plan.todo) // photos_per_block))
    dataset = ray.data.from_items(plan.todo, override_num_blocks=-(-len(plan.todo) // photos_per_block))
    dataset = dataset.map_batches(read_photos, batch_size=photos_per_block, batch_format="numpy",
                                  fn_kwargs={"filesystem": plan.filesystem, "settings": settings, "ledger": ledger})
    dataset = dataset.map_batches(
        Stylist, batch_size=settings.batch_size, batch_format="numpy",
        # All the actors at once: Ray Data adds actors only as work queues up, which a short job never sees.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers, initial_size=workers),
        fn_constructor_kwargs={"registry_uri": settings.registry, "metadata": versions, "device": settings.device,
                               "threads": max(1, int(settings.cpus_per_worker)), "cpu_precision": settings.cpu_precision},
        num_cpus=settings.cpus_per_worker if cpu else None, num_gpus=None if cpu else settings.gpus_per_worker)
    # Written as they come, a batch at a time: a job stopped midway keeps all it finished.
    dataset = dataset.map_batches(write_results, batch_size=settings.batch_size, batch_format="numpy",
                                  fn_kwargs={"output": settings.output, "quality": settings.quality})
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        progress.add(len(batch["style"]), ledger)


def _stylise_videos(settings: BulkSettings, plan: Plan, versions: dict[str, dict], ledger, progress: Progress) -> None:
    """Every clip of the plan a task (factory/bulk_videos.py), as many at once as the cluster has room for."""
    cpu = settings.device == "cpu"
    task = bulk_videos.stylise_clip.options(num_cpus=settings.cpus_per_worker if cpu else 1, num_gpus=0 if cpu else settings.gpus_per_worker)
    pending = [task.remote(item, plan.filesystem, settings, versions, ledger) for item in plan.videos]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            progress.add(ray.get(done[0]), ledger)  # a task's TooManySkipped stops the job here
    finally:  # stopped: the other clips stop too (each result is written whole or not at all), and the report counts what is done
        for task_ref in pending:
            ray.cancel(task_ref, force=True)


def settings_from_args(args, styles: list[str]) -> BulkSettings:
    """The CLI's flags (factory/stylize.py) as BulkSettings."""
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(BulkSettings)
             if getattr(args, field.name, None) is not None and field.name not in ("source", "output", "styles")}
    given.setdefault("device", "cpu")
    return BulkSettings(source=str(args.inputs[0]), output=str(args.output), styles=tuple(styles), **given)


def start_ray() -> None:
    """Join a cluster when asked (RAY_ADDRESS, as `ray job submit` sets), else start a local Ray; never a
    stale address an earlier `ray start` left behind."""
    if ray.is_initialized():
        return
    # Ray Data's line per execution and its bars would drown the job's own progress lines.
    env_vars = {"RAY_DATA_LOG_LEVEL": os.environ.get("RAY_DATA_LOG_LEVEL", "WARNING")}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="WARNING", runtime_env={"env_vars": env_vars})
    else:  # the workers of a Ray of our own import the factory from this checkout
        ray.init(address="local", logging_level="WARNING",
                 runtime_env={"env_vars": {**env_vars, "PYTHONPATH": str(REPO_ROOT)}})
