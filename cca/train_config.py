"""The configuration of one CCA fine-tune (cca/trainer.py): everything the loop needs besides the models, the
adapter and the data. The entry scripts map their flags onto it (docs/differences.md says which settings are the
original recipe's)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from cca.errors import UsageError
from cca.loss import canonical_loss_type
from cca.schedule import check_schedule

TORCH_FP16_SCALER = (2.0 ** 16, 2000, math.inf)   # torch's GradScaler: initial scale, growth interval; no cap


def check_loss_settings(loss_type: str, uncond_ratio: float) -> None:
    """One-line UsageError naming --loss_type or --uncond_ratio (both fine-tune dialects spell them so)."""
    try:
        canonical_loss_type(loss_type)
    except ValueError as e:
        raise UsageError(f"--loss_type: {e}") from None
    if not 0.0 <= uncond_ratio < 1.0:
        raise UsageError(f"--uncond_ratio: must be in [0, 1), got {uncond_ratio}")


@dataclass
class TrainConfig:
    out_dir: str
    batch_size: int                      # per-rank batch (rows per optimizer step on this rank)
    loss_type: str = "CCA"
    beta: float = 0.02
    lambda_: float = 1.0
    uncond_ratio: float = 0.0
    lr: float = 1e-5
    weight_decay: float = 0.0
    wd_end: float | None = None          # VAR --twde (schedules other than "constant")
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    fused_adamw: bool | None = None      # None: fused on CUDA only; True: wherever torch has the kernel
    max_grad_norm: float = 0.0           # 0: no clipping (of the accumulated gradient)
    grad_accum: int = 1
    grad_accum_reduction: str = "mean"   # mean: backward(loss / grad_accum) (VAR); sum: backward(loss) (LlamaGen)
    epochs: float = 1.0
    max_steps: int | None = None         # stop after this many optimizer steps; the schedule stays the epochs'
    schedule: str = "constant"           # constant | a VAR --sche name (lin0, lin, lin00, cos, exp, lin<T>)
    schedule_unit: str = "step"          # step | micro: indexed by micro-iteration, a step at its last one (VAR)
    schedule_total: float | None = None  # schedule length in schedule_unit; None: the epochs' steps (x grad_accum)
    warmup_steps: float = 0.0            # in schedule_unit
    warmup_start: float = 0.005          # VAR --wp0
    final_lr_ratio: float = 0.01         # VAR --wpe
    precision: str = "fp32"              # fp32 | fp16 | bf16 (autocast)
    fp16_scaler: tuple[float, int, float] | None = TORCH_FP16_SCALER   # init, growth interval, cap; None: off
    shuffle: bool = True                 # a seeded permutation per epoch (False: dataset order)
    log_every: int = 10
    ckpt_every: int = 0                  # optimizer steps between resumable checkpoints; 0: only at the end
    ckpt_steps: tuple[int, ...] = ()     # steps saved in any case (the LlamaGen scripts always save step 5000)
    ema: float = 0.0                     # EMA decay; 0: off
    ref_train_mode: bool = False         # run the reference with dropout (the original LlamaGen behaviour)
    joint_halves: bool = False           # CCA / unlearning: both halves in one 2B pass (default: positive then
                                         # negative half, each forward + backward: activations of B rows)
    roll_per_micro_batch: bool = False   # negatives rolled within each micro-batch (the originals), not the batch
    seed: int = 0
    resume: str | None = None            # None, "auto" (out_dir/resume.pt if present) or a path
    max_nonfinite: int = 20              # abort after this many consecutive skipped (non-finite) steps
    num_workers: int = 0
    parallel: str = "ddp"                # ddp | fsdp | none: how cca.parallel.parallelize wrapped the policy
    no_decay_keys: tuple[str, ...] = ()  # parameter-name parts exempt from weight decay (>=1-D rule aside)
    extra: dict = field(default_factory=dict)   # recorded in checkpoints (the CLI's flags)

    def validate(self) -> None:
        check_loss_settings(self.loss_type, self.uncond_ratio)
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if self.grad_accum < 1 or self.batch_size < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"per-process batch {self.batch_size} must be a positive multiple of the gradient "
                             f"accumulation steps {self.grad_accum}")
        if self.grad_accum_reduction not in ("mean", "sum") or self.schedule_unit not in ("step", "micro"):
            raise ValueError(f"grad_accum_reduction must be mean or sum and schedule_unit step or micro, got "
                             f"{self.grad_accum_reduction!r} / {self.schedule_unit!r}")
        check_schedule(self.schedule)
