"""What differs between the two families in the miniature, behind one small interface the pipeline drives.

For each family: build / train / encode with its tokenizer, build and pretrain its AR model, and, from the
family's own module (VAR/family.py, LlamaGen/family.py, which the fine-tune and sample scripts use too), its name,
guidance-free value and trainer adapter with the dataset that adapter expects; the fine-tune's dropout and frozen
reference as the fine-tune script sets them up; its sampler with the family's guidance convention.
"""
from __future__ import annotations

import argparse
import copy
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from demo import pretrain, tokenizers
from demo.config import CCAConfig, FamilyConfig
from demo.data import CodeLabelDataset, ImageLabelDataset, Split
from demo.samplers import SampleFn, llamagen_sampler, var_sampler
from LlamaGen import family as llamagen_family
from LlamaGen.finetune_cli import model_kwargs as llamagen_model_kwargs
from LlamaGen.fsdp import DTYPES
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
    sampler: Callable[..., tuple[SampleFn, Callable]]      # (model, tokenizer, cfg) -> (images, tokens only)
    finetune_dropout: Callable[[CCAConfig], dict]          # build_ar's keyword arguments for the fine-tune
    with_reference: Callable[[nn.Module, CCAConfig], tuple[nn.Module, nn.Module]]   # policy -> (policy, ref)


def _llamagen_tokenizer(fc: FamilyConfig) -> nn.Module:
    t = fc.tokenizer
    return tokenizers.build_llamagen_vq(t.vocab_size, t.ch, t.ch_mult, t.num_res_blocks, t.z_channels)


def _grid_of(vq, image_size: int) -> int:
    return image_size // vq.downsample


def _build_llamagen_ar(fc: FamilyConfig, vq: nn.Module, image_size: int = 16, **dropout) -> nn.Module:
    a = fc.ar
    return pretrain.build_llamagen_gpt(vocab_size=fc.tokenizer.vocab_size, grid=_grid_of(vq, image_size), dim=a.dim,
                                       n_layer=a.n_layer, n_head=a.n_head, label_dropout=a.label_dropout, **dropout)


def _llamagen_finetune_dropout(cca: CCAConfig) -> dict:
    """The fine-tune script's dropout from the same flags (--keep_dropout, --dropout-p, --token-dropout-p,
    --drop-path-rate, --dropout-with-drop-path); label dropout stays off (the script's 1e-5 left out)."""
    flags = argparse.Namespace(**{k: getattr(cca, k) for k in ("keep_dropout", "dropout_p", "token_dropout_p",
                                                               "drop_path_rate", "dropout_with_drop_path")})
    kwargs = llamagen_model_kwargs(flags, fsdp=False)
    del kwargs["class_dropout_prob"]
    return kwargs


def _llamagen_with_reference(policy: nn.Module, cca: CCAConfig) -> tuple[nn.Module, nn.Module]:
    """The fine-tune script's frozen reference: a copy of the policy in --ref-dtype."""
    return llamagen_family.with_reference(policy, torch.device("cpu"), compile=False, log=logging.getLogger("demo"),
                                          reference_dtype=DTYPES["bf16" if cca.ref_bf16 else "fp32"])


def _llamagen_adapter(model: nn.Module, split: Split, codes: torch.Tensor):
    # the fine-tune script trains on pre-extracted codes (LlamaGen.codes.CodeDataset): (codes (L,), label)
    return llamagen_family.adapter_for(model), CodeLabelDataset(codes, torch.from_numpy(split.labels))


def _var_tokenizer(fc: FamilyConfig) -> nn.Module:
    t = fc.tokenizer
    return tokenizers.build_var_vqvae(t.vocab_size, t.z_channels, t.ch, t.ch_mult, t.num_res_blocks, t.patch_nums)


def _build_var_ar(fc: FamilyConfig, vae: nn.Module, image_size: int = 16, drop_path_rate: float = 0.0) -> nn.Module:
    a = fc.ar
    return pretrain.build_var_model(vae, depth=a.n_layer, embed_dim=a.dim, num_heads=a.n_head,
                                    label_dropout=a.label_dropout, drop_path_rate=drop_path_rate)


def _var_with_reference(policy: nn.Module, cca: CCAConfig) -> tuple[nn.Module, nn.Module]:
    """The fine-tune script's reference: the same model (drop path included) with its own tensors."""
    return policy, copy.deepcopy(policy)


def _var_adapter(model: nn.Module, split: Split, codes: torch.Tensor):
    # the fine-tune script trains on images (VAR.data) and tokenises them with the frozen VQVAE in the adapter
    return var_family.adapter_for(model), ImageLabelDataset(split)


FAMILIES = {
    "llamagen": Family(llamagen_family.NAME, llamagen_family.GUIDANCE_FREE_CFG_SCALE, _llamagen_tokenizer,
                       tokenizers.train_llamagen_vq, tokenizers.llamagen_encode, tokenizers.llamagen_decode,
                       _build_llamagen_ar, pretrain.llamagen_loss, _llamagen_adapter, llamagen_sampler,
                       _llamagen_finetune_dropout, _llamagen_with_reference),
    "var": Family(var_family.NAME, var_family.GUIDANCE_FREE_CFG, _var_tokenizer, tokenizers.train_var_vqvae,
                  tokenizers.var_encode, tokenizers.var_decode, _build_var_ar, pretrain.var_loss, _var_adapter,
                  lambda model, tok, cfg, round_uint8=True: var_sampler(model, cfg, round_uint8),
                  lambda cca: {"drop_path_rate": cca.drop_path_rate}, _var_with_reference),
}


def finetune_copies(fam: Family, fc: FamilyConfig, tok: nn.Module, base: nn.Module, cca: CCAConfig
                    ) -> tuple[nn.Module, nn.Module]:
    """(policy, frozen reference) for a CCA fine-tune: the base model's weights in the family's fine-tune setup
    (the dropout / drop path of ``cca``, the reference's dtype), label dropout off in both (the conditions the
    trainer builds must reach the model unchanged)."""
    with torch.random.fork_rng(devices=[]):
        policy = fam.build_ar(fc, tok, **fam.finetune_dropout(cca))
    policy.load_state_dict(base.state_dict())
    policy, reference = fam.with_reference(pretrain.disable_label_dropout(policy), cca)
    return policy, pretrain.disable_label_dropout(reference)
