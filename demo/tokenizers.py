"""Training the two families' tokenizers from scratch on the miniature's images.

* LlamaGen: ``LlamaGen.vq_model.VQModel`` (one codebook, l2-normalised codes); its own training-mode forward returns
  the codebook and commitment losses, we add the reconstruction loss.
* VAR: ``VAR.vqvae.VQVAE`` (multi-scale residual quantiser). The family's module quantises without gradients (it
  is an inference port), so ``multiscale_quantise`` below is the training-time forward: per scale, nearest code of
  the area-downsampled residual, bicubic upsampling, phi refinement, codebook loss on the running f_hat and a
  straight-through estimator from f_hat to the encoder features (as VAR's tokenizer was trained).

Both loops revive dead codes: every ``revive_every`` steps, codes not chosen since the last check are moved onto
randomly picked encoder vectors of the current batch (small codebooks on small data otherwise collapse).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from demo.cpuload import THREADS
from LlamaGen.vq_model import VQModel, VQModelArgs
from VAR.vqvae import VQVAE


def build_llamagen_vq(codebook_size: int, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int,
                      embed_dim: int = 8) -> VQModel:
    return VQModel(VQModelArgs(codebook_size=codebook_size, codebook_embed_dim=embed_dim,
                               encoder_ch_mult=list(ch_mult), decoder_ch_mult=list(ch_mult), z_channels=z_channels,
                               ch=ch, num_res_blocks=num_res_blocks, codebook_show_usage=False))


def build_var_vqvae(vocab_size: int, Cvae: int, ch: int, ch_mult: list[int], num_res_blocks: int,
                    patch_nums: list[int], test_mode: bool = True) -> VQVAE:
    return VQVAE(vocab_size=vocab_size, z_channels=Cvae, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                 v_patch_nums=tuple(patch_nums), share_quant_resi=4, test_mode=test_mode)


def multiscale_quantise(vae: VQVAE, f: torch.Tensor, beta: float = 0.25
                        ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """f (B, C, H, W) encoder features -> (straight-through f_hat (B, C, H, W), codebook loss, per-scale indices)."""
    quant = vae.quantize
    B, C, H, W = f.shape
    S = quant.num_scales
    f_ng = f.detach()
    f_rest = f_ng.clone()                                                    # (B, C, H, W)
    f_hat = torch.zeros_like(f_ng)                                           # (B, C, H, W)
    loss = f.new_zeros(())
    picked = []
    for si, pn in enumerate(quant.v_patch_nums):
        last = si == S - 1
        rest = f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area")     # (B, C, pn, pn)
        idx = quant.nearest_code(rest.permute(0, 2, 3, 1).reshape(-1, C))               # (B*pn*pn,)
        h = quant.embedding(idx).view(B, pn, pn, C).permute(0, 3, 1, 2)                 # (B, C, pn, pn), grad to codes
        if not last:
            h = F.interpolate(h, size=(H, W), mode="bicubic")                           # (B, C, H, W)
        h = quant.phi(si, S)(h.contiguous())
        f_hat = f_hat + h
        f_rest = f_rest - h.detach()
        loss = loss + F.mse_loss(f_hat, f_ng) + beta * F.mse_loss(f_hat.detach(), f)
        picked.append(idx)
    return f_hat.detach() - f_ng + f, loss / S, picked


def _revive(codebook: nn.Embedding, used: torch.Tensor, candidates: torch.Tensor, normalise: bool) -> int:
    """Move unused rows of ``codebook`` onto random rows of ``candidates`` (N, D); returns how many moved."""
    dead = (~used).nonzero().flatten()
    if dead.numel() == 0 or candidates.shape[0] == 0:
        return 0
    pick = torch.randint(candidates.shape[0], (dead.numel(),))
    new = candidates[pick] + 0.01 * candidates.std() * torch.randn(dead.numel(), candidates.shape[1])
    with torch.no_grad():
        codebook.weight[dead] = F.normalize(new, dim=-1) if normalise else new
    return int(dead.numel())


def _cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int, warmup: int = 20) -> None:
    lr = base * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
    for group in opt.param_groups:
        group["lr"] = lr


def train_llamagen_vq(vq: VQModel, images: torch.Tensor, *, steps: int, batch_size: int, lr: float,
                      revive_every: int = 50, seed: int = 0, progress: bool = True) -> dict:
    """images (N, 3, S, S) in [-1, 1]. Loss: MSE reconstruction + the quantiser's codebook and commitment terms."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(vq.parameters(), lr=lr, betas=(0.9, 0.99))
    used = torch.zeros(vq.config.codebook_size, dtype=torch.bool)
    vq.train()
    bar = tqdm(range(steps), desc="LlamaGen VQ", disable=not progress, dynamic_ncols=True)
    revived = 0
    for step in bar:
        THREADS.adapt()
        x = images[torch.randint(len(images), (batch_size,), generator=gen)]              # (b, 3, S, S)
        z = vq.pre_quant(x)                                                              # (b, D, h, w)
        zq, (vq_loss, commit_loss, _, _), (_, _, idx) = vq.quantize(z)
        rec = vq.decode(zq)                                                              # (b, 3, S, S)
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + vq_loss + commit_loss
        _cosine_lr(opt, lr, step, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used[idx] = True
        if revive_every and (step + 1) % revive_every == 0 and step + 1 < 0.8 * steps:
            flat = F.normalize(z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)
            revived += _revive(vq.quantize.embedding, used, flat, normalise=True)
            used.zero_()
        if step % 20 == 0:
            bar.set_postfix(rec=f"{rec_loss.item():.4f}", vq=f"{vq_loss.item():.3f}")
    vq.eval()
    return {"final_rec_mse": rec_loss.item(), "revived_codes": revived}


def train_var_vqvae(vae: VQVAE, images: torch.Tensor, *, steps: int, batch_size: int, lr: float,
                    revive_every: int = 50, seed: int = 0, progress: bool = True) -> dict:
    """images (N, 3, S, S) in [-1, 1]. Loss: MSE reconstruction + multi-scale codebook / commitment loss."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae.train().requires_grad_(True)
    vae.test_mode = False
    opt = torch.optim.Adam(vae.parameters(), lr=lr, betas=(0.9, 0.99))
    used = torch.zeros(vae.vocab_size, dtype=torch.bool)
    bar = tqdm(range(steps), desc="VAR VQVAE", disable=not progress, dynamic_ncols=True)
    revived = 0
    for step in bar:
        THREADS.adapt()
        x = images[torch.randint(len(images), (batch_size,), generator=gen)]              # (b, 3, S, S)
        f = vae.img_to_features(x)                                                       # (b, Cvae, h, w)
        f_hat, vq_loss, picked = multiscale_quantise(vae, f)
        rec = vae.decoder(vae.post_quant_conv(f_hat))                                    # (b, 3, S, S)
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + vq_loss
        _cosine_lr(opt, lr, step, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for idx in picked:
            used[idx] = True
        if revive_every and (step + 1) % revive_every == 0 and step + 1 < 0.8 * steps:
            flat = f.detach().permute(0, 2, 3, 1).reshape(-1, f.shape[1])                # (b*h*w, Cvae)
            revived += _revive(vae.quantize.embedding, used, flat, normalise=False)
            used.zero_()
        if step % 20 == 0:
            bar.set_postfix(rec=f"{rec_loss.item():.4f}", vq=f"{vq_loss.item():.3f}")
    vae.eval().requires_grad_(False)
    vae.test_mode = True
    return {"final_rec_mse": rec_loss.item(), "revived_codes": revived}


@torch.no_grad()
def llamagen_encode(vq: VQModel, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """(N, 3, S, S) -> (N, h*w) int64 codes in raster order."""
    out = []
    for s in range(0, len(images), batch):
        x = images[s:s + batch]
        _, _, (_, _, idx) = vq.encode(x)
        out.append(idx.view(x.shape[0], -1))
    return torch.cat(out)


@torch.no_grad()
def llamagen_decode(vq: VQModel, codes: torch.Tensor) -> torch.Tensor:
    """(B, h*w) codes -> (B, 3, S, S) images, roughly in [-1, 1]."""
    side = int(round(codes.shape[1] ** 0.5))
    return vq.decode_code(codes, [codes.shape[0], vq.config.codebook_embed_dim, side, side])


@torch.no_grad()
def var_encode(vae: VQVAE, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """(N, 3, S, S) -> (N, L) int64: every scale's indices, concatenated coarse to fine."""
    return torch.cat([torch.cat(vae.img_to_idxBl(images[s:s + batch]), dim=1) for s in range(0, len(images), batch)])


@torch.no_grad()
def var_decode(vae: VQVAE, codes: torch.Tensor) -> torch.Tensor:
    """(B, L) concatenated per-scale indices -> (B, 3, S, S) images in [-1, 1]."""
    pieces, start = [], 0
    for pn in vae.quantize.v_patch_nums:
        pieces.append(codes[:, start:start + pn * pn])
        start += pn * pn
    return vae.idxBl_to_img(pieces, same_shape=True, last_one=True)
