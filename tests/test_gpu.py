"""The code that only runs on GPUs, run on one: compiled bf16 training, resuming across precisions and
devices, fp16 channels_last stylising, the compiled static shapes, out-of-memory answers, extremes.

Skipped, saying so, without CUDA. bench/gpu_acceptance.py runs them first on a lent GPU machine, which
has torch but not Ray: the Ray Train and Serve checks skip there too, and wait for a GPU Ray cluster
(cluster.yaml). GPU_TESTS_DEVICE=cpu runs the same code on the CPU to check the kit itself (the
numbers then say nothing about a GPU: bf16 and fp16 run in CPU autocast, compiles use dynamo's
eager backend).
"""

import io
import os

import pytest
import torch

from factory import images
from factory.loss_network import LossNetwork
from factory.settings import LossSettings, ResolvedStyle
from factory.style_pack import PerceptualObjective, StepRunner, StylePack, make_optimizer
from factory.checkpoint_state import build_pack, checkpoint_bytes, restore_run_state
from factory.family import StyleFamily, UndrawnStylesKept, image_styles
from factory.transform_net import TransformNet
from factory.vgg_weights import random_vgg19
from serve.style_model import RunFailure, StyleModel
from serving import STYLES, publish_random_family, publish_random_style
from test_fast_path import STYLISE_MAX_TOLERANCE, STYLISE_MEAN_TOLERANCE
from factory_runs import pack_plan as plan

ON_CPU = os.environ.get("GPU_TESTS_DEVICE") == "cpu"
DEVICE = torch.device("cpu" if ON_CPU else "cuda")
BACKEND = "eager" if ON_CPU else "inductor"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(),
                                                   reason="needs CUDA (bench/gpu_acceptance.py runs these on a GPU machine)")]
# Compiled bf16 against eager fp32, per style. The first step's loss (the same weights, only the
# arithmetic differs): bf16 rounds activations to 8 bits of mantissa, 2% covers it. The mean loss of
# the last third of the steps: early training is jumpy (a step's loss moved 5.8 -> 24.6 -> 6.6 on the
# CPU), and bf16's rounding changes the path, not where it goes; 15% covers that and catches a broken
# graph, which is wrong by far more.
FIRST_STEP_TOLERANCE, TRAJECTORY_TOLERANCE = 0.02, 0.15
# Sizes: the GPU's, or small ones for a dry run of the kit on the CPU (minutes, not an hour).
TRAIN_SIDE, TRAIN_STEPS, STATIC_SHAPE, EXTREME_SIDE = (64, 12, (96, 128), 256) if ON_CPU else (256, 30, (768, 1024), 2048)


def needs_ray():
    pytest.importorskip("ray", reason="Ray is not installed here (the lent GPU machines have torch only)")


def styles(names=("starry_night", "the_scream")) -> list[ResolvedStyle]:
    return [ResolvedStyle(name=name, image_bytes=(STYLES / f"{name}.jpg").read_bytes(), image_sha256="-", content_weight=3.0,
                          style_weight=10.0, tv_weight=0.1, steps=30, learning_rate=1e-3) for name in names]


def make_objective(device) -> PerceptualObjective:
    settings = LossSettings(style_size=128, normalisation="per_layer", content_weight=3.0, style_weight=10.0, tv_weight=0.1)
    loss_network = LossNetwork(random_vgg19(seed=0).first(13), [settings.content_layer, *settings.style_layers]).to(device)
    return PerceptualObjective(loss_network, settings, styles(), device)


def make_runner(precision: str, compiled: bool, channels_last: bool, family: bool = False) -> StepRunner:
    torch.manual_seed(0)
    objective = make_objective(DEVICE)
    names = [style.name for style in objective.styles]
    pack = (StyleFamily(names) if family else StylePack(names)).to(DEVICE)
    if channels_last:
        pack = pack.to(memory_format=torch.channels_last)
        objective.loss_network = objective.loss_network.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(pack, objective.styles)
    runner = StepRunner(pack, objective, optimizer, precision, DEVICE.type, channels_last,
                        UndrawnStylesKept(optimizer, pack.style_vectors) if family else None)
    if compiled:
        runner.compile(BACKEND)
    return runner


def train(runner: StepRunner, steps: int = TRAIN_STEPS, family: bool = False) -> list[dict[str, float]]:
    """Each step's losses by style; a family's images each carry one of its two styles, drawn as training draws them."""
    generator = torch.Generator().manual_seed(1)
    photo = images.to_tensor(images.resize_and_center_crop(
        images.decode_rgb((STYLES.parent / "held_out" / "rocket.jpg").read_bytes(), max_pixels=10**8), TRAIN_SIDE))
    history = []
    for _ in range(steps):
        batch = (photo[None] * (0.7 + 0.6 * torch.rand(4, 1, 1, 1, generator=generator))).clamp(0, 255)
        drawn = image_styles(0, len(history) * 4, 4, 2) if family else None
        history.append({name: float(parts["total"]) for name, parts in runner.step(batch.to(DEVICE), drawn, drawn and sorted(set(drawn))).items()})
    return history


def test_a_pack_trains_compiled_in_bf16_as_it_does_eagerly_in_fp32_with_static_graphs_only():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    reference = train(make_runner("fp32", compiled=False, channels_last=False))
    fast = train(make_runner("bf16", compiled=True, channels_last=not ON_CPU))
    last_third = slice(-max(1, TRAIN_STEPS // 3), None)
    for name in reference[0]:
        assert abs(fast[0][name] - reference[0][name]) <= FIRST_STEP_TOLERANCE * reference[0][name], (name, fast[0], reference[0])
        late_fast, late_reference = (sum(step[name] for step in run[last_third]) / len(run[last_third]) for run in (fast, reference))
        assert abs(late_fast - late_reference) <= TRAJECTORY_TOLERANCE * late_reference, (name, late_fast, late_reference)
    assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])  # the pack; the loss network twice


def test_a_family_trains_compiled_in_bf16_as_it_does_eagerly_in_fp32_whatever_style_each_step_draws():
    """The family step (factory/family.py) on the GPU: the drawn style reaches the compiled network as a
    tensor, so every draw runs the same three static graphs."""
    import math

    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    reference = train(make_runner("fp32", compiled=False, channels_last=False, family=True), family=True)
    fast = train(make_runner("bf16", compiled=True, channels_last=not ON_CPU, family=True), family=True)
    for name, first in reference[0].items():  # step 0's draws: the same weights, only the arithmetic differs
        assert abs(fast[0][name] - first) <= FIRST_STEP_TOLERANCE * first, (fast[0], reference[0])
    assert set(reference[0]) == {"starry_night", "the_scream"}
    assert all(math.isfinite(loss) for step in fast for loss in step.values())
    assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])  # the family; the loss network twice


@pytest.mark.parametrize("written", ["cpu", "bf16", "fp16"])
@pytest.mark.parametrize("resumed", ["fp32", "bf16", "fp16"])
def test_a_checkpoint_resumes_on_the_gpu_in_any_precision(written, resumed):
    """Written on the CPU (fp32), or on the GPU in bf16 or fp16; resumed on the GPU in each: Adam's
    moments on the parameters' device, the loss scale where there is one, the step going on."""
    source = torch.device("cpu") if written == "cpu" else DEVICE
    pack_plan = plan(("starry_night", "the_scream"))  # the objective's styles
    pack, optimizer, progress = build_pack(pack_plan, source, False, None)
    first = StepRunner(pack, make_objective(source), optimizer, "fp32" if written == "cpu" else written, source.type)
    first.step(torch.rand(2, 3, 64, 64, device=source) * 255)
    progress.step = 1
    state = torch.load(io.BytesIO(checkpoint_bytes(pack, optimizer, progress, first.scaler)), map_location="cpu", weights_only=True)

    pack, optimizer, progress = build_pack(pack_plan, DEVICE, False, state)
    assert progress.step == 1 and progress.resumed_at_steps == [1]
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            assert parameter.device.type == DEVICE.type
            assert all(value.device == parameter.device for key, value in optimizer.state[parameter].items() if key != "step")
    runner = StepRunner(pack, make_objective(DEVICE), optimizer, resumed, DEVICE.type)
    restore_run_state(runner, state)
    if resumed == "fp16" and written == "fp16":
        assert runner.scaler.get_scale() == first.scaler.get_scale()
    losses = runner.step(torch.rand(2, 3, 64, 64, device=DEVICE) * 255)
    assert all(torch.isfinite(parts["total"]) for parts in losses.values())


def test_fp16_channels_last_serving_matches_fp32_on_the_cpu_within_the_stated_tolerance(tmp_path):
    version = publish_random_style(tmp_path, "alpha", 0)
    fast = StyleModel(str(tmp_path), "alpha", version, device=DEVICE)
    plain = StyleModel(str(tmp_path), "alpha", version, device=torch.device("cpu"), fast=False)
    photo = images.to_tensor(images.fit_within(images.decode_rgb((STYLES.parent / "held_out" / "chelsea.png").read_bytes(),
                                                                 max_pixels=10**8), 128 if ON_CPU else 512))
    difference = (fast.forward_by_size([photo])[0] - plain.forward_by_size([photo])[0]).abs()
    assert difference.mean() < STYLISE_MEAN_TOLERANCE and difference.max() < STYLISE_MAX_TOLERANCE, (difference.mean(), difference.max())


def test_a_family_served_in_fp16_gives_each_image_of_a_batch_its_own_style_within_the_stated_tolerance(tmp_path):
    """A family's model on the GPU (fp16, channels_last, eager) against fp32 on the CPU: one batch of two
    styles and their blend, each image within the single-style tolerance of its own style."""
    from factory import registry

    versions = publish_random_family(tmp_path, ("fa", "fb"), seed=4, family="gpu-family")
    family_version = registry.read_family_metadata(str(tmp_path), "gpu-family")["family"]["version"]
    fast = StyleModel(str(tmp_path), "gpu-family", family_version, device=DEVICE, family=True)
    plain = StyleModel(str(tmp_path), "gpu-family", family_version, device=torch.device("cpu"), fast=False, family=True)
    photo = images.to_tensor(images.fit_within(images.decode_rgb((STYLES.parent / "held_out" / "chelsea.png").read_bytes(),
                                                                 max_pixels=10**8), 128 if ON_CPU else 512))
    vectors = plain.style_vectors
    styles = [vectors.vector("fa", versions["fa"]), vectors.vector("fb", versions["fb"]),
              vectors.blend((("fa", versions["fa"], 0.5), ("fb", versions["fb"], 0.5)))]
    expected = plain.forward_by_size([photo] * 3, styles)
    for served, wanted in zip(fast.forward_by_size([photo] * 3, styles), expected):
        difference = (served - wanted).abs()
        assert difference.mean() < STYLISE_MEAN_TOLERANCE and difference.max() < STYLISE_MAX_TOLERANCE, (difference.mean(), difference.max())
    assert (expected[0] - expected[1]).abs().mean() > 1  # two styles, two pictures: no image ran with another's vector


def test_the_static_shape_path_compiles_warm_shapes_answers_within_tolerance_and_never_recompiles_a_bucket(tmp_path):
    import torch._dynamo
    from torch._dynamo.utils import counters

    from serve.static_shapes import StaticShapes, resize

    torch._dynamo.reset()
    version = publish_random_style(tmp_path, "alpha", 0)
    shapes = StaticShapes(TransformNet(), DEVICE, capacity=4, backend=BACKEND, **({"dtype": torch.float32, "channels_last": False} if ON_CPU else {}))
    shapes.warm(STATIC_SHAPE)
    shapes.wait_until_idle()
    assert shapes.ready(STATIC_SHAPE) and not shapes.failed
    model = StyleModel(str(tmp_path), "alpha", version, device=DEVICE, static_shapes=shapes)
    reference = StyleModel(str(tmp_path), "alpha", version, device=torch.device("cpu"), fast=False).net
    graphs = counters["stats"]["unique_graphs"]
    height, width = STATIC_SHAPE
    photo = images.to_tensor(images.decode_rgb((STYLES.parent / "content" / "coffee.png").read_bytes(), max_pixels=10**8))
    for size in ((height - 18, width - 24), (height, width), (height - 8, width - 14)):  # one bucket
        picture = resize(photo[None], *size)[0].clamp(0, 255)
        output = model.forward_by_size([picture])[0]
        assert tuple(output.shape) == (3, *size)
        # The same bucketed computation in fp32 eager on the CPU: resized to the bucket, stylised, resized
        # back. (How far bucketing itself moves a picture is tests/test_static_shapes.py's business: a
        # random network like this one is no judge of that.)
        with torch.inference_mode():
            expected = resize(reference(resize(picture[None], height, width)), *size)[0].clamp(0, 255)
        difference = (output - expected).abs()
        assert difference.mean() < STYLISE_MEAN_TOLERANCE and difference.max() < 3 * STYLISE_MAX_TOLERANCE, (size, difference.mean(), difference.max())
    assert counters["stats"]["unique_graphs"] == graphs, "a size of a compiled bucket recompiled"


def test_video_frames_and_bulk_batches_run_on_the_gpu_as_on_the_cpu(tmp_path):
    """What a clip's frames and a bulk job's GPU actors run (factory/stylize.py's load_style_net and
    stylise_frames, which factory/video.py and bulk_stylize.Stylist call): a published style loaded onto
    the device, a batch of frames of one size through it, as eager fp32 on the CPU gives."""
    from factory import registry, stylize

    publish_random_style(tmp_path, "alpha", seed=5)  # no ONNX export: torch on either device
    metadata = registry.read_metadata(str(tmp_path), "alpha")
    net = stylize.load_style_net(str(tmp_path), metadata, DEVICE)
    assert next(net.parameters()).device.type == DEVICE.type
    frames = (torch.rand(3, 72, 100, 3) * 255).byte().numpy()
    stylised = stylize.stylise_frames(net, frames, DEVICE)
    reference = stylize.stylise_frames(registry.load_net(str(tmp_path), metadata), frames, torch.device("cpu"))
    assert stylised.shape == frames.shape and stylised.dtype == frames.dtype
    difference = abs(stylised.astype(int) - reference.astype(int))
    assert difference.mean() < STYLISE_MEAN_TOLERANCE and difference.max() < STYLISE_MAX_TOLERANCE, (difference.mean(), difference.max())


@pytest.mark.skipif(ON_CPU, reason="a CUDA memory limit")
def test_running_out_of_gpu_memory_answers_503_and_the_next_request_succeeds(tmp_path):
    import asyncio

    from serve import stylising
    from serve.http_input import HTTPError, StyliseOptions
    from serve.settings import EndpointSettings

    version = publish_random_style(tmp_path, "alpha", 0)
    model = StyleModel(str(tmp_path), "alpha", version, device=DEVICE)
    settings, big = EndpointSettings(max_side_limit=4096, default_max_side=4096), io.BytesIO()
    images.to_image(torch.rand(3, 4096, 4096) * 255).save(big, "PNG")
    small = io.BytesIO()
    images.to_image(torch.rand(3, 256, 256) * 255).save(small, "PNG")

    async def stylise(data: bytes, side: int):
        async def run(tensor):
            return stylising.run_model(model, [tensor])[0]
        return await stylising.stylise_image(data, StyliseOptions(side, 1.0, False, "png"), settings, run)

    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + 600 * 2**20) / total))
    try:
        with pytest.raises(HTTPError) as error:
            asyncio.run(stylise(big.getvalue(), 4096))
        assert error.value.status == 503
        image, _ = asyncio.run(stylise(small.getvalue(), 256))
        assert image.startswith(b"\x89PNG")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


@pytest.mark.parametrize("picture", ["white", "black", "noise"])
def test_fp16_stays_finite_on_extreme_inputs_at_2048_px(tmp_path, picture):
    version = publish_random_style(tmp_path, "alpha", 0)
    side = EXTREME_SIDE
    model = StyleModel(str(tmp_path), "alpha", version, device=DEVICE, max_batch_pixels=side * side)
    photo = {"white": torch.full((3, side, side), 255.0), "black": torch.zeros(3, side, side),
             "noise": torch.rand(3, side, side) * 255}[picture]
    output = model.forward_by_size([photo])[0]
    assert not isinstance(output, RunFailure), output
    assert torch.isfinite(output).all() and output.min() >= 0 and output.max() <= 255


def test_ray_train_runs_on_one_gpu_worker_is_killed_once_and_resumes(ray_local, dirty_images, tmp_path):
    """NCCL, bf16 and compile through Ray Train: tests/test_training.py's killed-worker run on the GPU.
    Needs Ray on the GPU machine (a cluster.yaml GPU node; the lent machines have torch only)."""
    needs_ray()
    if ON_CPU:
        pytest.skip("the CPU counterpart is tests/test_training.py")
    import test_training

    test_training.test_a_killed_worker_is_replaced_and_the_run_resumes_from_its_checkpoint(
        ray_local, dirty_images, tmp_path, accelerator="gpu", workers=1)


def test_two_workers_of_one_pack_on_a_one_gpu_machine_wait_and_are_reported_not_crammed_onto_it(dirty_images, tmp_path):
    """What the code promises: each worker reserves a whole GPU (NCCL cannot share a device), so the
    second never starts on a one-GPU machine; the driver says what it waits for and gives the pack up
    at training.start_deadline_s. Needs Ray on the GPU machine."""
    needs_ray()
    if ON_CPU or torch.cuda.device_count() != 1:
        pytest.skip("needs a machine with exactly one GPU")
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from factory_runs import write_config

    folder, _ = dirty_images
    config = write_config(tmp_path / "config.yaml", source=str(folder), registry=str(tmp_path / "registry"),
                          storage_path=str(tmp_path / "checkpoints"), steps=5, num_workers=2, styles=("udnie",),
                          accelerator="gpu", waiting_log_s=5, start_deadline_s=30)
    run = subprocess.run([sys.executable, "factory/train_all.py", "--config", str(config)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 1 and "each asks for 2 worker(s) of {CPU: 1, GPU: 1}" in output, output[-3000:]


def test_a_gpu_pool_replica_serves_two_styles_in_one_run(ray_local, tmp_path):
    """serve/style_pool.py on CUDA: fp16, the shared static shapes, two styles from one replica over HTTP."""
    needs_ray()
    if ON_CPU:
        pytest.skip("the CPU counterpart is tests/test_pool.py")
    import dataclasses

    import requests
    from ray import serve

    from conftest import free_port
    from serve.front_app import build_app
    from serve.settings import EndpointSettings, PoolSettings

    for seed, name in enumerate(("alpha", "beta")):
        publish_random_style(tmp_path, name, seed)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        settings = EndpointSettings(num_cpus=1, num_gpus=0.5, max_replicas=1, warm_shapes=["256x256"])
        serve.run(build_app({"registry": str(tmp_path), "settings": dataclasses.asdict(settings),
                             "pool": dataclasses.asdict(PoolSettings(refresh_s=1))}), route_prefix="/")
        photo = io.BytesIO()
        images.to_image(torch.rand(3, 256, 256) * 255).save(photo, "PNG")
        for name in ("alpha", "beta"):
            response = requests.post(f"http://127.0.0.1:{port}/styles/{name}", data=photo.getvalue(), timeout=120)
            assert response.status_code == 200 and response.headers["x-style"] == name, response.text
    finally:
        serve.shutdown()
