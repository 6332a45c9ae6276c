"""What a resumable checkpoint holds besides the loop counters: RNG states, and model / optimizer state dicts of a
plain, DDP or FSDP2 policy (full, unsharded tensors on the CPU, loadable with ``torch.load(weights_only=True)``)."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from cca.checkpoint import load_strict


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


def model_state(policy: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """The policy's full state dict on the CPU (FSDP: gathered; a collective call)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in policy.state_dict().items()}


def optim_state(policy: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(policy, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def set_model_and_optim(policy: nn.Module, optimizer: torch.optim.Optimizer, state: dict, fsdp: bool,
                        source: str) -> None:
    """Load the ``model`` and ``optimizer`` entries of a resumable checkpoint (strictly)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(policy, state["model"], options=opts)
        set_optimizer_state_dict(policy, optimizer, state["optimizer"], options=opts)
        return
    load_strict(policy, state["model"], source=source, ignore=())
    optimizer.load_state_dict(state["optimizer"])
