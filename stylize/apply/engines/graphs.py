"""Which ONNX graph a model runs on the CPU, and where it comes from: shipped beside the model
(weights/onnx/), or exported once into a cache keyed by the model file's sha256 (export.py, which
needs torch) and read from there by later runs, which never import torch (onnx_runtime.py runs it).
A WCT model's graphs come in parts, an encoder per level for the paintings and one graph that paints
the photo (`parts`; onnx_wct.py runs them), cached, shipped and rebuilt together.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from stylize.apply.recipe import file_key
from stylize.models import modelfile
from stylize.errors import StylizeError
from stylize.files import CACHE_ENV, cache_root, file_sha256
from stylize.apply.engines.onnx_runtime import GRAPH_VERSION, OnnxStylizer
from stylize.apply.engines.onnx_wct import OnnxWCT
from stylize.settings import ApplyConfig

CACHE_MB = 512  # the graph cache keeps the most recently used graphs within this size


def cache_dir() -> Path:
    return cache_root()


def parts(model: str | Path) -> list[str]:
    """The parts a model's graphs come in: [""], one graph; for a WCT model "enc-TAP" per level and
    "paint" (export.export_wct)."""
    record = modelfile.read_record(model)
    if record.get("kind") != "wct":
        return [""]
    from stylize.models.whitening import WCTConfig

    try:
        levels = WCTConfig(**record["net"]).levels
    except (TypeError, ValueError) as e:
        raise StylizeError(f"{record.get('path', model)}: damaged model file: its WCT settings do not build ({e})")
    return [f"enc-{tap}" for tap, _ in levels] + ["paint"]


def cached_graphs(model: str | Path, notice: Callable[[str], None] | None = None,
                  default: bool = False) -> dict[str, Path]:
    """The model's ONNX graphs by part (`parts`): shipped beside it (SHIPPED_GRAPHS), or in the cache,
    exported (and checked against PyTorch) on first use; with `default`, the faster graph of its
    default condition (export._Default), for transformer models. Cached graphs used are marked
    recent; past CACHE_MB the least recently used go."""
    path = modelfile.resolve(model)
    names = parts(path)
    shipped = {p: shipped_graph(path, default, p) for p in names}
    if all(g.exists() for g in shipped.values()):
        return shipped
    cached = {p: graph_path(path, default, p) for p in names}
    if all(g.exists() for g in cached.values()):
        for g in cached.values():
            os.utime(g)
        return cached
    folder = cache_dir() / "onnx"
    if notice:
        notice(f"preparing {path.stem} for ONNX Runtime (once, some seconds; cached in {folder})")
    from stylize.apply.engines.export import export_onnx, export_wct

    if names == [""]:
        export_onnx(path, cached[""], default=default)
    else:
        export_wct(path, cached)
    _prune(folder, keep=set(cached.values()))
    return cached


def cached_graph(model: str | Path, notice: Callable[[str], None] | None = None, default: bool = False) -> Path:
    """A one-graph model's graph (cached_graphs)."""
    return cached_graphs(model, notice, default)[""]


_DIGESTS: dict = {}


def _digest(path: Path) -> str:
    """The model file's sha256, hashed once per content (recipe.file_key) in a process: a WCT model's
    four graphs ask for it several times."""
    key = file_key(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path)
    return _DIGESTS[key]


def _graph_name(path: Path, default: bool, part: str = "") -> str:
    """Named by the model file's content and the exporter's version, not its path: neither a
    retrained model nor a changed exporter ever meets a stale graph."""
    return f"{path.stem}-{_digest(path)[:20]}-g{GRAPH_VERSION}{'-default' if default else ''}" \
           f"{'-' + part if part else ''}.onnx"


def graph_path(model: str | Path, default: bool = False, part: str = "") -> Path:
    """Where the cache keeps a model's graph (one part of it: `parts`)."""
    path = modelfile.resolve(model)
    return cache_dir() / "onnx" / _graph_name(path, default, part)


# Graphs exported ahead of time and kept in an onnx/ folder beside their models (weights/onnx/ for
# the shipped ones: `python tools/ship_graphs.py`), so that a first apply does not wait for an export.
SHIPPED_GRAPHS = "onnx"


def shipped_graph(model: str | Path, default: bool = False, part: str = "") -> Path:
    path = modelfile.resolve(model)
    return path.parent / SHIPPED_GRAPHS / _graph_name(path, default, part)


def _prune(folder: Path, keep: Path | set[Path], limit_mb: float = CACHE_MB) -> None:
    keep = {keep} if isinstance(keep, Path) else keep
    graphs = sorted(folder.glob("*.onnx"), key=lambda g: g.stat().st_mtime, reverse=True)
    total = 0
    for g in graphs:
        total += g.stat().st_size
        if total > limit_mb * 2**20 and g not in keep:
            g.unlink(missing_ok=True)


def exists(model: str | Path, default: bool = False) -> bool:
    """Whether the model's graphs are there already, shipped or cached (else a first use exports them)."""
    names = parts(model)
    return any(all(where(model, default, p).exists() for p in names) for where in (graph_path, shipped_graph))


def cache_problem() -> str | None:
    """Why no graph can be written to the cache (a read-only home, an unwritable STYLIZE_CACHE), or None."""
    folder = cache_dir() / "onnx"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create {folder}: {e.strerror}"
    return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable"


def load(model: str | Path, style_size: int | None = ApplyConfig.style_size, memory_mb: float = ApplyConfig.memory_mb,
         notice: Callable[[str], None] | None = None, fallback: Callable[[], object] | None = None,
         default: bool = False):
    """An OnnxStylizer for the model (an OnnxWCT for a WCT model): its cached graphs, exported first if
    need be. Where the cache cannot be written, `fallback()` (the PyTorch stylizer), said once to
    `notice`; a cached graph that does not load (a truncated file, a disk error) is rebuilt.

    `default`: the request is the model's default condition (no --style, full strength), so a
    transformer model runs its faster default graph (an adaptive model needs a --style, so for it the
    flag changes nothing: its graph is exported as always, and its condition() asks for the style).
    The request is checked before (choose.open_stylizer): a first export takes seconds."""
    notice = notice or (lambda message: None)
    cached = exists(model, default)
    if not cached and (why := cache_problem()):
        if fallback is None:
            raise StylizeError(f"ONNX cache: {why}; set {CACHE_ENV} to a writable folder")
        notice(f"ONNX cache: {why}; using PyTorch (set {CACHE_ENV} to a writable folder for the faster path)")
        return fallback()

    def open_(found: dict[str, Path]):
        if "" in found:
            return OnnxStylizer(found[""], style_size, memory_mb, fallback)
        return OnnxWCT(found, modelfile.resolve(model).stem, style_size)

    found = cached_graphs(model, notice, default)
    try:
        return open_(found)
    except StylizeError:
        if any(g != graph_path(model, default, p) for p, g in found.items()):
            raise  # a shipped graph that does not load: the install is broken
        for g in found.values():
            g.unlink(missing_ok=True)
        notice(f"{', '.join(map(str, found.values()))}: a damaged cached graph; rebuilding it")
        return open_(cached_graphs(model, notice, default))
