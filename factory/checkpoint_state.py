"""What a pack's checkpoint holds and how a run resumes from one: the networks, Adam, the progress, the
fp16 loss scale and the random stream. No Ray: factory/train_loop.py saves and loads these through
Ray Train; tests and the GPU kit (tests/test_gpu.py) use them directly."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import torch

from factory.family import StyleFamily
from factory.packs import PackPlan
from factory.style_pack import StepRunner, StylePack, make_optimizer

CHECKPOINT_FILE = "pack.pt"


@dataclass
class Progress:
    """What a pack's run carries across restarts besides the weights; saved in every checkpoint."""

    step: int = 0
    train_seconds: float = 0.0
    # {style: [[step, total loss], ...]} at every log point: the loss curve, published with the model.
    loss_history: dict = field(default_factory=dict)
    # Steps at which the run was resumed from a checkpoint (a replaced worker or a rerun).
    resumed_at_steps: list = field(default_factory=list)
    # Every worker's place in its content stream, [epoch, item, row] by rank: where a resumed run reads on.
    data_positions: list = field(default_factory=list)


def new_family(plan: PackPlan) -> StyleFamily:
    """The pack's family network, untrained: with the output conv's norm unless its styles say otherwise
    (styles[].output_norm) or join a family published without one (they must fit that family's network)."""
    output_norm = plan.family_base.output_norm if plan.family_base is not None else plan.styles[0].output_norm
    return StyleFamily(plan.style_names, width=plan.styles[0].width, output_norm=output_norm)


def build_pack(plan: PackPlan, device: torch.device, channels_last: bool, state: dict | None):
    """The pack on its device and its optimiser, restored from `state` when resuming: (pack, optimizer, progress).

    The order matters: Optimizer.load_state_dict puts Adam's moments on each parameter's device at the
    moment of loading. Loading before the move to the GPU left them on the CPU, and the first step of
    every resumed run failed on a GPU.
    """
    if plan.family:  # one network for the pack's styles (factory/family.py)
        pack = new_family(plan)
        if plan.family_base is not None:  # styles joining a published family: its network frozen, only their vectors train
            pack.net.load_state_dict(plan.family_base.network)
            pack.net.requires_grad_(False)
            with torch.no_grad():
                pack.style_vectors.copy_(plan.family_base.initial_vector.expand_as(pack.style_vectors))
        pack = pack.to(device)
    else:
        pack = StylePack(plan.style_names, widths={style.name: style.width for style in plan.styles}).to(device)
    if channels_last:
        pack = pack.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(pack, list(plan.styles))
    if state is None:
        return pack, optimizer, Progress()
    if plan.family:
        pack.load_state_dict(state["family"])
    else:
        for name, net in pack.nets.items():
            net.load_state_dict(state["nets"][name])
    optimizer.load_state_dict(state["optimizer"])
    progress = Progress(**state["progress"])
    progress.resumed_at_steps.append(progress.step)
    return pack, optimizer, progress


def _random_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_run_state(runner: StepRunner, state: dict) -> None:
    """What a checkpoint keeps besides the weights and Adam (build_pack restores those): the fp16 loss
    scale and the random stream. Checkpoints from before they carried these resume too."""
    if "random" in state:
        runner.load_scaler_state(state.get("scaler") or {})
        _restore_random_state(state["random"])


def checkpoint_bytes(pack: StylePack | StyleFamily, optimizer, progress: Progress, scaler) -> bytes:
    buffer = io.BytesIO()
    state = {
        "progress": asdict(progress),
        # A family's network and style vectors (factory/family.py), or each style's own network.
        **({"family": pack.state_dict()} if isinstance(pack, StyleFamily) else {"nets": {name: net.state_dict() for name, net in pack.nets.items()}}),
        "optimizer": optimizer.state_dict(),
        # So that a resumed run continues the same run: fp16 loss scale, and the random stream.
        "scaler": scaler.state_dict(),
        "random": _random_state(),
    }
    torch.save(state, buffer)
    return buffer.getvalue()


