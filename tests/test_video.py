"""Video (stylize/video.py): frames, timing, sound and orientation kept; flicker damped where the
picture is still and nowhere else; bad input refused in one line; nothing left half-written."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from stylize import video
from stylize.inference import load_stylizer
from stylize.settings import ApplyConfig

from test_cli import assert_clean_failure, files_under, invoke

av = pytest.importorskip("av")
MS = Fraction(1, 1000)


def make_clip(path: Path, times_ms=None, size=(64, 48), audio=True, rotation=0, noise=0.0, still=False, seed=0) -> Path:
    """A small H.264 clip: a gradient sliding sideways (or standing, with `still`), frames at
    `times_ms` (default 10 fps, 12 frames), a mono 440 Hz tone as long as the picture."""
    times_ms = times_ms or [100 * i for i in range(12)]
    w, h = size
    rng = np.random.default_rng(seed)
    base = np.zeros((h, 2 * w, 3), np.float32)
    base[..., 0] = np.linspace(0, 255, 2 * w)[None]
    base[..., 1] = np.linspace(0, 255, h)[:, None]
    base[..., 2] = 128 + 100 * np.sin(np.arange(2 * w) / 5)[None]
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=10, options={"crf": "10"})
        v.width, v.height, v.pix_fmt, v.time_base, v.codec_context.time_base = w, h, "yuv420p", MS, MS
        if rotation:
            v.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=16000, layout="mono") if audio else None
        # the sound first: a stream's encoder opens with its first frame, and the header needs both
        if a is not None:
            seconds = (times_ms[-1] + 100) / 1000
            tone = np.sin(2 * np.pi * 440 * np.arange(int(16000 * seconds)) / 16000).astype(np.float32)
            for k in range(0, len(tone), 1024):
                f = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="fltp", layout="mono")
                f.sample_rate, f.pts = 16000, k
                for p in a.encode(f):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
        for i, t in enumerate(times_ms):
            shift = 0 if still else 3 * i
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
            samples = sum(f.samples for f in c.decode(a))
            info["audio"] = (a.codec_context.name, samples / a.codec_context.sample_rate)
    return info


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_a_clip_keeps_its_frames_timing_and_sound(tmp_path, model, suffix):
    # uneven frame times, as a phone records them: each output frame keeps its own
    times = [0, 100, 250, 300, 420, 600, 640, 800, 900, 1100]
    src = make_clip(tmp_path / "clip.mp4", times)
    dst = tmp_path / "out" / f"clip{suffix}"
    result = invoke("apply", src, "--model", model, "--out", dst)
    assert result.exit_code == 0, result.output
    assert f"wrote {dst} (10 frames" in result.stdout
    before, after = probe(src), probe(dst)
    assert after["size"] == before["size"]
    assert after["times"] == pytest.approx(before["times"], abs=0.002)
    # the sound: copied into MP4 as it was; WebM takes no AAC, so it is re-encoded (Opus)
    assert after["audio"][0] == ("aac" if suffix == ".mp4" else "opus")
    assert after["audio"][1] == pytest.approx(before["audio"][1], abs=0.05)
    assert ("sound copied" if suffix == ".mp4" else "sound re-encoded") in result.stdout
    assert files_under(tmp_path / "out") == [f"clip{suffix}"]  # no temporary file left beside it


def test_the_frames_are_stylized_as_photos_are(tmp_path, model):
    """Frame 0 of the video is the model's stylization of frame 0 (up to the video codec's loss)."""
    src = make_clip(tmp_path / "clip.mp4", audio=False)
    dst = tmp_path / "clip_out.mp4"
    assert invoke("apply", src, "--model", model, "--out", dst, "--smooth", "0").exit_code == 0
    photo = probe(src)["first"]
    stylizer = load_stylizer(model)
    expected = np.asarray(stylizer.run(stylizer.wrap(photo.transpose(2, 0, 1).copy()), stylizer.condition(None), 1.0))
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


def _run(model, src, dst, smooth):
    return video.stylize_video(load_stylizer(model), src, dst, ApplyConfig(smooth=smooth))


def test_damping_cuts_flicker_where_the_picture_is_still(tmp_path, make_model):
    """A still scene with sensor noise: undamped, the network turns the noise into flicker."""
    model = make_model(width=8)
    src = make_clip(tmp_path / "still.mp4", still=True, noise=1.5, audio=False)
    plain, damped = _run(model, src, tmp_path / "a.mp4", 0.0), _run(model, src, tmp_path / "b.mp4", 0.8)
    assert plain.flicker_output > 2.0  # measured 4.5 to 5.5 (noise seeds 0, 1, 2)
    assert damped.flicker_output < 0.5 * plain.flicker_output  # measured 0.22 to 0.25 times


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
