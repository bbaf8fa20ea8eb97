"""The training step's GPU paths, checked on the CPU: what torch.compile is given (counted with a
dynamo backend that runs the traced graphs as they are), mixed precision at the output, resuming
into another precision, and a loss that stops being finite. No Ray."""

import io

import pytest
import torch

from factory import images
from factory.losses import total_variation_loss
from factory.loss_network import LossNetwork
from factory.settings import LossSettings, ResolvedStyle
from factory.style_pack import FiniteLossWatch, NonFiniteLoss, PerceptualObjective, StepRunner, StylePack, make_optimizer
from factory.checkpoint_state import Progress, checkpoint_bytes
from factory.transform_net import TransformNet
from factory.vgg_weights import random_vgg19
from serving import STYLES

CPU = torch.device("cpu")


class CountingBackend:
    """Runs each traced graph as it is; records the graphs and whether any input shape was symbolic."""

    def __init__(self):
        self.graphs, self.symbolic = 0, 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        self.symbolic += any(isinstance(value, torch.SymInt) or
                             (isinstance(value, torch.Tensor) and any(isinstance(side, torch.SymInt) for side in value.shape))
                             for value in example_inputs)
        return graph_module.forward


def styles(names=("starry_night", "the_scream")) -> list[ResolvedStyle]:
    return [ResolvedStyle(name=name, image_bytes=(STYLES / f"{name}.jpg").read_bytes(), image_sha256="-", content_weight=3.0,
                          style_weight=10.0, tv_weight=0.1, steps=10, learning_rate=1e-3) for name in names]


def runner(precision="fp32", names=("starry_night", "the_scream")) -> StepRunner:
    torch.manual_seed(0)
    pack_styles = styles(names)
    settings = LossSettings(style_size=48, normalisation="per_layer", content_weight=3.0, style_weight=10.0, tv_weight=0.1)
    loss_network = LossNetwork(random_vgg19(seed=0).first(13), [settings.content_layer, *settings.style_layers])
    pack = StylePack([style.name for style in pack_styles])
    objective = PerceptualObjective(loss_network, settings, pack_styles, CPU)
    return StepRunner(pack, objective, make_optimizer(pack, pack_styles), precision, "cpu")


def test_the_compiled_step_sees_only_the_training_shape_three_static_graphs():
    # The style images (batch 1, each painting's own size) went through the loss network after it was
    # compiled: dynamo then recompiled the training graphs dynamic in batch, height and width.
    step = runner()
    backend = CountingBackend()
    step.compile(backend)
    for _ in range(3):
        step.step(torch.rand(2, 3, 32, 32) * 255)
    assert backend.symbolic == 0
    assert backend.graphs == 3  # the pack; the loss network for the photos (no grad) and for the stylised images


def test_under_bf16_autocast_the_output_and_the_losses_it_feeds_stay_fp32_precise():
    # bf16 has an 8-bit mantissa: a 0..255 output in bf16 comes in steps of 1 above 128, and the TV term
    # (squared neighbour differences) carries that rounding into every gradient.
    torch.manual_seed(0)
    net = TransformNet()
    photos = torch.rand(2, 3, 64, 64) * 255
    exact = net(photos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net(photos)
    assert mixed.dtype == torch.float32
    assert mixed.unique().numel() > 10_000  # not a few hundred bf16 levels (measured: 320 before, 24,547 after)
    tv_exact, tv_mixed = total_variation_loss(exact).item(), total_variation_loss(mixed).item()
    assert abs(tv_mixed - tv_exact) / tv_exact < 1e-3  # measured 0.02% (0.39% with a bf16 output)


def checkpoint_from(precision: str) -> dict:
    step = runner(precision, names=("udnie",))
    step.step(torch.rand(2, 3, 32, 32) * 255)
    data = checkpoint_bytes(step.pack, step.optimizer, Progress(step=1), step.scaler)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("written_in", ["fp32", "bf16"])
def test_an_fp16_run_resumes_a_checkpoint_written_without_loss_scaling(written_in):
    state = checkpoint_from(written_in)
    assert state["scaler"] == {}  # what a bf16 or CPU run saves
    resumed = runner("fp16", names=("udnie",))
    resumed.load_scaler_state(state["scaler"])  # raised KeyError on every retry before
    assert resumed.scaler.is_enabled() and resumed.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()


def test_an_fp16_run_checkpoints_its_loss_scale_and_resumes_it():
    from factory.checkpoint_state import restore_run_state

    step = runner("fp16", names=("udnie",))
    step.step(torch.rand(2, 3, 32, 32) * 255)
    step.scaler.update(1024.0)  # where a run's scale stands after some skipped steps
    data = checkpoint_bytes(step.pack, step.optimizer, Progress(step=1), step.scaler)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert state["scaler"]["scale"] == 1024.0
    resumed = runner("fp16", names=("udnie",))
    restore_run_state(resumed, state)  # what train_pack does with a checkpoint
    assert resumed.scaler.get_scale() == 1024.0


def test_a_loss_that_stops_being_finite_is_named_with_its_style_and_step():
    watch = FiniteLossWatch(["a", "b"], CPU)
    for step, (a, b) in enumerate([(1.0, 2.0), (1.0, float("nan")), (float("inf"), float("nan"))], start=1):
        watch.add(step, {"a": {"total": torch.tensor(a)}, "b": {"total": torch.tensor(b)}})
    with pytest.raises(NonFiniteLoss, match=r"'a' at step 3, 'b' at step 2"):
        watch.check()
    clean = FiniteLossWatch(["a"], CPU)
    clean.add(1, {"a": {"total": torch.tensor(0.5)}})
    clean.check()


def test_style_targets_come_from_the_style_image_at_style_size():
    step = runner(names=("udnie",))
    image = images.fit_within(images.decode_rgb((STYLES / "udnie.jpg").read_bytes(), max_pixels=images.CONFIG_IMAGE_MAX_PIXELS), 48)
    channels = step.objective.target_grams[0].shape[-1]  # relu1_1, every style's: (S, C, C)
    assert max(image.size) == 48 and channels == 64  # relu1_1's Gram: 64 x 64


def test_a_resumed_run_continues_exactly_as_the_uninterrupted_one():
    """Weights, Adam's moments, the step, the random stream: four steps in one go, or two, a checkpoint,
    a new worker (from the configured seed, as train_pack starts) and two more, give the same bits."""
    from factory.checkpoint_state import build_pack, restore_run_state
    from factory_runs import pack_plan as plan

    batches = [torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(step)) * 255 for step in range(4)]
    pack_plan = plan(("udnie",))

    def new_runner(state=None):
        torch.manual_seed(0)  # what every worker does first
        pack, optimizer, progress = build_pack(pack_plan, CPU, False, state)
        step = runner(names=("udnie",))
        step.pack, step.optimizer = pack, optimizer
        if state is not None:
            restore_run_state(step, state)
        return step, progress

    def train(step, batches):
        for batch in batches:
            step.step(batch)
            torch.rand(3)  # a run's own draws (an augmentation, say) move the random stream on

    whole, _ = new_runner()
    train(whole, batches)
    whole_draw = torch.rand(4)

    first, progress = new_runner()
    train(first, batches[:2])
    progress.step = 2
    state = torch.load(io.BytesIO(checkpoint_bytes(first.pack, first.optimizer, progress, first.scaler)), weights_only=True)
    torch.manual_seed(12345)  # whatever the process did meanwhile
    resumed, resumed_progress = new_runner(state)
    assert resumed_progress.step == 2 and resumed_progress.resumed_at_steps == [2]
    train(resumed, batches[2:])
    for (name, expected), (_, got) in zip(whole.pack.state_dict().items(), resumed.pack.state_dict().items()):
        assert torch.equal(expected, got), name
    assert torch.equal(torch.rand(4), whole_draw)  # and the random stream goes on where it would have
