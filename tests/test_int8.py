"""int8 copies of the models (factory/onnx_int8.py): quantised from the ONNX export, published only where
a style's figures on the held-out photos stay within 5% of fp32's, and run where asked or where the
cores have int8 units. No Ray; a training run that publishes them is in tests/test_training.py, their
speed and quality at each width in bench/int8.py."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from factory import images, onnx_int8, onnx_model, publishing, registry
from factory.family import StyleFamily
from factory.held_out import HeldOutPhotos
from factory.transform_net import TransformNet
from factory_runs import REPO_ROOT, STYLES
from serve.settings import PoolSettings
from serve.style_model import StyleModel

CONTENT = sorted((REPO_ROOT / "data" / "samples" / "content").iterdir())
HELD_OUT = REPO_ROOT / "data" / "samples" / "held_out"


@pytest.fixture(scope="module")
def export() -> tuple[TransformNet, bytes]:
    torch.manual_seed(5)
    net = TransformNet(width=0.5).eval()
    return net, onnx_model.export(net)


def calibration() -> list[np.ndarray]:
    return [onnx_int8.calibration_batch(images.decode_rgb(path.read_bytes(), max_pixels=images.CONFIG_IMAGE_MAX_PIXELS)) for path in CONTENT]


def held_out_photos() -> HeldOutPhotos:
    photos = {name: images.fit_within(Image.open(HELD_OUT / name).convert("RGB"), 128) for name in ("chelsea.png", "rocket.jpg")}
    return HeldOutPhotos(photos["chelsea.png"], "chelsea.png", photos)


def test_the_int8_copy_quantises_every_conv_before_the_upsampling_and_stays_near_fp32(export):
    net, fp32 = export
    int8 = onnx_int8.quantise(fp32, calibration())
    graph = onnx.load_from_string(int8).graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    produced_by = {output: node for node in graph.node for output in node.output}
    # int8 weights, dequantised into the conv; the two upsampling convs' and the output conv's are plain fp32 initializers
    quantised = [getattr(produced_by.get(conv.input[1]), "op_type", None) == "DequantizeLinear" for conv in convs]
    assert quantised == [True] * (len(convs) - 3) + [False] * 3
    assert len(int8) < len(fp32) / 2  # int8 weights, a quarter of the bytes, but for the fp32 upsampling convs (measured: 36%)
    photo = torch.from_numpy(onnx_int8.calibration_batch(Image.open(HELD_OUT / "rocket.jpg")))
    with torch.inference_mode():
        expected = net(photo)
        got = onnx_model.OnnxTransformNet(int8, precision="int8")(photo)
    assert got.shape == expected.shape
    # Measured: a mean error of 7.4 of 255 against the picture's spread (sd) of 45, a correlation of 0.975 (a random network).
    assert float((got - expected).abs().mean()) < 0.25 * float(expected.std())
    assert float(torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1]) > 0.9


def test_a_familys_export_and_an_empty_calibration_are_refused_saying_why():
    family_export = onnx_model.export(StyleFamily(["a", "b"]).net.eval())
    with pytest.raises(ValueError, match="single style's export"):
        onnx_int8.quantise(family_export, calibration())
    with pytest.raises(ValueError, match="at least one content photo"):
        onnx_int8.quantise(onnx_model.export(TransformNet(width=0.25).eval()), [])


def test_a_copy_that_keeps_the_figures_is_published_and_one_that_does_not_is_left_out(export):
    net, fp32 = export
    photos = held_out_photos()
    painting = Image.open(STYLES / "udnie.jpg").convert("RGB")
    figures = publishing.held_out_figures(net, photos, painting)
    copy, check = publishing.int8_copy(fp32, calibration(), photos, painting, figures)
    assert check["published"] and copy is not None and max(check["relative_change"].values()) <= onnx_int8.INT8_TOLERANCE
    # Calibrated on a black frame, every activation's range is that of nothing: the copy's pictures are wrong.
    black = [np.zeros((1, 3, 64, 64), np.float32)]
    copy, check = publishing.int8_copy(fp32, black, photos, painting, figures)
    assert copy is None and not check["published"] and max(check["relative_change"].values()) > onnx_int8.INT8_TOLERANCE
    assert publishing.int8_copy(fp32, [], photos, painting, figures) == (None, {"published": False, "reason": "no content photo to calibrate on"})
    copy, check = publishing.int8_copy(fp32, calibration(), photos, painting, figures, width=0.25)  # int8 measured slower there
    assert copy is None and "width 0.25" in check["reason"]


def test_the_registry_serves_the_int8_copy_only_where_asked_and_published(export, tmp_path):
    net, fp32 = export
    int8 = onnx_int8.quantise(fp32, calibration())
    root = str(tmp_path)
    with_copy = registry.read_metadata(root, "a", registry.publish(root, "a", net.state_dict(), {}, b"t", b"p", onnx_model=fp32, int8_onnx_model=int8))
    without = registry.read_metadata(root, "b", registry.publish(root, "b", net.state_dict(), {}, b"t", b"p", onnx_model=fp32))
    assert registry.read_file(root, "a", registry.INT8_ONNX_FILE) == int8
    photo = torch.rand(1, 3, 32, 40) * 255
    with torch.inference_mode():
        int8_output = onnx_model.OnnxTransformNet(int8)(photo)
        fp32_output = onnx_model.OnnxTransformNet(fp32)(photo)
        for metadata, precision, expected_precision, expected in [(with_copy, "int8", "int8", int8_output), (with_copy, "fp32", "fp32", fp32_output),
                                                                  (without, "int8", "fp32", fp32_output)]:
            loaded = registry.load_onnx_net(root, metadata, precision)
            assert loaded.precision == expected_precision
            assert torch.equal(loaded(photo), expected)
    (tmp_path / "a" / "versions" / with_copy["version"] / registry.INT8_ONNX_FILE).write_bytes(fp32)  # swapped on storage
    with pytest.raises(ValueError, match="sha256"):
        registry.load_onnx_net(root, with_copy, "int8")


def test_a_pool_replica_runs_the_int8_copy_when_its_runtime_says_so(export, tmp_path):
    net, fp32 = export
    root = str(tmp_path)
    version = registry.publish(root, "a", net.state_dict(), {}, b"t", b"p", onnx_model=fp32, int8_onnx_model=onnx_int8.quantise(fp32, calibration()))
    assert PoolSettings(cpu_runtime="onnxruntime-int8").cpu_runtime == "onnxruntime-int8"
    int8 = StyleModel(root, "a", version, device=torch.device("cpu"), cpu_precision="int8")
    fp32_model = StyleModel(root, "a", version, device=torch.device("cpu"))
    assert (int8.runtime, fp32_model.runtime) == ("onnxruntime-int8", "onnxruntime")
    photo = torch.rand(3, 48, 40) * 255
    with torch.inference_mode():
        assert not torch.equal(int8.forward_by_size([photo])[0], fp32_model.forward_by_size([photo])[0])


@pytest.mark.parametrize("flags, expected", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni", True),
    ("flags\t\t: fpu sse2 avx2 amx_int8 amx_tile", True),
    ("Features\t: fp asimd asimddp", True),
    ("flags\t\t: fpu sse2 avx2 avx512f", False),
    ("", False),
])
def test_auto_means_int8_only_on_cores_with_int8_units(flags, expected):
    assert onnx_int8.cpu_has_int8_units(f"processor\t: 0\n{flags}\n") is expected


def test_a_precision_is_one_of_three():
    assert onnx_int8.cpu_precision("fp32") == "fp32" and onnx_int8.cpu_precision("int8") == "int8"
    assert onnx_int8.cpu_precision("auto") == ("int8" if onnx_int8.cpu_has_int8_units() else "fp32")
    with pytest.raises(ValueError, match="expected one of auto, fp32, int8"):
        onnx_int8.cpu_precision("fp16")
