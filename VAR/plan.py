"""VAR's description for the dry-run planner (cca/plan.py): VAR and its VQVAE built on the meta device, and the
bytes each position keeps for backward, read off the code (tests/test_plan.py checks them against the tensors
autograd really saves).

Per block and position (C width, F = 4C MLP hidden, H heads), in bytes:
  fp32  56C + 8F: LayerNorm inputs and outputs, the AdaLN-modulated matmul inputs, the qkv buffer (12C), the
        normalised q and the attention's q, k and output, the MLP's hidden before and after GELU and its output
  amp   38C + 4F (CUDA autocast: LayerNorm runs in fp32, the residual stream and matmuls in the half dtype)
plus 20H (the l2-normalised attention's norms and the log-sum-exp) + 16 (LayerNorm statistics); per row and block
the AdaLN projection (6C values) and its inputs.
"""
from __future__ import annotations

import argparse

import torch

from cca import plan
from cca.loss import is_separable
from VAR.build import build_vae, build_var, parse_patch_nums
from VAR.data import micro_batch
from VAR.var import VAR
from VAR.vqvae import VQVAE

BLOCK = {"fp32": (56, 8, 36), "amp": (38, 4, 18)}     # (x C, x F per position; x C per row) per block
HEAD = {"fp32": (12, 20), "amp": (10, 10)}           # (x C per position; x C per row): AdaLN before the head


def activations(var: VAR, precision: str) -> plan.Activations:
    C, H = var.C, var.num_heads
    F = var.blocks[0].ffn.fc1.out_features
    c, f, r = BLOCK[precision]
    head, head_row = HEAD[precision]
    e = plan.FP32 if precision == "fp32" else plan.HALF
    logits = plan.inference_logits_bytes(var.V, precision)
    return plan.Activations(
        saved_per_token=var.depth * (c * C + f * F + 20 * H + 16) + head * C + 8 + plan.FP32 * var.Cvae,
        saved_per_row=var.depth * r * C + head_row * C,
        inference_per_token=max(2 * F * e, logits) + 8 * C)          # the MLP's hidden pair, or the head


def var_net(var: VAR, attended_pairs: float) -> plan.Net:
    per_row = plan.linear_weights(var, skip=lambda name: "ada_lin" not in name)
    per_token = plan.linear_weights(var) - per_row
    flops = plan.transformer_flops(per_token, per_row, var.L, var.C, var.depth, attended_pairs)
    return plan.describe_net(var, var.blocks, var.L, var.V, flops)


def cached_pairs(patch_nums: tuple[int, ...]) -> int:
    """Query-key pairs of one sampling run: each scale attends to itself and every earlier scale."""
    total, seen = 0, 0
    for pn in patch_nums:
        seen += pn * pn
        total += pn * pn * seen
    return total


def meta_models(args: argparse.Namespace) -> tuple[VQVAE, VAR]:
    patch_nums = parse_patch_nums(args.pn)
    vae = build_vae(V=args.vae_V, Cvae=args.vae_Cvae, ch=args.vae_ch, patch_nums=patch_nums, device="meta")
    var = build_var(vae, depth=args.depth, num_classes=args.num_classes, patch_nums=patch_nums,
                    cond_drop_rate=0.0, device="meta")
    return vae, var


def params_bytes(module: torch.nn.Module) -> int:
    return plan.FP32 * sum(p.numel() for p in module.parameters())


def var_finetune(vae: VQVAE, var: VAR, *, precision: str, world: int, micro: int, accum: int, joint: bool,
                 device: str = "cuda") -> plan.Finetune:
    res = var.patch_nums[-1] * vae.downsample
    image = torch.zeros(1, 3, res, res, device=var.pos_1LC.device)
    encode_flops, encode_map = plan.conv_net_cost(lambda: vae.img_to_features(image))
    return plan.Finetune(
        net=var_net(var, var.L * var.L), act=activations(var, precision), precision=precision, world=world,
        shard=1, mode="ddp", micro=micro, accum=accum, joint=joint, device=device, frozen_bytes=params_bytes(vae),
        batch_bytes_per_row=plan.FP32 * (var.L - 1) * var.Cvae + 8 * var.L,       # inputs, targets
        prepare_bytes_per_row=plan.CONV_LIVE_MAPS * encode_map + plan.FP32 * 3 * res * res,
        prepare_flops_per_row=encode_flops)


def finetune_setup(args: argparse.Namespace, world: int) -> plan.Finetune:
    """The plan of VAR_finetune.py's flags on ``world`` GPUs."""
    micro = micro_batch(args.bs, args.ac, world)
    vae, var = meta_models(args)
    return var_finetune(vae, var, precision="fp32" if args.fp16 == 0 else "amp", world=world, micro=micro,
                        accum=args.ac, joint=args.joint_halves or not is_separable(args.loss_type))


def var_sampling(vae: VQVAE, var: VAR, *, cache_bytes: int, guided: bool, batch: int, world: int,
                 num_samples: int) -> plan.Sampling:
    """Plan of sampling ``var`` (fp32 weights; KV cache and activations of ``cache_bytes`` per element)."""
    f_hat = torch.zeros(1, var.Cvae, var.patch_nums[-1], var.patch_nums[-1], device=var.pos_1LC.device)
    decode_flops, decode_map = plan.conv_net_cost(lambda: vae.fhat_to_img(f_hat))
    last = var.patch_nums[-1] ** 2
    F = var.blocks[0].ffn.fc1.out_features
    # the last scale's block activations, or its logits at their peak: B raw rows, their filtered copy and
    # logsumexp's two temporaries (4 maps of B rows); guided, the 2B raw rows are freed once combined into B
    logit_maps = 2 if guided else 4
    net = var_net(var, cached_pairs(var.patch_nums))
    return plan.Sampling(
        weight_bytes=params_bytes(var) + params_bytes(vae),
        cache_bytes_per_row=var.depth * 2 * var.L * var.C * cache_bytes,
        step_bytes_per_row=last * max((6 * var.C + 2 * F) * cache_bytes, logit_maps * plan.FP32 * var.V),
        decode_bytes_per_image=plan.CONV_LIVE_MAPS * decode_map,
        flops_per_image=(2 if guided else 1) * net.flops_per_row + decode_flops, guided=guided,
        batch=batch, world=world, num_samples=num_samples)


def sampling_setup(args: argparse.Namespace, world: int) -> plan.Sampling:
    """The plan of VAR_sample.py's flags on ``world`` GPUs (fp16 autocast: half-precision cache)."""
    vae, var = meta_models(args)
    return var_sampling(vae, var, cache_bytes=plan.HALF, guided=args.cfg != 0, batch=args.batch_size, world=world,
                        num_samples=args.num_classes * args.num_per_class)


def dry_run_finetune(args: argparse.Namespace) -> int:
    from VAR.data import build_train_dataset
    world, _ = plan.plan_world(args)
    setup = finetune_setup(args, world)
    res = parse_patch_nums(args.pn)[-1] * 16
    data = plan.dataset_size(args.data_path, lambda: len(build_train_dataset(args.data_path, res)), "--data_path")
    compute = {0: "fp32", 1: "fp16 autocast over fp32 weights", 2: "bf16 autocast over fp32 weights"}[args.fp16]
    plan.print_finetune(setup, title=f"VAR_finetune.py: VAR-d{args.depth} ({setup.net.tokens} tokens, {res} px)",
                        data=data, compute=compute, gpu_mem=args.gpu_mem)
    return 0


def dry_run_sample(args: argparse.Namespace) -> int:
    world, _ = plan.plan_world(args)
    setup = sampling_setup(args, world)
    plan.print_sampling(setup, title=f"VAR_sample.py: VAR-d{args.depth}, cfg {args.cfg:g}", gpu_mem=args.gpu_mem)
    return 0
