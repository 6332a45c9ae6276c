"""What differs between the two families in the miniature, behind one small interface the pipeline drives.

For each family: build / train / encode with its tokenizer, build and pretrain its AR model, and, from the
family's own module (VAR/family.py, LlamaGen/family.py, which the fine-tune and sample scripts use too), its name,
guidance-free value and trainer adapter with the dataset that adapter expects; its sampler with the family's
guidance convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from demo import pretrain, tokenizers
from demo.config import FamilyConfig
from demo.data import CodeLabelDataset, ImageLabelDataset, Split
from demo.samplers import SampleFn, llamagen_sampler, var_sampler
from LlamaGen import family as llamagen_family
from VAR import family as var_family


@dataclass
class Family:
    name: str
    guidance_free_cfg: float                           # LlamaGen: scale 1; VAR: cfg 0
    build_tokenizer: Callable[[FamilyConfig], nn.Module]
    train_tokenizer: Callable[..., dict]
    encode: Callable[[nn.Module, torch.Tensor], torch.Tensor]        # images -> (N, L) codes
    decode: Callable[[nn.Module, torch.Tensor], torch.Tensor]        # codes -> images in [-1, 1]
    build_ar: Callable[[FamilyConfig, nn.Module], nn.Module]
    ar_loss: Callable
    adapter_and_dataset: Callable[[nn.Module, Split, torch.Tensor], tuple]
    sampler: Callable[[nn.Module, nn.Module, float], tuple[SampleFn, Callable]]   # (images, tokens only)


def _llamagen_tokenizer(fc: FamilyConfig) -> nn.Module:
    t = fc.tokenizer
    return tokenizers.build_llamagen_vq(t.vocab_size, t.ch, t.ch_mult, t.num_res_blocks, t.z_channels)


def _grid_of(vq, image_size: int) -> int:
    return image_size // vq.downsample


def _build_llamagen_ar(fc: FamilyConfig, vq: nn.Module, image_size: int = 16) -> nn.Module:
    a = fc.ar
    return pretrain.build_llamagen_gpt(vocab_size=fc.tokenizer.vocab_size, grid=_grid_of(vq, image_size), dim=a.dim,
                                       n_layer=a.n_layer, n_head=a.n_head, label_dropout=a.label_dropout)


def _llamagen_adapter(model: nn.Module, split: Split, codes: torch.Tensor):
    # the fine-tune script trains on pre-extracted codes (LlamaGen.codes.CodeDataset): (codes (L,), label)
    return llamagen_family.adapter_for(model), CodeLabelDataset(codes, torch.from_numpy(split.labels))


def _var_tokenizer(fc: FamilyConfig) -> nn.Module:
    t = fc.tokenizer
    return tokenizers.build_var_vqvae(t.vocab_size, t.z_channels, t.ch, t.ch_mult, t.num_res_blocks, t.patch_nums)


def _build_var_ar(fc: FamilyConfig, vae: nn.Module, image_size: int = 16) -> nn.Module:
    a = fc.ar
    return pretrain.build_var_model(vae, depth=a.n_layer, embed_dim=a.dim, num_heads=a.n_head,
                                    label_dropout=a.label_dropout)


def _var_adapter(model: nn.Module, split: Split, codes: torch.Tensor):
    # the fine-tune script trains on images (VAR.data) and tokenises them with the frozen VQVAE in the adapter
    return var_family.adapter_for(model), ImageLabelDataset(split)


FAMILIES = {
    "llamagen": Family(llamagen_family.NAME, llamagen_family.GUIDANCE_FREE_CFG_SCALE, _llamagen_tokenizer,
                       tokenizers.train_llamagen_vq, tokenizers.llamagen_encode, tokenizers.llamagen_decode,
                       _build_llamagen_ar, pretrain.llamagen_loss, _llamagen_adapter, llamagen_sampler),
    "var": Family(var_family.NAME, var_family.GUIDANCE_FREE_CFG, _var_tokenizer, tokenizers.train_var_vqvae,
                  tokenizers.var_encode, tokenizers.var_decode, _build_var_ar, pretrain.var_loss, _var_adapter,
                  lambda model, tok, cfg: var_sampler(model, cfg)),
}
