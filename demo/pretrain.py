"""Pretraining the two families' class-conditional AR models from scratch on pre-extracted tokens.

A plain teacher-forcing loop (AdamW, warmup + cosine decay, gradient clipping). Label dropout is the models' own:
``LlamaGen`` replaces labels by the null class in its ``LabelEmbedder`` with ``class_dropout_prob`` in training
mode, ``VAR`` does the same with ``cond_drop_rate`` - so the null row is learned and CFG works, as in the
released checkpoints. Both switch it off for CCA fine-tuning (``disable_label_dropout``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cca.schedule import build_adamw
from demo.cpuload import THREADS
from LlamaGen.gpt import ModelArgs, Transformer
from VAR.var import VAR
from VAR.vqvae import VQVAE


def build_llamagen_gpt(*, vocab_size: int, grid: int, dim: int, n_layer: int, n_head: int, num_classes: int = 10,
                       label_dropout: float = 0.1, dropout_p: float = 0.0, token_dropout_p: float = 0.0,
                       drop_path_rate: float = 0.0) -> Transformer:
    """Dropout as ``LlamaGen.checkpoints.build_gpt`` names it (``dropout_p``: residual and FFN); none by default."""
    args = ModelArgs(dim=dim, n_layer=n_layer, n_head=n_head, multiple_of=32, vocab_size=vocab_size,
                     num_classes=num_classes, block_size=grid * grid, class_dropout_prob=label_dropout,
                     token_dropout_p=token_dropout_p, resid_dropout_p=dropout_p, ffn_dropout_p=dropout_p,
                     drop_path_rate=drop_path_rate)
    return Transformer(args)


def build_var_model(vae: VQVAE, *, depth: int, embed_dim: int, num_heads: int, num_classes: int = 10,
                    label_dropout: float = 0.1, drop_path_rate: float = 0.0, seed: int = 0) -> VAR:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        var = VAR(vae_local=vae, num_classes=num_classes, depth=depth, embed_dim=embed_dim, num_heads=num_heads,
                  cond_drop_rate=label_dropout, attn_l2_norm=True, patch_nums=vae.quantize.v_patch_nums,
                  drop_path_rate=drop_path_rate)
        var.init_weights(init_std=-1)
    return var


def disable_label_dropout(model: nn.Module) -> nn.Module:
    """CCA's conditions must reach the model unchanged (the fine-tune scripts build with dropout 0 as well)."""
    if isinstance(model, Transformer):
        model.cls_embedding.dropout_prob = 0.0
    elif isinstance(model, VAR):
        model.cond_drop_rate = 0.0
    return model


def llamagen_loss(model: Transformer, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """codes (B, L), labels (B,) -> mean next-token cross-entropy (the class token predicts codes[:, 0])."""
    _, loss = model(codes[:, :-1], labels, targets=codes)
    return loss


def var_loss(model: VAR, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """codes (B, L) concatenated per-scale indices -> mean next-scale cross-entropy."""
    quant = model.vae_quant_proxy[0]
    pieces, start = [], 0
    for pn in model.patch_nums:
        pieces.append(codes[:, start:start + pn * pn])
        start += pn * pn
    with torch.no_grad():
        x_in = quant.idxBl_to_var_input(pieces)                                  # (B, L - first_l, Cvae)
    logits = model(labels, x_in)                                                 # (B, L, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


def pretrain_ar(model: nn.Module, loss_fn, codes: torch.Tensor, labels: torch.Tensor, *, steps: int,
                batch_size: int, lr: float, weight_decay: float = 0.05, warmup: int = 50, seed: int = 0,
                desc: str = "pretrain", progress: bool = True) -> dict:
    """``steps`` AdamW steps on random batches of (codes (N, L), labels (N,)); returns the last losses."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = build_adamw(model, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True)
    recent: list[float] = []
    for step in bar:
        THREADS.adapt()
        idx = torch.randint(len(labels), (batch_size,), generator=gen)
        factor = min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr * factor
        loss = loss_fn(model, codes[idx], labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    model.eval()
    return {"final_loss": sum(recent) / max(1, len(recent))}


@torch.no_grad()
def eval_loss(model: nn.Module, loss_fn, codes: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Mean cross-entropy on held-out tokens (eval mode: no label dropout)."""
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(labels), batch):
        total += float(loss_fn(model, codes[s:s + batch], labels[s:s + batch])) * len(labels[s:s + batch])
        n += len(labels[s:s + batch])
    return total / max(1, n)
