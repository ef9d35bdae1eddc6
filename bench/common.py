"""What the benchmark scripts (bench/) and the finished studies (studies/) share: where the checkout
and the shared tools are, the quality scorer, a timed subprocess, PSNR, a picture of outputs side by
side, synthetic photos and a random model.

Scripts run from a fresh clone without installing: `python bench/NAME.py` or `python studies/NAME.py`;
each puts the checkout on sys.path and imports this as `bench.common`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# ../shared beside the checkout holds the development data and tools (quality.py, peer.sh); never
# part of the product. $STYLIZE_SHARED points elsewhere.
SHARED = Path(os.environ.get("STYLIZE_SHARED", ROOT.parent / "shared"))
QUALITY = SHARED / "tools" / "quality.py"
PEER_SH = SHARED / "tools" / "peer.sh"


def quality_module(path: str | Path = QUALITY):
    """The network-free scorer `quality.py` as a module (its `score(content, style, output)`)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no quality tool there (give --quality FILE or set STYLIZE_SHARED)")
    spec = importlib.util.spec_from_file_location("quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_quality(path: str | Path = QUALITY):
    """quality.py's score function: (content, style, output) -> {"style_match", "structure"}."""
    return quality_module(path).score


def add_pin_option(ap) -> None:
    ap.add_argument("--pin", default=None, help="CPUs the timed processes may run on, e.g. 1 or 0,1 "
                    "(as taskset -c: what a container's cpuset or a pinned batch job gives a tool)")


@contextlib.contextmanager
def pinned(cpus: str | None):
    """Every process started inside runs on the CPUs listed ("1", "0,1"); None: no change."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def timed(cmd: list[str] | str, env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one whole process (a string runs through the shell);
    exits with the process's stderr if it fails."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, shell=isinstance(cmd, str), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"failed ({code}): {cmd if isinstance(cmd, str) else ' '.join(cmd)}\n"
                         f"{p.stderr.read().decode(errors='replace')[-2000:]}")
    p.stderr.close()
    return wall, usage.ru_maxrss / 1024


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (torch tensors or numpy arrays)."""
    mse = float(((a.double() - b.double()) ** 2).mean()) if hasattr(a, "double") else \
        float(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


def side_by_side(rows: list[list[Path]], path: Path, height: int = 256) -> None:
    """One JPEG: a row per list of image files, each scaled to `height`."""
    ims = [[Image.open(p).convert("RGB") for p in row] for row in rows]
    ims = [[im.resize((round(im.width * height / im.height), height), Image.LANCZOS) for im in row] for row in ims]
    width = max(sum(im.width for im in row) + 4 * (len(row) - 1) for row in ims)
    sheet = Image.new("RGB", (width, len(ims) * (height + 4) - 4), "white")
    for r, row in enumerate(ims):
        x = 0
        for im in row:
            sheet.paste(im, (x, r * (height + 4)))
            x += im.width + 4
    sheet.save(path, quality=90)


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Photo-like: a smooth colour field, a few flat shapes, sensor-like noise (JPEG-compresses like one)."""
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
    img = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        img[y0:y0 + int(rng.integers(8, height // 2)), x0:x0 + int(rng.integers(8, width // 2))] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def example_photo(size: tuple[int, int]) -> Image.Image:
    """An examples/ photo scaled to cover `size` (w, h), cropped, with mild noise for texture."""
    src = Image.open(ROOT / "examples" / "rocket.jpg").convert("RGB")
    s = max(size[0] / src.width, size[1] / src.height)
    im = src.resize((math.ceil(src.width * s), math.ceil(src.height * s)), Image.Resampling.BICUBIC)
    im = im.crop((0, 0, *size))
    noise = Image.effect_noise(size, 24).convert("RGB")  # grey, centred on 128
    return Image.blend(im, noise, 0.08)


def random_model(path: Path, norm: str = "instance", styles: tuple[str, ...] = ("random",), width: int = 32,
                 half: bool = True) -> Path:
    """A transformer model file with random weights (seed 0): a trained one's cost and memory, for
    speed and memory benchmarks that must not depend on a shipped model."""
    import torch

    from stylize.models import modelfile
    from stylize.models.networks import NetConfig, TransformerNet
    from stylize.settings import TrainConfig
    from stylize.train.training import model_record

    torch.manual_seed(0)
    net = TransformerNet(NetConfig(norm, len(styles), True, width) if norm == "conditional" else NetConfig(width=width))
    return modelfile.save(model_record(net, TrainConfig(norm=norm, width=width), list(styles), half=half), path)


if str(ROOT) not in sys.path:  # the checkout's stylize, installed or not
    sys.path.insert(0, str(ROOT))
