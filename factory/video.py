"""Stylising a video file: frames decoded with PyAV (FFmpeg's libraries), stylised in batches, encoded
at the source's frame rate and size, the source's sound copied as it is. No Ray.

    python -m factory.stylize --style starry_night clip.mp4 -o clip-starry.mp4

Frames keep their timestamps, so sound and picture stay in step whatever the frame rate (variable
ones too). A rotated phone clip (its display matrix) is stylised upright and written upright. The
result is written under a hidden name and renamed when complete: a clip that fails halfway (truncated,
undecodable) leaves nothing that looks finished.
"""

from __future__ import annotations

import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
# Containers we write, each with the video codec it carries best.
OUTPUT_CODECS = {".mp4": "libx264", ".mov": "libx264", ".m4v": "libx264", ".mkv": "libx264"}
# A frame up to 4096 x 4096: past DCI 4K. The network's activations at that size are gigabytes.
MAX_FRAME_PIXELS = 4096 * 4096
CRF = "17"  # x264's quality (lower is better; 17 looks lossless): stylised texture is costly to compress well
PROGRESS_EVERY_S = 5.0


class VideoRejected(ValueError):
    """The file is not a video we can stylise; the message says why."""


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def stylise_video(stylise_frames, source: Path, target: Path, batch_size: int = 4, max_side: int = 0, out=sys.stderr) -> dict:
    """stylise_frames: (B, H, W, 3) uint8 -> the same, stylised. max_side: frames shrunk so the longer
    side is at most this (0: the source's size). Returns {"frames", "seconds", "width", "height", ...}."""
    import av

    if target.suffix.lower() not in OUTPUT_CODECS:
        raise VideoRejected(f"output {target} needs an extension among {', '.join(OUTPUT_CODECS)}")
    try:
        container = av.open(str(source))
    except av.error.FFmpegError as error:
        raise VideoRejected(f"not a video we can read ({error.strerror or error})") from None
    partial = target.with_name(f".{target.stem}.partial{target.suffix}")
    try:
        with container:
            if not container.streams.video:
                raise VideoRejected("no video stream in it (a sound file, or a clip with no frames)")
            video = container.streams.video[0]
            width, height = video.codec_context.width, video.codec_context.height
            if width * height > MAX_FRAME_PIXELS:
                raise VideoRejected(f"{width}x{height} frames are over the limit of {MAX_FRAME_PIXELS} pixels")
            if width < 2 or height < 2:
                raise VideoRejected(f"degenerate frame size {width}x{height}")
            target.parent.mkdir(parents=True, exist_ok=True)
            summary = _transcode(container, video, stylise_frames, partial, batch_size, max_side, out)
        os.replace(partial, target)
    except av.error.FFmpegError as error:
        partial.unlink(missing_ok=True)
        raise VideoRejected(f"could not decode it to the end ({error.strerror or error}): truncated or corrupt") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return summary


def _transcode(container, video, stylise_frames, partial: Path, batch_size: int, max_side: int, out) -> dict:
    import av

    audio_streams = list(container.streams.audio)
    declared = video.frames  # 0 where the container does not say
    rate = video.average_rate or video.guessed_rate
    if not rate:
        raise VideoRejected("the video declares no frame rate")
    progress = _Progress(declared, out)
    with av.open(str(partial), "w") as output:
        copies = {stream.index: output.add_stream_from_template(stream) for stream in audio_streams}
        encoder, last_pts = None, None
        held: list = []  # sound that comes before the first frame: the output's header needs every stream first
        pending: list = []  # (pixels, pts) of frames waiting for a full batch

        def flush() -> None:
            stylised = stylise_frames(np.stack([pixels for pixels, _ in pending]))
            for pixels, (_, pts) in zip(stylised, pending):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[: encoder.height, : encoder.width]), format="rgb24")
                frame.pts, frame.time_base = pts, video.time_base
                output.mux(encoder.encode(frame))
            progress.add(len(pending))
            pending.clear()

        for packet in container.demux(video, *audio_streams):
            if packet.stream.index in copies:
                if packet.dts is not None:  # the demuxer's flush packets carry nothing
                    packet.stream = copies[packet.stream.index]
                    held.append(packet) if encoder is None else output.mux(packet)
                continue
            for frame in packet.decode():
                pixels = _shrunk(_upright(frame.to_ndarray(format="rgb24"), frame), max_side)
                if encoder is None:
                    encoder = _video_encoder(output, partial.suffix.lower(), rate, video.time_base, pixels.shape)
                    output.mux(held)
                if pending and pixels.shape != pending[-1][0].shape:
                    flush()  # a clip whose frames change size: each run of one size is a batch
                pending.append((pixels, frame.pts))
                last_pts = frame.pts
                if len(pending) == batch_size:
                    flush()
        if pending:
            flush()
        if encoder is None:
            raise VideoRejected("no frame in it (a zero-length clip)")
        output.mux(encoder.encode(None))
    if declared and progress.done < declared:
        raise VideoRejected(f"only {progress.done} of its {declared} frames could be decoded: truncated")
    declared_end = _declared_end(container, video, audio_streams)
    if declared_end and last_pts is not None and (last_pts - (video.start_time or 0)) * video.time_base < declared_end - 2 / rate:
        raise VideoRejected(f"its frames end at {float((last_pts - (video.start_time or 0)) * video.time_base):.2f} s of the "
                            f"{float(declared_end):.2f} s it declares: truncated")
    return {"frames": progress.done, "seconds": time.monotonic() - progress.started, "width": encoder.width,
            "height": encoder.height, "rate": str(rate), "audio_streams": len(audio_streams)}


def _declared_end(container, video, audio_streams) -> Fraction | None:
    """Where the picture should end, in seconds: the stream's duration (MP4 says), else the file's (MKV
    says only that) when there is no sound to outlast the picture; None where neither is known."""
    if video.duration:
        return video.duration * video.time_base
    if container.duration and not audio_streams:
        return Fraction(container.duration, 1_000_000)  # AV_TIME_BASE
    return None


def _video_encoder(output, suffix: str, rate, time_base, shape: tuple):
    """H.264 at the source's rate, yuv420p (what every player plays: so even sides, a last odd row or
    column dropped)."""
    stream = output.add_stream(OUTPUT_CODECS[suffix], rate=rate)
    stream.height, stream.width = shape[0] - shape[0] % 2, shape[1] - shape[1] % 2
    stream.pix_fmt = "yuv420p"
    stream.time_base = time_base
    stream.options = {"crf": CRF}
    return stream


def _upright(pixels: np.ndarray, frame) -> np.ndarray:
    """The frame as it is meant to be seen: a phone clip's display matrix turns it by 90, 180 or 270
    degrees (FFmpeg's rotation is counterclockwise, as np.rot90 turns)."""
    rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    return np.rot90(pixels, rotation // 90) if rotation in (90, 180, 270) else pixels


def _shrunk(pixels: np.ndarray, max_side: int) -> np.ndarray:
    if not max_side or max(pixels.shape[:2]) <= max_side:
        return pixels
    from factory import images

    return np.asarray(images.fit_within(images.Image.fromarray(pixels), max_side))


class _Progress:
    """A line every few seconds: frames done of the clip's, frames per second and an ETA."""

    def __init__(self, total: int, out):
        self.total, self.out, self.done = total, out, 0
        self.started = self.last = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rate = self.done / (now - self.started)
            of = f"/{self.total} ({self.done / self.total:.0%})" if self.total else ""
            eta = f", ETA {int((self.total - self.done) / rate)} s" if self.total and rate else ""
            print(f"frame {self.done}{of}, {rate:.1f} frames/s{eta}", file=self.out, flush=True)
