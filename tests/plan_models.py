"""Models described by a small spec, built for real (tests/plan_measure.py) or on the meta device for the planner's
prediction of the same run (tests/test_plan.py)."""
from __future__ import annotations

import copy

import torch

from cca import plan
from LlamaGen.adapter import LlamaGenAdapter
from LlamaGen.generate import generate
from LlamaGen.gpt import ModelArgs, Transformer
from LlamaGen.plan import gpt_finetune, gpt_sampling
from LlamaGen.vq_model import VQModel, VQModelArgs
from VAR.adapter import VARAdapter
from VAR.build import build_vae, build_var
from VAR.plan import var_finetune, var_sampling

CLASSES = 10


def _gpt(spec: dict, device: str) -> tuple[Transformer, VQModel]:
    s, p = spec["size"], spec["size"].get("dropout", 0.0)
    with torch.device(device):
        gpt = Transformer(ModelArgs(dim=s["dim"], n_layer=s["layers"], n_head=s["heads"], vocab_size=s["vocab"],
                                    block_size=s["grid"] ** 2, num_classes=CLASSES, class_dropout_prob=0.0,
                                    token_dropout_p=p, resid_dropout_p=p, ffn_dropout_p=p))
        vq = VQModel(VQModelArgs(codebook_size=s["vocab"], codebook_embed_dim=8, ch=s["vq_ch"], num_res_blocks=1,
                                 z_channels=32))
    return gpt, vq.eval()


def _var(spec: dict, device: str):
    s = spec["size"]
    vae = build_vae(V=s["vocab"], Cvae=s["cvae"], ch=s["vae_ch"], patch_nums=s["pn"], ch_mult=(1, 1, 2),
                    num_res_blocks=1, device=device)
    var = build_var(vae, depth=s["depth"], num_classes=CLASSES, patch_nums=s["pn"], embed_dim=s["width"],
                    num_heads=s["heads"], dpr_ratio=0.0, cond_drop_rate=0.0, device=device)
    return vae, var


def build(spec: dict, device: str) -> dict:
    """Real models (random weights) and what a fine-tune step or a sampling batch needs."""
    B = spec.get("micro", 1) * spec.get("accum", 1)
    g = torch.Generator().manual_seed(0)
    labels = lambda n: torch.randint(CLASSES, (n,), generator=g)   # noqa: E731
    if spec["family"] == "gpt":
        gpt, vq = _gpt(spec, device)
        T, V = gpt.config.block_size, gpt.config.vocab_size
        if spec["task"] == "sample":
            n, grid = spec["batch"], spec["size"]["grid"]
            return {"sample": lambda: vq.decode_code(generate(gpt.eval(), labels(n), T, cfg_scale=spec["cfg"]),
                                                     [n, 8, grid, grid])}
        return {"policy": gpt.train(), "reference": copy.deepcopy(gpt), "adapter": LlamaGenAdapter(CLASSES),
                "batch": lambda step: (torch.randint(V, (B, T), generator=g), labels(B))}
    vae, var = _var(spec, device)
    if spec["task"] == "sample":
        n = spec["batch"]
        return {"sample": lambda: var.eval().autoregressive_infer_cfg(n, labels(n), g_seed=0, cfg=spec["cfg"],
                                                                     top_k=50, top_p=0.9)}
    res = vae.image_size
    return {"policy": var.train(), "reference": copy.deepcopy(var), "adapter": VARAdapter(vae, CLASSES),
            "batch": lambda step: (torch.rand(B, 3, res, res, generator=g) * 2 - 1, labels(B))}


def predicted(spec: dict) -> float:
    """The planner's peak bytes for the same run on the CPU (fp32, one process)."""
    run = dict(world=1, micro=spec.get("micro", 1), accum=spec.get("accum", 1), joint=spec.get("joint", False),
               device="cpu")
    if spec["family"] == "gpt":
        gpt, vq = _gpt(spec, "meta")
        if spec["task"] == "sample":
            return plan.sample_memory(gpt_sampling(gpt, vq, half=False, guided=spec["cfg"] > 1, batch=spec["batch"],
                                                   world=1, num_samples=spec["batch"]))["total"]
        return plan.finetune_memory(gpt_finetune(gpt, precision="fp32", mode="ddp", shard=1, **run))["total"]
    vae, var = _var(spec, "meta")
    if spec["task"] == "sample":
        return plan.sample_memory(var_sampling(vae, var, cache_bytes=plan.FP32, guided=spec["cfg"] != 0,
                                               batch=spec["batch"], world=1, num_samples=spec["batch"]))["total"]
    return plan.finetune_memory(var_finetune(vae, var, precision="fp32", **run))["total"]
