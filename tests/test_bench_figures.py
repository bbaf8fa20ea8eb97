"""The arithmetic the training benches' claims rest on (bench/held_out_eval.py, bench/training_flops.py): a
goal's verdict given the spread over seeds, distinctness, and FLOPs counted on the real training step."""

import pytest
import torch

from bench.held_out_eval import distinctness, spread, verdict
from bench.training_flops import step_flops
from factory.settings import LossSettings
from factory_runs import STYLES


def test_a_goal_is_met_or_missed_only_where_the_spread_over_seeds_allows_it():
    assert verdict(spread([0.95, 0.97, 0.99]), 0.9) == "met"
    assert verdict(spread([0.80, 0.95, 1.10]), 0.9) == "undecided"  # the mean clears it, one seed does not
    assert verdict(spread([0.70, 0.75, 0.80]), 0.9) == "missed"
    assert verdict(spread([1.02, 1.05, 1.08]), 1.10, higher_is_better=False) == "met"
    assert verdict(spread([1.05, 1.12, 1.19]), 1.10, higher_is_better=False) == "undecided"
    assert verdict(spread([1.20, 1.25, 1.30]), 1.10, higher_is_better=False) == "missed"
    assert verdict(spread([0.99]), 0.9) == "undecided"  # one seed has no spread to judge by
    figure = spread([1.0, 2.0, 3.0])
    assert (figure["mean"], figure["sd"], figure["min"], figure["max"], figure["n"]) == (2.0, 1.0, 1.0, 3.0, 3)


def test_distinctness_is_the_mean_difference_between_styles_outputs_of_the_same_photos():
    photo = torch.zeros(3, 4, 4)
    outputs = {"a": [photo, photo], "b": [photo + 10, photo], "c": [photo + 10, photo + 30]}
    # pairs a-b: 10, 0; a-c: 10, 30; b-c: 0, 30 -> mean 80 / 6
    assert distinctness(outputs) == pytest.approx(80 / 6)
    assert distinctness({"a": [photo], "b": [photo]}) == 0.0


def test_a_familys_step_costs_one_networks_pass_per_photo_and_a_separate_pack_one_per_style():
    images = {name: (STYLES / f"{name}.jpg").read_bytes() for name in ("starry_night", "the_scream", "udnie", "shipwreck")}
    separate = step_flops(False, images, batch=2, image_size=32, loss=LossSettings(style_size=32))
    family = step_flops(True, images, batch=2, image_size=32, loss=LossSettings(style_size=32))
    for figures in (separate, family):
        assert figures["total"] == pytest.approx(figures["transform"] + figures["loss_network"]) and figures["transform"] > 0
    # Four networks on every photo against one network on each photo (the conditional norms add next to nothing).
    assert separate["transform"] == pytest.approx(4 * family["transform"], rel=0.02)
    # VGG-19 sees 4 x 2 stylised images and the 2 photos, against 2 and 2: between 2.5 and 4 times as much.
    assert 2.5 < separate["loss_network"] / family["loss_network"] < 4
