"""Which ONNX graph a model runs on the CPU, and where it comes from: shipped beside the model
(weights/onnx/), or exported once into a cache keyed by the model file's sha256 (export.py, which
needs torch) and read from there by later runs, which never import torch (onnx_runtime.py runs it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from stylize.models import modelfile
from stylize.errors import StylizeError
from stylize.files import CACHE_ENV, cache_root, file_sha256
from stylize.apply.engines.onnx_runtime import GRAPH_VERSION, OnnxStylizer
from stylize.settings import ApplyConfig

CACHE_MB = 512  # the graph cache keeps the most recently used graphs within this size


def cache_dir() -> Path:
    return cache_root()


def cached_graph(model: str | Path, notice: Callable[[str], None] | None = None, default: bool = False) -> Path:
    """The model's ONNX graph: shipped beside it (SHIPPED_GRAPHS), or in the cache, exported (and
    checked against PyTorch) on first use; with `default`, the faster graph of its default condition
    (export._Default), for transformer models. A cached graph used is marked recent; past CACHE_MB
    the least recently used go."""
    path = modelfile.resolve(model)
    if (shipped := shipped_graph(path, default)).exists():
        return shipped
    graph = graph_path(path, default)
    if graph.exists():
        os.utime(graph)
        return graph
    if notice:
        notice(f"preparing {path.stem} for ONNX Runtime (once, some seconds; cached in {graph.parent})")
    from stylize.apply.engines.export import export_onnx

    export_onnx(path, graph, default=default)
    _prune(graph.parent, keep=graph)
    return graph


def _graph_name(path: Path, default: bool) -> str:
    """Named by the model file's content and the exporter's version, not its path: neither a
    retrained model nor a changed exporter ever meets a stale graph."""
    return f"{path.stem}-{file_sha256(path)[:20]}-g{GRAPH_VERSION}{'-default' if default else ''}.onnx"


def graph_path(model: str | Path, default: bool = False) -> Path:
    """Where the cache keeps a model's graph."""
    path = modelfile.resolve(model)
    return cache_dir() / "onnx" / _graph_name(path, default)


# Graphs exported ahead of time and kept in an onnx/ folder beside their models (weights/onnx/ for
# the shipped ones: `python tools/ship_graphs.py`), so that a first apply does not wait for an export.
SHIPPED_GRAPHS = "onnx"


def shipped_graph(model: str | Path, default: bool = False) -> Path:
    path = modelfile.resolve(model)
    return path.parent / SHIPPED_GRAPHS / _graph_name(path, default)


def _prune(folder: Path, keep: Path, limit_mb: float = CACHE_MB) -> None:
    graphs = sorted(folder.glob("*.onnx"), key=lambda g: g.stat().st_mtime, reverse=True)
    total = 0
    for g in graphs:
        total += g.stat().st_size
        if total > limit_mb * 2**20 and g != keep:
            g.unlink(missing_ok=True)


def exists(model: str | Path, default: bool = False) -> bool:
    """Whether the model's graph is there already, shipped or cached (else a first use exports it)."""
    return graph_path(model, default).exists() or shipped_graph(model, default).exists()


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
    """An OnnxStylizer for the model: its cached graph, exported first if need be. Where the cache
    cannot be written, `fallback()` (the PyTorch stylizer), said once to `notice`; a cached graph
    that does not load (a truncated file, a disk error) is rebuilt.

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
    graph = cached_graph(model, notice, default)
    try:
        return OnnxStylizer(graph, style_size, memory_mb, fallback)
    except StylizeError:
        if graph != graph_path(model, default):  # a shipped graph that does not load: the install is broken
            raise
        graph.unlink(missing_ok=True)
        notice(f"{graph}: a damaged cached graph; rebuilding it")
        return OnnxStylizer(cached_graph(model, notice, default), style_size, memory_mb, fallback)
