"""LlamaGen's description for the dry-run planner (cca/plan.py): the GPT and the VQ tokenizer built on the meta
device, and the bytes each position keeps for backward, read off the code (tests/test_plan.py checks them against
the tensors autograd really saves).

Per block and position (C width, F SwiGLU hidden, H heads), in bytes:
  fp32  48C + 16F: RMSNorm input, normed and output 12C twice; rotated q, k 8C; the qkv buffer v views 12C;
        attention output 4C; w1, w3, silu and product outputs 16F
  amp   34C + 8F: the same, half-precision matmul inputs and outputs (RMSNorm stays fp32)
  half  28C + 8F: parameters in half precision (FSDP's mixed precision), RMSNorm's fp32 copy of its input
plus 4H (attention log-sum-exp) + 8 (RMSNorm's 1/rms) + the dropout masks of the residual and FFN outputs.

A text-to-image GPT (T caption tokens of width D, L image tokens) runs T + L - 1 positions through the blocks and
takes logits at the last L: per row it adds the blocks' bytes at T - 1 more positions, the caption projection's
inputs (T(D + 2C) half or fp32 elements: its features, fc1's and GELU's outputs), the attention mask scaled
dot-product attention turns into one additive float mask per layer ((T + L - 1)^2 elements of the query dtype),
and, where the residual stream is fp32, the final RMSNorm's input viewing all T + L - 1 positions. Its class index
(8 bytes) is gone, and fc1's weight, whose input needs no gradient, is not kept in half precision under autocast.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from cca import plan
from cca.errors import UsageError
from cca.loss import is_separable
from LlamaGen.checkpoints import build_gpt
from LlamaGen.gpt import ModelArgs, Transformer
from LlamaGen.vq_model import VQ_models

BLOCK = {"fp32": (48, 16), "amp": (34, 8), "half": (28, 8)}    # (x C, x F) per block and position
HEAD = {"fp32": 12, "amp": 10, "half": 8}                       # x C: final RMSNorm and the output layer's input
CAPTION_DIM = ModelArgs.caption_dim     # FLAN-T5-XL's 2048: the released T2I GPTs' caption width (llamagen_t2i_*)
CAPTION_FC1 = "cls_embedding.cap_proj.fc1"   # its input, the features, needs no gradient: autocast keeps no copy


def activations(cfg: ModelArgs, precision: str, device: str) -> plan.Activations:
    C, F, H = cfg.dim, cfg.ffn_hidden, cfg.n_head
    e = plan.FP32 if precision == "fp32" else plan.HALF           # bytes of a matmul output
    c, f = BLOCK[precision]
    masks = sum(plan.dropout_mask_bytes(device, e) for p in (cfg.resid_dropout_p, cfg.ffn_dropout_p) if p > 0)
    block = c * C + f * F + 4 * H + 8 + masks * C
    token_mask = (plan.dropout_mask_bytes(device, plan.HALF if precision == "half" else plan.FP32) * C
                  if cfg.token_dropout_p > 0 else 0)                  # token dropout's mask
    position = cfg.n_layer * block + token_mask                       # every position through the blocks
    logits = plan.inference_logits_bytes(cfg.vocab_size, precision)
    inference = max(3 * F * e, logits) + 8 * C                        # SwiGLU's three outputs, or the head
    return plan.Activations(saved_per_token=position + HEAD[precision] * C + 4 + 8,     # + the token ids
                            saved_per_row=caption_bytes(cfg, precision, position) if cfg.model_type == "t2i"
                            else 8, inference_per_token=inference)    # c2i: the class index


def caption_bytes(cfg: ModelArgs, precision: str, position: float) -> float:
    """Saved bytes of one row's caption positions beyond the first (module docstring); ``position``: the bytes
    of one position through the blocks."""
    T, C, P = cfg.cls_token_num, cfg.dim, positions(cfg)
    e = plan.FP32 if precision == "fp32" else plan.HALF
    norm_view = plan.FP32 * (T - 1) * C if precision != "half" else 0
    return (T - 1) * position + T * (cfg.caption_dim + 2 * C) * e + cfg.n_layer * P * P * e + norm_view


def positions(cfg: ModelArgs) -> int:
    """Positions of a teacher-forcing row: the condition tokens and all image tokens but the last."""
    return cfg.cls_token_num + cfg.block_size - 1


def gpt_net(model: Transformer) -> plan.Net:
    """Logits at the block_size image positions; the blocks over all positions (causal, or under a caption's
    dense mask: every pair computed), the caption projection over the T caption tokens."""
    cfg = model.config
    P, L, T = positions(cfg), cfg.block_size, cfg.cls_token_num
    pairs = P * P if cfg.model_type == "t2i" else P * (P + 1) / 2
    per_row = plan.linear_weights(model.output) * L + plan.linear_weights(model.cls_embedding) * T
    flops = plan.transformer_flops(plan.linear_weights(model.layers), per_row, P, cfg.dim, cfg.n_layer, pairs)
    net = plan.describe_net(model, model.layers, L, cfg.vocab_size, flops)
    return replace(net, linear_params=plan.linear_weights(model, skip=lambda name: name == CAPTION_FC1))


def meta_gpt(args: argparse.Namespace, dropout: bool, caption_dim: int = CAPTION_DIM) -> Transformer:
    """The GPT of the flags on the meta device, through the builder the CLIs use (t2i: --cls-token-num caption
    tokens of width ``caption_dim``)."""
    vocab = getattr(args, "vocab_size", None) or args.codebook_size
    drop = dict(dropout_p=args.dropout_p, token_dropout_p=args.token_dropout_p,
                drop_path_rate=args.drop_path_rate) if dropout else {}
    return build_gpt(args.gpt_model, vocab_size=vocab, image_size=args.image_size,
                     downsample_size=args.downsample_size, num_classes=args.num_classes, device="meta",
                     gpt_type=args.gpt_type, cls_token_num=args.cls_token_num, caption_dim=caption_dim, **drop)


def gpt_finetune(model: Transformer, *, precision: str, mode: str, world: int, shard: int, micro: int,
                 accum: int, joint: bool, ema: bool = False, device: str = "cuda", ref_bytes: int = plan.FP32
                 ) -> plan.Finetune:
    cfg = model.config
    caption = cfg.cls_token_num * (plan.FP32 * cfg.caption_dim + 1) if cfg.model_type == "t2i" else 0
    return plan.Finetune(net=gpt_net(model), act=activations(cfg, precision, device), precision=precision,
                         world=world, shard=shard, mode=mode, micro=micro, accum=accum, joint=joint, ema=ema,
                         device=device, ref_bytes=ref_bytes,   # codes as inputs and targets (int64), t2i: the
                         batch_bytes_per_row=2 * 8 * cfg.block_size + caption)   # fp32 features and bool mask


def finetune_setup(args: argparse.Namespace, fsdp: bool, world: int, per_node: int,
                   caption_dim: int = CAPTION_DIM) -> plan.Finetune:
    """The plan of LlamaGen_finetune(_fsdp).py's flags on ``world`` GPUs, ``per_node`` to a node (t2i: captions
    of width ``caption_dim``)."""
    if args.global_batch_size % (world * args.grad_accum):
        raise UsageError(f"--global-batch-size {args.global_batch_size} must be divisible by {world} processes x "
                         f"--gradient-accumulation-steps {args.grad_accum}")
    if fsdp:
        mode = args.data_parallel
        precision = "half" if args.mixed_precision in ("fp16", "bf16") else "fp32"
        shard = 1 if world == 1 else per_node if mode == "hsdp" else world
    else:
        mode, shard, precision = "ddp", 1, "fp32" if args.mixed_precision == "none" else "amp"
    return gpt_finetune(meta_gpt(args, args.keep_dropout, caption_dim), precision=precision, mode=mode, world=world,
                        shard=shard, micro=args.global_batch_size // world // args.grad_accum, accum=args.grad_accum,
                        joint=args.joint_halves or not is_separable(args.loss_type), ema=args.ema,
                        ref_bytes=plan.HALF if args.ref_dtype == "bf16" else plan.FP32)


def gpt_sampling(gpt: Transformer, vq: torch.nn.Module, *, half: bool, guided: bool, batch: int, world: int,
                 num_samples: int, encoder_bytes: int = 0) -> plan.Sampling:
    """Plan of sampling ``gpt`` (weights in half precision or fp32) and decoding with ``vq`` (fp32); a T2I GPT's
    text encoder (``encoder_bytes`` of weights) stays loaded, its captions (T rows of width D) live while
    generating, and the prefill runs the T caption positions at once."""
    cfg, net = gpt.config, gpt_net(gpt)
    e = plan.HALF if half else plan.FP32
    T, L, F = cfg.cls_token_num, cfg.block_size, cfg.ffn_hidden
    grid = cfg.grid_size
    embed_dim = vq.quantize.embedding.weight.shape[1]
    codes = torch.zeros(1, grid * grid, dtype=torch.long, device=vq.quantize.embedding.weight.device)
    decode_flops, decode_map = plan.conv_net_cost(lambda: vq.decode_code(codes, [1, embed_dim, grid, grid]))
    step = 4 * plan.FP32 * cfg.vocab_size + 3 * F * e                 # logits, filtering copies
    prefill = T * (plan.inference_logits_bytes(cfg.vocab_size, "half" if half else "fp32") + 3 * F * e)
    caption = T * (cfg.caption_dim * e + 1) if cfg.model_type == "t2i" else 0
    return plan.Sampling(
        weight_bytes=e * net.params + plan.FP32 * sum(p.numel() for p in vq.parameters()) + encoder_bytes,
        cache_bytes_per_row=cfg.n_layer * 2 * (T + L) * cfg.dim * e,
        step_bytes_per_row=max(step, prefill) + caption,
        decode_bytes_per_image=plan.CONV_LIVE_MAPS * decode_map,
        flops_per_image=(2 if guided else 1) * net.flops_per_row + decode_flops, guided=guided, batch=batch,
        world=world, num_samples=num_samples)


def sampling_setup(args: argparse.Namespace, world: int, num_samples: int, caption_dim: int = CAPTION_DIM,
                   encoder_bytes: int = 0) -> plan.Sampling:
    """The plan of a LlamaGen sampler's flags on ``world`` GPUs (LLamaGen_sample_ddp.py, LlamaGen/sample_t2i.py)."""
    with torch.device("meta"):
        vq = VQ_models[args.vq_model](codebook_size=args.codebook_size, codebook_embed_dim=args.codebook_embed_dim)
    return gpt_sampling(meta_gpt(args, False, caption_dim), vq, half=args.precision != "none",
                        guided=args.cfg_scale > 1, batch=args.per_proc_batch_size, world=world,
                        num_samples=num_samples, encoder_bytes=encoder_bytes)


def dry_run_finetune(args: argparse.Namespace, fsdp: bool) -> None:
    from LlamaGen.codes import CodeDataset, code_prefix
    from LlamaGen.plan_t2i import t2i_data_size
    from LlamaGen.t2i_data import check_t2i_args
    world, per_node = plan.plan_world(args)
    check_t2i_args(args)
    if args.gpt_type == "t2i":
        data, caption_dim = t2i_data_size(args)
    else:
        data, caption_dim = plan.dataset_size(args.code_path, lambda: len(CodeDataset(
            args.code_path, args.image_size, args.downsample_size, code_prefix(args.dataset))), "--code-path"), \
            CAPTION_DIM
    setup = finetune_setup(args, fsdp, world, per_node, caption_dim)
    script = "LlamaGen_finetune_fsdp.py" if fsdp else "LlamaGen_finetune.py"
    compute = {"fp32": "fp32", "amp": f"{args.mixed_precision} autocast over fp32 weights",
               "half": f"{args.mixed_precision} parameters in the passes (FSDP mixed precision)"}[setup.precision]
    tokens = (f"{setup.net.tokens} tokens" if args.gpt_type == "c2i" else f"{args.cls_token_num} caption tokens of "
              f"width {caption_dim} + {setup.net.tokens} image tokens: {args.cls_token_num + setup.net.tokens - 1} "
              f"positions per row")
    plan.print_finetune(setup, title=f"{script}: {args.gpt_model} {args.gpt_type} at {args.image_size} px "
                        f"({tokens})", data=data, compute=compute, gpu_mem=args.gpu_mem)


def dry_run_sample(args: argparse.Namespace) -> None:
    world, _ = plan.plan_world(args)
    setup = sampling_setup(args, world, args.num_fid_samples)
    plan.print_sampling(setup, title=f"LLamaGen_sample_ddp.py: {args.gpt_model} at {args.image_size} px, "
                        f"cfg-scale {args.cfg_scale:g}", gpu_mem=args.gpu_mem)
