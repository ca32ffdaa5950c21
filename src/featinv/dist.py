"""Data-parallel runs under ``torchrun``: who this process is, and the few collectives the loop needs.

One process per GPU (NCCL) or per CPU worker (gloo). ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``
come from the environment torchrun sets; without them everything here is a no-op for a single
process, so the loop calls these helpers unconditionally.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .utils import FeatinvError

TIMEOUT_ENV = "FEATINV_DIST_TIMEOUT"  # seconds a collective may wait for a peer (default 600)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The process's place in a torchrun job (a single process without one)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        return World(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), size)
    except ValueError:
        raise FeatinvError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them).") from None


def current() -> World:
    """This process's world once :func:`init` ran (or the environment's single process)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())
    return World()


def init(device: torch.device) -> World:
    """Join the process group when torchrun started this process: NCCL for CUDA devices, gloo
    otherwise; a peer that stops answering ends the job after the timeout instead of hanging it."""
    world = world_from_env()
    if not world.distributed or dist.is_initialized():
        return current() if dist.is_initialized() else world
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reduce_over_ranks(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` summed (``op="sum"``) or maximised element-wise (``"max"``) over ranks; a copy under
    torchrun, ``t`` itself for one process."""
    if not current().distributed:
        return t
    out = t.detach().clone().to(_device())
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return out.to(t.device)


def max_over_ranks(values: list[float]) -> list[float]:
    """The element-wise maximum of ``values`` over ranks (several flags in one collective)."""
    return reduce_over_ranks(torch.tensor(values, dtype=torch.float64), "max").tolist()


def sum_with_count(total: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """A running sum and its count, each added over ranks."""
    return reduce_over_ranks(total), int(reduce_over_ranks(torch.tensor([float(n)]))[0])


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (picklable objects; small ones)."""
    if not current().distributed:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard(n: int, world: World) -> range:
    """The contiguous block of ``range(n)`` rank ``world.rank`` evaluates: every index exactly once
    over the ranks, the first blocks one longer when ``world.size`` does not divide ``n``."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (world.rank < extra))
