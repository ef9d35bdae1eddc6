"""What a new user trips over (issue 15): each case is the command, its exit code, its one line, and
what is (not) written. Wrong results that exit 0, tracebacks, resume, metadata, conventions."""
from __future__ import annotations

import io
import os
import re
import signal

import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from stylize.apply.engines import graphs, onnx_runtime
from stylize.models import modelfile
from stylize.apply import batch as pipeline
from stylize.cli import app
from stylize.train.training import run_dir

from conftest import make_photo, tiny_config
from test_cli import assert_clean_failure, files_under, invoke

pytestmark = pytest.mark.usefixtures("fast_random_vgg")


# ---------------------------------------------------------------- wrong results that exited 0

def test_an_empty_folder_is_an_error_not_silence(tmp_path, model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("no photos here")
    for folder in ("empty", "docs"):
        result = invoke("apply", tmp_path / folder, "--model", model, "--out-dir", tmp_path / "out")
        assert_clean_failure(result, "no images found")
    assert not (tmp_path / "out").exists()


def test_the_output_folder_is_never_read_as_input(tmp_path, model, monkeypatch):
    make_photo(1).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)  # `stylize apply .` writes to ./stylized, inside the folder it reads
    first = invoke("apply", ".", "--model", model)
    assert first.exit_code == 0, first.output
    again = invoke("apply", ".", "--model", model, "--skip-existing")
    assert again.exit_code == 0, again.output
    assert "skipped stylized/a.png" in again.stdout
    assert files_under(tmp_path) == ["a.png", "stylized/a.png"]  # no stylized/stylized/


def test_what_cannot_be_kept_is_said(tmp_path, model):
    frames = [make_photo(i) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    result = invoke("apply", tmp_path / "anim.gif", "--model", model, "--out", tmp_path / "a.png")
    assert result.exit_code == 0 and "animated, 3 frames; stylized the first only" in result.stderr
    rgba = make_photo(2).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "see-through.png")
    result = invoke("apply", tmp_path / "see-through.png", "--model", model, "--out", tmp_path / "flat.jpg")
    assert result.exit_code == 0 and "alpha channel is dropped" in result.stderr
    folder = tmp_path / "phone"
    folder.mkdir()
    make_photo(3).save(folder / "a.jfif", format="JPEG")  # read: JPEG under another name
    (folder / "b.heic").write_bytes(b"\0" * 64)  # not readable without a plug-in: named, not ignored
    result = invoke("apply", folder, "--model", model, "--out-dir", tmp_path / "out")
    assert result.exit_code == 0 and "1 file(s) Pillow cannot read (.heic)" in result.stderr
    assert files_under(tmp_path / "out") == ["a.jfif"]


# ---------------------------------------------------------------- tracebacks that became one line

def test_train_width_zero_is_a_usage_error(tmp_path, style_path):
    result = invoke("train", "--style", style_path, "--width", 0, "--out", tmp_path / "m.pt")
    assert result.exit_code == 2 and "--width" in result.output and "Traceback" not in result.output


def test_train_content_that_does_not_exist(tmp_path, style_path):
    result = invoke("train", "--style", style_path, "--content", tmp_path / "nosuchdir", "--out", tmp_path / "m.pt",
                    "--loss-net", "random")
    assert_clean_failure(result, "nosuchdir: no such folder")


def test_export_to_an_unwritable_place_fails_before_exporting(tmp_path, model, monkeypatch):
    (tmp_path / "file").write_text("a file, not a folder")
    monkeypatch.setattr("stylize.apply.engines.export.export_onnx", lambda *a, **k: pytest.fail("exported anyway"))
    assert_clean_failure(invoke("export", model, "--out", tmp_path / "file" / "m.onnx"), "is a file")


def test_an_unwritable_output_folder_fails_before_any_work(tmp_path, model, photo, monkeypatch):
    (tmp_path / "file").write_text("a file, not a folder")
    monkeypatch.setattr(pipeline, "apply_files", lambda *a, **k: pytest.fail("stylized anyway"))
    assert_clean_failure(invoke("apply", photo, "--model", model, "--out-dir", tmp_path / "file" / "out"),
                         "is a file")


# ---------------------------------------------------------------- the ONNX cache

@pytest.mark.skipif(not onnx_runtime.installed(), reason="onnxruntime not installed")
def test_an_unwritable_cache_falls_back_to_pytorch(tmp_path, model, photo, monkeypatch):
    (tmp_path / "file").write_text("a file, not a folder")
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "file" / "cache"))
    result = invoke("apply", photo, "--model", model, "--out", tmp_path / "o.png", "--runtime", "auto",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "using PyTorch" in result.stderr and (tmp_path / "o.png").exists()


@pytest.mark.skipif(not onnx_runtime.installed(), reason="onnxruntime not installed")
@pytest.mark.slow
def test_a_damaged_cached_graph_is_rebuilt(tmp_path, model, photo, monkeypatch):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "cache"))
    args = ["apply", photo, "--model", model, "--runtime", "onnx", "--device", "cpu"]
    assert invoke(*args, "--out", tmp_path / "first.png").exit_code == 0
    graph = graphs.graph_path(model, default=True)
    graph.write_bytes(graph.read_bytes()[:100])  # a truncated file, as after a full disk
    result = invoke(*args, "--out", tmp_path / "second.png")
    assert result.exit_code == 0, result.output
    assert "damaged cached graph" in result.stderr
    assert Image.open(tmp_path / "first.png").tobytes() == Image.open(tmp_path / "second.png").tobytes()


def test_the_cache_keeps_the_most_recent_graphs_within_its_size(tmp_path):
    for i, name in enumerate(["old", "mid", "new"]):
        (tmp_path / f"{name}.onnx").write_bytes(b"\0" * 400_000)
        os.utime(tmp_path / f"{name}.onnx", (1000 + i, 1000 + i))
    graphs._prune(tmp_path, keep=tmp_path / "new.onnx", limit_mb=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.onnx", "new.onnx"]


# ---------------------------------------------------------------- resume does what it says

@pytest.fixture
def interrupted_run(tmp_path, photos_dir, style_path):
    """A run of 6 iterations whose checkpoint is at 3, as Ctrl-C leaves it."""
    from stylize.train.training import train

    cfg = tiny_config(tmp_path, photos_dir, [style_path], iterations=3, checkpoint_every=0)
    train(cfg)
    ckpt = run_dir(cfg.out) / "checkpoint.pt"
    rec = modelfile.load(ckpt)
    rec["train"]["iterations"] = 6  # the run's own goal, beyond where it stopped
    modelfile.save(rec, ckpt)
    return cfg, ckpt


def test_resume_alone_finishes_the_run_with_its_own_settings(interrupted_run, tmp_path):
    cfg, ckpt = interrupted_run
    result = invoke("train", "--resume", ckpt)  # no --style, no --iterations: all from the checkpoint
    assert result.exit_code == 0, result.output
    assert modelfile.load(ckpt)["iteration"] == 6
    result = invoke("train", "--resume", ckpt)
    assert_clean_failure(result, "already at iteration 6 of 6", "--iterations")
    result = invoke("train", "--resume", ckpt, "--iterations", 8)  # extends
    assert result.exit_code == 0, result.output
    assert modelfile.load(ckpt)["iteration"] == 8


def test_resume_refuses_to_change_what_makes_the_run(interrupted_run):
    _, ckpt = interrupted_run
    assert_clean_failure(invoke("train", "--resume", ckpt, "--width", 16), "keeps its --width")


def test_a_checkpoint_that_records_former_setting_names_resumes_with_them(interrupted_run):
    """Runs written before the loss weights were *_loss_weight (and all_strengths was strength) keep
    their settings on resume: settings.RENAMED reads the old names."""
    from stylize.settings import RENAMED

    _, ckpt = interrupted_run
    rec = modelfile.load(ckpt)
    rec["train"]["content_loss_weight"] = 2.5
    rec["train"] = {old: rec["train"].pop(new) for old, new in RENAMED.items()} | rec["train"]
    modelfile.save(rec, ckpt)
    result = invoke("train", "--resume", ckpt)
    assert result.exit_code == 0, result.output
    train = modelfile.load(ckpt)["train"]
    assert train["content_loss_weight"] == 2.5 and train["all_strengths"] is True
    assert not set(RENAMED) & set(train)


def test_resume_from_a_model_names_its_own_run_folder(trained):
    result = invoke("train", "--resume", trained.path)
    assert_clean_failure(result, f"{run_dir(trained.path)}/checkpoint.pt")


def test_a_killed_training_exits_143_and_says_how_to_continue(tmp_path, photos_dir, style_path, monkeypatch):
    from stylize.train import training

    real = training.save_samples

    def kill_at_first_sample(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(training, "save_samples", kill_at_first_sample)
    cfg = tiny_config(tmp_path, photos_dir, [style_path], iterations=10, sample_every=2)
    result = invoke("train", "--style", style_path, "--content", photos_dir, "--out", cfg.out, "--width", 4,
                    "--iterations", 10, "--batch-size", 2, "--image-size", 32, "--style-size", 32,
                    "--loss-net", "random", "--device", "cpu", "--sample-every", 2)
    assert result.exit_code == 143 and "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith("error: interrupted") and "continue with: stylize train --resume" in line
    assert "--style" not in line


# ---------------------------------------------------------------- fidelity

def test_outputs_keep_the_colour_profile_exif_and_dpi(tmp_path, model):
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0112] = 6  # orientation: rotate 90 degrees to show
    make_photo(4, 48, 40).save(tmp_path / "tagged.jpg", icc_profile=profile, exif=exif.tobytes(), dpi=(300, 300))
    for name in ("out.jpg", "out.png", "out.webp"):
        result = invoke("apply", tmp_path / "tagged.jpg", "--model", model, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        out = Image.open(tmp_path / name)
        assert out.size == (40, 48)  # the orientation is applied to the pixels...
        assert out.info.get("icc_profile") == profile
        assert out.getexif().get(0x010F) == "TestCam"
        assert out.getexif().get(0x0112) in (None, 1)  # ...and not applied twice by viewers
        if name != "out.webp":
            assert tuple(round(d) for d in out.info["dpi"]) == (300, 300)


# ---------------------------------------------------------------- conventions and early errors

def test_version():
    from stylize import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"stylize {__version__}"


def test_quiet_prints_nothing_but_writes(tmp_path, model, photo):
    result = invoke("apply", photo, "--model", model, "--out", tmp_path / "o.png", "--quiet")
    assert result.exit_code == 0 and result.output == "" and (tmp_path / "o.png").exists()


def test_standard_input_and_output(tmp_path, model, photo):
    result = CliRunner().invoke(app, ["apply", "-", "--model", str(model)], input=photo.read_bytes())
    assert result.exit_code == 0, result.stderr
    piped = Image.open(io.BytesIO(result.stdout_bytes))
    assert piped.format == "PNG" and piped.size == Image.open(photo).size
    invoke("apply", photo, "--model", model, "--out", tmp_path / "file.png")
    assert piped.tobytes() == Image.open(tmp_path / "file.png").tobytes()
    result = CliRunner().invoke(app, ["apply", str(photo), "--model", str(model), "--out", "-"])
    assert result.exit_code == 0 and result.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    result = CliRunner().invoke(app, ["apply", "-", "--model", str(model)], input=b"")
    assert_clean_failure(result, "standard input: empty")


def test_out_with_several_inputs_fails_before_any_progress(tmp_path, model, photo):
    make_photo(2).save(tmp_path / "second.png")
    result = invoke("apply", photo, tmp_path / "second.png", "--model", model, "--out", tmp_path / "o.png")
    assert_clean_failure(result, "--out names one file but there are 2 inputs")  # exactly one line on stderr


def test_an_absurd_tile_is_refused(tmp_path, model, photo):
    assert_clean_failure(invoke("apply", photo, "--model", model, "--tile", 1, "--out", tmp_path / "o.png"),
                         "--tile 1", "at least 64")


@pytest.mark.skipif(not onnx_runtime.installed(), reason="onnxruntime not installed")
def test_style_weight_on_a_full_strength_model_fails_before_exporting(tmp_path, make_model, photo, monkeypatch):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "cache"))
    full = make_model(strength=False)
    result = invoke("apply", photo, "--model", full, "--style-weight", 0.5, "--runtime", "onnx",
                    "--out", tmp_path / "o.png")
    assert_clean_failure(result, "trained at full strength only")
    assert not list((tmp_path / "cache").rglob("*.onnx"))  # no export was spent on it


def test_a_killed_batch_exits_143(tmp_path, model, monkeypatch):
    for i in range(3):
        make_photo(i).save(tmp_path / f"p{i}.png")
    from stylize.apply.engines.pytorch import Stylizer

    real = Stylizer.network

    def kill_at_the_second(self, *a, **kw):
        if len(list((tmp_path / "out").glob("*.png"))) >= 1 or kill_at_the_second.calls:
            os.kill(os.getpid(), signal.SIGTERM)
        kill_at_the_second.calls += 1
        return real(self, *a, **kw)

    kill_at_the_second.calls = 0
    monkeypatch.setattr(Stylizer, "network", kill_at_the_second)
    result = invoke("apply", tmp_path, "--model", model, "--out-dir", tmp_path / "out")
    assert result.exit_code == 143
    assert "--skip-existing" in result.stderr


def _commands():
    import typer.main

    return typer.main.get_command(app).commands


def test_help_texts_read_cleanly():
    commands = _commands()
    assert {"train", "apply", "sheet", "export", "models", "info", "serve"} <= set(commands)
    for command, cmd in commands.items():  # every command, calibrate or whatever comes next included
        text = invoke(command, "--help").stdout
        assert " ." not in text and "<list[str]>" not in text.split("Arguments:")[0], command
        placeholders = re.findall(r"<(?:int|float|str|path|text|integer|boolean)(?: range)?>", text)
        assert not placeholders, (command, placeholders)  # click's type names, not the value's
        usage, description = text.split("\n", 1)[0], re.split(r"\n(?:Arguments|Options):", text)[0]
        assert "{" not in usage and "}" not in usage, usage
        assert not re.search(r"\S {2,}\S", description), (command, description)  # a docstring's indent left in
        undocumented = [p.opts[0] for p in cmd.params if p.param_type_name == "option" and not p.hidden and not p.help]
        assert not undocumented, (command, undocumented)
    train, apply = invoke("train", "--help").stdout, invoke("apply", "--help").stdout
    for shown in ("--iterations N ", "--lr X ", "--content PATH ", "--device DEVICE ", "--norm NORM ",
                  "--style-loss-weight X ", "--all-strengths / --full-strength-only"):
        assert shown in train, shown
    for shown in ("-m, --model MODEL ", "--style-weight, --strength X ", "--runtime RUNTIME ", "--out-dir PATH "):
        assert shown in apply, shown
    assert apply.split("\n", 1)[0].endswith(" apply [OPTIONS] PHOTO...")


def complete(words: str, env: dict | None = None) -> list[str]:
    """What the shell would offer for the last word of `words`, through click's completion protocol
    (the _STYLIZE_COMPLETE variable a completion script sets), as bash asks for it."""
    env = {"_STYLIZE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1),
           **(env or {})}
    result = CliRunner().invoke(app, [], prog_name="stylize", env=env)
    assert result.exit_code == 0, result.output
    return result.stdout.split()


def test_shell_completion_offers_models_devices_and_choices(tmp_path, monkeypatch):
    import sys

    from stylize.settings import DEVICES, LOSS_NETS, NETWORKS, NORMS, RUNTIMES

    monkeypatch.setitem(sys.modules, "torch", None)  # completing imports no torch: a key press, not 2 s
    (tmp_path / "mine.pt").write_bytes(b"")
    shipped = [p.stem for p in modelfile.find_models()]
    assert "starry_night" in shipped
    env = {"STYLIZE_MODELS": str(tmp_path)}
    assert complete("stylize apply photo.jpg --model ", env) == ["mine"] + shipped  # as `stylize models` lists them
    assert complete("stylize apply photo.jpg -m sta", env) == ["starry_night"]
    assert complete("stylize sheet photo.jpg --model mi", env) == ["mine"]
    assert "mine" in complete("stylize serve --model ", env) and complete("stylize info mi", env) == ["mine"]
    assert complete(f"stylize apply photo.jpg --model {tmp_path}/") == [f"{tmp_path}/mine.pt"]  # a path: files
    for command in ("train", "apply photo.jpg", "sheet photo.jpg", "serve"):
        assert complete(f"stylize {command} --device ") == list(DEVICES), command
    assert complete("stylize train --device c") == ["cuda", "cpu"]
    assert complete("stylize train --norm ") == list(NORMS)
    assert complete("stylize train --network ") == list(NETWORKS)
    assert complete("stylize train --loss-net ") == list(LOSS_NETS)
    assert complete("stylize train --lr-schedule ") == ["cosine", "constant"]
    assert complete("stylize train --style-loss ") == ["auto", "gram", "meanstd", "sliced"]
    assert complete("stylize apply photo.jpg --runtime ") == list(RUNTIMES)
    assert complete("stylize serve --runtime o") == ["onnx"]
    assert complete("stylize apply photo.jpg --color-method ") == ["luminance", "match"]
    assert complete("stylize export starry_night --format ") == ["onnx"]


def test_former_train_flags_fail_naming_their_new_spelling(tmp_path, style_path):
    """train's loss weights were --style-weight and so on, and its switch --strength: apply's
    --style-weight and --strength are the strength in [0, 1], so a script using the old spellings
    stops with the new one named rather than going on with another meaning."""
    from stylize.cli.train import RENAMED

    for old, new in RENAMED.items():
        value = [] if "strength" in old else ["3"]
        result = invoke("train", "--style", style_path, "--out", tmp_path / "m.pt", old, *value)
        assert result.exit_code == 2
        assert_clean_failure(result, f"train {old} is now {new}")
    result = invoke("train", "--style", style_path, "--out", tmp_path / "m.pt", "--pixel-weight=3")
    assert_clean_failure(result, "--pixel-loss-weight")
    assert files_under(tmp_path) == []


def test_strength_is_another_name_for_style_weight(tmp_path, model, photo):
    for flag in ("--style-weight", "--strength"):
        result = invoke("apply", photo, "--model", model, flag, 0, "--out", tmp_path / f"{flag[2:]}.png")
        assert result.exit_code == 0, result.output
        assert Image.open(tmp_path / f"{flag[2:]}.png").tobytes() == Image.open(photo).convert("RGB").tobytes()


def test_training_without_matplotlib_writes_the_csv_and_says_so(interrupted_run, monkeypatch):
    """matplotlib is an extra (plots): without it a run keeps losses.csv and says why there is no plot."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    cfg, ckpt = interrupted_run
    (ckpt.parent / "losses.png").unlink()
    result = invoke("train", "--resume", ckpt)
    assert result.exit_code == 0, result.output
    assert (ckpt.parent / "losses.csv").is_file() and not (ckpt.parent / "losses.png").exists()
    assert "pip install 'stylize[plots]'" in result.stderr
