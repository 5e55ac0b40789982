"""Data-parallel training with torchrun, and the same code path in a plain single process.

`setup()` reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR/PORT for the rendezvous),
initialises the process group (nccl when CUDA is available, one GPU per process chosen by LOCAL_RANK; gloo on CPU) and
returns where this process runs. Without those variables it initialises nothing and reports rank 0 of 1, so
`python train.py` and `torchrun --nproc_per_node 8 train.py` run the same script. DDP averages gradients over ranks, so
each rank should see different data (`sampler` below, or seed the data RNG with seed + rank) and the effective batch is
world_size x the per-rank batch.
"""
from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["DistInfo", "setup", "cleanup", "is_main", "rank", "world_size", "wrap", "unwrap", "all_reduce_mean",
           "mean_over_ranks", "main_decides", "barrier", "sampler"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(backend: str | None = None) -> DistInfo:
    """Join the torchrun process group if launched by torchrun; pick this process's device either way."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DistInfo(0, 1, 0, device)
    rank_, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        # device_id binds the NCCL communicator to this GPU up front (avoids a guess, and a warning, at the first barrier).
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank_, world, local, device)


def cleanup() -> None:
    """Leave the process group; every rank calls it at the end, after dropping its DDP wrapper (`del model`).

    Why the order matters (a deadlock at exit, about once in ten two-process runs on a loaded 2-core machine, torch
    2.13): a gloo thread frees each finished collective, and freeing the Python-owned tensors of one (the checkpoint's
    RNG gather) needs the GIL. The DDP reducer holds the group; if it holds the last reference, freeing the wrapper
    joins those threads while holding the GIL. Freed here instead, the group is released through its Python handle,
    which lets go of the GIL first. The barrier lets no rank tear down while another still writes or communicates.
    """
    if dist.is_initialized():
        gc.collect()  # a DDP wrapper caught in a reference cycle would otherwise outlive the group
        if any(isinstance(o, nn.parallel.DistributedDataParallel) for o in gc.get_objects()):
            raise RuntimeError("distributed.cleanup() while a DistributedDataParallel wrapper is alive: `del` it first")
        dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True on rank 0 and in a single process: the one that logs, prints and saves."""
    return rank() == 0


def wrap(model: nn.Module, **ddp_kwargs) -> nn.Module:
    """DistributedDataParallel(model) when more than one process runs, else the model itself. Move it to its device first."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP and/or torch.compile wrappers (its state_dict keys carry no 'module.' prefix)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def main_decides(*flags: bool) -> list[bool]:
    """Rank 0's `flags`, on every rank (the flags themselves in a single process). For decisions that depend on the
    clock (stop, checkpoint now): each rank must take them at the same step, or one would wait alone in a collective."""
    if world_size() == 1:
        return list(flags)
    tensor = torch.tensor(flags, dtype=torch.uint8, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(tensor, 0)
    return [bool(v) for v in tensor.tolist()]


def all_reduce_mean(value: torch.Tensor | float) -> torch.Tensor:
    """Mean of `value` over ranks (a new tensor; the value itself in a single process). Use it for logged metrics."""
    tensor = torch.as_tensor(value).detach().clone()
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        tensor = tensor.float() if not tensor.is_floating_point() else tensor
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
    return tensor


def mean_over_ranks(values: dict[str, float], keys: Sequence[str]) -> dict[str, float]:
    """Each of `keys` averaged over the ranks whose `values` hold it; a key no rank holds is left out (`values`
    itself in a single process). For logged metrics that a rank may lack (the torsion loss of a batch of rigid
    ligands): every rank must call it at the same step, as any collective."""
    if world_size() == 1:
        return {k: float(values[k]) for k in keys if k in values}
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    sums = torch.tensor([[float(values.get(k, 0.0)) for k in keys], [float(k in values) for k in keys]],
                        dtype=torch.float64, device=device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return {k: float(total / n) for k, total, n in zip(keys, *sums.cpu().tolist()) if n > 0}


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def sampler(dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> DistributedSampler:
    """A sampler giving each rank a disjoint 1/world_size share (all of it in a single process). Call
    `.set_epoch(epoch)` at each epoch so the shuffle changes; pass it to DataLoader(sampler=...) without shuffle=True."""
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed,
                              drop_last=drop_last)
