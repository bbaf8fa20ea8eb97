"""The clips of a bulk job (factory/bulk_stylize.py): each a Ray task that stylises it in every style
still to write, with factory/video.py (frames batched, sound copied, rotation applied).

A clip is minutes of one model's work and cannot be split between actors without seams in time, so it
is a task of its own, holding --cpus-per-worker CPUs or --gpus-per-worker GPUs as a model actor does.
A clip on S3 is copied to the task's local disk first (FFmpeg seeks in it); each result is written
whole, under a hidden name then renamed in a folder, or as one upload to S3, so a job run again skips
it. A clip that is not one we can stylise (not a video, truncated, too large a frame) is skipped with
the reason, in the same report and limit as unusable photos.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath

import pyarrow.fs
import ray

from factory import data, storage, video

# A clip's result is H.264: in the clip's own container where we write that one, else in MP4.
VIDEO_OUTPUT_SUFFIX = ".mp4"


def video_output_name(relative: str) -> str:
    """The result's name: the clip's, with ".mp4" added where its container is not one we write (.webm, .avi)."""
    return relative if PurePosixPath(relative).suffix.lower() in video.OUTPUT_CODECS else f"{relative}{VIDEO_OUTPUT_SUFFIX}"


def _local_copy(filesystem: pyarrow.fs.FileSystem, path: str, folder: Path) -> Path | None:
    """The clip as a local file (a local one as it is); None if it was deleted since it was listed."""
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return Path(path) if Path(path).is_file() else None
    copy = folder / f"source{PurePosixPath(path).suffix.lower()}"
    try:
        with filesystem.open_input_stream(path) as source, copy.open("wb") as target:
            shutil.copyfileobj(source, target, length=8 * 1024 * 1024)
    except FileNotFoundError:
        return None
    return copy


@ray.remote(max_retries=0)  # a failed clip is reported, not redone behind the job's back; a rerun resumes it
def stylise_clip(item: dict, filesystem: pyarrow.fs.FileSystem, settings, versions: dict[str, dict], ledger) -> int:
    """One clip in each of item["styles"] (comma-separated); returns the outputs written. settings: BulkSettings."""
    import torch

    from factory import stylize

    threads = max(1, int(settings.cpus_per_worker))
    torch.set_num_threads(threads)
    device = torch.device(settings.device)
    name = video_output_name(item["relative"])
    written = 0
    with tempfile.TemporaryDirectory(prefix="bulk-video-") as folder:
        source = _local_copy(filesystem, item["path"], Path(folder))
        if source is None:
            data.record_skipped(ledger, {item["path"]: "missing: deleted since it was listed"})
            return 0
        for style in item["styles"].split(","):
            net = stylize.load_style_net(settings.registry, versions[style], device, threads, settings.cpu_precision)
            final = storage.join(settings.output, style, name)
            target = Path(final) if not storage.is_s3(final) else Path(folder, style, PurePosixPath(name).name)
            try:
                video.stylise_video(lambda frames: stylize.stylise_frames(net, frames, device), source, target,
                                    batch_size=settings.batch_size, max_side=settings.max_side, out=sys.stderr)
            except video.VideoRejected as error:  # the clip itself: no other style would fare better
                data.record_skipped(ledger, {item["path"]: str(error)})  # raises TooManySkipped past the limit
                return written
            if storage.is_s3(final):
                with target.open("rb") as result:
                    storage.write_stream(final, result)
            written += 1
    return written
