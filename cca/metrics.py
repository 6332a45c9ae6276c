"""Where a training run's progress and metrics go: sinks the caller passes to the trainer, closed when the run ends.

A sink sees four calls: ``open`` when the run starts (or resumes), ``advance`` after every optimizer step,
``report`` with the metrics averaged over all ranks every ``log_every`` steps, and ``close`` at the end (``text``
is None when the run stopped with an error). Warnings stay on the ``cca`` logger.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

_FORMAT = "%(asctime)s %(message)s"


class Sink(Protocol):
    def open(self, total: int, done: int, text: str) -> None: ...

    def advance(self, step: int) -> None: ...

    def report(self, step: int, total: int, metrics: dict[str, float]) -> None: ...

    def close(self, text: str | None) -> None: ...


class NullSink:
    """Nothing is shown or written (ranks other than 0)."""

    def open(self, total: int, done: int, text: str) -> None:
        pass

    def advance(self, step: int) -> None:
        pass

    def report(self, step: int, total: int, metrics: dict[str, float]) -> None:
        pass

    def close(self, text: str | None) -> None:
        pass


class LogSink(NullSink):
    """Lines on the ``cca`` logger and in ``log_file``; a console handler only when nobody set one up and
    ``console`` is on."""

    def __init__(self, log_file: str | Path | None, console: bool = True):
        self.log_file, self.console, self.file = log_file, console, None
        self.log = logging.getLogger("cca")

    def open(self, total: int, done: int, text: str) -> None:
        self.log.setLevel(logging.INFO)
        if self.console and not self.log.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(_FORMAT))
            self.log.addHandler(handler)
        if self.log_file is not None:     # warnings of the run land in the file too
            self.file = logging.FileHandler(self.log_file)
            self.file.setFormatter(logging.Formatter(_FORMAT))
            self.log.addHandler(self.file)
        self.log.info("%s", text)

    def report(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.log.info("step %d/%d %s", step, total, " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))

    def close(self, text: str | None) -> None:
        if text is not None:
            self.log.info("%s", text)
        if self.file is not None:
            self.log.removeHandler(self.file)
            self.file.close()
            self.file = None


class ProgressBar(NullSink):
    """A tqdm bar of optimizer steps with the last loss and preference accuracy."""

    def __init__(self, desc: str = "CCA fine-tune"):
        self.desc, self.bar = desc, None

    def open(self, total: int, done: int, text: str) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, initial=done, desc=self.desc, dynamic_ncols=True)

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def report(self, step: int, total: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4g}", acc=f"{metrics.get('pref_acc', 0):.2f}")

    def close(self, text: str | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorboardSink(NullSink):
    """Scalars ``train/<name>`` in ``log_dir``; when tensorboard is missing or broken, one warning and nothing else."""

    def __init__(self, log_dir: str | Path):
        self.log_dir, self.writer = log_dir, None

    def open(self, total: int, done: int, text: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.log_dir))
        except Exception as e:  # noqa: BLE001 - tensorboard missing or broken: keep training, say so once
            logging.getLogger("cca").warning("tensorboard logging off: %s", e)

    def report(self, step: int, total: int, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"train/{k}", v, step)

    def close(self, text: str | None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Sinks(NullSink):
    """Several sinks as one; each is closed even when another fails to close."""

    def __init__(self, *sinks: Sink):
        self.sinks = sinks

    def open(self, total: int, done: int, text: str) -> None:
        for s in self.sinks:
            s.open(total, done, text)

    def advance(self, step: int) -> None:
        for s in self.sinks:
            s.advance(step)

    def report(self, step: int, total: int, metrics: dict[str, float]) -> None:
        for s in self.sinks:
            s.report(step, total, metrics)

    def close(self, text: str | None) -> None:
        try:
            if self.sinks:
                self.sinks[0].close(text)
        finally:
            if len(self.sinks) > 1:
                Sinks(*self.sinks[1:]).close(text)


def standard_sink(out_dir: str | Path, is_main: bool) -> Sink:
    """What the fine-tune scripts show and keep: console and ``out_dir/log.txt``, a progress bar and tensorboard
    scalars in ``out_dir/tb`` on rank 0; nothing on the other ranks."""
    if not is_main:
        return NullSink()
    out_dir = Path(out_dir)
    return Sinks(ProgressBar(), TensorboardSink(out_dir / "tb"), LogSink(out_dir / "log.txt"))


@dataclass
class RunningMean:
    """Metric tensors summed since the last report (no host sync until ``take``)."""
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    n: int = 0
    last: dict[str, float] = field(default_factory=dict)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.n += 1

    def take(self) -> dict[str, torch.Tensor]:
        out = {k: v / self.n for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return out
