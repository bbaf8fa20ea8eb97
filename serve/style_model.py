"""A published style model ready to serve: loaded once, run on batches, checked for health. No Ray.
A family's model is its shared network, run with a style vector per image (serve/style_vectors.py).

The fast path (on by default, GPU only) runs the network in fp16 with channels_last memory. Requests
whose size maps to a compiled static shape run there (serve/static_shapes.py: resized to the bucket
and back); the others, and every request until its shape has compiled in the background, run eagerly
at their own size. A compile that is dynamic in height and width was measured slower than eager on an
H200 (423 against 569 images/s at 512x512, batch 16; issue 11), so no dynamic compile is used. Bucketing
sizes by padding was measured and rejected: instance norm takes its statistics over the padding too,
which moved outputs by 6 of 255 on average (200x150 padded to 256x256), while fp16 moves them by 0.1
(tests/test_fast_path.py). On CPU, a version published with its ONNX export runs in ONNX Runtime
(factory/onnx_model.py; bench/cpu_stylise.py measures it against eager torch). Without one,
channels_last and fp16 measured slower than plain fp32; a dynamic torch.compile measured 1.3x faster
(0.50 s against 0.66 s at 512x512 on 2 cores) but costs about a minute of compiling when the replica
starts, so it is opt-in (compile_on_cpu) for dedicated styles.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass

import torch

from factory import registry
from factory.family import neutral_style_vector
from factory.transform_net import TransformNet
from serve.settings import EndpointSettings
from serve.size_buckets import bucket_shape, parse_shape
from serve.static_shapes import StaticShapes, resize
from serve.style_vectors import StyleVectors

@dataclass(frozen=True)
class RunFailure:
    """Why an image got no picture: what the caller needs for its answer (503 for memory, else 500), and
    nothing more. Exceptions are not kept: their tracebacks hold the failed run's tensors."""

    out_of_memory: bool
    reason: str

    @staticmethod
    def of(error: Exception) -> "RunFailure":
        out_of_memory = isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()
        return RunFailure(out_of_memory, f"{type(error).__name__}: {str(error)[:200]}")


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


def static_shapes_for(device: torch.device, settings: EndpointSettings) -> StaticShapes | None:
    """A GPU replica's compiled static shapes, shared by every style it holds, with the warm shapes
    queued for compiling (the replica waits for them before it takes traffic: wait_until_idle); None
    on CPU or when settings.compiled_shapes is 0."""
    if device.type != "cuda" or settings.compiled_shapes == 0:
        return None
    static_shapes = StaticShapes(TransformNet(), device, capacity=settings.compiled_shapes, admit_after=settings.compile_after_requests,
                                 max_pixels=settings.max_compiled_pixels)
    for shape in settings.warm_shapes:
        static_shapes.warm(parse_shape(shape))
    return static_shapes


def fast_network(net: torch.nn.Module) -> torch.nn.Module:
    """fp16 weights in channels_last layout: the tensor-core friendly form of the network."""
    return net.half().to(memory_format=torch.channels_last)


def fast_input(batch: torch.Tensor) -> torch.Tensor:
    return batch.half().contiguous(memory_format=torch.channels_last)


# Memory of one loaded model per byte of its fp32 weights: fp16 on a GPU holds half; an ONNX Runtime
# session without its arena measured 18.5 MB for 6.7 MB of weights (the graph's copy of the weights,
# ORT's own, and a run's working memory).
# int8: taken as fp32's until measured (its weights are a quarter, its working memory is not).
MEMORY_PER_WEIGHT_BYTE = {"cuda": 0.5, "onnxruntime": 2.8, "onnxruntime-int8": 2.8, "torch": 1.0}


def model_bytes(runtime: str) -> int:
    """Memory one loaded model takes as a pool replica runs it: runtime "cuda", "onnxruntime", "onnxruntime-int8" or "torch"."""
    parameters = sum(parameter.numel() for parameter in TransformNet().parameters())
    return int(parameters * 4 * MEMORY_PER_WEIGHT_BYTE[runtime])


class StyleModel:
    def __init__(self, registry_uri: str, style: str, version: str, device: torch.device | None = None,
                 fast: bool = True, compile_on_cpu: bool = False, max_batch_pixels: int = EndpointSettings.max_batch_pixels,
                 cpu_threads: int | None = None, memory_arena: bool = True, static_shapes: StaticShapes | None = None,
                 family: bool = False, cpu_precision: str = "fp32"):
        """A style's version; with family=True, a style family's version (`style` names the family): its
        shared network, run with each image's style vector (forward_by_size's `styles`, from
        self.style_vectors), so one batch carries any of the family's styles and blends of them.
        cpu_precision: on the CPU fast path, "int8" runs a style's int8 copy where it has one (factory/onnx_int8.py)."""
        self.max_batch_pixels = max_batch_pixels
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.fast = fast and self.device.type == "cuda"
        self.static_shapes = None
        if family:
            self.name = f"family {style}"
            self.metadata = registry.read_family_metadata(registry_uri, style, version)
            self.style_vectors = StyleVectors(registry_uri, self.metadata["family"], self.metadata["style_size"])
            self._load_family(registry_uri, fast, cpu_threads, memory_arena)
            return
        self.name, self.style_vectors = style, None
        self.metadata = registry.read_metadata(registry_uri, style, version)
        onnx = (registry.load_onnx_net(registry_uri, self.metadata, cpu_precision, threads=cpu_threads, memory_arena=memory_arena)
                if fast and self.device.type == "cpu" else None)
        self.runtime = ("onnxruntime-int8" if onnx.precision == "int8" else "onnxruntime") if onnx else "torch"
        if onnx:  # the CPU fast path, where the version has its export (older ones do not): model.pt is not read (a family style's holds only its vector)
            self.net = onnx
            return
        self.net = registry.load_net(registry_uri, self.metadata).to(self.device)
        if self.fast:
            self.net = fast_network(self.net)
        if static_shapes is not None and static_shapes.fits(self.net):
            self.static_shapes, self.prepared = static_shapes, static_shapes.prepare(self.net)
        elif compile_on_cpu and self.device.type == "cpu":
            self.net = torch.compile(self.net, dynamic=True)
            self.forward_by_size([torch.zeros(3, 64, 64)])  # compile now, not on a client's request

    def _load_family(self, registry_uri: str, fast: bool, cpu_threads: int | None, memory_arena: bool) -> None:
        """The family's network: its ONNX export on the CPU fast path (every family version has one), else
        eager torch (fp16 on a GPU). Not through the static shapes: those are compiled for single styles."""
        family, architecture = self.metadata["family"], self.metadata["architecture"]
        self.neutral_style = neutral_style_vector(TransformNet.from_architecture(architecture, conditional=True))
        if fast and self.device.type == "cpu":
            self.net, self.runtime = registry.load_family_onnx_net(registry_uri, family, threads=cpu_threads, memory_arena=memory_arena), "onnxruntime"
            return
        self.runtime = "torch"
        # A copy: load_family_net's network is shared in this process (FamilyStyle), and fp16 would convert it for all.
        self.net = copy.deepcopy(registry.load_family_net(registry_uri, family, architecture)).to(self.device)
        if self.fast:
            self.net = fast_network(self.net)

    def _run(self, batch: torch.Tensor, styles: torch.Tensor | None = None) -> torch.Tensor:
        """styles: (B, style_size) for a family's model, else None (a single style's network takes none)."""
        extra = () if styles is None else (styles.to(self.device, torch.float16 if self.fast else torch.float32),)
        if not self.fast:
            return self.net(batch, *extra)
        return self.net(fast_input(batch), *extra).float()

    def forward_by_size(self, tensors: list[torch.Tensor], styles: list[torch.Tensor] | None = None) -> list[torch.Tensor | RunFailure]:
        """(3, H, W) tensors in 0..255 -> stylised, in order; those that run at one shape run as one batch.
        styles: for a family's model, each image's style vector (style_size,): images of different
        styles and blends share the batch.

        A batch that fails is run again one image at a time (eagerly), so only the image that fails
        gets a RunFailure (in its place in the list) and the requests batched with it still get their
        pictures. An output that is not finite (a broken model) is a failure, never a black picture.
        """
        groups = defaultdict(list)
        for index, tensor in enumerate(tensors):
            groups[self._run_shape(tuple(tensor.shape[-2:]))].append(index)
        outputs: list = [None] * len(tensors)
        with torch.inference_mode():
            for run_shape, indices in self._within_pixel_budget(groups.items()):
                results = self._attempt(lambda: self._run_group(run_shape, [tensors[i] for i in indices], self._styles(styles, indices)))
                if isinstance(results, RunFailure) and (len(indices) > 1 or run_shape[1]):
                    # Retried one by one, after the except block that caught the failure: its traceback
                    # would keep the failed batch's activations alive (on a GPU, the memory just exhausted).
                    self._release_memory()
                    results = [self._run_alone(tensors[i], self._styles(styles, [i])) for i in indices]
                elif isinstance(results, RunFailure):
                    results = [results]
                for index, result in zip(indices, results):
                    outputs[index] = result
        return outputs

    @staticmethod
    def _attempt(run):
        """run(), or a RunFailure describing why it raised (no exception object outlives this call)."""
        try:
            return run()
        except Exception as error:
            return RunFailure.of(error)

    def _finite(self, output: torch.Tensor) -> torch.Tensor | RunFailure:
        if torch.isfinite(output).all():
            return output
        return RunFailure(out_of_memory=False, reason=f"model {self.name} produced non-finite pixels")

    def _run_shape(self, size: tuple[int, int]) -> tuple[tuple[int, int], bool]:
        """(shape, bucketed): the compiled bucket shape when it is ready, else the image's own size
        (and the bucket is asked for, to be compiled in the background)."""
        if self.static_shapes is None:
            return size, False
        bucket = bucket_shape(*size)
        if self.static_shapes.ready(bucket):
            return bucket, True
        self.static_shapes.request(bucket)
        return size, False

    @staticmethod
    def _styles(styles: list[torch.Tensor] | None, indices: list[int]) -> torch.Tensor | None:
        return None if styles is None else torch.stack([styles[i] for i in indices])  # (B, style_size)

    def _run_group(self, run_shape: tuple[tuple[int, int], bool], group: list[torch.Tensor], styles: torch.Tensor | None = None) -> list:
        (height, width), bucketed = run_shape
        stylised = None
        if bucketed:
            batch = torch.cat([resize(tensor[None].to(self.device), height, width) for tensor in group])
            stylised = self.static_shapes.run(self.prepared, batch)  # None while a compile holds dynamo
        if stylised is None:
            return [self._finite(output) for output in self._run(torch.stack(group).to(self.device), styles).cpu()]
        return [self._finite(resize(stylised[i:i + 1], *tensor.shape[-2:])[0].clamp(0, 255).cpu()) for i, tensor in enumerate(group)]

    def _within_pixel_budget(self, groups) -> list[tuple[tuple, list[int]]]:
        """Groups cut into runs of at most max_batch_pixels (at least one image each)."""
        runs = []
        for run_shape, indices in groups:
            height, width = run_shape[0]
            per_run = max(1, self.max_batch_pixels // (height * width))
            runs += [(run_shape, indices[start:start + per_run]) for start in range(0, len(indices), per_run)]
        return runs

    def _run_alone(self, tensor: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor | RunFailure:
        result = self._attempt(lambda: self._run(tensor.unsqueeze(0).to(self.device), style).cpu()[0])
        if isinstance(result, RunFailure):
            self._release_memory()
            return result
        return self._finite(result)

    def _release_memory(self) -> None:
        if self.device.type == "cuda":  # after an out-of-memory error, before trying smaller batches
            torch.cuda.empty_cache()

    def check_health(self) -> None:
        """Raises when the model cannot produce a usable image (for example NaN weights)."""
        with torch.inference_mode():
            # A family's network with the neutral style (scales 1, shifts 0): its own weights are checked.
            neutral = None if self.style_vectors is None else self.neutral_style[None]
            output = self._run(torch.full((1, 3, 16, 16), 128.0, device=self.device), neutral)
        if not torch.isfinite(output).all():
            raise RuntimeError(f"model {self.name} produces non-finite output")
