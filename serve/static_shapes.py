"""GPU stylising on a few static shapes: requests resized to a bucket, run by a network compiled for it.

Why: on an H200 (issue 11's table, 512x512 in batches of 16) a compile that is dynamic in height and
width ran slower than eager (423 against 569 images/s), while a compile for one static shape ran at
1,535. A network compiled per request size would recompile for nearly every request, so requests are
mapped to bucket shapes by resizing (never padding: instance norm would take its statistics over the
padding too) and the output is resized back to the requested size.

Buckets (serve/size_buckets.py): both sides rounded up to a multiple of 32, so a shape stays within a
few percent of the request; tests/test_static_shapes.py holds the bucketed output's tolerance.

Compiling: one torch.compile'd function takes the weights as inputs (torch.func.functional_call), so
every style a replica holds shares the compiled code of a shape; each shape compiles once for batch 1
and once for any larger batch (batch size dynamic, height and width static). Compiles run on one
background thread, lazily on a shape's first request and for the warm shapes at replica start; until a
shape is ready, its requests run eagerly at their own size, so no request waits for a compile. At most
`capacity` shapes are compiled per process (dynamo cannot drop one shape's code): past that, new
shapes run eagerly. CUDA graphs are not used: the issue's table measured them at +1% (1,552 against
1,535 images/s; 2.85 against 2.90 ms at 1024x1024), not worth their static buffers per shape.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)


def resize(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear with antialiasing (which only matters when shrinking): 0..255 stays 0..255."""
    if tuple(batch.shape[-2:]) == (height, width):
        return batch
    return nn.functional.interpolate(batch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


class StaticShapes:
    """Compiled static-shape stylising for one process and one network architecture.

    `prepare(network)` turns a style's weights into the form the compiled code takes; `run(prepared,
    batch)` stylises a (B, 3, H, W) 0..255 batch whose sides are a bucket shape that `ready()` says is
    compiled. `request(shape)` asks for a compile in the background.
    """

    def __init__(self, template: nn.Module, device: torch.device, *, dtype: torch.dtype = torch.float16,
                 channels_last: bool = True, capacity: int = 16, backend: str | Callable = "inductor"):
        import torch._dynamo  # here, not at the top: 150 MB resident that CPU replicas, which never compile, need not hold

        self.template = template.to(device=device, dtype=dtype)
        if channels_last:
            self.template = self.template.to(memory_format=torch.channels_last)
        self.device, self.dtype, self.channels_last, self.capacity = device, dtype, channels_last, capacity
        self._compiled = torch.compile(self._stylise, backend=backend, dynamic=None)
        # Dynamo's settings are per thread, so both the compiling thread and callers apply these.
        # A new size is a new static shape, never a dynamic one; each shape takes two of dynamo's
        # entries (batch 1, batch >= 2), and a full cache would make it give up on the function.
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
        self._dynamo_settings = {"automatic_dynamic_shapes": False,
                                 limit: max(getattr(torch._dynamo.config, limit), 2 * capacity + 2)}
        self._ready: set[tuple[int, int]] = set()
        self._asked: set[tuple[int, int]] = set()
        self.failed = False  # set by the compiling thread: after a failure every shape stays eager
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._compile_forever, name="static-shape-compiler", daemon=True)
        self._worker.start()

    def _stylise(self, parameters: dict, images: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.template, parameters, (images,))

    def prepare(self, network: nn.Module) -> dict[str, torch.Tensor]:
        """A style's weights and buffers on the device, in the compiled code's dtype and layout."""
        network = network.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            network = network.to(memory_format=torch.channels_last)
        # Detached (serving never needs gradients) and never inference tensors: the compiled code's
        # guards expect the same requires_grad and dispatch keys from every style, however it was loaded.
        with torch.inference_mode(False):
            return {name: (tensor.clone() if tensor.is_inference() else tensor).detach()
                    for name, tensor in [*network.named_parameters(), *network.named_buffers()]}

    def fits(self, network: nn.Module) -> bool:
        """Whether this network's weights fit the compiled code (a style trained with another
        upsampling layer does not, and runs eagerly)."""
        def shapes(module):
            return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
        return type(network) is type(self.template) and shapes(network) == shapes(self.template)

    def ready(self, shape: tuple[int, int]) -> bool:
        return shape in self._ready

    def request(self, shape: tuple[int, int]) -> None:
        """Compile this bucket shape in the background (once; within capacity; never after a failure)."""
        with self._lock:
            if self.failed or shape in self._asked or len(self._asked) >= self.capacity:
                return
            self._asked.add(shape)
        self._queue.put(shape)

    def wait_until_idle(self) -> None:
        """Blocks until every requested compile has finished (tests, benchmarks, warm starts)."""
        self._queue.join()

    def run(self, prepared: dict, batch: torch.Tensor) -> torch.Tensor:
        """Stylised batch in float32, for a batch whose height and width are a ready bucket shape."""
        images = batch.to(self.dtype)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if images.shape[0] > 1:  # one graph for every batch size from 2 up; batch 1 has its own
            torch._dynamo.mark_dynamic(images, 0)
        with torch._dynamo.config.patch(**self._dynamo_settings):
            return self._compiled(prepared, images).float()

    def _compile_forever(self) -> None:
        while True:
            height, width = self._queue.get()
            try:
                if not self.failed:
                    self._compile(height, width)
            except Exception:  # a compiler that cannot work here: every shape stays on the eager path
                logger.exception("compiling the %dx%d stylising shape failed; this process stylises eagerly", width, height)
                self.failed = True
            finally:
                self._queue.task_done()

    def _compile(self, height: int, width: int) -> None:
        prepared = self.prepare(self.template)
        with torch.inference_mode():
            for batch_size in (1, 2):
                self.run(prepared, torch.zeros(batch_size, 3, height, width, device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._ready.add((height, width))
        logger.info("stylising shape %dx%d compiled (%d of %d)", width, height, len(self._ready), self.capacity)
