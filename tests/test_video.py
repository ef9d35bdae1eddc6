"""Video (stylize/apply/video.py): frames, timing, sound and orientation kept; flicker damped where the
picture is still and nowhere else; bad input refused in one line; nothing left half-written."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from stylize.apply import video
from stylize.apply.engines.pytorch import load_stylizer
from stylize.settings import ApplyConfig

from test_cli import assert_clean_failure, files_under, invoke

av = pytest.importorskip("av")
MS = Fraction(1, 1000)


def make_clip(path: Path, times_ms=None, size=(64, 48), audio=True, rotation=0, noise=0.0, still=False, seed=0,
              rate=16000, layout="mono", faststart=False, base=None, step=3) -> Path:
    """A small H.264 clip: a gradient (or `base`, an (h, >= w + step * frames, 3) picture) sliding
    sideways by `step` px a frame (or standing, with `still`), frames at `times_ms` (default 10 fps,
    12 frames), a 440 Hz tone as long as the picture (`rate`, `layout`: in stereo the right channel at
    half the left's level); `faststart`: the index at the front, as a web server sends a file."""
    times_ms = times_ms or [100 * i for i in range(12)]
    w, h = size
    rng = np.random.default_rng(seed)
    if base is None:
        base = np.zeros((h, 2 * w, 3), np.float32)
        base[..., 0] = np.linspace(0, 255, 2 * w)[None]
        base[..., 1] = np.linspace(0, 255, h)[:, None]
        base[..., 2] = 128 + 100 * np.sin(np.arange(2 * w) / 5)[None]
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        v = c.add_stream("libx264", rate=10, options={"crf": "10"})
        v.width, v.height, v.pix_fmt, v.time_base, v.codec_context.time_base = w, h, "yuv420p", MS, MS
        if rotation:
            v.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=rate, layout=layout) if audio else None
        # the sound first: a stream's encoder opens with its first frame, and the header needs both
        if a is not None:
            seconds = (times_ms[-1] + 100) / 1000
            tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate).astype(np.float32)
            tone = tone[None] if layout == "mono" else np.stack([tone, 0.5 * tone])
            for k in range(0, tone.shape[1], 1024):
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, k:k + 1024]), format="fltp", layout=layout)
                f.sample_rate, f.pts = rate, k
                for p in a.encode(f):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
        for i, t in enumerate(times_ms):
            shift = 0 if still else step * i
            img = base[:, shift:shift + w] + noise * rng.standard_normal((h, w, 3))
            f = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            f.pts, f.time_base = t, MS
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    return path


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        info = {"times": [float(f.pts * f.time_base) for f in frames], "size": (frames[0].width, frames[0].height),
                "rotation": frames[0].rotation, "audio": None, "first": frames[0].to_ndarray(format="rgb24")}
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            frames = list(c.decode(a))
            sound = [f.to_ndarray().reshape(f.layout.nb_channels, -1) if f.format.is_planar
                     else f.to_ndarray().reshape(-1, f.layout.nb_channels).T for f in frames]
            sound = np.concatenate(sound, 1).astype(np.float64)
            info["audio"] = (a.codec_context.name, sound.shape[1] / a.codec_context.sample_rate)
            # where the sound ends: Matroska keeps a copied AAC track's encoder delay before zero
            info["audio_end"] = float(frames[0].pts * frames[0].time_base) + info["audio"][1]
            info["channels"], info["sample_rate"] = sound.shape[0], a.codec_context.sample_rate
            # level per channel (RMS), away from the codecs' ramps at both ends
            cut = a.codec_context.sample_rate // 10
            info["level"] = np.sqrt(np.square(sound[:, cut:-cut]).mean(axis=1))
    return info


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv"])
def test_a_clip_keeps_its_frames_timing_and_sound(tmp_path, model, suffix):
    # uneven frame times, as a phone records them: each output frame keeps its own. Matroska once
    # shifted every frame by the AAC encoder's delay (1024 samples: 64 ms at 16 kHz)
    times = [0, 100, 250, 300, 420, 600, 640, 800, 900, 1100]
    src = make_clip(tmp_path / "clip.mp4", times)
    dst = tmp_path / "out" / f"clip{suffix}"
    result = invoke("apply", src, "--model", model, "--out", dst)
    assert result.exit_code == 0, result.output
    assert f"wrote {dst} (10 frames" in result.stdout
    before, after = probe(src), probe(dst)
    assert after["size"] == before["size"]
    assert after["times"] == pytest.approx(before["times"], abs=0.002)
    # the sound: copied into MP4 and MKV as it was; WebM takes no AAC, so it is re-encoded (Opus)
    assert after["audio"][0] == ("opus" if suffix == ".webm" else "aac")
    assert after["audio_end"] == pytest.approx(before["audio_end"], abs=0.05)
    assert ("sound re-encoded" if suffix == ".webm" else "sound copied") in result.stdout
    assert files_under(tmp_path / "out") == [f"clip{suffix}"]  # no temporary file left beside it


@pytest.mark.parametrize("rate, layout", [(16000, "mono"), (44100, "mono"), (44100, "stereo")])
def test_re_encoded_sound_keeps_its_channels_level_and_length(tmp_path, model, rate, layout):
    """Into WebM, AAC becomes Opus: mono stays mono at its level (it once came out as stereo, 3 dB
    down), and 44.1 kHz, which Opus does not take, is resampled to 48 kHz (it once failed with
    "ArgumentError: Invalid argument")."""
    src = make_clip(tmp_path / "clip.mp4", rate=rate, layout=layout)
    dst = tmp_path / "clip.webm"
    result = invoke("apply", src, "--model", model, "--out", dst)
    assert result.exit_code == 0, result.output
    before, after = probe(src), probe(dst)
    assert after["audio"][0] == "opus" and after["sample_rate"] in (rate, 48000)
    assert after["channels"] == before["channels"] == (1 if layout == "mono" else 2)
    assert after["level"] == pytest.approx(before["level"], rel=0.1)  # within 1 dB, each channel
    assert after["audio"][1] == pytest.approx(before["audio"][1], abs=0.05)


def test_a_file_cut_short_says_so(tmp_path, model):
    """A download cut in half still decodes, as far as it goes, without an error from FFmpeg: the
    output is as short, and the user is told (it once said only "wrote ... (6 frames)")."""
    whole = make_clip(tmp_path / "whole.mp4", [100 * i for i in range(30)], faststart=True, step=2)
    data = whole.read_bytes()
    src = tmp_path / "cut.mp4"
    src.write_bytes(data[: len(data) // 2])
    dst = tmp_path / "out.mp4"
    result = invoke("apply", src, "--model", model, "--out", dst)
    assert result.exit_code == 0, result.output
    frames = len(probe(dst)["times"])
    assert 0 < frames < 25
    assert "ends early" in result.stderr and f"{frames} of its 30 frames" in result.stderr, result.stderr
    assert f"wrote {dst} ({frames} frames" in result.stdout
    # the whole file: no such notice
    report = video.stylize_video(load_stylizer(model), whole, tmp_path / "whole_out.mp4", ApplyConfig(smooth=0.0),
                                 notice=pytest.fail)
    assert report.frames == 30 and not report.short


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_picture_named_as_a_video_is_refused(tmp_path, model, fmt):
    """FFmpeg reads a still picture as a one-frame video; a picture renamed .mp4 is not a video."""
    from PIL import Image

    src = tmp_path / "holiday.mp4"
    Image.fromarray(np.full((41, 63, 3), 120, np.uint8)).save(src, format=fmt)
    out = tmp_path / "out"
    line = assert_clean_failure(invoke("apply", src, "--model", model, "--out-dir", out), "holiday.mp4: a", "not a video")
    assert fmt in line
    assert files_under(out) == []


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and file locks")
def test_a_killed_run_leaves_no_part_file_after_the_next_run(tmp_path, model):
    """SIGKILL leaves the temporary output; the next run into the same output removes it, and only
    it: not one a live run holds (its lock), nor another output's."""
    import fcntl
    import signal
    import subprocess
    import sys

    src = make_clip(tmp_path / "clip.mp4")
    dst = tmp_path / "out.mp4"
    script = ("import os, signal, sys\n"
              "from stylize.apply import video\n"
              "from stylize.apply.engines.pytorch import load_stylizer\n"
              "from stylize.settings import ApplyConfig\n"
              "def stop(n):\n"
              "    if n == 3:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "video.stylize_video(load_stylizer(sys.argv[1]), sys.argv[2], sys.argv[3], ApplyConfig(), progress=stop)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    killed = subprocess.run([sys.executable, "-c", script, str(model), str(src), str(dst)], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    stale = [p.name for p in tmp_path.glob(".out.*.mp4.part")]
    assert len(stale) == 1 and not dst.exists()
    live = tmp_path / ".out.k2x9_q0z.mp4.part"  # another run writing the same output now
    fd = os.open(live, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    other = tmp_path / ".out.b.k2x9q0zz.mp4.part"  # what a run into out.b.mp4 writes
    other.write_bytes(b"")
    try:
        result = invoke("apply", src, "--model", model, "--out", dst)
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clip.mp4", "out.mp4", live.name, other.name])
    finally:
        os.close(fd)
    assert invoke("apply", src, "--model", model, "--out", dst).exit_code == 0  # nobody holds it now: it goes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clip.mp4", "out.mp4", other.name])


def test_the_frames_are_stylized_as_photos_are(tmp_path, model):
    """Frame 0 of the video is the model's stylization of frame 0 (up to the video codec's loss)."""
    src = make_clip(tmp_path / "clip.mp4", audio=False)
    dst = tmp_path / "clip_out.mp4"
    assert invoke("apply", src, "--model", model, "--out", dst, "--smooth", "0").exit_code == 0
    photo = probe(src)["first"]
    stylizer = load_stylizer(model)
    expected = np.asarray(stylizer.run(photo.transpose(2, 0, 1).copy(), stylizer.condition(None), 1.0))
    got = probe(dst)["first"].transpose(2, 0, 1).astype(np.float32)
    assert np.abs(got - expected).mean() < 6  # H.264 at crf 18 on a 64x48 frame: measured about 2
    assert np.abs(got - photo.transpose(2, 0, 1)).mean() > 3 * np.abs(got - expected).mean()


def test_no_sound_no_sound_track_and_default_output_name(tmp_path, model, monkeypatch):
    make_clip(tmp_path / "silent.avi.mp4", audio=False).rename(tmp_path / "silent.mkv")
    monkeypatch.chdir(tmp_path)
    result = invoke("apply", "silent.mkv", "--model", model, "--max-size", "33")
    assert result.exit_code == 0, result.output
    out = probe(tmp_path / "stylized" / "silent.mkv")
    assert out["audio"] is None and "sound" not in result.stdout
    assert out["size"] == (32, 24)  # within --max-size, and even (4:2:0 colour)


def test_a_phone_clip_keeps_its_orientation(tmp_path, model):
    src = make_clip(tmp_path / "phone.mp4", rotation=90, audio=False)
    dst = tmp_path / "phone_out.mp4"
    assert invoke("apply", src, "--model", model, "--out", dst).exit_code == 0
    assert probe(src)["rotation"] == 90 and probe(dst)["rotation"] == 90


def test_bad_videos_fail_in_one_line_and_leave_nothing(tmp_path, model):
    (tmp_path / "notes.mp4").write_text("not a video")
    out = tmp_path / "out"
    assert_clean_failure(invoke("apply", tmp_path / "notes.mp4", "--model", model, "--out-dir", out),
                         "notes.mp4: not a video")
    src = make_clip(tmp_path / "clip.mp4", audio=False)
    assert_clean_failure(invoke("apply", src, "--model", model, "--out", out / "clip.gif"), "write video as .mp4")
    assert_clean_failure(invoke("apply", src, tmp_path / "notes.mp4", "--model", model), "one video per command")
    assert_clean_failure(invoke("apply", src, "--model", model, "--out", src), "refusing to overwrite an input")
    assert files_under(out) == [] and probe(src)["times"]  # the input is untouched


def test_an_interrupted_video_leaves_no_file(tmp_path, model):
    src = make_clip(tmp_path / "clip.mp4")
    dst = tmp_path / "out.mp4"

    def stop(frames):
        if frames == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        video.stylize_video(load_stylizer(model), src, dst, ApplyConfig(smooth=0.0), progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def _run(model, src, dst, smooth, measure=False):
    return video.stylize_video(load_stylizer(model), src, dst, ApplyConfig(smooth=smooth), measure=measure)


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24").astype(np.float32) for f in c.decode(video=0)]


def test_steadiness_cuts_flicker_where_the_picture_is_still(tmp_path, make_model):
    """A still scene with sensor noise: each frame on its own, the network turns the noise into flicker."""
    model = make_model(width=8)
    src = make_clip(tmp_path / "still.mp4", still=True, noise=1.5, audio=False)
    plain, steady = _run(model, src, tmp_path / "a.mp4", 0.0, True), _run(model, src, tmp_path / "b.mp4", 0.8, True)
    assert plain.flicker_output > 2.0  # measured 4.5 to 5.5 (noise seeds 0, 1, 2)
    assert steady.flicker_output < 0.5 * plain.flicker_output


def test_the_flicker_meter_runs_only_when_asked(tmp_path, model, monkeypatch):
    src = make_clip(tmp_path / "clip.mp4", audio=False)

    def meter(*args):
        raise AssertionError("the flicker meter ran without being asked")

    monkeypatch.setattr(video.Flicker, "add", meter)
    report = _run(model, src, tmp_path / "a.mp4", 0.8)
    assert report.frames == 12 and report.flicker_output == 0
    monkeypatch.undo()
    assert _run(model, src, tmp_path / "b.mp4", 0.8, measure=True).flicker_output > 0


def test_a_pan_keeps_its_paint_and_loses_its_flicker(tmp_path, make_model):
    """The camera pans 3 px a frame, not a multiple of the network's 4 px grid, so each frame on its
    own gets other strokes. Steadied, the strokes move with the scene: flicker measured along the
    motion (frame t against frame t-1 moved by 3 px) falls well below that of the frames on their
    own (measured 0.44 times, 0.45 with photo seed 4), and the brushwork (the output less its blur)
    stays (0.91, 0.93). The damping stylize had before (a per-pixel average where the picture stood
    still) left 0.95 of the flicker here (the bench's larger pan: it halved the brushwork too)."""
    from PIL import Image, ImageFilter

    from conftest import make_photo

    model = make_model(width=8)
    base = np.asarray(make_photo(3, width=96 + 3 * 16, height=64), np.float32)
    src = make_clip(tmp_path / "pan.mp4", [100 * i for i in range(16)], size=(96, 64), audio=False, noise=2.0,
                    base=base, step=3)
    outs = {}
    for smooth in (0.0, 0.8):
        _run(model, src, tmp_path / f"out{smooth}.mp4", smooth)
        outs[smooth] = _frames(tmp_path / f"out{smooth}.mp4")

    def flicker(frames):
        return np.mean([np.abs(frames[t][:, :-3] - frames[t - 1][:, 3:]).mean() for t in range(3, len(frames))])

    def texture(frames):
        return np.mean([np.abs(f - np.asarray(Image.fromarray(f.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2)))).mean()
                        for f in frames[3:]])

    assert flicker(outs[0.8]) < 0.6 * flicker(outs[0.0])
    assert texture(outs[0.8]) > 0.85 * texture(outs[0.0])


def test_frames_larger_than_the_work_size_are_steadied_at_it():
    """A model with a work size shrinks larger frames before its network, so the grid a pan is held
    to is laid at that size: frames are steadied there (less the grid, so that a frame padded to the
    grid is not shrunk again), and get their own finer detail back after, as the stylizer does."""
    from types import SimpleNamespace

    model = SimpleNamespace(apply={"work_size": 32})
    assert video.work_shape(model, 48, 64, 0.8, 4) == (28, 37)
    assert video.work_shape(model, 48, 64, 0.0, 4) is None  # --smooth 0: each frame as a photo
    assert video.work_shape(model, 28, 40, 0.8, 4) is None  # small enough as it is
    assert video.work_shape(SimpleNamespace(apply={}), 480, 640, 0.8, 4) is None
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    sizes = []

    def network(x):  # the identity, at the size it is given
        sizes.append(x.shape)
        return x

    out = video.steady_frame(video.Steadiness(0.8), photo, network, (28, 37))
    assert sizes == [(28, 37, 3)] and np.array_equal(out, photo)  # restored: the photo's own detail back


def test_damping_does_not_smear_a_cut(tmp_path, model):
    """After a cut (every pixel changes) the frame is that frame's own stylization: no ghost of the
    scene before. Frames 0-5 one clip, 6-11 another scene."""
    a = probe(make_clip(tmp_path / "a.mp4", audio=False, still=True))["first"]
    b = 255 - a
    with av.open(str(tmp_path / "cut.mp4"), "w") as c:
        v = c.add_stream("libx264", rate=10, options={"crf": "0"})
        v.width, v.height, v.pix_fmt = 64, 48, "yuv444p"
        for i in range(12):
            for p in v.encode(av.VideoFrame.from_ndarray(a if i < 6 else b, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
    frames = {}
    for smooth in (0.0, 0.9):
        _run(model, tmp_path / "cut.mp4", tmp_path / f"out{smooth}.mp4", smooth)
        with av.open(str(tmp_path / f"out{smooth}.mp4")) as c:
            frames[smooth] = [f.to_ndarray(format="rgb24").astype(np.float32) for f in c.decode(video=0)]
    assert np.abs(frames[0.9][6] - frames[0.0][6]).mean() < 1.0  # the first frame after the cut
    assert np.abs(frames[0.0][6] - frames[0.0][5]).mean() > 20  # (the cut is a real change)
