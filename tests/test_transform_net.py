import pytest
import torch

from factory.transform_net import TransformNet


@pytest.mark.parametrize("upsample", ["nearest", "transposed"])
def test_output_keeps_the_input_shape(upsample):
    net = TransformNet(upsample)
    images = torch.rand(2, 3, 32, 48) * 255
    assert net(images).shape == (2, 3, 32, 48)


def test_sizes_that_are_not_multiples_of_four_come_back_unchanged():
    output = TransformNet()(torch.rand(1, 3, 37, 30) * 255)
    assert output.shape == (1, 3, 37, 30)


def test_output_stays_within_0_255_even_for_extreme_inputs():
    net = TransformNet()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(50)  # push the tanh into saturation
        output = net(torch.rand(2, 3, 32, 32) * 255)
    assert output.min() >= 0 and output.max() <= 255
    assert output.max() - output.min() > 100  # saturated, not collapsed


def test_architecture_follows_the_paper():
    net = TransformNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].kernel_size == (9, 9) and convs[-1].kernel_size == (9, 9)
    assert [c.stride for c in convs[1:3]] == [(2, 2), (2, 2)]
    assert sum(1 for m in net.modules() if type(m).__name__ == "ResidualBlock") == 5
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in net.modules())
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == len(convs) - 1  # every conv but the output conv is normalised


def test_unknown_upsample_mode_is_refused():
    with pytest.raises(ValueError, match="upsample mode"):
        TransformNet("bilinear-ish")


@pytest.mark.parametrize("height, width", [(1, 1), (4, 4), (2, 1000), (15, 40)])
def test_images_too_small_to_pad_still_come_back_at_their_size(height, width):
    net = TransformNet().eval()
    with torch.no_grad():
        output = net(torch.rand(1, 3, height, width) * 255)
    assert output.shape == (1, 3, height, width) and torch.isfinite(output).all()


@pytest.mark.parametrize("width, first_channels", [(0.5, 16), (0.25, 8)])
def test_a_narrower_network_scales_every_layers_channels(width, first_channels):
    narrow, full = TransformNet(width=width), TransformNet()
    convs = [m for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convs[:3]] == [first_channels, 2 * first_channels, 4 * first_channels]
    assert convs[-1].out_channels == 3
    # Convolution weights scale with the square of the width; biases and norms only linearly.
    ratio = sum(p.numel() for p in narrow.parameters()) / sum(p.numel() for p in full.parameters())
    assert width**2 <= ratio < 1.1 * width**2
    assert narrow(torch.rand(1, 3, 37, 30) * 255).shape == (1, 3, 37, 30)


def test_a_width_the_factory_does_not_offer_is_refused():
    with pytest.raises(ValueError, match="unknown network width 0.3; choose one of 1.0, 0.5, 0.25"):
        TransformNet(width=0.3)
