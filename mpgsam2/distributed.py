"""The process group as evaluation and the data modules see it: this process's rank, the world size, a barrier and
a deterministic share of a work list. Plain ``torch.distributed``; a single process when none is initialised
(torchrun and Lightning DDP initialise one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch.distributed as dist

__all__ = ["barrier", "rank_and_world", "shard"]

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from ``torch.distributed`` when it is initialised (torchrun, Lightning DDP), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """``torch.distributed.barrier()`` when initialised; a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(items: Sequence[T], rank: int, world: int, costs: Sequence[float] | None = None) -> list[T]:
    """This process's share of ``items``, in their order.

    Without ``costs``: round robin (``items[rank], items[rank + world], ...``). With ``costs`` (one per item, e.g.
    frames x expressions of a video): balanced by cost, each item in turn from the most costly (ties by position)
    going to the process with the least cost so far (ties to the lowest rank), the same on every process.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid rank {rank} of world size {world}")
    if costs is None:
        return list(items[rank::world])
    if len(costs) != len(items):
        raise ValueError(f"{len(costs)} costs for {len(items)} items")
    load = [0.0] * world
    mine = []
    for i in sorted(range(len(items)), key=lambda i: (-costs[i], i)):
        owner = min(range(world), key=lambda r: (load[r], r))
        load[owner] += costs[i]
        if owner == rank:
            mine.append(i)
    return [items[i] for i in sorted(mine)]
