"""Sample a text-to-image LlamaGen GPT from a prompt file into one npz; one CPU/GPU process or several (torchrun).

    torchrun --nproc_per_node=8 LlamaGen/sample_t2i.py --prompts prompts.txt --gpt-model GPT-XL \
        --gpt-ckpt t2i_XL_stage2_512.pt --vq-ckpt vq_ds16_t2i.pt --image-size 512 --cfg-scale 7.5

--prompts: one prompt a line (blank lines skipped; ids 0, 1, ... in order), or a JSON list of {"id", "prompt"}.
Every prompt is drawn --samples-per-prompt times. Prompts are cleaned and encoded by T5 as
LlamaGen/extract_t5_features.py does it (same --t5-model-path / --t5-model-type convention; FLAN-T5-XL from the
Hugging Face hub by default), left-padded to --cls-token-num rows. ``--cfg-scale`` follows LlamaGen: 1 =
guidance-free (only the conditional rows run; a CCA fine-tune), above 1 = classifier-free guidance with the model's
learned null caption under each prompt's own mask.

Writes ``<sample-dir>/<run name>.npz``: ``arr_0`` uint8 (N, H, W, 3) in sample order, ``arr_1`` int64 prompt
index, ``ids`` and ``prompts`` (str, per sample), ``settings``; ``--save-png`` keeps ``<index>.png`` too. The
sample driver (cca/sample_driver.py: writer, per-batch seeds, PNGs, resume) and the GPT / VQ loading and decoding
(LlamaGen/family.py load_sampler) are those of LLamaGen_sample_ddp.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):   # run as a script: make the repository root importable instead of LlamaGen/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch

import LLamaGen_sample_ddp as c2i
from cca import dist as cdist
from cca.cli import exits_on_errors, start_process
from cca.errors import UsageError
from cca.plan import add_dry_run_args
from cca.sample_driver import SampleRun, sample_npz
from LlamaGen.captions import Caption, left_pad
from LlamaGen.extract_t5_features import HUB_REPOS, load_t5, t5_features, t5_folder
from LlamaGen.family import SampleSpec, load_sampler
from LlamaGen.gpt import GPT_SIZES


def read_prompts(path: str) -> tuple[list[str], list[str]]:
    """(ids, prompts) of a prompt file; one-line UsageError naming --prompts on anything unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompts {path}: cannot read it ({type(e).__name__})") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"--prompts {path}: not a JSON list ({e.msg} at line {e.lineno})") from None
        bad = next((i for i, it in enumerate(items) if not (isinstance(it, dict) and "id" in it
                                                           and isinstance(it.get("prompt"), str))), None)
        if bad is not None:
            raise UsageError(f"--prompts {path}: item {bad} is not {{\"id\": ..., \"prompt\": \"...\"}}")
        ids, prompts = [str(it["id"]) for it in items], [it["prompt"] for it in items]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        ids = [str(i) for i in range(len(prompts))]
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompts (one a line, or a JSON list of {{\"id\", \"prompt\"}})")
    if len(set(ids)) != len(ids):
        raise UsageError(f"--prompts {path}: ids must be unique")
    return ids, prompts


def encode_prompts(tokenizer, encoder, prompts: list[str], max_len: int, tokens: int,
                   device: torch.device, dtype: torch.dtype) -> Caption:
    """Prompts -> their T5 features left-padded to ``tokens`` rows: Caption (B, tokens, D), (B, tokens)."""
    feats = t5_features(tokenizer, encoder, prompts, max_len)                  # per prompt (1, n, D)
    longest, dim = max(f.shape[1] for f in feats), feats[0].shape[2]
    emb = torch.zeros(len(feats), longest, dim)                                # (B, S, D) right-padded
    mask = torch.zeros(len(feats), longest, dtype=torch.bool)
    for i, f in enumerate(feats):
        emb[i, :f.shape[1]] = torch.from_numpy(f[0])
        mask[i, :f.shape[1]] = True
    caption = left_pad(emb, mask, tokens=tokens)
    return Caption(caption.emb.to(device, dtype), caption.mask.to(device))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample_t2i.py", allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--prompts", required=True, help="prompt file: one a line, or a JSON list of {id, prompt}")
    p.add_argument("--samples-per-prompt", type=int, default=1)
    p.add_argument("--t5-model-path", default=None, help="local T5 folder (default: the hub, by --t5-model-type)")
    p.add_argument("--t5-model-type", choices=list(HUB_REPOS), default="flan-t5-xl")
    p.add_argument("--t5-feature-max-len", type=int, default=120, help="caption tokens (padding / truncation)")
    p.add_argument("--gpt-model", choices=list(GPT_SIZES), default="GPT-XL")
    p.add_argument("--gpt-ckpt", required=True, help="T2I GPT weights (released t2i_*.pt or a CCA fine-tune)")
    p.add_argument("--gpt-type", choices=["t2i"], default="t2i")
    p.add_argument("--cls-token-num", type=int, default=120, help="caption tokens of the model")
    c2i.add_model_flags(p, vq_ckpt="vq_ds16_t2i", image_size=512)
    p.add_argument("--image-size-eval", type=int, default=None, help="resize (bicubic) to this (default: none)")
    p.add_argument("--cfg-scale", type=float, default=7.5, help="1 = guidance-free (LlamaGen convention)")
    p.add_argument("--cfg-interval", type=float, default=-1, help="stop guiding after this decode step (-1: never)")
    p.add_argument("--sample-dir", default="samples_t2i")
    p.add_argument("--per-proc-batch-size", type=int, default=32)
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=1000, help="0: no top-k filtering")
    p.add_argument("--top-p", type=float, default=1.0, help="1: no nucleus filtering")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--save-png", action="store_true", help="also write <index>.png files")
    p.add_argument("--no-tf32", action="store_true", help="full float32 CUDA matmuls")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_dry_run_args(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    check_settings(args)
    c2i.check_checkpoints(args)


def check_settings(args: argparse.Namespace) -> None:
    """One-line errors for the flags but the files; fills in --image-size-eval and the builder's class count."""
    args.image_size_eval = args.image_size_eval or args.image_size
    args.num_classes = 1000          # read by the shared model builder; a T2I GPT has no class table
    for flag in ("samples_per_prompt", "t5_feature_max_len", "cls_token_num"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    c2i.check_settings(argparse.Namespace(**{**vars(args), "num_fid_samples": 1}))   # sizes, sampling


def run_name(args: argparse.Namespace) -> str:
    ckpt = Path(args.gpt_ckpt)
    ckpt_name = f"{ckpt.parent.parent.name}-{ckpt.stem}" if ckpt.parent.name == "checkpoints" else ckpt.stem
    return (f"{args.gpt_model}-{ckpt_name}-{Path(args.prompts).stem}-x{args.samples_per_prompt}-size-"
            f"{args.image_size}-size-{args.image_size_eval}-{args.vq_model}-topk-{args.top_k}-topp-{args.top_p}-"
            f"temperature-{args.temperature}-cfg-{args.cfg_scale}-seed-{args.global_seed}")


def sample_run(args: argparse.Namespace, ids: list[str], prompts: list[str], dtype: torch.dtype,
               t5_dir: Path) -> SampleRun:
    """Sample i draws prompt i // --samples-per-prompt; the prompts' text and the T5 model are in the settings,
    every sample's prompt id and text in the npz."""
    labels = np.repeat(np.arange(len(prompts), dtype=np.int64), args.samples_per_prompt)
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    settings = {**{k: v for k, v in vars(args).items() if k not in ("device", "per_proc_batch_size", "compile",
                                                                    "save_png", "no_tf32")},
                "prompts_sha256": digest, "t5": str(t5_dir.resolve()), "dtype": str(dtype)}
    return SampleRun(args.sample_dir, "--sample-dir", run_name(args), labels, args.per_proc_batch_size,
                     args.global_seed, settings, png=args.save_png,
                     extra={"ids": np.array(ids)[labels], "prompts": np.array(prompts)[labels]})


def load(args: argparse.Namespace, prompts: list[str], t5_dir: Path, device: torch.device, dtype: torch.dtype):
    """The sample function: T5 and the GPT loaded; prompt indices -> their captions -> images."""
    tokenizer, encoder = load_t5(t5_dir, dtype, device)
    spec = SampleSpec(args.gpt_model, args.gpt_ckpt, args.vq_model, args.vq_ckpt, args.codebook_size,
                      args.codebook_embed_dim, args.image_size, args.image_size_eval, args.downsample_size,
                      args.num_classes, gpt_type="t2i", cls_token_num=args.cls_token_num,
                      caption_dim=encoder.config.d_model)

    def captions_of(labels: torch.Tensor) -> Caption:
        return encode_prompts(tokenizer, encoder, [prompts[i] for i in labels.tolist()], args.t5_feature_max_len,
                              args.cls_token_num, device, dtype)
    return load_sampler(spec, device, dtype, compile=args.compile or (args.compile is None and device.type == "cuda"),
                        cfg_scale=args.cfg_scale, cfg_interval=int(args.cfg_interval), temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, condition=captions_of)


@exits_on_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        from LlamaGen.plan_t2i import dry_run_sample_t2i
        check_settings(args)
        return dry_run_sample_t2i(args)
    check_args(args)
    ids, prompts = read_prompts(args.prompts)
    t5_dir = t5_folder(args.t5_model_path, args.t5_model_type)     # the offline error comes before any model
    dist = start_process(args.device)
    cdist.set_tf32(not args.no_tf32)
    dtype = c2i.weights_dtype(args.precision, dist.device)
    path = sample_npz(sample_run(args, ids, prompts, dtype, t5_dir), dist,
                      lambda: load(args, prompts, t5_dir, dist.device, dtype))
    if path is not None:
        print(f"saved {path}: {len(ids) * args.samples_per_prompt} images of {len(prompts)} prompts")


if __name__ == "__main__":
    main()
