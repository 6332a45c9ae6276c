"""Recompute the VAR parity fixtures (``var_vqvae``, ``var_transformer``) with this package.

Used by ``python -m cca.parity FIXTURE_DIR --out OUT.safetensors``. Every size and setting comes from the
fixture's config.json, so fixtures of other sizes work too.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .sampler import SampleTrace, generate
from .var import VAR, without_kernel_switches
from .vqvae import VQVAE


def cfg_tag(cfg: float) -> str:
    return "cfg" + format(cfg, "g").replace(".", "p")


def vqvae_from_fixture(fixture_dir: Path, config: dict) -> VQVAE:
    args = dict(config["constructor_args"])
    override = config.get("encoder_decoder_override", {}).get("args", {})
    for key in ("ch", "z_channels", "dropout", "ch_mult", "num_res_blocks", "using_sa", "using_mid_sa"):
        if key in override:   # the encoder/decoder the fixture swapped in
            args[key] = tuple(override[key]) if key == "ch_mult" else override[key]
    args["v_patch_nums"] = tuple(args["v_patch_nums"])
    vae = VQVAE(**args)
    vae.load_state_dict(load_file(str(Path(fixture_dir) / "weights.safetensors")), strict=True)
    return vae.eval()


def var_vqvae(fixture_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    fixture_dir = Path(fixture_dir)
    vae = vqvae_from_fixture(fixture_dir, config)
    images = load_file(str(fixture_dir / "inputs.safetensors"))["images"]
    out: dict[str, torch.Tensor] = {}
    features = vae.img_to_features(images)                                     # (B, Cvae, h, w)
    out["encoder_features"] = features
    indices = vae.img_to_idxBl(images)                                         # S x (B, pn^2)
    for k, idx in enumerate(indices):
        out[f"indices_scale{k}"] = idx
    out["indices_all_scales"] = torch.cat(indices, dim=1)                      # (B, L)
    out["teacher_forcing_input"] = vae.quantize.idxBl_to_var_input(indices)    # (B, L - first_l, Cvae)
    out["f_hat_per_scale"] = torch.stack(vae.quantize.f_to_idxBl_or_fhat(features, to_fhat=True), dim=1)
    out["decoded_from_indices"] = vae.idxBl_to_img(indices, same_shape=True, last_one=True)
    out["decoded_from_indices_per_scale"] = torch.stack(vae.idxBl_to_img(indices, same_shape=True, last_one=False),
                                                        dim=1)                 # (B, S, 3, H, W)
    out["reconstructed_from_image"] = vae.img_to_reconstructed_img(images, last_one=True)
    return out


def var_transformer(fixture_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    fixture_dir = Path(fixture_dir)
    vae_dir = (fixture_dir / config.get("vqvae_fixture", "../var_vqvae")).resolve()
    vae = vqvae_from_fixture(vae_dir, json.loads((vae_dir / "config.json").read_text()))
    args = without_kernel_switches(config["constructor_args"])
    args["patch_nums"] = tuple(args["patch_nums"])
    var = VAR(vae_local=vae, **args)
    var.load_state_dict(load_file(str(fixture_dir / "weights.safetensors")), strict=True)
    var.eval()
    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    out = {"logits": var(inputs["labels"], inputs["teacher_forcing_input"])}  # (B, L, V)

    calls = config["calls"]["sampling"]
    labels = inputs["sample_labels"] if "sample_labels" in inputs else torch.tensor(calls["label_B"])
    B = int(calls.get("B", labels.numel()))
    cfgs = calls["cfg"] if isinstance(calls["cfg"], list) else [calls["cfg"]]
    for cfg in cfgs:
        trace = SampleTrace()
        f_hat = generate(var, B, labels, g_seed=calls.get("g_seed"), cfg=float(cfg), top_k=int(calls["top_k"]),
                         top_p=float(calls.get("top_p", 0.0)), more_smooth=bool(calls.get("more_smooth", False)),
                         trace=trace)
        tag = cfg_tag(float(cfg))
        out[f"sample_tokens_{tag}"] = torch.cat(trace.tokens, dim=1)            # (B, L)
        out[f"sample_guided_logits_{tag}"] = torch.cat(trace.guided_logits, dim=1)  # (B, L, V)
        out[f"sample_images_{tag}"] = vae.fhat_to_img(f_hat).add(1).mul(0.5)   # (B, 3, H, W) in [0, 1]
    return out


PARITY = {"var_vqvae": var_vqvae, "var_transformer": var_transformer}
