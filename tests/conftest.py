"""Shared fixtures: synthetic photos and styles, tiny training settings, one tiny trained model.

Everything runs on the CPU from images made here; nothing is read from ../shared/data and nothing is
downloaded (TORCH_HOME points to an empty folder and torch.hub downloads raise).
"""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from stylize.models import modelfile
from stylize.features import vgg
from stylize.models.networks import NetConfig, TransformerNet
from stylize.settings import TrainConfig

# Tiny tensors: OpenMP start-up and spinning costs far more than the arithmetic on small CPU boxes
# (measured 50x slower per step with 2 threads than with 1 on the 2-core test machine).
torch.set_num_threads(1)


def pytest_configure(config):
    # training.py converts the loss terms with float(), which warns once per run; not what we test
    config.addinivalue_line("filterwarnings", "ignore:Converting a tensor with requires_grad=True:UserWarning")


def load_script(relative: str):
    """A script of the checkout (bench/, studies/) as a module, without running its main."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_cin_record(styles: list[str], width: int = 4) -> dict:
    """The model record of an untrained strength-conditioned network of several styles, whose
    per-style norm parameters are far apart (as after training)."""
    import torch

    from stylize.models.networks import NetConfig, TransformerNet
    from stylize.settings import TrainConfig
    from stylize.train.training import model_record

    torch.manual_seed(0)
    net = TransformerNet(NetConfig("conditional", len(styles), True, width)).eval()
    with torch.no_grad():
        for n in net.norms():
            n.affine.weight.copy_(1 + 0.5 * torch.randn_like(n.affine.weight))
            n.affine.bias.copy_(0.5 * torch.randn_like(n.affine.bias))
    return model_record(net, TrainConfig(norm="conditional", width=width), list(styles), half=False)


def make_photo(seed: int, width: int = 48, height: int = 40) -> Image.Image:
    """A photo-like RGB image: smooth gradients, a few flat shapes and a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([
        xx / width * rng.uniform(0.3, 1.0),
        yy / height * rng.uniform(0.3, 1.0),
        0.5 + 0.4 * np.sin(xx / rng.uniform(3, 9) + yy / rng.uniform(3, 9)),
    ], axis=-1)
    for _ in range(3):
        x0, y0 = rng.integers(0, width - 8), rng.integers(0, height - 8)
        img[y0:y0 + rng.integers(4, 16), x0:x0 + rng.integers(4, 16)] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.03, img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), "RGB")


def make_style(seed: int, size: int = 64) -> Image.Image:
    """A strongly textured style image: coloured stripes and checks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    f = rng.uniform(0.3, 1.2, 3)
    img = np.stack([
        0.5 + 0.5 * np.sin(xx * f[0]),
        0.5 + 0.5 * np.cos(yy * f[1]),
        ((xx // 6 + yy // 6) % 2) * f[2] / 1.2,
    ], axis=-1)
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), "RGB")


def tiny_config(tmp: Path, content: Path, style: list[Path], **overrides) -> TrainConfig:
    """Settings small enough for a CPU test: 32 px crops, width 8 of the default (light) network,
    shallow random-VGG layers."""
    cfg = TrainConfig(
        style=[str(s) for s in style], content=str(content) if content else None, out=str(tmp / "model.pt"),
        width=8, iterations=6, batch_size=2, image_size=32, style_size=64,
        loss_net="random", content_layers=["relu1_2"], style_layers=["relu1_2", "relu2_1"],
        device="cpu", checkpoint_every=0, sample_every=1000, workers=0, seed=0,
        # a constant rate, so that a run extended with --iterations is the longer run (test_training.py);
        # crops of the whole (tiny) photo
        lr_schedule="constant", content_size=0,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


_REAL_RANDOM_FEATURES = vgg.random_features
_RANDOM_FEATURES: dict = {}


def cached_random_features(arch: str = "vgg19", seed: int = vgg.RANDOM_SEED):
    """vgg.random_features, built once per (arch, seed) for the session and copied out.

    It is a pure function of its arguments (test_vgg.py checks that on the real one); building a
    torchvision VGG-19 takes seconds on a small CPU, and every training test needs one.
    """
    if (arch, seed) not in _RANDOM_FEATURES:
        _RANDOM_FEATURES[arch, seed] = _REAL_RANDOM_FEATURES(arch, seed)
    features, description = _RANDOM_FEATURES[arch, seed]
    return copy.deepcopy(features), description


@pytest.fixture
def fast_random_vgg(monkeypatch):
    monkeypatch.setattr(vgg, "random_features", cached_random_features)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """No user folders, no caches, no network: every test sees a fresh HOME and TORCH_HOME."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("STYLIZE_OFFLINE", "1")
    monkeypatch.delenv("STYLIZE_MODELS", raising=False)
    monkeypatch.delenv("STYLIZE_CONTENT", raising=False)
    # apply runs on PyTorch here: exporting every test's fresh model to ONNX would take seconds each;
    # tests/test_onnx.py covers the ONNX Runtime path
    monkeypatch.setenv("STYLIZE_RUNTIME", "torch")

    def no_download(*args, **kwargs):
        raise ConnectionError("the test suite never downloads")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return home


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """Six synthetic 48x40 JPEG photos."""
    d = tmp_path_factory.mktemp("photos")
    for i in range(6):
        make_photo(i).save(d / f"photo{i}.jpg", quality=95)
    return d


@pytest.fixture(scope="session")
def style_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("styles") / "stripes.png"
    make_style(0).save(p)
    return p


@pytest.fixture(scope="session")
def style_path2(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("styles2") / "checks.png"
    make_style(1).save(p)
    return p


@pytest.fixture(scope="session")
def trained(tmp_path_factory, photos_dir, style_path):
    """One tiny single-style model with strength, trained once for the whole session (30 iterations)."""
    from stylize.train.training import train

    tmp = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(tmp, photos_dir, [style_path], iterations=30, sample_every=10, checkpoint_every=15)
    events = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp / "torch"))
        mp.setenv("STYLIZE_OFFLINE", "1")
        mp.setenv("STYLIZE_CACHE", str(tmp / "cache"))  # before the per-test HOME: not the user's cache
        mp.setattr(vgg, "random_features", cached_random_features)
        path = train(cfg, progress=events.append)
    return SimpleNamespace(path=Path(path), cfg=cfg, events=events, run=tmp / "model_run",
                           losses=[e.losses for e in events if e.event == "step"])


@pytest.fixture
def model(trained) -> Path:
    """The session's tiny trained model file."""
    return trained.path


@pytest.fixture
def photo(tmp_path) -> Path:
    """A 48x40 synthetic photo file."""
    p = tmp_path / "photo.png"
    make_photo(10).save(p)
    return p


@pytest.fixture
def make_model(tmp_path):
    """Write an untrained model file (random weights, random per-style affine parameters)."""
    from stylize.train.training import model_record

    def make(norm="instance", num_styles=1, strength=True, width=4, name="model", styles=None, seed=0,
             network="johnson", output="blend"):
        torch.manual_seed(seed)
        net = TransformerNet(NetConfig(norm, num_styles, strength, width, network, output=output)).eval()
        with torch.no_grad():
            for n in net.norms():
                n.affine.weight.copy_(1 + 0.5 * torch.randn_like(n.affine.weight))
                n.affine.bias.copy_(0.5 * torch.randn_like(n.affine.bias))
        styles = styles or [f"style{i}" for i in range(num_styles)]
        rec = model_record(net, TrainConfig(norm=norm, width=width, network=network, output=output), styles, half=False)
        return modelfile.save(rec, tmp_path / f"{name}.pt")

    return make
