"""The one fine-tune driver: a family's policy, frozen reference, adapter and data set in, a trained run out.

Both fine-tune CLIs (VAR_finetune.py, LlamaGen/finetune_cli.py) map their flags onto a ``TrainConfig``, build
their family's models and data, and call ``finetune``: parallelisation (cca.parallel), the training loop
(cca.trainer) with the family's weight export, and the process group's shutdown.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn
from torch.utils.data import Dataset

from cca import dist as cdist
from cca.parallel import parallelize
from cca.train_config import TrainConfig
from cca.trainer import Adapter, Trainer

Export = Callable[[dict, int, bool], None]     # (full state dict, step, final) -> None, on rank 0


def finetune(policy: nn.Module, reference: nn.Module, adapter: Adapter, dataset: Dataset, cfg: TrainConfig,
             dist: cdist.Dist, *, make_export: Callable[[Trainer], Export] | None = None,
             shard: Callable[[nn.Module], nn.Module] | None = None,
             weights_path: Callable[[int], Path] | None = None) -> dict[str, float]:
    """Train ``policy`` against ``reference``; returns the last reported metrics. ``make_export(trainer)`` gives
    the function that writes the family's plain weights at every save (it may read ``trainer.ema``); ``shard`` is
    the family's FSDP2 sharding when ``cfg.parallel == 'fsdp'``; ``weights_path(step)``, under FSDP, the file every
    rank streams the bare weights into (cca/dcp.py) instead of ``make_export``."""
    model = parallelize(policy, cfg.parallel, dist, shard=shard)
    trainer = Trainer(model, reference, adapter, cfg, dist=dist, weights_path=weights_path)
    trainer.export = make_export(trainer) if make_export is not None else None
    last = trainer.fit(dataset)
    cdist.cleanup()
    return last
