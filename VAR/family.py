"""The VAR family behind the shared drivers (cca/finetune_driver.py, cca/sample_driver.py) and the demo.

``VARSpec`` is what the VAR scripts' model flags say (--depth, --num_classes, --pn, --saln, --vae_*); from it
come the VQVAE and transformers loaded from files, the trainer adapter and the sample function. VAR's guidance
convention: --cfg 0 is guidance-free (only the conditional half runs); larger values ramp over the scales.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from cca.fixture_kinds import register_fixture_kinds
from cca.sample_driver import SampleFn
from cca.sampling import to_uint8_nhwc

from .adapter import VARAdapter
from .build import build_vae, build_var, load_vae_weights, load_var_weights, parse_patch_nums
from .var import VAR
from .vqvae import VQVAE

NAME = "var"
GUIDANCE_FREE_CFG = 0.0          # --cfg of a guidance-free sample

register_fixture_kinds({"var_vqvae": "VAR.parity:var_vqvae", "var_transformer": "VAR.parity:var_transformer",
                        "cca_step_var": "VAR.step_parity:cca_step_var"})


def adapter_for(model: VAR) -> VARAdapter:
    """The trainer adapter of ``model``: its own VQVAE tokenises the images."""
    return VARAdapter(model.vae_proxy[0], num_classes=model.num_classes)


@dataclass(frozen=True)
class VARSpec:
    depth: int
    num_classes: int
    patch_nums: tuple[int, ...]
    shared_aln: bool
    vae_ckpt: str
    vae_ch: int
    vae_V: int
    vae_Cvae: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "VARSpec":
        return cls(args.depth, args.num_classes, parse_patch_nums(args.pn), args.saln, args.vae_ckpt, args.vae_ch,
                   args.vae_V, args.vae_Cvae)

    def vae(self) -> VQVAE:
        """The VQVAE of --vae_ckpt, on the meta device with the file's tensors assigned."""
        vae = build_vae(V=self.vae_V, Cvae=self.vae_Cvae, ch=self.vae_ch, patch_nums=self.patch_nums, device="meta")
        return load_vae_weights(vae, self.vae_ckpt)

    def var(self, vae: VQVAE, path: str, flag: str, **build_kwargs) -> VAR:
        """A VAR of this spec with the weights in ``path`` (strict load; a mismatch names ``flag``)."""
        var = build_var(vae, depth=self.depth, num_classes=self.num_classes, patch_nums=self.patch_nums,
                        shared_aln=self.shared_aln, cond_drop_rate=0.0, device="meta", **build_kwargs)
        return load_var_weights(var, path, flag=flag)


def finetune_models(spec: VARSpec, ref_ckpt: str, device: torch.device, *, init_adaln_gamma: float,
                    dpr_ratio: float) -> tuple[VQVAE, VAR, VAR]:
    """(vae, policy, reference) on ``device``, both transformers from --ref_ckpt, each with its own tensors."""
    vae = spec.vae()
    policy, reference = (spec.var(vae, ref_ckpt, "--ref_ckpt", init_adaln_gamma=init_adaln_gamma,
                                  dpr_ratio=dpr_ratio).to(device) for _ in range(2))
    return vae.to(device), policy, reference


def load_sampler(spec: VARSpec, ckpt_path: str, device: torch.device, *, cfg: float, top_k: int, top_p: float,
                 more_smooth: bool, round_uint8: bool) -> SampleFn:
    """The sample function of the model in --ckpt_path: labels, batch seed -> uint8 images (fp16 autocast on
    CUDA, as the original sampler; pixels x·255 cut, or rounded with ``round_uint8``)."""
    vae = spec.vae()
    var = spec.var(vae, ckpt_path, "--ckpt_path")
    vae.to(device).eval()
    var = var.to(device).eval().requires_grad_(False)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)

    def sample(labels: torch.Tensor, seed: int) -> np.ndarray:
        with torch.inference_mode(), autocast:
            images = var.autoregressive_infer_cfg(len(labels), labels, g_seed=seed, cfg=cfg, top_k=top_k,
                                                  top_p=top_p, more_smooth=more_smooth)   # (b, 3, H, W) in [0, 1]
        return to_uint8_nhwc(images, rounding="nearest" if round_uint8 else "truncate")  # (b, H, W, 3)
    return sample
