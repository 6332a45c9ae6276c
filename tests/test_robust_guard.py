"""NaN / Inf guard and determinism of the shared trainer (in process, toy model): a non-finite step is skipped with a
warning and changes nothing, training recovers, K in a row abort with one line and the last good checkpoint intact;
the same seed gives the same fine-tune, and augmentation draws do not depend on workers or resumes."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cca.data import ResumableBatchSampler, SeededFetch
from cca.errors import TrainingError
from cca.trainer import TrainConfig, Trainer
from toy import ToyAdapter, ToyAR, ToyData

NC, V = 4, 6


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.one_thread


class PoisonAdapter(ToyAdapter):
    """ToyAdapter whose policy logits are NaN, or whose reference gives token 0 zero probability (an infinite loss
    with finite gradients), on chosen optimizer steps (1-based)."""

    def __init__(self, nan_steps=(), inf_steps=()):
        super().__init__(NC, V)
        self.nan_steps, self.inf_steps, self.step = set(nan_steps), set(inf_steps), 0

    def prepare(self, batch, device):
        self.step += 1
        return super().prepare(batch, device)

    def logits(self, model, labels, inputs):
        out = super().logits(model, labels, inputs)                       # (N, L, V)
        if self.step in self.nan_steps and model.training:
            out = out * float("nan")
        if self.step in self.inf_steps and not model.training:            # the frozen reference
            out = out.clone()
            out[..., 0] = float("-inf")
        return out


def _models(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    ref = ToyAR(NC, V, dropout=dropout)
    return copy.deepcopy(ref), ref


def _cfg(out, **kw):
    base = dict(out_dir=str(out), batch_size=8, lr=1e-2, beta=1.0, lambda_=1.0, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _snapshots(policy):
    seen = {}

    def export(state_dict, step, final):
        seen[step] = {k: v.clone() for k, v in state_dict.items()}
    return seen, export


def test_nonfinite_step_is_skipped_with_a_warning_and_training_recovers(tmp_path, caplog):
    policy, ref = _models()
    seen, export = _snapshots(policy)
    adapter = PoisonAdapter(nan_steps={2}, inf_steps={3})
    tr = Trainer(policy, ref, adapter, _cfg(tmp_path, max_steps=5, ckpt_every=1, max_nonfinite=3), export=export)
    with caplog.at_level(logging.WARNING, logger="cca"):
        tr.fit(ToyData(48))
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert warnings == ["step 2: non-finite loss or gradient norm, step skipped (1 in a row)",
                        "step 3: non-finite loss or gradient norm, step skipped (2 in a row)"]
    for k in seen[1]:
        assert torch.equal(seen[2][k], seen[1][k]) and torch.equal(seen[3][k], seen[1][k]), k   # nothing applied
    assert any(not torch.equal(seen[4][k], seen[3][k]) for k in seen[1])                       # then it trains
    assert all(torch.isfinite(v).all() for v in policy.state_dict().values())
    adam_steps = {int(s["step"]) for s in tr.optimizer.state.values()}
    assert adam_steps == {3}                                 # 5 steps, 2 skipped: the moments saw 3 updates


def test_infinite_loss_with_finite_gradients_counts_as_nonfinite(tmp_path):
    policy, ref = _models()
    tr = Trainer(policy, ref, PoisonAdapter(inf_steps={1}), _cfg(tmp_path, max_steps=1))
    before = copy.deepcopy(policy.state_dict())
    metrics = tr.train_step(next(iter(DataLoader(ToyData(8), batch_size=8))))
    assert torch.isinf(metrics["loss"]) and torch.isfinite(metrics["grad_norm"])
    assert tr.nonfinite_run == 1
    for k, v in policy.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_consecutive_nonfinite_steps_abort_with_the_last_good_checkpoint_intact(tmp_path):
    policy, ref = _models()
    seen, export = _snapshots(policy)
    adapter = PoisonAdapter(nan_steps=set(range(3, 100)))
    tr = Trainer(policy, ref, adapter, _cfg(tmp_path, epochs=10.0, ckpt_every=2, max_nonfinite=4), export=export)
    with pytest.raises(TrainingError) as err:
        tr.fit(ToyData(32))
    msg = str(err.value)
    assert "\n" not in msg and "aborting: 4 consecutive non-finite steps" in msg and str(tmp_path) in msg
    assert tr.step == 5 and adapter.step == 6                # 3-5 skipped (saved at 4), the 4th bad one (6) aborts
    state = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert state["step"] == 4
    for k, v in state["model"].items():                      # the last good weights, from step 2
        assert torch.equal(v, seen[2][k]) and torch.isfinite(v).all(), k
    assert all(torch.isfinite(t).all() for s in state["optimizer"]["state"].values() for t in s.values())


def _fine_tune(out, seed):
    policy, ref = _models(dropout=0.2)
    Trainer(policy, ref, ToyAdapter(NC, V), _cfg(out, epochs=2.0, seed=seed, uncond_ratio=0.3, log_every=5)).fit(
        NoisyToyData(40))
    return policy.state_dict()


class NoisyToyData(ToyData):
    """ToyData with a random token replaced on every access (an augmentation drawn from the torch RNG)."""

    def __getitem__(self, i):
        label, tokens = super().__getitem__(i)
        tokens = tokens.clone()
        tokens[torch.randint(len(tokens), ())] = torch.randint(V, ())
        return label, tokens


def test_same_seed_same_fine_tune_other_seed_differs(tmp_path):
    a, b, c = _fine_tune(tmp_path / "a", 0), _fine_tune(tmp_path / "b", 0), _fine_tune(tmp_path / "c", 1)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], c[k]) for k in a)


class Draws(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.rand(())


def test_seeded_fetch_draws_depend_on_item_and_epoch_only():
    def epoch_draws(epoch, workers, start=0, world=1, rank=0):
        fetch = SeededFetch(Draws(), seed=5)
        fetch.epoch = epoch
        sampler = ResumableBatchSampler(12, 3, rank=rank, world=world, seed=5)
        sampler.set_epoch(epoch, start)
        loader = DataLoader(fetch, batch_sampler=sampler, num_workers=workers, generator=torch.Generator())
        return {int(i): float(d) for idx, draw in loader for i, d in zip(idx.view(-1), draw)}

    torch.manual_seed(0)
    state = torch.get_rng_state()
    base = epoch_draws(1, 0)
    assert torch.equal(torch.get_rng_state(), state)           # the caller's RNG is not consumed
    assert len(base) == 12 and len(set(base.values())) == 12
    assert epoch_draws(1, 2) == base                           # worker processes
    resumed = epoch_draws(1, 0, start=2)
    assert resumed == {i: base[i] for i in resumed} and len(resumed) == 6
    two = {**epoch_draws(1, 0, world=2, rank=0), **epoch_draws(1, 0, world=2, rank=1)}
    assert two == base                                         # another world size
    assert epoch_draws(2, 0) != base                           # a new epoch draws anew
