"""Model files: found by name, written atomically, read safely; anything that is not ours is refused."""
from __future__ import annotations

import json
import os
import pickle
import random
import struct
import subprocess
import sys

import numpy as np
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
    assert d["use"] == "the 2 styles it was trained on, each or mixed (--style NAME=WEIGHT)"
    one = modelfile.describe(modelfile.load(make_model(styles=["a"], name="one")))
    assert one["use"] == "the style it was trained on" and not modelfile.takes_paintings(one)


def test_the_torch_free_reader_describes_models_and_checkpoints_as_the_full_one(trained):
    for path in (trained.path, trained.run / "checkpoint.pt"):
        assert modelfile.describe(modelfile.read_record(path)) == modelfile.describe(modelfile.load(path))
    shapes = modelfile.read_record(trained.path)["state_dict"]
    tensors = modelfile.load(trained.path)["state_dict"]
    assert {k: v.shape for k, v in shapes.items()} == {k: tuple(v.shape) for k, v in tensors.items()}


def test_listing_and_describing_models_do_not_import_torch(trained, monkeypatch):
    """`stylize models` and `stylize info` in a fresh process: torch is never imported (it costs
    seconds and hundreds of MB; measured 0.45 s and 33 MB for either, against 6 s and 660 MB)."""
    monkeypatch.setenv("STYLIZE_MODELS", str(trained.path.parent))
    for args in (["models", "--json"], ["info", trained.path.stem, "--json"]):
        code = ("import sys; from stylize.cli import app\n"
                f"try:\n    app({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                "assert 'torch' not in sys.modules, 'torch was imported'")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert trained.path.stem in result.stdout


# --- the safetensors container (modelfile.SUFFIX) -------------------------------------------------

# a model for any painting's second table of weights, on a transformer record (checked only when
# its net has a style_dim, so it travels here as an extra table with its own prefix)
PREDICTOR = {"loss_net": "random", "layers": ["relu1_2"], "style_size": 64}


def as_safetensors(path, tmp_path, name="m", extra=None):
    """The model file `path` rewritten as a .safetensors file (with `extra` fields in its record)."""
    rec = modelfile.load(path)
    rec.update(extra or {})
    return modelfile.save(rec, tmp_path / f"{name}{modelfile.SUFFIX}")


def header_of(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n])


def test_safetensors_round_trip_keeps_every_tensor_and_the_record(tmp_path, make_model):
    pt = make_model(norm="conditional", num_styles=2, styles=["a", "b"], name="duo")
    before = modelfile.load(pt)
    table = {"proj.weight": torch.randn(3, 2), "proj.bias": torch.arange(3, dtype=torch.int64)}
    path = as_safetensors(pt, tmp_path, extra={"predictor": {**PREDICTOR, "state_dict": table},
                                               "metrics": {"total": 1.5}})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # written atomically
    after = modelfile.load(path)
    assert set(after["state_dict"]) == set(before["state_dict"])
    for k, v in before["state_dict"].items():
        assert after["state_dict"][k].dtype == v.dtype and torch.equal(after["state_dict"][k], v), k
    for k, v in table.items():
        assert torch.equal(after["predictor"]["state_dict"][k], v)
    assert {k: v for k, v in after["predictor"].items() if k != "state_dict"} == PREDICTOR
    for k in ("format", "version", "kind", "net", "styles", "train", "versions"):
        assert after[k] == before[k], k
    assert after["metrics"] == {"total": 1.5} and after["path"] == str(path)
    # what the file holds: the record in the header's metadata, the weights under clear prefixes
    _, header = header_of(path)
    meta = header.pop("__metadata__")
    assert meta["format"] == modelfile.FORMAT
    record = json.loads(meta["record"])
    assert record["state_dict"] == {"$tensors": "network"} and "path" not in record
    assert set(header) == {f"network/{k}" for k in before["state_dict"]} | {f"predictor/{k}" for k in table}


def test_a_safetensors_model_stylizes_as_its_pt_original(tmp_path, make_model, photo):
    pt = make_model(width=4)
    st = as_safetensors(pt, tmp_path)
    a, b = (Stylizer(p, device="cpu") for p in (pt, st))
    x = torch.from_numpy(np.asarray(a.load(photo)[0]))
    assert torch.equal(a(x, a.condition(None), 1.0), b(x, b.condition(None), 1.0))


def test_the_numpy_path_reads_tensors_without_torch(tmp_path, make_model):
    path = as_safetensors(make_model(), tmp_path)
    expected = {k: v.numpy() for k, v in modelfile.load(path)["state_dict"].items()}
    np.savez(tmp_path / "expected.npz", **expected)
    code = ("import sys, numpy as np\nfrom stylize.models import modelfile\n"
            f"r = modelfile.load({str(path)!r}, arrays='numpy')\n"
            f"e = np.load({str(tmp_path / 'expected.npz')!r})\n"
            "assert set(r['state_dict']) == set(e.files)\n"
            "assert all(isinstance(v, np.ndarray) and np.array_equal(v, e[k]) for k, v in r['state_dict'].items())\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shipped_pt_models_still_read(make_model):
    shipped = sorted(modelfile.SHIPPED_DIR.glob("*.pt"))
    assert shipped
    for p in shipped:
        rec = modelfile.read_record(p)
        assert rec["format"] == modelfile.FORMAT and rec["state_dict"]
    assert modelfile.resolve(shipped[0].stem) == shipped[0]


def damaged(path, how: str):
    """A copy of a .safetensors model file damaged one way."""
    data = bytearray(path.read_bytes())
    n, header = header_of(path)
    if how == "cut in the tensors":
        return bytes(data[:-7])
    if how == "cut in the header":
        return bytes(data[:8 + n // 2])
    if how == "length past the end":
        return struct.pack("<Q", len(data)) + bytes(data[8:])
    if how == "garbled header":
        data[8 + n // 3: 8 + n // 3 + 20] = b"\x00\xff" * 10
        return bytes(data)
    if how == "wrong byte count":
        name = next(k for k in header if k.endswith("weight"))
        header[name]["shape"] = [header[name]["shape"][0] + 1] + header[name]["shape"][1:]
    elif how == "not ours":
        header["__metadata__"] = {"format": "pt"}
    elif how == "garbled record":
        header["__metadata__"]["record"] = header["__metadata__"]["record"][:-9]
    elif how == "record not a table":
        header["__metadata__"]["record"] = "[1, 2]"
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(data[8 + n:])


HOW = ["cut in the tensors", "cut in the header", "length past the end", "garbled header", "wrong byte count",
       "not ours", "garbled record", "record not a table", "empty", "seven bytes"]


@pytest.mark.parametrize("how", HOW)
@READERS
def test_a_damaged_safetensors_file_is_refused_in_one_line(read, tmp_path, make_model, how):
    good = as_safetensors(make_model(), tmp_path)
    bad = tmp_path / f"bad{modelfile.SUFFIX}"
    bad.write_bytes(b"" if how == "empty" else b"\x01" * 7 if how == "seven bytes" else damaged(good, how))
    with pytest.raises(StylizeError) as e:
        read(bad)
    message = str(e.value)
    assert "\n" not in message and str(bad) in message
    assert "not a stylize model" in message or "damaged model file" in message


def test_safetensors_is_known_by_its_content_whatever_its_name(tmp_path, make_model):
    st = as_safetensors(make_model(), tmp_path)
    renamed = tmp_path / "renamed.pt"
    renamed.write_bytes(st.read_bytes())
    assert modelfile.read_record(renamed)["styles"] == modelfile.read_record(st)["styles"]
    assert modelfile.load(renamed)["state_dict"].keys() == modelfile.load(st)["state_dict"].keys()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(st.read_bytes()[:-5])
    with pytest.raises(StylizeError, match="cut short"):
        modelfile.load(cut)


def test_weights_of_the_wrong_shape_are_refused_when_built(tmp_path, make_model):
    rec = modelfile.load(make_model(width=4))
    name = next(k for k, v in rec["state_dict"].items() if v.dim() == 4)
    rec["state_dict"][name] = torch.zeros(1, 1, 1, 1)
    path = modelfile.save(rec, tmp_path / f"shape{modelfile.SUFFIX}")
    modelfile.read_record(path)  # the header is whole: its shapes are what the network checks
    with pytest.raises(StylizeError, match=f"weight {name} has shape"):
        Stylizer(path, device="cpu")


def test_the_header_is_read_without_the_tensors(tmp_path, make_model, monkeypatch):
    path = as_safetensors(make_model(width=16), tmp_path)
    n, _ = header_of(path)
    size = path.stat().st_size
    assert size > 8 + n + 40_000  # most of the file is tensors
    # garbled tensor bytes (not a cut: the file's layout is whole) go unseen by the header's reader ...
    data = bytearray(path.read_bytes())
    data[8 + n:] = b"\xff" * (size - 8 - n)  # float NaN everywhere
    path.write_bytes(bytes(data))
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, size=-1):
            out = self.f.read(size)
            read.append(len(out))
            return out

    monkeypatch.setattr(modelfile, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    d = modelfile.describe(modelfile.read_record(path))
    assert d["name"] == "m" and d["width"] == 16
    assert sum(read) == 8 + n
    monkeypatch.undo()
    # ... and are refused where the weights are used
    with pytest.raises(StylizeError, match="not finite"):
        Stylizer(path, device="cpu")


def test_a_checkpoint_cannot_be_saved_as_safetensors(tmp_path, make_model):
    rec = modelfile.load(make_model())
    rec["optimizer"] = {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"params": [0]}]}
    with pytest.raises(StylizeError, match="optimizer"):
        modelfile.save(rec, tmp_path / f"ckpt{modelfile.SUFFIX}")
    assert not list(tmp_path.glob("ckpt*")) and not list(tmp_path.glob(".ckpt*"))


def test_names_find_both_kinds_safetensors_first_in_a_folder(tmp_path, monkeypatch, make_model):
    user, home = tmp_path / "user", tmp_path / "home" / ".stylize" / "models"
    user.mkdir()
    home.mkdir(parents=True)
    monkeypatch.setenv(modelfile.USER_DIR_ENV, str(user))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    pt = make_model(name="a")
    os.replace(as_safetensors(pt, tmp_path, "x"), user / f"both{modelfile.SUFFIX}")
    (user / "both.pt").write_bytes(pt.read_bytes())
    os.replace(as_safetensors(pt, tmp_path, "y"), home / f"new{modelfile.SUFFIX}")
    (home / "both.pt").write_bytes(pt.read_bytes())
    assert modelfile.resolve("both") == user / f"both{modelfile.SUFFIX}"
    assert modelfile.resolve("new") == home / f"new{modelfile.SUFFIX}"
    found = {p.stem: p for p in modelfile.find_models()}
    assert found["both"] == user / f"both{modelfile.SUFFIX}" and found["new"] == home / f"new{modelfile.SUFFIX}"
    assert [p.stem for p in modelfile.find_models()].count("both") == 1
    assert Stylizer("new", device="cpu").name == "new"


def test_describing_a_safetensors_model_does_not_import_torch(tmp_path, make_model):
    path = as_safetensors(make_model(name="duo"), tmp_path, "duo")
    code = ("import sys\nfrom stylize.models import modelfile\n"
            f"d = modelfile.describe(modelfile.read_record({str(path)!r}))\n"
            "assert d['name'] == 'duo', d\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert modelfile.describe(modelfile.read_record(path)) == modelfile.describe(modelfile.load(path))


# --- the apply block (modelfile.APPLY) ------------------------------------------------------------

COLOURS = [{"mean": [0.5, 0.4, 0.3], "cov": [[0.02, 0.0, 0.0], [0.0, 0.02, 0.0], [0.0, 0.0, 0.02]]}]


@pytest.mark.parametrize("suffix", [modelfile.SUFFIX, ".pt"])
def test_the_apply_block_round_trips(tmp_path, make_model, suffix):
    model = make_model()
    block = {"full_strength": 0.7, "palette": 0.5, "work_size": 480, "colours": COLOURS, "colour_blur": 2.0,
             "flatten": 4, "flow": 8}
    out = modelfile.write_apply(model, block, tmp_path / f"calibrated{suffix}")
    for read in (modelfile.read_record, modelfile.load):
        assert read(out)["apply"] == {**block, "version": modelfile.APPLY_VERSION}
    assert "apply" not in modelfile.read_record(model)  # the input model is as it was


BAD_BLOCKS = [
    ({"palette": 2.0}, "apply.palette"), ({"full_strength": "high"}, "apply.full_strength"),
    ({"work_size": 480.5}, "apply.work_size"), ({"work_size": 4}, "apply.work_size"),
    ({"strength": 0.5}, "apply.strength"), ({"colours": COLOURS * 2}, "apply.colours"),
    ({"colours": [{"mean": [0.5, 0.4], "cov": []}]}, "apply.colours"), ({"version": "one"}, "apply.version"),
    ({"version": modelfile.APPLY_VERSION + 1}, "upgrade"), ([0.5, 1.0], "apply"),
    ({"colour_blur": -1.0}, "apply.colour_blur"), ({"colour_blur": float("nan")}, "apply.colour_blur"),
    ({"flatten": 40}, "apply.flatten"), ({"flatten": "yes"}, "apply.flatten"),
    ({"flow": -2}, "apply.flow"), ({"flow": float("inf")}, "apply.flow"),
]


@pytest.mark.parametrize("block, fragment", BAD_BLOCKS)
def test_a_bad_apply_block_is_refused_in_one_line(tmp_path, make_model, block, fragment):
    rec = modelfile.load(make_model())
    rec["apply"] = block
    path = modelfile.save(rec, tmp_path / f"bad{modelfile.SUFFIX}")  # save writes what it is given
    for read in (modelfile.read_record, modelfile.load):
        with pytest.raises(StylizeError, match=fragment) as e:
            read(path)
        assert "\n" not in str(e.value)
    if isinstance(block, dict) and "version" not in block:  # write_apply sets the version itself
        with pytest.raises(StylizeError, match=fragment):  # and refuses the rest before writing
            modelfile.write_apply(make_model(name="good"), block, tmp_path / "out.pt")
        assert not (tmp_path / "out.pt").exists()


def test_write_apply_replaces_no_file_unless_asked(tmp_path, make_model):
    model = make_model()
    before = model.read_bytes()
    with pytest.raises(StylizeError, match="is the model being calibrated"):
        modelfile.write_apply(model, {"palette": 0.5}, model)
    assert model.read_bytes() == before
    other = tmp_path / "other.pt"
    other.write_bytes(b"mine")
    with pytest.raises(StylizeError, match="exists"):
        modelfile.write_apply(model, {"palette": 0.5}, other)
    assert other.read_bytes() == b"mine"
    modelfile.write_apply(model, {"palette": 0.5}, model, overwrite=True)
    assert modelfile.read_record(model)["apply"]["palette"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "other.pt"]  # no temporary files


def test_training_writes_a_safetensors_model_when_its_out_says_so(tmp_path, photos_dir, style_path, fast_random_vgg):
    from conftest import tiny_config
    from stylize.train.training import run_dir, train

    cfg = tiny_config(tmp_path, photos_dir, [style_path], iterations=2, out=str(tmp_path / f"m{modelfile.SUFFIX}"))
    path = train(cfg)
    assert path == tmp_path / f"m{modelfile.SUFFIX}" and path.read_bytes()[8:9] == b"{"
    rec = modelfile.load(path)
    assert rec["iteration"] == 2 and rec["train"]["iterations"] == 2 and rec["metrics"]
    assert modelfile.describe(modelfile.read_record(path)) == modelfile.describe(rec)
    # the run's checkpoint keeps the optimizer's state: a PyTorch file still
    assert "optimizer" in modelfile.load(run_dir(cfg.out) / "checkpoint.pt")
