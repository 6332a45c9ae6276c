"""FSDP2 for the LlamaGen GPT: ``fully_shard`` every transformer block, then the root (torchtitan's layout).

Works on CUDA (nccl) and on CPU (gloo) with the installed torch; one process needs no sharding at all.
``data_parallel``: 'fsdp' (full shard, re-shard after forward), 'sdp' (keep parameters gathered between forward
and backward, i.e. shard gradients and optimizer state only), 'hsdp' (shard inside a node, replicate across nodes).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from cca import dist as cdist
from cca.errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_mesh(data_parallel: str, dist: cdist.Dist):
    from torch.distributed.device_mesh import init_device_mesh
    world = dist.world_size
    if data_parallel == "hsdp":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if world % per_node:
            raise UsageError(f"--data-parallel hsdp: world size {world} is not a multiple of {per_node} per node")
        return init_device_mesh(dist.device.type, (world // per_node, per_node),
                                mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(dist.device.type, (world,), mesh_dim_names=("shard",))


def shard_gpt(model: nn.Module, data_parallel: str, param_precision: str, grad_precision: str,
              dist: cdist.Dist) -> nn.Module:
    """Shard ``model`` in place across the process group (no-op in a single process); returns it."""
    if dist.world_size == 1:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if data_parallel not in ("fsdp", "sdp", "hsdp"):
        raise UsageError(f"--data-parallel: expected fsdp, sdp or hsdp, got {data_parallel!r}")
    mesh = make_mesh(data_parallel, dist)
    # blocks compute and return in param_dtype; the model's logits are cast to float32 by the model itself
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[param_precision], reduce_dtype=DTYPES[grad_precision])
    reshard = data_parallel != "sdp"
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    return model
