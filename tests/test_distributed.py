"""Several processes (torchrun, gloo on the CPU): a training run split over two processes follows the
one-process run with the same whole batch, its checkpoint resumes in one process, and a batch apply
gives each process its own files. The real entry point runs: `python -m torch.distributed.run ... -m
stylize`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from stylize.models import modelfile
from stylize.features import vgg
from stylize.train.data import CropDataset, batches, content_files
from stylize.distributed import Shard
from stylize.errors import StylizeError
from stylize.apply.batch import expand_inputs, output_paths
from stylize.models.networks import NetConfig, TransformerNet
from stylize.settings import TrainConfig
from stylize.train.training import TransformerRecipe, run_dir, train

from conftest import cached_random_features, make_photo, tiny_config

N = 6  # iterations of the two-process run; the one-process run goes on for 2 more
BAD = 5  # unreadable photos beside the 6 good ones: some steps find one process with nothing to train on
# Exact in principle: the same examples and initial weights, and DDP averages the two processes'
# gradients of their halves of the batch, weighted by the examples each could read. In floats the
# sums run in another order (~1e-7 relative at the first step), and Adam divides each gradient by its
# own running size, so the conv biases that instance norm cancels (their true gradient is 0, their
# float one is noise) take lr-sized steps of either sign; those reach the losses only through
# rounding. Measured after 6 iterations: 4e-7 relative here, 5e-5 in a run with --all-strengths; the
# model outputs 2e-4 apart. Wrong splits are caught: without the weighting by readable examples the
# losses are 2e-2 off at the third step; processes each given the whole batch count its unreadable
# photos twice (and with --all-strengths are 1e-2 off at the first step).
RTOL = 1e-3
# The runs are trained --full-strength-only: with unreadable photos the per-example draws fall to other
# examples in each process (README); the draws' split is tested in one process below.
# Gram, not the sliced loss that `random` defaults to: sorting makes its gradient jump where two
# projections swap ranks, so the rounding noise above grows to 1e-3 within 8 steps (measured).
TRAIN_ARGS = ["--width", "4", "--image-size", "32", "--style-size", "64", "--loss-net", "random", "--device", "cpu",
              "--checkpoint-every", "0", "--sample-every", "1000", "--workers", "0", "--seed", "0", "--full-strength-only",
              "--style-loss", "gram", "--lr-schedule", "constant", "--content-size", "0"]

pytestmark = pytest.mark.slow  # every test here takes seconds (processes, ONNX exports): CI runs them


def torchrun(home: Path, *args) -> subprocess.CompletedProcess:
    """The real entry point in two processes; a fresh HOME so that no user files are read."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("STYLIZE_MODELS", "STYLIZE_CONTENT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HOME=str(home), TORCH_HOME=str(home / "torch"), STYLIZE_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "stylize",
           *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def assert_same_losses(a: list[dict], b: list[dict], rel: float = RTOL):
    """Equal loss rows (a step with no readable photo has a total of nan alone, in both)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys() and ra["iteration"] == rb["iteration"]
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=rel, abs=0, nan_ok=True), (ra["iteration"], k)


def output_of(state: dict, x: torch.Tensor) -> torch.Tensor:
    net = TransformerNet(NetConfig("instance", 1, False, 4, TrainConfig.network))
    net.load_state_dict({k: v.float() for k, v in state.items()})
    with torch.no_grad():
        return net.eval()(x[None], None)[0]


@pytest.fixture(scope="module")
def content(tmp_path_factory, photos_dir) -> Path:
    folder = tmp_path_factory.mktemp("content")
    for f in photos_dir.iterdir():
        shutil.copy(f, folder / f.name)
    for i in range(BAD):
        (folder / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return folder


@pytest.fixture(scope="module")
def one(tmp_path_factory, content, style_path):
    """One process, batches of 2, N + 2 iterations; its weights after N are kept aside."""
    tmp = tmp_path_factory.mktemp("one")
    kept = tmp / "at_n.pt"

    def keep(p):
        if p.event == "checkpoint" and p.iteration == N:
            shutil.copy(p.path, kept)

    cfg = TrainConfig(style=[str(style_path)], content=str(content), out=str(tmp / "model.pt"), width=4,
                      all_strengths=False, iterations=N + 2, batch_size=2, image_size=32, style_size=64,
                      loss_net="random", style_loss="gram", device="cpu", checkpoint_every=N, sample_every=1000,
                      workers=0, seed=0, lr_schedule="constant", content_size=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vgg, "random_features", cached_random_features)
        train(cfg, progress=keep)
    return {"history": rows(modelfile.load(run_dir(cfg.out) / "checkpoint.pt")["history"]),
            "at_n": modelfile.load(kept)["state_dict"]}


@pytest.fixture(scope="module")
def two(tmp_path_factory, content, style_path):
    """`torchrun --nproc-per-node 2 -m stylize train --batch-size 1`: the same whole batch of 2."""
    tmp = tmp_path_factory.mktemp("two")
    out = tmp / "run" / "model.pt"
    result = torchrun(tmp, "train", "--style", style_path, "--content", content, "--out", out,
                      "--iterations", N, "--batch-size", 1, *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "result": result}


def test_the_photos_leave_a_process_with_nothing_to_read(content):
    """What the runs below go through: steps where one process has no readable photo (it takes part
    with a photo weighted 0, as DDP needs every process in every step), and where neither has one."""
    ds = CropDataset(content_files(content), 32, 0)
    bad = [sum(ds._file(n).name.startswith("bad") for n in (2 * i, 2 * i + 1)) for i in range(N)]
    assert {0, 1, 2} <= set(bad), bad


def test_two_processes_write_one_model_and_one_checkpoint(two):
    out, result = two["out"], two["result"]
    files = sorted(p.relative_to(out.parent).as_posix() for p in out.parent.rglob("*") if p.is_file())
    assert files == ["model.pt", "model_run/checkpoint.pt", "model_run/losses.csv", "model_run/losses.png",
                     f"model_run/samples/iter_{N:06d}.jpg"]
    assert result.stdout.count("wrote ") == 1  # the lead speaks for the run
    ckpt = modelfile.load(run_dir(out) / "checkpoint.pt")
    assert ckpt["iteration"] == N and ckpt["train"]["batch_size"] == 2  # the run's whole batch
    assert not [k for k in ckpt["state_dict"] if k.startswith("module.")]  # no DDP wrapper in the files
    assert modelfile.load(out)["state_dict"].keys() == ckpt["state_dict"].keys()


def test_two_processes_follow_one_process_with_the_same_whole_batch(one, two):
    ckpt = modelfile.load(run_dir(two["out"]) / "checkpoint.pt")
    assert_same_losses(rows(ckpt["history"]), one["history"][:N])
    x = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(output_of(ckpt["state_dict"], x), output_of(one["at_n"], x), atol=2e-3, rtol=0)
    ds = CropDataset(content_files(ckpt["train"]["content"]), 32, 0)  # both processes' unreadable photos count
    assert modelfile.load(two["out"])["metrics"]["skipped_photos"] == sum(
        ds._file(n).name.startswith("bad") for n in range(2 * N))


def test_a_two_process_checkpoint_resumes_in_one_process(one, two, tmp_path, monkeypatch):
    monkeypatch.setattr(vgg, "random_features", cached_random_features)
    rec = modelfile.load(run_dir(two["out"]) / "checkpoint.pt")
    assert Path(rec["train"]["out"]) == two["out"]
    rec["train"]["out"] = str(tmp_path / "model.pt")  # resume writes where the checkpoint says: not in `two`
    ckpt = modelfile.save({k: v for k, v in rec.items() if k != "path"}, tmp_path / "checkpoint.pt")
    path = train(TrainConfig(iterations=N + 2), resume=ckpt)
    assert path == tmp_path / "model.pt"
    resumed = modelfile.load(run_dir(path) / "checkpoint.pt")
    assert resumed["iteration"] == N + 2 and resumed["train"]["batch_size"] == 2
    assert_same_losses(rows(resumed["history"])[:N], rows(rec["history"]), rel=0)  # the two-process part, kept
    assert_same_losses(rows(resumed["history"]), one["history"])  # then on, as one process goes on


# ---------------------------------------------------------------- sharing a batch apply

def test_two_processes_share_a_folder_and_write_every_file_once(make_model, tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    names = ["a0.jpg", "a1.png", "a2.jpg", "a3.jpg", "a4.jpg", "a5.JPG", "sub/A0.jpg", "sub/a0.jpg", "sub/deeper/d.png"]
    for name in names:
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).touch()
    items = expand_inputs([str(photos)])  # the order the shares are cut from: process k gets k, k + 2, ...
    broken = photos / "a3.jpg"
    assert items.index((broken, Path("a3.jpg"))) % 2 == 1
    # process 1 gets the broken file and small photos, so it is done long before process 0, which its
    # exit with an error must not stop (torchrun ends the other processes when one fails)
    sizes = {}
    for i, (src, _) in enumerate(items):
        if src != broken:
            sizes[src] = (360 + 8 * i, 240) if i % 2 == 0 else (40 + 4 * i, 32)
            make_photo(i, *sizes[src]).save(src)
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    expected = dict(zip((src for src, _ in items), output_paths(items, None, out)))

    result = torchrun(tmp_path, "apply", photos, "--out-dir", out, "--model", make_model(width=4), "--device", "cpu",
                      "--runtime", "torch")  # not ONNX Runtime: an export per fresh HOME costs more than the test
    assert result.returncode != 0  # one process failed a file
    errors = re.findall(r"error: [^\r\n]*", result.stderr)  # anywhere: the lead's progress bar shares the terminal
    assert len(errors) == 1 and "a3.jpg" in errors[0]
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert written == sorted(dst for src, dst in expected.items() if src != broken)  # none missing, no .part
    for src, dst in expected.items():  # each output is its own photo's
        if src != broken:
            with Image.open(dst) as im:
                assert im.size == sizes[src], dst
    # each process stylized its every-other file, once: its own summary counts them
    counts = {int(m[1]): (int(m[2]), int(m[3])) for m in re.finditer(
        r"process (\d) of 2: (\d+) written, 0 skipped, (\d+) failed", result.stdout)}
    assert counts == {1: (5, 0), 2: (3, 1)}


# ---------------------------------------------------------------- in one process

def test_each_process_takes_its_share_of_the_style_and_strength_draws(tmp_path, photos_dir, style_path, style_path2,
                                                                      monkeypatch):
    """Two styles, strength: the halves' loss terms, averaged, are the whole batch's (same weights)."""
    monkeypatch.setattr(vgg, "random_features", cached_random_features)
    cfg = tiny_config(tmp_path, photos_dir, [style_path, style_path2], batch_size=4, width=4)
    files = content_files(photos_dir)

    def steps(shard: Shard):
        torch.manual_seed(0)
        recipe = TransformerRecipe(cfg, torch.device("cpu"), 0, shard=shard)
        draws = torch.Generator().manual_seed(1)
        with torch.no_grad():
            return [recipe.step(x, draws) for x, _ in batches(files, 32, 4, 0, 0, 3, rank=shard.rank,
                                                               world=shard.world)]

    whole, halves = steps(Shard()), [steps(Shard(r, 2)) for r in (0, 1)]
    for i, (terms, used) in enumerate(whole):
        assert used == 4 and [h[i][1] for h in halves] == [2, 2]
        for k, v in terms.items():
            torch.testing.assert_close((halves[0][i][0][k] + halves[1][i][0][k]) / 2, v)



@pytest.mark.parametrize("device", [None, "cpu"])  # the loader's crops, and DeviceCrops (CUDA's by default)
def test_shares_of_the_batches_make_up_the_whole_batches(photos_dir, device):
    files = content_files(photos_dir)
    for start in (0, 2):  # from the beginning, and resumed
        whole = [x for x, _ in batches(files, 32, 4, 0, start, 5, device=device)]
        halves = [list(batches(files, 32, 4, 0, start, 5, device=device, rank=r, world=2)) for r in (0, 1)]
        quarters = [list(batches(files, 32, 4, 0, start, 5, device=device, rank=r, world=4)) for r in range(4)]
        assert len(whole) == 5 - start and all(len(h) == 5 - start for h in halves + quarters)
        for i, x in enumerate(whole):
            assert torch.equal(torch.cat([h[i][0] for h in halves]), x)
            assert torch.equal(torch.cat([q[i][0] for q in quarters]), x)
    draws = torch.arange(6)
    assert [Shard(r, 3).part(draws).tolist() for r in range(3)] == [[0, 1], [2, 3], [4, 5]]


def test_the_process_is_read_from_torchruns_variables(monkeypatch):
    assert Shard.from_env() == Shard()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Shard.from_env() == Shard(3, 4, 1) and not Shard.from_env().lead
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(StylizeError, match="RANK 4 of WORLD_SIZE 4"):
        Shard.from_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(StylizeError, match="torchrun"):
        Shard.from_env()
