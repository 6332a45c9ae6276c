"""LlamaGen's description for the dry-run planner (cca/plan.py): the GPT and the VQ tokenizer built on the meta
device, and the bytes each position keeps for backward, read off the code (tests/test_plan.py checks them against
the tensors autograd really saves).

Per block and position (C width, F SwiGLU hidden, H heads), in bytes:
  fp32  48C + 16F: RMSNorm input, normed and output 12C twice; rotated q, k 8C; the qkv buffer v views 12C;
        attention output 4C; w1, w3, silu and product outputs 16F
  amp   34C + 8F: the same, half-precision matmul inputs and outputs (RMSNorm stays fp32)
  half  28C + 8F: parameters in half precision (FSDP's mixed precision), RMSNorm's fp32 copy of its input
plus 4H (attention log-sum-exp) + 8 (RMSNorm's 1/rms) + the dropout masks of the residual and FFN outputs.
"""
from __future__ import annotations

import argparse

import torch

from cca import plan
from cca.errors import UsageError
from cca.loss import is_separable
from LlamaGen.checkpoints import build_gpt
from LlamaGen.gpt import ModelArgs, Transformer
from LlamaGen.vq_model import VQ_models

BLOCK = {"fp32": (48, 16), "amp": (34, 8), "half": (28, 8)}    # (x C, x F) per block and position
HEAD = {"fp32": 12, "amp": 10, "half": 8}                       # x C: final RMSNorm and the output layer's input


def activations(cfg: ModelArgs, precision: str, device: str) -> plan.Activations:
    C, F, H = cfg.dim, cfg.ffn_hidden, cfg.n_head
    e = plan.FP32 if precision == "fp32" else plan.HALF           # bytes of a matmul output
    c, f = BLOCK[precision]
    masks = sum(plan.dropout_mask_bytes(device, e) for p in (cfg.resid_dropout_p, cfg.ffn_dropout_p) if p > 0)
    block = c * C + f * F + 4 * H + 8 + masks * C
    embed = 8 + (plan.dropout_mask_bytes(device, plan.HALF if precision == "half" else plan.FP32) * C
                 if cfg.token_dropout_p > 0 else 0)                   # token ids, token-dropout mask
    logits = plan.inference_logits_bytes(cfg.vocab_size, precision)
    inference = max(3 * F * e, logits) + 8 * C                        # SwiGLU's three outputs, or the head
    return plan.Activations(saved_per_token=cfg.n_layer * block + HEAD[precision] * C + 4 + embed,
                            saved_per_row=8, inference_per_token=inference)


def gpt_net(model: Transformer) -> plan.Net:
    cfg = model.config
    T = cfg.block_size                                                # class token + block_size - 1 inputs
    flops = plan.transformer_flops(plan.linear_weights(model), 0, T, cfg.dim, cfg.n_layer, T * (T + 1) / 2)
    return plan.describe_net(model, model.layers, T, cfg.vocab_size, flops)


def meta_gpt(args: argparse.Namespace, dropout: bool) -> Transformer:
    vocab = getattr(args, "vocab_size", None) or args.codebook_size
    drop = dict(dropout_p=args.dropout_p, token_dropout_p=args.token_dropout_p,
                drop_path_rate=args.drop_path_rate) if dropout else {}
    return build_gpt(args.gpt_model, vocab_size=vocab, image_size=args.image_size,
                     downsample_size=args.downsample_size, num_classes=args.num_classes, device="meta", **drop)


def gpt_finetune(model: Transformer, *, precision: str, mode: str, world: int, shard: int, micro: int,
                 accum: int, joint: bool, ema: bool = False, device: str = "cuda", ref_bytes: int = plan.FP32
                 ) -> plan.Finetune:
    T = model.config.block_size
    return plan.Finetune(net=gpt_net(model), act=activations(model.config, precision, device), precision=precision,
                         world=world, shard=shard, mode=mode, micro=micro, accum=accum, joint=joint, ema=ema,
                         device=device, ref_bytes=ref_bytes,
                         batch_bytes_per_row=2 * 8 * T)    # codes as inputs and targets (int64)


def finetune_setup(args: argparse.Namespace, fsdp: bool, world: int, per_node: int) -> plan.Finetune:
    """The plan of LlamaGen_finetune(_fsdp).py's flags on ``world`` GPUs, ``per_node`` to a node."""
    if args.global_batch_size % (world * args.grad_accum):
        raise UsageError(f"--global-batch-size {args.global_batch_size} must be divisible by {world} processes x "
                         f"--gradient-accumulation-steps {args.grad_accum}")
    if fsdp:
        mode = args.data_parallel
        precision = "half" if args.mixed_precision in ("fp16", "bf16") else "fp32"
        shard = 1 if world == 1 else per_node if mode == "hsdp" else world
    else:
        mode, shard, precision = "ddp", 1, "fp32" if args.mixed_precision == "none" else "amp"
    return gpt_finetune(meta_gpt(args, args.keep_dropout), precision=precision, mode=mode, world=world,
                        shard=shard, micro=args.global_batch_size // world // args.grad_accum, accum=args.grad_accum,
                        joint=args.joint_halves or not is_separable(args.loss_type), ema=args.ema,
                        ref_bytes=plan.HALF if args.ref_dtype == "bf16" else plan.FP32)


def gpt_sampling(gpt: Transformer, vq: torch.nn.Module, *, half: bool, guided: bool, batch: int, world: int,
                 num_samples: int) -> plan.Sampling:
    """Plan of sampling ``gpt`` (weights in half precision or fp32) and decoding with ``vq`` (fp32)."""
    cfg, net = gpt.config, gpt_net(gpt)
    e = plan.HALF if half else plan.FP32
    grid = cfg.grid_size
    embed_dim = vq.quantize.embedding.weight.shape[1]
    codes = torch.zeros(1, grid * grid, dtype=torch.long, device=vq.quantize.embedding.weight.device)
    decode_flops, decode_map = plan.conv_net_cost(lambda: vq.decode_code(codes, [1, embed_dim, grid, grid]))
    return plan.Sampling(
        weight_bytes=e * net.params + plan.FP32 * sum(p.numel() for p in vq.parameters()),
        cache_bytes_per_row=cfg.n_layer * 2 * (1 + cfg.block_size) * cfg.dim * e,
        step_bytes_per_row=4 * plan.FP32 * cfg.vocab_size + 3 * cfg.ffn_hidden * e,   # logits, filtering copies
        decode_bytes_per_image=plan.CONV_LIVE_MAPS * decode_map,
        flops_per_image=(2 if guided else 1) * net.flops_per_row + decode_flops, guided=guided, batch=batch,
        world=world, num_samples=num_samples)


def sampling_setup(args: argparse.Namespace, world: int) -> plan.Sampling:
    """The plan of LLamaGen_sample_ddp.py's flags on ``world`` GPUs."""
    with torch.device("meta"):
        vq = VQ_models[args.vq_model](codebook_size=args.codebook_size, codebook_embed_dim=args.codebook_embed_dim)
    return gpt_sampling(meta_gpt(args, dropout=False), vq, half=args.precision != "none", guided=args.cfg_scale > 1,
                        batch=args.per_proc_batch_size, world=world, num_samples=args.num_fid_samples)


def dry_run_finetune(args: argparse.Namespace, fsdp: bool) -> None:
    from LlamaGen.codes import CodeDataset, code_prefix
    world, per_node = plan.plan_world(args)
    setup = finetune_setup(args, fsdp, world, per_node)
    data = plan.dataset_size(args.code_path, lambda: len(CodeDataset(args.code_path, args.image_size,
                                                                     args.downsample_size, code_prefix(args.dataset))),
                             "--code-path")
    script = "LlamaGen_finetune_fsdp.py" if fsdp else "LlamaGen_finetune.py"
    compute = {"fp32": "fp32", "amp": f"{args.mixed_precision} autocast over fp32 weights",
               "half": f"{args.mixed_precision} parameters in the passes (FSDP mixed precision)"}[setup.precision]
    plan.print_finetune(setup, title=f"{script}: {args.gpt_model} at {args.image_size} px "
                        f"({setup.net.tokens} tokens)", data=data, compute=compute, gpu_mem=args.gpu_mem)


def dry_run_sample(args: argparse.Namespace) -> None:
    world, _ = plan.plan_world(args)
    setup = sampling_setup(args, world)
    plan.print_sampling(setup, title=f"LLamaGen_sample_ddp.py: {args.gpt_model} at {args.image_size} px, "
                        f"cfg-scale {args.cfg_scale:g}", gpu_mem=args.gpu_mem)
