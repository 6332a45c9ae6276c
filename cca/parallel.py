"""Parallelisation as a step of its own, applied to the policy before the trainer sees it (as in torchtitan):
DDP over all processes, FSDP2 by the family's own per-block sharding, or nothing."""
from __future__ import annotations

from typing import Callable

from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from cca.dist import Dist

PARALLEL = ("ddp", "fsdp", "none")


def parallelize(model: nn.Module, parallel: str, dist: Dist, *,
                shard: Callable[[nn.Module], nn.Module] | None = None) -> nn.Module:
    """The model the trainer runs: DDP-wrapped (``ddp`` with more than one process), sharded by ``shard``
    (``fsdp``; FSDP2 shards in place) or as it is (``none``, or ``ddp`` in one process)."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")
    if parallel == "fsdp":
        if shard is None:
            raise ValueError("parallel='fsdp' needs the family's shard function")
        return shard(model)
    if parallel == "ddp" and dist.world_size > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The policy itself: what owns the parameters, state dict and optimizer state."""
    return model.module if isinstance(model, DDP) else model


def check_parallelized(model: nn.Module, parallel: str, world_size: int) -> None:
    """A DDP run of several processes must get the DDP-wrapped model: a plain one would train without syncing."""
    if parallel == "ddp" and world_size > 1 and not isinstance(model, DDP):
        raise ValueError(f"parallel='ddp' with {world_size} processes: pass the model through "
                         f"cca.parallel.parallelize before the trainer")
