"""CCA fine-tuning of a pretrained base model through the project's one training loop (``cca.trainer.Trainer``)
and the family's trainer adapter - the same code ``LlamaGen_finetune.py`` / ``VAR_finetune.py`` run.

The policy and the frozen reference are copies of the base model that the family prepares
(``demo.families.finetune_copies``: fine-tune dropout / drop path, the reference's dtype, no label dropout). The
CCA settings map onto the same ``TrainConfig`` fields the scripts' flags set (``CCAConfig``'s comments name the
flags).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cca import dist as cdist
from cca.metrics import LogSink, ProgressBar, Sinks, TensorboardSink
from cca.trainer import TrainConfig, Trainer
from demo.config import CCAConfig


def train_config(cfg: CCAConfig, out_dir: Path, images: int, seed: int) -> TrainConfig:
    """The trainer's configuration of one miniature fine-tune of ``images`` training items."""
    steps_per_epoch = max(1, images // cfg.batch_size)
    return TrainConfig(out_dir=str(out_dir), batch_size=cfg.batch_size,
                       loss_type="unlearning" if cfg.unlearning else "CCA", beta=cfg.beta, lambda_=cfg.lambda_,
                       uncond_ratio=cfg.uncond_ratio, lr=cfg.lr, weight_decay=0.0, epochs=cfg.epochs,
                       max_grad_norm=cfg.max_grad_norm, grad_accum=cfg.grad_accum,
                       grad_accum_reduction="mean" if cfg.grad_accum_mean else "sum",
                       ref_train_mode=not cfg.ref_eval_mode, roll_per_micro_batch=cfg.roll_per_micro_batch,
                       log_every=max(1, min(25, int(cfg.epochs * steps_per_epoch) // 4)), seed=seed,
                       parallel="none")


def cca_finetune(policy: nn.Module, reference: nn.Module, adapter, dataset, cfg: CCAConfig, out_dir: Path, *,
                 seed: int = 0) -> tuple[nn.Module, dict]:
    """Trains ``policy`` against the frozen ``reference``; returns (policy in eval mode, the trainer's last logged
    metrics)."""
    tc = train_config(cfg, out_dir, len(dataset), seed)
    # the console keeps only the progress bar; the run's lines go to out_dir/log.txt
    sink = Sinks(ProgressBar(), TensorboardSink(out_dir / "tb"), LogSink(out_dir / "log.txt", console=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)              # dropout / drop path draws, seeded as the fine-tune scripts seed them
        last = Trainer(policy, reference, adapter, tc, dist=cdist.init(), sink=sink).fit(dataset)
    return policy.eval(), {k: float(v) for k, v in last.items()}
