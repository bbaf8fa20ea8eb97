"""A published style model ready to serve: loaded once, run on batches, checked for health. No Ray.

The fast path (on by default, GPU only) runs the network eagerly in fp16 with channels_last memory.
It is not compiled: on an H200 a torch.compile that is dynamic in height and width ran slower than
eager (423 against 569 images/s at 512x512, batch 16; issue 11's measurement), and a compile per
style would make the first request of every style in the pool wait for it. Bucketing sizes by padding
was measured and rejected: instance norm takes its statistics over the padding too, which moved
outputs by 6 of 255 on average (200x150 padded to 256x256), while fp16 moves them by 0.1
(tests/test_fast_path.py). On CPU, a version published with its ONNX export runs in ONNX Runtime
(factory/onnx_model.py; bench/cpu_stylise.py measures it against eager torch). Without one,
channels_last and fp16 measured slower than plain fp32; a dynamic torch.compile measured 1.3x faster
(0.50 s against 0.66 s at 512x512 on 2 cores) but costs about a minute of compiling when the replica
starts, so it is opt-in (compile_on_cpu) for dedicated styles.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from factory import registry
from factory.onnx_model import OnnxTransformNet
from factory.transform_net import TransformNet
from serve.settings import EndpointSettings

def reserved_device(gpu_ids: list) -> torch.device:
    """The device a replica reserved: a GPU only when Ray gave it one (`ray.get_gpu_ids()`). Ray 2.60
    no longer hides a node's GPUs from actors that reserved none, so `torch.cuda.is_available()` would
    put CPU replicas on GPUs they never reserved, and let a GPU replica with broken CUDA fall back to
    the CPU without a word."""
    if not gpu_ids:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"this replica reserved GPU(s) {list(gpu_ids)} but CUDA is unusable here (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}): check the node's NVIDIA driver (nvidia-smi) against it"
        )
    return torch.device("cuda")


def fast_network(net: torch.nn.Module) -> torch.nn.Module:
    """fp16 weights in channels_last layout: the tensor-core friendly form of the network."""
    return net.half().to(memory_format=torch.channels_last)


def fast_input(batch: torch.Tensor) -> torch.Tensor:
    return batch.half().contiguous(memory_format=torch.channels_last)


# Memory of one loaded model per byte of its fp32 weights: fp16 on a GPU holds half; an ONNX Runtime
# session without its arena measured 18.5 MB for 6.7 MB of weights (the graph's copy of the weights,
# ORT's own, and a run's working memory).
MEMORY_PER_WEIGHT_BYTE = {"cuda": 0.5, "onnxruntime": 2.8, "torch": 1.0}


def model_bytes(runtime: str) -> int:
    """Memory one loaded model takes as a pool replica runs it: runtime "cuda", "onnxruntime" or "torch"."""
    parameters = sum(parameter.numel() for parameter in TransformNet().parameters())
    return int(parameters * 4 * MEMORY_PER_WEIGHT_BYTE[runtime])


class StyleModel:
    def __init__(self, registry_uri: str, style: str, version: str, device: torch.device | None = None,
                 fast: bool = True, compile_on_cpu: bool = False, max_batch_pixels: int = EndpointSettings.max_batch_pixels,
                 cpu_threads: int | None = None, memory_arena: bool = True):
        self.max_batch_pixels = max_batch_pixels
        self.metadata = registry.read_metadata(registry_uri, style, version)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.fast = fast and self.device.type == "cuda"
        onnx = registry.load_onnx(registry_uri, self.metadata) if fast and self.device.type == "cpu" else None
        self.runtime = "onnxruntime" if onnx else "torch"
        if onnx:  # the CPU fast path, where the version has its export (older ones do not): model.pt is not read
            self.net = OnnxTransformNet(onnx, threads=cpu_threads, memory_arena=memory_arena)
            return
        self.net = registry.load_net(registry_uri, self.metadata).to(self.device)
        if self.fast:
            self.net = fast_network(self.net)
        elif compile_on_cpu and self.device.type == "cpu":
            self.net = torch.compile(self.net, dynamic=True)
            self.forward_by_size([torch.zeros(3, 64, 64)])  # compile now, not on a client's request

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.net(batch)
        return self.net(fast_input(batch)).float()

    def forward_by_size(self, tensors: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
        """(3, H, W) tensors in 0..255 -> stylised, in order; those of one size run as one batch.

        A batch that fails is run again one image at a time, so only the image that fails gets its
        exception (in its place in the list) and the requests batched with it still get their pictures.
        """
        groups = defaultdict(list)
        for index, tensor in enumerate(tensors):
            groups[tuple(tensor.shape)].append(index)
        outputs: list = [None] * len(tensors)
        with torch.inference_mode():
            for indices in self._within_pixel_budget(groups.values(), tensors):
                try:
                    results = self._run(torch.stack([tensors[i] for i in indices]).to(self.device)).cpu()
                except Exception as error:
                    if len(indices) == 1:
                        outputs[indices[0]] = error
                        continue
                    self._release_memory()
                    results = [self._run_alone(tensors[i]) for i in indices]
                for index, result in zip(indices, results):
                    outputs[index] = result
        return outputs

    def _within_pixel_budget(self, groups, tensors) -> list[list[int]]:
        """Same-size groups cut into runs of at most max_batch_pixels (at least one image each)."""
        runs = []
        for indices in groups:
            height, width = tensors[indices[0]].shape[-2:]
            per_run = max(1, self.max_batch_pixels // (height * width))
            runs += [indices[start:start + per_run] for start in range(0, len(indices), per_run)]
        return runs

    def _run_alone(self, tensor: torch.Tensor) -> torch.Tensor | Exception:
        try:
            return self._run(tensor.unsqueeze(0).to(self.device)).cpu()[0]
        except Exception as error:
            self._release_memory()
            return error

    def _release_memory(self) -> None:
        if self.device.type == "cuda":  # after an out-of-memory error, before trying smaller batches
            torch.cuda.empty_cache()

    def check_health(self) -> None:
        """Raises when the model cannot produce a usable image (for example NaN weights)."""
        with torch.inference_mode():
            output = self._run(torch.full((1, 3, 16, 16), 128.0, device=self.device))
        if not torch.isfinite(output).all():
            raise RuntimeError(f"model {self.metadata['style']} produces non-finite output")
