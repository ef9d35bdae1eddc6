"""Video: frames streamed through a stylizer with the sound, timing and orientation kept, and the
flicker of frame-by-frame stylization held down without blurring the paint.

PyAV reads and writes the files: it is FFmpeg's own library bound for Python, and its wheels carry
FFmpeg with its codecs (H.264 through libx264, VP9, AAC, Opus), so pip alone installs everything,
where calling an `ffmpeg` program would need one on the PATH and a pipe of raw frames each way.

Frames are decoded, stylized and encoded one at a time, so memory does not grow with the clip's
length. Each output frame keeps its input frame's timestamp (a variable-frame-rate phone clip keeps
its timing; Matroska may store the sound's encoder delay before zero rather than shift the picture);
the sound is copied packet for packet where the output container takes its codec, else re-encoded
with its channel layout and, where the codec allows it, its sample rate (Opus: 48 kHz). The display
rotation of a phone clip is carried over rather than applied to the pixels. The output is written
under a temporary name beside it (locked while written) and renamed at the end, so an interrupted
run leaves nothing under the final name, and the next run into the same output removes what a
killed one left. A file that ends before its header says (cut short) is stylized as far as it goes,
with a notice that says so.

Flicker: a feed-forward network stylizes each frame afresh. Two things move its strokes when the
scene has not changed: sensor and compression noise (instance norm makes every pixel depend on the
whole frame), and, on a pan, the network's grid: its strided convolutions lay strokes on a grid of
4 px (8 for AdaIN) tied to the frame's corner, so content that moved by 1.5 px gets other strokes
than it had. Averaging frames hides both only by blurring the strokes. `Steadiness` instead:

1. measures the motion between frames on a half-size grey copy: the camera's translation (phase
   correlation, refined by Lucas-Kanade), then per pixel what differs from it (Lucas-Kanade, two
   scales); and where that motion explains the picture (the previous frame, moved along it, matches
   this one within CHANGE, per colour channel, on a blurred copy): elsewhere (something new, a cut,
   a wrong estimate) nothing of the past is used;
2. moves the frame by the fraction of a pixel of the camera's position and pads its corner by the
   whole pixels (modulo the grid), so that the network's grid stays fixed on the scene and a pan
   gets the strokes it had, moved along;
3. carries the previous (already steadied) photo along the motion and mixes it in where the motion
   explains the change: a motion-compensated temporal denoising of the input, so the network sees
   the same scene with less noise, and paints it the same way;
4. carries the previous output along the motion and blends a share of it into this frame's
   stylization where the motion explains the change.

The carried pictures live in the grid's coordinates, where a pan moves them by whole pixels: they
are moved by slicing, never resampled frame after frame, so nothing gets softer over time. What
moves otherwise than the camera is carried along its own motion (bilinearly) with half the shares:
the grid does not follow it, so its strokes still change from frame to frame, and averaging them
more would blur them. A cut (the previous frame explains almost nothing) starts afresh. Frames
larger than a model's work size (scale.py) are steadied at that size, where its network lays its
grid, and get their own finer detail back after (steady_frame). --smooth 0 turns all of it off: each
frame is stylized exactly as a photo. Chosen by measurement: bench/video.py (about 35 ms a frame at
640x360 on a CPU core, 90 where something moves on its own).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from stylize.apply.outputs import refuse_inputs
from stylize.apply.recipe import Request
from stylize.errors import StylizeError
from stylize.files import in_use, temporary
from stylize.settings import ApplyConfig

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"}
# output suffix -> (container format, video codec, audio codec when the input's cannot be copied,
# the audio codecs the container takes as they are; None: any)
_OUTPUTS = {
    ".mp4": ("mp4", "libx264", "aac", {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}),
    ".m4v": ("mp4", "libx264", "aac", {"aac", "mp3", "alac", "ac3", "eac3"}),
    ".mov": ("mov", "libx264", "aac", {"aac", "mp3", "alac", "ac3", "pcm_s16le", "pcm_s24le"}),
    ".mkv": ("matroska", "libx264", "aac", None),
    ".webm": ("webm", "libvpx-vp9", "libopus", {"opus", "vorbis"}),
}
# Matroska shifts every stream so that none starts before zero: a copied AAC track's encoder delay
# (1024 samples stamped before zero) would push every picture late by 23 ms at 44.1 kHz. Kept as is.
_MUXER_OPTIONS = {"matroska": {"avoid_negative_ts": "disabled"}, "webm": {"avoid_negative_ts": "disabled"}}
WRITABLE = tuple(_OUTPUTS)
_QUALITY = {"libx264": {"crf": "18", "preset": "medium"}, "libvpx-vp9": {"crf": "30", "b": "0", "row-mt": "1"}}
# the difference (0-255, a colour channel's, blurred) between this frame and the previous one moved
# along the motion at which the previous one's share has fallen to 1/e
CHANGE = 6.0
STILL = 3.0  # Flicker is measured where the input changed by less than this (0-255)
INPUT_SHARE = 1.0  # the carried photo's share is INPUT_SHARE * smooth where the motion explains the change
OUTPUT_SHARE = 0.5  # and the carried stylization's, OUTPUT_SHARE * smooth (bench/video.py chose both)
OWN_SHARE = 0.5  # both shares are this much smaller where something moves otherwise than the camera


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class VideoReport:
    frames: int = 0
    seconds: float = 0.0
    audio: str = "none"  # "copied", "re-encoded" or "none"
    expected_frames: int = 0  # what the file's header promises, where it says (0: it does not)
    short: bool = False  # the file ended before its header said (cut short): the output is as short
    flicker_input: float = 0.0  # mean change of still pixels between frames, 0-255 (Flicker), with measure=True
    flicker_output: float = 0.0
    steady_seconds: float = 0.0  # time spent measuring motion and carrying frames along it


class Flicker:
    """Mean |frame_t - frame_t-1| (0-255) of the output over the pixels whose input changed by less
    than STILL: what a viewer sees as flicker where the camera and the scene stand still. Measured on
    the input the same way for reference. Only when asked (stylize_video's `measure`): it costs
    milliseconds a frame. bench/video.py measures along the camera's motion as well."""

    def __init__(self):
        self.sum_in = self.sum_out = 0.0
        self.count = 0
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, photo: np.ndarray, output: np.ndarray) -> None:
        photo, output = photo.astype(np.float32), output.astype(np.float32)
        if self._prev is not None and self._prev[0].shape == photo.shape:
            d_in = np.abs(photo - self._prev[0]).mean(axis=2)
            still = d_in < STILL
            if still.any():
                self.sum_in += float(d_in[still].mean())
                self.sum_out += float(np.abs(output - self._prev[1]).mean(axis=2)[still].mean())
                self.count += 1
        self._prev = (photo, output)

    @property
    def input(self) -> float:
        return self.sum_in / max(1, self.count)

    @property
    def output(self) -> float:
        return self.sum_out / max(1, self.count)


# -- motion ---------------------------------------------------------------------------------------

def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1) x (2r+1) window of a 2-D float32 array, edges repeated."""
    n = 2 * r + 1
    h, w = a.shape
    c = np.cumsum(a[np.clip(np.arange(-r - 1, h + r), 0, h - 1)], 0)
    a = c[n:] - c[:-n]
    c = np.cumsum(a[:, np.clip(np.arange(-r - 1, w + r), 0, w - 1)], 1)
    return (c[:, n:] - c[:, :-n]) * np.float32(1 / (n * n))


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D float32 array resized to size (width, height), bilinear."""
    return np.asarray(Image.fromarray(a, mode="F").resize(size, Image.BILINEAR))


def _halve(a: np.ndarray) -> np.ndarray:
    """A 2-D array at half the size (2x2 means)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return 0.25 * (a[0:h:2, 0:w:2] + a[1:h:2, 0:w:2] + a[0:h:2, 1:w:2] + a[1:h:2, 1:w:2])


def _translate(a: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """out[y, x] = a[y + dy, x + dx]: a 2-D float32 array (bilinear, zero outside), or an (H, W, 3)
    uint8 picture moved by under a pixel (Lanczos, edges repeated: no softer than it was)."""
    if a.ndim == 2:
        return np.asarray(Image.fromarray(a, mode="F").transform(a.shape[::-1], Image.AFFINE, (1, 0, dx, 0, 1, dy), Image.BILINEAR))
    h, w, p = a.shape[0], a.shape[1], 2
    im = Image.fromarray(np.pad(a, ((p, p), (p, p), (0, 0)), mode="edge"))
    return np.asarray(im.resize((w, h), Image.LANCZOS, box=(p + dx, p + dy, p + dx + w, p + dy + h)))


def _sample(a: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a (2-D, or 3-D with channels last) at the float positions (y, x), bilinear, positions clamped
    to the picture; and where they lie inside it (float32 0/1)."""
    h, w = a.shape[:2]
    inside = ((y > -0.5) & (y < h - 0.5) & (x > -0.5) & (x < w - 0.5)).astype(np.float32)
    y, x = np.clip(y, 0, h - 1.001), np.clip(x, 0, w - 1.001)
    y0, x0 = y.astype(np.int32), x.astype(np.int32)
    fy, fx = y - y0, x - x0
    if a.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    i = y0 * w + x0
    flat = a.reshape(h * w, -1) if a.ndim == 3 else a.reshape(-1)
    top = flat[i] + fx * (flat[i + 1] - flat[i])
    bottom = flat[i + w] + fx * (flat[i + w + 1] - flat[i + w])
    return top + fy * (bottom - top), inside


_GRIDS: dict = {}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    if (h, w) not in _GRIDS:
        if len(_GRIDS) > 8:
            _GRIDS.clear()
        _GRIDS[h, w] = tuple(np.mgrid[0:h, 0:w].astype(np.float32))
    return _GRIDS[h, w]


def _warp(a: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a[y + v, x + u] per pixel, bilinear; and where that lies inside the picture."""
    yy, xx = _grid(*u.shape)
    return _sample(a, yy + v, xx + u)


def _phase_correlation(prev: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """The translation (dy, dx) with cur[y, x] ~ prev[y + dy, x + dx], to about a pixel."""
    h, w = prev.shape
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    spectrum = np.fft.rfft2((prev - prev.mean()) * window) * np.conj(np.fft.rfft2((cur - cur.mean()) * window))
    r = np.fft.irfft2(spectrum / (np.abs(spectrum) + 1e-6), s=(h, w))
    iy, ix = np.unravel_index(int(np.argmax(r)), r.shape)
    dy, dx = float(iy if iy <= h // 2 else iy - h), float(ix if ix <= w // 2 else ix - w)
    return dy, dx


def _camera(prev: np.ndarray, cur: np.ndarray, iterations: int = 4) -> tuple[float, float]:
    """The translation (dy, dx) of the whole picture, cur[y, x] ~ prev[y + dy, x + dx], on blurred
    grey images: phase correlation at half their size, then Gauss-Newton (Lucas-Kanade for one
    translation) over the pixels that follow it (a moving object's are left out)."""
    if min(prev.shape) < 16:  # too small a picture to measure on
        return 0.0, 0.0
    dy, dx = _phase_correlation(_halve(prev), _halve(cur))
    dy, dx = 2 * dy, 2 * dx
    gcy, gcx = np.gradient(cur)
    h, w = cur.shape
    for k in range(iterations):
        moved = _translate(prev, dy, dx)
        gy, gx = np.gradient(moved)
        gx, gy, it = 0.5 * (gx + gcx), 0.5 * (gy + gcy), moved - cur
        m = np.zeros((h, w), bool)
        m[2:-2, 2:-2] = True
        m &= (np.arange(w) + dx > 1)[None] & (np.arange(w) + dx < w - 2)[None]
        m &= (np.arange(h) + dy > 1)[:, None] & (np.arange(h) + dy < h - 2)[:, None]
        if m.sum() < 64:
            break
        if k:  # once near: what does not follow is something else moving
            m &= np.abs(it) <= 4 * np.median(np.abs(it[m])) + 2
        gx, gy, it = gx[m].astype(np.float64), gy[m].astype(np.float64), it[m].astype(np.float64)
        a = np.array([[gx @ gx, gx @ gy], [gx @ gy, gy @ gy]]) + 1e-3 * np.eye(2)
        step = np.linalg.solve(a, -np.array([gx @ it, gy @ it]))  # (dx, dy)
        step = np.clip(step, -2, 2)
        dx, dy = dx + float(step[0]), dy + float(step[1])
        if abs(step).max() < 0.01:
            break
    return dy, dx


def _local_motion(prev: np.ndarray, cur: np.ndarray, dy: float, dx: float, radius: int = 3,
                  prior: float = 30.0, iterations: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel motion (v, u), cur[y, x] ~ prev[y + v, x + u], refined from the camera's (dy, dx)
    by Lucas-Kanade at half and at full size of these (blurred grey) images. `prior` holds flat
    regions, where nothing can be measured, at the camera's motion."""
    levels = [(prev, cur), (_halve(prev), _halve(cur))]
    u = v = None
    for k, (p, c) in enumerate(reversed(levels)):
        h, w = p.shape
        s = 2 ** (len(levels) - 1 - k)
        if u is None:
            u, v = np.full((h, w), dx / s, np.float32), np.full((h, w), dy / s, np.float32)
        else:
            u, v = _resize(u, (w, h)) * (w / u.shape[1]), _resize(v, (w, h)) * (h / v.shape[0])
        gcy, gcx = np.gradient(c)
        for _ in range(iterations):
            moved, _ = _warp(p, u, v)
            gy, gx = np.gradient(moved)
            gx, gy, it = 0.5 * (gx + gcx), 0.5 * (gy + gcy), moved - c
            sxx, sxy, syy = _box(gx * gx, radius) + prior, _box(gx * gy, radius), _box(gy * gy, radius) + prior
            sxt, syt = _box(gx * it, radius), _box(gy * it, radius)
            det = sxx * syy - sxy * sxy
            u += np.clip((sxy * syt - syy * sxt) / det, -1, 1)
            v += np.clip((sxy * sxt - sxx * syt) / det, -1, 1)
    return v, u


RESIDUAL = 0.3  # motion besides the camera's under this (px) is not followed (noise in the estimate)
CUT = 0.1  # a frame whose picture the previous one, moved, explains on average less than this is a cut
UNEXPLAINED = 0.002  # the share of pixels the camera's motion leaves unexplained above which the rest is measured
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _prepare(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the motion is measured on: the frame at half size, blurred (3x3), colour and grey."""
    h, w = photo.shape[0] // 2 * 2, photo.shape[1] // 2 * 2  # as _halve
    small = np.asarray(Image.fromarray(photo[:h, :w]).reduce(2), dtype=np.float32)
    small = np.stack([_box(np.ascontiguousarray(small[..., i]), 1) for i in range(3)], -1)
    return small, small @ _LUMA


def own_motion(prev: tuple[np.ndarray, np.ndarray], cur: tuple[np.ndarray, np.ndarray], dy: float, dx: float,
               unexplained: np.ndarray, change: float = CHANGE) -> tuple[np.ndarray, np.ndarray] | None:
    """Where something moves otherwise than the camera: per pixel of the half-size frames (_prepare),
    the motion besides the camera's (dy, dx) (both in half-size pixels), as full-size pixels (ry, rx),
    zero elsewhere; None where nothing does. Followed only where the camera's motion leaves the
    picture unexplained (`unexplained`: a half-size mask) and the pixel's own motion explains it
    clearly better (else it is an estimate's noise)."""
    (prev_small, prev_grey), (small, grey) = prev, cur
    v, u = _local_motion(prev_grey, grey, dy, dx)
    h, w = grey.shape
    yy, xx = _grid(h, w)
    by_camera, _ = _sample(prev_small, yy + dy, xx + dx)
    by_own, inside = _warp(prev_small, u, v)
    d_camera = np.abs(by_camera - small).max(axis=2)
    d_own = np.abs(by_own - small).max(axis=2)
    own = unexplained & (d_own < np.minimum(0.5 * d_camera, change)) & (inside > 0) & (np.hypot(u - dx, v - dy) > RESIDUAL / 2)
    if not own.any():
        return None
    return np.where(own, 2 * (v - dy), 0).astype(np.float32), np.where(own, 2 * (u - dx), 0).astype(np.float32)


class Steadiness:
    """Steps 1 to 4 of the module docstring, frame by frame: __call__(photo, stylize) with an (H, W,
    3) uint8 photo and stylize(photo) -> its (H, W, 3) uint8 stylization (any size: the photo comes
    padded at its top and left) gives the steadied stylization. `grid`: the network's grid in pixels
    of the frame (network_grid())."""

    def __init__(self, smooth: float, grid: int = 4, input_share: float = INPUT_SHARE,
                 output_share: float = OUTPUT_SHARE, align: bool = True, follow: bool = True):
        if not 0 <= smooth < 1:
            raise StylizeError(f"--smooth {smooth}: give a number from 0 (off) up to, not including, 1")
        self.smooth, self.grid, self.align, self.follow = smooth, max(1, int(grid)), align, follow
        self.w_in, self.w_out = min(0.95, input_share * smooth), min(0.95, output_share * smooth)
        self.position = np.zeros(2)  # where the frame's corner is in the scene, from the first frame's
        self.seconds = 0.0  # spent here, the network's time left out
        self.frames = self.followed = self.cuts = 0  # frames; those where something moved otherwise than the camera; cuts
        self._prev: dict | None = None

    def __call__(self, photo: np.ndarray, stylize: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        if self.smooth == 0:
            return stylize(photo)
        t0 = time.perf_counter()
        h, w = photo.shape[:2]
        small = _prepare(photo)
        prev = self._prev
        if prev is not None and prev["small"][1].shape == small[1].shape:
            dy, dx = _camera(prev["small"][1], small[1])
            self.position += (2 * dy, 2 * dx)
        else:
            prev = None
        whole, frac, moved, x = self._onto_grid(photo)
        if prev is not None:
            sy, sx = (int(v) for v in whole - prev["whole"])
            (old_x, old_y), inside = self._carry([prev["x"], prev["y"]], sy, sx, h, w)
            d = self._unexplained(old_x, x)
            seen = _box(_halve(inside), 1) > 0.999  # the strip that came into the picture is not unexplained: new
            if not seen.any() or np.exp(-np.square(d[seen] / CHANGE)).mean() < CUT:  # a cut: start afresh
                prev, self.position[:] = None, 0
                self.cuts += 1
                whole, frac, moved, x = self._onto_grid(photo)
        if prev is not None:
            own = None
            if self.follow and ((d > CHANGE) & seen).mean() > UNEXPLAINED:
                rest = own_motion(prev["small"], small, dy, dx, (d > CHANGE / 2) & seen)
                if rest is not None:  # carried along their own motion, bilinearly
                    self.followed += 1
                    ry, rx = _resize(rest[0], (w, h)), _resize(rest[1], (w, h))
                    own = (ry != 0) | (rx != 0)
                    yy, xx = _grid(h, w)
                    y, xs = yy[own] + sy + ry[own], xx[own] + sx + rx[own]
                    for carried, a in ((old_x, prev["x"]), (old_y, prev["y"])):
                        carried[own] = _sample(a, y, xs)[0]
                    inside[own] = _sample(prev["x"][..., 0], y, xs)[1]
                    d = self._unexplained(old_x, x)
            weight = _resize(np.exp(-np.square(d / CHANGE)), (w, h))
            weight = (weight * inside)[..., None]
            a = self.w_in * weight
            b = self.w_out * weight
            if own is not None:  # off the network's grid: its strokes change, and averaging them blurs
                a[own] *= OWN_SHARE
                b[own] *= OWN_SHARE
            x = a * old_x + (1 - a) * x
        xin = np.clip(np.round(x), 0, 255).astype(np.uint8)
        py, px = (int(whole[0]) % self.grid, int(whole[1]) % self.grid)
        padded = np.pad(xin, ((py, 0), (px, 0), (0, 0)), mode="reflect" if min(h, w) > max(py, px) else "edge")
        t1 = time.perf_counter()
        s = stylize(padded)[py:py + h, px:px + w]
        t2 = time.perf_counter()
        y = s.astype(np.float32)
        if prev is not None:
            y = b * old_y + (1 - b) * y
        self._prev = {"small": small, "x": x, "y": y, "whole": whole}
        out = np.clip(np.round(y), 0, 255).astype(np.uint8)
        if moved:  # back from the grid to the frame
            out = _translate(out, frac[0], frac[1])
        self.seconds += time.perf_counter() - t2 + t1 - t0
        self.frames += 1
        return out

    def _onto_grid(self, photo: np.ndarray):
        """The frame moved by the fraction of a pixel of its position (float32), the whole pixels of
        that position, the fraction, and whether it moved."""
        whole = np.round(self.position) if self.align else np.zeros(2)
        frac = self.position - whole if self.align else np.zeros(2)
        moved = bool(abs(frac).max() > 0.02)
        return whole, frac, moved, (_translate(photo, -frac[0], -frac[1]) if moved else photo).astype(np.float32)

    @staticmethod
    def _unexplained(carried: np.ndarray, x: np.ndarray) -> np.ndarray:
        """How far the carried photo is from this one, both on the grid: the largest colour channel's
        difference, blurred (3x3 at half size), at half size."""
        diff = carried - x
        return np.stack([np.abs(_box(_halve(diff[..., i]), 1)) for i in range(3)], -1).max(axis=2)

    @staticmethod
    def _carry(arrays: list[np.ndarray], dy: int, dx: int, h: int, w: int):
        """The previous frame's arrays (in its grid's coordinates) moved by whole pixels (dy, dx)
        into this frame's: b[y, x] = a[y + dy, x + dx]; and where that comes from inside the picture."""
        out = []
        ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
        xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
        for a in arrays:
            b = np.zeros_like(a)
            b[yd, xd] = a[ys, xs]
            out.append(b)
        inside = np.zeros((h, w), np.float32)
        inside[yd, xd] = 1
        return out, inside


def network_grid(stylizer) -> int:
    """The period in pixels of the grid the network lays its strokes on: its downsampling, 4 for the
    transformer networks, 8 for AdaIN (at the size it works at: steady_frame)."""
    return stylizer.multiple


def work_shape(stylizer, height: int, width: int, smooth: float, grid: int) -> tuple[int, int] | None:
    """The (height, width) frames are steadied at, or None (as they are): a model with a work size
    shrinks larger frames before its network (scale.py), so they are steadied at that size, less the
    grid, so that a frame padded to the grid is not shrunk a second time (which would move the grid).
    None with smooth 0: each frame exactly as a photo."""
    side = stylizer.apply.get("work_size")
    if not smooth or not side:
        return None
    side -= grid
    if min(height, width) <= side:
        return None
    s = side / min(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def steady_frame(steady: Steadiness, photo: np.ndarray, stylize: Callable[[np.ndarray], np.ndarray],
                 shape: tuple[int, int] | None) -> np.ndarray:
    """A frame through `steady` at `shape` (work_shape): a model with a work size shrinks larger
    frames before its network, so its grid is laid at that size and a pan is steadied there; the
    frame's own detail finer than that comes back after, as the stylizer does (scale.restore)."""
    if shape is None:
        return steady(photo, stylize)
    from stylize.apply import scale

    x = np.ascontiguousarray(photo.transpose(2, 0, 1))
    small = scale.resize(x, shape)
    y = steady(np.ascontiguousarray(small.transpose(1, 2, 0)), stylize)
    return np.ascontiguousarray(scale.restore(np.ascontiguousarray(y.transpose(2, 0, 1)), small, x).transpose(1, 2, 0))


# -- files ----------------------------------------------------------------------------------------

def _av():
    try:
        import av
    except ImportError:
        raise StylizeError("video needs PyAV: pip install 'stylize[video]' (or pip install av)")
    return av


_PICTURE_FORMATS = {"image2": "picture", "gif": "GIF picture", "apng": "PNG picture"}


def _open(src: Path):
    av = _av()

    if not src.exists():
        raise StylizeError(f"{src}: no such file")
    try:
        container = av.open(str(src))
    except (av.error.FFmpegError, OSError) as e:
        raise StylizeError(f"{src}: not a video FFmpeg can read (damaged, cut short, or not a video: {e.__class__.__name__})")
    name = container.format.name
    if name.endswith("_pipe") or name in _PICTURE_FORMATS:  # FFmpeg reads a still picture as a 1-frame video
        container.close()
        kind = f"{name[:-5].upper()} picture" if name.endswith("_pipe") else _PICTURE_FORMATS[name]
        raise StylizeError(f"{src}: a {kind}, not a video; give it its picture's extension to stylize it as a photo")
    if not container.streams.video:
        container.close()
        raise StylizeError(f"{src}: has no video stream")
    return container


_PART = re.compile(r"[a-z0-9_]{8}")  # tempfile.mkstemp's random part


def _part_names(dst: Path) -> tuple[str, str]:
    return f".{dst.stem}.", f"{dst.suffix}.part"


def remove_stale_parts(dst: Path) -> None:
    """Remove the temporaries of `dst` that a killed run (SIGKILL, power cut) left beside it. Only
    this output's (.<stem>.<8 random characters><suffix>.part), and only those no live process holds:
    a run writing the same output holds a lock on its own (files.in_use)."""
    head, tail = _part_names(dst)
    if not dst.parent.is_dir():
        return
    for f in dst.parent.iterdir():
        name = f.name
        if name.startswith(head) and name.endswith(tail) and _PART.fullmatch(name[len(head):-len(tail)]):
            if f.is_file() and not in_use(f):
                f.unlink(missing_ok=True)


def check(src: Path, dst: Path) -> None:
    """What can be refused before any model is loaded: the output's format, the output being the
    input, an input that is not a video. Then the temporaries a killed run into `dst` left go."""
    if dst.suffix.lower() not in _OUTPUTS:
        raise StylizeError(f"{dst}: write video as {', '.join(WRITABLE)}")
    refuse_inputs([dst], [src])
    _open(src).close()
    remove_stale_parts(dst)


def frame_count(src: str | Path) -> int:
    """The clip's frame count from its header, or an estimate from its duration (0: unknown)."""
    with _open(Path(src)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return stream.frames
        rate = stream.average_rate or stream.guessed_rate
        if container.duration and rate:
            return round(container.duration / 1_000_000 * rate)
        return 0


def _size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """Output size: within max_size, and even on both sides (4:2:0 video halves the colour planes)."""
    if max_size and max(width, height) > max_size:
        scale = max_size / max(width, height)
        width, height = max(2, round(width * scale)), max(2, round(height * scale))
    return width - width % 2, height - height % 2


def _audio_rate(codec: str, rate: int) -> int:
    """The input's sample rate where the encoder takes it, else the nearest it takes above (Opus:
    48 kHz for 44.1 kHz), else its highest."""
    av = _av()
    rates = av.Codec(codec, "w").audio_rates
    if not rates or rate in rates:
        return rate
    above = [r for r in rates if r >= rate]
    return min(above) if above else max(rates)


def _audio_layout(codec: str, layout) -> str:
    """The input's channel layout (mono stays mono: mixed up to stereo it came out 3 dB down); past
    stereo only for AAC, whose encoder takes the usual surround layouts (Opus in FFmpeg only some):
    else stereo."""
    return layout.name if layout.nb_channels <= 2 or codec == "aac" else "stereo"


def _stream_seconds(stream) -> float | None:
    """A stream's duration as its header says (MP4's, or Matroska's DURATION tag), else None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return None
    return None


def stylize_video(stylizer, src: str | Path, dst: str | Path, config: ApplyConfig | None = None,
                  progress: Callable[[int], None] | None = None,
                  notice: Callable[[str], None] | None = None, measure: bool = False) -> VideoReport:
    """Stylize every frame of `src` into `dst` (.mp4, .m4v, .mov, .mkv, .webm) as `config` asks (styles,
    strength, max_size, colour, smooth: the steadiness) with a stylizer of the file pipeline's
    interface (recipe.Stylizer), each frame through the recipe. `progress(frames_done)` after each frame; `notice(message)` for what
    the user should know (a file cut short); `measure`: the report's flicker figures (Flicker).
    Raises StylizeError for what the user can mend; on any failure or interrupt nothing is left at
    `dst`."""
    src, dst = Path(src), Path(dst)
    c = config or ApplyConfig()
    check(src, dst)
    request = Request.of(c, stylizer)
    Steadiness(c.smooth)  # refuses a wrong --smooth before any file is touched
    fmt, vcodec, acodec, copyable = _OUTPUTS[dst.suffix.lower()]
    notice = notice or (lambda message: None)
    report, flicker, t0 = VideoReport(), Flicker() if measure else None, time.perf_counter()
    av, inp = _av(), _open(src)
    head, tail = _part_names(dst)
    fd, tmp = temporary(dst.parent, head, tail)
    out = None
    try:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        out = av.open(tmp, "w", format=fmt, options=_MUXER_OPTIONS.get(fmt, {}))
        width, height = _size(vin.codec_context.width, vin.codec_context.height, c.max_size)
        grid = network_grid(stylizer)
        steady, shape = Steadiness(c.smooth, grid), work_shape(stylizer, height, width, c.smooth, grid)
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        vout = out.add_stream(vcodec, rate=rate, options=_QUALITY.get(vcodec, {}))
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.time_base = vout.codec_context.time_base = vin.time_base  # so each frame keeps its own timestamp
        aout, copy_audio = None, False
        if ain is not None:
            copy_audio = copyable is None or ain.codec_context.name in copyable
            if copy_audio:
                aout = out.add_stream_from_template(ain)
            else:  # the same channels (mono stays mono, at its level), at a rate the encoder takes
                aout = out.add_stream(acodec, rate=_audio_rate(acodec, ain.codec_context.sample_rate or 48000),
                                      layout=_audio_layout(acodec, ain.codec_context.layout))
            report.audio = "copied" if copy_audio else "re-encoded"
        cond, last_pts, last_time, rotated = None, None, None, False

        def stylize_photo(photo):
            nonlocal cond
            x = np.ascontiguousarray(photo.transpose(2, 0, 1))
            if cond is None:  # once: every frame gets the same styles (and the same painting's colours)
                cond = request.condition(stylizer, x)
            return np.ascontiguousarray(request.run(stylizer, x, cond).transpose(1, 2, 0))

        def write_frame(frame):
            nonlocal last_pts, last_time, rotated
            if not rotated:  # a phone clip's orientation: set before the header is written
                rotated = True
                if getattr(frame, "rotation", 0):
                    vout.set_display_rotation(frame.rotation)
            photo = frame.to_ndarray(format="rgb24")
            if photo.shape[1] != width or photo.shape[0] != height:
                photo = np.asarray(Image.fromarray(photo).resize((width, height), Image.LANCZOS))
            y = steady_frame(steady, photo, stylize_photo, shape)
            if flicker is not None:
                flicker.add(photo, y)
            new = av.VideoFrame.from_ndarray(y, format="rgb24")
            pts = frame.pts if frame.pts is not None else report.frames
            if last_pts is not None and pts <= last_pts:  # repeated or reordered stamps: keep them rising
                pts = last_pts + 1
            new.pts, new.time_base, last_pts = pts, vin.time_base if frame.pts is not None else 1 / rate, pts
            last_time = float(pts * new.time_base)
            for packet in vout.encode(new):
                out.mux(packet)
            report.frames += 1
            if progress:
                progress(report.frames)

        def write_audio(packet):
            if copy_audio:
                packet.stream = aout
                out.mux(packet)
            else:
                for frame in packet.decode():
                    for encoded in aout.encode(frame):
                        out.mux(encoded)

        waiting = []  # sound that comes before the first picture waits for the header (the rotation)
        for packet in inp.demux(*([vin] + ([ain] if ain is not None else []))):
            if packet.stream is vin:
                for frame in packet.decode():  # the last, empty packet flushes the decoder
                    write_frame(frame)
                while waiting and rotated:
                    write_audio(waiting.pop(0))
            elif packet.dts is not None:
                if rotated:
                    write_audio(packet)
                else:
                    waiting.append(packet)
        if report.frames == 0:
            raise StylizeError(f"{src}: no frame could be decoded")
        for packet in vout.encode(None):
            out.mux(packet)
        if aout is not None and not copy_audio:
            for packet in aout.encode(None):
                out.mux(packet)
        out.close()
        out = None
        short = _shortfall(src, dst, vin, rate, report, last_time)
        inp.close()
        os.replace(tmp, dst)
        if short:
            notice(short)
    except av.error.FFmpegError as e:
        raise StylizeError(f"{src}: {e.__class__.__name__}: {getattr(e, 'strerror', None) or e}")
    finally:
        if out is not None:
            try:
                out.close()
            except Exception:
                pass
        inp.close()
        Path(tmp).unlink(missing_ok=True)
        os.close(fd)
    report.seconds = time.perf_counter() - t0
    report.steady_seconds = steady.seconds
    if flicker is not None:
        report.flicker_input, report.flicker_output = flicker.input, flicker.output
    return report


def _shortfall(src: Path, dst: Path, vin, rate, report: VideoReport, last_time: float | None) -> str | None:
    """A file that ends before its header says (a download or copy cut short) decodes without an
    error as far as it goes: what to tell the user then, with how much of it the output has."""
    report.expected_frames = vin.frames or 0
    start = float(vin.start_time * vin.time_base) if vin.start_time is not None and vin.time_base else 0.0
    header = _stream_seconds(vin)
    got = (last_time - start + 1 / float(rate)) if last_time is not None else 0.0
    if report.expected_frames:
        report.short = report.frames < report.expected_frames - 1
    elif header:
        report.short = header - got > max(0.5, 3 / float(rate))
    if not report.short:
        return None
    of = f"{report.frames} of its {report.expected_frames} frames" if report.expected_frames else f"{report.frames} frames"
    seconds = f", {got:.1f} s of {header:.1f} s" if header else ""
    return f"{src}: the file ends early (cut short or damaged): {of} could be read{seconds}; {dst} is as short"
