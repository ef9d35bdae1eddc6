"""Distillation (train --teacher, train/teacher.py): each crop's target is exactly what the WCT model
paints from it with the painting, the network learns toward it, and settings it cannot follow are
refused in one line. With a tiny random WCT model made here (test_wct.wct_record), never the shipped one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_photo, tiny_config
from stylize.apply.engines.wct import WCTStylizer
from stylize.cli import app
from stylize.errors import StylizeError
from stylize.features.losses import TeacherLoss
from stylize.features.vgg import loss_network
from stylize.models import modelfile
from stylize.settings import TEACHER_LAYERS
from stylize.train.teacher import Teacher
from stylize.train.training import train
from test_wct import wct_record

pytestmark = pytest.mark.usefixtures("fast_random_vgg")


@pytest.fixture
def teacher_model(tmp_path):
    return modelfile.save(wct_record(), tmp_path / "tiny_wct.safetensors")


def test_targets_are_what_apply_paints_with_the_painting(teacher_model, style_path):
    """The teacher's picture of a crop is `stylize apply --style` on that crop (the WCT engine), to
    the level, at full strength and at half."""
    crops = np.stack([np.asarray(make_photo(s, 32, 24)).transpose(2, 0, 1) for s in (1, 2)])
    teacher = Teacher(str(teacher_model), [style_path], torch.device("cpu"))
    got = teacher(torch.from_numpy(crops).float() / 255, torch.zeros(2, dtype=torch.long), torch.tensor([1.0, 0.5]))
    engine = WCTStylizer(modelfile.load(teacher_model), "cpu")
    look = engine.condition([str(style_path)])
    for i, s in enumerate((1.0, 0.5)):
        want = engine.network(crops[i], look, s)
        assert np.array_equal((got[i] * 255).round().to(torch.uint8).numpy(), want)
    assert not np.array_equal(want, crops[1])  # the teacher paints: its picture is not the crop


def test_distillation_learns_the_teachers_picture(tmp_path, photos_dir, style_path, teacher_model):
    """Over 40 steps the network's distance to the teacher's pictures falls (measured on this
    machine: to 0.36 of it; asked: below 0.8)."""
    cfg = tiny_config(tmp_path, photos_dir, [style_path], teacher=str(teacher_model), iterations=40, lr=1e-2)
    rows = []
    train(cfg, progress=lambda p: rows.append(p.losses) if p.event == "step" else None)
    pixel = [r["pixel"] for r in rows]
    assert len(pixel) == 40 and set(rows[0]) >= {"pixel", "content", "total"}
    assert np.mean(pixel[-10:]) < 0.8 * np.mean(pixel[:10])
    assert modelfile.load(cfg.out)["train"]["teacher"] == str(teacher_model)  # the model file says how it was made


def test_the_statistics_term_asks_for_the_teachers_contrast():
    """A picture with the teacher's layout at half its contrast (what L1 alone regresses to) costs
    more than the teacher's own picture, which costs nothing, and a step down the term's gradient
    gives contrast back."""
    features, stats = TEACHER_LAYERS["random"]
    loss = TeacherLoss(loss_network("random", features + stats), features, stats)
    target = torch.from_numpy(np.asarray(make_photo(3, 48, 40)).transpose(2, 0, 1).copy())[None].float() / 255
    mean = target.mean((2, 3), keepdim=True)
    flat = (mean + 0.5 * (target - mean)).requires_grad_()
    assert loss(target, target)["style"].item() == 0
    cost = loss(flat, target)["style"]
    assert cost.item() > 0
    cost.backward()
    stepped = flat.detach() - 0.05 * flat.grad.sign()
    assert stepped.std().item() > flat.detach().std().item()


@pytest.mark.parametrize("what, change, says", [
    ("not a WCT model", "model", "not a WCT model"),
    ("crops the teacher cannot paint", "image_size", "--image-size 30"),
    ("an arbitrary-style network", "adaptive", "--teacher trains a network of fixed styles"),
])
def test_settings_it_cannot_follow_are_refused_in_one_line(tmp_path, photos_dir, style_path, teacher_model,
                                                          model, what, change, says):
    args = ["train", "--style", str(style_path), "--content", str(photos_dir), "--out", str(tmp_path / "m.pt"),
            "--teacher", str(model if change == "model" else teacher_model), "--iterations", "1",
            "--loss-net", "random", "--image-size", "30" if change == "image_size" else "32"]
    if change == "adaptive":
        args += ["--norm", "adaptive"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and says in r.output, (what, r.output)
    assert "Traceback" not in r.output and not (tmp_path / "m.pt").exists()


def test_teacher_refuses_a_model_that_is_not_wct(model, style_path):
    with pytest.raises(StylizeError, match="not a WCT model"):
        Teacher(str(model), [style_path], torch.device("cpu"))
