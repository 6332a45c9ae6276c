"""CCA fine-tuning of a released VAR model (Condition Contrastive Alignment, arXiv 2410.09347).

    torchrun --nproc_per_node=8 VAR_finetune.py --depth=16 --bs=256 --ep=1 --tblr=2e-5 --fp16=1 --alng=1e-3 \
        --wpe=0.1 --loss_type=CCA --beta=0.02 --lambda_=50.0 --ac=4 --exp_name=default --dpr_ratio=0.0 \
        --uncond_ratio=0.1 --ref_ckpt=/path/to/var_d16.pth --data_path=/path/to/imagenet

Runs as one process (CPU or GPU) or under torchrun (gloo on CPU, nccl on GPU). The policy and the frozen
reference both start from --ref_ckpt. Output in <local_out_dir>/<exp_name>/: log.txt, tb/ (tensorboard),
resume.pt (resumable state) and ar-ckpt-last.pth, a plain state dict that VAR_sample.py --ckpt_path (and the
original VAR_sample.py) loads. The recipe is the original's (docs/differences.md): --bs is the global batch per
optimizer step, split over processes and --ac micro-batches whose gradients are averaged; lr = tblr x bs / 256;
the --sche schedule advances once per micro-batch; fp16 loss scale 2^11, grown every 1000 steps, capped at 2^15;
the reference runs in train mode (drop path like the policy).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from cca import dist as cdist
from cca.checkpoint import require_checkpoint, save_atomic
from cca.cli import exits_on_errors, start_process
from cca.errors import UsageError
from cca.finetune_driver import finetune
from cca.plan import add_dry_run_args
from cca.schedule import check_schedule
from cca.train_config import TrainConfig, check_loss_settings
from VAR.adapter import VAR_NO_DECAY_KEYS, VARAdapter
from VAR.build import PATCH_NUMS_256, pn_flag
from VAR.data import build_train_dataset, micro_batch
from VAR.family import VARSpec, finetune_models


def flag_bool(text: str) -> bool:
    """1/0, true/false, yes/no (the original VAR took --hflip=True / False)."""
    value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected 1/0 or true/false, got {text!r}")
    return value


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """Data, output folder, seeding and resume flags."""
    g = p.add_argument_group("data and run")
    g.add_argument("--data_path", required=True, help="ImageNet-style folder: <class>/<image> (or train/<class>/...)")
    g.add_argument("--hflip", type=flag_bool, default=False, help="random horizontal flips (1/0, true/false)")
    g.add_argument("--mid_reso", type=float, default=1.125, help="resize to mid_reso x size, then random-crop")
    g.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    g.add_argument("--seed", type=int, default=0, help="seed of data order, augmentation, null-class draws")
    g.add_argument("--exp_name", default="default", help="run folder name under --local_out_dir")
    g.add_argument("--local_out_dir", default="local_output", help="parent of the run folder")
    g.add_argument("--ckpt_every", type=int, default=1000, help="optimizer steps between resumable checkpoints "
                   "(resume.pt and ar-ckpt-last.pth); 0: only at the end")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue a run: a resume.pt path, or no value for <run folder>/resume.pt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="VAR_finetune.py", description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("CCA")
    g.add_argument("--ref_ckpt", required=True,
                   help="pretrained VAR weights (var_d16.pth ...): policy init and frozen reference")
    g.add_argument("--loss_type", default="CCA", help="CCA, DPO or unlearning")
    g.add_argument("--beta", type=float, default=0.01, help="CCA beta")
    g.add_argument("--lambda_", type=float, default=100.0, help="CCA lambda (weight of the negative term)")
    g.add_argument("--uncond_ratio", type=float, default=0.1, help="probability of training a row with the null "
                   "class (keeps CFG usable); 0 for guidance-free only")
    g.add_argument("--dpr_ratio", type=float, default=1.0, help="drop-path rate relative to pretraining "
                   "(1.0: 0.1*depth/24; 0.0: none)")
    g.add_argument("--ref_dropout", type=int, default=1, choices=(0, 1), help="run the frozen reference with "
                   "drop path like the policy, in train mode (1, the original) or deterministically in eval mode (0)")
    g.add_argument("--roll_per_micro_batch", type=flag_bool, default=False, help="negatives: labels rolled within "
                   "each --ac micro-batch (1, the original) instead of over the process's whole batch (0)")
    g = p.add_argument_group("model")
    g.add_argument("--depth", type=int, default=16, help="VAR depth (16, 20, 24, 30 released)")
    g.add_argument("--num_classes", type=int, default=1000, help="classes (= class folders in --data_path)")
    g.add_argument("--pn", default=pn_flag(PATCH_NUMS_256), help="patch nums (256, 512 or 1_2_3_...)")
    g.add_argument("--saln", type=flag_bool, default=False, help="shared AdaLN (1 for d36-s: --depth 36 --pn 512)")
    g.add_argument("--alng", type=float, default=1e-5, help="AdaLN gamma init multiplier (initialisation only; "
                   "the weights come from --ref_ckpt, as in the original)")
    for flag, default in (("--aln", 0.5), ("--hd", 0.02), ("--ini", -1.0)):
        g.add_argument(flag, type=float, default=default, help="initialisation only, like --alng")
    g.add_argument("--vae_ckpt", default="vae_ch160v4096z32", help="VQVAE weights (file, release name or hf://)")
    g.add_argument("--vae_ch", type=int, default=160, help="VQVAE base width")
    g.add_argument("--vae_V", type=int, default=4096, help="VQVAE codebook size")
    g.add_argument("--vae_Cvae", type=int, default=32, help="VQVAE code width")
    g = p.add_argument_group("optimisation")
    g.add_argument("--bs", type=int, default=768, help="global batch per optimizer step")
    g.add_argument("--ac", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--ep", type=int, default=250, help="epochs")
    g.add_argument("--max_steps", type=int, default=0, help="stop after this many optimizer steps (0: --ep "
                   "epochs); the lr / wd schedule stays the one --ep defines")
    g.add_argument("--tblr", type=float, default=1e-4, help="base learning rate (lr = tblr * bs / 256)")
    g.add_argument("--twd", type=float, default=0.05, help="initial weight decay")
    g.add_argument("--twde", type=float, default=0.0, help="final weight decay (0: same as --twd)")
    g.add_argument("--tclip", type=float, default=2.0, help="gradient-norm clip (<=0: off)")
    g.add_argument("--sche", default="lin0", help="lr schedule after warmup: lin0, lin, lin00, cos, exp or lin<T>")
    g.add_argument("--wp", type=float, default=0.0, help="warmup epochs (0: ep/50)")
    g.add_argument("--wp0", type=float, default=0.005, help="learning-rate ratio at the start of warmup")
    g.add_argument("--wpe", type=float, default=0.01, help="final learning-rate ratio")
    g.add_argument("--opt", choices=("adamw", "adam"), default="adamw", help="AdamW either way (betas 0.9, 0.95)")
    g.add_argument("--afuse", type=flag_bool, default=True, help="fused AdamW kernel where torch has one")
    g.add_argument("--fp16", type=int, default=0, choices=(0, 1, 2), help="0: fp32, 1: fp16, 2: bf16 autocast")
    g.add_argument("--tf32", type=flag_bool, default=True, help="TensorFloat-32 float32 matmuls on CUDA")
    g.add_argument("--joint_halves", type=flag_bool, default=False,
                   help="CCA/unlearning: matched and mismatched rows in one 2B pass (more activation memory) "
                        "instead of one after the other")
    _add_run_flags(p)
    add_dry_run_args(p)
    return p


def check_args(args: argparse.Namespace, world: int) -> int:
    """Cheap checks, before anything heavy; returns the per-process micro-batch."""
    for flag, value in (("--depth", args.depth), ("--bs", args.bs), ("--ac", args.ac), ("--ep", args.ep),
                        ("--num_classes", args.num_classes)):
        if value < 1:
            raise UsageError(f"{flag}: must be a positive integer, got {value}")
    check_loss_settings(args.loss_type, args.uncond_ratio)
    try:
        check_schedule(args.sche)
    except ValueError as e:
        raise UsageError(f"--sche: {e}") from None
    for flag, path in (("--ref_ckpt", args.ref_ckpt), ("--vae_ckpt", args.vae_ckpt)):
        require_checkpoint(path, flag)
    if args.resume not in (None, "auto") and not Path(args.resume).is_file():
        raise UsageError(f"--resume: {args.resume} not found (expected the resume.pt of an earlier run, or no value "
                         f"for <run folder>/resume.pt)")
    out = (Path(args.local_out_dir) / args.exp_name).absolute()
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--local_out_dir: cannot create {out} ({existing} is not a writable folder)")
    return micro_batch(args.bs, args.ac, world)


def steps_per_epoch(args: argparse.Namespace, world: int, num_images: int) -> int:
    """Optimizer steps in one epoch: whole global batches of round(bs / ac / world) x ac x world images."""
    return num_images // (world * micro_batch(args.bs, args.ac, world) * args.ac)


def train_config(args: argparse.Namespace, world: int, num_images: int, out_dir: str | Path):
    """The original recipe from the flags: per-process micro-batch round(bs / ac / world), lr = ac x tblr x
    (micro x world) / 256, mean of the micro-batch gradients, the schedule indexed by micro-iteration over
    ep x ceil(images / (micro x world)) of them (the original loader's length), warmup wp (0: ep/50) epochs."""
    micro = round(args.bs / args.ac / world)
    iters_per_epoch = math.ceil(num_images / (micro * world))
    total_steps = args.ep * steps_per_epoch(args, world, num_images)
    return TrainConfig(
        out_dir=str(out_dir), batch_size=micro * args.ac, grad_accum=args.ac, grad_accum_reduction="mean",
        loss_type=args.loss_type, beta=args.beta, lambda_=args.lambda_, uncond_ratio=args.uncond_ratio,
        lr=args.ac * args.tblr * micro * world / 256, weight_decay=args.twd, wd_end=args.twde or args.twd,
        fused_adamw=args.afuse, max_grad_norm=max(args.tclip, 0.0), epochs=args.ep,
        max_steps=args.max_steps or None, schedule=args.sche, schedule_unit="micro",
        schedule_total=args.ep * iters_per_epoch, warmup_steps=(args.wp or args.ep / 50) * iters_per_epoch,
        warmup_start=args.wp0, final_lr_ratio=args.wpe, precision={0: "fp32", 1: "fp16", 2: "bf16"}[args.fp16],
        fp16_scaler=(2.0 ** 11, 1000, 2.0 ** 15), log_every=max(1, min(10, total_steps)),
        ref_train_mode=bool(args.ref_dropout), seed=args.seed, resume=args.resume, num_workers=args.workers,
        ckpt_every=max(args.ckpt_every, 0), joint_halves=args.joint_halves,
        roll_per_micro_batch=args.roll_per_micro_batch, no_decay_keys=VAR_NO_DECAY_KEYS,
        extra={"cli": vars(args), "argv": sys.argv[1:]})


@exits_on_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        from VAR.plan import dry_run_finetune
        return dry_run_finetune(args)
    spec = VARSpec.from_args(args)
    dist = start_process()
    micro = check_args(args, dist.world_size)
    cdist.set_tf32(args.tf32)
    dataset = build_train_dataset(args.data_path, spec.patch_nums[-1] * 16, mid_reso=args.mid_reso,
                                  hflip=args.hflip, num_classes=args.num_classes)
    steps = args.ep * steps_per_epoch(args, dist.world_size, len(dataset))
    if steps == 0:
        raise UsageError(f"--data_path: {len(dataset)} images are fewer than one global batch "
                         f"({dist.world_size} x {micro * args.ac}); lower --bs")
    seed = args.seed * dist.world_size + dist.rank
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    vae, policy, reference = finetune_models(spec, args.ref_ckpt, dist.device, init_adaln_gamma=args.alng,
                                             dpr_ratio=args.dpr_ratio)
    out_dir = Path(args.local_out_dir) / args.exp_name
    cfg = train_config(args, dist.world_size, len(dataset), out_dir)
    if dist.is_main:
        print(f"[VAR_finetune] depth {args.depth}, {len(dataset)} images in {args.num_classes} classes, "
              f"{dist.world_size} process(es) x {micro} rows x {args.ac} accumulation, lr {cfg.lr:.3g}, "
              f"{min(steps, args.max_steps or steps)} steps -> {out_dir}", flush=True)
    weights = out_dir / "ar-ckpt-last.pth"
    finetune(policy, reference, VARAdapter(vae, args.num_classes), dataset, cfg, dist,
             make_export=lambda trainer: lambda state_dict, step, final: save_atomic(state_dict, weights))
    if dist.is_main:
        print(f"[VAR_finetune] done: {weights}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
