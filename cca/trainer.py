"""The one CCA training loop. It knows nothing of VAR or LlamaGen beyond the family adapter (docs/CONTRACTS.md).

One optimizer step = one per-rank batch of B rows: conditions are built over all B rows (negatives = labels rolled
by one), then the batch is cut into ``grad_accum`` micro-batches; each micro-step runs the policy on its positive
and negative halves as one 2b batch with grad and the frozen reference under ``torch.inference_mode()``, and
backpropagates loss / grad_accum (gradient sync only on the last micro-step).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cca import dist as cdist
from cca.checkpoint import (CheckpointError, check_free_space, check_writable_dir, load_file_raw, load_strict,
                            save_atomic)
from cca.conditions import make_conditions
from cca.data import ResumableBatchSampler, SeededFetch
from cca.loss import _canonical, compute_loss, is_separable, sequence_logprob
from cca.schedule import apply_lr_wd, build_adamw, lr_wd_at


class Adapter(Protocol):
    num_classes: int

    def prepare(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def logits(self, model: nn.Module, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor: ...


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
    wd_end: float | None = None          # VAR --twde (only with schedule "var")
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    max_grad_norm: float = 0.0           # 0: no clipping
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    schedule: str = "constant"           # constant | var
    warmup_steps: float = 0.0
    final_lr_ratio: float = 0.01         # VAR --wpe
    precision: str = "fp32"              # fp32 | fp16 | bf16
    log_every: int = 10
    ckpt_every: int = 0                  # optimizer steps between resumable checkpoints; 0: only at the end
    ema: float = 0.0                     # EMA decay; 0: off
    ref_train_mode: bool = False         # run the reference with dropout (the original LlamaGen behaviour)
    split_halves: bool = True            # CCA / unlearning: positive then negative half, each forward+backward
    seed: int = 0
    resume: str | None = None            # None, "auto" (out_dir/resume.pt if present) or a path
    max_nonfinite: int = 20              # abort after this many consecutive skipped (non-finite) steps
    num_workers: int = 0
    find_unused_parameters: bool = False
    parallel: str = "ddp"                # ddp | fsdp (policy already sharded by the caller) | none
    no_decay_keys: tuple[str, ...] = ()  # parameter-name parts exempt from weight decay (>=1-D rule aside)
    extra: dict = field(default_factory=dict)   # recorded in checkpoints (the CLI's flags)

    def validate(self) -> None:
        _canonical(self.loss_type)
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if self.grad_accum < 1 or self.batch_size < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"per-process batch {self.batch_size} must be a positive multiple of the gradient "
                             f"accumulation steps {self.grad_accum}")
        if not 0.0 <= self.uncond_ratio < 1.0:
            raise ValueError(f"uncond_ratio must be in [0, 1), got {self.uncond_ratio}")


def _rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                   "gauss": float(gauss)}      # tensors and numbers only: loadable with weights_only=True
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, policy: nn.Module, reference: nn.Module, adapter: Adapter, cfg: TrainConfig, *,
                 dist: cdist.Dist | None = None, export: Callable[[dict, int, bool], None] | None = None):
        cfg.validate()
        self.cfg, self.adapter, self.export = cfg, adapter, export
        self.dist = dist or cdist.init()
        self.device = self.dist.device
        self.out_dir = check_writable_dir(cfg.out_dir, "--out_dir") if self.dist.is_main else Path(cfg.out_dir)
        self.policy = policy
        self.reference = reference.requires_grad_(False)
        self.model = policy
        if cfg.parallel == "ddp" and self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(policy, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)
        if self.dist.is_main:   # a full disk must stop the run now, not at its first checkpoint
            check_free_space(self.out_dir, self._checkpoint_bytes(), "one checkpoint (resume.pt and the weights)")
        self.optimizer = build_adamw(policy, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
                                     eps=cfg.adam_eps, no_decay_keys=tuple(cfg.no_decay_keys))
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.cond_gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.dist.rank)
        self.ema = ({k: v.detach().float().clone() for k, v in policy.state_dict().items()
                     if v.is_floating_point()} if cfg.ema > 0 and cfg.parallel != "fsdp" else None)
        self.step, self.epoch, self.batch_in_epoch, self.nonfinite_run = 0, 0, 0, 0
        self.log = logging.getLogger("cca")
        self.tb = None
        self._file_log: logging.Handler | None = None

    def _checkpoint_bytes(self) -> int:
        """Rough size of one save: resume.pt (weights + two AdamW moments, EMA) plus the exported weights."""
        weights = sum(v.numel() * v.element_size() for v in self.policy.state_dict().values())
        moments = sum(2 * p.numel() * 4 for p in self.policy.parameters() if p.requires_grad)
        return 2 * weights + moments + (2 * weights if self.cfg.ema > 0 else 0)

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _sync(self, last: bool):
        if last:
            if hasattr(self.model, "set_requires_gradient_sync"):
                self.model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()

    def _policy_logp(self, labels: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            logits = self.adapter.logits(self.model, labels, inputs)                 # (n, L, V)
        return sequence_logprob(logits, targets)                                      # (n,)

    def _micro_step(self, cond, inputs: torch.Tensor, targets: torch.Tensor, accum: int,
                    last: bool) -> tuple[torch.Tensor, dict]:
        """Forward and backward of one micro-batch of b images (2b rows: matched and mismatched labels); returns
        the loss (before the 1/accum scaling) and its metrics."""
        b = targets.shape[0]
        labels2 = torch.cat([cond.pos, cond.neg]).to(self.device)                   # (2b,)
        inputs2 = torch.cat([inputs, inputs])                                        # (2b, ...)
        targets2 = torch.cat([targets, targets])                                     # (2b, L)
        # the reference first: its temporaries are freed before the policy's activations exist
        with torch.inference_mode(), self._autocast():
            ref_logits = self.adapter.logits(self.reference, labels2, inputs2)
            ref_logp = sequence_logprob(ref_logits, targets2)
            del ref_logits
        ref_logp = ref_logp.clone()      # a normal tensor, usable next to autograd tensors
        mask = None if cond.neg_is_positive is None else cond.neg_is_positive.to(self.device)

        def loss_of(logp_pos, logp_neg):
            return compute_loss(self.cfg.loss_type, logp_pos, ref_logp[:b], logp_neg, ref_logp[b:],
                                beta=self.cfg.beta, lambda_=self.cfg.lambda_, neg_is_positive=mask,
                                null_rows=cond.null_rows if mask is not None else None)

        if not (self.cfg.split_halves and is_separable(self.cfg.loss_type)):
            with self._sync(last):
                logp = self._policy_logp(labels2, inputs2, targets2)                  # (2b,)
                loss, metrics = loss_of(logp[:b], logp[b:])
                self.scaler.scale(loss / accum).backward()
            return loss, metrics
        # the loss is a positive-row term plus a negative-row term: the halves run forward and backward one after
        # the other (same FLOPs, activations of b rows instead of 2b). In the first pass logp_neg is the
        # reference's own (a constant), so only the positive term has a gradient; in the second the positive
        # log-probs are detached and the full loss value comes out for the metrics.
        with self._sync(False):
            logp_pos = self._policy_logp(labels2[:b], inputs, targets)                # (b,)
            self.scaler.scale(loss_of(logp_pos, ref_logp[b:])[0] / accum).backward()
        with self._sync(last):
            logp_neg = self._policy_logp(labels2[b:], inputs, targets)                # (b,)
            loss, metrics = loss_of(logp_pos.detach(), logp_neg)
            self.scaler.scale(loss / accum).backward()
        return loss, metrics

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimizer step on one per-rank batch; returns detached metric tensors (no host sync)."""
        cfg = self.cfg
        labels, inputs, targets = self.adapter.prepare(batch, self.device)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.adapter.num_classes):
            raise ValueError(f"labels must be in [0, {self.adapter.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        cond = make_conditions(labels.cpu(), self.adapter.num_classes, cfg.uncond_ratio, generator=self.cond_gen)
        B = labels.shape[0]
        if B % cfg.grad_accum:
            raise ValueError(f"batch of {B} rows is not divisible by grad_accum {cfg.grad_accum}")
        mb = B // cfg.grad_accum
        self.policy.train()
        self.reference.train(cfg.ref_train_mode)
        sums: dict[str, torch.Tensor] = {}
        for j in range(cfg.grad_accum):
            rows = slice(j * mb, (j + 1) * mb)
            last = j == cfg.grad_accum - 1
            loss, metrics = self._micro_step(cond.select(rows), inputs[rows], targets[rows], cfg.grad_accum, last)
            for k, v in {"loss": loss.detach(), **metrics}.items():
                if k == "delta_neg_null":
                    continue
                sums[k] = sums.get(k, 0) + v.float() / cfg.grad_accum
        if cond.neg_is_positive is not None:   # same keys on every rank (all_reduce_dict)
            sums["null_fraction"] = cond.null_rows.float().mean()
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        sums["grad_norm"] = norm.detach().float()
        # the one host sync per optimizer step (skip / abort decision): an infinite loss can have finite gradients
        finite = bool(torch.isfinite(norm) & torch.isfinite(sums["loss"]))
        if finite:
            self.nonfinite_run = 0
            self.scaler.step(self.optimizer)
        else:
            self.nonfinite_run += 1
            if not self.scaler.is_enabled() or self.nonfinite_run > 3:
                self.log.warning("step %d: non-finite loss or gradient norm, step skipped (%d in a row)",
                                 self.step + 1, self.nonfinite_run)
            if self.nonfinite_run >= cfg.max_nonfinite:
                raise SystemExit(f"aborting: {self.nonfinite_run} consecutive non-finite steps (loss or gradients "
                                 f"are NaN/Inf; try a lower --lr or bf16); the last good checkpoint in "
                                 f"{self.out_dir} is intact")
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if finite and self.ema is not None:
            with torch.no_grad():
                for k, v in self.policy.state_dict().items():
                    if k in self.ema:
                        self.ema[k].lerp_(v.float(), 1 - cfg.ema)
        return sums

    # ------------------------------------------------------------------ state
    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.cfg.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            return get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))
        return {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}

    def _optim_state(self) -> dict:
        if self.cfg.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
            return get_optimizer_state_dict(self.policy, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def save(self, final: bool = False) -> None:
        """Resumable state (out_dir/resume.pt) plus the plain weights through ``export``; collective call."""
        model_sd, optim_sd = self._model_state(), self._optim_state()
        rng = [None] * self.dist.world_size
        mine = {"rng": _rng_state(), "cond_gen": self.cond_gen.get_state()}
        if self.dist.world_size > 1:
            torch.distributed.all_gather_object(rng, mine)
        else:
            rng = [mine]
        if self.dist.is_main:
            state = {"model": model_sd, "optimizer": optim_sd, "scaler": self.scaler.state_dict(),
                     "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                     "rng_per_rank": rng, "world_size": self.dist.world_size,
                     "config": json.loads(json.dumps(dataclasses.asdict(self.cfg), default=str))}
            if self.ema is not None:
                state["ema"] = self.ema
            save_atomic(state, self.out_dir / "resume.pt")
            if self.export is not None:
                self.export(model_sd, self.step, final)
            if self.ema is not None:
                save_atomic({k: v.clone() for k, v in self.ema.items()}, self.out_dir / "ema.pth")
        cdist.barrier()

    def load(self, path: str | Path) -> None:
        state = load_file_raw(path)
        if not isinstance(state, dict) or "optimizer" not in state or "step" not in state:
            raise CheckpointError(f"{path}: not a resumable checkpoint of this trainer (expected resume.pt)")
        if self.cfg.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)
            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.policy, state["model"], options=opts)
            set_optimizer_state_dict(self.policy, self.optimizer, state["optimizer"], options=opts)
        else:
            load_strict(self.policy, state["model"], source=f"{path}", ignore=())
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if "ema" in state and self.ema is not None:
            self.ema = {k: v.float() for k, v in state["ema"].items()}
        per_rank = state["rng_per_rank"]
        if len(per_rank) == self.dist.world_size:
            _set_rng_state(per_rank[self.dist.rank]["rng"])
            self.cond_gen.set_state(per_rank[self.dist.rank]["cond_gen"])
        elif self.dist.is_main:
            self.log.warning("resuming with world size %d from a run with %d: random streams restart",
                             self.dist.world_size, len(per_rank))

    # ------------------------------------------------------------------ loop
    def _setup_logging(self) -> None:
        if not self.dist.is_main:
            return
        self.log.setLevel(logging.INFO)
        if not self.log.handlers and not logging.getLogger().handlers:   # console, unless the caller set one up
            console = logging.StreamHandler()
            console.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.log.addHandler(console)
        if self._file_log is None:    # this run's own log file; removed again when fit() ends
            self._file_log = logging.FileHandler(self.out_dir / "log.txt")
            self._file_log.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.log.addHandler(self._file_log)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out_dir / "tb"))
        except Exception as e:  # tensorboard missing or broken: keep training, say so once
            self.log.warning("tensorboard logging off: %s", e)

    def fit(self, dataset: Dataset, collate_fn=None) -> dict[str, float]:
        try:
            return self._fit(dataset, collate_fn)
        finally:
            if self._file_log is not None:
                self.log.removeHandler(self._file_log)
                self._file_log.close()
                self._file_log = None

    def _fit(self, dataset: Dataset, collate_fn=None) -> dict[str, float]:
        cfg = self.cfg
        sampler = ResumableBatchSampler(len(dataset), cfg.batch_size, rank=self.dist.rank,
                                        world=self.dist.world_size, seed=cfg.seed)
        per_epoch = sampler.batches_per_epoch
        if per_epoch == 0:
            raise SystemExit(f"dataset of {len(dataset)} items is smaller than one global batch "
                             f"({self.dist.world_size} processes x {cfg.batch_size} rows)")
        total = int(round(cfg.epochs * per_epoch))
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
        total = max(total, 1)
        resume = cfg.resume
        if resume == "auto":
            resume = str(self.out_dir / "resume.pt") if (Path(cfg.out_dir) / "resume.pt").exists() else None
        if resume:
            self.load(resume)
        self._setup_logging()
        if self.dist.is_main:
            self.log.info("training %d steps (%d per epoch), %d process(es) x %d rows, accumulation %d%s",
                          total, per_epoch, self.dist.world_size, cfg.batch_size, cfg.grad_accum,
                          f", resumed at step {self.step}" if resume else "")
        bar = None
        if self.dist.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=self.step, desc="CCA fine-tune", dynamic_ncols=True)
        acc: dict[str, torch.Tensor] = {}
        n_acc, last = 0, {}
        t0 = time.time()
        fetch = SeededFetch(dataset, cfg.seed)    # augmentation draws independent of workers and resumes
        while self.step < total:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(self.epoch)
            sampler.set_epoch(self.epoch, self.batch_in_epoch)
            fetch.epoch = self.epoch
            # its own generator: creating an iterator must not draw from the global RNG (exact resume)
            loader = DataLoader(fetch, batch_sampler=sampler, num_workers=cfg.num_workers,
                                collate_fn=collate_fn, pin_memory=self.device.type == "cuda",
                                generator=torch.Generator().manual_seed(cfg.seed + self.epoch))
            for batch in loader:
                lr, wd = lr_wd_at(self.step, total, schedule=cfg.schedule, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  wd_end=cfg.wd_end, warmup_steps=cfg.warmup_steps,
                                  final_lr_ratio=cfg.final_lr_ratio)
                apply_lr_wd(self.optimizer, lr, wd)
                metrics = self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                for k, v in metrics.items():
                    acc[k] = acc.get(k, 0) + v
                n_acc += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == total:
                    last = cdist.all_reduce_dict({k: v / n_acc for k, v in acc.items()})
                    last["lr"] = lr
                    acc, n_acc = {}, 0
                    if self.dist.is_main:
                        self.log.info("step %d/%d %s", self.step, total,
                                      " ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
                        if bar is not None:
                            bar.set_postfix(loss=f"{last['loss']:.4g}", acc=f"{last.get('pref_acc', 0):.2f}")
                        if self.tb is not None:
                            for k, v in last.items():
                                self.tb.add_scalar(f"train/{k}", v, self.step)
                if self.step >= total:
                    break
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save(final=False)
            else:
                self.epoch += 1
                self.batch_in_epoch = 0
        self.save(final=True)
        if bar is not None:
            bar.close()
        if self.tb is not None:
            self.tb.flush()
        if self.dist.is_main:
            self.log.info("done: %d steps in %.1fs", self.step, time.time() - t0)
        return last
