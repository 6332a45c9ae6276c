"""One process-group helper: torchrun environment -> process group (nccl with CUDA, gloo without); a single plain
process when not launched by torchrun."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from cca.errors import UsageError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_STATE: Dist | None = None


def _pick_device(local_rank: int, want: str | None) -> torch.device:
    if want and want != "auto":
        dev = torch.device(want)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {want}: CUDA is not available on this machine")
        return torch.device("cuda", local_rank) if dev.type == "cuda" and dev.index is None else dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init(device: str | None = None, timeout_minutes: int = 30) -> Dist:
    """Initialise once from RANK / WORLD_SIZE / LOCAL_RANK; idempotent. ``device``: 'auto', 'cpu', 'cuda'."""
    global _STATE
    if _STATE is not None:
        return _STATE
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(local_rank, device)
    backend = None
    if world > 1 or tdist.is_initialized():
        if not tdist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            tdist.init_process_group(backend=backend, rank=rank, world_size=world,
                                     timeout=datetime.timedelta(minutes=timeout_minutes))
        else:
            backend = tdist.get_backend()
        rank, world = tdist.get_rank(), tdist.get_world_size()
    _STATE = Dist(rank, world, local_rank, dev, backend)
    return _STATE


def _active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def barrier() -> None:
    if _active():
        if tdist.get_backend() == "nccl":
            tdist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            tdist.barrier()


def all_reduce_dict(values: dict[str, float | torch.Tensor], op: str = "mean") -> dict[str, float]:
    """Reduce a whole dict of scalars across ranks in one collective; returns Python floats on every rank."""
    if not values:
        return {}
    names = sorted(values)
    dev = init().device if _active() and tdist.get_backend() == "nccl" else torch.device("cpu")
    vec = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).reshape(()).to(dev) for k in names])
    if _active():
        if op not in ("mean", "sum", "max", "min"):
            raise ValueError(f"all_reduce_dict: op must be mean, sum, max or min, got {op!r}")
        red = {"mean": tdist.ReduceOp.SUM, "sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX,
               "min": tdist.ReduceOp.MIN}[op]
        tdist.all_reduce(vec, op=red)
        if op == "mean":
            vec /= tdist.get_world_size()
    return dict(zip(names, vec.cpu().tolist()))


def broadcast_object(obj):
    """rank 0's Python object on every rank (identity in one process)."""
    if not _active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def set_tf32(enabled: bool) -> None:
    """TensorFloat-32 for float32 CUDA matmuls and convolutions (the original scripts turn it on at start-up;
    torch's default leaves matmuls in full float32). No effect on the CPU."""
    mode = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):      # torch >= 2.9: the legacy flags are deprecated
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def cleanup() -> None:
    global _STATE
    if _active():
        tdist.barrier()             # no rank tears the group down while another still talks to it (gloo aborts)
        tdist.destroy_process_group()
    _STATE = None
