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
from cca.conditions import micro_batch_conditions
from cca.data import ResumableBatchSampler, SeededFetch
from cca.errors import TrainingError, UsageError
from cca.loss import PreferenceLoss, sequence_logprob
from cca.metrics import RunningMean, Sink, standard_sink
from cca.parallel import check_parallelized, unwrap
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
    """``model``: the policy as ``cca.parallel.parallelize`` returned it (DDP-wrapped, FSDP2-sharded or plain).
    ``sink``: where progress and metrics go (default: ``cca.metrics.standard_sink``)."""

    def __init__(self, model: nn.Module, reference: nn.Module, adapter: Adapter, cfg: TrainConfig, *,
                 dist: cdist.Dist | None = None, export: Callable[[dict, int, bool], None] | None = None,
                 hooks: Hooks | None = None, sink: Sink | None = None,
                 weights_path: Callable[[int], Path] | None = None):
        cfg.validate()
        self.cfg, self.adapter, self.export, self.hooks, self.sink = cfg, adapter, export, hooks or Hooks(), sink
        self.weights_path = weights_path
        self.loss = PreferenceLoss(cfg.loss_type, cfg.beta, cfg.lambda_)
        self.dist = dist or cdist.init()
        self.device = self.dist.device
        self.out_dir = check_writable_dir(cfg.out_dir, "--out_dir") if self.dist.is_main else Path(cfg.out_dir)
        check_parallelized(model, cfg.parallel, self.dist.world_size)
        self.model, self.policy = model, unwrap(model)       # forward through model; state and optimizer: policy
        policy = self.policy
        self.reference = reference.requires_grad_(False)
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
        ref_pos, ref_neg = ref_logp[:b], ref_logp[b:]
        mask = None if cond.neg_is_positive is None else cond.neg_is_positive.to(self.device)
        if self.cfg.joint_halves or not self.loss.separable:
            with self._sync(last):
                logp = self._policy_logp(labels2, inputs2, targets2)                  # (2b,)
                logp_pos, logp_neg = logp[:b], logp[b:]
                loss, metrics = self.loss(logp_pos, ref_pos, logp_neg, ref_neg, mask)
                self.scaler.scale(loss * scale).backward()
        else:
            # the halves run forward and backward one after the other (same FLOPs, activations of b rows instead
            # of 2b): first the positive-row term, then the full loss with the positive log-probs detached, whose
            # gradient is the negative-row term's and whose value is the one reported
            with self._sync(False):
                logp_pos = self._policy_logp(labels2[:b], inputs, targets)            # (b,)
                self.scaler.scale(self.loss.positive_term(logp_pos, ref_pos, mask) * scale).backward()
            with self._sync(last):
                logp_neg = self._policy_logp(labels2[b:], inputs, targets)            # (b,)
                loss, metrics = self.loss(logp_pos.detach(), ref_pos, logp_neg, ref_neg, mask)
                self.scaler.scale(loss * scale).backward()
        if self.hooks.micro_step is not None:
            self.hooks.micro_step({"loss": loss.detach(), "labels": labels2,
                                   "delta_pos": logp_pos.detach().float() - ref_logp[:b].float(),
                                   "delta_neg": logp_neg.detach().float() - ref_logp[b:].float()})
        return loss, metrics

    def _conditions(self, labels: torch.Tensor) -> list:
        """Every micro-batch's Conditions; the null-class draws (one uniform per row) from the hook or the seeded
        generator."""
        cfg, draws = self.cfg, None
        if cfg.uncond_ratio > 0:
            draws = (self.hooks.uniforms or (lambda n: torch.rand(n, generator=self.cond_gen)))(labels.shape[0])
        return micro_batch_conditions(labels, self.adapter.num_classes, cfg.grad_accum, cfg.uncond_ratio, draws,
                                      cfg.roll_per_micro_batch)

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimizer step on one per-rank batch; returns detached metric tensors (no host sync)."""
        cfg = self.cfg
        labels, inputs, targets = self.adapter.prepare(batch, self.device)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.adapter.num_classes):
            raise UsageError(f"labels must be in [0, {self.adapter.num_classes}), got "
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
                sums[k] = sums.get(k, 0) + v.float() / cfg.grad_accum
        if cfg.uncond_ratio > 0:   # same keys on every rank (all_reduce_dict)
            sums["null_fraction"] = torch.cat([c.null_rows for c in conds]).float().mean()
        sums["grad_norm"] = self._apply_gradients(sums["loss"])
        return sums

    def _apply_gradients(self, loss: torch.Tensor) -> torch.Tensor:
        """Clip, then step the optimizer (and the EMA) unless the loss or the gradient norm is not finite; aborts
        after ``max_nonfinite`` skipped steps in a row. Returns the gradient norm before clipping."""
        cfg = self.cfg
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        # the one host sync per optimizer step (skip / abort decision): an infinite loss can have finite gradients
        finite = bool(torch.isfinite(norm) & torch.isfinite(loss))
        if finite:
            self.nonfinite_run = 0
            self.scaler.step(self.optimizer)
        else:
            self.nonfinite_run += 1
            if not self.scaler.is_enabled() or self.nonfinite_run > 3:
                self.log.warning("step %d: non-finite loss or gradient norm, step skipped (%d in a row)",
                                 self.step + 1, self.nonfinite_run)
            if self.nonfinite_run >= cfg.max_nonfinite:
                raise TrainingError(f"aborting: {self.nonfinite_run} consecutive non-finite steps (loss or gradients "
                                    f"are NaN/Inf; try a lower --lr or bf16); the last good checkpoint in "
                                    f"{self.out_dir} is intact")
        self._update_scale()
        self.optimizer.zero_grad(set_to_none=True)
        if finite and self.ema is not None:
            with torch.no_grad():
                for k, v in self.policy.state_dict().items():
                    if k in self.ema:
                        self.ema[k].lerp_(v.float(), 1 - cfg.ema)
        return norm.detach().float()

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
            cdist.barrier()         # rank 0 may still be writing the weights: ranks leave the save together
            return
        model_sd, optim_sd = train_state.model_state(self.policy), self.optimizer.state_dict()
        rng = train_state.all_ranks(mine, self.dist.world_size)
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
    def fit(self, dataset: Dataset, collate_fn=None) -> dict[str, float]:
        """Train until ``max_steps`` or the epochs end (resuming first if asked), saving on the way and at the end;
        returns the last reported metrics. The sink (default: ``standard_sink``) is closed however it ends."""
        sink = self.sink or standard_sink(self.out_dir, self.dist.is_main)
        t0, done = time.time(), None
        try:
            last = self._fit(dataset, collate_fn, sink)
            done = f"done: {self.step} steps in {time.time() - t0:.1f}s"
        finally:
            sink.close(done)
        return last

    def _lr_wd(self, epoch_steps: int) -> tuple[float, float]:
        """(lr, weight decay) of the next optimizer step. The schedule is as long as the epochs make it (or
        ``schedule_total``), whatever ``max_steps`` says; indexed by micro-iteration, a step uses its last one."""
        cfg = self.cfg
        per = cfg.grad_accum if cfg.schedule_unit == "micro" else 1
        return lr_wd_at(self.step * per + per - 1, cfg.schedule_total or epoch_steps * per, schedule=cfg.schedule,
                        lr=cfg.lr, weight_decay=cfg.weight_decay, wd_end=cfg.wd_end, warmup_steps=cfg.warmup_steps,
                        warmup_start=cfg.warmup_start, final_lr_ratio=cfg.final_lr_ratio)

    def _start(self, per_epoch: int, sink: Sink) -> tuple[int, int]:
        """Resume if asked and open the sink; returns (steps the epochs make, steps to run)."""
        cfg = self.cfg
        epoch_steps = max(1, int(round(cfg.epochs * per_epoch)))
        total = min(epoch_steps, cfg.max_steps) if cfg.max_steps and cfg.max_steps > 0 else epoch_steps
        resume = cfg.resume
        if resume == "auto":
            resume = str(found) if (found := dcp.find(cfg.out_dir)) is not None else None
        if resume:
            self.load(resume)
        sink.open(total, self.step, f"training {total} steps ({per_epoch} per epoch), {self.dist.world_size} "
                  f"process(es) x {cfg.batch_size} rows, accumulation {cfg.grad_accum}"
                  + (f", resumed at step {self.step}" if resume else ""))
        return epoch_steps, total

    def _loader(self, dataset: Dataset, fetch: SeededFetch, sampler: ResumableBatchSampler, collate_fn):
        """This epoch's batches, from where the epoch stopped when resuming."""
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.epoch)
        sampler.set_epoch(self.epoch, self.batch_in_epoch)
        fetch.epoch = self.epoch
        # its own generator: creating an iterator must not draw from the global RNG (exact resume)
        return DataLoader(fetch, batch_sampler=sampler, num_workers=self.cfg.num_workers, collate_fn=collate_fn,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.cfg.seed + self.epoch))

    def _fit(self, dataset: Dataset, collate_fn, sink: Sink) -> dict[str, float]:
        cfg = self.cfg
        sampler = ResumableBatchSampler(len(dataset), cfg.batch_size, rank=self.dist.rank,
                                        world=self.dist.world_size, seed=cfg.seed, shuffle=cfg.shuffle)
        if sampler.batches_per_epoch == 0:
            raise UsageError(f"dataset of {len(dataset)} items is smaller than one global batch "
                             f"({self.dist.world_size} processes x {cfg.batch_size} rows)")
        epoch_steps, total = self._start(sampler.batches_per_epoch, sink)
        fetch = SeededFetch(dataset, cfg.seed)    # augmentation draws independent of workers and resumes
        mean = RunningMean()
        while self.step < total:
            for batch in self._loader(dataset, fetch, sampler, collate_fn):
                self._step_and_report(batch, epoch_steps, total, sink, mean)
                if self.step >= total:
                    break
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step in cfg.ckpt_steps:
                    self.save(final=False)
            else:
                self.epoch += 1
                self.batch_in_epoch = 0
        self.save(final=True)
        return mean.last

    def _step_and_report(self, batch: Any, epoch_steps: int, total: int, sink: Sink, mean: RunningMean) -> None:
        lr, wd = self._lr_wd(epoch_steps)
        apply_lr_wd(self.optimizer, lr, wd)
        metrics = self.train_step(batch)
        self.step += 1
        self.batch_in_epoch += 1
        if self.hooks.step is not None:
            self.hooks.step(self.step, {**metrics, "lr": lr, "weight_decay": wd})
        mean.add(metrics)
        sink.advance(self.step)
        if self.step % self.cfg.log_every == 0 or self.step == total:
            mean.last = {**cdist.all_reduce_dict(mean.take()), "lr": lr}     # over all ranks: a collective call
            sink.report(self.step, total, mean.last)

