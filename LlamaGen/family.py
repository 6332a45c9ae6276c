"""The LlamaGen family behind the shared drivers (cca/finetune_driver.py, cca/sample_driver.py) and the demo.

Models come from LlamaGen/checkpoints.py (GPT sizes, strict loads); here: the frozen reference next to the
policy, the trainer adapter and the sample function. LlamaGen's guidance convention: --cfg-scale 1 is
guidance-free (only the conditional rows run); --cfg-interval stops guiding after a decode step.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cca.compiling import compile_blocks, eager_fallback_on_errors
from cca.errors import UsageError
from cca.fixture_kinds import register_fixture_kinds
from cca.sample_driver import SampleFn
from cca.sampling import to_uint8_nhwc

from .adapter import LlamaGenAdapter
from .checkpoints import build_gpt, load_gpt_weights, load_vq
from .generate import generate
from .gpt import Transformer

NAME = "llamagen"
GUIDANCE_FREE_CFG_SCALE = 1.0    # --cfg-scale of a guidance-free sample

register_fixture_kinds({"llamagen_vq": "LlamaGen.parity:llamagen_vq", "llamagen_gpt": "LlamaGen.parity:llamagen_gpt",
                        "llamagen_t2i_gpt": "LlamaGen.parity:llamagen_t2i_gpt",
                        "cca_step_llamagen": "LlamaGen.step_parity:cca_step_llamagen"})


def adapter_for(model: Transformer) -> LlamaGenAdapter:
    return LlamaGenAdapter(num_classes=model.num_classes)


def compile_gpt_blocks(models: list[Transformer], device: torch.device, log: logging.Logger | None = None) -> None:
    """torch.compile every block of ``models``; a block that fails to compile runs eagerly (a process-wide
    choice of the command line that asks for compiling)."""
    eager_fallback_on_errors()
    compile_blocks([block for m in models for block in m.layers], device, log)


def with_reference(policy: Transformer, device: torch.device, *, compile: bool, log: logging.Logger,
                   reference_dtype: torch.dtype = torch.float32,
                   shard_reference: Callable[[nn.Module], nn.Module] | None = None) -> tuple[Transformer, nn.Module]:
    """(policy in float32, frozen reference copy in ``reference_dtype``) on ``device``, compiled per block when
    asked; the reference sharded by ``shard_reference`` under FSDP (the fine-tune driver shards the policy)."""
    reference = copy.deepcopy(policy).requires_grad_(False)     # a separate copy, never updated
    policy, reference = policy.to(device).float(), reference.to(device, reference_dtype)
    if compile:
        compile_gpt_blocks([policy, reference], device, log)
    return policy, reference if shard_reference is None else shard_reference(reference)


@dataclass(frozen=True)
class SampleSpec:
    gpt_model: str
    gpt_ckpt: str
    vq_model: str
    vq_ckpt: str
    codebook_size: int
    codebook_embed_dim: int
    image_size: int
    image_size_eval: int
    downsample_size: int
    num_classes: int
    flag: str = "--gpt-ckpt"      # names the GPT checkpoint in errors
    gpt_type: str = "c2i"         # t2i: caption-conditioned, with the two fields below
    cls_token_num: int | None = None
    caption_dim: int = 2048


def load_sampler(spec: SampleSpec, device: torch.device, dtype: torch.dtype, *, compile: bool, cfg_scale: float,
                 cfg_interval: int, temperature: float, top_k: int, top_p: float,
                 condition: Callable[[torch.Tensor], object] | None = None) -> SampleFn:
    """The sample function of --gpt-ckpt decoded by --vq-ckpt: labels, batch seed -> uint8 images
    (``clamp(127.5 x + 128, 0, 255)`` cut, as the original), resized (bicubic) to --image-size-eval.
    ``condition``: labels -> what the GPT is conditioned on (default: the labels; t2i: their captions)."""
    vq = load_vq(spec.vq_ckpt, spec.vq_model, spec.codebook_size, spec.codebook_embed_dim, device)
    if vq.downsample != spec.downsample_size:
        raise UsageError(f"--downsample-size {spec.downsample_size}: the tokenizer downsamples by {vq.downsample}")
    gpt = build_gpt(spec.gpt_model, vocab_size=spec.codebook_size, image_size=spec.image_size,
                    downsample_size=spec.downsample_size, num_classes=spec.num_classes, device="meta",
                    gpt_type=spec.gpt_type, cls_token_num=spec.cls_token_num, caption_dim=spec.caption_dim)
    load_gpt_weights(gpt, spec.gpt_ckpt, flag=spec.flag)
    gpt = gpt.to(device=device, dtype=dtype).eval()
    if compile:
        compile_gpt_blocks([gpt], device)
    latent = spec.image_size // spec.downsample_size

    @torch.no_grad()
    def sample(labels: torch.Tensor, seed: int) -> np.ndarray:
        gen = torch.Generator(device=device).manual_seed(seed)
        cond = labels if condition is None else condition(labels)
        tokens = generate(gpt, cond, latent ** 2, cfg_scale=cfg_scale, cfg_interval=cfg_interval,
                          temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
        images = vq.decode_code(tokens, [len(labels), spec.codebook_embed_dim, latent, latent])   # (b, 3, H, W)
        if spec.image_size_eval != spec.image_size:
            images = F.interpolate(images, size=(spec.image_size_eval,) * 2, mode="bicubic")
        return to_uint8_nhwc(images, value_range=(-1.0, 1.0))                      # (b, H, W, 3) uint8
    return sample
