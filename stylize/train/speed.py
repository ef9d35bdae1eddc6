"""Training speed levers: which ones a device gets by default, and reading a requested set.

`auto` (TrainConfig.levers, `stylize train --levers`) turns on every lever below but `compile` on
CUDA, and none elsewhere, so CPU runs keep the exact arithmetic they always had. bench/train.py
measures them against the plain fp32 loop of pytorch/examples and ablates them with --levers.

On a CPU they are not on by default although some pay there: on a Xeon with AMX, bf16 and
channels_last trained much faster (docs/benchmarks.md; bench/train.py). They change a CPU run's arithmetic, and bf16 autocast
is slower than fp32 on CPUs without AMX or AVX-512 BF16; ask for them with --levers bf16,channels_last.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

from stylize.errors import StylizeError

LEVERS = {
    "bf16": "bf16 autocast; the VGG loss network's weights stored in bf16 (autocast would re-cast them "
            "on every call, since frozen weights are not in its cast cache)",
    "channels_last": "the VGG loss network in channels_last (NHWC) layout, what tensor-core convolutions read "
                     "natively. Not the transformer: torch's CUDA reflection pad always writes NCHW, so every "
                     "layer would pay two layout copies",
    "cudnn_benchmark": "cuDNN times its convolution algorithms once per shape and keeps the fastest "
                       "(not for inputs whose shape changes every step: fixed_algorithms)",
    "fused_adam": "Adam's update in one fused kernel over all parameters",
    "gpu_data": "the training photos' uint8 cache (data.PhotoCache) copied to the GPU and each batch's crops "
                "cut and mirrored there by one gather (data.CachedCrops); without it they are cut on the host "
                "and sent from pinned memory",
    "compile": "torch.compile of the transformer and the loss (opt-in: compiling costs tens of seconds, "
               "which short runs do not win back)",
}


def default_levers(device: torch.device) -> frozenset[str]:
    return frozenset(LEVERS) - {"compile"} if device.type == "cuda" else frozenset()


def check_levers(levers: Iterable[str]) -> frozenset[str]:
    levers = frozenset(levers)
    unknown = sorted(levers - set(LEVERS))
    if unknown:
        raise StylizeError(f"unknown speed lever(s) {', '.join(unknown)}; known: {', '.join(LEVERS)}")
    return levers


def parse_levers(text: str, device: torch.device) -> frozenset[str]:
    """'auto' (the device's default), 'none', 'all', or names joined by commas; '+name' or '-name'
    items change the device's default."""
    text = text.strip()
    if text in ("auto", ""):
        return default_levers(device)
    if text == "none":
        return frozenset()
    if text == "all":
        return frozenset(LEVERS)
    items = [t.strip() for t in text.split(",") if t.strip()]
    if all(t[0] in "+-" for t in items):
        levers = set(default_levers(device))
        for t in items:
            (levers.add if t[0] == "+" else levers.discard)(t[1:])
        return check_levers(levers)
    return check_levers(items)


def apply_global(levers: frozenset[str]) -> None:
    """Process-wide switches. cudnn.benchmark stays on after training: it only affects speed."""
    if "cudnn_benchmark" in levers:
        torch.backends.cudnn.benchmark = True


@contextmanager
def fixed_algorithms() -> Iterator[None]:
    """cuDNN's own choice of algorithms, without timing them, inside; the cudnn_benchmark setting after.
    For inputs whose shape changes every step, a painting's random view (training.PredictionRecipe):
    autotuning times every convolution again for each new shape, and on an H200 the arbitrary-style
    recipe ran at 0.86 s a step (three runs side by side), against 0.12 s for a single style's fixed
    crops: the likely cause, not yet measured again with this in place (docs/benchmarks.md)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (a step's draws) on `device` without the host waiting for the device: on
    CUDA through pinned memory, without blocking (a plain .to() from pageable memory waits for the
    stream to finish all its queued work first)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def host_values(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """A step's loss terms as numbers for its log line, in one copy to the host: the step's only wait
    for the device, made once the whole step (backward and optimizer) is queued, where float() on
    each term before the backward made the host wait, with the device idle, once a term. The numbers
    are float()'s exactly: float32 and narrower terms go through float32, float64 ones stay."""
    if not terms:
        return {}
    values = [v.detach().reshape(()) for v in terms.values()]
    wide = torch.float64 if any(v.dtype == torch.float64 for v in values) else torch.float32
    return dict(zip(terms, torch.stack([v.to(wide) for v in values]).tolist()))
