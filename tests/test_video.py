"""Stylising a video: every frame through the published model at the source's rate and size, its
sound copied bit for bit, a rotated phone clip written upright, bad clips refused with nothing left
behind. Real clips written with PyAV (H.264 and AAC), the real CLI."""

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from factory import registry, stylize, video
from serving import publish_random_style
from video_clips import decoded, huge, not_a_video, sound_packets, truncated, write_clip, zero_length


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("video") / "registry"
    publish_random_style(root, "mosaic", seed=3, with_onnx=True, width=0.25)
    return str(root)


def test_a_clip_is_stylised_frame_by_frame_at_its_rate_with_its_sound_copied(published, tmp_path):
    write_clip(tmp_path / "clip.mp4")
    assert stylize.main(["--registry", published, "--style", "mosaic", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "out.mp4")]) == 0
    source_frames, source_pts, source_rate = decoded(tmp_path / "clip.mp4")
    frames, pts, rate = decoded(tmp_path / "out.mp4")
    assert (len(frames), rate, frames[0].shape) == (len(source_frames), source_rate, source_frames[0].shape)
    assert pts == source_pts  # timestamps kept: the sound stays in step
    assert sound_packets(tmp_path / "out.mp4") == sound_packets(tmp_path / "clip.mp4")
    # Each frame is the model's output for the decoded source frame, give or take H.264's loss.
    net = registry.load_onnx_net(published, registry.read_metadata(published, "mosaic"))
    for index in (0, len(frames) - 1):
        with torch.inference_mode():
            expected = net(torch.from_numpy(source_frames[index].copy()).permute(2, 0, 1).float()[None])[0].permute(1, 2, 0).numpy()
        error = np.abs(frames[index].astype(float) - expected).mean()
        assert error < 12, error
        assert np.abs(frames[index].astype(float) - source_frames[index]).mean() > 3 * error  # stylised, not copied


def test_a_rotated_phone_clip_is_stylised_upright(published, tmp_path):
    write_clip(tmp_path / "phone.mp4", frames=6, sound=False, rotation=90)
    identity = lambda frames: frames  # noqa: E731: the pixels as they arrive, to see where the marker went
    video.stylise_video(identity, tmp_path / "phone.mp4", tmp_path / "upright.mp4")
    frames, _, _ = decoded(tmp_path / "upright.mp4")
    assert frames[0].shape == (64, 48, 3)  # 64 wide, 48 high, turned a quarter counterclockwise
    marker = frames[0].min(axis=2) > 200
    assert marker[-16:, :8].mean() > 0.8 and marker[:16].mean() < 0.05  # the top-left marker is now bottom left
    with av.open(str(tmp_path / "upright.mp4")) as container:
        assert next(container.decode(video=0)).rotation == 0  # upright pixels, no turn left for the player


def test_video_to_a_folder_in_two_styles(published, tmp_path):
    publish_random_style(Path(published), "udnie", seed=4, with_onnx=True, width=0.25)
    write_clip(tmp_path / "clip.mov", frames=4, sound=False)
    assert stylize.main(["--registry", published, "--style", "mosaic,udnie", str(tmp_path / "clip.mov"), "-o", str(tmp_path / "out")]) == 0
    first, _, _ = decoded(tmp_path / "out" / "clip-mosaic.mp4")
    second, _, _ = decoded(tmp_path / "out" / "clip-udnie.mp4")
    assert len(first) == len(second) == 4 and np.abs(first[0].astype(int) - second[0]).mean() > 5


@pytest.mark.parametrize("make, suffix, reason", [
    (not_a_video, ".mp4", "not a video we can read"),
    (truncated, ".mkv", "truncated"),
    (zero_length, ".mkv", "no frame"),
    (huge, ".mp4", "over the limit of"),
])
def test_a_bad_clip_is_refused_saying_why_and_leaves_no_output(published, tmp_path, capsys, make, suffix, reason):
    clip = make(tmp_path / f"clip{suffix}")
    assert stylize.main(["--registry", published, "--style", "mosaic", str(clip), "-o", str(tmp_path / "out" / "result.mp4")]) == 1
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []  # no partial file either


def test_clips_are_told_from_photos_by_their_first_bytes(tmp_path):
    """What lets the HTTP API answer "a video" (415, with where to stylise it) rather than "not an image"."""
    from factory import images

    for suffix in (".mp4", ".mov", ".mkv"):
        write_clip(tmp_path / f"clip{suffix}", frames=2, sound=False)
        assert images.looks_like_video((tmp_path / f"clip{suffix}").read_bytes()), suffix
    heic_header = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"  # a phone photo in the same box layout
    assert not images.looks_like_video(heic_header)
    assert not images.looks_like_video(images.encode(images.Image.new("RGB", (8, 8))))
