"""Training: the loss goes down, run files and model files are complete, resume repeats a straight run."""
from __future__ import annotations

import csv
import os
import shutil
import signal
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from stylize.models import modelfile
from stylize.features import vgg
from stylize.train.data import CropDataset, content_files
from stylize.errors import StylizeError
from stylize.apply.engines.pytorch import Stylizer
from stylize.models.networks import NetConfig, TransformerNet
from stylize.train.training import Interrupted, run_dir, train

from conftest import cached_random_features, make_style, tiny_config

pytestmark = pytest.mark.usefixtures("fast_random_vgg")

N, K = 6, 3  # a straight run of N iterations; resumed runs stop at K first


def history_without_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def read_csv(path: Path):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def snapshot(out: Path) -> dict:
    ckpt = modelfile.load(run_dir(out) / "checkpoint.pt")
    return {"history": history_without_time(ckpt["history"]), "state": ckpt["state_dict"],
            "csv": read_csv(run_dir(out) / "losses.csv"), "model": modelfile.load(out)["state_dict"]}


def assert_same_run(a: dict, b: dict):
    assert len(a["history"]) == len(b["history"]) == N
    assert a["history"] == b["history"]  # exactly the same loss sequence
    assert a["csv"] == b["csv"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


# ---------------------------------------------------------------- the session model (conftest.trained)

def test_a_few_iterations_lower_the_loss(trained):
    total = [row["total"] for row in trained.losses]
    assert len(total) == 30 and all(torch.isfinite(torch.tensor(total)))
    first, last = sum(total[:5]) / 5, sum(total[-5:]) / 5
    assert last < 0.8 * first, (first, last)  # measured: 0.54 (light network, default weights)


def test_progress_events(trained):
    steps = [e for e in trained.events if e.event == "step"]
    assert [e.iteration for e in steps] == list(range(1, 31))
    assert all(e.iterations == 30 and e.skipped == 0 for e in steps)
    assert {"iteration", "content", "style", "tv", "pixel", "total", "seconds"} <= set(steps[0].losses)
    samples = [e for e in trained.events if e.event == "sample"]
    assert [e.iteration for e in samples] == [10, 20, 30] and all(e.path.is_file() for e in samples)
    checkpoints = [e for e in trained.events if e.event == "checkpoint"]
    assert [e.iteration for e in checkpoints] == [15, 30]


def test_run_folder_holds_samples_losses_and_checkpoint(trained):
    run = trained.run
    assert run == run_dir(trained.path) and run.name == "model_run"
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["iter_000010.jpg", "iter_000020.jpg",
                                                                   "iter_000030.jpg"]
    grid = Image.open(run / "samples" / "iter_000030.jpg")
    # one row per sample photo (4), columns: the photo, then the one style; 32 px tiles, 2 px padding
    assert grid.size == (2 * 32 + 3 * 2, 4 * 32 + 5 * 2)
    rows = read_csv(run / "losses.csv")
    assert len(rows) == 30 and rows[-1]["iteration"] == "30"
    assert [float(r["total"]) for r in rows] == pytest.approx([r["total"] for r in trained.losses])
    assert Image.open(run / "losses.png").format == "PNG"
    assert not [p for p in run.rglob("*") if p.name.endswith(".part")]


def test_model_file_round_trip(trained):
    raw = torch.load(trained.path, map_location="cpu", weights_only=True)
    assert raw["format"] == modelfile.FORMAT and raw["kind"] == "transformer"
    assert raw["net"] == {"norm": "instance", "num_styles": 1, "strength": True, "width": 8, "network": "light",
                          "style_dim": 0, "output": "blend"}
    assert raw["styles"] == ["stripes"]
    # "auto" and unset settings, resolved: the style loss for --loss-net random, the style rate for --norm instance
    assert raw["train"] == {**asdict(trained.cfg), "style_loss": "sliced", "style_lr_scale": 10.0}
    assert raw["iteration"] == 30 and raw["metrics"]["skipped_photos"] == 0
    assert "optimizer" not in raw  # a finished model, not a checkpoint
    ckpt = torch.load(trained.run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"optimizer", "iteration", "rng", "history"} <= set(ckpt) and ckpt["iteration"] == 30
    for k, v in raw["state_dict"].items():  # the model is the checkpoint's weights in half precision
        if v.is_floating_point():
            assert v.dtype == torch.float16 and torch.equal(v, ckpt["state_dict"][k].half()), k

    stylizer = Stylizer(str(trained.path))  # every setting comes from the file
    assert stylizer.styles == ["stripes"] and stylizer.net.cfg == NetConfig("instance", 1, True, 8, "light", output="blend")
    net = TransformerNet(NetConfig(**raw["net"]))
    net.load_state_dict({k: v.float() for k, v in raw["state_dict"].items()})
    x = torch.rand(3, 32, 40)
    with torch.no_grad():
        ref = net.eval()(x[None], None)[0].clamp(0, 1)  # with no condition: first style, full strength
    torch.testing.assert_close(stylizer(x), ref)
    assert modelfile.describe(modelfile.load(trained.run / "checkpoint.pt"))["checkpoint"] is True


def test_an_explicit_style_loss_is_kept(tmp_path, photos_dir, style_path):
    path = train(tiny_config(tmp_path, photos_dir, [style_path], iterations=1, style_loss="gram"))
    assert modelfile.load(path)["train"]["style_loss"] == "gram"  # old models and explicit choices stay Gram
    with pytest.raises(StylizeError, match="unknown style loss 'fourier'"):
        train(tiny_config(tmp_path, photos_dir, [style_path], style_loss="fourier"))


def test_resuming_a_finished_model_is_refused(trained, tmp_path):
    cfg = tiny_config(tmp_path, tmp_path, ["unused.png"])
    with pytest.raises(StylizeError, match="not a checkpoint"):
        train(cfg, resume=trained.path)


# ---------------------------------------------------------------- resume reproduces a straight run

@pytest.fixture(scope="module")
def straight(tmp_path_factory, photos_dir, style_path):
    """N iterations in one go, with a checkpoint every K; the K checkpoint is kept aside."""
    tmp = tmp_path_factory.mktemp("straight")
    kept = tmp / "kept_at_k.pt"

    def keep(p):
        if p.event == "checkpoint" and p.iteration == K:
            shutil.copy(p.path, kept)

    cfg = tiny_config(tmp, photos_dir, [style_path], iterations=N, checkpoint_every=K, width=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vgg, "random_features", cached_random_features)
        mp.setenv("STYLIZE_CACHE", str(tmp / "cache"))  # before the per-test HOME: not the user's cache
        train(cfg, progress=keep)
    return {"cfg": cfg, "kept": kept, **snapshot(Path(cfg.out))}


def test_resume_from_a_periodic_checkpoint(straight):
    assert modelfile.load(straight["kept"])["iteration"] == K
    out = Path(straight["cfg"].out)
    out.unlink()
    train(tiny_config(out.parent, out.parent, [], iterations=N), resume=straight["kept"])  # settings from the file
    assert_same_run(straight, snapshot(out))


def test_train_k_then_resume_to_n(straight, tmp_path, photos_dir, style_path):
    cfg = tiny_config(tmp_path, photos_dir, [style_path], iterations=K, width=4)
    train(cfg)
    assert len(modelfile.load(cfg.out)["state_dict"]) > 0
    cfg.iterations = N
    train(cfg, resume=run_dir(cfg.out) / "checkpoint.pt")
    assert_same_run(straight, snapshot(Path(cfg.out)))


@pytest.mark.slow
def test_a_cosine_run_resumes_exactly(tmp_path, photos_dir, style_path):
    # the rate follows the run's own iterations, so a resumed run is the straight one; an extended
    # one is not (its rate had already come down), which is why the tests above use a constant rate
    cfg = tiny_config(tmp_path / "a", photos_dir, [style_path], iterations=N, checkpoint_every=K, width=4,
                      lr_schedule="cosine")
    kept = tmp_path / "kept.pt"
    train(cfg, progress=lambda p: p.event == "checkpoint" and p.iteration == K and shutil.copy(p.path, kept))
    straight = snapshot(Path(cfg.out))
    Path(cfg.out).unlink()
    train(tiny_config(tmp_path / "a", photos_dir, [], iterations=N), resume=kept)
    assert_same_run(straight, snapshot(Path(cfg.out)))


def test_sigint_stops_at_the_iteration_boundary_and_resume_matches(straight, tmp_path, photos_dir, style_path):
    cfg = tiny_config(tmp_path, photos_dir, [style_path], iterations=N, width=4)
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def interrupt(p):
        seen.append((p.event, p.iteration))
        if p.event == "step" and p.iteration == K:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    with pytest.raises(Interrupted) as e:
        train(cfg, progress=interrupt)
    assert e.value.iteration == K
    assert max(i for _, i in seen) == K  # no further iteration started
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back
    assert not Path(cfg.out).exists()  # no model from an unfinished run
    ckpt = modelfile.load(e.value.checkpoint)
    assert ckpt["iteration"] == K and len(ckpt["history"]) == K
    assert history_without_time(ckpt["history"]) == straight["history"][:K]
    train(cfg, resume=e.value.checkpoint)
    assert_same_run(straight, snapshot(Path(cfg.out)))


# ---------------------------------------------------------------- training photos

def test_unreadable_photos_are_skipped_and_counted(tmp_path, photos_dir, style_path):
    content = tmp_path / "content"
    shutil.copytree(photos_dir, content)
    (content / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 20)
    cfg = tiny_config(tmp_path, content, [style_path], iterations=4, width=4)
    ds = CropDataset(content_files(content), cfg.image_size, cfg.seed)
    expected = sum(ds._file(n).name == "broken.jpg" for n in range(cfg.iterations * cfg.batch_size))
    assert expected >= 1  # 7 files and 8 samples: the broken one is drawn at least once
    events = []
    path = train(cfg, progress=events.append)
    assert events[-1].skipped == expected
    rec = modelfile.load(path)
    assert rec["metrics"]["skipped_photos"] == expected
    assert all(torch.isfinite(v).all() for v in rec["state_dict"].values())


def test_folder_of_only_unreadable_photos_is_an_error(tmp_path, style_path):
    content = tmp_path / "content"
    content.mkdir()
    for i in range(3):
        (content / f"bad{i}.jpg").write_bytes(b"garbage" * 10)
    with pytest.raises(StylizeError, match="could be read"):
        train(tiny_config(tmp_path, content, [style_path]))


def test_empty_content_folder_says_how_to_supply_photos(tmp_path, style_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    for content, says in ((empty, "no training photos"), (tmp_path / "missing", "missing: no such folder")):
        with pytest.raises(StylizeError) as e:
            train(tiny_config(tmp_path, content, [style_path]))
        assert says in str(e.value)
        assert "--content" in str(e.value) and "STYLIZE_CONTENT" in str(e.value)
    monkeypatch.setenv("STYLIZE_CONTENT", str(empty))
    with pytest.raises(StylizeError, match="no training photos in " + str(empty)):
        train(tiny_config(tmp_path, None, [style_path]))
    assert not (tmp_path / "model.pt").exists()


def test_bad_style_images_are_errors(tmp_path, photos_dir):
    with pytest.raises(StylizeError, match="--style"):
        train(tiny_config(tmp_path, photos_dir, []))
    make_style(0, size=8).save(tmp_path / "tiny.png")
    with pytest.raises(StylizeError, match="too small"):
        train(tiny_config(tmp_path, photos_dir, [tmp_path / "tiny.png"]))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(StylizeError, match="bad.png"):
        train(tiny_config(tmp_path, photos_dir, [tmp_path / "bad.png"]))
    (tmp_path / "nostyles").mkdir()
    with pytest.raises(StylizeError, match="holds no images"):
        train(tiny_config(tmp_path, photos_dir, [tmp_path / "nostyles"]))
    with pytest.raises(StylizeError, match="norm"):
        train(tiny_config(tmp_path, photos_dir, [tmp_path / "tiny.png"], norm="spectral"))


def test_training_crops_are_reproducible(photos_dir):
    files = content_files(photos_dir)
    a, b, other = CropDataset(files, 32, seed=0), CropDataset(files, 32, seed=0), CropDataset(files, 32, seed=1)
    for n in (0, 5, 13, 100):
        x = a[n]
        assert x.shape == (3, 32, 32)
        assert torch.equal(x, b[n])
    assert any(not torch.equal(a[n], other[n]) for n in range(6))
    # every photo is seen once per epoch
    assert sorted(a._file(n).name for n in range(6)) == sorted(f.name for f in files)


def test_content_size_crops_details_at_that_scale(photos_dir):
    from stylize.train.data import fit_shorter_side
    from stylize.images import load_image

    files = content_files(photos_dir)
    whole, detail = CropDataset(files, 32, seed=0), CropDataset(files, 32, seed=0, content_size=80)
    for n in range(4):
        photo = fit_shorter_side(load_image(detail._file(n))[0], 80)  # 48x40 photos, shorter side 40 -> 80
        crop = detail[n]
        assert crop.shape == (3, 32, 32)
        # the crop is a window (maybe mirrored) of the photo at that scale, not of the 32 px photo
        windows = photo.unfold(1, 32, 1).unfold(2, 32, 1)
        assert min((windows - c[:, None, None]).abs().amax(dim=(0, 3, 4)).min() for c in (crop, crop.flip(-1))) < 1e-6
        assert not torch.equal(crop, whole[n])


def test_a_model_applies_at_the_scale_it_was_trained_at(tmp_path, photos_dir, style_path, trained):
    """A network paints marks of a fixed size, learnt on photos scaled to --content-size: its file says
    so, so a larger photo is stylized at that scale (scale.py) with no flag. Crops of whole photos
    (content_size 0, the session model) name no scale."""
    from stylize.apply import scale

    cfg = tiny_config(tmp_path, photos_dir, [style_path], content_size=40, iterations=1)
    stylizer = Stylizer(str(train(cfg)))
    assert stylizer.apply["work_size"] == 40
    assert scale.work_shape(96, 128, stylizer.apply) == (40, 53)
    assert not Stylizer(str(trained.path)).apply.get("work_size")


def test_learning_rate_schedules():
    from stylize.settings import TrainConfig
    from stylize.train.training import learning_rate

    cosine = TrainConfig(lr=1e-3, iterations=100)
    rates = [learning_rate(cosine, i) for i in range(101)]
    assert rates[0] == pytest.approx(1e-3) and rates[100] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # never rises
    assert rates[50] == pytest.approx(5.5e-4)
    constant = TrainConfig(lr=1e-3, iterations=100, lr_schedule="constant")
    assert {learning_rate(constant, i) for i in range(101)} == {1e-3}


def test_settings_recorded_under_their_former_names_are_read():
    """Model files and checkpoints from before the loss weights were *_loss_weight (and all_strengths
    was strength) keep what they were trained with."""
    from stylize.settings import TrainConfig

    old = TrainConfig.from_dict({"content_weight": 3.0, "style_weight": 7.0, "tv_weight": 0.5, "color_weight": 1.0,
                                 "pixel_weight": 9.0, "strength": False})
    assert (old.content_loss_weight, old.style_loss_weight, old.tv_loss_weight, old.color_loss_weight,
            old.pixel_loss_weight, old.all_strengths) == (3.0, 7.0, 0.5, 1.0, 9.0, False)
    assert TrainConfig.from_dict({}).color_loss_weight == 0.0 and TrainConfig.from_dict({}).network == "johnson"


# ---------------------------------------------------------------- jitter (issue 29)

def test_translate_moves_the_picture_and_keeps_its_size():
    from stylize.features.losses import translate

    t = torch.rand(1, 3, 12, 10)
    moved = translate(t, 2, -3, 4)
    assert moved.shape == t.shape
    torch.testing.assert_close(moved[..., 2:, :-3], t[..., :-2, 3:])  # down 2, left 3
    torch.testing.assert_close(translate(t, 0, 0, 4), t)


def test_a_jittered_run_sees_moved_views_and_resumes_exactly(tmp_path, photos_dir, style_path):
    """--jitter draws a view each step from the run's generator: a run with it differs from one
    without, and a resumed jittered run is the straight one."""
    straight = tiny_config(tmp_path / "a", photos_dir, [style_path], iterations=N, checkpoint_every=K, width=4, jitter=3)
    plain = tiny_config(tmp_path / "b", photos_dir, [style_path], iterations=N, width=4)
    train(straight)
    train(plain)
    a, b = snapshot(Path(straight.out)), snapshot(Path(plain.out))
    assert a["history"] != b["history"]
    resumed = tiny_config(tmp_path / "c", photos_dir, [style_path], iterations=K, checkpoint_every=K, width=4, jitter=3)
    train(resumed)
    resumed.iterations = N
    train(resumed, resume=run_dir(resumed.out) / "checkpoint.pt")
    assert_same_run(a, snapshot(Path(resumed.out)))
    assert modelfile.load(straight.out)["train"]["jitter"] == 3
