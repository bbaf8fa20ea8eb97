"""The local stylise command on a published model: any size, any input format, clear errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from factory import registry, stylize
from factory.transform_net import TransformNet


@pytest.fixture
def published(tmp_path):
    torch.manual_seed(0)
    net = TransformNet()
    registry.publish(str(tmp_path / "registry"), "mosaic", net.state_dict(), {"loss_network": {"random_weights": False}}, b"t", b"p")
    return tmp_path / "registry", net.eval()


def test_stylises_at_full_size_with_the_published_weights(published, tmp_path):
    root, net = published
    photo = np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert stylize.main(["--registry", str(root), "--style", "mosaic", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out.png")]) == 0
    result = np.asarray(Image.open(tmp_path / "out.png"))
    assert result.shape == (45, 70, 3)
    with torch.no_grad():
        expected = net(torch.from_numpy(photo).permute(2, 0, 1).float().unsqueeze(0))[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1  # lossless PNG out


def test_many_inputs_go_to_a_folder_and_max_side_downscales(published, tmp_path):
    root, _ = published
    for name in ("a.jpg", "b.webp"):
        Image.new("RGB", (200, 100), (200, 30, 30)).save(tmp_path / name)
    code = stylize.main(["--registry", str(root), "--style", "mosaic", "--max-side", "64",
                         str(tmp_path / "a.jpg"), str(tmp_path / "b.webp"), "-o", str(tmp_path / "out")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-mosaic.jpg", "b-mosaic.jpg"]
    assert Image.open(tmp_path / "out" / "a-mosaic.jpg").size == (64, 32)


def test_unknown_style_lists_the_available_ones(published, tmp_path, capsys):
    root, _ = published
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert stylize.main(["--registry", str(root), "--style", "nope", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.jpg")]) == 2
    assert "available styles: mosaic" in capsys.readouterr().err


def test_a_bad_input_is_reported_and_the_others_still_done(published, tmp_path, capsys):
    root, _ = published
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    code = stylize.main(["--registry", str(root), "--style", "mosaic", str(tmp_path / "broken.jpg"), str(tmp_path / "good.png"), "-o", str(tmp_path / "out")])
    assert code == 1
    assert "skipping" in capsys.readouterr().err and (tmp_path / "out" / "good-mosaic.jpg").exists()


def test_runs_as_a_command(published, tmp_path):
    root, _ = published
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    done = subprocess.run([sys.executable, "-m", "factory.stylize", "--registry", str(root), "--style", "mosaic",
                           str(tmp_path / "a.png"), "-o", str(tmp_path / "a-out.jpg")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a-out.jpg").read_bytes().startswith(b"\xff\xd8")
