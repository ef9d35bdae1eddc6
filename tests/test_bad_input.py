"""Bad input, round two (issue 34): damaged model files, numbers that are not numbers, training
settings that cannot work, a mask with --max-size, two batches into one folder. Each case: the
command, its exit code, its one line, and what is (not) written."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from PIL import Image

from stylize import files
from stylize.apply import batch as pipeline
from stylize.settings import ApplyConfig

from typer.testing import CliRunner

from stylize.cli import app

from conftest import make_photo
from test_cli import assert_clean_failure, files_under, invoke

pytestmark = pytest.mark.usefixtures("fast_random_vgg")


# ---------------------------------------------------------------- damaged model files

def _damaged(tmp_path, make_model, change) -> tuple:
    """A model file with one thing changed by change(record) (in place), and its path."""
    path = make_model()
    rec = torch.load(path, weights_only=True)
    change(rec)
    bad = tmp_path / "damaged.pt"
    torch.save(rec, bad)
    return bad, rec


def _first_tensor(rec) -> str:
    return sorted(rec["state_dict"])[0]


# (name, change): every field the apply path reads, deleted, of another type, or corrupt
DAMAGE = [
    ("kind deleted", lambda r: r.pop("kind")),
    ("kind unknown", lambda r: r.update(kind="weird")),
    ("kind a list", lambda r: r.update(kind=[1, 2])),
    ("net deleted", lambda r: r.pop("net")),
    ("net a string", lambda r: r.update(net="johnson")),
    ("net width negative", lambda r: r["net"].update(width=-3)),
    ("net width a string", lambda r: r["net"].update(width="wide")),
    ("net width nan", lambda r: r["net"].update(width=float("nan"))),
    ("net unknown key", lambda r: r["net"].update(colour="blue")),
    ("net norm unknown", lambda r: r["net"].update(norm="weird")),
    ("net network unknown", lambda r: r["net"].update(network="weird")),
    ("net num_styles zero", lambda r: r["net"].update(num_styles=0)),
    ("net a tensor inside", lambda r: r["net"].update(width=torch.zeros(3))),
    ("styles deleted", lambda r: r.pop("styles")),
    ("styles a number", lambda r: r.update(styles=3)),
    ("styles of numbers", lambda r: r.update(styles=[1])),
    ("state_dict deleted", lambda r: r.pop("state_dict")),
    ("state_dict empty", lambda r: r.update(state_dict={})),
    ("state_dict a list", lambda r: r.update(state_dict=[1, 2])),
    ("a weight deleted", lambda r: r["state_dict"].pop(_first_tensor(r))),
    ("a weight extra", lambda r: r["state_dict"].update(extra=torch.zeros(2))),
    ("a weight of the wrong shape", lambda r: r["state_dict"].update({_first_tensor(r): torch.zeros(7, 7)})),
    ("a weight a string", lambda r: r["state_dict"].update({_first_tensor(r): "weights"})),
    ("a weight nan", lambda r: r["state_dict"][_first_tensor(r)].fill_(float("nan"))),
    ("a weight infinite", lambda r: r["state_dict"][_first_tensor(r)].fill_(float("inf"))),
    ("apply a string", lambda r: r.update(apply="strong")),
    ("apply strength nan", lambda r: r.update(apply={"full_strength": float("nan")})),
    ("apply palette a string", lambda r: r.update(apply={"palette": "half"})),
    ("apply work size negative", lambda r: r.update(apply={"work_size": -480})),
    ("apply colours damaged", lambda r: r.update(apply={"palette": 0.5, "colours": [{"mean": [0.5]}]})),
    ("train a list", lambda r: r.update(train=[1])),
    ("versions a string", lambda r: r.update(versions="new")),
    ("version a string", lambda r: r.update(version="one")),
]


@pytest.mark.parametrize("name,change", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_model_file_is_one_line_naming_the_file(tmp_path, make_model, photo, name, change):
    bad, _ = _damaged(tmp_path, make_model, change)
    out = tmp_path / "out.png"
    line = assert_clean_failure(invoke("apply", photo, "--model", bad, "--out", out, "--runtime", "torch", "-q"),
                                str(bad))
    assert len(line) < 300, line  # never the weights themselves (issue 34: a 177,040-byte line)
    assert not out.exists()


RECORD_DAMAGE = [d for d in DAMAGE if not d[0].startswith("a weight") and d[0] != "net unknown key"]


@pytest.mark.parametrize("name,change", RECORD_DAMAGE, ids=[d[0] for d in RECORD_DAMAGE])
def test_info_refuses_a_damaged_record_in_one_line(tmp_path, make_model, name, change):
    """`stylize info` reads the record without torch: the same refusals, the weights unread (their
    values, and settings no network takes, are refused when a network is built from them)."""
    bad, _ = _damaged(tmp_path, make_model, change)
    line = assert_clean_failure(invoke("info", bad), str(bad))
    assert len(line) < 300, line


def test_the_onnx_path_refuses_damaged_settings_and_weights_too(tmp_path, make_model, photo):
    for change in (lambda r: r["net"].update(width=-3),
                   lambda r: r["state_dict"][_first_tensor(r)].fill_(float("nan"))):
        bad, _ = _damaged(tmp_path, make_model, change)
        assert_clean_failure(invoke("apply", photo, "--model", bad, "--out", tmp_path / "o.png", "-q"), str(bad))


def test_an_undamaged_file_with_optional_fields_gone_still_applies(tmp_path, make_model, photo):
    """The fuzz's control: a record without its optional fields is not damaged."""
    bad, _ = _damaged(tmp_path, make_model, lambda r: [r.pop(k, None) for k in ("metrics", "versions", "train")])
    r = invoke("apply", photo, "--model", bad, "--out", tmp_path / "ok.png", "--runtime", "torch", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ok.png").exists()


# ---------------------------------------------------------------- numbers that are not numbers

@pytest.mark.parametrize("args", [
    ["apply", "PHOTO", "--style-weight", "nan"],
    ["apply", "PHOTO", "--style-weight", "inf"],
    ["train", "--style", "STYLE", "--lr", "nan"],
    ["train", "--style", "STYLE", "--style-loss-weight", "nan"],
    ["train", "--style", "STYLE", "--content-loss-weight", "inf"],
    ["train", "--style", "STYLE", "--lr", "inf"],
])
def test_nan_and_infinity_are_refused_before_any_work(tmp_path, photo, style_path, photos_dir, args):
    args = [str(photo) if a == "PHOTO" else str(style_path) if a == "STYLE" else a for a in args]
    extra = ["--content", photos_dir, "--out", tmp_path / "m.pt"] if args[0] == "train" else ["--out", tmp_path / "o.png"]
    r = invoke(*args, *extra)
    assert_clean_failure(r, "finite")
    assert files_under(tmp_path) == ["photo.png"]  # nothing written, no run folder


def test_a_model_trained_into_nan_is_not_written(tmp_path, photos_dir, style_path, monkeypatch):
    """A run whose weights stop being numbers ends with a clear line, and no model file that
    would give black pictures with exit 0."""
    from conftest import tiny_config
    from stylize.errors import StylizeError
    from stylize.train.training import train

    cfg = tiny_config(tmp_path, photos_dir, [style_path], iterations=3, lr=1e30)
    with pytest.raises(StylizeError, match="not written"):
        train(cfg)
    assert not (tmp_path / "model.pt").exists()


# ---------------------------------------------------------------- training settings

def test_a_crop_size_that_is_not_a_multiple_of_4_is_refused_before_set_up(tmp_path, photos_dir, style_path):
    r = invoke("train", "--style", style_path, "--content", photos_dir, "--out", tmp_path / "m.pt", "--image-size", 17)
    assert_clean_failure(r, "--image-size 17", "multiple of 4")
    assert files_under(tmp_path) == []  # no empty samples/ folder


def test_a_model_path_under_a_file_is_refused_before_set_up(tmp_path, photos_dir, style_path):
    """A folder that cannot be made (a file stands there): refused up front, as root too."""
    (tmp_path / "afile").write_text("x")
    r = invoke("train", "--style", style_path, "--content", photos_dir, "--out", tmp_path / "afile" / "m.pt")
    assert_clean_failure(r, "cannot write")
    assert files_under(tmp_path) == ["afile"]


def test_negative_workers_are_refused(tmp_path, photos_dir, style_path):
    r = invoke("train", "--style", style_path, "--content", photos_dir, "--out", tmp_path / "m.pt", "--workers", -5)
    assert r.exit_code != 0 and "Traceback" not in r.output


# ---------------------------------------------------------------- a mask with --max-size

def _apply_masked(tmp_path, make_model, mask_size, *extra):
    """A 96x64 photo through a two-style model with a white mask of mask_size."""
    photo, mask = tmp_path / "p.png", tmp_path / "m.png"
    make_photo(3, 96, 64).save(photo)
    Image.new("L", mask_size, 255).save(mask)
    model = make_model(norm="conditional", num_styles=2)
    return invoke("apply", photo, "--model", model, "--style", "style0", "--style", "style1", "--mask", mask,
                  "--out", tmp_path / "o.png", "-q", *extra)


def test_a_mask_is_scaled_with_the_photo_by_max_size(tmp_path, make_model):
    r = _apply_masked(tmp_path, make_model, (96, 64), "--max-size", 48)
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "o.png").size == (48, 32)


def test_a_mask_of_another_shape_is_still_refused(tmp_path, make_model):
    assert_clean_failure(_apply_masked(tmp_path, make_model, (64, 64)), "mask is 64x64")


# ---------------------------------------------------------------- two batches into one folder

def test_a_temporary_being_written_is_in_use_and_a_killed_ones_is_not(tmp_path):
    from stylize.files import atomic_write, in_use

    seen = {}

    def write(f):
        part = next(tmp_path.glob(".out.*.part"))
        seen["during"] = in_use(part)
        f.write(b"x")

    atomic_write(tmp_path / "out.png", write, ".out.", ".png.part")
    assert seen["during"] is True
    left = tmp_path / ".out.abc.png.part"  # what a SIGKILL leaves: nobody holds it
    left.write_bytes(b"half")
    assert in_use(left) is False


def test_a_second_batch_into_the_same_folder_waits_and_deletes_nothing_of_the_first(tmp_path, make_model):
    """Issue 34: the second `--skip-existing` run deleted the first's temporary file as stale, and
    the first then failed with "cannot write". Now it waits, then skips what the first wrote."""
    photos = tmp_path / "in"
    photos.mkdir()
    for i in range(3):
        make_photo(i).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    model = make_model()
    from stylize.apply.engines.pytorch import load_stylizer

    first_started, release, notices = threading.Event(), threading.Event(), []
    cfg = ApplyConfig(out_dir=str(out), skip_existing=True)

    def slow_progress(src, dst):
        first_started.set()
        release.wait(10)

    reports = {}

    def first():
        reports["first"] = pipeline.apply_files(load_stylizer(model, "cpu"), [str(photos)], cfg, progress=slow_progress)

    t = threading.Thread(target=first, daemon=True)
    t.start()
    assert first_started.wait(20)
    second = threading.Thread(daemon=True, target=lambda: reports.setdefault("second", pipeline.apply_files(
        load_stylizer(model, "cpu"), [str(photos)], cfg, notice=notices.append)))
    second.start()
    time.sleep(0.5)
    try:
        assert second.is_alive() and any("waiting for another stylize run" in n for n in notices), notices
    finally:
        release.set()
        t.join(30)
        second.join(30)
    assert not reports["first"].failed and len(reports["first"].written) == 3
    assert len(reports["second"].skipped) == 3 and not reports["second"].written  # each photo written once
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png"]


def test_the_folder_lock_is_released_when_the_run_ends(tmp_path):
    from stylize.files import folder_lock

    with folder_lock(tmp_path):
        pass
    waited = []
    with folder_lock(tmp_path, lambda: waited.append(1)):
        pass
    assert waited == []


def test_no_lock_module_means_no_waiting(tmp_path, monkeypatch):
    from stylize.files import folder_lock

    monkeypatch.setattr(files, "fcntl", None)
    with folder_lock(tmp_path), folder_lock(tmp_path):  # would deadlock with a lock
        pass


def test_a_run_resumed_from_another_folder_writes_its_model_beside_its_run(tmp_path, photos_dir, style_path,
                                                                          monkeypatch):
    """Issue 34: `train --resume other/model_run/checkpoint.pt` wrote the model into the current folder."""
    from conftest import tiny_config
    from stylize.train.training import train

    (tmp_path / "first").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    train(tiny_config(tmp_path, photos_dir, [style_path], out="model.pt", iterations=2, checkpoint_every=1))
    monkeypatch.chdir(tmp_path / "elsewhere")
    r = invoke("train", "--resume", "../first/model_run/checkpoint.pt", "--iterations", 3)
    assert r.exit_code == 0, r.output
    assert torch.load(tmp_path / "first" / "model.pt", weights_only=True)["iteration"] == 3
    assert files_under(tmp_path / "elsewhere") == []


# ---------------------------------------------------------------- --out and friends, refused before any work

@pytest.mark.parametrize("out,extra,fragment", [
    ("x.xyz", [], "unknown output format .xyz"),
    ("folder/", [], "use --out-dir folder"),
    ("existing", [], "a folder; name one output file"),
    ("a.png", ["--out-dir", "elsewhere"], "give one of them"),
])
def test_out_mistakes_are_refused_before_any_work(tmp_path, model, photo, monkeypatch, out, extra, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    import stylize.apply.choose as p

    monkeypatch.setattr(p, "open_stylizer", lambda *a, **k: pytest.fail("work started"))
    assert_clean_failure(invoke("apply", photo, "--model", model, "--out", out, *extra), fragment)


def test_a_bad_runtime_from_the_environment_names_the_variable(tmp_path, model, photo, monkeypatch):
    monkeypatch.setenv("STYLIZE_RUNTIME", "bogus")
    assert_clean_failure(invoke("apply", photo, "--model", model, "--out", tmp_path / "o.png"), "STYLIZE_RUNTIME 'bogus'")


def test_skip_existing_redoes_an_empty_output(tmp_path, model, photo):
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.png").write_bytes(b"")  # what a full disk or a crash of another tool leaves
    r = invoke("apply", photo, "--model", model, "--out-dir", out, "--skip-existing", "-q")
    assert r.exit_code == 0, r.output
    assert (out / "photo.png").stat().st_size > 0


def test_a_style_named_like_a_model_says_use_model(tmp_path, photo, monkeypatch, make_model):
    models = tmp_path / "models"
    models.mkdir()
    import shutil

    shutil.copy(make_model(), models / "udnie.pt")
    monkeypatch.setenv("STYLIZE_MODELS", str(models))
    r = invoke("apply", photo, "--style", "udnie", "--model", make_model(name="other"), "--out", tmp_path / "o.png")
    assert_clean_failure(r, "use --model udnie")


def test_a_bad_photo_on_standard_input_is_named_standard_input(tmp_path, model):
    r = CliRunner().invoke(app, ["apply", "-", "--model", str(model)], input=b"not a picture")
    line = assert_clean_failure(r, "standard input")
    assert "stylize-" not in line  # not the temporary file's path
