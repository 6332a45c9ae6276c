"""The text-to-image family of the miniature, behind the class-conditional demo's ``Family`` interface.

Tokenizer, codes and decoding are the LlamaGen family's. The AR model is ``LlamaGen.gpt.Transformer`` with
``model_type='t2i'``; its conditions are captions (``CaptionBank``: T5 features of every phrasing of every class,
left-padded as LlamaGen pads them). Pretraining draws a training phrasing of the image's class at every step (caption
dropout 0.1 learns the null caption); CCA fine-tunes on one fixed training phrasing per image through
``LlamaGen.t2i_adapter.T2IAdapter``; the samplers are prompted with held-out phrasings of the requested class.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from demo.config import FamilyConfig
from demo.data import Split
from demo.families import FAMILIES, Family
from demo.samplers import llamagen_sampler
from demo_t2i.captions import phrasings
from LlamaGen.captions import Caption
from LlamaGen.extract_t5_features import load_t5
from LlamaGen.gpt import ModelArgs, Transformer
from LlamaGen.sample_t2i import encode_prompts
from LlamaGen.t2i_adapter import T2IAdapter


@dataclass
class CaptionBank:
    emb: torch.Tensor     # (C, P, T, D) float32: P phrasings of each of C classes, left-padded T5 features
    mask: torch.Tensor    # (C, P, T) bool

    @property
    def per_class(self) -> int:
        return self.emb.shape[1]

    def caption(self, labels: torch.Tensor, phrasing: torch.Tensor) -> Caption:
        """labels (B,), phrasing (B,) indices -> Caption (B, T, D), (B, T)."""
        return Caption(self.emb[labels, phrasing], self.mask[labels, phrasing])


def encode_bank(t5_dir: Path, templates: list[str], tokens: int) -> CaptionBank:
    """Every phrasing of every class through the project's T5 path, at most ``tokens`` tokens each."""
    groups = phrasings(templates)
    tokenizer, encoder = load_t5(t5_dir, torch.float32, torch.device("cpu"))
    cap = encode_prompts(tokenizer, encoder, [t for g in groups for t in g], tokens, tokens, torch.device("cpu"),
                         torch.float32)
    C, P = len(groups), len(groups[0])
    return CaptionBank(cap.emb.reshape(C, P, tokens, -1), cap.mask.reshape(C, P, tokens))


class CaptionCodes(torch.utils.data.Dataset):
    """(codes (L,), caption features (T, D), mask (T,)): what ``T2IAdapter`` expects (like CaptionCodeDataset)."""

    def __init__(self, codes: torch.Tensor, labels: np.ndarray, bank: CaptionBank, seed: int):
        gen = torch.Generator().manual_seed(seed)
        labels = torch.from_numpy(np.asarray(labels)).long()
        self.codes = codes.long()
        self.caption = bank.caption(labels, torch.randint(bank.per_class, labels.shape, generator=gen))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int):
        return self.codes[i], self.caption.emb[i], self.caption.mask[i]


def t2i_family(fc: FamilyConfig, width: int, tokens: int, train: CaptionBank, held_out: CaptionBank,
               seed: int = 0) -> Family:
    llamagen = FAMILIES["llamagen"]

    def build_ar(fc: FamilyConfig, vq, image_size: int = 16) -> Transformer:
        a, grid = fc.ar, image_size // vq.downsample
        return Transformer(ModelArgs(dim=a.dim, n_layer=a.n_layer, n_head=a.n_head, multiple_of=32,
                                     vocab_size=fc.tokenizer.vocab_size, block_size=grid * grid, model_type="t2i",
                                     cls_token_num=tokens, caption_dim=width, class_dropout_prob=a.label_dropout))

    def ar_loss(model: Transformer, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        caption = train.caption(labels, torch.randint(train.per_class, labels.shape))   # a fresh phrasing
        _, loss = model(codes[:, :-1], caption, targets=codes)
        return loss

    def adapter_and_dataset(model: Transformer, split: Split, codes: torch.Tensor):
        return T2IAdapter(fc.cca.batch_size), CaptionCodes(codes, split.labels, train, seed)

    def sampler(model: Transformer, vq, cfg_scale: float):
        run, tokens_of = llamagen_sampler(model, vq, cfg_scale)

        def prompts(labels: torch.Tensor, seed: int) -> Caption:     # held-out phrasings, spread over the batch
            return held_out.caption(labels, (torch.arange(len(labels)) + seed) % held_out.per_class)
        return (lambda labels, seed: run(prompts(labels, seed), seed),
                lambda labels, seed: tokens_of(prompts(labels, seed), seed))

    return dataclasses.replace(llamagen, name="t2i", build_ar=build_ar, ar_loss=ar_loss,
                               adapter_and_dataset=adapter_and_dataset, sampler=sampler)
