"""Flicker and paint of stylized video: each frame on its own (--smooth 0), the still-pixel damping
stylize had before, and the steadiness it has now (stylize/apply/video.py), on the same frames in one run.

The clips are made here from one development photo, so the camera's motion is known exactly and
flicker can be measured along it rather than estimated:
- pan: a 640x360 window moving over the photo by 3 px right and 1 px up per frame (not a multiple of
  the network's 4 px grid), with sensor noise (sigma 2);
- fixed: the same window every frame, with fresh sensor noise;
- subpixel pan: a 480x270 window of the photo at half size (2x2 means, as a camera's sensor bins)
  moving by 1.5 px and 0.5 px per frame: no frame is a whole-pixel shift of the one before;
- object: the fixed window with a patch of another photo crossing it (4 px right, 1 px down per
  frame): motion that is not the camera's;
- 720p pan: a 1280x720 window of a second, larger photo moving as the pan: larger than the default
  model's work size (480 px), so, as in stylize_video, it is steadied at that size and gets its own
  finer detail back after (video.steady_frame).

Methods: alone (each frame stylized on its own, --smooth 0), before (the damping stylize had until
now, StillDamping below), now (stylize.apply.video.Steadiness); with --ablate also now without each of
its parts: the grid alignment, the carried photo, the carried output.

Per clip and method:
- flicker: mean |out_t - out_t-k| (0-255) with out_t-k moved by the known motion, over the pixels
  both frames show (k = 1; 2 on the subpixel pan, where two frames are a whole-pixel shift); on the
  object clip over the background the patch covers in neither frame, and separately over the patch;
- texture: mean |out - out blurred (Gaussian, radius 2)|: the brushwork; the steadiness must not get
  its calm from blur (on the object clip also over the patch alone: smeared strokes on what moves);
- ms/frame: the network, and the steadiness (motion and carrying; the network's time left out).
It writes a strip for the pan and the fixed camera (--strips; <clip>_strip.jpg): three consecutive
frames of a window that follows the camera, so a steady result shows the same strokes three times;
rows: the photo, each frame on its own, before, now.

    python bench/video.py --out-dir docs/video --json docs/video/flicker.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED  # noqa: E402
from stylize.apply.engines import graphs  # noqa: E402
from stylize.errors import StylizeError  # noqa: E402
from stylize.apply.video import Steadiness, network_grid, steady_frame, work_shape  # noqa: E402

PHOTOS = SHARED / "data" / "content" / "photos"
CHANGE_BEFORE = 6.0


# the steadiness now, and with each of its parts left out (--ablate)
VARIANTS = [("now", {}), ("no grid", {"align": False}), ("no photo", {"input_share": 0.0}),
            ("no output", {"output_share": 0.0})]


class StillDamping:
    """What stylize did before (kept here to be measured against): a per-pixel recursive average
    where the photo did not change in place, output = w * previous output + (1 - w) * this frame's
    stylization, w = smooth * exp(-(d / 6)^2), d the largest colour change of the photo at quarter
    size since the previous frame."""

    def __init__(self, smooth: float):
        self.smooth, self._prev = smooth, None

    def __call__(self, photo: np.ndarray, stylized: np.ndarray) -> np.ndarray:
        im = Image.fromarray(photo)
        small = np.asarray(im.resize((max(1, im.width // 4), max(1, im.height // 4)), Image.BOX), dtype=np.float32)
        out = stylized.astype(np.float32)
        if self._prev is not None and self._prev[0].shape == small.shape:
            d = np.abs(small - self._prev[0]).max(axis=2)
            w_small = (self.smooth * np.exp(-np.square(d / CHANGE_BEFORE))).astype(np.float32)
            h, w = stylized.shape[:2]
            weight = np.asarray(Image.fromarray(w_small, mode="F").resize((w, h), Image.BILINEAR))[:, :, None]
            out = weight * self._prev[1] + (1 - weight) * out
        self._prev = (small, out)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)


# -- clips with known motion ------------------------------------------------------------------------

class Clip:
    """Frames, and per frame the window's corner in the photo (y, x) (so frame t pixel (r, c) shows
    what frame t-k shows at (r + dy, c + dx), dy, dx the corners' difference), a lag k at which
    that difference is whole pixels, and for the object clip the patch's box per frame."""

    def __init__(self, name, frames, corners, lag=1, boxes=None):
        self.name, self.frames, self.corners, self.lag, self.boxes = name, frames, corners, lag, boxes


def _noisy(a: np.ndarray, rng, sigma: float = 2.0) -> np.ndarray:
    return np.clip(np.round(a + sigma * rng.standard_normal(a.shape)), 0, 255).astype(np.uint8)


def make_clips(photo: Path, other: Path, n: int, size=(640, 360), hd: Path | None = None) -> list[Clip]:
    rng = np.random.default_rng(0)
    big = np.asarray(Image.open(photo).convert("RGB"), np.float32)
    w, h = size
    need = (h + n + 4, w + 3 * n)
    if big.shape[0] < need[0] or big.shape[1] < need[1]:
        raise SystemExit(f"{photo}: {big.shape[1]}x{big.shape[0]}; the pan needs at least {need[1]}x{need[0]}")
    y0 = big.shape[0] - h - 4  # the lower part of the photo, moving up
    pan_corners = [(y0 - t, 3 * t) for t in range(n)]
    pan = Clip("pan", [_noisy(big[y:y + h, x:x + w], rng) for y, x in pan_corners], pan_corners)
    fy, fx = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    fixed = Clip("fixed", [_noisy(big[fy:fy + h, fx:fx + w], rng) for _ in range(n)], [(fy, fx)] * n)
    # a sensor's binning: the photo at half size, the window moving by half pixels
    sw, sh = min(480, (big.shape[1] - 3 * n) // 2 // 2 * 2), min(270, (big.shape[0] - n - 4) // 2 // 2 * 2)
    im = Image.fromarray(big.astype(np.uint8))
    y1 = big.shape[0] - 2 * sh - 4
    sub_corners = [((y1 - t) / 2, 1.5 * t) for t in range(n)]
    subframes = [_noisy(np.asarray(im.crop((3 * t, y1 - t, 3 * t + 2 * sw, y1 - t + 2 * sh)).reduce(2), np.float32), rng)
                 for t in range(n)]
    sub = Clip("subpixel pan", subframes, sub_corners, lag=2)
    ph, pw = h // 3, w // 4
    if 4 * n + pw > w or h // 4 + n + ph > h:
        raise SystemExit(f"--frames {n}: too many for the patch to stay in a {w}x{h} picture")
    patch = np.asarray(Image.open(other).convert("RGB").resize((pw, ph), Image.LANCZOS), np.float32)
    boxes, frames = [], []
    for t in range(n):
        top, left = h // 4 + t, 4 * t
        a = big[fy:fy + h, fx:fx + w].copy()
        a[top:top + ph, left:left + pw] = patch
        frames.append(_noisy(a, rng))
        boxes.append((top, left, ph, pw))
    obj = Clip("object", frames, [(fy, fx)] * n, boxes=boxes)
    clips = [pan, fixed, sub, obj]
    if hd is not None:  # larger than the model's work size: stylize shrinks it before the network
        big = np.asarray(Image.open(hd).convert("RGB"), np.float32)
        w, h = 1280, 720
        if big.shape[0] < h + n + 4 or big.shape[1] < w + 3 * n:
            raise SystemExit(f"{hd}: {big.shape[1]}x{big.shape[0]}; the 720p pan needs at least {w + 3 * n}x{h + n + 4}")
        y0 = big.shape[0] - h - 4
        corners = [(y0 - t, 3 * t) for t in range(n)]
        clips.append(Clip("720p pan", [_noisy(big[y:y + h, x:x + w], rng) for y, x in corners], corners))
    return clips


def _overlap(a: np.ndarray, b: np.ndarray, dy: int, dx: int):
    """a[r, c] and b[r + dy, c + dx] over the pixels both have."""
    h, w = a.shape[:2]
    ra, rb = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    ca, cb = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    return a[ra, ca].astype(np.float32), b[rb, cb].astype(np.float32)


def _patch_mask(clip: Clip, t: int, shape) -> np.ndarray:
    m = np.zeros(shape[:2], bool)
    top, left, ph, pw = clip.boxes[t]
    m[top:top + ph, left:left + pw] = True
    return m


def flicker(clip: Clip, outs: list[np.ndarray]) -> dict:
    k, vals, patch = clip.lag, [], []
    for t in range(k + 2, len(outs)):  # from the third frame: the first ones are still settling
        (y1, x1), (y0, x0) = clip.corners[t], clip.corners[t - k]
        dy, dx = round(y1 - y0), round(x1 - x0)
        a, b = _overlap(outs[t], outs[t - k], dy, dx)
        diff = np.abs(a - b).mean(axis=2)
        if clip.boxes is None:
            vals.append(float(diff.mean()))
        else:  # the background both frames show, and the patch along its own motion
            covered = _patch_mask(clip, t, diff.shape) | _patch_mask(clip, t - k, diff.shape)
            vals.append(float(diff[~covered].mean()))
            (ty, tx, ph, pw), (sy, sx, _, _) = clip.boxes[t], clip.boxes[t - k]
            cur = outs[t][ty + 1:ty + ph - 1, tx + 1:tx + pw - 1].astype(np.float32)
            old = outs[t - k][sy + 1:sy + ph - 1, sx + 1:sx + pw - 1].astype(np.float32)
            patch.append(float(np.abs(cur - old).mean()))
    out = {"flicker": float(np.mean(vals))}
    if patch:
        out["patch_flicker"] = float(np.mean(patch))
    return out


def texture(outs: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(o.astype(np.float32) - np.asarray(Image.fromarray(o).filter(ImageFilter.GaussianBlur(2)),
                                                                    np.float32)).mean() for o in outs[3:]]))


def patch_texture(clip: Clip, outs: list[np.ndarray]) -> float:
    """texture() over the moving patch alone (its inside, 2 px in from its edges)."""
    vals = []
    for t in range(3, len(outs)):
        top, left, ph, pw = clip.boxes[t]
        o = outs[t]
        blur = np.asarray(Image.fromarray(o).filter(ImageFilter.GaussianBlur(2)), np.float32)
        vals.append(float(np.abs(o.astype(np.float32) - blur)[top + 2:top + ph - 2, left + 2:left + pw - 2].mean()))
    return float(np.mean(vals))


def strip(clip: Clip, rows: list[list[np.ndarray]], path: Path, crop=(150, 200)) -> None:
    """Three consecutive frames, each cut at a window that follows the motion; a row per method."""
    t0 = len(clip.frames) // 2
    ch, cw = crop
    h, w = clip.frames[0].shape[:2]
    cy, cx = (h - ch) // 2, (w - cw) // 2
    if clip.boxes is not None:  # on the patch's trailing edge
        top, left, ph, pw = clip.boxes[t0]
        cy, cx = max(0, min(h - ch, top + ph // 2 - ch // 2)), max(0, min(w - cw, left - cw // 3))
    step = clip.lag
    picture = []
    for seq in rows:
        tiles = []
        for t in (t0, t0 + step, t0 + 2 * step):
            (y1, x1), (y0, x0) = clip.corners[t], clip.corners[t0]
            oy, ox = cy - round(y1 - y0), cx - round(x1 - x0)  # the same piece of the scene
            oy, ox = max(0, min(h - ch, oy)), max(0, min(w - cw, ox))
            tile = seq[t][oy:oy + ch, ox:ox + cw]
            tiles += [tile, np.full((ch, 4, 3), 255, np.uint8)]
        picture += [np.concatenate(tiles[:-1], 1), np.full((4, 3 * cw + 8, 3), 255, np.uint8)]
    Image.fromarray(np.concatenate(picture[:-1], 0)).save(path, quality=85)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=PHOTOS / "newyork.jpg", help="the scene the clips are cut from (at least 760x400)")
    ap.add_argument("--object", type=Path, default=PHOTOS / "sailboat.jpg", help="the patch crossing the object clip")
    ap.add_argument("--hd-photo", type=Path, default=PHOTOS / "avril.jpg", help="the 720p pan's (at least 1400x764)")
    ap.add_argument("--no-hd", action="store_true", help="leave the 720p pan out (its network takes the longest)")
    ap.add_argument("--model", default="starry_night")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--smooth", type=float, default=0.8, help="for both the damping before and the steadiness now")
    ap.add_argument("--ablate", action="store_true", help="also the steadiness without its grid alignment, "
                    "without the carried photo, without the carried output")
    ap.add_argument("--strips", nargs="*", default=["pan", "fixed"], help="the clips whose strip is written "
                    "(pan, fixed, 'subpixel pan', object, '720p pan'; the photos are development data: keep few)")
    ap.add_argument("--out-dir", type=Path, default=Path("bench_video"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stylizer = graphs.load(args.model, default=True)
    cond = stylizer.condition(None)
    network = [0.0, 0]

    def stylize(photo: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        y = np.asarray(stylizer.run(np.ascontiguousarray(photo.transpose(2, 0, 1)), cond, 1.0))
        network[0] += time.perf_counter() - t
        network[1] += 1
        return np.ascontiguousarray(y.transpose(1, 2, 0))

    results = {}
    print(f"{'clip':13s} {'method':10s} {'flicker':>8s} {'x alone':>8s} {'texture':>8s} {'x alone':>8s}  other")
    for clip in make_clips(args.photo, args.object, args.frames, hd=None if args.no_hd else args.hd_photo):
        network[:] = [0.0, 0]
        alone = [stylize(p) for p in clip.frames]
        ms_network = 1000 * network[0] / network[1]
        before_damping = StillDamping(args.smooth)
        before = [before_damping(p, y) for p, y in zip(clip.frames, alone)]
        methods = [("alone", alone, None), ("before", before, None)]
        h, w = clip.frames[0].shape[:2]
        grid = network_grid(stylizer)
        shape = work_shape(stylizer, h, w, args.smooth, grid)  # as stylize_video: at the model's work size
        for name, options in VARIANTS[: 4 if args.ablate else 1]:
            try:
                steady = Steadiness(args.smooth, grid, **options)
            except StylizeError as e:
                raise SystemExit(str(e))
            methods.append((name, [steady_frame(steady, p, stylize, shape) for p in clip.frames], steady))
        now = methods[2][1]
        base_f, base_t = flicker(clip, alone), texture(alone)
        rows = {}
        for name, outs, steady in methods:
            f, tex = flicker(clip, outs), texture(outs)
            row = {"flicker": round(f["flicker"], 2), "flicker_ratio": round(f["flicker"] / base_f["flicker"], 3),
                   "texture": round(tex, 2), "texture_ratio": round(tex / base_t, 3)}
            other = ""
            if "patch_flicker" in f:
                row["patch_flicker"] = round(f["patch_flicker"], 2)
                row["patch_flicker_ratio"] = round(f["patch_flicker"] / base_f["patch_flicker"], 3)
                pt = patch_texture(clip, outs)
                row["patch_texture"], row["patch_texture_ratio"] = round(pt, 2), round(pt / patch_texture(clip, alone), 3)
                other = (f"on the patch: flicker {f['patch_flicker']:.2f} ({row['patch_flicker_ratio']:.2f}x), "
                         f"texture {pt:.2f} ({row['patch_texture_ratio']:.2f}x)")
            if steady is not None:
                row["steady_ms_per_frame"] = round(1000 * steady.seconds / steady.frames, 1)
                row["frames_following_own_motion"] = steady.followed
                other += f"{'; ' if other else ''}{row['steady_ms_per_frame']:.0f} ms/frame steadying"
            rows[name] = row
            print(f"{clip.name:13s} {name:10s} {row['flicker']:8.2f} {row['flicker_ratio']:8.3f} {row['texture']:8.2f} "
                  f"{row['texture_ratio']:8.3f}  {other}", flush=True)
        rows["size"], rows["network_ms_per_frame"] = f"{w}x{h}", round(ms_network, 1)
        at = f", steadied at {shape[1]}x{shape[0]} (the model's work size)" if shape else ""
        print(f"{clip.name:13s} {w}x{h}, {len(clip.frames)} frames, network {ms_network:.0f} ms/frame{at}")
        results[clip.name] = rows
        if clip.name in args.strips:
            strip(clip, [clip.frames, alone, before, now], args.out_dir / f"{clip.name.replace(' ', '_')}_strip.jpg")
    if args.json:
        args.json.write_text(json.dumps({"smooth": args.smooth, "model": args.model, "photo": args.photo.name,
                                         "frames": args.frames, "clips": results}, indent=1))


if __name__ == "__main__":
    main()
