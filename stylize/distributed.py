"""Several processes sharing one run, one per GPU, as started by torchrun.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in every process it starts; without them everything
here is the one-process case and costs nothing. Training splits each batch across the processes
and DistributedDataParallel averages their gradients; a batch apply gives each process every N-th
file. Process 0 (the lead) writes the run's files and reports progress. Torch is imported only
inside the functions that need it, so a batch apply that never loads torch can read its share.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator

from stylize.errors import StylizeError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` processes, and the device it computes on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # index among the processes of this machine: its GPU
    device: torch.device | None = None  # where this process computes (None: the CPU)

    @classmethod
    def from_env(cls) -> "Shard":
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise StylizeError("WORLD_SIZE, RANK and LOCAL_RANK must be integers; let torchrun set them")
        if world < 1 or not 0 <= rank < world or local < 0:
            raise StylizeError(f"RANK {rank} of WORLD_SIZE {world} is not a process of the run; let torchrun set them")
        return cls(rank, world, local)

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def part(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's share of a whole batch: the rank-th of `world` equal slices."""
        n = len(batch) // self.world
        return batch[self.rank * n:(self.rank + 1) * n]

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module as every process's forward should call it (DDP when there are several)."""
        if self.world == 1:
            return module
        import torch
        from torch.nn.parallel import DistributedDataParallel

        if self._cuda:  # batch norm statistics over the whole batch (SyncBatchNorm needs GPUs; on CPUs they are per process)
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[self.device.index] if self._cuda else None)

    @property
    def _cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    @property
    def _comm(self) -> str | torch.device:
        return self.device if self._cuda else "cpu"  # NCCL takes GPU tensors, gloo CPU ones

    def average(self, terms: dict[str, torch.Tensor], used: int, skipped: int) -> tuple[int, int, dict[str, float]]:
        """Loss terms averaged over every example of the step, whichever process it was on: returns
        (examples, skipped photos, means), all summed over the processes."""
        if self.world == 1:
            return used, skipped, {k: float(v.detach()) for k, v in terms.items()}
        import torch
        import torch.distributed as dist

        keys = list(terms)
        parts = [terms[k].detach().float().to(self._comm) * used if used else torch.zeros((), device=self._comm)
                 for k in keys]
        v = torch.stack([torch.tensor(float(used), device=self._comm), torch.tensor(float(skipped), device=self._comm),
                         *parts])
        dist.all_reduce(v)
        n, bad, *sums = v.tolist()
        return round(n), round(bad), {k: s / n if n else float("nan") for k, s in zip(keys, sums)}

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on any: they all stop at the same iteration."""
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as dist

        v = torch.tensor([float(flag)], device=self._comm)
        dist.all_reduce(v, op=dist.ReduceOp.MAX)
        return bool(v.item())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(device_ids=[self.device.index] if self._cuda else None)

    def wait_for_all(self) -> None:
        """Return once every process has got here: the end of a batch apply. torchrun stops all the
        others as soon as one exits with an error, so one whose share held a bad file waits for them."""
        if self.world == 1:
            return
        from datetime import timedelta

        import torch.distributed as dist

        own = not dist.is_initialized()
        if own:  # joining is the wait, so it may take as long as the slowest share
            dist.init_process_group("gloo", timeout=timedelta(days=7))
        dist.barrier()
        if own:
            dist.destroy_process_group()

    def use_gpu(self) -> None:
        """Make "cuda" mean this process's own GPU (cuda:LOCAL_RANK), not everyone's cuda:0."""
        if self.world == 1:
            return
        import torch

        if torch.cuda.is_available():
            if self.local_rank >= torch.cuda.device_count():
                raise StylizeError(f"process {self.local_rank} of this machine has no GPU of its own "
                                   f"({torch.cuda.device_count()} visible); start at most that many per machine")
            torch.cuda.set_device(self.local_rank)


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Shard]:
    """Join the other processes for the duration of a training run: NCCL between GPUs, gloo on CPUs.
    Alone (no torchrun), this yields the one-process shard. A process group the caller already
    started is used as it is and left running."""
    import torch
    import torch.distributed as dist

    shard = Shard.from_env()
    own = not (dist.is_available() and dist.is_initialized())
    if shard.world > 1 and not dist.is_available():
        raise StylizeError("this PyTorch build has no torch.distributed; several processes need one that has")
    if not own:
        shard = replace(shard, rank=dist.get_rank(), world=dist.get_world_size())
    if shard.world == 1:
        yield replace(shard, device=device)
        return
    if device.type == "cuda":
        shard.use_gpu()
        device = torch.device("cuda", shard.local_rank)
    shard = replace(shard, device=device)
    if own:
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    device_id=device if device.type == "cuda" else None)
        except (ValueError, RuntimeError) as e:
            raise StylizeError(f"cannot join the other {shard.world - 1} processes ({str(e).splitlines()[0]}); "
                               "start them with torchrun --nproc-per-node N -m stylize ...")
    try:
        yield shard
    finally:
        if own:
            dist.destroy_process_group()
