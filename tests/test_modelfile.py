"""Model files: found by name, written atomically, read safely; anything that is not ours is refused."""
from __future__ import annotations

import os
import pickle
import random

import pytest
import torch

from stylize.models import modelfile
from stylize.errors import StylizeError
from stylize.apply.engines.pytorch import Stylizer


class Payload:
    """Unpickling this would create a folder: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class Custom:
    pass


# the full reader and the torch-free one that `stylize models` and `info` use refuse the same files
READERS = pytest.mark.parametrize("read", [modelfile.load, modelfile.read_record], ids=["load", "read_record"])


@READERS
def test_unsafe_pickle_in_a_torch_file_is_refused_without_running_it(read, tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": modelfile.FORMAT, "version": 1, "kind": "transformer", "x": Payload(marker)}, path)
    with pytest.raises(StylizeError, match="refused") as e:
        read(path)
    assert "could run code" in str(e.value)
    assert not marker.exists()


@READERS
def test_custom_class_instance_is_refused(read, tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"format": modelfile.FORMAT, "obj": Custom()}, path)
    with pytest.raises(StylizeError, match="refused"):
        read(path)


@READERS
def test_plain_pickle_with_a_class_reference_is_refused(read, tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))
    with pytest.raises(StylizeError, match="refused"):
        read(path)
    assert not marker.exists()


@pytest.mark.parametrize("data", [random.Random(0).randbytes(2000), b"x" + random.Random(1).randbytes(500),
                                  b"PK\x03\x04" + random.Random(2).randbytes(300), b"", b"hello\n"])
@READERS
def test_random_bytes_are_not_a_stylize_model(read, tmp_path, data):
    path = tmp_path / "noise.pt"
    path.write_bytes(data)
    with pytest.raises(StylizeError, match="not a stylize model") as e:
        read(path)
    assert "could run code" not in str(e.value)  # garbage is not reported as a malicious file
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("obj", [{"weight": torch.zeros(2)}, [1, 2, 3], {"format": "other-tool"}])
@READERS
def test_valid_torch_files_that_are_not_ours(read, tmp_path, obj):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(StylizeError, match="not a stylize model"):
        read(path)


@READERS
def test_newer_format_asks_for_an_upgrade(read, tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": modelfile.FORMAT, "version": modelfile.VERSION + 1}, path)
    with pytest.raises(StylizeError, match="upgrade"):
        read(path)


def test_unknown_kind_is_refused_by_stylizer(tmp_path):
    path = tmp_path / "adain.pt"
    torch.save({"format": modelfile.FORMAT, "version": 1, "kind": "adain"}, path)
    with pytest.raises(StylizeError, match="adain"):
        Stylizer(path, device="cpu")


def test_unknown_model_name_lists_the_available_ones(tmp_path, monkeypatch, make_model):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv(modelfile.USER_DIR_ENV, str(models))
    for name in ("mosaic", "wave"):
        os.replace(make_model(name=name), models / f"{name}.pt")
    with pytest.raises(StylizeError) as e:
        modelfile.resolve("starry")
    assert "unknown model 'starry'" in str(e.value)
    assert "mosaic" in str(e.value) and "wave" in str(e.value)
    with pytest.raises(StylizeError, match="no such model file"):
        modelfile.resolve(tmp_path / "missing" / "model.pt")


def test_models_are_found_by_name_user_folder_first(tmp_path, monkeypatch, make_model):
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.setenv(modelfile.USER_DIR_ENV, str(user))
    home_models = tmp_path / "home" / ".stylize" / "models"
    home_models.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    os.replace(make_model(name="a", seed=1), user / "mosaic.pt")
    os.replace(make_model(name="b", seed=2), home_models / "mosaic.pt")
    os.replace(make_model(name="c", seed=3), home_models / "wave.pt")
    assert modelfile.resolve("mosaic") == user / "mosaic.pt"
    assert modelfile.resolve("wave") == home_models / "wave.pt"
    found = {p.stem: p for p in modelfile.find_models()}
    assert found["mosaic"] == user / "mosaic.pt" and found["wave"] == home_models / "wave.pt"
    assert Stylizer("wave", device="cpu").name == "wave"


def test_save_is_atomic_and_loads_with_weights_only(tmp_path, make_model):
    path = make_model(name="m")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary files left
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == modelfile.FORMAT and raw["kind"] == "transformer"
    assert {"net", "styles", "train", "versions", "state_dict"} <= set(raw)


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError):
        modelfile.save({"format": modelfile.FORMAT}, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_describe(make_model):
    d = modelfile.describe(modelfile.load(make_model(norm="conditional", num_styles=2, styles=["a", "b"], name="duo")))
    assert d["name"] == "duo" and d["norm"] == "conditional" and d["styles"] == ["a", "b"]
    assert d["strength"] is True and d["checkpoint"] is False and d["width"] == 4


def test_the_torch_free_reader_describes_models_and_checkpoints_as_the_full_one(trained):
    for path in (trained.path, trained.run / "checkpoint.pt"):
        assert modelfile.describe(modelfile.read_record(path)) == modelfile.describe(modelfile.load(path))
    shapes = modelfile.read_record(trained.path)["state_dict"]
    tensors = modelfile.load(trained.path)["state_dict"]
    assert {k: v.shape for k, v in shapes.items()} == {k: tuple(v.shape) for k, v in tensors.items()}


def test_listing_and_describing_models_do_not_import_torch(trained, monkeypatch):
    """`stylize models` and `stylize info` in a fresh process: torch is never imported (it costs
    seconds and hundreds of MB; measured 0.45 s and 33 MB for either, against 6 s and 660 MB)."""
    import subprocess
    import sys

    monkeypatch.setenv("STYLIZE_MODELS", str(trained.path.parent))
    for args in (["models", "--json"], ["info", trained.path.stem, "--json"]):
        code = ("import sys; from stylize.cli import app\n"
                f"try:\n    app({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                "assert 'torch' not in sys.modules, 'torch was imported'")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert trained.path.stem in result.stdout
