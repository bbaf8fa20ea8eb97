import torch

from factory.losses import (
    content_loss, gram_matrix, relative_content_loss, relative_style_loss, relative_total_variation, style_loss,
    total_variation_loss,
)


def test_gram_matrix_of_known_values():
    # One image, two channels of two pixels: f0 = [1, 2], f1 = [3, 4]; C*H*W = 2*1*2 = 4.
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4
    assert torch.allclose(gram_matrix(features), expected)


def test_gram_matrix_is_float32_under_half_precision_autocast():
    # fp16 would overflow (max 65504) on sums of products this large.
    features = torch.full((1, 4, 64, 64), 300.0, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(features)
    assert gram.dtype == torch.float32
    assert torch.allclose(gram, torch.full((1, 4, 4), 300.0**2 / 4))


def test_content_loss_is_mean_squared_difference():
    a, b = torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2, 2), 3.0)
    assert content_loss(a, b).item() == 9.0
    assert content_loss(a, a).item() == 0.0


def test_style_loss_sums_layers_and_broadcasts_the_target():
    grams = [torch.ones(2, 3, 3), torch.zeros(2, 4, 4)]
    targets = [torch.zeros(1, 3, 3), torch.full((1, 4, 4), 2.0)]
    assert style_loss(grams, targets).item() == 1.0 + 4.0


def test_total_variation_is_zero_for_flat_images_and_counts_both_directions():
    assert total_variation_loss(torch.full((1, 3, 4, 4), 7.0)).item() == 0.0
    stripes = torch.zeros(1, 1, 2, 2)
    stripes[..., :, 1] = 1.0  # horizontal neighbours differ by 1, vertical ones are equal
    assert total_variation_loss(stripes).item() == 1.0


# --- per-layer normalisation: the scale that does not depend on the loss network -------------------

from factory.loss_network import LossNetwork
from factory.losses import loss_terms
from factory.vgg_weights import VGGWeights, random_vgg19

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def terms_through(weights: VGGWeights, normalisation: str, stylised, photos, style_image):
    network = LossNetwork(weights, ["relu4_2", *STYLE_LAYERS])
    features, photo_features, style_features = network(stylised), network(photos), network(style_image)
    return loss_terms(
        normalisation, stylised, photos, features["relu4_2"], photo_features["relu4_2"],
        [gram_matrix(features[layer]) for layer in STYLE_LAYERS], [gram_matrix(style_features[layer]) for layer in STYLE_LAYERS],
    )


def scaled_layer(weights: VGGWeights, layer_index: int, factor: float) -> VGGWeights:
    """The same network with one conv's weights and bias multiplied: that layer's activations (and,
    through the ReLUs, every later layer's, up to the biases) grow by `factor`."""
    convs = list(weights.convs)
    weight, bias = convs[layer_index]
    convs[layer_index] = (weight * factor, bias * factor)
    return VGGWeights(tuple(convs), weights.input_scale, weights.mean, weights.std, weights.source)


def test_per_layer_terms_are_unchanged_when_a_layers_weights_are_scaled():
    # A random VGG-19 has zero biases, so scaling conv3_1 scales relu3_1 and every deeper feature exactly.
    generator = torch.Generator().manual_seed(0)
    stylised, photos = torch.rand(2, 3, 32, 32, generator=generator) * 255, torch.rand(2, 3, 32, 32, generator=generator) * 255
    style_image = torch.rand(1, 3, 48, 48, generator=generator) * 255
    weights = random_vgg19()
    before = terms_through(weights, "per_layer", stylised, photos, style_image)
    after = terms_through(scaled_layer(weights, 4, 37.0), "per_layer", stylised, photos, style_image)
    for name in ("content", "style", "tv"):
        assert torch.allclose(before[name], after[name], rtol=1e-4), (name, before[name], after[name])
    # The seed's formulation is not scale-free: the same change moves its style term by orders of magnitude.
    raw_before = terms_through(weights, "none", stylised, photos, style_image)
    raw_after = terms_through(scaled_layer(weights, 4, 37.0), "none", stylised, photos, style_image)
    assert raw_after["style"] > 100 * raw_before["style"]


def test_per_layer_terms_are_relative_errors():
    target = torch.rand(2, 8, 4, 4) + 0.5
    assert torch.allclose(relative_content_loss(target * 1.5, target), torch.tensor(0.25))
    same = torch.rand(1, 3, 8, 8) * 255
    assert relative_style_loss([gram_matrix(same)], [gram_matrix(same)]).item() == 0.0
    # Two layers, one matched and one three times too strong: (0 + 2^2) / 2.
    assert torch.allclose(relative_style_loss([gram_matrix(same), gram_matrix(same) * 3.0], [gram_matrix(same)] * 2), torch.tensor(2.0))


def test_relative_total_variation_compares_with_the_photo_and_survives_a_flat_photo():
    photo = torch.rand(1, 3, 16, 16) * 255
    assert torch.allclose(relative_total_variation(photo, photo), torch.tensor(1.0))
    assert torch.allclose(relative_total_variation(photo * 0.5, photo), torch.tensor(0.25))
    flat = torch.full((1, 3, 16, 16), 128.0)
    # A flat photo has no TV to compare with: the stylised image's own TV over FLAT_PHOTO_TV (1.0, in
    # squared 0..255 steps), not a division by zero or by a speck of noise.
    from factory.losses import FLAT_PHOTO_TV, total_variation_loss
    assert torch.allclose(relative_total_variation(photo, flat), total_variation_loss(photo) / FLAT_PHOTO_TV)
    assert torch.allclose(relative_total_variation(photo, flat + 0.01 * torch.rand_like(flat)), total_variation_loss(photo) / FLAT_PHOTO_TV)
