"""Data-parallel training with torch.distributed, for processes started by `torchrun`.

`torchrun` starts one process per device and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT (`python -m pipeline.train` starts torchrun itself when `train.nproc` > 1);
`session()` joins the process group (NCCL on CUDA, gloo on CPU). Without those variables
everything here is the identity and training runs in one process as before.

What the train stage does with it:

- **Same global batch.** `train.batch_size` is the batch of one optimiser step over all
  processes: `sharded_sampler` takes the single-process sampler (seeded shuffle or class-balanced
  draws, identical on every rank because the engine seeds its generator per epoch) and gives
  each rank its slice of every global batch, `batch_size / world` images. DDP averages the
  per-rank gradients, so an epoch takes the same steps as in one process: equal up to float
  rounding, the weighted loss included (`engine.WeightedCrossEntropy` divides by all ranks'
  weight sums), except where BatchNorm trains: it normalises each rank's slice on CPU, while on
  CUDA `wrap` turns trainable BatchNorm into SyncBatchNorm (statistics of the global batch).
- **Metrics over every rank.** `gather` concatenates each rank's logits and targets (validation
  is sharded too) so history, model selection and early stopping are identical on all ranks.
- **Frozen mode.** The feature store (`pipeline.training.feature_store`) computes each rank's
  share of the records; after a barrier every rank reads them all.
- **One writer.** Only rank 0 writes the run folder, the checkpoint (`MainOnlyCheckpointer`)
  and MLflow; every rank reads the checkpoint to resume, so the run folder must be on a
  filesystem all nodes share.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler

from pipeline.training.checkpoint import Checkpointer

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")  # set by torchrun for every process
TIMEOUT = timedelta(minutes=30)  # rank 0 may spend minutes writing checkpoints or features


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """The job as torchrun describes it in the environment; one process without it."""
    if not all(name in os.environ for name in ENV_VARS):
        return Ranks()
    return Ranks(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]),
                 int(os.environ["WORLD_SIZE"]))


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """Rank 0, the one process that writes outputs (also True without a process group)."""
    return not active() or dist.get_rank() == 0


@contextmanager
def session(device: str = "auto") -> Iterator[Ranks]:
    """Joins torchrun's process group for the block (NCCL for CUDA, gloo for CPU), then leaves.

    Args:
        device: the run's device setting ("auto", "cpu", "cuda"); picks the backend.
    """
    job = ranks()
    if job.world == 1 or dist.is_initialized():
        yield job
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(job.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    logging.getLogger().setLevel(logging.INFO if job.main else logging.WARNING)
    log.info("data-parallel: %d processes (%s)", job.world, dist.get_backend())
    try:
        yield job
    finally:
        dist.destroy_process_group()


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    """`torchrun --standalone --nproc-per-node nproc -m module args`: one node, a private
    rendezvous, with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "-m", module, *args]


def relaunch_under_torchrun(nproc: int, module: str, args: list[str]) -> None:
    """Replaces this process by `nproc` torchrun processes of `python -m module args`, unless
    nproc is 1 or torchrun started this process already (then returns and nothing happens).

    The stage's CLI calls it with its `nproc` param, so `dvc repro` and a plain
    `python -m pipeline.train` both train data-parallel; torchrun's exit status becomes the
    command's.
    """
    if nproc <= 1 or all(name in os.environ for name in ENV_VARS):
        return
    command = torchrun_command(nproc, module, args)
    log.info("starting %d processes: %s", nproc, " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def device_of_rank(device: torch.device) -> torch.device:
    """This rank's own GPU (cuda:LOCAL_RANK) when training on CUDA."""
    if device.type == "cuda" and active():
        return torch.device("cuda", ranks().local_rank)
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around a module with trainable parameters (else unchanged).

    The module goes to `device` and channels_last (`pipeline.training.device`) first, as DDP needs.
    On CUDA, trainable BatchNorm layers become SyncBatchNorm: batch statistics over the global
    batch, as in one process (frozen ones are FrozenBatchNorm and stay so). CPU has no
    SyncBatchNorm.
    """
    if not active() or not any(p.requires_grad for p in module.parameters()):
        return module
    module.to(device)
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module.to(memory_format=torch.channels_last)  # as engine.fit does, but before DDP's buckets
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (state dict keys without "module.")."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' tensors concatenated along dim 0 in rank order (lengths may differ)."""
    if not active():
        return tensor
    comm = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    local = tensor.detach().to(comm)
    size = torch.tensor([local.shape[0]], device=comm)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).to(
        tensor.device)


def local_batch(batch_size: int) -> int:
    """This rank's share of the global batch.

    Raises:
        ValueError: train.batch_size does not divide among the processes.
    """
    world = dist.get_world_size() if active() else 1
    if batch_size % world:
        raise ValueError(
            f"train.batch_size={batch_size} does not split evenly over {world} processes; "
            f"set it to a multiple of {world} (it is the global batch of one step)")
    return batch_size // world


class Indices(Protocol):
    """What a sampler is to ShardedSampler: sized, iterable over dataset indices."""

    def __iter__(self) -> Iterator[int]: ...

    def __len__(self) -> int: ...


class ShardedSampler(Sampler[int]):
    """This rank's slice of every global batch drawn by a single-process sampler.

    Each global batch of `batch_size` indices is cut into `world` contiguous slices of
    `batch_size / world`; rank r takes slice r. The last, short batch is padded with its own
    first indices up to a multiple of `world`, and to two images per rank where the local batch
    allows (BatchNorm cannot train on one), so every rank takes the same number of steps (at
    most `2 * world - 1` repeated images per epoch). With `batch_size=None` the whole epoch
    is one contiguous block per rank, unpadded (validation: `gather` restores the order).
    """

    def __init__(self, base: Indices, batch_size: int | None, rank: int, world: int):
        self.base, self.batch_size, self.rank, self.world = base, batch_size, rank, world

    def _slices(self, indices: list[int]) -> Iterator[list[int]]:
        if self.batch_size is None:
            per = -(-len(indices) // self.world)
            yield indices[self.rank * per:(self.rank + 1) * per]
            return
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start:start + self.batch_size]
            per = max(-(-len(batch) // self.world), min(2, self.batch_size // self.world))
            batch = (batch * per * self.world)[: per * self.world]  # repeats itself if short
            yield batch[self.rank * per:(self.rank + 1) * per]

    def __iter__(self) -> Iterator[int]:
        for part in self._slices(list(iter(self.base))):
            yield from part

    def __len__(self) -> int:
        return sum(len(p) for p in self._slices(list(range(len(self.base)))))


def sharded_sampler(
    base: Indices | None, dataset: Dataset, batch_size: int | None
) -> Sampler[int] | None:
    """`base` (sequential over `dataset` when None) sharded for this rank; unchanged (None
    stays None) in one process. `batch_size`: the global batch (training), None (validation)."""
    if not active():
        return base  # type: ignore[return-value]  # a Sampler, or None
    size = len(dataset)  # type: ignore[arg-type]  # map-style datasets have a length
    source = base if base is not None else range(size)
    sampler = ShardedSampler(source, batch_size, dist.get_rank(), dist.get_world_size())
    if len(sampler) == 0:
        raise ValueError(f"{size} images for {dist.get_world_size()} processes: every process "
                         "needs at least one; use fewer processes (train.nproc)")
    return sampler


class MainOnlyCheckpointer(Checkpointer):
    """A Checkpointer whose files only rank 0 writes; all ranks wait for them, all read them."""

    def save(self, epoch: int, module: nn.Module, optimizer: torch.optim.Optimizer,
             state: dict[str, Any], improved: bool) -> None:
        if is_main():
            super().save(epoch, unwrap(module), optimizer, state, improved)
        barrier()  # load_best / a resume on any rank reads what rank 0 wrote
