"""The loss network: layer names, the random VGG, and where ImageNet weights come from (never the network)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stylize.features import vgg
from stylize.errors import StylizeError

from conftest import cached_random_features


@pytest.fixture(scope="session")
def random_vgg19():
    return cached_random_features("vgg19")[0]  # the real vgg.random_features, built once per session


def test_layer_names_match_torchvision_indices(random_vgg19):
    names = vgg.layer_names(random_vgg19)
    assert len(names) == len(random_vgg19) == 37
    # the usual Gatys / Johnson taps, at torchvision's vgg19.features indices
    expected = {"conv1_1": 0, "relu1_1": 1, "relu1_2": 3, "pool1": 4, "relu2_1": 6, "relu2_2": 8,
                "relu3_1": 11, "relu3_4": 17, "relu4_1": 20, "relu4_2": 22, "relu4_4": 26,
                "relu5_1": 29, "relu5_4": 35, "pool5": 36}
    for name, index in expected.items():
        assert names[index] == name
    for name, module in zip(names, random_vgg19):
        kind = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}[name[:4]]
        assert isinstance(module, kind), name


def test_layer_names_vgg16():
    from torchvision.models.vgg import cfgs, make_layers

    names = vgg.layer_names(make_layers(cfgs["D"]))  # vgg16's features, without building the classifier
    assert names[8] == "relu2_2" and names[15] == "relu3_3" and names[22] == "relu4_3" and names[29] == "relu5_3"


def test_random_features_are_deterministic(random_vgg19):
    again, desc = vgg.random_features("vgg19")
    assert "random" in desc
    for a, b in zip(random_vgg19.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other, _ = vgg.random_features("vgg19", seed=1)
    assert not torch.equal(random_vgg19[0].weight, other[0].weight)


def test_random_features_stay_well_scaled(random_vgg19):
    names = vgg.layer_names(random_vgg19)
    relus = [n for n in names if n.startswith("relu")]
    net = vgg.VGGFeatures(random_vgg19, relus, "random")
    g = torch.Generator().manual_seed(5)
    photo = nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=64, mode="bilinear")
    with torch.no_grad():
        out = net(photo)
    for name in relus:
        rms = float(out[name].pow(2).mean().sqrt())
        assert 0.1 < rms < 10, (name, rms)


def test_vgg_features_truncate_and_keep_taps_intact(random_vgg19):
    net = vgg.VGGFeatures(random_vgg19, ["conv1_2", "relu1_2", "relu2_1"], "random")
    assert len(net.features) == 7  # up to relu2_1, nothing deeper is computed
    assert not any(p.requires_grad for p in net.parameters())
    out = net(torch.rand(1, 3, 32, 32))
    assert set(out) == {"conv1_2", "relu1_2", "relu2_1"}
    # torchvision's ReLUs are in place; the conv tap must not have been rectified afterwards
    assert out["conv1_2"].min() < 0
    torch.testing.assert_close(out["relu1_2"], out["conv1_2"].clamp_min(0))


def test_unknown_layer_and_net_are_refused(random_vgg19):
    with pytest.raises(StylizeError, match="relu9_9"):
        vgg.VGGFeatures(random_vgg19, ["relu9_9"], "random")
    with pytest.raises(StylizeError, match="resnet"):
        vgg.loss_network("resnet", ["relu1_1"])


def test_loss_network_random_works_offline():
    net = vgg.loss_network("random", ["relu1_2"])
    assert "random" in net.description
    assert net(torch.rand(1, 3, 16, 16))["relu1_2"].shape == (1, 64, 16, 16)


def test_missing_imagenet_weights_offline_say_what_to_do():
    with pytest.raises(StylizeError) as e:
        vgg.loss_network("vgg16", ["relu2_2"])
    msg = str(e.value)
    assert "not cached" in msg and "--vgg-weights" in msg and "--loss-net efficientnet-lite0" in msg
    assert "\n" not in msg


def test_failed_download_says_what_to_do(monkeypatch):
    monkeypatch.delenv("STYLIZE_OFFLINE")  # downloads allowed, but torch.hub raises (conftest)
    with pytest.raises(StylizeError) as e:
        vgg.loss_network("vgg16", ["relu2_2"])
    msg = str(e.value)
    assert "could not download" in msg and "--vgg-weights" in msg and "--loss-net efficientnet-lite0" in msg


def test_explicit_vgg16_weights_file_loads(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    source = make_layers(cfgs["D"])  # randomly initialised torchvision vgg16 features
    features_file = tmp_path / "features.pth"
    torch.save(source.state_dict(), features_file)
    # a whole-model state dict, as torchvision's vgg16-397923af.pth: "features.0.weight", ..., "classifier..."
    whole = {f"features.{k}": v for k, v in source.state_dict().items()}
    whole["classifier.0.weight"] = torch.zeros(2, 2)
    whole_file = tmp_path / "whole.pth"
    torch.save(whole, whole_file)
    for f in (features_file, whole_file):
        net = vgg.loss_network("vgg16", ["relu1_2", "relu2_2"], weights_file=f)
        assert f.name in net.description
        assert torch.equal(net.features[0].weight, source[0].weight)
        assert torch.equal(net.features[7].weight, source[7].weight)


def test_wrong_vgg_weights_files_are_refused(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    wrong_arch = tmp_path / "vgg19_features.pth"
    torch.save(make_layers(cfgs["E"]).state_dict(), wrong_arch)  # vgg19 layers for --loss-net vgg16
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file at all" * 10)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    for f in (wrong_arch, garbage, tensor):
        with pytest.raises(StylizeError, match=str(f.name)):
            vgg.imagenet_features("vgg16", f)
    with pytest.raises(StylizeError, match="not found"):
        vgg.imagenet_features("vgg16", tmp_path / "missing.pth")
