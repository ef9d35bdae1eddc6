"""Calibrating a model (stylize/apply/calibrate.py, `stylize calibrate`, studies/calibration.py): the
grid of network strengths and palette amounts, the choice, and the apply block the apply path follows."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import load_script, make_photo
from stylize.apply import calibrate, palette
from stylize.apply.engines.pytorch import Stylizer
from stylize.cli import app
from stylize.errors import StylizeError
from stylize.images import read_array
from stylize.models import modelfile


@pytest.fixture
def three_photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        make_photo(20 + i, 40, 32).save(folder / f"p{i}.png")
    return folder


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_choose_takes_the_most_style_match_that_keeps_the_structure():
    table = {(1.0, 1.0): {"style_match": 0.9, "structure": 0.5}, (0.6, 1.0): {"style_match": 0.8, "structure": 0.72},
             (0.6, 0.5): {"style_match": 0.7, "structure": 0.8}, (0.4, 0.0): {"style_match": 0.2, "structure": 0.95}}
    assert calibrate.choose(table) == (0.6, 1.0)
    assert calibrate.choose(table, min_structure=0.9) == (0.4, 0.0)
    assert calibrate.choose(table, min_structure=0.99) == (0.4, 0.0)  # none keeps that much: the most structure
    assert calibrate.choose(table, min_structure=0.0) == (1.0, 1.0)
    with pytest.raises(StylizeError):
        calibrate.choose({(1.0, 0.0): {"style_match": float("nan"), "structure": float("nan")}})


def test_the_scores_tell_the_photo_from_the_painting(tmp_path, style_path):
    photo = tmp_path / "photo.png"
    make_photo(3, 64, 48).save(photo)
    x = read_array(photo, uint8=True)[0]
    own = calibrate.score(photo, style_path, x)
    assert own["structure"] > 0.99 and abs(own["style_match"]) < 0.05
    painted = np.asarray(read_array(style_path, uint8=True)[0][:, :48, :64])
    other = calibrate.score(photo, style_path, np.ascontiguousarray(painted))
    assert other["style_match"] > 0.8 and other["structure"] < 0.5


def test_calibrating_sets_an_apply_block_the_apply_path_follows(tmp_path, make_model, three_photos, style_path, capsys):
    model = make_model(width=4)
    steps = []
    result = calibrate.calibrate(model, three_photos, [style_path], strengths=(0.5,), amounts=(1.0,),
                                 progress=steps.append, device="cpu")
    assert [s.done for s in steps] == [1, 2, 3] and {s.total for s in steps} == {3}
    assert all(s.output.dtype == np.uint8 and s.output.shape[0] == 3 for s in steps)
    assert capsys.readouterr() == ("", "")  # a library: nothing printed
    colours = [palette.as_record(palette.stats(read_array(style_path, 64)[0]))]
    assert result.chosen == (0.5, 1.0)
    assert result.apply == {"full_strength": 0.5, "palette": 1.0, "colours": colours}
    out = modelfile.write_apply(model, result.apply, tmp_path / f"calibrated{modelfile.SUFFIX}")
    assert modelfile.read_record(out)["apply"] == {**result.apply, "version": modelfile.APPLY_VERSION}

    photo = next(three_photos.iterdir())
    plain, calibrated = Stylizer(model, device="cpu"), Stylizer(out, device="cpu")
    x = torch.from_numpy(np.asarray(plain.load(photo)[0]))
    y = calibrated.run(x, calibrated.condition(None), 1.0).numpy()
    # what the block says: the network at half strength, then all the way to the painting's palette
    half = plain(x, plain.condition(None), 0.5, dtype=torch.uint8).numpy()
    expected = palette.recolour(half, palette.colours(result.apply), [1.0], 1.0)
    assert np.array_equal(y, expected)
    assert not np.array_equal(y, plain.run(x, plain.condition(None), 1.0).numpy())


def test_the_whole_grid_and_the_work_size(tmp_path, make_model, three_photos, style_path):
    model = make_model(width=4)
    result = calibrate.calibrate(model, sorted(three_photos.iterdir()), [style_path], work_size=16, device="cpu")
    assert set(result.table) == {(s, a) for s in calibrate.STRENGTHS for a in calibrate.AMOUNTS}
    assert result.chosen in result.table and result.apply["work_size"] == 16
    assert result.chosen == calibrate.choose(result.table)
    s, a = result.chosen
    assert (result.apply["full_strength"], result.apply["palette"]) == (s, a)


def test_what_cannot_be_calibrated_is_refused_in_one_line(tmp_path, make_model, three_photos, style_path):
    model = make_model(num_styles=2, norm="conditional", styles=["a", "b"])
    with pytest.raises(StylizeError, match="one painting per style"):
        calibrate.calibrate(model, three_photos, [style_path], device="cpu")
    with pytest.raises(StylizeError, match="not where its training read them.*a, b"):
        calibrate.calibrate(model, three_photos, device="cpu")  # its training's paintings are gone
    with pytest.raises(StylizeError, match="no such photo"):
        calibrate.calibrate(model, tmp_path / "missing", [style_path, style_path], device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StylizeError, match="no images"):
        calibrate.calibrate(model, tmp_path / "empty", [style_path, style_path], device="cpu")
    with pytest.raises(StylizeError, match="work size"):
        calibrate.calibrate(make_model(name="one"), three_photos, [style_path], work_size=3, device="cpu")


def test_the_paintings_its_training_read_are_the_default(tmp_path, make_model, three_photos, style_path):
    rec = modelfile.load(make_model())
    rec["styles"], rec["train"]["style"] = [style_path.stem], [str(style_path)]
    model = modelfile.save(rec, tmp_path / "own.pt")
    result = calibrate.calibrate(model, three_photos, strengths=(1.0,), amounts=(0.5,), device="cpu")
    assert len(result.apply["colours"]) == 1


def test_stylize_calibrate_writes_a_copy_and_never_the_model_unless_asked(tmp_path, make_model, three_photos,
                                                                           style_path, isolated_env):
    model = make_model()
    before = model.read_bytes()
    r = invoke("calibrate", model, "--photos", three_photos, "--painting", style_path,
               "--strengths", "1,0.5", "--amounts", "0,1", "--quiet")
    assert r.exit_code == 0, r.output
    written = isolated_env / ".stylize" / "models" / f"model_calibrated{modelfile.SUFFIX}"
    assert "use it with --model model_calibrated" in r.stdout and "<- chosen" in r.stdout
    block = modelfile.read_record("model_calibrated")["apply"]
    assert block["full_strength"] in (1.0, 0.5) and block["palette"] in (0.0, 1.0) and len(block["colours"]) == 1
    assert model.read_bytes() == before and written.is_file()

    again = invoke("calibrate", model, "--photos", three_photos, "--painting", style_path, "--quiet")
    assert again.exit_code == 1 and "exists" in again.stderr and "Traceback" not in again.output
    same = invoke("calibrate", model, "--photos", three_photos, "--painting", style_path, "--out", model, "--quiet")
    assert same.exit_code == 1 and "is the model being calibrated" in same.stderr
    assert model.read_bytes() == before

    r = invoke("calibrate", model, "--photos", three_photos, "--painting", style_path, "--out", model,
               "--overwrite", "--strengths", "0.5", "--amounts", "1", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["chosen"] == {"full_strength": 0.5, "palette": 1.0}
    assert modelfile.read_record(model)["apply"]["full_strength"] == 0.5
    assert sorted(p.name for p in model.parent.iterdir() if p.name.startswith(".")) == []


def test_stylize_calibrate_refuses_bad_input_in_one_line(tmp_path, make_model, three_photos, style_path):
    model = make_model()
    for args, fragment in ((["--strengths", "1,x"], "--strengths"), (["--strengths", "2"], "strengths must be"),
                           (["--photos", tmp_path / "nowhere"], "no such photo")):
        r = invoke("calibrate", model, "--painting", style_path, "--out", tmp_path / "o.pt",
                   *(["--photos", three_photos] if "--photos" not in args else []), *args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and fragment in lines[0], r.output
    assert not (tmp_path / "o.pt").exists()


def test_the_study_script_writes_its_pair_through_the_library(tmp_path, make_model, style_path):
    study = load_script("studies/calibration.py")
    out = tmp_path / f"set{modelfile.SUFFIX}"
    study.main(["--model", str(make_model()), "--set", "0.6", "1.0", "--work-size", "480",
                "--paintings", str(style_path), "--write", str(out)])
    block = modelfile.read_record(out)["apply"]
    assert (block["full_strength"], block["palette"], block["work_size"]) == (0.6, 1.0, 480)
    assert len(block["colours"]) == 1 and block["version"] == modelfile.APPLY_VERSION
