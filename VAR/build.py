"""Constructing VAR / VQVAE pairs with the original's keyword names, and loading checkpoints into them.

Released transformer sizes: depth d in {16, 20, 24, 30} with width 64·d and d heads; the released VQVAE is
``V=4096, Cvae=32, ch=160, share_quant_resi=4``. Building on ``device="meta"`` allocates nothing, which makes
loading a multi-GB checkpoint cheap: ``load_var_weights`` / ``load_vae_weights`` then assign the file's tensors.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import torch

from cca.checkpoint import CheckpointError, load_state_dict_file, load_strict

from .var import VAR
from .vqvae import VQVAE, fit_usage_statistics

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
RELEASED_DEPTHS = (16, 20, 24, 30)
VAE_CH_MULT = (1, 1, 2, 2, 4)


def build_vae(V: int = 4096, Cvae: int = 32, ch: int = 160, share_quant_resi: int = 4,
              patch_nums: Sequence[int] = PATCH_NUMS_256, ch_mult: Sequence[int] = VAE_CH_MULT,
              num_res_blocks: int = 2, device: str | torch.device = "cpu") -> VQVAE:
    with torch.device(device):
        return VQVAE(vocab_size=V, z_channels=Cvae, ch=ch, test_mode=True, share_quant_resi=share_quant_resi,
                     v_patch_nums=tuple(patch_nums), ch_mult=ch_mult, num_res_blocks=num_res_blocks)


def build_var(vae: VQVAE, depth: int = 16, num_classes: int = 1000, patch_nums: Sequence[int] = PATCH_NUMS_256,
              shared_aln: bool = False, attn_l2_norm: bool = True, init_adaln: float = 0.5,
              init_adaln_gamma: float = 1e-5, init_head: float = 0.02, init_std: float = -1, dpr_ratio: float = 1.0,
              cond_drop_rate: float = 0.1,
              embed_dim: int | None = None, num_heads: int | None = None,
              device: str | torch.device = "cpu") -> VAR:
    """Width 64·depth and depth heads unless given; drop-path rate dpr_ratio · 0.1 · depth / 24."""
    with torch.device(device):
        var = VAR(vae_local=vae, num_classes=num_classes, depth=depth, embed_dim=embed_dim or 64 * depth,
                  num_heads=num_heads or depth, drop_rate=0.0, attn_drop_rate=0.0,
                  drop_path_rate=dpr_ratio * 0.1 * depth / 24, norm_eps=1e-6, shared_aln=shared_aln,
                  cond_drop_rate=cond_drop_rate, attn_l2_norm=attn_l2_norm, patch_nums=tuple(patch_nums))
        if torch.device(device).type != "meta":
            var.init_weights(init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head,
                             init_std=init_std)
    return var


def build_vae_var(device: str | torch.device = "cpu", patch_nums: Sequence[int] = PATCH_NUMS_256,
                  V: int = 4096, Cvae: int = 32, ch: int = 160, share_quant_resi: int = 4,
                  num_classes: int = 1000, depth: int = 16, shared_aln: bool = False, attn_l2_norm: bool = True,
                  init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                  init_std: float = -1, dpr_ratio: float = 1.0, cond_drop_rate: float = 0.1,
                  vae_ch_mult: Sequence[int] = VAE_CH_MULT, vae_num_res_blocks: int = 2) -> tuple[VQVAE, VAR]:
    """(vae, var) as the original ``models.build_vae_var``; nothing global is patched. The original's label
    dropout (cond_drop_rate 0.1) only acts in training mode here."""
    vae = build_vae(V=V, Cvae=Cvae, ch=ch, share_quant_resi=share_quant_resi, patch_nums=patch_nums,
                    ch_mult=vae_ch_mult, num_res_blocks=vae_num_res_blocks, device=device)
    var = build_var(vae, depth=depth, num_classes=num_classes, patch_nums=patch_nums, shared_aln=shared_aln,
                    attn_l2_norm=attn_l2_norm, init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma,
                    init_head=init_head, init_std=init_std, dpr_ratio=dpr_ratio, cond_drop_rate=cond_drop_rate,
                    device=device)
    return vae, var


def parse_patch_nums(pn: str) -> tuple[int, ...]:
    """--pn: "256", "512" or sizes like "1_2_3_4" -> (1, 2, 3, 4); SystemExit with one line otherwise."""
    named = {"256": "1_2_3_4_5_6_8_10_13_16", "512": "1_2_3_4_6_9_13_18_24_32"}
    try:
        nums = tuple(int(x) for x in named.get(pn, pn).replace("-", "_").split("_"))
    except ValueError:
        raise SystemExit(f"--pn: expected 256, 512 or sizes like 1_2_3_4, got {pn!r}") from None
    if not nums or any(b <= a for a, b in zip(nums, nums[1:])) or nums[0] < 1:
        raise SystemExit(f"--pn: expected increasing positive sizes, got {pn!r}")
    return nums


# ------------------------------------------------------------------------------------------- checkpoint hints
def var_shape_of(state_dict: dict[str, torch.Tensor]) -> dict[str, int] | None:
    """depth / width / classes / vocab / L of a VAR state dict, or None if it is not one."""
    if "class_emb.weight" not in state_dict or "head.weight" not in state_dict:
        return None
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    return {"depth": len(blocks), "width": int(state_dict["class_emb.weight"].shape[1]),
            "num_classes": int(state_dict["class_emb.weight"].shape[0]) - 1,
            "V": int(state_dict["head.weight"].shape[0]),
            "L": int(state_dict["pos_1LC"].shape[1]) if "pos_1LC" in state_dict else -1}


def patch_nums_for(L: int) -> str:
    """A --pn value with L tokens: 256 / 512 for the released layouts, else 1_2_..._n if the squares add up to L."""
    for name in ("256", "512"):
        if sum(p * p for p in parse_patch_nums(name)) == L:
            return name
    total, n = 0, 0
    while total < L:
        n += 1
        total += n * n
    return "_".join(map(str, range(1, n + 1))) if total == L else f"<patch sizes whose squares add up to {L}>"


def var_hint(state_dict: dict[str, torch.Tensor], model: VAR | None = None) -> str | None:
    """What the checkpoint looks like and which flag would make the model fit it."""
    shape = var_shape_of(state_dict)
    if shape is None:
        if any(k.startswith("encoder.") for k in state_dict):
            return "this looks like a VQVAE checkpoint, not a VAR one"
        return "this does not look like a VAR checkpoint"
    fixes = []
    if model is None or shape["depth"] != model.depth or shape["width"] != model.C:
        fixes.append(f"--depth {shape['depth']}")
    if model is not None and shape["num_classes"] != model.num_classes:
        fixes.append(f"--num_classes {shape['num_classes']}")
    if model is not None and shape["V"] != model.V:
        fixes.append(f"--vae_V {shape['V']}")
    if model is not None and shape["L"] not in (-1, model.L):
        fixes.append(f"--pn {patch_nums_for(shape['L'])}")
    looks = (f"it looks like depth {shape['depth']} (width {shape['width']}, {shape['num_classes']} classes, "
             f"vocab {shape['V']}, {shape['L']} tokens)")
    return looks + (f"; pass {' '.join(fixes)}" if fixes else "")


def vae_hint(state_dict: dict[str, torch.Tensor]) -> str | None:
    if "quantize.embedding.weight" not in state_dict or "encoder.conv_in.weight" not in state_dict:
        return "this does not look like a VAR VQVAE checkpoint"
    V, Cvae = state_dict["quantize.embedding.weight"].shape
    ch = state_dict["encoder.conv_in.weight"].shape[0]
    return f"it looks like --vae_ch {ch} --vae_V {V} --vae_Cvae {Cvae}"


def _read(path: str | os.PathLike, flag: str) -> dict[str, torch.Tensor]:
    try:
        return load_state_dict_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"{flag}: {e}") from None


def load_var_weights(var: VAR, path: str | os.PathLike, flag: str = "--ckpt_path") -> VAR:
    """Strictly load a VAR checkpoint (raw state dict or a known container) into ``var``.

    A meta-device model gets the file's tensors assigned; a real one gets them copied."""
    state_dict = _read(path, flag)
    assign = var.pos_1LC.device.type == "meta"
    return load_strict(var, state_dict, source=f"{flag} {path}", hint=lambda sd: var_hint(sd, var),
                       assign=assign)


def load_vae_weights(vae: VQVAE, path: str | os.PathLike, flag: str = "--vae_ckpt") -> VQVAE:
    state_dict = fit_usage_statistics(vae, _read(path, flag))
    assign = vae.quantize.embedding.weight.device.type == "meta"
    load_strict(vae, state_dict, source=f"{flag} {path}", hint=vae_hint, assign=assign)
    vae.eval().requires_grad_(False)
    return vae


def build_tiny_vae_var(seed: int = 0, patch_nums: Sequence[int] = (1, 2, 3, 4), V: int = 64, Cvae: int = 8,
                       vae_ch: int = 32, depth: int = 2, embed_dim: int = 64, num_heads: int = 4,
                       num_classes: int = 10, shared_aln: bool = False, signal: float = 0.3
                       ) -> tuple[VQVAE, VAR]:
    """A small random pair for tests and benchmarks (VQVAE with ch_mult (1, 2), one residual block per level).

    ``signal`` > 0 replaces the near-zero AdaLN gamma / head initialisation by N(0, signal^2) weights so every
    block and the class matter to the logits (a freshly initialised VAR is almost the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = VQVAE(vocab_size=V, z_channels=Cvae, ch=vae_ch, v_patch_nums=tuple(patch_nums), ch_mult=(1, 2),
                    num_res_blocks=1, share_quant_resi=4)
        var = VAR(vae_local=vae, num_classes=num_classes, depth=depth, embed_dim=embed_dim, num_heads=num_heads,
                  cond_drop_rate=0.0, attn_l2_norm=True, shared_aln=shared_aln, patch_nums=tuple(patch_nums))
        var.init_weights(init_std=-1)
    if signal > 0:
        with torch.no_grad():
            for name, p in var.named_parameters():
                if "ada_lin" in name or "ada_gss" in name or name.startswith("head."):
                    p.copy_(torch.randn(p.shape, generator=g) * signal)
    return vae.eval(), var.eval()
