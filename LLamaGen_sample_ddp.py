"""Sample a LlamaGen GPT into one npz for FID / IS evaluation; one CPU/GPU process or several under torchrun.

    torchrun --nproc_per_node=8 LLamaGen_sample_ddp.py --vq-ckpt=vq_ds16_c2i.pt --ckpt_path=c2i_XL_384.pt \
        --gpt-model=GPT-XL --image-size=384 --image-size-eval=256 --per-proc-batch-size=48 --cfg-scale=1.0 \
        --num-fid-samples=50000

Writes ``<sample-dir>/<run name>.npz`` with ``arr_0`` uint8 (N, H, W, 3) in sample-index order, ``arr_1`` int64
labels (drawn uniformly per sample as originally; ``--balanced-labels``: every class equally often) and
``settings``, without a PNG round trip (``--save-png`` keeps PNGs too). Pixels are the original's
``clamp(127.5 x + 128, 0, 255)`` cut to uint8. Finished batches are kept under ``<run name>.parts/``: rerunning the
same command resumes; a rerun with other settings is refused. ``--cfg-scale 1`` is guidance-free (half the cost
of guided sampling: only the conditional rows run).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cca import dist as cdist
from cca.checkpoint import require_checkpoint
from cca.cli import exits_on_errors, start_process
from cca.errors import UsageError
from cca.plan import add_dry_run_args
from cca.sample_driver import SampleRun, sample_npz
from cca.sampling import balanced_labels, random_labels
from LlamaGen.family import SampleSpec, load_sampler
from LlamaGen.gpt import GPT_SIZES
from LlamaGen.vq_model import VQ_models

PRECISIONS = {"none": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_model_flags(p: argparse.ArgumentParser, vq_ckpt: str, image_size: int) -> None:
    """The weights' dtype, compiling, tokenizer and image size flags (also those of LlamaGen/sample_t2i.py)."""
    p.add_argument("--precision", choices=["auto", "none", "fp16", "bf16"], default="auto",
                   help="GPT (t2i: and T5) weights dtype; auto: bf16 on GPU, none (fp32) on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the GPT blocks (default: on GPU only)")
    p.add_argument("--vq-model", choices=list(VQ_models), default="VQ-16")
    p.add_argument("--vq-ckpt", default=vq_ckpt, help="tokenizer (file, release name or hf://)")
    p.add_argument("--codebook-size", type=int, default=16384)
    p.add_argument("--codebook-embed-dim", type=int, default=8)
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--downsample-size", type=int, choices=[8, 16], default=16)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="LLamaGen_sample_ddp.py", allow_abbrev=False,
                                description=__doc__.splitlines()[0])
    p.add_argument("--gpt-model", choices=list(GPT_SIZES), default="GPT-B")
    p.add_argument("--gpt-ckpt", "--ckpt_path", dest="gpt_ckpt", required=True,
                   help="GPT weights: {'model': ...} (DDP / fine-tunes) or a raw state dict (FSDP releases)")
    p.add_argument("--gpt-type", choices=["c2i"], default="c2i")
    p.add_argument("--from-fsdp", action="store_true", help="accepted for compatibility; the format is detected")
    p.add_argument("--cls-token-num", type=int, choices=[1], default=1)
    add_model_flags(p, vq_ckpt="vq_ds16_c2i", image_size=384)
    p.add_argument("--image-size-eval", type=int, default=256, help="images are resized (bicubic) to this")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--cfg-scale", type=float, default=1.5, help="1 = guidance-free (LlamaGen convention)")
    p.add_argument("--cfg-interval", type=float, default=-1, help="stop guiding after this decode step (-1: never)")
    p.add_argument("--sample-dir", default="samples")
    p.add_argument("--per-proc-batch-size", type=int, default=32)
    p.add_argument("--num-fid-samples", type=int, default=50000)
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k filtering")
    p.add_argument("--top-p", type=float, default=1.0, help="1: no nucleus filtering")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--balanced-labels", action="store_true",
                   help="every class equally often (the original draws each sample's class uniformly at random)")
    p.add_argument("--save-png", action="store_true", help="also write <index>.png files")
    p.add_argument("--no-tf32", action="store_true", help="full float32 CUDA matmuls (the original allows TF32)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_dry_run_args(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    check_checkpoints(args)
    check_settings(args)


def check_checkpoints(args: argparse.Namespace) -> None:
    for flag, path in (("--vq-ckpt", args.vq_ckpt), ("--gpt-ckpt/--ckpt_path", args.gpt_ckpt)):
        require_checkpoint(path, flag)


def check_settings(args: argparse.Namespace) -> None:
    """One-line errors for the sizes and sampling flags (everything but the files)."""
    if args.image_size <= 0 or args.image_size % args.downsample_size:
        raise UsageError(f"--image-size {args.image_size} must be a positive multiple of --downsample-size "
                         f"{args.downsample_size}")
    for flag, value in (("--per-proc-batch-size", args.per_proc_batch_size), ("--num-fid-samples",
                        args.num_fid_samples), ("--image-size-eval", args.image_size_eval)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.cfg_scale < 1.0:
        raise UsageError(f"--cfg-scale must be >= 1 (1 = guidance-free), got {args.cfg_scale}")
    if not 0.0 < args.top_p <= 1.0 or args.temperature <= 0 or args.top_k < 0:
        raise UsageError("--top-p must be in (0, 1], --temperature > 0, --top-k >= 0")


def run_name(args: argparse.Namespace) -> str:
    ckpt = Path(args.gpt_ckpt)
    ckpt_name = f"{ckpt.parent.parent.name}-{ckpt.stem}" if ckpt.parent.name == "checkpoints" else ckpt.stem
    return (f"{args.gpt_model}-{ckpt_name}-size-{args.image_size}-size-{args.image_size_eval}-{args.vq_model}-"
            f"topk-{args.top_k}-topp-{args.top_p}-temperature-{args.temperature}-cfg-{args.cfg_scale}-"
            f"seed-{args.global_seed}-n{args.num_fid_samples}" + ("-balanced" if args.balanced_labels else ""))


def sample_settings(args: argparse.Namespace, dtype: torch.dtype) -> dict:
    """What decides the samples (recorded with them; a rerun with other values is refused)."""
    keys = ("gpt_model", "vq_model", "codebook_size", "codebook_embed_dim", "image_size", "image_size_eval",
            "downsample_size", "num_classes", "cfg_scale", "cfg_interval", "num_fid_samples", "global_seed", "top_k",
            "top_p", "temperature", "balanced_labels")
    paths = {k: str(Path(getattr(args, k)).resolve()) if not str(getattr(args, k)).startswith("hf://")
             else getattr(args, k) for k in ("gpt_ckpt", "vq_ckpt")}
    return {**{k: getattr(args, k) for k in keys}, **paths, "dtype": str(dtype)}


def sample_run(args: argparse.Namespace, dtype: torch.dtype) -> SampleRun:
    """Every sample index's class (uniform draws, or balanced) in index order, with the settings."""
    draw = balanced_labels if args.balanced_labels else random_labels
    labels = draw(args.num_fid_samples, args.num_classes, seed=args.global_seed)
    return SampleRun(args.sample_dir, "--sample-dir", run_name(args), labels, args.per_proc_batch_size,
                     args.global_seed, sample_settings(args, dtype), png=args.save_png)


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """--precision -> the GPT's dtype (auto: bf16 on GPU, float32 on CPU)."""
    return PRECISIONS[("bf16" if device.type == "cuda" else "none") if precision == "auto" else precision]


@exits_on_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        from LlamaGen.plan import dry_run_sample
        return dry_run_sample(args)
    check_args(args)
    dist = start_process(args.device)
    cdist.set_tf32(not args.no_tf32)
    device = dist.device
    dtype = weights_dtype(args.precision, device)
    spec = SampleSpec(args.gpt_model, args.gpt_ckpt, args.vq_model, args.vq_ckpt, args.codebook_size,
                      args.codebook_embed_dim, args.image_size, args.image_size_eval, args.downsample_size,
                      args.num_classes, flag="--gpt-ckpt/--ckpt_path")
    compile = args.compile or (args.compile is None and device.type == "cuda")
    path = sample_npz(sample_run(args, dtype), dist, lambda: load_sampler(
        spec, device, dtype, compile=compile, cfg_scale=args.cfg_scale, cfg_interval=int(args.cfg_interval),
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p))
    if path is not None:
        with np.load(path) as npz:
            print(f"saved {path} arr_0 {npz['arr_0'].shape} {npz['arr_0'].dtype}, arr_1 {npz['arr_1'].shape}")


if __name__ == "__main__":
    main()
