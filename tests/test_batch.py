"""Batch apply (inference.apply_files and `stylize apply` on folders): failures reported and counted,
interrupts that leave nothing half-written, resume with --skip-existing, a pipeline around the network.
"""
from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from stylize.apply.engines import pytorch as inference
from stylize.apply import batch as pipeline
from stylize.cli import app
from stylize.cli.common import kill_as_interrupt
from stylize.apply.batch import Interrupted, apply_files, output_paths
from stylize.apply.engines.pytorch import Stylizer
from stylize.settings import ApplyConfig

from conftest import make_photo

CORRUPT = {"bad/truncated.jpg", "bad/text.png", "empty.jpg", "noise.jpg"}


def make_folder(root: Path, good: int = 8) -> list[str]:
    """`good` photos in nested folders (two with the same name) and the CORRUPT files."""
    names = []
    for i in range(good):
        rel = Path(f"set{i % 3}") / f"p{i // 2}.{'png' if i % 2 else 'jpg'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        make_photo(i, 40 + 4 * i, 32 + 2 * i).save(root / rel)
        names.append(rel.as_posix())
    (root / "bad").mkdir(exist_ok=True)
    make_photo(99).save(root / "whole.jpg", quality=90)
    data = (root / "whole.jpg").read_bytes()
    (root / "whole.jpg").unlink()
    (root / "bad" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "bad" / "text.png").write_text("not a picture")
    (root / "empty.jpg").write_bytes(b"")
    (root / "noise.jpg").write_bytes(b"\xff\xd8\xff\xe0" + random.Random(0).randbytes(300))
    return sorted(names)


def outputs(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def complete(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


@pytest.fixture
def stylizer(make_model):
    return Stylizer(make_model(width=4), "cpu")


def test_batch_summary_and_exit_code(make_model, tmp_path):
    good = make_folder(tmp_path / "in")
    result = CliRunner().invoke(app, ["apply", str(tmp_path / "in"), "--model", str(make_model(width=4)),
                                      "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert outputs(tmp_path / "out") == good  # same names and sub-folders; p0 twice, in set0 and set1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(CORRUPT)
    for name in CORRUPT:  # each failure says which file and why
        assert sum(Path(name).name in line for line in errors) == 1, (name, errors)
    assert f"{len(good)} written, 0 skipped, {len(CORRUPT)} failed" in result.stdout
    assert "img/s" in result.stdout


def test_failures_are_reported_in_input_order_and_the_rest_go_on(stylizer, tmp_path):
    good = make_folder(tmp_path / "in")
    seen = []
    report = apply_files(stylizer, [str(tmp_path / "in")], ApplyConfig(out_dir=str(tmp_path / "out")),
                         progress=lambda src, dst: seen.append(src))
    assert len(report.written) == len(good) and len(report.failed) == len(CORRUPT)
    assert len(seen) == len(good) + len(CORRUPT)  # progress once per input
    failed = [src.relative_to(tmp_path / "in").as_posix() for src, _ in report.failed]
    assert failed == sorted(CORRUPT)  # input order (sorted walk of the folder)
    assert all(complete(p) for p in report.written)


def test_resume_skips_finished_files(stylizer, tmp_path):
    make_folder(tmp_path / "in")
    first = apply_files(stylizer, [str(tmp_path / "in")], ApplyConfig(out_dir=str(tmp_path / "out")))
    removed = first.written[1::3]
    for p in removed:
        p.unlink()
    kept = {p: p.stat().st_mtime_ns for p in first.written if p not in removed}
    again = apply_files(stylizer, [str(tmp_path / "in")], ApplyConfig(out_dir=str(tmp_path / "out"), skip_existing=True))
    assert sorted(again.written) == sorted(removed)  # only what was missing
    assert sorted(again.skipped) == sorted(kept)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # untouched
    assert len(again.failed) == len(CORRUPT)  # corrupt inputs have no output, so they are tried again


def test_interrupt_leaves_whole_files_and_resume_finishes(stylizer, tmp_path, monkeypatch):
    good = make_folder(tmp_path / "in", good=9)
    calls = {"n": 0}
    real = Stylizer.network

    def ctrl_c_at_the_fifth(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Stylizer, "network", ctrl_c_at_the_fifth)
    with pytest.raises(Interrupted) as caught:
        apply_files(stylizer, [str(tmp_path / "in")], ApplyConfig(out_dir=str(tmp_path / "out")))
    report = caught.value.report
    assert report.interrupted and len(report.written) == 4  # the four stylized before it were still written
    assert outputs(tmp_path / "out") == sorted(p.relative_to(tmp_path / "out").as_posix() for p in report.written)
    assert all(complete(p) for p in report.written)  # and no .part file either (outputs lists every file)
    monkeypatch.setattr(Stylizer, "network", real)
    rest = apply_files(stylizer, [str(tmp_path / "in")], ApplyConfig(out_dir=str(tmp_path / "out"), skip_existing=True))
    assert len(rest.skipped) == 4 and len(rest.written) == len(good) - 4
    assert len(outputs(tmp_path / "out")) == len(good)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_no_partial_file_after_a_failure_while_writing(stylizer, tmp_path, monkeypatch, failure):
    for i in range(3):
        make_photo(i).save(tmp_path / f"p{i}.png")
    save, calls = Image.Image.save, []

    def half_then_fail(self, fp, *a, **kw):
        calls.append(fp)
        if len(calls) == 2:  # p1's output (one writer thread: in order)
            fp.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # some bytes are out, then the failure
            raise failure
        return save(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    files = [str(tmp_path / f"p{i}.png") for i in range(3)]
    if isinstance(failure, KeyboardInterrupt):
        with pytest.raises(Interrupted):
            apply_files(stylizer, files, ApplyConfig(out_dir=str(tmp_path / "out")), workers=1)
    else:
        report = apply_files(stylizer, files, ApplyConfig(out_dir=str(tmp_path / "out")), workers=1)
        assert [src.name for src, _ in report.failed] == ["p1.png"]
        assert "No space left" in report.failed[0][1]
        assert sorted(p.name for p in report.written) == ["p0.png", "p2.png"]
    left = outputs(tmp_path / "out")
    assert "p1.png" not in left and not any(name.endswith(".part") for name in left)
    assert all(complete(tmp_path / "out" / name) for name in left)


def test_parts_left_by_a_killed_run_are_removed(stylizer, tmp_path):
    make_photo(0).save(tmp_path / "p.png")
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / ".p.k2j4h1x.png.part"  # what save_pil leaves when killed with SIGKILL
    stale.write_bytes(b"\x89PNG half")
    other = tmp_path / "out" / ".notes.txt.part"  # not ours: left alone
    other.write_text("x")
    report = apply_files(stylizer, [str(tmp_path / "p.png")], ApplyConfig(out_dir=str(tmp_path / "out")))
    assert len(report.written) == 1 and not stale.exists() and other.exists()


def test_reading_and_writing_overlap_with_the_network(stylizer, tmp_path, monkeypatch):
    """While the network runs on one photo the next is already being read, in another thread, and
    results are written by other threads."""
    for i in range(4):
        make_photo(i).save(tmp_path / f"p{i}.png")
    started = {}
    threads = {"read": set(), "write": set(), "network": set()}
    real_load, real_save = inference.read_array, pipeline.save_image

    def load(path, *a, **kw):
        threads["read"].add(threading.current_thread().name)
        started[Path(path).name] = threading.Event()
        started[Path(path).name].set()
        return real_load(path, *a, **kw)

    def save(*a, **kw):
        threads["write"].add(threading.current_thread().name)
        return real_save(*a, **kw)

    real_call = Stylizer.network
    overlapped = []

    def network(self, x, *a, **kw):
        threads["network"].add(threading.current_thread().name)
        n = len(overlapped)
        nxt = started.setdefault(f"p{n + 1}.png", threading.Event())
        overlapped.append(n == 3 or nxt.wait(timeout=10))  # the next read began while this one runs
        return real_call(self, x, *a, **kw)

    monkeypatch.setattr(inference, "read_array", load)
    monkeypatch.setattr(pipeline, "save_image", save)
    monkeypatch.setattr(Stylizer, "network", network)
    report = apply_files(stylizer, [str(tmp_path)], ApplyConfig(out_dir=str(tmp_path / "out")))
    assert len(report.written) == 4 and all(overlapped)
    assert threads["network"] == {threading.main_thread().name}
    assert all(t.startswith("stylize-read") for t in threads["read"])
    assert all(t.startswith("stylize-write") for t in threads["write"])


def test_kill_is_turned_into_a_clean_interrupt():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with kill_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(5)  # the handler raises here
    assert signal.getsignal(signal.SIGTERM) == before


def test_output_names_never_collide(tmp_path):
    items = [(tmp_path / "a" / "x.jpg", Path("x.jpg")), (tmp_path / "b" / "x.jpg", Path("x.jpg")),
             (tmp_path / "c" / "X.JPG", Path("X.JPG")), (tmp_path / "x_2.jpg", Path("x_2.jpg")),
             (tmp_path / "d" / "x.gif", Path("x.gif"))]
    paths = output_paths(items, None, tmp_path / "out")
    assert len({str(p).casefold() for p in paths}) == len(paths)  # distinct even where case does not count
    assert [p.name for p in paths] == ["x.jpg", "x_2.jpg", "X_3.jpg", "x_2_2.jpg", "x.png"]


def test_huge_photos_go_one_at_a_time(make_model, tmp_path, monkeypatch):
    """Photos over the memory budget are not queued: at most one is read ahead."""
    s = Stylizer(make_model(width=4), "cpu", memory_mb=1)  # every photo here is "huge"
    for i in range(5):
        make_photo(i, 96, 80).save(tmp_path / f"p{i}.png")
    in_memory, counts = set(), []
    real_load = inference.read_array
    lock = threading.Lock()

    def load(path, *a, **kw):
        with lock:
            in_memory.add(Path(path).name)
        return real_load(path, *a, **kw)

    real_call = Stylizer.network

    def network(self, x, *a, **kw):
        y = real_call(self, x, *a, **kw)
        with lock:
            counts.append(len(in_memory))  # this photo and those read ahead
            in_memory.discard(sorted(in_memory)[0])
        return y

    monkeypatch.setattr(inference, "read_array", load)
    monkeypatch.setattr(Stylizer, "network", network)
    report = apply_files(s, [str(tmp_path)], ApplyConfig(out_dir=str(tmp_path / "out")))
    assert len(report.written) == 5
    # the first read-ahead is made before any photo's size is known; after that, one ahead at most
    assert all(n <= 2 for n in counts[2:]), counts
