"""The memory budget of one pass of a network: how many pixels it may take before it runs in tiles.

Torch-free and below the engines, so that every engine and the file pipeline read one rule.
"""
from __future__ import annotations

MIN_TILE = 64


def bytes_per_pixel(width: int) -> float:
    """Peak working memory of one forward pass per input pixel, float32, for a network of `width`.

    Measured on CPU: ~960 B/px at width 32, ~545 at width 16 (about 30 bytes per channel of the
    first layer); rounded up.
    """
    return 32.0 * width + 64.0


def budget_pixels(memory_mb: float, width: int) -> int:
    """How many pixels one forward pass may have within `memory_mb` of working memory; larger images
    are tiled (tiling.py)."""
    return max(MIN_TILE * MIN_TILE, int(memory_mb * 2**20 / bytes_per_pixel(width)))
