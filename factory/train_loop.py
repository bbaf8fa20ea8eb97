"""What each Ray Train worker runs for one pack: setup, resume, loop, report."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch

from factory import storage
from factory.checkpoint_state import CHECKPOINT_FILE, Progress, build_pack, checkpoint_bytes, restore_run_state
from factory.content_stream import StreamPosition, content_batches
from factory.family import UndrawnStylesKept, image_styles
from factory.loss_network import LossNetwork
from factory.packs import PackPlan
from factory.style_pack import FiniteLossWatch, NonFiniteLoss, PerceptualObjective, StepRunner, StylePack, resolve_precision

# Progress goes through logging, not print: Ray Train patches print in workers to log *and* echo,
# which showed every line twice in the job log.
logger = logging.getLogger("factory.train")
STABILITY = "stability"  # the stability loss's part, where a style trains with one


def _checkpoint_state() -> dict | None:
    """The latest checkpoint's state from Ray Train, if any (a replaced worker or a rerun)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


class LossWindow:
    """Every stylised image's losses since the last log point, each style's averaged over its images on
    every worker.

    One batch's losses are noisy; a published final loss or curve point should describe the model. A
    family's images each carry their own style, so a style's count of images differs between steps and
    between workers: the window sums losses times images, and divides by the images only at the end.
    """

    def __init__(self):
        self.sums: dict[str, dict[str, torch.Tensor]] = {}
        self.images: dict[str, torch.Tensor] = {}

    def add(self, losses: dict[str, dict[str, torch.Tensor]]) -> None:
        """losses: StepRunner.step's, every style of the pack with its "images" (0 for a style not drawn)."""
        for name, parts in losses.items():
            count = parts["images"].float()
            sums = self.sums.setdefault(name, {})
            for key, value in parts.items():
                if key != "images":
                    sums[key] = sums.get(key, 0.0) + value.detach().float() * count
            self.images[name] = self.images.get(name, 0.0) + count

    def mean(self, world_size: int) -> dict[str, dict[str, float]]:
        """Every rank must call this at the same step: it all-reduces across the pack's workers (whose
        windows hold the same styles and keys: every style of the pack, drawn or not). A style no worker
        drew since the last log point is left out."""
        names = sorted(self.sums)
        keys = [(name, key) for name in names for key in sorted(self.sums[name])]
        if not keys:
            return {}
        values = torch.stack([self.sums[name][key] for name, key in keys] + [self.images[name] for name in names])
        if world_size > 1:
            torch.distributed.all_reduce(values)
        images = dict(zip(names, values[len(keys):].tolist()))
        means: dict[str, dict[str, float]] = {}
        for (name, key), value in zip(keys, values[:len(keys)].tolist()):
            if images[name] > 0:
                means.setdefault(name, {})[key] = value / images[name]
        self.sums, self.images = {}, {}
        return means


class TensorBoardLog:
    """Rank 0's event files: written locally, mirrored to plan.tensorboard_uri (which may be S3)."""

    def __init__(self, uri: str):
        from tensorboardX import SummaryWriter  # a Ray Train dependency already

        self.uri = uri
        self.local = uri if not storage.is_s3(uri) else tempfile.mkdtemp(prefix="tensorboard-")
        self.writer = SummaryWriter(self.local, flush_secs=30)

    def add(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def sync(self) -> None:
        self.writer.flush()
        if storage.is_s3(self.uri):
            for path in Path(self.local).iterdir():
                storage.write_bytes(storage.join(self.uri, path.name), path.read_bytes())


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def train_pack(config: dict) -> None:
    """The Ray Train worker function. config: {'plan': PackPlan, 'vgg': ObjectRef of VGGWeights,
    'content': ContentSource, 'board': the driver's pack_watch.PackBoard, told when the workers run}."""
    plan: PackPlan = config["plan"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if rank == 0 and config.get("board") is not None:
        config["board"].mark_started.remote(plan.run_name)
    device = ray.train.torch.get_device()
    precision = resolve_precision(plan.training.precision, device)
    torch.manual_seed(plan.training.seed)
    if device.type == "cuda":  # every step has the same shapes: let cuDNN pick its fastest kernels once
        torch.backends.cudnn.benchmark = True

    channels_last = plan.training.channels_last and device.type == "cuda"
    state = _checkpoint_state()
    pack, optimizer, progress = build_pack(plan, device, channels_last, state)
    if rank == 0 and progress.resumed_at_steps:
        logger.info("[%s] resuming from checkpoint at step %d/%d", plan.run_name, progress.step, plan.steps)
    model = ray.train.torch.prepare_model(pack)  # already on the device; DDP when world_size > 1

    weights = ray.get(config["vgg"])
    loss_network = LossNetwork(weights, [plan.loss.content_layer, *plan.loss.style_layers]).to(device)
    if channels_last:
        loss_network = loss_network.to(memory_format=torch.channels_last)
    objective = PerceptualObjective(loss_network, plan.loss, list(plan.styles), device)  # style targets, eagerly
    undrawn_kept = UndrawnStylesKept(optimizer, pack.style_vectors) if plan.family else None
    runner = StepRunner(model, objective, optimizer, precision, device.type, channels_last, undrawn_kept)
    if plan.training.compile and device.type == "cuda":  # compiling on CPU costs more than it gains
        runner.compile()
    if state is not None:
        restore_run_state(runner, state)
    tensorboard = TensorBoardLog(plan.tensorboard_uri) if rank == 0 else None
    finite = FiniteLossWatch(plan.style_names, device)

    per_worker_batch = plan.training.batch_size // world_size
    stream = content_batches(config["content"], plan.training.seed, rank, world_size, per_worker_batch,
                             _stream_start(progress, rank, world_size, plan.run_name))
    losses, window = {}, LossWindow()
    window_start, window_steps = time.perf_counter(), 0
    while progress.step < plan.steps:
        images, position = next(stream)
        # (B, H, W, 3) uint8 -> (B, 3, H, W) 0..255 on the device; a copy, as Ray Data's arrays are read-only
        content = torch.tensor(images).to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        if plan.family:  # every image of the global batch its own style; this worker's are its share of them
            drawn = image_styles(plan.training.seed, progress.step * plan.training.batch_size, plan.training.batch_size, len(plan.styles))
            step_losses = runner.step(content, drawn[rank * per_worker_batch:(rank + 1) * per_worker_batch], sorted(set(drawn)))
        else:
            step_losses = runner.step(content)
        progress.step += 1
        step = progress.step
        window.add(step_losses)
        finite.add(step, step_losses)
        window_steps += 1
        at_end = step >= plan.steps
        at_checkpoint = step % plan.training.checkpoint_every == 0 or at_end
        if step % plan.training.log_every == 0 or at_checkpoint:
            try:
                finite.check(world_size)
            except NonFiniteLoss as error:  # every rank stops here together: no retry would fare better
                logger.error("[%s] %s", plan.run_name, error)
                ray.train.report({"step": step, "stopped": str(error)}, checkpoint=None)
                stream.close()
                return
        if step % plan.training.log_every == 0 or at_end:
            elapsed = time.perf_counter() - window_start
            progress.train_seconds += elapsed
            steps_per_second = window_steps / max(elapsed, 1e-9)
            # Per style: a separate network sees every photo of a step, a family's style its share of them.
            images_per_second = steps_per_second * plan.training.batch_size / (len(plan.styles) if plan.family else 1)
            window_start, window_steps = time.perf_counter(), 0
            fresh = window.mean(world_size)
            losses = {**losses, **fresh}  # a family's style not drawn since the last log point keeps its figures
            for name, parts in fresh.items():
                progress.loss_history.setdefault(name, []).append([step, parts["total"]])
            if rank == 0:
                eta = _format_eta((plan.steps - step) / max(steps_per_second, 1e-9))
                for name, parts in fresh.items():
                    logger.info(
                        f"[{plan.run_name}] {name:>16} step {step}/{plan.steps}  {images_per_second:7.1f} img/s  "
                        f"loss {float(parts['total']):.4g} (content {float(parts['content']):.4g}, "
                        f"style {float(parts['style']):.4g}, tv {float(parts['tv']):.4g}"
                        f"{f', stability {float(parts[STABILITY]):.4g}' if STABILITY in parts else ''})  ETA {eta}"
                    )
                    tensorboard.add(step, {f"{name}/{key}": float(value) for key, value in parts.items()})
                tensorboard.add(step, {"pack/images_per_second_per_style": images_per_second})
        if at_checkpoint:
            progress.data_positions = _gather_positions(position, world_size)
            _report(pack, optimizer, progress, losses, rank, tensorboard, runner.scaler)
    stream.close()  # stops this worker's reading tasks now, not when the process ends


def _stream_start(progress: Progress, rank: int, world_size: int, run_name: str) -> StreamPosition:
    """Where this worker's content stream starts: the checkpoint's position for its rank, or the start."""
    if not progress.data_positions:
        return StreamPosition()
    if len(progress.data_positions) != world_size:  # training.num_workers changed: the shares differ
        epoch = progress.data_positions[0][0] + 1
        if rank == 0:
            logger.warning("[%s] the checkpoint has %d workers' data positions, this run %d: reading on from epoch %d",
                           run_name, len(progress.data_positions), world_size, epoch)
        return StreamPosition(epoch)
    return StreamPosition(*progress.data_positions[rank])


def _gather_positions(position: StreamPosition, world_size: int) -> list[list[int]]:
    """Every rank's stream position, by rank (every rank must call this at the same step)."""
    if world_size == 1:
        return [position.as_list()]
    positions = [None] * world_size
    torch.distributed.all_gather_object(positions, position.as_list())
    return positions


def _report(pack: StylePack, optimizer, progress: Progress, losses: dict, rank: int, tensorboard, scaler) -> None:
    """Every rank must call ray.train.report (it is a barrier); rank 0 alone attaches the checkpoint."""
    metrics = {
        "step": progress.step,
        "train_seconds": progress.train_seconds,
        "losses": {name: {key: float(value) for key, value in parts.items()} for name, parts in losses.items()},
    }
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    tensorboard.sync()
    directory = tempfile.mkdtemp(prefix="pack-checkpoint-")
    try:
        Path(directory, CHECKPOINT_FILE).write_bytes(checkpoint_bytes(pack, optimizer, progress, scaler))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
