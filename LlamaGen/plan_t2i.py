"""The text-to-image side of LlamaGen's dry-run planner (LlamaGen/plan.py): the fine-tune's caption data counted,
and the prompt sampler (LlamaGen/sample_t2i.py), which keeps its T5 encoder on the GPU beside the GPT while it
samples (it encodes each batch's prompts), in the GPT's dtype. Nothing is downloaded or allocated: the encoder is
built on the meta device from --t5-model-path's config.json, else from the published config of --t5-model-type.
"""
from __future__ import annotations

import argparse
import os

import torch

from cca import plan
from cca.errors import UsageError
from LlamaGen.extract_t5_features import HUB_REPOS, t5_folder
from LlamaGen.plan import CAPTION_DIM, sampling_setup

# the encoder sizes of the hub models --t5-model-type names (their config.json files)
T5_CONFIGS = {"flan-t5-xl": dict(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24),
              "t5-v1_1-xl": dict(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24),
              "t5-v1_1-xxl": dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24)}


def t2i_data_size(args: argparse.Namespace) -> tuple[tuple[int, str], int]:
    """((records with codes and features, where that came from), caption width) of the fine-tune's T2I flags:
    counted as the fine-tune opens its data when the three folders exist, else ImageNet's size and FLAN-T5-XL's
    width, said so."""
    from LlamaGen.t2i_data import open_t2i_data
    folders = (("--data-path", args.data_path), ("--code-path", args.code_path), ("--t5-feat-path", args.t5_feat_path))
    missing = [f"{flag} {path}" for flag, path in folders if not os.path.isdir(path)]
    if missing:
        return (plan.IMAGENET_TRAIN_IMAGES, f"{', '.join(missing)} not found: assuming ImageNet's "
                f"{plan.IMAGENET_TRAIN_IMAGES:,} images and {CAPTION_DIM}-d caption features "
                f"(FLAN-T5-XL)"), CAPTION_DIM
    data = open_t2i_data(args)
    return (len(data), f"{len(data):,} training items in --data-path {args.data_path} (of {data.listed:,} listed; "
            f"{data.caption_dim}-d caption features)"), data.caption_dim


def meta_t5(model_path: str | None, model_type: str) -> tuple[torch.nn.Module, str]:
    """(the T5 encoder on the meta device, where its config came from)."""
    try:
        from transformers import T5Config, T5EncoderModel
    except ImportError:
        raise UsageError("sample_t2i.py needs transformers: pip install -r requirements.txt") from None
    if model_path is not None:
        folder = t5_folder(model_path, model_type)
        config, source = T5Config.from_pretrained(str(folder)), f"{folder}/config.json"
    else:
        config = T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", **T5_CONFIGS[model_type])
        source = f"{HUB_REPOS[model_type]}'s published config"
    with torch.device("meta"):
        return T5EncoderModel(config), source


def prompt_count(args: argparse.Namespace) -> tuple[int, str]:
    """(samples to draw, a line saying so): --prompts' prompts x --samples-per-prompt, or one batch per process
    when the prompt file is not there."""
    from LlamaGen.sample_t2i import read_prompts
    world, _ = plan.plan_world(args)
    if os.path.exists(args.prompts):
        n = len(read_prompts(args.prompts)[1])
        return n * args.samples_per_prompt, f"{n:,} prompts in --prompts {args.prompts} x {args.samples_per_prompt}"
    return world * args.per_proc_batch_size, f"--prompts {args.prompts} not found: planning one batch per process"


def dry_run_sample_t2i(args: argparse.Namespace) -> None:
    """Print the plan of sample_t2i.py's (checked) flags."""
    world, _ = plan.plan_world(args)
    samples, prompts = prompt_count(args)
    encoder, source = meta_t5(args.t5_model_path, args.t5_model_type)
    e = plan.FP32 if args.precision == "none" else plan.HALF
    t5_params = sum(p.numel() for p in encoder.parameters())
    setup = sampling_setup(args, world, samples, caption_dim=encoder.config.d_model, encoder_bytes=e * t5_params)
    plan.print_sampling(setup, title=f"sample_t2i.py: {args.gpt_model} t2i at {args.image_size} px, cfg-scale "
                        f"{args.cfg_scale:g}; {prompts}; T5 encoder {args.t5_model_type} ({t5_params:,} parameters "
                        f"from {source}, {encoder.config.d_model}-d captions) held with the GPT",
                        gpu_mem=args.gpu_mem)
