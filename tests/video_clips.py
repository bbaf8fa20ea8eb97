"""Clips the video tests write with PyAV (H.264 and AAC, no ffmpeg binary), good and bad, and what they read back."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_clip(path: Path, frames: int = 24, size=(64, 48), rate: int = 12, sound: bool = True, rotation: int = 0) -> list[np.ndarray]:
    """An H.264 clip of a slow pan over a gradient (with a white marker top left), with an AAC tone."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    written = []
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        audio = output.add_stream("aac", rate=8000) if sound else None
        if audio:
            audio.layout = "mono"
        for index in range(frames):
            pixels = np.stack([(x * 4 + index * 3) % 256, (y * 4) % 256, np.full_like(x, 90)], axis=-1).astype(np.uint8)
            pixels[:8, :16] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            output.mux(stream.encode(frame))
            written.append(pixels)
        output.mux(stream.encode(None))
        if audio:
            samples = int(8000 * frames / rate)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 8000)).astype(np.float32)[None]
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 8000, start
                output.mux(audio.encode(chunk))
            output.mux(audio.encode(None))
    return written


def decoded(path: Path) -> tuple[list[np.ndarray], list[int], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(frame.to_ndarray(format="rgb24"), frame.pts) for frame in container.decode(stream)]
        return [pixels for pixels, _ in frames], [pts for _, pts in frames], stream.average_rate


def sound_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


def truncated(path: Path) -> Path:
    write_clip(path, frames=48, size=(64, 48), sound=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def not_a_video(path: Path) -> Path:
    path.write_text("a text file named like a clip")
    return path


def zero_length(path: Path) -> Path:
    """A Matroska file with a video stream and a second of silence, but no frame."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        sound = output.add_stream("aac", rate=8000)
        sound.layout = "mono"
        for start in range(0, 8192, 1024):
            silence = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            silence.sample_rate, silence.pts = 8000, start
            output.mux(sound.encode(silence))
        output.mux(sound.encode(None))
        output.mux(stream.encode(None))
    return path


def huge(path: Path) -> Path:
    write_clip(path, frames=1, size=(4112, 4112), sound=False)
    return path
