"""Dry-run planner: per-process memory, the largest batch that fits, steps and FLOPs of a CCA fine-tune or of a
sampling run, from the models' shapes alone (models built on the meta device: no checkpoint, no data, nothing
allocated). Pure functions over small descriptions; the families fill them in (VAR/plan.py, LlamaGen/plan.py).

The memory model follows what the code does (docs/sizing.md has the derivation and the CPU check):

* state: the policy and the frozen reference as fp32 master weights (LlamaGen's --ref-dtype bf16: the reference in
  bf16), fp32 gradients (plus DDP's gradient buckets, as large again, when several processes run), AdamW's two fp32
  moments, an fp32 EMA copy if asked; FSDP shards all of these over its shard group.
* transient, the largest of: the policy pass of one half (b rows) or of both (2b rows, --joint halves or DPO),
  which holds the saved activations, the fp32 logits and their gradient, and under autocast a half-precision copy
  of every linear weight; the reference's inference-mode pass over 2b rows (no saved activations, but its logits);
  turning a batch into tokens (VAR's VQVAE encoder); and the optimizer step (CPU AdamW temporaries).
* sampling: the weights, then the larger of the KV cache plus one step's work and the tokenizer's decoder.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from cca.errors import UsageError
from cca.loss import CHUNK_ELEMS

GiB = 2 ** 30
IMAGENET_TRAIN_IMAGES = 1_281_167
FP32, HALF = 4, 2
CONV_LIVE_MAPS = 5     # a no-grad ResnetBlock holds its input, conv1's output, norm2+silu's output and conv2's
                       # output at once; the convolution's workspace about one more (measured on the CPU)


@dataclass(frozen=True)
class Net:
    """One transformer as the planner sees it (counts for one copy)."""
    params: int
    linear_params: int        # nn.Linear weights: autocast casts (and caches) them once per policy pass
    block_params: int         # one block: what FSDP gathers at a time
    root_params: int          # parameters outside the blocks (FSDP's root group: embeddings, head)
    largest_param: int        # elements of the largest tensor (CPU AdamW temporaries)
    tokens: int               # positions of one row with logits (targets) in a teacher-forcing pass
    vocab: int
    flops_per_row: float      # forward FLOPs of one row (matmuls and attention)


@dataclass(frozen=True)
class Activations:
    saved_per_token: float    # bytes saved for backward per position (blocks and head; logits not included)
    saved_per_row: float      # per row, whatever the length (conditioning)
    inference_per_token: float   # live bytes per position at the peak of an inference-mode pass (its logits too)


@dataclass(frozen=True)
class Finetune:
    net: Net
    act: Activations
    precision: str            # fp32 | amp (autocast over fp32 weights) | half (parameters cast: FSDP mixed precision)
    world: int
    shard: int                # processes sharing one copy of weights / gradients / optimizer (1: DDP)
    mode: str                 # ddp | fsdp | sdp | hsdp (LlamaGen's --data-parallel names)
    micro: int                # rows per micro-step per process
    accum: int
    joint: bool               # matched and mismatched rows in one pass of 2·micro rows
    ema: bool = False
    device: str = "cuda"
    frozen_bytes: int = 0     # other frozen modules on the device (VAR's VQVAE)
    ref_bytes: int = FP32     # bytes per parameter of the frozen reference (LlamaGen --ref-dtype bf16: 2)
    batch_bytes_per_row: float = 0.0     # inputs and targets of one row, held through the step
    prepare_bytes_per_row: float = 0.0   # turning one data row into tokens (VAR: the VQVAE encoder)
    prepare_flops_per_row: float = 0.0


@dataclass(frozen=True)
class Sampling:
    weight_bytes: int         # everything loaded, in its sampling dtype
    cache_bytes_per_row: float    # KV cache of one row, all layers, whole sequence
    step_bytes_per_row: float     # the largest decoding step of one row besides the cache
    decode_bytes_per_image: float    # the tokenizer's decoder on one image
    flops_per_image: float        # tokens (both rows when guided) and decoding
    guided: bool
    batch: int
    world: int
    num_samples: int


# ------------------------------------------------------------------------------------------------ model shapes
def linear_weights(model: nn.Module, skip: Callable[[str], bool] = lambda name: False) -> int:
    return sum(m.weight.numel() for name, m in model.named_modules() if isinstance(m, nn.Linear) and not skip(name))


def describe_net(model: nn.Module, blocks: nn.ModuleList, tokens: int, vocab: int, flops_per_row: float) -> Net:
    """Net of a (meta-device) transformer whose repeated blocks are ``blocks``."""
    params = sum(p.numel() for p in model.parameters())
    block = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    return Net(params=params, linear_params=linear_weights(model),
               block_params=block, root_params=params - sum(p.numel() for p in blocks.parameters()),
               largest_param=max(p.numel() for p in model.parameters()), tokens=tokens, vocab=vocab,
               flops_per_row=flops_per_row)


def transformer_flops(per_token_weights: int, per_row_weights: int, tokens: int, width: int, layers: int,
                      attended_pairs: float) -> float:
    """Forward FLOPs of one row: 2 per weight and position, plus QK^T and AV over ``attended_pairs`` per layer."""
    return 2.0 * per_token_weights * tokens + 2.0 * per_row_weights + 4.0 * attended_pairs * width * layers


def conv_net_cost(fn: Callable[[], torch.Tensor]) -> tuple[float, int]:
    """(FLOPs, bytes of the largest feature map) of ``fn``, a no-grad conv net run on meta tensors."""
    from torch.nn.modules.module import register_module_forward_hook
    from torch.utils.flop_counter import FlopCounterMode
    largest = [0]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handle = register_module_forward_hook(hook)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
    finally:
        handle.remove()
    return float(counter.get_total_flops()), largest[0]


def inference_logits_bytes(vocab: int, precision: str) -> int:
    """Per position: the fp32 logits the heads return, and before them the half-precision head output."""
    return FP32 * vocab + (HALF * vocab if precision != "fp32" else 0)


def dropout_mask_bytes(device: str, element_bytes: int) -> int:
    """Bytes per element that dropout keeps for backward: CUDA's fused kernel a bool mask, the CPU path a mask
    of the tensor's dtype."""
    return 1 if device == "cuda" else element_bytes


# ------------------------------------------------------------------------------------------------ fine-tune
def _param_bytes(s: Finetune) -> int:
    return HALF if s.precision == "half" else FP32           # FSDP's unsharded parameters in the passes


def _weight_bytes(s: Finetune) -> int:
    """Policy + reference (+ frozen tokenizer); with sdp the reference, never resharded after its forward, stays
    unsharded too (in its own dtype when that is the smaller)."""
    kept_bytes = min(_param_bytes(s), s.ref_bytes)
    kept = kept_bytes * (s.net.params - s.net.root_params) if s.mode == "sdp" and s.world > 1 else 0
    return (FP32 + s.ref_bytes) * s.net.params // s.shard + s.frozen_bytes + kept


def _grad_bytes(s: Finetune) -> int:
    buckets = FP32 * s.net.params if s.mode == "ddp" and s.world > 1 else 0
    return FP32 * s.net.params // s.shard + buckets


def _optimizer_bytes(s: Finetune) -> int:
    ema = FP32 * s.net.params if s.ema and s.mode == "ddp" else 0
    return 2 * FP32 * s.net.params // s.shard + ema


def _gathered_bytes(s: Finetune, with_grads: bool) -> int:
    """FSDP: the root group and two blocks (current + prefetched) unsharded, in the parameter dtype, and in
    backward one block's unsharded fp32 gradient; with sdp every block stays unsharded between the passes."""
    if s.mode == "ddp" or s.world == 1:
        return 0
    pbytes = _param_bytes(s)
    n = s.net
    gathered = pbytes * (n.root_params + 2 * n.block_params) + (FP32 * n.block_params if with_grads else 0)
    return gathered + (pbytes * (n.params - n.root_params) if s.mode == "sdp" else 0)


def _logprob_chunks(rows: int, n: Net) -> int:
    """sequence_logprob's forward works on chunks of at most CHUNK_ELEMS logits: logsumexp's two fp32 temporaries."""
    return 2 * FP32 * min(rows * n.tokens * n.vocab, CHUNK_ELEMS)


def _policy_pass(s: Finetune, rows: int) -> float:
    """Saved activations and fp32 logits (+ logsumexp), then at the start of backward the logits' gradient (or
    before it, at the end of forward, the log-prob chunks); under autocast the half copies of the linear weights."""
    n, a = s.net, s.act
    saved = rows * n.tokens * (a.saved_per_token + FP32 * n.vocab + 4) + rows * a.saved_per_row
    cast = HALF * n.linear_params if s.precision == "amp" else 0
    return (saved + max(rows * n.tokens * FP32 * n.vocab, _logprob_chunks(rows, n)) + cast
            + _gathered_bytes(s, with_grads=True))


def _reference_pass(s: Finetune, rows: int) -> float:
    """No saved activations; at its peak the inference-mode forward holds its logits and the log-prob chunks."""
    n = s.net
    return rows * n.tokens * s.act.inference_per_token + _logprob_chunks(rows, n) + _gathered_bytes(s, False)


def finetune_transients(s: Finetune, micro: int | None = None) -> dict[str, float]:
    """Bytes above the state at each candidate peak of a step, by name (the report names the largest)."""
    b = micro or s.micro
    rows = 2 * b if s.joint else b
    return {f"policy pass of {rows} rows": _policy_pass(s, rows),
            f"reference pass of {2 * b} rows": _reference_pass(s, 2 * b),
            f"tokenizing {b * s.accum} rows": b * s.accum * s.prepare_bytes_per_row - _grad_bytes(s),
            "optimizer step": 2 * FP32 * s.net.largest_param if s.device == "cpu" else 0}   # CUDA: fused AdamW


def finetune_memory(s: Finetune, micro: int | None = None) -> dict[str, float]:
    """Bytes per process at the step's peak, by part: weights, gradients, optimizer, batch, transient, total."""
    b = micro or s.micro
    parts = {"weights": float(_weight_bytes(s)), "gradients": float(_grad_bytes(s)),
             "optimizer": float(_optimizer_bytes(s)), "batch": s.batch_bytes_per_row * b * s.accum}
    parts["transient"] = max(finetune_transients(s, b).values())
    parts["total"] = sum(parts.values())
    return parts


def largest_fitting(total: Callable[[int], float], limit_bytes: float, upper: int = 1 << 20) -> int:
    """The largest n >= 1 with total(n) <= limit (total increasing in n); 0 if not even n = 1 fits."""
    if total(1) > limit_bytes:
        return 0
    lo, hi = 1, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if total(mid) <= limit_bytes else (lo, mid - 1)
    return lo


def finetune_flops(s: Finetune) -> float:
    """FLOPs of one optimizer step on one process: the reference's forward over 2B rows, the policy's forward and
    backward (2x forward) over 2B rows, and tokenizing the B rows; B = micro x accum."""
    rows = s.micro * s.accum
    return 8 * rows * s.net.flops_per_row + rows * s.prepare_flops_per_row


def steps_per_epoch(dataset_size: int, world: int, per_process_batch: int) -> int:
    return dataset_size // (world * per_process_batch)


# ------------------------------------------------------------------------------------------------ sampling
def sample_memory(s: Sampling, batch: int | None = None) -> dict[str, float]:
    """Bytes per process: the weights, then generating (KV cache + one step) or decoding, whichever is larger
    (the cache is gone before the tokenizer decodes)."""
    b = batch or s.batch
    rows = 2 * b if s.guided else b
    parts = {"weights": float(s.weight_bytes), "generating": rows * (s.cache_bytes_per_row + s.step_bytes_per_row),
             "decoding": b * s.decode_bytes_per_image}
    parts["total"] = parts["weights"] + max(parts["generating"], parts["decoding"])
    return parts


def sample_batches(s: Sampling) -> int:
    return math.ceil(s.num_samples / (s.world * s.batch))


def sample_flops(s: Sampling) -> float:
    """FLOPs of one batch on one process."""
    return s.batch * s.flops_per_image


# ------------------------------------------------------------------------------------------------ command line
def add_dry_run_args(parser: argparse.ArgumentParser) -> None:
    """--dry-run, --gpu-mem and --gpus, shared by every fine-tune and sample script."""
    g = parser.add_argument_group("dry run")
    g.add_argument("--dry-run", action="store_true",
                   help="print per-GPU memory, the largest batch that fits --gpu-mem, steps and FLOPs for these "
                        "flags, then exit: needs no checkpoint and no data, allocates no model")
    g.add_argument("--gpu-mem", type=float, default=80.0, help="GiB of memory per GPU, for --dry-run")
    g.add_argument("--gpus", default=None,
                   help="processes to plan for with --dry-run: N, or NODESxPER_NODE (default: torchrun's "
                        "WORLD_SIZE and LOCAL_WORLD_SIZE, else 1)")


def plan_world(args: argparse.Namespace) -> tuple[int, int]:
    """(world size, processes per node) for the dry run."""
    if args.gpu_mem <= 0:
        raise UsageError(f"--gpu-mem: expected GiB > 0, got {args.gpu_mem}")
    if args.gpus is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return world, int(os.environ.get("LOCAL_WORLD_SIZE", world))
    text = str(args.gpus).lower()
    try:
        nodes, per_node = (int(x) for x in text.split("x")) if "x" in text else (1, int(text))
    except ValueError:
        raise UsageError(f"--gpus: expected N or NODESxPER_NODE (e.g. 8 or 2x8), got {args.gpus!r}") from None
    if nodes < 1 or per_node < 1:
        raise UsageError(f"--gpus: expected positive counts, got {args.gpus!r}")
    return nodes * per_node, per_node


def dataset_size(path: str, count: Callable[[], int], flag: str) -> tuple[int, str]:
    """(number of training items, a line saying where it came from); ImageNet's size when ``path`` is missing."""
    if os.path.exists(path):
        n = count()
        return n, f"{n:,} training items in {flag} {path}"
    return IMAGENET_TRAIN_IMAGES, f"{flag} {path} not found: assuming ImageNet's {IMAGENET_TRAIN_IMAGES:,} images"


def _gib(x: float) -> str:
    return f"{x / GiB:8.2f} GiB"


def _print(lines: list[str]) -> None:
    if int(os.environ.get("RANK", "0")) == 0:      # under torchrun every process plans; one prints
        print("\n".join(lines), flush=True)


def print_finetune(s: Finetune, *, title: str, data: tuple[int, str], compute: str, gpu_mem: float) -> None:
    mem, trans = finetune_memory(s), finetune_transients(s)
    limit = gpu_mem * GiB
    best = largest_fitting(lambda b: finetune_memory(s, b)["total"], limit)
    per_process = s.micro * s.accum
    halves = "both halves in one pass" if s.joint else "halves one after the other"
    _print([f"[dry run] {title}",
            f"  data: {data[1]}",
            f"  per process: {s.micro} rows x {s.accum} accumulation steps ({halves}), {compute}; "
            f"{s.world} process(es), {s.mode if s.world > 1 else 'no data parallelism'}",
            f"  parameters   {_gib(mem['weights'])}   policy + frozen reference ({s.net.params:,} each)"
            + (" + tokenizer" if s.frozen_bytes else ""),
            f"  gradients    {_gib(mem['gradients'])}   fp32" + (" + DDP buckets" if s.mode == "ddp" and s.world > 1
                                                                 else ""),
            f"  optimizer    {_gib(mem['optimizer'])}   AdamW moments (fp32)" + (" + EMA" if s.ema else ""),
            f"  activations  {_gib(mem['transient'] + mem['batch'])}   peak: {max(trans, key=trans.get)}",
            f"  total        {_gib(mem['total'])}   {'fits' if mem['total'] <= limit else 'does NOT fit'} in "
            f"{gpu_mem:g} GiB",
            f"  largest micro-batch within {gpu_mem:g} GiB: {best} rows per process",
            f"  steps per epoch: {steps_per_epoch(data[0], s.world, per_process):,} "
            f"(global batch {per_process * s.world})",
            f"  FLOPs per step: {finetune_flops(s):.3g} per process, {finetune_flops(s) * s.world:.3g} in all",
            "  (a prediction from shapes; nothing was allocated)"])


def print_sampling(s: Sampling, *, title: str, gpu_mem: float) -> None:
    mem = sample_memory(s)
    limit = gpu_mem * GiB
    best = largest_fitting(lambda b: sample_memory(s, b)["total"], limit)
    _print([f"[dry run] {title}",
            f"  {s.num_samples:,} samples, {s.batch} per batch per process, {s.world} process(es), "
            + ("guided (2 rows per sample)" if s.guided else "guidance-free (1 row per sample)"),
            f"  weights      {_gib(mem['weights'])}",
            f"  generating   {_gib(mem['generating'])}   KV cache + one step",
            f"  decoding     {_gib(mem['decoding'])}   tokenizer decoder",
            f"  total        {_gib(mem['total'])}   {'fits' if mem['total'] <= limit else 'does NOT fit'} in "
            f"{gpu_mem:g} GiB",
            f"  largest batch within {gpu_mem:g} GiB: {best} per process",
            f"  batches per process: {sample_batches(s):,}",
            f"  FLOPs per batch: {sample_flops(s):.3g} per process",
            "  (a prediction from shapes; nothing was allocated)"])
