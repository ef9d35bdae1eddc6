"""Self-describing model files: where they are found, how they are written and safely read.

A model record is a plain dict of tensors, strings and numbers:
  format, version, kind, net (the network's arguments), styles (names), train (the settings it was
  trained with), versions, metrics, apply (how it applies: APPLY below), state_dict (the network's
  weights); a model for any painting adds predictor (loss_net, layers, style_size, state_dict); a
  checkpoint adds optimizer, iteration, rng, history, loader.

Two containers, told apart by their content (not their names):
- `.safetensors` (SUFFIX), what save() writes for a model: the safetensors layout (an 8-byte header
  length, a JSON header, the tensors' bytes). The header's "__metadata__" holds {"format":
  "stylize-model", "record": the record as JSON, each table of weights replaced by {"$tensors":
  PREFIX}}; the weights are the tensors PREFIX/NAME: "network/..." (state_dict), "predictor/..."
  (predictor.state_dict). Nothing in it is code; the header alone says everything `stylize models`
  and `info` show, so they read a few kB (read_record), and the tensors load with numpy alone
  (load(..., arrays="numpy")) or into torch.
- `.pt`, a PyTorch pickle read with weights_only=True (or, for the record alone, a restricted
  unpickler without torch): every model before the safetensors one (the shipped weights/*.pt), and
  training's checkpoints, whose optimizer and random-number states are not tables of named tensors.
save() writes the container its path's suffix names.
"""
from __future__ import annotations

import collections
import copy
import importlib.resources
import json
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path

from stylize.errors import StylizeError
from stylize.files import atomic_write
from stylize.settings import NORMS, TRANSFORMER_NETWORKS

FORMAT = "stylize-model"
VERSION = 1
USER_DIR_ENV = "STYLIZE_MODELS"
SUFFIX = ".safetensors"  # what new model files are written as
SUFFIXES = (SUFFIX, ".pt")  # what a model name is looked up as, in this order within a folder


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


def models_in(folder: Path) -> list[Path]:
    """A folder's model files by name, one per name: NAME.safetensors over NAME.pt."""
    found: dict[str, Path] = {}
    for suffix in SUFFIXES:
        for p in sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []:
            found.setdefault(p.stem, p)
    return sorted(found.values(), key=lambda p: p.stem)


def find_models() -> list[Path]:
    """Every model a name reaches, the first folder of model_dirs() first."""
    seen, found = set(), []
    for d in model_dirs():
        for p in models_in(d):
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
            for suffix in SUFFIXES:
                if (d / f"{p.name}{suffix}").is_file():
                    return d / f"{p.name}{suffix}"
        names = ", ".join(m.stem for m in find_models()) or "none found"
        raise StylizeError(f"unknown model {name_or_path!r}; available: {names}")
    raise StylizeError(f"{p}: no such model file")


def save(obj: dict, path: str | Path) -> Path:
    """Write atomically (temporary file in the same folder, then rename), as safetensors for a path
    ending in SUFFIX, else as a PyTorch file."""
    path = Path(path)
    if path.suffix == SUFFIX:
        data = _safetensors_bytes(obj, path)  # everything is checked before anything is written
        write = lambda f: f.write(data)  # noqa: E731
    else:
        import torch  # here, not at the top: finding models must not cost torch's start-up

        write = lambda f: torch.save(obj, f)  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, write, f".{path.name}.", ".part")


def load(path: str | Path, arrays: str = "torch") -> dict:
    """Read a model file, its weights as torch tensors (or, from a safetensors file, as numpy arrays
    with arrays="numpy", without torch); anything that is not ours is refused in one line."""
    path = resolve(path)
    if _is_safetensors(path):
        record, entries = read_header(path)
        _ours(_with_shapes(copy.deepcopy(record), entries), path)  # refused before any tensor is read
        _fill(record, _read_tensors(path, arrays))
        return _ours(record, path)
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a class or function reference: how pickles run code
            raise StylizeError(f"{path}: refused, the file holds arbitrary Python objects "
                               "(loading it could run code); it is not a stylize model")
        raise StylizeError(f"{path}: not a stylize model file (corrupt, or not a PyTorch file)")
    except Exception as e:
        raise StylizeError(f"{path}: not a stylize model file ({type(e).__name__})")
    obj = _ours(obj, path)
    return _numpy(obj) if arrays == "numpy" else obj


# --- the safetensors container -------------------------------------------------------------------

# Tables of weights and the prefix of their tensors' names; another table (none today) is named by
# its place in the record, e.g. "a.b" for record["a"]["b"].
PREFIXES = {("state_dict",): "network", ("predictor", "state_dict"): "predictor"}
_TABLE = "$tensors"  # what stands in the header's record for a table of weights
# safetensors' types and their sizes in bytes; the names read_record gives them (as torch's storages)
_DTYPES = {"F64": (8, "double"), "F32": (4, "float"), "F16": (2, "half"), "BF16": (2, "bfloat16"),
           "I64": (8, "long"), "I32": (4, "int"), "I16": (2, "short"), "I8": (1, "char"),
           "U8": (1, "byte"), "BOOL": (1, "bool")}
_HEADER_LIMIT = 100 << 20  # safetensors' own limit on a header's size


def _is_safetensors(path: Path) -> bool:
    """Named so, or laid out so: an 8-byte little-endian length, then a JSON header (a PyTorch file
    is a zip archive, which starts "PK")."""
    if path.suffix == SUFFIX:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False  # torch's reader says what is wrong
    return len(head) == 9 and head[8:9] == b"{" and head[:2] != b"PK"


def _prefix(at: tuple) -> str:
    return PREFIXES.get(at) or ".".join(at)


def _is_table(v) -> bool:
    return isinstance(v, dict) and bool(v) and all(hasattr(t, "shape") and hasattr(t, "dtype") for t in v.values())


def _split(obj, at: tuple, tensors: dict, where: Path):
    """The record as JSON values, its tables of weights moved into `tensors` (PREFIX/NAME)."""
    if _is_table(obj):
        prefix = _prefix(at)
        for k, t in obj.items():
            if not isinstance(k, str):
                break
            tensors[f"{prefix}/{k}"] = t
        else:
            return {_TABLE: prefix}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {k: _split(v, at + (k,), tensors, where) for k, v in obj.items() if not (at == () and k == "path")}
    if isinstance(obj, (list, tuple)):
        return [_split(v, at + (str(i),), tensors, where) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    what = "a table keyed by other than names" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise StylizeError(f"{where}: {'.'.join(at) or 'the record'} is {what}, which a {SUFFIX} model file "
                       "cannot keep (a checkpoint's optimizer and random states go in a .pt file)")


def _safetensors_bytes(obj: dict, path: Path) -> bytes:
    import torch
    from safetensors.torch import save as save_tensors

    tensors: dict = {}
    record = _split(obj, (), tensors, path)
    tensors = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(v)).detach().cpu().contiguous()
               for k, v in tensors.items()}
    return save_tensors(tensors, {"format": FORMAT, "record": json.dumps(record)})


def read_header(path: str | Path) -> tuple[dict, dict]:
    """A safetensors model file's record (its tables of weights still {"$tensors": PREFIX}) and its
    tensors' entries {NAME: {"dtype", "shape", "data_offsets"}}, from the header alone: the tensors'
    bytes are never read. A header that is damaged, or that places tensors outside the file (one cut
    short), is refused in one line."""
    path = Path(path)

    def bad(why: str):
        raise StylizeError(f"{path}: not a stylize model file ({why})")

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            bad("too short for a header")
        (length,) = struct.unpack("<Q", head)
        if length > min(_HEADER_LIMIT, size - 8):
            bad("its header length is larger than the file: cut short, or not a safetensors file")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        bad("its header is not JSON: damaged, or not a safetensors file")
    if not isinstance(header, dict):
        bad("its header is not a table")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("record"), str):
        bad("a safetensors file, but not one of stylize's")
    try:
        record = json.loads(meta["record"])
    except ValueError:
        bad("its record is not JSON")
    data, end = size - 8 - length, 0
    for name, entry in header.items():
        ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPES and isinstance(entry.get("shape"), list) \
            and all(isinstance(n, int) and n >= 0 for n in entry["shape"]) \
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2 \
            and all(isinstance(n, int) for n in entry["data_offsets"])
        if not ok:
            bad(f"its header's entry for {_short(name)} is damaged")
        lo, hi = entry["data_offsets"]
        if not 0 <= lo <= hi or hi - lo != math.prod(entry["shape"]) * _DTYPES[entry["dtype"]][0]:
            bad(f"its header gives tensor {_short(name)} {hi - lo} bytes, its shape and type need "
                f"{math.prod(entry['shape']) * _DTYPES[entry['dtype']][0]}")
        end = max(end, hi)
    if end > data:
        bad(f"its tensors need {end} bytes, the file holds {data}: cut short")
    return record, header


def _fill(obj, tensors: dict) -> None:
    """Put each table of weights back into the record, in place: {"$tensors": P} -> {NAME: tensors["P/NAME"]}."""
    for k, v in obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ():
        if isinstance(v, dict) and set(v) == {_TABLE}:
            start = f"{v[_TABLE]}/"
            obj[k] = {name[len(start):]: t for name, t in tensors.items() if name.startswith(start)}
        else:
            _fill(v, tensors)


def _with_shapes(record, entries: dict):
    """The record with its tables of weights as shapes and types only (_Tensor), as read_record gives them."""
    if isinstance(record, dict):
        _fill(record, {name: _Tensor(_Storage(_DTYPES[e["dtype"]][1]), 0, e["shape"]) for name, e in entries.items()})
    return record


def _numpy(obj):
    """A record read by torch with its tensors as numpy arrays (load(..., arrays="numpy") of a .pt file)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return (obj.float() if obj.dtype == torch.bfloat16 else obj).numpy()
    if isinstance(obj, dict):
        return {k: _numpy(v) for k, v in obj.items()}
    return [_numpy(v) for v in obj] if isinstance(obj, (list, tuple)) else obj


def _read_tensors(path: Path, arrays: str) -> dict:
    try:
        if arrays == "numpy":
            from safetensors.numpy import load_file
        else:
            from safetensors.torch import load_file
        return load_file(path)
    except Exception as e:  # safetensors' own checks (overlaps, a type numpy lacks): one line still
        raise StylizeError(f"{path}: damaged model file: its tensors do not read "
                           f"({_short(str(e).splitlines()[0] if str(e) else type(e).__name__, 80)})") from None


KINDS = ("transformer", "adain", "wct")  # wct: WCT decoders for any painting (wct.py)
# The settings a record's "net" may hold (networks.NetConfig, adain.AdaINConfig, wct.WCTConfig) and their types;
# which of them a network takes is checked when it is built (build).
_SETTING_TYPES = (bool, int, float, str, type(None))

# The "apply" block: how a model applies, measured after training (stylize/apply/calibrate.py, `stylize
# calibrate`) and read by the apply path. Its keys, all optional:
#   version        APPLY_VERSION: the block's layout (absent in files before it had one: 1)
#   full_strength  the network's strength condition at --style-weight 1 (recipe.calibrated); 1 if absent
#   palette        how far the output then moves to the painting's palette at --style-weight 1
#                  (recipe.calibrated, palette.recolour); 0 if absent
#   work_size      the shorter side, in pixels, a larger photo is stylized at (scale.work_shape); absent:
#                  every photo at its own size. `stylize train` writes its --content-size here
#   colours        a trained model's styles' palettes, one {"mean": [r, g, b], "cov": 3 rows of 3} per
#                  style in style order (palette.colours); a model for any painting takes the painting's
#   colour_blur    the network's output's colour (chroma) blurred by a Gaussian of this many pixels at
#                  the work size, its luminance kept (color.blur_colour; version 2); 0 if absent
#   flatten        the network's output painted flat at the work size by the generalized Kuwahara filter of
#                  this radius in pixels (flatten.flatten; version 3); 0 if absent
#   flow           the network's output smoothed along the photo's lines at the work size, before the
#                  flatten, over a Gaussian of this many pixels (flow.follow; version 4); 0 if absent
# A block of a newer version, an unknown key or a value out of its range is refused in one line.
APPLY_VERSION = 4
APPLY_KEYS = ("version", "full_strength", "palette", "work_size", "colours", "colour_blur", "flatten", "flow")
_APPLY = {"full_strength": (0.0, 4.0), "palette": (0.0, 1.0), "work_size": (16, 100_000),
          "colour_blur": (0.0, 16.0), "flatten": (0.0, 16.0), "flow": (0.0, 16.0)}  # each number's range


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
    styles = obj.get("styles", [] if kind in ("adain", "wct") else None)  # a transformer network names its styles
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
    if obj.get("apply") is not None:
        check_apply(obj["apply"], styles, path)


def check_apply(apply, styles: list[str], path, problem: str = "damaged model file") -> None:
    """Refuse, in one line, an apply block (APPLY) this version cannot follow; `styles`: the model's."""
    def bad(field: str, why: str):
        raise StylizeError(f"{path}: {problem}: apply{'.' + field if field else ''} {why}")

    if not isinstance(apply, dict):
        bad("", f"is {_short(apply)}, not a table")
    version = apply.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        bad("version", f"is {_short(version)}, not a whole number of 1 or more")
    if version > APPLY_VERSION:
        raise StylizeError(f"{path}: its apply block was written by a newer stylize (version {version}); "
                           "upgrade stylize")
    unknown = sorted(str(k) for k in apply if k not in APPLY_KEYS)
    if unknown:
        bad(unknown[0], f"is not a setting of apply version {version} (known: {', '.join(APPLY_KEYS)})")
    for k, (lo, hi) in _APPLY.items():
        if k in apply and not (_finite_number(apply[k]) and lo <= apply[k] <= hi):
            bad(k, f"is {_short(apply[k])}, not a number in [{lo}, {hi}]")
    if "work_size" in apply and not isinstance(apply["work_size"], int):
        bad("work_size", f"is {_short(apply['work_size'])}, not a whole number of pixels")
    colours = apply.get("colours")
    if colours is not None:
        def stats_ok(c):
            return isinstance(c, dict) and _vector(c.get("mean"), 3) and isinstance(c.get("cov"), list) \
                and len(c["cov"]) == 3 and all(_vector(r, 3) for r in c["cov"])
        if not isinstance(colours, list) or not all(stats_ok(c) for c in colours) or len(colours) != len(styles):
            bad("colours", f"is not one colour mean and covariance per style ({len(styles)})")


def write_apply(model: str | Path, apply: dict, out: str | Path, overwrite: bool = False) -> Path:
    """A copy of `model` that applies as `apply` says (APPLY; its version is set here), written
    atomically to `out`, whose suffix picks the container (a .pt model may go to .safetensors). An
    existing file, the model itself above all, is replaced only with `overwrite`."""
    src, out = resolve(model), Path(out)
    if out.exists() and not overwrite:
        what = "is the model being calibrated" if out.resolve() == src.resolve() else "exists"
        raise StylizeError(f"{out}: {what}; write to another file, or ask to overwrite it")
    record = load(src)
    block = {**{k: v for k, v in apply.items() if k != "version"}, "version": APPLY_VERSION}
    check_apply(block, record["styles"], src, "refused apply block")
    record["apply"] = block
    record.pop("path", None)  # where it was read from, not part of the model
    return save(record, out)


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
    `stylize models` and `stylize info` show, in a fraction of the time and memory of load(). Of a
    safetensors file only the header is read; of a .pt file the pickled record. A .pt file
    this reader does not know (an older torch format, a checkpoint holding other objects) is read by
    load() instead; the same refusals apply."""
    path = resolve(path)
    if _is_safetensors(path):
        return _ours(_with_shapes(*read_header(path)), path)  # the header alone: a few kB
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            obj = _Record(z.open(name)).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, StopIteration, EOFError, OSError, ValueError):
        return load(path)  # torch's weights_only reader decides, and says what is wrong in one line
    return _ours(obj, path)


# What a model paints, by how it takes its style: the line `stylize info` and the web page show.
# The cost is measured (weights/README.md, wct's "speed"): whole processes at 1024x768 on a 2-core CPU.
USES = {
    "wct": "any painting, given at apply time (--style PAINTING.jpg): the painting's feature statistics "
           "(mean and covariance) put into the photo's by whitening and colouring, coarse to fine, one "
           "decoder per level; no training per painting, about twice the time of a trained style",
    "adaptive": "any painting, given at apply time (--style PAINTING.jpg): the network's norm layers take "
                "their scales and shifts from the painting's statistics; the time of a trained style",
    "styles": "the style it was trained on",
    "mix": "the {n} styles it was trained on, each or mixed (--style NAME=WEIGHT)",
}


def takes_paintings(described: dict) -> bool:
    """Whether a model (describe()) paints a painting given at apply time, not styles of its own."""
    return described["kind"] in ("adain", "wct") or described["norm"] == "adaptive"


def describe(obj: dict) -> dict:
    """The summary `stylize models` and `stylize info` print (also as JSON)."""
    path = Path(obj["path"])
    net = obj.get("net", {})
    train = obj.get("train", {})
    d = {
        "name": path.stem,
        "path": str(path),
        "kind": obj.get("kind"),
        "norm": net.get("norm") or {"adain": "adaptive", "wct": "wct"}.get(obj.get("kind")),
        "encoder": net.get("encoder") or obj.get("predictor", {}).get("loss_net"),
        "styles": list(obj.get("styles", [])),
        "strength": bool(net.get("strength", False)) or obj.get("kind") == "wct",  # its levels' strengths scale
        "width": net.get("width"),
        "network": net.get("network", "johnson") if obj.get("kind") == "transformer" else None,
        "loss_net": train.get("loss_net"),
        "iterations": obj.get("iteration", train.get("iterations")),
        "image_size": train.get("image_size"),
        "metrics": obj.get("metrics", {}),
        "apply": {k: v for k, v in (obj.get("apply") or {}).items() if k != "colours"},  # recipe.calibrated
        "versions": obj.get("versions", {}),
        "checkpoint": "optimizer" in obj,
        **({"levels": net.get("levels")} if obj.get("kind") == "wct" else {}),  # tap:strength, coarse to fine
    }
    n = len(d["styles"])
    use = ("wct" if d["kind"] == "wct" else "adaptive") if takes_paintings(d) else "mix" if n > 1 else "styles"
    return {**d, "use": USES[use].format(n=n)}

