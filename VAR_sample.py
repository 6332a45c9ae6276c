"""Sample class-conditional images from a VAR checkpoint into one npz for FID / IS evaluation.

    python VAR_sample.py --cfg=0.0 --ckpt_path=/path/to/var_d20.pth --vae_ckpt=./vae_ch160v4096z32.pth --depth 20
    torchrun --nproc_per_node=8 VAR_sample.py ...        (shards the samples over processes)

--cfg follows VAR's convention: 0 means no guidance (and then only the conditional half is computed), larger
values guide with a strength ramping linearly over the scales (default 1.0, the original's; CCA models: 0).
Writes <sample_dir>/<name>.npz with ``arr_0`` uint8 (N, H, W, 3) in the original's shuffled order, ``arr_1``
the labels in the same order and ``settings``; N = num_classes x num_per_class, generated class by class.
Pixels are x·255 cut to uint8 as originally (--round_uint8 1 rounds). Finished batches are kept under
<sample_dir>/<name>.parts/, so a rerun continues where a killed run stopped and never produces an index twice; a
rerun with other settings is refused.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch

from cca import dist as cdist
from cca.cli import exits_on_errors, start_process
from cca.errors import UsageError
from cca.plan import add_dry_run_args
from cca.sample_driver import SampleRun, sample_npz
from VAR.build import PATCH_NUMS_256, pn_flag
from VAR.family import VARSpec, load_sampler
from VAR_finetune import flag_bool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="VAR_sample.py", description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--ckpt_path", required=True, help="VAR weights (released, CCA release, or ar-ckpt-last.pth)")
    p.add_argument("--vae_ckpt", default="vae_ch160v4096z32", help="VQVAE weights (file, release name or hf://)")
    p.add_argument("--cfg", type=float, default=1.0, help="guidance strength, VAR convention (0: none)")
    p.add_argument("--depth", type=int, default=16, help="VAR depth of --ckpt_path (16, 20, 24, 30 released)")
    p.add_argument("--sample_dir", default="./samples", help="where the npz (and .parts/, PNGs) go")
    p.add_argument("--num_per_class", type=int, default=50, help="samples per class")
    p.add_argument("--num_classes", type=int, default=1000, help="classes of the model")
    p.add_argument("--batch_size", type=int, default=25, help="images per forward, per process")
    p.add_argument("--top_k", type=int, default=900, help="top-k filtering (0: off)")
    p.add_argument("--top_p", type=float, default=0.96, help="nucleus filtering (0: off)")
    p.add_argument("--more_smooth", action="store_true", help="Gumbel-softmax soft codes (visualisation only)")
    p.add_argument("--seed", type=int, default=1, help="sampling seed (also fixes the npz order)")
    p.add_argument("--png", action="store_true", help="also write one PNG per sample")
    p.add_argument("--round_uint8", type=flag_bool, default=False,
                   help="round pixels to the nearest level (the original cuts x·255, half a level darker)")
    p.add_argument("--tf32", type=flag_bool, default=True, help="TensorFloat-32 float32 matmuls on CUDA")
    p.add_argument("--pn", default=pn_flag(PATCH_NUMS_256), help="patch nums of the model (256, 512 or 1_2_3_...)")
    p.add_argument("--saln", type=flag_bool, default=False, help="shared AdaLN (1 for d36-s: --depth 36 --pn 512)")
    p.add_argument("--vae_ch", type=int, default=160, help="VQVAE base width")
    p.add_argument("--vae_V", type=int, default=4096, help="VQVAE codebook size")
    p.add_argument("--vae_Cvae", type=int, default=32, help="VQVAE code width")
    add_dry_run_args(p)
    return p


def run_name(args: argparse.Namespace) -> str:
    parts = Path(args.ckpt_path).with_suffix("").parts[-2:]
    stem = re.sub(r"[^\w\-+.]", "_", "-".join(parts))
    return (f"d{args.depth}-{stem}-cfg-{args.cfg:g}-topk{args.top_k}-topp{args.top_p:g}-seed-{args.seed}-"
            f"{args.num_classes}x{args.num_per_class}")


def sample_settings(args: argparse.Namespace) -> dict:
    """What decides the samples (recorded with them; a rerun with other values is refused)."""
    keys = ("depth", "pn", "saln", "num_classes", "num_per_class", "cfg", "top_k", "top_p", "more_smooth", "seed",
            "round_uint8")
    paths = {k: str(Path(getattr(args, k)).resolve()) for k in ("ckpt_path", "vae_ckpt")
             if not str(getattr(args, k)).startswith("hf://")}
    return {**{k: getattr(args, k) for k in keys}, "ckpt_path": args.ckpt_path, "vae_ckpt": args.vae_ckpt, **paths}


def check_args(args: argparse.Namespace) -> None:
    from cca.checkpoint import require_checkpoint
    for flag, value in (("--depth", args.depth), ("--num_per_class", args.num_per_class),
                        ("--num_classes", args.num_classes), ("--batch_size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag}: must be a positive integer, got {value}")
    if args.top_k < 0 or not 0.0 <= args.top_p <= 1.0:
        raise UsageError(f"--top_k must be >= 0 and --top_p in [0, 1], got {args.top_k} / {args.top_p}")
    for flag, path in (("--ckpt_path", args.ckpt_path), ("--vae_ckpt", args.vae_ckpt)):
        require_checkpoint(path, flag)


@exits_on_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        from VAR.plan import dry_run_sample
        return dry_run_sample(args)
    spec = VARSpec.from_args(args)
    check_args(args)
    dist = start_process()
    cdist.set_tf32(args.tf32)
    torch.backends.cudnn.deterministic = True        # as the original sampler
    labels = np.repeat(np.arange(args.num_classes, dtype=np.int64), args.num_per_class)   # index -> class
    run = SampleRun(args.sample_dir, "--sample_dir", run_name(args), labels, args.batch_size, args.seed,
                    sample_settings(args), shuffle_seed=args.seed, png=args.png,
                    say=lambda text: print(f"[VAR_sample] {text}", flush=True))
    path = sample_npz(run, dist, lambda: load_sampler(spec, args.ckpt_path, dist.device, cfg=args.cfg,
                                                      top_k=args.top_k, top_p=args.top_p,
                                                      more_smooth=args.more_smooth, round_uint8=args.round_uint8))
    if path is not None:
        run.say(f"wrote {path} ({len(labels)} images, cfg {args.cfg:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
