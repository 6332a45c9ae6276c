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
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cca import dist as cdist
from cca.checkpoint import check_writable_dir, require_checkpoint
from cca.compiling import compile_blocks
from cca.plan import add_dry_run_args
from cca.sampling import ShardedNpzWriter, balanced_labels, random_labels, to_uint8_nhwc
from LlamaGen.checkpoints import build_gpt, load_gpt_weights, load_vq
from LlamaGen.generate import generate
from LlamaGen.gpt import GPT_SIZES
from LlamaGen.vq_model import VQ_models

PRECISIONS = {"none": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="LLamaGen_sample_ddp.py", allow_abbrev=False,
                                description=__doc__.splitlines()[0])
    p.add_argument("--gpt-model", choices=list(GPT_SIZES), default="GPT-B")
    p.add_argument("--gpt-ckpt", "--ckpt_path", dest="gpt_ckpt", required=True,
                   help="GPT weights: {'model': ...} (DDP / fine-tunes) or a raw state dict (FSDP releases)")
    p.add_argument("--gpt-type", choices=["c2i"], default="c2i")
    p.add_argument("--from-fsdp", action="store_true", help="accepted for compatibility; the format is detected")
    p.add_argument("--cls-token-num", type=int, choices=[1], default=1)
    p.add_argument("--precision", choices=["auto", "none", "fp16", "bf16"], default="auto",
                   help="GPT weights dtype; auto: bf16 on GPU, none (fp32) on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the GPT blocks (default: on GPU only)")
    p.add_argument("--vq-model", choices=list(VQ_models), default="VQ-16")
    p.add_argument("--vq-ckpt", default="vq_ds16_c2i", help="tokenizer (file, release name or hf://)")
    p.add_argument("--codebook-size", type=int, default=16384)
    p.add_argument("--codebook-embed-dim", type=int, default=8)
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--image-size-eval", type=int, default=256, help="images are resized (bicubic) to this")
    p.add_argument("--downsample-size", type=int, choices=[8, 16], default=16)
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
    for flag, path in (("--vq-ckpt", args.vq_ckpt), ("--gpt-ckpt/--ckpt_path", args.gpt_ckpt)):
        require_checkpoint(path, flag)
    if args.image_size <= 0 or args.image_size % args.downsample_size:
        raise SystemExit(f"--image-size {args.image_size} must be a positive multiple of --downsample-size "
                         f"{args.downsample_size}")
    for flag, value in (("--per-proc-batch-size", args.per_proc_batch_size), ("--num-fid-samples",
                        args.num_fid_samples), ("--image-size-eval", args.image_size_eval)):
        if value < 1:
            raise SystemExit(f"{flag} must be >= 1, got {value}")
    if args.cfg_scale < 1.0:
        raise SystemExit(f"--cfg-scale must be >= 1 (1 = guidance-free), got {args.cfg_scale}")
    if not 0.0 < args.top_p <= 1.0 or args.temperature <= 0 or args.top_k < 0:
        raise SystemExit("--top-p must be in (0, 1], --temperature > 0, --top-k >= 0")


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


def make_writer(args: argparse.Namespace, name: str, dist: cdist.Dist, dtype: torch.dtype) -> ShardedNpzWriter:
    """The npz writer: every sample index's class (uniform draws, or balanced), in index order, with the settings."""
    draw = balanced_labels if args.balanced_labels else random_labels
    labels = draw(args.num_fid_samples, args.num_classes, seed=args.global_seed)
    return ShardedNpzWriter(args.sample_dir, name, labels, rank=dist.rank, world=dist.world_size,
                            batch_size=args.per_proc_batch_size, shuffle_seed=None,
                            settings=sample_settings(args, dtype))


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """--precision -> the GPT's dtype (auto: bf16 on GPU, float32 on CPU)."""
    return PRECISIONS[("bf16" if device.type == "cuda" else "none") if precision == "auto" else precision]


def load_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, **gpt_kwargs):
    """(VQ decoder, GPT in eval mode in ``dtype``, compiled per block on GPU unless --no-compile) from the flags;
    ``gpt_kwargs`` go to ``build_gpt`` (the text-to-image sampler's gpt_type / cls_token_num / caption_dim)."""
    vq = load_vq(args.vq_ckpt, args.vq_model, args.codebook_size, args.codebook_embed_dim, device)
    if vq.downsample != args.downsample_size:
        raise SystemExit(f"--downsample-size {args.downsample_size}: the tokenizer downsamples by {vq.downsample}")
    gpt = build_gpt(args.gpt_model, vocab_size=args.codebook_size, image_size=args.image_size,
                    downsample_size=args.downsample_size, num_classes=args.num_classes, device="meta", **gpt_kwargs)
    load_gpt_weights(gpt, args.gpt_ckpt, flag="--gpt-ckpt/--ckpt_path")
    gpt = gpt.to(device=device, dtype=dtype).eval()
    if args.compile or (args.compile is None and device.type == "cuda"):
        compile_blocks(gpt.layers, device)
    return vq, gpt


def write_samples(args: argparse.Namespace, writer: ShardedNpzWriter, gpt, vq, condition_of: Callable,
                  png_dir: Path, dist: cdist.Dist) -> None:
    """This rank's pending batches: conditions of the global indices (``condition_of``) -> tokens (seeded by the
    batch's first index) -> decoded, resized, uint8 -> the writer (and <index>.png files with --save-png)."""
    latent = args.image_size // args.downsample_size
    if args.save_png:
        png_dir.mkdir(parents=True, exist_ok=True)
    batches = list(writer.pending_batches())
    if dist.is_main:
        print(f"sampling {writer.num_samples} images ({writer.num_pending()} left on rank 0) with "
              f"{dist.world_size} process(es) into {writer.npz_path}")
    from tqdm import tqdm
    for indices in tqdm(batches, desc="sampling", disable=not dist.is_main, dynamic_ncols=True):
        gen = torch.Generator(device=dist.device).manual_seed(args.global_seed * 1_000_003 + int(indices[0]))
        tokens = generate(gpt, condition_of(indices), latent ** 2, cfg_scale=args.cfg_scale,
                          cfg_interval=int(args.cfg_interval), temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, generator=gen)
        images = vq.decode_code(tokens, [len(indices), args.codebook_embed_dim, latent, latent])   # (b, 3, H, W)
        if args.image_size_eval != args.image_size:
            images = F.interpolate(images, size=(args.image_size_eval,) * 2, mode="bicubic")
        pixels = to_uint8_nhwc(images, value_range=(-1.0, 1.0))                    # (b, H, W, 3) uint8
        writer.save_batch(indices, pixels)
        if args.save_png:
            from PIL import Image
            for i, img in zip(indices, pixels):
                Image.fromarray(img).save(png_dir / f"{int(i):06d}.png")


@torch.no_grad()   # scoped: a caller's grad mode is back after main returns or raises (not a global switch)
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        from LlamaGen.plan import dry_run_sample
        return dry_run_sample(args)
    check_args(args)
    dist = cdist.init(args.device)
    cdist.set_tf32(not args.no_tf32)
    if dist.is_main:      # before any model is loaded
        check_writable_dir(args.sample_dir, "--sample-dir")
    cdist.barrier()
    device = dist.device
    dtype = weights_dtype(args.precision, device)

    name = run_name(args)
    writer = make_writer(args, name, dist, dtype)
    labels = writer.labels
    if writer.finished():
        if dist.is_main:
            print(f"{writer.npz_path} already exists (same settings); nothing to do")
        return

    vq, gpt = load_models(args, device, dtype)
    write_samples(args, writer, gpt, vq, lambda indices: torch.from_numpy(labels[indices]).to(device),
                  Path(args.sample_dir) / name, dist)
    cdist.barrier()
    if dist.is_main:
        path = writer.finalize()
        with np.load(path) as npz:
            print(f"saved {path} arr_0 {npz['arr_0'].shape} {npz['arr_0'].dtype}, arr_1 {npz['arr_1'].shape}")
    cdist.barrier()
    cdist.cleanup()


if __name__ == "__main__":
    main()
