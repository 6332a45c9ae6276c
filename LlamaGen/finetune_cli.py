"""Command line of LlamaGen_finetune.py (DDP) and LlamaGen_finetune_fsdp.py (FSDP2): CCA fine-tuning of a
released LlamaGen GPT on pre-extracted codes, through the shared trainer (cca/trainer.py).

Flags follow the CCA release (``--global-batch-size --gradient-accumulation-step(s) --epochs --ckpt-every --lr
--loss_type --expid --lambda_ --beta --uncond_ratio --keep_dropout --ref_ckpt --code-path --image-size
--gpt-model``); outputs go to ``<results-dir>/<NNN>-<expid>-<gpt-model>/``: ``checkpoints/<step:07d>.pt`` and
``resume.pt`` (resumable state; FSDP: ``resume/step-<step>/``, sharded, cca/dcp.py). The weight files have the
original scripts' formats: ``{"model": state_dict}`` (+ ``"ema"``) from the DDP script, the bare state dict from
the FSDP one (what upstream ``sample_c2i_ddp.py --from-fsdp`` reads); LLamaGen_sample_ddp.py loads both. The
recipe is the original's (docs/differences.md): the undivided micro-batch losses are backpropagated (their
gradients add up) and the sum is clipped; the reference runs in train mode (dropout like the policy); no
learning-rate schedule.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from cca import dcp
from cca import dist as cdist
from cca.checkpoint import check_writable_dir, require_checkpoint, save_atomic
from cca.cli import exits_on_errors, start_process
from cca.errors import UsageError
from cca.finetune_driver import finetune
from cca.loss import LOSS_TYPES
from cca.plan import add_dry_run_args
from cca.train_config import TORCH_FP16_SCALER, check_loss_settings
from cca.trainer import TrainConfig, Trainer
from LlamaGen.adapter import LlamaGenAdapter
from LlamaGen.checkpoints import build_gpt, load_gpt_weights
from LlamaGen.codes import CodeDataset, code_prefix, load_npy
from LlamaGen.family import with_reference
from LlamaGen.fsdp import DTYPES
from LlamaGen.gpt import GPT_SIZES
from LlamaGen.t2i_adapter import T2IAdapter
from LlamaGen.t2i_data import add_t2i_flags, check_t2i_args, t2i_dataset

PRECISION = {"none": "fp32", "fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "bf16": "bf16"}


def _add_training_flags(p: argparse.ArgumentParser, fsdp: bool) -> None:
    """The optimisation and run flags (the original's names and defaults; FSDP's precision flags)."""
    t = p.add_argument_group("training")
    t.add_argument("--results-dir", default="results")
    t.add_argument("--global-batch-size", type=int, default=256)
    t.add_argument("--gradient-accumulation-steps", "--gradient-accumulation-step", dest="grad_accum", type=int,
                   default=1, help="micro-batches per optimizer step")
    t.add_argument("--epochs", type=float, default=300)
    t.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0: --epochs)")
    t.add_argument("--lr", type=float, default=1e-4, help="constant learning rate (no warmup, no decay)")
    t.add_argument("--weight-decay", type=float, default=5e-2, help="on >= 2-D parameters only")
    t.add_argument("--beta1", type=float, default=0.9)
    t.add_argument("--beta2", type=float, default=0.95)
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    t.add_argument("--global-seed", type=int, default=0)
    t.add_argument("--num-workers", type=int, default=24)
    t.add_argument("--log-every", type=int, default=100)
    t.add_argument("--ckpt-every", type=int, default=5000,
                   help="optimizer steps between checkpoints (step 5000 is always saved, as originally)")
    t.add_argument("--ema", action="store_true", help="keep an EMA (decay 0.9999) of the policy (DDP script only)")
    t.add_argument("--resume", default=None,
                   help="'auto' (latest run of this --expid/--gpt-model with resumable state), a run folder, or its "
                        "resume.pt (FSDP: a resume/step-* folder, from any number of processes)")
    t.add_argument("--no-local-save", action="store_true", help="write no checkpoints/<step>.pt weight files")
    t.add_argument("--no-compile", action="store_true", help="do not torch.compile the blocks (never on CPU)")
    t.add_argument("--no-tf32", action="store_true", help="full float32 CUDA matmuls (the original allows TF32)")
    t.add_argument("--joint-halves", action="store_true",
                   help="CCA/unlearning: run matched and mismatched rows in one 2B pass (more activation memory, "
                        "one all-gather per FSDP forward) instead of one after the other")
    if fsdp:
        t.add_argument("--mixed-precision", choices=["none", "fp32", "tf32", "fp16", "bf16"], default="bf16",
                       help="FSDP parameter dtype in forward/backward, and the autocast dtype")
        t.add_argument("--grad-precision", choices=["fp32", "fp16", "bf16"], default=None,
                       help="FSDP gradient reduce dtype (default: that of --mixed-precision, as originally)")
        t.add_argument("--data-parallel", choices=["fsdp", "sdp", "hsdp"], default="fsdp",
                       help="full shard / shard grads+optimizer only / shard within a node, replicate across")
    else:
        t.add_argument("--mixed-precision", choices=["none", "fp16", "bf16"], default="bf16",
                       help="autocast dtype (fp16 uses a gradient scaler)")


def build_parser(fsdp: bool) -> argparse.ArgumentParser:
    name = "LlamaGen_finetune_fsdp.py" if fsdp else "LlamaGen_finetune.py"
    p = argparse.ArgumentParser(prog=name, allow_abbrev=False, description=(
        "CCA fine-tuning of a LlamaGen GPT with " + ("FSDP2 (per-block fully_shard)" if fsdp else "DDP") +
        ". Run as one process or under torchrun."))
    cca = p.add_argument_group("CCA")
    cca.add_argument("--expid", default="default", help="experiment name used in the run folder")
    cca.add_argument("--ref_ckpt", required=True, help="released GPT checkpoint: policy init and frozen reference")
    cca.add_argument("--loss_type", default="CCA", type=str.strip,
                     help=f"one of {', '.join(LOSS_TYPES)} (case-insensitive)")
    cca.add_argument("--lambda_", type=float, default=1000.0, help="weight of the negative (mismatched) term")
    cca.add_argument("--beta", type=float, default=0.02, help="scale of the log-likelihood ratios")
    cca.add_argument("--uncond_ratio", type=float, default=0.0,
                     help="fraction of rows whose condition becomes the null class (keeps CFG usable)")
    cca.add_argument("--keep_dropout", action="store_true",
                     help="train with LlamaGen's dropout (--dropout-p, --token-dropout-p, --drop-path-rate)")
    cca.add_argument("--ref-eval-mode", action="store_true",
                     help="run the frozen reference deterministically in eval mode (the original: train mode, with "
                          "the policy's dropout)")
    cca.add_argument("--ref-dtype", choices=["fp32", "bf16"], default="fp32",
                     help="dtype the frozen reference is held and run in (bf16: half its memory; its log-probs are "
                          "still summed in fp32; the original: fp32)")
    cca.add_argument("--grad-accum-mean", action="store_true",
                     help="average the micro-batch gradients (the original adds them up, then clips the sum)")
    cca.add_argument("--roll-per-micro-batch", action="store_true",
                     help="negatives: labels rolled within each micro-batch, as originally (default: over the "
                          "process's whole batch, so the pairing does not depend on the accumulation steps)")
    m = p.add_argument_group("model and data")
    m.add_argument("--gpt-model", choices=list(GPT_SIZES), default="GPT-B")
    add_t2i_flags(m)
    m.add_argument("--code-path", required=True, help="folder with imagenet<size>_codes/ and imagenet<size>_labels/"
                   " (t2i: <stem>/<line>.npy)")
    m.add_argument("--dataset", default="imagenet_code", help="imagenet_code (the original's only code data set: "
                   "<code-path>/imagenet<size>_codes), or another prefix of the code folders")
    m.add_argument("--image-size", type=int, default=256)
    m.add_argument("--downsample-size", type=int, choices=[8, 16], default=16)
    m.add_argument("--vocab-size", type=int, default=16384, help="codebook size of the tokenizer")
    m.add_argument("--num-classes", type=int, default=1000)
    m.add_argument("--cls-token-num", type=int, default=None, help="condition tokens (default: 1 c2i, 120 t2i)")
    m.add_argument("--dropout-p", type=float, default=0.1,
                   help="residual / FFN dropout with --keep_dropout (0 when --drop-path-rate > 0, as originally)")
    m.add_argument("--token-dropout-p", type=float, default=0.1, help="token dropout with --keep_dropout")
    m.add_argument("--drop-path-rate", type=float, default=0.0, help="stochastic depth with --keep_dropout")
    m.add_argument("--dropout-with-drop-path", action="store_true",
                   help="keep --dropout-p when --drop-path-rate > 0 (the original turns it off)")
    _add_training_flags(p, fsdp)
    add_dry_run_args(p)
    return p


def check_args(args: argparse.Namespace, world: int, fsdp: bool = False) -> None:
    """One-line errors for bad flags, before any heavy work."""
    if fsdp and args.ema:
        raise UsageError("--ema is only supported by LlamaGen_finetune.py (DDP), not with FSDP")
    check_loss_settings(args.loss_type, args.uncond_ratio)
    require_checkpoint(args.ref_ckpt, "--ref_ckpt")
    check_t2i_args(args)
    if args.image_size <= 0 or args.image_size % args.downsample_size:
        raise UsageError(f"--image-size {args.image_size} must be a positive multiple of --downsample-size "
                         f"{args.downsample_size}")
    if args.grad_accum < 1:
        raise UsageError(f"--gradient-accumulation-steps must be >= 1, got {args.grad_accum}")
    if args.global_batch_size < 1 or args.global_batch_size % (world * args.grad_accum):
        raise UsageError(f"--global-batch-size {args.global_batch_size} must be divisible by world size {world} x "
                         f"--gradient-accumulation-steps {args.grad_accum}")
    if args.lr <= 0 or args.epochs <= 0:
        raise UsageError("--lr and --epochs must be positive")
    if args.max_grad_norm < 0:
        raise UsageError(f"--max-grad-norm must be >= 0 (0: no clipping), got {args.max_grad_norm}")


def check_codes(dataset: CodeDataset, vocab_size: int, code_path: str, num_classes: int) -> None:
    """The first few code / label files must be readable and hold codes inside the tokenizer's vocabulary and
    labels inside [0, num_classes) (the trainer checks every later batch's labels too)."""
    for i in dataset.ids[:8]:
        codes, labels = (load_npy(folder / f"{i}.npy", f"--code-path {code_path}")
                         for folder in (dataset.codes_dir, dataset.labels_dir))
        if codes.min() < 0 or codes.max() >= vocab_size:
            raise UsageError(f"--code-path {code_path}: {dataset.codes_dir.name}/{i}.npy has code {int(codes.max())}"
                             f" outside [0, {vocab_size}); pass the tokenizer's --vocab-size")
        if labels.size != 1 or not 0 <= int(labels.reshape(-1)[0]) < num_classes:
            raise UsageError(f"--code-path {code_path}: {dataset.labels_dir.name}/{i}.npy holds {labels.tolist()}; "
                             f"expected one class label in [0, {num_classes}) (--num-classes)")


def run_dir(args: argparse.Namespace, dist: cdist.Dist) -> tuple[Path, str | None]:
    """(run folder, resume file or None), decided on rank 0 and shared."""
    choice = None
    if dist.is_main:
        results = check_writable_dir(args.results_dir, "--results-dir")
        tag = f"{args.expid}-{args.gpt_model.replace('/', '-')}"
        resume = None
        if args.resume and args.resume != "auto":
            resume = dcp.find(args.resume)
            if resume is None:
                raise UsageError(f"--resume {args.resume}: no resume.pt there (nor a resume/step-* checkpoint)")
            folder = dcp.run_folder(resume)
        else:
            runs = sorted(d for d in results.glob(f"[0-9][0-9][0-9]-{tag}") if dcp.find(d) is not None)
            if args.resume == "auto" and runs:
                folder, resume = runs[-1], dcp.find(runs[-1])
            else:
                index = len([d for d in results.iterdir() if d.is_dir()])
                folder = results / f"{index:03d}-{tag}"
                while folder.exists():
                    index += 1
                    folder = results / f"{index:03d}-{tag}"
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        choice = (str(folder), str(resume) if resume else None)
    folder, resume = cdist.broadcast_object(choice)
    return Path(folder), resume


def model_kwargs(args: argparse.Namespace, fsdp: bool) -> dict:
    """Dropout settings as the original scripts set them: none without --keep_dropout; with it, residual / FFN
    dropout only while --drop-path-rate is 0 (unless --dropout-with-drop-path); label dropout 1e-5 (FSDP 1e-6)."""
    kwargs = {"class_dropout_prob": 1e-6 if fsdp else 1e-5}
    if args.keep_dropout:
        keep = args.drop_path_rate == 0 or args.dropout_with_drop_path
        kwargs.update(dropout_p=args.dropout_p if keep else 0.0, token_dropout_p=args.token_dropout_p,
                      drop_path_rate=args.drop_path_rate)
    return kwargs


def build_policy(args: argparse.Namespace, fsdp: bool, caption_dim: int = 2048) -> torch.nn.Module:
    """The GPT of --gpt-model with --ref_ckpt's weights (built on meta, the file memory-mapped)."""
    policy = build_gpt(args.gpt_model, vocab_size=args.vocab_size, image_size=args.image_size,
                       downsample_size=args.downsample_size, num_classes=args.num_classes, device="meta",
                       gpt_type=args.gpt_type, cls_token_num=args.cls_token_num, caption_dim=caption_dim,
                       **model_kwargs(args, fsdp))
    return load_gpt_weights(policy, args.ref_ckpt, flag="--ref_ckpt")


def fsdp_sharding(args: argparse.Namespace, dist: cdist.Dist, precision: str | None = None):
    """model -> model sharded per block as --data-parallel, --mixed-precision (or ``precision``) and
    --grad-precision say."""
    from LlamaGen.fsdp import shard_gpt
    grads = args.grad_precision or PRECISION[args.mixed_precision]
    params = precision or PRECISION[args.mixed_precision]
    return lambda model: shard_gpt(model, args.data_parallel, params, grads, dist)


def train_config(args: argparse.Namespace, world: int, folder: Path, resume: str | None,
                 fsdp: bool) -> TrainConfig:
    """The original recipe: per-process batch global / world in --gradient-accumulation-steps micro-batches whose
    undivided losses are backpropagated, the summed gradient clipped at --max-grad-norm; constant lr; fused AdamW;
    autocast in --mixed-precision (FSDP: on top of its parameter dtype, without a loss scaler)."""
    return TrainConfig(out_dir=str(folder), batch_size=args.global_batch_size // world, loss_type=args.loss_type,
                       beta=args.beta, lambda_=args.lambda_, uncond_ratio=args.uncond_ratio, lr=args.lr,
                       weight_decay=args.weight_decay, betas=(args.beta1, args.beta2), fused_adamw=True,
                       max_grad_norm=args.max_grad_norm, grad_accum=args.grad_accum,
                       grad_accum_reduction="mean" if args.grad_accum_mean else "sum", epochs=args.epochs,
                       max_steps=args.max_steps or None, precision=PRECISION[args.mixed_precision],
                       fp16_scaler=None if fsdp else TORCH_FP16_SCALER, log_every=args.log_every,
                       ckpt_every=args.ckpt_every, ckpt_steps=(5000,), ema=0.9999 if args.ema else 0.0,
                       ref_train_mode=not args.ref_eval_mode, seed=args.global_seed, resume=resume,
                       num_workers=args.num_workers, parallel="fsdp" if fsdp else "ddp",
                       joint_halves=args.joint_halves, roll_per_micro_batch=args.roll_per_micro_batch,
                       extra=vars(args))


def place_models(policy: torch.nn.Module, args: argparse.Namespace, dist: cdist.Dist, fsdp: bool,
                 log: logging.Logger):
    """(policy on the device in fp32, its frozen reference copy in --ref-dtype, sharded per block under FSDP, the
    policy's FSDP sharding for the fine-tune driver or None)."""
    shard = fsdp_sharding(args, dist) if fsdp else None
    shard_ref = fsdp_sharding(args, dist, "bf16" if args.ref_dtype == "bf16" else None) if fsdp else None
    policy, reference = with_reference(policy, dist.device, log=log, reference_dtype=DTYPES[args.ref_dtype],
                                       shard_reference=shard_ref,
                                       compile=dist.device.type == "cuda" and not args.no_compile)
    return policy, reference, shard


def exporter(args: argparse.Namespace, folder: Path, log: logging.Logger):
    """trainer -> the DDP fine-tune's function writing <run>/checkpoints/<step>.pt in the original's format
    ({'model': ...} plus 'ema' with --ema); nothing with --no-local-save. (The FSDP fine-tune streams the bare
    state dict there itself: cca/dcp.py.)"""
    def make(trainer: Trainer):
        def export(state_dict: dict, step: int, final: bool) -> None:
            if args.no_local_save:
                return
            ckpt = {"model": {k: v.detach().cpu() for k, v in state_dict.items()}}
            if trainer.ema is not None:
                ckpt["ema"] = {k: v.to(state_dict[k].dtype) for k, v in trainer.ema.items()}
            path = save_atomic(ckpt, folder / "checkpoints" / f"{step:07d}.pt")
            log.info("saved %s%s", path, " (final)" if final else "")
        return export
    return make


@exits_on_errors
def main(argv: list[str] | None = None, fsdp: bool = False) -> None:
    args = build_parser(fsdp).parse_args(argv)
    if args.dry_run:
        from LlamaGen.plan import dry_run_finetune
        return dry_run_finetune(args, fsdp)
    check_args(args, int(os.environ.get("WORLD_SIZE", "1")), fsdp)
    if args.gpt_type == "t2i":
        dataset = t2i_dataset(args)
        policy = build_policy(args, fsdp, dataset.caption_dim)   # a bad checkpoint fails before any output
    else:
        dataset = CodeDataset(args.code_path, args.image_size, args.downsample_size, code_prefix(args.dataset))
        check_codes(dataset, args.vocab_size, args.code_path, args.num_classes)
        policy = build_policy(args, fsdp)
    dist = start_process()
    cdist.set_tf32(not args.no_tf32)
    folder, resume = run_dir(args, dist)
    if dist.is_main:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("cca")
    torch.manual_seed(args.global_seed * dist.world_size + dist.rank)
    if args.ref_eval_mode and not args.keep_dropout:
        log.warning("--ref-eval-mode without --keep_dropout switches off only the reference's label dropout (1e-5)")
    policy, reference, shard = place_models(policy, args, dist, fsdp, log)
    if dist.is_main:
        log.info("%s: %s parameters, %d code files, run folder %s", args.gpt_model,
                 f"{sum(p.numel() for p in policy.parameters()):,}", len(dataset), folder)
    cfg = train_config(args, dist.world_size, folder, resume, fsdp)
    weights = None if args.no_local_save or not fsdp else (lambda step: folder / "checkpoints" / f"{step:07d}.pt")
    adapter = T2IAdapter(cfg.batch_size) if args.gpt_type == "t2i" else LlamaGenAdapter(args.num_classes)
    finetune(policy, reference, adapter, dataset, cfg, dist,
             make_export=None if fsdp else exporter(args, folder, log), shard=shard, weights_path=weights)
