"""The one CCA training loop. It knows nothing of VAR or LlamaGen beyond the family adapter (docs/CONTRACTS.md).

One optimizer step = one per-rank batch of B rows: conditions are built over all B rows (negatives = labels rolled
by one), then the batch is cut into ``grad_accum`` micro-batches; each micro-step runs the frozen reference under
``torch.inference_mode()`` and the policy with grad on its positive and negative halves, and backpropagates the
micro-batch loss divided by ``grad_accum`` (VAR's recipe) or undivided (LlamaGen's), with gradient sync only on
the last micro-step. Then the summed gradient is clipped and the optimizer steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cca import dcp
from cca import dist as cdist
from cca import train_state
from cca.checkpoint import check_free_space, check_writable_dir, save_atomic
from cca.conditions import make_conditions
from cca.data import ResumableBatchSampler, SeededFetch
from cca.loss import compute_loss, is_separable, sequence_logprob
from cca.schedule import apply_lr_wd, build_adamw, lr_wd_at
from cca.train_config import TORCH_FP16_SCALER, TrainConfig


class Adapter(Protocol):
    num_classes: int

    def prepare(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def logits(self, model: nn.Module, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Hooks:
    """Optional seams of the loop: where the null-class draws come from, and observers of every step."""
    uniforms: Callable[[int], torch.Tensor] | None = None   # n -> (n,) values in [0, 1); default: the seeded generator
    micro_step: Callable[[dict], None] | None = None        # {loss, labels (2b,), delta_pos (b,), delta_neg (b,)}
    step: Callable[[int, dict], None] | None = None         # (step, metrics + lr + weight_decay) after each step


class Trainer:
    def __init__(self, policy: nn.Module, reference: nn.Module, adapter: Adapter, cfg: TrainConfig, *,
                 dist: cdist.Dist | None = None, export: Callable[[dict, int, bool], None] | None = None,
                 hooks: Hooks | None = None, weights_path: Callable[[int], Path] | None = None):
        cfg.validate()
        self.cfg, self.adapter, self.export, self.hooks = cfg, adapter, export, hooks or Hooks()
        self.weights_path = weights_path
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
                                     eps=cfg.adam_eps, fused=cfg.fused_adamw, no_decay_keys=tuple(cfg.no_decay_keys))
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
        init_scale, growth_interval, self.max_scale = cfg.fp16_scaler or TORCH_FP16_SCALER
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=init_scale, growth_interval=growth_interval,
                                           enabled=cfg.precision == "fp16" and cfg.fp16_scaler is not None)
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

    def _micro_step(self, cond, inputs: torch.Tensor, targets: torch.Tensor, scale: float,
                    last: bool) -> tuple[torch.Tensor, dict]:
        """Forward and backward (of loss x ``scale``) of one micro-batch of b images (2b rows: matched and
        mismatched labels); returns the unscaled loss and its metrics."""
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
                logp_pos, logp_neg = logp[:b], logp[b:]
                loss, metrics = loss_of(logp_pos, logp_neg)
                self.scaler.scale(loss * scale).backward()
        else:
            # the loss is a positive-row term plus a negative-row term: the halves run forward and backward one
            # after the other (same FLOPs, activations of b rows instead of 2b). In the first pass logp_neg is the
            # reference's own (a constant), so only the positive term has a gradient; in the second the positive
            # log-probs are detached and the full loss value comes out for the metrics.
            with self._sync(False):
                logp_pos = self._policy_logp(labels2[:b], inputs, targets)            # (b,)
                self.scaler.scale(loss_of(logp_pos, ref_logp[b:])[0] * scale).backward()
            with self._sync(last):
                logp_neg = self._policy_logp(labels2[b:], inputs, targets)            # (b,)
                loss, metrics = loss_of(logp_pos.detach(), logp_neg)
                self.scaler.scale(loss * scale).backward()
        if self.hooks.micro_step is not None:
            self.hooks.micro_step({"loss": loss.detach(), "labels": labels2,
                                   "delta_pos": logp_pos.detach().float() - ref_logp[:b].float(),
                                   "delta_neg": logp_neg.detach().float() - ref_logp[b:].float()})
        return loss, metrics

    def _conditions(self, labels: torch.Tensor) -> list:
        """The Conditions of every micro-batch: labels rolled over the whole per-rank batch, or within each
        micro-batch (``roll_per_micro_batch``, the originals); null-class draws one uniform per row."""
        cfg, B = self.cfg, labels.shape[0]
        if B % cfg.grad_accum:
            raise ValueError(f"batch of {B} rows is not divisible by grad_accum {cfg.grad_accum}")
        draws = None
        if cfg.uncond_ratio > 0:
            draws = (self.hooks.uniforms or (lambda n: torch.rand(n, generator=self.cond_gen)))(B)
        mb = B // cfg.grad_accum
        slices = [slice(j * mb, (j + 1) * mb) for j in range(cfg.grad_accum)]

        def make(rows: slice):
            return make_conditions(labels[rows].cpu(), self.adapter.num_classes, cfg.uncond_ratio,
                                   uniform_draws=None if draws is None else draws[rows])

        if cfg.roll_per_micro_batch:
            return [make(rows) for rows in slices]
        whole = make(slice(None))
        return [whole.select(rows) for rows in slices]

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimizer step on one per-rank batch; returns detached metric tensors (no host sync)."""
        cfg = self.cfg
        labels, inputs, targets = self.adapter.prepare(batch, self.device)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.adapter.num_classes):
            raise ValueError(f"labels must be in [0, {self.adapter.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        conds = self._conditions(labels)
        mb = labels.shape[0] // cfg.grad_accum
        scale = 1.0 / cfg.grad_accum if cfg.grad_accum_reduction == "mean" else 1.0
        self.policy.train()
        self.reference.train(cfg.ref_train_mode)
        sums: dict[str, torch.Tensor] = {}
        for j, cond in enumerate(conds):
            rows = slice(j * mb, (j + 1) * mb)
            loss, metrics = self._micro_step(cond, inputs[rows], targets[rows], scale, j == cfg.grad_accum - 1)
            for k, v in {"loss": loss.detach(), **metrics}.items():
                if k == "delta_neg_null":
                    continue
                sums[k] = sums.get(k, 0) + v.float() / cfg.grad_accum
        if cfg.uncond_ratio > 0:   # same keys on every rank (all_reduce_dict)
            sums["null_fraction"] = torch.cat([c.null_rows for c in conds]).float().mean()
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
        self._update_scale()
        self.optimizer.zero_grad(set_to_none=True)
        if finite and self.ema is not None:
            with torch.no_grad():
                for k, v in self.policy.state_dict().items():
                    if k in self.ema:
                        self.ema[k].lerp_(v.float(), 1 - cfg.ema)
        return sums

    def _update_scale(self) -> None:
        """The loss scale's usual growth / back-off, except that a scale above the cap is set back to the cap
        (VAR's fp16 recipe: 2^11 at the start, x2 every 1000 finite steps, never kept above 2^15)."""
        if self.scaler.is_enabled() and self.scaler.get_scale() > self.max_scale:
            self.scaler.update(new_scale=self.max_scale)
        else:
            self.scaler.update()

    # ------------------------------------------------------------------ state
    def _loop_state(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "step": self.step, "epoch": self.epoch, "batch_in_epoch":
                self.batch_in_epoch, "config": json.loads(json.dumps(dataclasses.asdict(self.cfg), default=str))}

    def save(self, final: bool = False) -> None:
        """Resumable state (out_dir/resume.pt) and weights through ``export(state dict, step, final)`` on rank 0;
        FSDP: state sharded in out_dir/resume/, weights streamed by all ranks to ``weights_path(step)``. Collective."""
        mine = {"rng": train_state.rng_state(), "cond_gen": self.cond_gen.get_state()}
        if self.cfg.parallel == "fsdp":
            dcp.save(self.out_dir / dcp.ROOT, self.step, self.policy, self.optimizer, self._loop_state(), mine,
                     self.dist)
            if self.weights_path is not None:
                dcp.export_weights(self.policy, self.weights_path(self.step), self.dist)
            return
        model_sd, optim_sd = train_state.model_state(self.policy), self.optimizer.state_dict()
        rng = train_state.all_ranks(mine)
        if self.dist.is_main:
            state = {"model": model_sd, "optimizer": optim_sd, **self._loop_state(), "rng_per_rank": rng,
                     "world_size": self.dist.world_size}
            if self.ema is not None:
                state["ema"] = self.ema
            save_atomic(state, self.out_dir / "resume.pt")
            if self.export is not None:
                self.export(model_sd, self.step, final)
            if self.ema is not None:
                save_atomic({k: v.clone() for k, v in self.ema.items()}, self.out_dir / "ema.pth")
        cdist.barrier()

    def load(self, path: str | Path) -> None:
        """Resume from a resume.pt file or a sharded checkpoint folder (cca/dcp.py, any world size)."""
        state, rng = train_state.load(path, self.policy, self.optimizer, self.cfg.parallel == "fsdp", self.dist)
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if "ema" in state and self.ema is not None:
            self.ema = {k: v.float() for k, v in state["ema"].items()}
        if rng is not None:
            train_state.set_rng_state(rng["rng"])
            self.cond_gen.set_state(rng["cond_gen"])
        elif self.dist.is_main:
            self.log.warning("resuming with world size %d from a run with %d: random streams restart",
                             self.dist.world_size, state["world_size"])

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

    def _lr_wd(self, epoch_steps: int) -> tuple[float, float]:
        """(lr, weight decay) of the next optimizer step. The schedule is as long as the epochs make it (or
        ``schedule_total``), whatever ``max_steps`` says; indexed by micro-iteration, a step uses its last one."""
        cfg = self.cfg
        per = cfg.grad_accum if cfg.schedule_unit == "micro" else 1
        return lr_wd_at(self.step * per + per - 1, cfg.schedule_total or epoch_steps * per, schedule=cfg.schedule,
                        lr=cfg.lr, weight_decay=cfg.weight_decay, wd_end=cfg.wd_end, warmup_steps=cfg.warmup_steps,
                        warmup_start=cfg.warmup_start, final_lr_ratio=cfg.final_lr_ratio)

    def _report(self, acc: dict, n_acc: int, total: int, lr: float, bar) -> dict[str, float]:
        """Mean metrics since the last report over all ranks, logged on rank 0."""
        last = cdist.all_reduce_dict({k: v / n_acc for k, v in acc.items()})
        last["lr"] = lr
        if self.dist.is_main:
            self.log.info("step %d/%d %s", self.step, total, " ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.4g}", acc=f"{last.get('pref_acc', 0):.2f}")
            if self.tb is not None:
                for k, v in last.items():
                    self.tb.add_scalar(f"train/{k}", v, self.step)
        return last

    def _start(self, per_epoch: int) -> tuple[int, int, object]:
        """Resume if asked, open the logs; returns (steps the epochs make, steps to run, progress bar or None)."""
        cfg = self.cfg
        epoch_steps = max(1, int(round(cfg.epochs * per_epoch)))
        total = min(epoch_steps, cfg.max_steps) if cfg.max_steps and cfg.max_steps > 0 else epoch_steps
        resume = cfg.resume
        if resume == "auto":
            resume = str(found) if (found := dcp.find(cfg.out_dir)) is not None else None
        if resume:
            self.load(resume)
        self._setup_logging()
        bar = None
        if self.dist.is_main:
            self.log.info("training %d steps (%d per epoch), %d process(es) x %d rows, accumulation %d%s",
                          total, per_epoch, self.dist.world_size, cfg.batch_size, cfg.grad_accum,
                          f", resumed at step {self.step}" if resume else "")
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=self.step, desc="CCA fine-tune", dynamic_ncols=True)
        return epoch_steps, total, bar

    def _fit(self, dataset: Dataset, collate_fn=None) -> dict[str, float]:
        cfg = self.cfg
        sampler = ResumableBatchSampler(len(dataset), cfg.batch_size, rank=self.dist.rank,
                                        world=self.dist.world_size, seed=cfg.seed, shuffle=cfg.shuffle)
        per_epoch = sampler.batches_per_epoch
        if per_epoch == 0:
            raise SystemExit(f"dataset of {len(dataset)} items is smaller than one global batch "
                             f"({self.dist.world_size} processes x {cfg.batch_size} rows)")
        epoch_steps, total, bar = self._start(per_epoch)
        acc: dict[str, torch.Tensor] = {}
        n_acc, last, t0 = 0, {}, time.time()
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
                lr, wd = self._lr_wd(epoch_steps)
                apply_lr_wd(self.optimizer, lr, wd)
                metrics = self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                if self.hooks.step is not None:
                    self.hooks.step(self.step, {**metrics, "lr": lr, "weight_decay": wd})
                for k, v in metrics.items():
                    acc[k] = acc.get(k, 0) + v
                n_acc += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == total:
                    last, acc, n_acc = self._report(acc, n_acc, total, lr, bar), {}, 0
                if self.step >= total:
                    break
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step in cfg.ckpt_steps:
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
