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
background thread: the warm shapes before the replica reports ready (StylePool and StyleEndpoint wait
for them), any other bucket once it has been asked for `admit_after` times, so that a client cycling
through odd sizes cannot fill the `capacity` slots (dynamo cannot drop a shape's code), and never one
over `max_pixels`. Until a shape is ready its requests run eagerly at their own size, so no request
waits for a compiler. A compile that runs out of GPU memory is retried on a later request; any other
failure leaves the process eager.

Dynamo's settings are thread-local only from torch 2.12; before it they are process-wide, and one
thread's `config.patch` ending could undo another's mid-compile. So every entry into dynamo (a compile,
or a run of compiled code, which may recompile on a guard miss) holds one process-wide lock and applies
the settings inside it. A request that finds the lock taken (a compile in progress) runs eagerly.
CUDA graphs are not used: the issue's table measured them at +1% (1,552 against 1,535 images/s; 2.85
against 2.90 ms at 1024x1024), not worth their static buffers per shape.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import torch
from torch import nn
from serve import get_logger

logger = get_logger(__name__)


def resize(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear with antialiasing (which only matters when shrinking): 0..255 stays 0..255."""
    if tuple(batch.shape[-2:]) == (height, width):
        return batch
    return nn.functional.interpolate(batch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


# Every entry into dynamo in this process: see the module's docstring.
_DYNAMO_LOCK = threading.Lock()


def _is_out_of_memory(error: Exception) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class StaticShapes:
    """Compiled static-shape stylising for one process and one network architecture.

    `prepare(network)` turns a style's weights into the form the compiled code takes; `run(prepared,
    batch)` stylises a (B, 3, H, W) 0..255 batch whose sides are a bucket shape that `ready()` says is
    compiled, or returns None when a compile holds dynamo (run eagerly then). `request(shape)` counts
    a request for a shape and asks for its compile once admitted; `warm(shape)` asks at once.
    """

    def __init__(self, template: nn.Module, device: torch.device, *, dtype: torch.dtype = torch.float16,
                 channels_last: bool = True, capacity: int = 16, admit_after: int = 3, max_pixels: int = 2048 * 2048,
                 backend: str | Callable = "inductor"):
        import torch._dynamo  # here, not at the top: 150 MB resident that CPU replicas, which never compile, need not hold

        self.template = template.to(device=device, dtype=dtype)
        if channels_last:
            self.template = self.template.to(memory_format=torch.channels_last)
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.capacity, self.admit_after, self.max_pixels = capacity, admit_after, max_pixels
        self._compiled = torch.compile(self._stylise, backend=backend, dynamic=None)
        # A new size is a new static shape, never a dynamic one; each shape takes two of dynamo's
        # entries (batch 1, batch >= 2), and a full cache would make it give up on the function.
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
        self._dynamo_settings = {"automatic_dynamic_shapes": False,
                                 limit: max(getattr(torch._dynamo.config, limit), 2 * capacity + 2)}
        self._ready: set[tuple[int, int]] = set()
        self._asked: set[tuple[int, int]] = set()
        self._requests: dict[tuple[int, int], int] = {}
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
        """A request of this bucket shape ran eagerly: compile it once it has been asked for admit_after times."""
        with self._lock:
            self._requests[shape] = self._requests.get(shape, 0) + 1
            admitted = self._requests[shape] >= self.admit_after
        if admitted:
            self.warm(shape)

    def warm(self, shape: tuple[int, int]) -> None:
        """Compile this bucket shape in the background (once; within capacity and max_pixels; never after a failure)."""
        with self._lock:
            if (self.failed or shape in self._asked or len(self._asked) >= self.capacity
                    or shape[0] * shape[1] > self.max_pixels):
                return
            self._asked.add(shape)
        self._queue.put(shape)

    def wait_until_idle(self) -> None:
        """Blocks until every requested compile has finished (warm starts, tests, benchmarks)."""
        self._queue.join()

    def run(self, prepared: dict, batch: torch.Tensor) -> torch.Tensor | None:
        """Stylised batch in float32, for a batch whose height and width are a ready bucket shape; None
        when a compile holds dynamo just now (the caller runs the batch eagerly)."""
        if not _DYNAMO_LOCK.acquire(blocking=False):
            return None
        try:
            return self._run_compiled(prepared, batch)
        finally:
            _DYNAMO_LOCK.release()

    def _run_compiled(self, prepared: dict, batch: torch.Tensor) -> torch.Tensor:
        images = batch.to(self.dtype)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if images.shape[0] > 1:  # one graph for every batch size from 2 up; batch 1 has its own
            torch._dynamo.mark_dynamic(images, 0)
        with torch._dynamo.config.patch(**self._dynamo_settings):
            return self._compiled(prepared, images).float()

    def _compile_forever(self) -> None:
        while True:
            shape = self._queue.get()
            try:
                failure = None if self.failed else self._try_compile(*shape)
                if failure is not None:  # handled here, after the except block (see _try_compile)
                    self._compile_failed(shape, *failure)
            finally:
                self._queue.task_done()

    def _try_compile(self, height: int, width: int) -> tuple[bool, str] | None:
        """None once compiled, else (out of memory?, what went wrong). Only this description leaves the
        except block: the exception's traceback would keep the failed compile's GPU memory alive."""
        try:
            self._compile(height, width)
        except Exception as error:
            return _is_out_of_memory(error), f"{type(error).__name__}: {error}"
        return None

    def _compile_failed(self, shape: tuple[int, int], out_of_memory: bool, description: str) -> None:
        if out_of_memory:  # the GPU was busy with requests: retry when the shape is asked for again
            logger.warning("compiling the %dx%d stylising shape ran out of memory; it will be retried", shape[1], shape[0])
            with self._lock:
                self._asked.discard(shape)
                self._requests[shape] = 0
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return
        logger.error("compiling the %dx%d stylising shape failed (%s); this process stylises eagerly", shape[1], shape[0], description)
        self.failed = True

    def _compile(self, height: int, width: int) -> None:
        prepared = self.prepare(self.template)
        with _DYNAMO_LOCK, torch.inference_mode():
            for batch_size in (1, 2):
                self._run_compiled(prepared, torch.zeros(batch_size, 3, height, width, device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._ready.add((height, width))
        logger.info("stylising shape %dx%d compiled (%d of %d)", width, height, len(self._ready), self.capacity)
