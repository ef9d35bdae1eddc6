"""Choosing the torch device from --device (auto, cuda, mps, cpu)."""
from __future__ import annotations

import torch

from stylize.errors import StylizeError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StylizeError("--device cuda: no CUDA GPU is available to this PyTorch build")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise StylizeError("--device mps: Apple's Metal backend is not available here")
    if name not in ("cpu", "cuda", "mps"):
        raise StylizeError(f"unknown device {name!r}; choose auto, cuda, mps or cpu")
    return torch.device(name)
