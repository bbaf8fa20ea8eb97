import logging

import numpy as np
import pytest
import torch

import vgg_files
from factory.loss_network import LossNetwork
from factory.vgg_weights import VGGWeightsError, load_vgg19, read_weights_file

ALL_LAYERS = ["relu1_1", "relu2_2", "relu3_4", "relu4_2", "relu5_1"]


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vgg")
    convs = vgg_files.matconvnet_convs(seed=1)
    return {
        "pth": vgg_files.write_pth(folder / "vgg19.pth", convs),
        "mat_old": vgg_files.write_mat_old(folder / "old.mat", convs),
        "mat_oldest": vgg_files.write_mat_old(folder / "oldest.mat", convs, old_field_names=True),
        "mat_new": vgg_files.write_mat_new(folder / "imagenet-vgg-verydeep-19.mat", convs),
    }


def features(path, images):
    network = LossNetwork(load_vgg19([str(path)]), ALL_LAYERS)
    with torch.no_grad():
        return network(images)


def test_the_same_weights_through_every_format_give_the_same_features(weight_files):
    images = torch.rand(2, 3, 32, 32) * 255
    reference = features(weight_files["mat_new"], images)
    for name in ("pth", "mat_old", "mat_oldest"):
        other = features(weight_files[name], images)
        for layer in ALL_LAYERS:
            scale = reference[layer].abs().max()
            assert scale > 0
            assert torch.allclose(other[layer], reference[layer], atol=1e-4 * scale, rtol=1e-4), (name, layer)


def test_each_source_gets_its_own_preprocessing(weight_files):
    mat = load_vgg19([str(weight_files["mat_new"])])
    pth = load_vgg19([str(weight_files["pth"])])
    assert (mat.input_scale, mat.std) == (1.0, (1.0, 1.0, 1.0))
    assert mat.mean == pytest.approx(tuple(vgg_files.MEAN_PIXEL))  # read from the file
    assert (pth.input_scale, pth.mean, pth.std) == (255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # Swapping the preprocessing breaks the equivalence: the test above could fail.
    swapped = type(pth)(pth.convs, mat.input_scale, mat.mean, mat.std, "swapped")
    images = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        wrong = LossNetwork(swapped, ["relu2_2"])(images)["relu2_2"]
        right = LossNetwork(mat, ["relu2_2"])(images)["relu2_2"]
    assert not torch.allclose(wrong, right, rtol=1e-2)


def test_loss_network_stops_at_the_deepest_requested_layer(weight_files):
    network = LossNetwork(load_vgg19([str(weight_files["pth"])]), ["relu2_1"])
    assert len(network.convs) == 3
    assert all(not p.requires_grad for p in network.parameters())


def test_a_corrupt_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "imagenet-vgg-verydeep-19.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00garbage" * 50)
    with pytest.raises(VGGWeightsError, match="not a readable MATLAB"):
        load_vgg19([str(path), "random"])  # a broken file is an error, not a reason to fall back


def test_a_state_dict_of_another_network_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(VGGWeightsError, match="not a torchvision VGG-19"):
        load_vgg19([str(path)])


def test_wrong_shapes_are_refused_with_the_layer_named(tmp_path):
    convs = vgg_files.matconvnet_convs()
    state = vgg_files.torchvision_state_dict(convs)
    state["features.5.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "vgg16ish.pth"
    torch.save(state, path)
    with pytest.raises(VGGWeightsError, match="conv2_1"):
        load_vgg19([str(path)])


def test_a_pickled_module_is_never_unpickled(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
    with pytest.raises(VGGWeightsError, match="tensors-only"):
        read_weights_file(path.read_bytes(), str(path))


@pytest.mark.parametrize("average_image", [np.zeros((0, 0)), "placeholder", np.full((1, 1, 3), np.nan), np.ones((1, 2))],
                         ids=["empty", "placeholder", "nan", "two-values"])
def test_a_broken_average_image_is_a_weights_error_not_nan(tmp_path, average_image):
    path = vgg_files.write_mat_new(tmp_path / "imagenet-vgg-verydeep-19.mat", vgg_files.matconvnet_convs(seed=1), average_image)
    with pytest.raises(VGGWeightsError, match="averageImage"):
        load_vgg19([str(path)])


def test_a_mat_file_without_vgg19_layers_is_refused(tmp_path):
    import scipy.io

    path = tmp_path / "imagenet-vgg-verydeep-16.mat"
    scipy.io.savemat(path, {"layers": [[{"name": "conv1_1", "type": "conv"}]]})
    with pytest.raises(VGGWeightsError):
        load_vgg19([str(path)])


def test_missing_weights_stop_with_instructions_and_no_silent_fallback(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagenet-vgg-verydeep-19.mat") as error:
        load_vgg19([str(tmp_path / "imagenet-vgg-verydeep-19.mat"), str(tmp_path / "vgg19.pth")])
    assert "not found" in str(error.value) and "random" in str(error.value)


def test_random_weights_only_when_listed_and_loudly(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        weights = load_vgg19([str(tmp_path / "missing.mat"), "random"])
    assert weights.is_random and weights.source == "random"
    assert "RANDOM" in caplog.text
