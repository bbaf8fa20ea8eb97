"""Resuming a pack puts everything where the run left it, on the device it trains on (no Ray needed)."""

import io

import pytest
import torch

from factory_runs import pack_plan as plan
from factory.style_pack import resolve_precision
from factory.content_stream import StreamPosition
from factory.checkpoint_state import Progress, _restore_random_state, build_pack, checkpoint_bytes
from factory.train_loop import LossWindow, _stream_start


def trained_checkpoint() -> tuple[dict, torch.Tensor]:
    """A checkpoint as rank 0 writes it after one real Adam step on the CPU, and the random numbers
    the run would have drawn next."""
    pack, optimizer, progress = build_pack(plan(), torch.device("cpu"), False, None)
    pack(torch.rand(1, 3, 16, 16) * 255).mean().backward()
    optimizer.step()
    progress.step = 1
    data = checkpoint_bytes(pack, optimizer, progress, torch.amp.GradScaler("cpu", enabled=False))
    upcoming = torch.rand(8)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), upcoming


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_resumed_optimizer_state_is_on_the_parameters_device():
    # The checkpoint is loaded on the CPU, as every worker loads it; the pack trains on another
    # device ('meta' stands in for a GPU). Adam's moments must follow the parameters there.
    pack, optimizer, progress = build_pack(plan(), torch.device("meta"), False, trained_checkpoint()[0])
    assert progress.step == 1 and progress.resumed_at_steps == [1]
    moments = 0
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            assert parameter.device.type == "meta"
            for key, value in optimizer.state[parameter].items():
                if key != "step":  # Adam keeps its step counter on the CPU by design
                    assert value.device == parameter.device, key
                    moments += 1
    assert moments > 0


def test_a_resumed_run_draws_the_random_numbers_the_run_would_have_drawn():
    state, upcoming = trained_checkpoint()
    torch.manual_seed(12345)  # a fresh worker starts from the configured seed
    _restore_random_state(state["random"])
    assert torch.equal(torch.rand(8), upcoming)
    assert "scaler" in state  # an fp16 run's loss scale (empty when no scaling is on)


def test_auto_precision_takes_fp16_where_bf16_is_only_emulated(monkeypatch):
    # A T4 or V100: torch says bf16 is "supported" by emulation, but not natively.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_published_losses_are_the_mean_of_the_logging_window():
    window = LossWindow()
    for value in (1.0, 2.0, 6.0):
        window.add({"a": {"total": torch.tensor(value), "style": torch.tensor(value / 2), "images": torch.tensor(2.0)}})
    assert window.mean(world_size=1) == {"a": {"style": 1.5, "total": 3.0}}
    window.add({"a": {"total": torch.tensor(5.0), "style": torch.tensor(0.0), "images": torch.tensor(2.0)}})
    assert window.mean(world_size=1)["a"]["total"] == 5.0  # a new window after each log point


def test_a_family_styles_window_mean_weighs_each_step_by_its_images_and_leaves_out_undrawn_styles():
    """A family's style may have 3 images one step and 1 the next: its loss is the mean over its 4 images."""
    window = LossWindow()
    window.add({"a": {"total": torch.tensor(1.0), "images": torch.tensor(3.0)}, "b": {"total": torch.tensor(0.0), "images": torch.tensor(0.0)}})
    window.add({"a": {"total": torch.tensor(5.0), "images": torch.tensor(1.0)}, "b": {"total": torch.tensor(0.0), "images": torch.tensor(0.0)}})
    assert window.mean(world_size=1) == {"a": {"total": 2.0}}


def test_the_checkpoint_keeps_every_workers_data_position_and_each_worker_reads_on_from_its_own():
    pack, optimizer, progress = build_pack(plan(), torch.device("cpu"), False, None)
    progress.step, progress.data_positions = 5, [[1, 4, 1], [1, 3, 0]]
    data = checkpoint_bytes(pack, optimizer, progress, torch.amp.GradScaler("cpu", enabled=False))
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    _, _, resumed = build_pack(plan(), torch.device("cpu"), False, state)
    assert _stream_start(resumed, 0, 2, "r") == StreamPosition(1, 4, 1)
    assert _stream_start(resumed, 1, 2, "r") == StreamPosition(1, 3, 0)
    # Another number of workers shares the epochs differently: every worker starts the next epoch.
    assert _stream_start(resumed, 2, 3, "r") == StreamPosition(2)
    assert _stream_start(Progress(), 0, 2, "r") == StreamPosition()
