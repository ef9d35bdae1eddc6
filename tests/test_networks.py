"""The transformer network: shapes for every norm, conditional styles, linear mixing, strength."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from stylize.errors import StylizeError
from stylize.apply.engines.pytorch import Stylizer
from stylize.models.networks import NetConfig, TransformerNet
from stylize.models.norms import Condition, ConditionalAffine
from stylize.settings import TRANSFORMER_NETWORKS as NETWORKS, TRANSFORMER_NORMS as NORMS  # settings.NORMS/NETWORKS also name AdaIN's


def random_net(norm="conditional", num_styles=3, strength=True, width=4, seed=0, network="johnson") -> TransformerNet:
    """An eval-mode network whose per-style affine parameters differ (fresh ones are all 1 and 0)."""
    torch.manual_seed(seed)
    net = TransformerNet(NetConfig(norm, num_styles, strength, width, network)).eval()
    with torch.no_grad():
        for n in net.norms():
            a = n.affine
            a.weight.copy_(1 + 0.5 * torch.randn_like(a.weight))
            a.bias.copy_(0.5 * torch.randn_like(a.bias))
            if a.weight0 is not None:
                a.weight0.copy_(1 + 0.5 * torch.randn_like(a.weight0))
                a.bias0.copy_(0.5 * torch.randn_like(a.bias0))
    return net


def with_first_style(net: TransformerNet, weight_of, bias_of) -> TransformerNet:
    """A copy whose first style's affine parameters are replaced by weight_of(affine), bias_of(affine)."""
    other = copy.deepcopy(net)
    with torch.no_grad():
        for n in other.norms():
            a = n.affine
            w, b = weight_of(a).clone(), bias_of(a).clone()
            a.weight[0].copy_(w)
            a.bias[0].copy_(b)
    return other


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("size", [(32, 32), (36, 44), (44, 20)])
def test_output_has_input_size_for_multiples_of_4(norm, size, network):
    net = TransformerNet(NetConfig(norm=norm, width=4, network=network))
    x = torch.rand(2, 3, *size)
    for mode in (net.train, net.eval):
        mode()
        y = net(x)
        assert y.shape == x.shape
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("norm", NORMS)
def test_stylizer_returns_input_size_for_any_size(make_model, norm):
    stylizer = Stylizer(make_model(norm=norm, num_styles=2 if norm == "conditional" else 1), device="cpu")
    for h, w in [(37, 29), (29, 37), (33, 64), (5, 7), (3, 50), (1, 1)]:
        y = stylizer(torch.rand(3, h, w))
        assert y.shape == (3, h, w), (h, w)
        assert y.min() >= 0 and y.max() <= 1


def test_padding_does_not_leak_into_the_image(make_model):
    """The visible part of an odd-sized output is a crop of the padded image's output, not shifted."""
    stylizer = Stylizer(make_model(), device="cpu")
    x = torch.rand(3, 37, 29)
    y = stylizer(x)
    padded = F.pad(x[None], (0, 3, 0, 3), mode="reflect")  # 37 -> 40, 29 -> 32
    with torch.no_grad():
        ref = stylizer.net(padded, Condition(None, torch.tensor([1.0])))[0, :, :37, :29].clamp(0, 1)
    torch.testing.assert_close(y, ref)


def test_conditional_norm_has_one_affine_pair_per_style_and_shares_convs():
    one = TransformerNet(NetConfig("conditional", num_styles=1, strength=False, width=4))
    many = TransformerNet(NetConfig("conditional", num_styles=5, strength=False, width=4))
    norms = many.norms()
    assert len(norms) == len(one.norms()) == 15  # 3 down, 5 residual blocks x 2, 2 up
    for n in norms:
        c = n.affine.weight.shape[1]
        assert n.affine.weight.shape == (5, c) and n.affine.bias.shape == (5, c)
    convs_one = {k: v.shape for k, v in one.state_dict().items() if "affine" not in k}
    convs_many = {k: v.shape for k, v in many.state_dict().items() if "affine" not in k}
    assert convs_one == convs_many  # the convolutions do not grow with the number of styles
    extra = sum(p.numel() for p in many.parameters()) - sum(p.numel() for p in one.parameters())
    assert extra == 2 * 4 * sum(n.affine.weight.shape[1] for n in norms)


@pytest.mark.parametrize("norm", NORMS)
def test_selecting_a_style_equals_its_one_hot_mix(norm):
    net = random_net(norm)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        outs = [net(x, Condition(F.one_hot(torch.tensor([i]), 3).float())) for i in range(3)]
        # style 1 alone: move its parameters into slot 0, the slot used with no condition
        alone = with_first_style(net, lambda a: a.weight[1], lambda a: a.bias[1])(x, None)
    torch.testing.assert_close(outs[1], alone)
    assert (outs[0] - outs[1]).abs().max() > 1e-3  # the styles really differ


@pytest.mark.parametrize("norm", ["conditional", "group", "none"])
def test_mixing_styles_is_linear_in_the_norm_parameters(norm):
    net = random_net(norm, strength=False)
    w = torch.tensor([0.2, 0.5, 0.3])
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        mixed = net(x, Condition(w[None]))
        averaged = with_first_style(net, lambda a: w @ a.weight, lambda a: w @ a.bias)(x, None)
        single = net(x, Condition(F.one_hot(torch.tensor([1]), 3).float()))
    torch.testing.assert_close(mixed, averaged)
    assert (mixed - single).abs().max() > 1e-3


def test_strength_interpolates_the_norm_parameters_from_no_style_to_the_style():
    torch.manual_seed(0)
    affine = ConditionalAffine(5, num_styles=3, strength=True)
    with torch.no_grad():
        for p in affine.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 5, 4, 4)
    onehot = F.one_hot(torch.tensor([2, 0]), 3).float()
    for s in (0.0, 0.3, 1.0):
        y = affine(x, Condition(onehot, torch.tensor([s, s])))
        for row, style in enumerate((2, 0)):
            w = affine.weight0 + s * (affine.weight[style] - affine.weight0)
            b = affine.bias0 + s * (affine.bias[style] - affine.bias0)
            torch.testing.assert_close(y[row], x[row] * w.view(-1, 1, 1) + b.view(-1, 1, 1))
    # without a strength the style is at full strength
    torch.testing.assert_close(affine(x, Condition(onehot)), affine(x, Condition(onehot, torch.ones(2))))


@pytest.mark.parametrize("network", NETWORKS)
def test_strength_zero_gives_back_the_photo_whatever_the_style(network):
    net = random_net("conditional", strength=True, network=network)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        outs = [net(x, Condition(F.one_hot(torch.tensor([i, i]), 3).float(), torch.zeros(2))) for i in range(3)]
        full = net(x, Condition(F.one_hot(torch.tensor([0, 0]), 3).float(), torch.ones(2)))
    for y in outs:
        torch.testing.assert_close(y, x)
    assert (full - x).abs().max() > 1e-2


def test_constant_spatial_weights_equal_a_global_mix():
    net = random_net("conditional", strength=False)
    w = torch.tensor([0.6, 0.1, 0.3])
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        glob = net(x, Condition(w[None]))
        spatial = net(x, Condition(w.view(1, 3, 1, 1).expand(1, 3, 32, 32)))
        small_map = net(x, Condition(w.view(1, 3, 1, 1).expand(1, 3, 4, 4)))  # resized to each layer
    torch.testing.assert_close(glob, spatial)
    torch.testing.assert_close(glob, small_map)


def test_stylizer_mixes_and_pads_spatial_weights(make_model):
    stylizer = Stylizer(make_model(norm="conditional", num_styles=2, styles=["a", "b"]), device="cpu")
    x = torch.rand(3, 37, 29)
    w = stylizer.style_weights(["a=3", "b=1"])
    torch.testing.assert_close(w, torch.tensor([0.75, 0.25]))
    glob = stylizer(x, w)
    spatial = stylizer(x, w.view(2, 1, 1).expand(2, 37, 29))
    torch.testing.assert_close(glob, spatial)
    assert (stylizer(x, stylizer.style_weights(["b"])) - stylizer(x)).abs().max() > 1e-3
    torch.testing.assert_close(stylizer(x, stylizer.style_weights(["1"])), stylizer(x, torch.tensor([0.0, 1.0])))


def test_style_weights_parsing(make_model):
    stylizer = Stylizer(make_model(norm="conditional", num_styles=3, styles=["a", "b", "c"]), device="cpu")
    torch.testing.assert_close(stylizer.style_weights(None), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(stylizer.style_weights(["c"]), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(stylizer.style_weights(["2"]), torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(stylizer.style_weights(["a=1", "b=1"]), torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(StylizeError, match="0=a, 1=b, 2=c"):
        stylizer.style_weights(["starry"])
    with pytest.raises(StylizeError, match="finite number, 0 or more"):
        stylizer.style_weights(["a=-1"])
    with pytest.raises(StylizeError, match="not a number"):
        stylizer.style_weights(["a=lots"])
    with pytest.raises(StylizeError, match="zero"):
        stylizer.style_weights(["a=0"])


def test_strength_checks(make_model):
    full_only = Stylizer(make_model(strength=False, name="full"), device="cpu")
    x = torch.rand(3, 16, 16)
    assert full_only(x).shape == x.shape
    with pytest.raises(StylizeError, match="full strength only"):
        full_only(x, strength=0.5)
    stylizer = Stylizer(make_model(strength=True), device="cpu")
    for bad in (-0.1, 1.5):
        with pytest.raises(StylizeError, match="between 0 and 1"):
            stylizer(x, strength=bad)
    assert (stylizer(x, strength=0.0) - stylizer(x, strength=1.0)).abs().max() > 1e-3


def test_the_light_network_costs_a_fraction_of_johnsons():
    from torch.utils.flop_counter import FlopCounterMode

    def flops(network, width):
        net = TransformerNet(NetConfig("instance", 1, True, width, network)).eval()
        with FlopCounterMode(display=False) as count, torch.no_grad():
            net(torch.rand(1, 3, 64, 64))
        return count.get_total_flops()

    # Johnson et al.'s network at its usual width 32 against the shipped light one at width 16
    assert flops("light", 16) < flops("johnson", 32) / 8


def test_unknown_network_is_refused():
    with pytest.raises(ValueError, match="unknown network"):
        TransformerNet(NetConfig(network="resnet"))


def test_every_network_name_has_an_architecture():
    from stylize.models.networks import ARCHITECTURES

    assert tuple(ARCHITECTURES) == NETWORKS


def test_the_light_network_normalizes_only_in_its_encoder():
    # statistics after the encoder let training hide droplets in them (networks.py)
    net = TransformerNet(NetConfig("instance", 1, True, 4, "light"))
    kinds = [type(n.stat).__name__ for n in net.norms()]
    assert kinds == ["InstanceStat"] * 3 + ["Identity"] * 12
    ablation = TransformerNet(NetConfig("instance", 1, True, 4, "light-instance"))
    assert {type(n.stat).__name__ for n in ablation.norms()} == {"InstanceStat"}
