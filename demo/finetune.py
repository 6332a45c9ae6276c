"""CCA fine-tuning of a pretrained base model through the project's one training loop (``cca.trainer.Trainer``)
and the family's trainer adapter - the same code ``LlamaGen_finetune.py`` / ``VAR_finetune.py`` run.

The policy starts as a copy of the base model, the frozen reference is another copy; label dropout is off in both
(the conditions the trainer builds must reach the model unchanged).
"""
from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from cca import dist as cdist
from cca.metrics import LogSink, ProgressBar, Sinks, TensorboardSink
from cca.trainer import TrainConfig, Trainer
from demo.config import CCAConfig
from demo.pretrain import disable_label_dropout


def cca_finetune(base: nn.Module, adapter, dataset, cfg: CCAConfig, out_dir: Path, *, seed: int = 0,
                 loss_type: str = "CCA") -> tuple[nn.Module, dict]:
    """Returns (fine-tuned policy in eval mode, the trainer's last logged metrics)."""
    policy = disable_label_dropout(copy.deepcopy(base))
    reference = disable_label_dropout(copy.deepcopy(base)).eval()
    steps_per_epoch = max(1, len(dataset) // cfg.batch_size)
    tc = TrainConfig(out_dir=str(out_dir), batch_size=cfg.batch_size, loss_type=loss_type, beta=cfg.beta,
                     lambda_=cfg.lambda_, uncond_ratio=cfg.uncond_ratio, lr=cfg.lr, weight_decay=0.0,
                     epochs=cfg.epochs, log_every=max(1, min(25, int(cfg.epochs * steps_per_epoch) // 4)),
                     seed=seed, parallel="none")
    # the console keeps only the progress bar; the run's lines go to out_dir/log.txt
    sink = Sinks(ProgressBar(), TensorboardSink(out_dir / "tb"), LogSink(out_dir / "log.txt", console=False))
    last = Trainer(policy, reference, adapter, tc, dist=cdist.init(), sink=sink).fit(dataset)
    return policy.eval(), {k: float(v) for k, v in last.items()}
