"""What a resumable checkpoint holds besides the loop counters: RNG states, and the model / optimizer state dicts
(resume.pt: full tensors on the CPU, loadable with ``torch.load(weights_only=True)``; FSDP: sharded, cca/dcp.py)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cca import dcp
from cca import dist as cdist
from cca.checkpoint import CheckpointError, load_file_raw, load_strict


def rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                   "gauss": float(gauss)}      # tensors and numbers only: loadable with weights_only=True
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The (unsharded) policy's state dict on the CPU."""
    return {k: v.detach().cpu() for k, v in policy.state_dict().items()}


def set_model_and_optim(policy: nn.Module, optimizer: torch.optim.Optimizer, state: dict, fsdp: bool,
                        source: str) -> None:
    """Load the ``model`` and ``optimizer`` entries of a resume.pt (strictly; FSDP: one written before the sharded
    checkpoints of cca/dcp.py)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(policy, state["model"], options=opts)
        set_optimizer_state_dict(policy, optimizer, state["optimizer"], options=opts)
        return
    load_strict(policy, state["model"], source=source, ignore=())
    optimizer.load_state_dict(state["optimizer"])


def all_ranks(obj) -> list:
    """Every rank's Python object, by rank (``[obj]`` in one process)."""
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def load(path: str | Path, policy: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool, dist: cdist.Dist
         ) -> tuple[dict, dict | None]:
    """Load a resume.pt or a sharded checkpoint folder (cca/dcp.py) into ``policy`` and ``optimizer``; returns (its
    loop state, this rank's random streams, or None when it was written at another world size)."""
    if Path(path).is_dir():
        return dcp.load(Path(path), policy, optimizer, dist)
    state = load_file_raw(path)
    if not isinstance(state, dict) or "optimizer" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not a resumable checkpoint of this trainer (expected resume.pt)")
    set_model_and_optim(policy, optimizer, state, fsdp, str(path))
    per_rank = state["rng_per_rank"]
    return state, per_rank[dist.rank] if len(per_rank) == dist.world_size else None
