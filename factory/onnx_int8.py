"""An int8 copy of a network's ONNX export, by static quantisation calibrated on content photos. No Ray.

ONNX Runtime's static quantisation (QDQ format) stores each convolution's weights as int8, one scale
per output channel, and its input activations as uint8 with a range fixed beforehand from the
activations the network produces on calibration photos; on cores with int8 dot-product units (AVX-512
VNNI, AMX) the convolutions then run on them. Instance norm, the residual sums, upsampling and the
convolutions after it (fp32_convs) stay in float. Whether a style keeps its look in int8 is measured, not assumed: factory/publishing.py publishes
the copy only where its quality figures stay within INT8_TOLERANCE of the fp32 export's
(bench/int8.py measures speed and quality at each width).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np

CPU_PRECISIONS = ("auto", "fp32", "int8")
# CPU flags of int8 dot-product units (x86 VNNI and AMX, Arm's dot product), what int8 convolutions are
# fast on: "auto" runs int8 only on cores that have one (bench/int8.py measures the gain where they do).
INT8_CPU_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}

# The largest relative change of a quality figure (colour shift, structure kept) int8 may make, relative
# to the fp32 figure or to FIGURE_FLOOR where that is smaller: colour shift can be near 0 (a style that
# barely moved the colours), where 5% of it would be no change at all.
INT8_TOLERANCE = 0.05
FIGURE_FLOOR = 0.1
# Widths whose int8 copy ran faster than fp32 (bench/int8.py, 2-core Xeon with AVX-512 VNNI and AMX,
# 2026-12-06: x1.47 at 512² at width 1.0, x1.08 at 0.5, x0.85 at 0.25): a narrow network's convs are too
# small for int8 to win back the quantise and dequantise steps around them. Other widths get no copy.
INT8_WIDTHS = (1.0, 0.5)
# Calibration photos are cut to this side: large enough for a painting's strokes, small enough to be quick.
CALIBRATION_SIDE = 256


def cpu_has_int8_units(cpuinfo: str | None = None) -> bool:
    """Whether this machine's cores have int8 dot-product units (from /proc/cpuinfo's flags; False where unknown)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.split(":")[0].strip() in ("flags", "Features") for flag in line.split(":", 1)[1].split()}
    return bool(flags & INT8_CPU_FLAGS)


def relative_change(fp32: float, int8: float) -> float:
    """How far a quality figure moved in int8, relative to fp32's figure (FIGURE_FLOOR at least)."""
    return abs(int8 - fp32) / max(abs(fp32), FIGURE_FLOOR)


def cpu_precision(requested: str = "auto") -> str:
    """"fp32" or "int8": what a CPU model should run in. "auto": int8 where the cores have int8 units.
    A version without an int8 copy (its figures moved too much in int8, a family's, or published before
    int8) runs in fp32 whatever this says."""
    if requested not in CPU_PRECISIONS:
        raise ValueError(f"CPU precision {requested!r}: expected one of {', '.join(CPU_PRECISIONS)}")
    if requested == "auto":
        return "int8" if cpu_has_int8_units() else "fp32"
    return requested


class _Photos:
    """ONNX Runtime's CalibrationDataReader protocol: one {"images": (1, 3, H, W) float32} at a time."""

    def __init__(self, photos: list[np.ndarray]):
        self._batches = iter([{"images": photo} for photo in photos])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # not called by static quantisation; the protocol has it
        raise NotImplementedError


def calibration_batch(photo) -> np.ndarray:
    """A photo (PIL, or (H, W, 3) uint8) as the export's input: (1, 3, H, W) float32 0..255, its longer side
    at most CALIBRATION_SIDE, its sides a multiple of 4."""
    from PIL import Image

    from factory import images

    photo = Image.fromarray(photo) if isinstance(photo, np.ndarray) else photo
    photo = images.fit_within(photo.convert("RGB"), CALIBRATION_SIDE)
    photo = photo.crop((0, 0, photo.width - photo.width % 4, photo.height - photo.height % 4))
    return np.ascontiguousarray(np.asarray(photo, dtype=np.float32).transpose(2, 0, 1)[None])


def fp32_convs(graph) -> list[str]:
    """The convolutions left in fp32: those after the first upsampling (Resize), the full-resolution end
    that draws the pixels; the output conv alone where there is none. Measured on the default run's
    models (width 1.0, seed 0, 6 held-out photos): with only the output conv in fp32 (itself the worst
    one: 14.9 of 255 mean pixel error quantised, 6.6 not), structure kept moved 6-12% in int8; with the
    upsampling convs too, 1-3%, for about a quarter of the multiply-adds left in fp32."""
    nodes = list(graph.graph.node)
    resize = next((index for index, node in enumerate(nodes) if node.op_type == "Resize"), None)
    convs = [node.name for node in nodes[resize or 0:] if node.op_type == "Conv"]
    return convs if resize is not None else convs[-1:]


@contextlib.contextmanager
def _without_preprocessing_advice():
    """ONNX Runtime's quantiser logs "consider pre-processing" on the root logger at every call. That
    step (shape inference and graph fusions) is not taken: bench/int8.py's figures are without it."""
    def not_the_advice(record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(not_the_advice)
    try:
        yield
    finally:
        root.removeFilter(not_the_advice)


def quantise(model: bytes, photos: list[np.ndarray]) -> bytes:
    """The int8 copy of a single style's export (onnx_model.export), calibrated on photos
    (calibration_batch's). A family's export, which takes style vectors too, is not quantised here."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not photos:
        raise ValueError("int8 calibration needs at least one content photo")
    graph = onnx.load_from_string(model)
    if [item.name for item in graph.graph.input] != ["images"]:
        raise ValueError("only a single style's export (one input, 'images') is quantised; a family's takes style vectors too")
    with tempfile.TemporaryDirectory(prefix="int8-") as folder, _without_preprocessing_advice():
        output = Path(folder, "model.int8.onnx")
        quantize_static(graph, output, _Photos(photos), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=fp32_convs(graph), per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        return output.read_bytes()
