"""Recompute a ``cca_step_var`` fixture (optimizer steps of the original CCA VAR fine-tune) through VAR_finetune.py's
own code path: the fixture's ``cli_flags`` go through its argument parser and ``train_config``, the policy and the
reference through VAR.build with the fixture's weights, then the shared Trainer with the VAR adapter.

Stand-ins, as in the fixture (config.json -> sources): the tiny model's width and heads come from
``constructor_args`` (the CLI derives them from --depth); the images are fed in the recorded order; the recorded
null-class draws (``uniform_draws``) replace the trainer's random ones; the run stops after the recorded steps
(``--max_steps``, which leaves the schedule defined by --ep).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from cca import dist as cdist
from cca.checkpoint import load_strict
from cca.parity import run_recorded_steps
from cca.trainer import Trainer

from .adapter import VARAdapter
from .build import build_var, parse_patch_nums
from .parity import vqvae_from_fixture


def cca_step_var(fixture_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    import VAR_finetune                                   # the entry script (repository root on sys.path)
    fixture_dir = Path(fixture_dir)
    steps = int(config["data"]["optimizer_steps"])
    args = VAR_finetune.build_parser().parse_args([*config["cli_flags"], f"--max_steps={steps}"])
    vae_dir = (fixture_dir / config.get("vqvae_fixture", "../var_vqvae")).resolve()
    vae = vqvae_from_fixture(vae_dir, json.loads((vae_dir / "config.json").read_text()))
    shape = config["constructor_args"]
    models = []
    for _ in range(2):                                    # policy, reference: each its own tensors
        weights = load_file(str(fixture_dir / "weights.safetensors"))
        var = build_var(vae, depth=args.depth, num_classes=args.num_classes, patch_nums=parse_patch_nums(args.pn),
                        shared_aln=args.saln, dpr_ratio=args.dpr_ratio, cond_drop_rate=0.0,
                        embed_dim=shape["embed_dim"], num_heads=shape["num_heads"], device="meta")
        models.append(load_strict(var, weights, source=str(fixture_dir), assign=True))
    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    dataset = list(zip(inputs["images"], inputs["labels"]))
    dist = cdist.init()

    def make_trainer(hooks, out_dir):
        num_images = int(config["data"].get("dataset_len", len(dataset)))    # sets the schedule's length
        cfg = VAR_finetune.train_config(args, dist.world_size, num_images, out_dir)
        return Trainer(*models, VARAdapter(vae, args.num_classes), cfg, dist=dist, hooks=hooks)

    return run_recorded_steps(make_trainer, dataset, inputs.get("uniform_draws"))

