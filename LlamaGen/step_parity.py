"""Recompute a ``cca_step_llamagen`` fixture (optimizer steps of the original CCA LlamaGen fine-tune) through
LlamaGen_finetune.py's own code path: the fixture's ``cli_flags`` go through its argument parser, the GPT is built
and loaded from a --ref_ckpt file by the CLI's own functions, ``train_config`` makes the configuration, then the
shared Trainer with the LlamaGen adapter.

Stand-ins, as in the fixture (config.json -> sources): the tiny size is added to the size registry under the
fixture's --gpt-model name while the run lasts; the codes are fed in the recorded order; the recorded null-class
draws (``uniform_draws``) replace the trainer's random ones; the label-dropout draws (probability 1e-5) were fixed
to "keep" and are switched off; the run stops after the recorded steps (--max-steps).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from cca import dist as cdist
from cca.parity import run_recorded_steps
from cca.trainer import Trainer

from . import finetune_cli
from .adapter import LlamaGenAdapter
from .family import with_reference
from .gpt import GPT_SIZES


@contextlib.contextmanager
def registered_size(name: str, model_args: dict):
    """``name`` in the GPT size registry as (n_layer, n_head, dim) of ``model_args`` while the block runs."""
    size = (int(model_args["n_layer"]), int(model_args["n_head"]), int(model_args["dim"]))
    if name in GPT_SIZES and GPT_SIZES[name] != size:
        raise ValueError(f"--gpt-model {name} is registered as {GPT_SIZES[name]}, the fixture has {size}")
    added = name not in GPT_SIZES
    GPT_SIZES[name] = size
    try:
        yield
    finally:
        if added:
            del GPT_SIZES[name]


def _flag(flags: list[str], name: str) -> str:
    """The value of ``name`` in a flag list written as --name=value or --name value."""
    for i, f in enumerate(flags):
        if f.startswith(name + "="):
            return f.split("=", 1)[1]
        if f == name:
            return flags[i + 1]
    raise KeyError(name)


def cca_step_llamagen(fixture_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    fixture_dir = Path(fixture_dir)
    flags = [*config["cli_flags"], f"--max-steps={int(config['data']['optimizer_steps'])}"]
    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    dataset = list(zip(inputs["codes"], inputs["labels"]))
    dist = cdist.init()
    with registered_size(_flag(flags, "--gpt-model"), config["constructor_args"]["ModelArgs"]):
        fsdp = False
        args = finetune_cli.build_parser(fsdp).parse_args(flags)

        def make_trainer(hooks, out_dir):
            args.ref_ckpt = str(Path(out_dir) / "initial_weights.pt")      # the fixture's weights as a file
            torch.save({"model": load_file(str(fixture_dir / "weights.safetensors"))}, args.ref_ckpt)
            policy, reference = with_reference(finetune_cli.build_policy(args, fsdp), dist.device,
                                               compile=dist.device.type == "cuda" and not args.no_compile,
                                               log=logging.getLogger("cca"))
            for model in (policy, reference):
                model.cls_embedding.dropout_prob = 0.0       # the fixture's label-dropout draws: never drop
            cfg = finetune_cli.train_config(args, dist.world_size, Path(out_dir), None, fsdp)
            return Trainer(policy, reference, LlamaGenAdapter(args.num_classes), cfg, dist=dist, hooks=hooks)

        return run_recorded_steps(make_trainer, dataset, inputs.get("uniform_draws"))

