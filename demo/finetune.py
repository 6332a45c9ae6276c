"""CCA fine-tuning of a pretrained base model through the project's one training loop (``cca.trainer.Trainer``)
and the family's trainer adapter - the same code ``LlamaGen_finetune.py`` / ``VAR_finetune.py`` run.

The policy starts as a copy of the base model, the frozen reference is another copy; label dropout is off in both
(the conditions the trainer builds must reach the model unchanged).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

from torch import nn

from cca import dist as cdist
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
    trainer = Trainer(policy, reference, adapter, tc, dist=cdist.init())
    log = logging.getLogger("cca")
    propagate = log.propagate
    log.propagate = False          # the trainer logs to out_dir/log.txt; keep the console for progress bars
    log.addHandler(logging.NullHandler())     # a handler is set up: the trainer adds no console handler
    try:
        last = trainer.fit(dataset)
    finally:
        log.propagate = propagate
        if trainer.tb is not None:
            trainer.tb.close()
        for handler in list(log.handlers):   # one file handler per run: do not keep writing into an old folder
            handler.close()
            log.removeHandler(handler)
    return policy.eval(), {k: float(v) for k, v in last.items()}
