"""The ONNX export runs in ONNX Runtime within 1 of 255 of the torch network, at any size, and is
published, checked and picked up by CPU serving and the command line."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from factory import images, onnx_model, registry, stylize
from factory.transform_net import TransformNet
from serve.style_model import StyleModel
from serving import STYLES


@pytest.fixture(scope="module")
def net_and_export():
    torch.manual_seed(5)
    net = TransformNet().eval()
    return net, onnx_model.export(net)


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 130, 97), (1, 3, 1, 1), (1, 3, 5, 700)],
                         ids=["64x96", "batch-of-2-odd-sides", "1x1", "5x700"])
def test_onnx_runtime_matches_torch_within_one_of_255(net_and_export, shape):
    net, exported = net_and_export
    images_in = torch.rand(*shape, generator=torch.Generator().manual_seed(1)) * 255
    with torch.inference_mode():
        expected = net(images_in)
    got = onnx_model.OnnxTransformNet(exported)(images_in)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1.0


def publish(root, net, exported, name="alpha"):
    picture = images.encode(images.fit_within(Image.open(STYLES / "udnie.jpg").convert("RGB"), 64))
    return registry.publish(str(root), name, net.state_dict(), {"steps": 1}, picture, picture, onnx_model=exported)


def test_cpu_serving_runs_the_published_export_and_checks_its_hash(net_and_export, tmp_path):
    net, exported = net_and_export
    version = publish(tmp_path, net, exported)
    model = StyleModel(str(tmp_path), "alpha", version, device=torch.device("cpu"))
    assert model.runtime == "onnxruntime"
    photo = torch.rand(3, 48, 40) * 255
    with torch.inference_mode():
        assert (model.forward_by_size([photo])[0] - net(photo.unsqueeze(0))[0]).abs().max() <= 1.0
    assert StyleModel(str(tmp_path), "alpha", version, device=torch.device("cpu"), fast=False).runtime == "torch"

    onnx_path = tmp_path / "alpha" / "versions" / version / registry.ONNX_FILE
    onnx_path.write_bytes(exported[:-10] + b"0123456789")  # a corrupted copy must never run
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        StyleModel(str(tmp_path), "alpha", version, device=torch.device("cpu"))


def test_a_version_published_without_an_export_still_serves_with_torch(net_and_export, tmp_path):
    net, _ = net_and_export
    version = publish(tmp_path, net, None)
    assert StyleModel(str(tmp_path), "alpha", version, device=torch.device("cpu")).runtime == "torch"


def test_the_command_line_stylises_through_the_export_on_cpu(net_and_export, tmp_path, capsys):
    net, exported = net_and_export
    publish(tmp_path / "registry", net, exported)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 44, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.png")
    assert stylize.main(["--style", "alpha", "--registry", str(tmp_path / "registry"), "--device", "cpu",
                         str(tmp_path / "photo.png"), "-o", str(tmp_path / "out.png")]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    with torch.inference_mode():
        expected = np.asarray(images.to_image(net(images.to_tensor(photo).unsqueeze(0))[0]), int)
    assert np.abs(np.asarray(Image.open(io.BytesIO((tmp_path / "out.png").read_bytes())), int) - expected).max() <= 1
