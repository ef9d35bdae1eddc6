"""Video: frames streamed through a stylizer with the sound, timing and orientation kept, and the
flicker of frame-by-frame stylization damped.

PyAV reads and writes the files: it is FFmpeg's own library bound for Python, and its wheels carry
FFmpeg with its codecs (H.264 through libx264, VP9, AAC, Opus), so pip alone installs everything,
where calling an `ffmpeg` program would need one on the PATH and a pipe of raw frames each way.

Frames are decoded, stylized and encoded one at a time, so memory does not grow with the clip's
length. Each output frame keeps its input frame's timestamp (a variable-frame-rate phone clip keeps
its timing); the sound is copied packet for packet where the output container takes its codec, else
re-encoded; the display rotation of a phone clip is carried over rather than applied to the pixels.
The output is written under a temporary name beside it and renamed at the end, so an interrupted
run leaves nothing under the final name.

Flicker: a feed-forward network stylizes each frame afresh, and instance norm makes every pixel
depend on the whole frame, so noise and small changes anywhere shift the strokes everywhere. The
damping is a per-pixel recursive average that only acts where the photo did not change: output =
w * previous output + (1 - w) * this frame's stylization, w = smooth * exp(-(d / CHANGE)^2), where d
is the largest change of a colour channel of the (blurred) input since the previous frame. Moving regions and cuts
get w near 0 (no ghosting), still regions a steady picture. It is cheaper than the optical-flow
warping of Ruder et al. (2016) and needs no second network; what it does not do is carry strokes
along with moving objects. Chosen by measurement: bench/video.py.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .errors import StylizeError
from .files import _umask
from .settings import ApplyConfig

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
WRITABLE = tuple(_OUTPUTS)
_QUALITY = {"libx264": {"crf": "18", "preset": "medium"}, "libvpx-vp9": {"crf": "30", "b": "0", "row-mt": "1"}}
CHANGE = 6.0  # input change (0-255, the largest channel's) at which a pixel's damping has fallen to 1/e
STILL = 3.0  # flicker is measured where the input changed by less than this (0-255)


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class VideoReport:
    frames: int = 0
    seconds: float = 0.0
    audio: str = "none"  # "copied", "re-encoded" or "none"
    flicker_input: float = 0.0  # mean change of still pixels between frames, 0-255 (see Flicker)
    flicker_output: float = 0.0


class Flicker:
    """Mean |frame_t - frame_t-1| (0-255) of the output over the pixels whose input changed by less
    than STILL: what a viewer sees as flicker. Measured on the input the same way for reference."""

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


class Damping:
    """The recursive average of the module docstring, frame by frame on (H, W, 3) uint8 arrays."""

    def __init__(self, smooth: float):
        if not 0 <= smooth < 1:
            raise StylizeError(f"--smooth {smooth}: give a number from 0 (off) up to, not including, 1")
        self.smooth = smooth
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _small(photo: np.ndarray) -> np.ndarray:
        """The photo at a quarter of the size (a box blur: sensor noise is not change)."""
        im = Image.fromarray(photo)
        return np.asarray(im.resize((max(1, im.width // 4), max(1, im.height // 4)), Image.BOX), dtype=np.float32)

    def __call__(self, photo: np.ndarray, stylized: np.ndarray) -> np.ndarray:
        if self.smooth == 0:
            return stylized
        small, out = self._small(photo), stylized.astype(np.float32)
        if self._prev is not None and self._prev[0].shape == small.shape:
            d = np.abs(small - self._prev[0]).max(axis=2)  # any channel: a change of colour alone is change
            w_small = (self.smooth * np.exp(-np.square(d / CHANGE))).astype(np.float32)
            h, w = stylized.shape[:2]
            weight = np.asarray(Image.fromarray(w_small, mode="F").resize((w, h), Image.BILINEAR))[:, :, None]
            out = weight * self._prev[1] + (1 - weight) * out
        self._prev = (small, out)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _av():
    try:
        import av
    except ImportError:
        raise StylizeError("video needs PyAV: pip install 'stylize[video]' (or pip install av)")
    return av


def _open(src: Path):
    av = _av()

    if not src.exists():
        raise StylizeError(f"{src}: no such file")
    try:
        container = av.open(str(src))
    except (av.error.FFmpegError, OSError) as e:
        raise StylizeError(f"{src}: not a video FFmpeg can read (damaged, cut short, or not a video: {e.__class__.__name__})")
    if not container.streams.video:
        container.close()
        raise StylizeError(f"{src}: has no video stream")
    return container


def check(src: Path, dst: Path) -> None:
    """What can be refused before any model is loaded: the output's format, the output being the
    input, an input that is not a video."""
    from .pipeline import refuse_inputs

    if dst.suffix.lower() not in _OUTPUTS:
        raise StylizeError(f"{dst}: write video as {', '.join(WRITABLE)}")
    refuse_inputs([dst], [src])
    _open(src).close()


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


def stylize_video(stylizer, src: str | Path, dst: str | Path, config: ApplyConfig | None = None,
                  progress: Callable[[int], None] | None = None,
                  notice: Callable[[str], None] | None = None) -> VideoReport:
    """Stylize every frame of `src` into `dst` (.mp4, .m4v, .mov, .mkv, .webm) as `config` asks (styles,
    strength, max_size, colour, smooth: the flicker damping) with a stylizer of the
    file pipeline's interface (pipeline.py). `progress(frames_done)` after each frame. Raises
    StylizeError for what the user can mend; on any failure or interrupt nothing is left at `dst`."""
    import time

    from . import mixing

    src, dst = Path(src), Path(dst)
    c = config or ApplyConfig()
    styles, strength, max_size, match_color = c.styles, c.strength, c.max_size, c.match_color
    check(src, dst)
    mixing.check_strength(strength, stylizer.name, stylizer.has_strength)
    damping = Damping(c.smooth)
    fmt, vcodec, acodec, copyable = _OUTPUTS[dst.suffix.lower()]
    notice = notice or (lambda message: None)
    report, flicker, t0 = VideoReport(), Flicker(), time.perf_counter()
    av, inp = _av(), _open(src)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f"{dst.suffix}.part", dir=dst.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    out = None
    try:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        out = av.open(tmp, "w", format=fmt)
        width, height = _size(vin.codec_context.width, vin.codec_context.height, max_size)
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        vout = out.add_stream(vcodec, rate=rate, options=_QUALITY.get(vcodec, {}))
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        vout.time_base = vout.codec_context.time_base = vin.time_base  # so each frame keeps its own timestamp
        aout, copy_audio = None, False
        if ain is not None:
            copy_audio = copyable is None or ain.codec_context.name in copyable
            if copy_audio:
                aout = out.add_stream_from_template(ain)
            else:
                aout = out.add_stream(acodec, rate=ain.codec_context.sample_rate or 48000)
            report.audio = "copied" if copy_audio else "re-encoded"
        cond, last_pts, rotated = None, None, False

        def write_frame(frame):
            nonlocal cond, last_pts, rotated
            if not rotated:  # a phone clip's orientation: set before the header is written
                rotated = True
                if getattr(frame, "rotation", 0):
                    vout.set_display_rotation(frame.rotation)
            photo = frame.to_ndarray(format="rgb24")
            if photo.shape[1] != width or photo.shape[0] != height:
                photo = np.asarray(Image.fromarray(photo).resize((width, height), Image.LANCZOS))
            x = stylizer.wrap(np.ascontiguousarray(photo.transpose(2, 0, 1)))
            if cond is None:  # once: every frame gets the same styles (and the same painting's colours)
                cond = stylizer.condition(styles, None, x, match_color)
            y = stylizer.run(x, cond, strength)
            if c.preserve_color and not match_color:
                import torch

                from .color import keep_luminance

                y = keep_luminance(torch.as_tensor(np.asarray(y)), torch.as_tensor(np.asarray(x)))
            y = np.asarray(y)
            if y.dtype != np.uint8:  # float in [0, 1]: the AdaIN path, colour preservation
                y = np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)
            y = np.ascontiguousarray(y.transpose(1, 2, 0))
            y = damping(photo, y)
            flicker.add(photo, y)
            new = av.VideoFrame.from_ndarray(y, format="rgb24")
            pts = frame.pts if frame.pts is not None else report.frames
            if last_pts is not None and pts <= last_pts:  # repeated or reordered stamps: keep them rising
                pts = last_pts + 1
            new.pts, new.time_base, last_pts = pts, vin.time_base if frame.pts is not None else 1 / rate, pts
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
        inp.close()
        os.replace(tmp, dst)
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
    report.seconds = time.perf_counter() - t0
    report.flicker_input, report.flicker_output = flicker.input, flicker.output
    return report
