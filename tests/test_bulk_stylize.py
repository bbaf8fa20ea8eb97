"""A bulk stylise job on Ray Data: every photo under a folder or S3 prefix, several styles, resumable,
unusable files skipped and listed. Real local Ray, real moto S3, the real CLI."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT, write_dirty_image_folder
from factory import bulk_stylize, registry, stylize
from serving import publish_random_family, publish_random_style
from video_clips import decoded, not_a_video, sound_packets, truncated, write_clip


@pytest.fixture(scope="module")
def two_styles(tmp_path_factory):
    """An own-network style with its ONNX export and a family's style: both ways a style is stored."""
    root = tmp_path_factory.mktemp("bulk") / "registry"
    publish_random_style(root, "mosaic", seed=1, with_onnx=True, width=0.25)
    publish_random_family(root, names=("udnie", "wave"), seed=2)
    return str(root)


def expected_pixels(registry_uri: str, style: str, photo: Path) -> np.ndarray:
    """What the model gives for the photo, through the published ONNX export (as a CPU bulk job runs it)."""
    net = registry.load_onnx_net(registry_uri, registry.read_metadata(registry_uri, style))
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    with torch.inference_mode():
        output = net(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()[None])[0]
    return output.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def photo_folder(folder: Path, count: int, size: int = 40) -> list[str]:
    rng = np.random.default_rng(count)
    names = []
    for index in range(count):
        name = f"{'sub/' if index % 2 else ''}p{index:03d}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size + index % 3 * 4, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def settled_outputs(folder: Path) -> dict[Path, int]:
    """The outputs in folder with their mtimes, once no new one has appeared for 2 s."""
    seen, since = None, time.time()
    while time.time() - since < 2:
        now = {path: path.stat().st_mtime_ns for path in folder.rglob("*.png")}
        if now != seen:
            seen, since = now, time.time()
        time.sleep(0.2)
    return seen


def test_every_usable_photo_is_stylised_in_each_style_and_the_bad_ones_are_listed(ray_local, two_styles, tmp_path):
    photos = tmp_path / "photos"
    write_dirty_image_folder(photos)
    out = tmp_path / "out"
    code = stylize.main(["--registry", two_styles, "--style", "mosaic,udnie", str(photos), "-o", str(out),
                         "--max-skipped-fraction", "0.5", "--workers", "2", "--batch-size", "4"])
    assert code == 0
    usable = sorted(str(path.relative_to(photos)) for path in photos.rglob("*")
                    if path.is_file() and path.name not in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "notes.txt"))
    for style in ("mosaic", "udnie"):
        written = sorted(str(path.relative_to(out / style)) for path in (out / style).rglob("*") if path.is_file())
        assert written == usable, style  # the same relative names, nested ones too
        for name in usable:
            assert Image.open(out / style / name).size == Image.open(photos / name).size
        png = "photo_000.png"  # lossless: the pixels are the model's
        difference = np.abs(np.asarray(Image.open(out / style / png)).astype(int) - expected_pixels(two_styles, style, photos / png))
        assert difference.max() <= 1
    assert not np.array_equal(np.asarray(Image.open(out / "mosaic" / "photo_000.png")), np.asarray(Image.open(out / "udnie" / "photo_000.png")))
    report = json.loads((out / bulk_stylize.REPORT_NAME).read_text())
    assert report["status"] == "complete" and report["outputs_written"] == 2 * len(usable)
    assert report["styles"] == {style: registry.current_version(two_styles, style) for style in ("mosaic", "udnie")}
    skipped = {Path(path).name: reason for path, reason in report["skipped"]["files"].items()}
    assert sorted(skipped) == ["corrupt.jpg", "empty.jpg", "notes.txt", "truncated.jpg"]
    assert skipped["empty.jpg"] == "empty file" and skipped["notes.txt"].startswith("not an image")


def test_a_job_killed_midway_resumes_without_redoing_what_it_wrote(ray_local, two_styles, tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    names = photo_folder(photos, 120, size=64)
    # The CLI as a user runs it, joined to the running Ray, one photo at a time so it is still busy when killed.
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO_ROOT)}
    job = subprocess.Popen([sys.executable, "-m", "factory.stylize", "--registry", two_styles, "--style", "wave", str(photos),
                            "-o", str(out), "--workers", "1", "--batch-size", "1"], cwd=REPO_ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while len(list((out / "wave").rglob("*.png"))) < 5:
        assert job.poll() is None, job.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the job wrote nothing in 2 minutes"
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    before = settled_outputs(out / "wave")  # a write Ray had started may still land
    assert 5 <= len(before) < len(names)

    assert stylize.main(["--registry", two_styles, "--style", "wave", str(photos), "-o", str(out)]) == 0
    assert sorted(str(path.relative_to(out / "wave")) for path in (out / "wave").rglob("*.png")) == sorted(names)
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in before.items())  # nothing written twice
    report = json.loads((out / bulk_stylize.REPORT_NAME).read_text())
    assert report["outputs_already_there"] == len(before) and report["outputs_written"] == len(names) - len(before)


def test_a_bucket_is_stylised_into_a_bucket_and_a_second_run_has_nothing_to_do(ray_local, two_styles, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bulk-photos")
    names = photo_folder(tmp_path / "photos", 6)
    write_clip(tmp_path / "photos" / "clip.mp4", frames=6)  # a clip too: copied to the task's disk, its result uploaded
    for name in [*names, "clip.mp4"]:
        s3.upload_file(str(tmp_path / "photos" / name), "bulk-photos", f"catalogue/{name}")
    arguments = ["--registry", two_styles, "--style", "mosaic", "--style", "wave", "s3://bulk-photos/catalogue/",
                 "-o", "s3://bulk-photos/stylised"]
    assert stylize.main(arguments) == 0
    for style in ("mosaic", "wave"):
        for name in names:
            body = s3.get_object(Bucket="bulk-photos", Key=f"stylised/{style}/{name}")["Body"].read()
            assert Image.open(io.BytesIO(body)).size == Image.open(tmp_path / "photos" / name).size
        s3.download_file("bulk-photos", f"stylised/{style}/clip.mp4", str(tmp_path / f"{style}.mp4"))
        assert len(decoded(tmp_path / f"{style}.mp4")[0]) == 6
    assert stylize.main(arguments) == 0
    report = json.loads(s3.get_object(Bucket="bulk-photos", Key=f"stylised/{bulk_stylize.REPORT_NAME}")["Body"].read())
    assert (report["outputs_written"], report["outputs_already_there"]) == (0, 2 * (len(names) + 1))


def test_a_folder_of_mostly_bad_files_stops_the_job_naming_the_limit(ray_local, two_styles, tmp_path, capsys):
    photos = tmp_path / "photos"
    photo_folder(photos, 2)
    for index in range(6):
        (photos / f"broken_{index}.jpg").write_bytes(b"not a photo at all")
    out = tmp_path / "out"
    assert stylize.main(["--registry", two_styles, "--style", "mosaic", str(photos), "-o", str(out), "--max-skipped-fraction", "0.2"]) == 1
    error = capsys.readouterr().err
    assert "more than data.max_skipped_fraction (20.0%)" in error and bulk_stylize.REPORT_NAME in error
    report = json.loads((out / bulk_stylize.REPORT_NAME).read_text())
    assert report["status"] == "stopped" and "max_skipped_fraction" in report["stopped_because"]
    assert len(report["skipped"]["files"]) >= 2


def test_clips_in_a_folder_are_stylised_with_their_sound_and_bad_ones_listed(ray_local, two_styles, tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photo_folder(photos, 2)
    source = write_clip(photos / "clip.mp4", frames=8)
    write_clip(photos / "sub" / "pan.mkv", frames=5, sound=False)
    truncated(photos / "cut.mkv")  # an MKV: a cut MP4 loses its index (at the end) and is "not a video"
    not_a_video(photos / "notes.mov")
    arguments = ["--registry", two_styles, "--style", "mosaic,udnie", str(photos), "-o", str(out), "--max-skipped-fraction", "0.5"]
    assert stylize.main(arguments) == 0
    for style in ("mosaic", "udnie"):
        frames, _, _ = decoded(out / style / "clip.mp4")
        assert len(frames) == len(source) and frames[0].shape == source[0].shape
        assert sound_packets(out / style / "clip.mp4") == sound_packets(photos / "clip.mp4")
        assert len(decoded(out / style / "sub" / "pan.mkv")[0]) == 5  # nested, in its own container
        assert not (out / style / "cut.mkv").exists() and not list((out / style).glob(".*"))  # nothing partial left behind
    assert np.abs(decoded(out / "mosaic" / "clip.mp4")[0][0].astype(int) - decoded(out / "udnie" / "clip.mp4")[0][0]).mean() > 5
    report = json.loads((out / bulk_stylize.REPORT_NAME).read_text())
    skipped = {Path(path).name: reason for path, reason in report["skipped"]["files"].items()}
    assert sorted(skipped) == ["cut.mkv", "notes.mov"] and "truncated" in skipped["cut.mkv"] and "not a video" in skipped["notes.mov"]
    assert report["outputs_written"] == 2 * 4  # two photos and two clips, in two styles

    assert stylize.main(arguments) == 0  # again: every clip's result is there, only the bad ones are tried again
    report = json.loads((out / bulk_stylize.REPORT_NAME).read_text())
    assert (report["outputs_written"], report["outputs_already_there"]) == (0, 8)


# Without Ray: what a job plans, and what it refuses before starting one.

def test_the_plan_leaves_out_outputs_already_written_and_hidden_files(two_styles, tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photo_folder(photos, 3)
    (photos / "scan.bmp").write_bytes(b"BM")  # a format we do not write: its result gets ".jpg" added
    (photos / "film.webm").write_bytes(b"clip")  # a clip in a container we do not write: its result gets ".mp4" added
    (photos / "big.mp4").write_bytes(b"x" * 2048)  # over max_video_bytes below
    (out / "udnie").mkdir(parents=True)
    (out / "udnie" / "film.webm.mp4").write_bytes(b"done")
    (photos / ".DS_Store").write_bytes(b"x")
    (out / "mosaic" / "sub").mkdir(parents=True)
    (out / "mosaic" / "p000.png").write_bytes(b"done")
    (out / "mosaic" / "sub" / ".p001.png.tmp123").write_bytes(b"half")  # an interrupted write: not done
    (out / "udnie" / "scan.bmp.jpg").write_bytes(b"done")
    plan = bulk_stylize.make_plan(bulk_stylize.BulkSettings(source=str(photos), output=str(out), styles=("mosaic", "udnie"), registry=two_styles,
                                                            max_video_bytes=1024))
    assert {item["relative"]: item["styles"] for item in plan.todo} == {
        "p002.png": "mosaic,udnie", "scan.bmp": "mosaic", "sub/p001.png": "mosaic,udnie", "p000.png": "udnie"}
    assert {item["relative"]: item["styles"] for item in plan.videos} == {"film.webm": "mosaic"}
    assert list(plan.oversized) == [str(photos / "big.mp4")] and "max_video_bytes=1024" in plan.oversized[str(photos / "big.mp4")]
    assert (plan.listed, plan.already_there) == (6, 3)


@pytest.mark.parametrize("arguments, message", [
    (["--style", "nope"], "available styles: mosaic, udnie, wave"),
    (["--style", "../etc"], "invalid style name"),
    (["--style", "mosaic", "--gpus-per-worker", "1.5"], "--gpus-per-worker must be"),
    (["--style", "mosaic", "--batch-size", "0"], "--batch-size must be 1..256"),
])
def test_bad_arguments_are_refused_before_ray_starts(two_styles, tmp_path, capsys, arguments, message):
    (tmp_path / "photos").mkdir()
    assert stylize.main(["--registry", two_styles, *arguments, str(tmp_path / "photos"), "-o", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_inside_the_source_is_refused(two_styles, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert stylize.main(["--registry", two_styles, "--style", "mosaic", str(tmp_path / "photos"), "-o", str(tmp_path / "photos" / "out")]) == 2
    assert "is inside the source" in capsys.readouterr().err
