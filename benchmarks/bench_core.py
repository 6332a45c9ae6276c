"""Benchmarks of the shared core: sequence_logprob vs log_softmax+gather, and a CCA step vs a plain next-token step.

    python benchmarks/bench_core.py
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from common import child_peak_mb, measure_peak_mb, paired_times  # noqa: E402

from cca.loss import sequence_logprob  # noqa: E402

# VAR-d16-like sequence shape at a width that fits a laptop: (B, L, V) = (8, 680, 4096) float32 = 89 MiB
LOGPROB_SHAPE = (8, 680, 4096)


def _naive(logits, targets):
    return logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1).sum(-1)


def _logprob_inputs(shape=LOGPROB_SHAPE):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g, requires_grad=True)
    targets = torch.randint(shape[-1], shape[:2], generator=g)
    return logits, targets


def memory_case(case: str, **kw) -> float:
    """Peak MiB of one forward+backward of the named log-prob implementation (run in a fresh process)."""
    logits, targets = _logprob_inputs()
    fn = {"ours": sequence_logprob, "naive": _naive}[case]

    def run():
        fn(logits, targets).sum().backward()

    return measure_peak_mb(run)


def bench_logprob(repeats: int = 5) -> dict:
    logits, targets = _logprob_inputs()

    def step(fn):
        def run():
            logits.grad = None
            fn(logits, targets).sum().backward()
        return run

    r = paired_times(step(sequence_logprob), step(_naive), repeats, warmup=2)
    m_ours, m_naive = child_peak_mb("bench_core", "ours"), child_peak_mb("bench_core", "naive")
    return {"logprob_time_ratio": r["ratio"], "logprob_peak_mem_ratio": m_ours / max(m_naive, 1e-9),
            "logprob_peak_mb_ours": m_ours, "logprob_peak_mb_naive": m_naive, "shape": list(LOGPROB_SHAPE)}


def plain_step(policy, optimizer, adapter, batch):
    """One ordinary next-token step on B rows (what pretraining does), for the CCA/plain cost ratio."""
    labels, inputs, targets = adapter.prepare(batch, torch.device("cpu"))
    logits = adapter.logits(policy, labels, inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class PreparedAdapter:
    """Wraps a family adapter so ``prepare`` returns a batch tokenized once up front: the step benchmarks then time
    the transformer work (what the 8/3 FLOP argument is about), not the frozen tokenizer."""

    def __init__(self, adapter, batch):
        self.inner, self.num_classes = adapter, adapter.num_classes
        self.prepared = adapter.prepare(batch, torch.device("cpu"))

    def prepare(self, batch, device):
        return self.prepared

    def logits(self, model, labels, inputs):
        return self.inner.logits(model, labels, inputs)


def _trainer(policy, adapter, tmp_dir):
    from cca.trainer import TrainConfig, Trainer
    B = adapter.prepared[0].shape[0]
    return Trainer(policy, copy.deepcopy(policy), adapter,
                   TrainConfig(out_dir=tmp_dir, batch_size=B, lr=1e-6, uncond_ratio=0.1))


def bench_train_step(make_case, repeats: int = 5, tmp_dir: str = "/tmp/cca-bench") -> dict:
    """``make_case()`` -> (policy, adapter, batch). Times Trainer.train_step vs a plain step on the same batch."""
    policy, adapter, batch = make_case()
    adapter = PreparedAdapter(adapter, batch)
    tr = _trainer(policy, adapter, tmp_dir)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    policy.train()
    r = paired_times(lambda: tr.train_step(batch), lambda: plain_step(policy, opt, adapter, batch), repeats,
                     warmup=2)
    return {"cca_over_plain_time": r["ratio"], "cca_step_s": r["a_s"], "plain_step_s": r["b_s"]}


def train_memory_case(make_case, case: str, tmp_dir: str = "/tmp/cca-bench") -> float:
    """Peak MiB above the post-import baseline of building the model (plus, for CCA, its frozen reference) and
    optimizer and running two steps."""
    def run():
        policy, adapter, batch = make_case()
        adapter = PreparedAdapter(adapter, batch)
        policy.train()
        if case == "cca":
            tr = _trainer(policy, adapter, tmp_dir)
            step = lambda: tr.train_step(batch)
        else:
            opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
            step = lambda: plain_step(policy, opt, adapter, batch)
        step()
        step()

    return measure_peak_mb(run)


if __name__ == "__main__":
    torch.set_num_threads(2)
    for k, v in bench_logprob().items():
        print(f"{k}: {v}")
