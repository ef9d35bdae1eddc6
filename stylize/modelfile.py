"""Self-describing model files: where they are found, how they are written and safely read.

A model file is a plain dict of tensors, strings and numbers (loadable with weights_only=True):
  format, version, kind, net (the network's arguments), styles (names), train (the settings it was
  trained with), versions, metrics, state_dict; a checkpoint adds optimizer, iteration, rng, history.
"""
from __future__ import annotations

import collections
import importlib.resources
import os
import pickle
import zipfile
from pathlib import Path

from .errors import StylizeError
from .files import atomic_write

FORMAT = "stylize-model"
VERSION = 1
USER_DIR_ENV = "STYLIZE_MODELS"


def _shipped_dir() -> Path:
    """The shipped models: package data (stylize/weights/) in an installed wheel, the repository's
    weights/ in a checkout or an editable install (pyproject.toml maps one onto the other)."""
    installed = Path(str(importlib.resources.files("stylize") / "weights"))
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "weights"


# Where `--model NAME` looks, in order: $STYLIZE_MODELS (a user folder), ~/.stylize/models/, then
# the shipped models.
SHIPPED_DIR = _shipped_dir()


def model_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(USER_DIR_ENV):
        dirs.append(Path(os.environ[USER_DIR_ENV]).expanduser())
    dirs.append(Path.home() / ".stylize" / "models")
    dirs.append(SHIPPED_DIR)
    return dirs


def find_models() -> list[Path]:
    seen, found = set(), []
    for d in model_dirs():
        for p in sorted(d.glob("*.pt")) if d.is_dir() else []:
            if p.stem not in seen:
                seen.add(p.stem)
                found.append(p)
    return found


def resolve(name_or_path: str | Path) -> Path:
    """A path to an existing file, or a model name looked up in model_dirs()."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    if p.suffix == "" and p.name == str(name_or_path):
        for d in model_dirs():
            if (d / f"{p.name}.pt").is_file():
                return d / f"{p.name}.pt"
        names = ", ".join(m.stem for m in find_models()) or "none found"
        raise StylizeError(f"unknown model {name_or_path!r}; available: {names}")
    raise StylizeError(f"{p}: no such model file")


def save(obj: dict, path: str | Path) -> Path:
    """Write atomically (temporary file in the same folder, then rename)."""
    import torch  # here, not at the top: finding models must not cost torch's start-up

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: torch.save(obj, f), f".{path.name}.", ".part")


def load(path: str | Path) -> dict:
    """Read a model file with weights_only=True; anything that is not ours is refused in one line."""
    import torch

    path = resolve(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a class or function reference: how pickles run code
            raise StylizeError(f"{path}: refused, the file holds arbitrary Python objects "
                               "(loading it could run code); it is not a stylize model")
        raise StylizeError(f"{path}: not a stylize model file (corrupt, or not a PyTorch file)")
    except Exception as e:
        raise StylizeError(f"{path}: not a stylize model file ({type(e).__name__})")
    return _ours(obj, path)


def _ours(obj, path: Path) -> dict:
    """The record, if it is a stylize model this version reads."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise StylizeError(f"{path}: not a stylize model file")
    if obj.get("version", 0) > VERSION:
        raise StylizeError(f"{path}: made by a newer stylize (format {obj['version']}); upgrade stylize")
    obj["path"] = str(path)
    return obj


class _Tensor:
    """What read_record puts where a tensor was: its shape and type, not its data."""

    def __init__(self, storage, offset, shape, *rest):
        self.shape, self.dtype = tuple(shape), getattr(storage, "dtype", "?")

    def __repr__(self):
        return f"tensor{list(self.shape)}"


class _Storage:
    def __init__(self, dtype: str):
        self.dtype = dtype


class _Record(pickle.Unpickler):
    """Unpickles a model file's record without torch: tensors become _Tensor (their data is never
    read), and as with torch.load(weights_only=True) any other class or function is refused."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _Tensor
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"unsupported global {module}.{name}")

    def persistent_load(self, pid):  # ("storage", storage type, key, location, size)
        kind = pid[1] if isinstance(pid[1], str) else getattr(pid[1], "__name__", "?")
        return _Storage(kind.removesuffix("Storage").lower())


def read_record(path: str | Path) -> dict:
    """A model file's record with its tensors as shapes only, without importing torch: what
    `stylize models` and `stylize info` show, in a fraction of the time and memory of load(). A file
    this reader does not know (an older torch format, a checkpoint holding other objects) is read by
    load() instead; the same refusals apply."""
    path = resolve(path)
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            obj = _Record(z.open(name)).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, StopIteration, EOFError, OSError, ValueError):
        return load(path)  # torch's weights_only reader decides, and says what is wrong in one line
    return _ours(obj, path)


def describe(obj: dict) -> dict:
    """The summary `stylize models` and `stylize info` print (also as JSON)."""
    path = Path(obj["path"])
    net = obj.get("net", {})
    train = obj.get("train", {})
    return {
        "name": path.stem,
        "path": str(path),
        "kind": obj.get("kind"),
        "norm": net.get("norm") or ("adaptive" if obj.get("kind") == "adain" else None),
        "encoder": net.get("encoder") or obj.get("predictor", {}).get("loss_net"),
        "styles": list(obj.get("styles", [])),
        "strength": bool(net.get("strength", False)),
        "width": net.get("width"),
        "network": net.get("network", "johnson") if obj.get("kind") == "transformer" else None,
        "loss_net": train.get("loss_net"),
        "iterations": obj.get("iteration", train.get("iterations")),
        "image_size": train.get("image_size"),
        "metrics": obj.get("metrics", {}),
        "apply": {k: v for k, v in (obj.get("apply") or {}).items() if k != "colours"},  # mixing.calibrated
        "versions": obj.get("versions", {}),
        "checkpoint": "optimizer" in obj,
    }

