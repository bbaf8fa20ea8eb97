"""A TransformNet exported to ONNX and run with ONNX Runtime: the CPU fast path. No Ray.

On 2 CPU cores ONNX Runtime ran the network in about half of eager PyTorch's time (issue 11's
measurement; bench/cpu_stylise.py measures it side by side). The export holds the network proper
(TransformNet.core), with batch, height and width dynamic; padding to a multiple of 4 and enlarging
tiny images stay in torch (transform_net.stylise_any_size), so every size runs through one graph.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from factory.transform_net import TransformNet, stylise_any_size

OPSET = 17


class _Core(torch.nn.Module):
    def __init__(self, net: TransformNet):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.core(images, style)


def export(net: TransformNet) -> bytes:
    """The network's ONNX graph, weights included (about the size of model.pt). A style family's network
    (conditional) takes a second input, "style": each image's style vector (B, style_size), so one
    file serves every style of the family and any blend of them.

    Exported with the TorchScript exporter: 0.7 s a model on 2 cores, against 12 s for the dynamo
    exporter, which gave the same outputs (within 0.0008 of 255) but needs onnxscript too.
    """
    core = _Core(net.cpu().eval())
    example = (torch.rand(1, 3, 64, 64) * 255,)
    names, dynamic = ["images"], {"images": {0: "batch", 2: "height", 3: "width"}, "stylised": {0: "batch", 2: "height", 3: "width"}}
    if net.conditional:
        example += (torch.ones(1, net.style_size),)
        names.append("style")
        dynamic["style"] = {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice; it is what we measured
        torch.onnx.export(core, example, buffer, dynamo=False, opset_version=OPSET, input_names=names,
                          output_names=["stylised"], dynamic_axes=dynamic)
    return buffer.getvalue()


class OnnxTransformNet:
    """Callable like a TransformNet in eval mode: (B, 3, H, W) 0..255 -> stylised, any size, on the CPU."""

    def __init__(self, model: bytes, threads: int | None = None, memory_arena: bool = True, style_vector: torch.Tensor | None = None,
                 precision: str = "fp32"):
        """style_vector: a family style's, for a family's export, fed with every image; without one, a
        family's export takes each image's vector with the call (a pool replica's family model).
        precision: what the graph computes in, "fp32" or "int8" (factory/onnx_int8.py), as a label for logs."""
        import onnxruntime  # here: only CPU replicas and the CLI need it

        self.precision = precision
        self.style_vector = None if style_vector is None else style_vector.detach().float().cpu().numpy()[None]
        options = onnxruntime.SessionOptions()
        # As many threads as torch was given (Ray sets it from the CPUs a replica reserved), unless told.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # The arena keeps a run's activations for the next one: faster, but 49 MB a session against 18.5
        # without it (after a 256x170 image), which decides how many styles a pool replica holds.
        options.enable_cpu_mem_arena = memory_arena
        options.enable_mem_pattern = memory_arena
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def core(self, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """style: (B, style_size), each image's vector, for a family's export loaded without one."""
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        inputs = {"images": array}
        if style is not None:
            inputs["style"] = style.detach().to("cpu", torch.float32).contiguous().numpy()
        elif self.style_vector is not None:
            inputs["style"] = np.repeat(self.style_vector, array.shape[0], axis=0)
        (stylised,) = self.session.run(None, inputs)
        return torch.from_numpy(np.asarray(stylised))

    def __call__(self, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        return stylise_any_size(lambda batch: self.core(batch, style), images)
