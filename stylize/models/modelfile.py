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

from stylize.errors import StylizeError
from stylize.files import atomic_write
from stylize.settings import NORMS, TRANSFORMER_NETWORKS

FORMAT = "stylize-model"
VERSION = 1
USER_DIR_ENV = "STYLIZE_MODELS"


def _shipped_dir() -> Path:
    """The shipped models: package data (stylize/weights/) in an installed wheel, the repository's
    weights/ in a checkout or an editable install (pyproject.toml maps one onto the other)."""
    installed = Path(str(importlib.resources.files("stylize") / "weights"))
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "weights"


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


KINDS = ("transformer", "adain")
# The settings a record's "net" may hold (networks.NetConfig, adain.AdaINConfig) and their types;
# which of them a network takes is checked when it is built (build).
_SETTING_TYPES = (bool, int, float, str, type(None))
# The "apply" block (mixing.calibrated, palette.colours, scale.work_size): each number's type and range.
_APPLY = {"full_strength": (0.0, 4.0), "palette": (0.0, 1.0), "work_size": (16, 100_000)}


def _short(value, limit: int = 40) -> str:
    """A value as an error line may show it: never a whole weight table."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def check(obj: dict, path) -> None:
    """Refuse, in one line that names the file and the field, a record this version cannot apply:
    every field the apply path reads is here, so a damaged file never reaches a traceback."""
    def bad(field: str, why: str):
        raise StylizeError(f"{path}: damaged model file: {field} {why}")

    if not isinstance(obj.get("version", 0), int):
        bad("version", f"is {_short(obj.get('version'))}, not a number")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise StylizeError(f"{path}: model kind {_short(kind)} is not supported by this version "
                           f"(known: {', '.join(KINDS)})")
    net = obj.get("net")
    if not isinstance(net, dict) or not all(isinstance(k, str) for k in net):
        bad("net", "is not a table of settings")
    for k, v in net.items():
        if not isinstance(v, _SETTING_TYPES) or (isinstance(v, float) and not _finite_number(v)):
            bad(f"net.{k}", f"is {_short(v)}")
    for k, lo in (("width", 1), ("num_styles", 1), ("style_dim", 0)):  # the sizes a network is built from
        if k in net and (not isinstance(net[k], int) or isinstance(net[k], bool) or net[k] < lo):
            bad(f"net.{k}", f"is {_short(net[k])}, not a whole number of {lo} or more")
    if kind == "transformer":
        for k, known in (("norm", NORMS), ("network", TRANSFORMER_NETWORKS)):
            if k in net and net[k] not in known:
                bad(f"net.{k}", f"is {_short(net[k])}; known: {', '.join(known)}")
    styles = obj.get("styles", [] if kind == "adain" else None)  # a transformer network names its styles
    if not isinstance(styles, (list, tuple)) or not all(isinstance(n, str) for n in styles):
        bad("styles", "is not a list of names")
    for field in ("state_dict",) + (("predictor",) if net.get("style_dim") else ()):
        table = obj.get(field)
        if field == "predictor":
            table = table.get("state_dict") if isinstance(table, dict) else None
        if not isinstance(table, dict) or not table or not all(
                isinstance(k, str) and hasattr(v, "shape") for k, v in table.items()):
            bad(field, "is not a table of weights")
    if net.get("style_dim"):
        pred = obj["predictor"]
        if not isinstance(pred.get("loss_net"), str) or not isinstance(pred.get("layers"), (list, tuple)) \
                or not all(isinstance(t, str) for t in pred["layers"]):
            bad("predictor", "does not name its loss network and layers")
    for field in ("train", "versions", "metrics", "apply"):
        if obj.get(field) is not None and not isinstance(obj[field], dict):
            bad(field, f"is {_short(obj[field])}, not a table")
    apply = obj.get("apply") or {}
    for k, (lo, hi) in _APPLY.items():
        if k in apply and not (_finite_number(apply[k]) and lo <= apply[k] <= hi):
            bad(f"apply.{k}", f"is {_short(apply[k])}, not a number in [{lo}, {hi}]")
    colours = apply.get("colours")
    if colours is not None:
        def stats_ok(c):
            return isinstance(c, dict) and _vector(c.get("mean"), 3) and isinstance(c.get("cov"), list) \
                and len(c["cov"]) == 3 and all(_vector(r, 3) for r in c["cov"])
        if not isinstance(colours, list) or not all(stats_ok(c) for c in colours):
            bad("apply.colours", "is not one colour mean and covariance per style")


def _vector(v, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_finite_number(x) for x in v)


def _ours(obj, path: Path) -> dict:
    """The record, if it is a stylize model this version reads."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise StylizeError(f"{path}: not a stylize model file")
    if isinstance(obj.get("version", 0), int) and obj.get("version", 0) > VERSION:
        raise StylizeError(f"{path}: made by a newer stylize (format {obj['version']}); upgrade stylize")
    check(obj, path)
    obj["path"] = str(path)
    return obj


def build(record: dict, make, state: dict, what: str = "network"):
    """The network `make()` builds from a record's settings, with the record's weights `state` loaded:
    settings it cannot build from, weights of other names or shapes, and weights that are not finite
    numbers are each refused in one line naming the file (never torch's own traceback)."""
    import torch

    path = record.get("path", "model file")
    try:
        net = make()
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError, ZeroDivisionError) as e:
        raise StylizeError(f"{path}: damaged model file: its {what} settings do not build "
                           f"({_short(str(e).splitlines()[0] if str(e) else type(e).__name__, 80)})") from None
    own = net.state_dict()
    missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or extra:
        names = ", ".join((missing or extra)[:3]) + (", ..." if len(missing or extra) > 3 else "")
        raise StylizeError(f"{path}: damaged model file: its {what} weights "
                           f"{'lack' if missing else 'have unknown'} {names}")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or v.shape != own[k].shape:
            raise StylizeError(f"{path}: damaged model file: weight {k} has shape "
                               f"{tuple(getattr(v, 'shape', ()))}, the {what} needs {tuple(own[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise StylizeError(f"{path}: damaged model file: weight {k} holds values that are not finite "
                               "(NaN or infinity); the training that wrote it diverged")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return net


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

