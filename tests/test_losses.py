import torch

from factory.losses import content_loss, gram_matrix, style_loss, total_variation_loss


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
