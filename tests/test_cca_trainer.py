import copy

import pytest
import torch

from cca import dist as cdist
from cca.errors import TrainingError, UsageError
from cca.loss import sequence_logprob
from cca.trainer import TrainConfig, Trainer
from toy import ToyAdapter, ToyAR, ToyData

NC, V = 4, 6


def _models(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    ref = ToyAR(NC, V, dropout=dropout)
    return copy.deepcopy(ref), ref


def _cfg(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), batch_size=8, lr=1e-2, beta=1.0, lambda_=1.0, log_every=1, epochs=1.0)
    base.update(kw)
    return TrainConfig(**base)


def _deltas(policy, ref, data):
    labels, tokens = data.labels, data.tokens
    adapter = ToyAdapter(NC, V)
    _, prev, tgt = adapter.prepare((labels, tokens), torch.device("cpu"))
    neg = torch.roll(labels, -1)
    with torch.no_grad():
        dp = sequence_logprob(policy(labels, prev), tgt) - sequence_logprob(ref(labels, prev), tgt)
        dn = sequence_logprob(policy(neg, prev), tgt) - sequence_logprob(ref(neg, prev), tgt)
    return dp.mean().item(), dn.mean().item()


def test_one_step_changes_every_policy_param_and_never_the_reference(tmp_path):
    policy, ref = _models()
    ref_before = copy.deepcopy(ref.state_dict())
    pol_before = copy.deepcopy(policy.state_dict())
    tr = Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path, max_steps=1))
    tr.fit(ToyData(16))
    for k, v in policy.state_dict().items():
        assert not torch.equal(v, pol_before[k]), f"{k} unchanged"
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ref_before[k]), f"reference {k} changed"
    assert all(not p.requires_grad for p in ref.parameters())
    assert (tmp_path / "resume.pt").exists() and (tmp_path / "log.txt").exists()


def test_cca_raises_delta_pos_and_lowers_delta_neg(tmp_path):
    policy, ref = _models()
    data = ToyData(64)
    tr = Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path, epochs=3.0, lr=2e-2))
    last = tr.fit(data)
    dp, dn = _deltas(policy, ref, data)
    assert dp > 0.1 and dn < -0.1, (dp, dn)
    assert last["pref_acc"] > 0.5


@pytest.mark.parametrize("uncond_ratio", [0.0, 0.3])
def test_accumulation_invariance(tmp_path, uncond_ratio):
    finals = []
    for bs, ac in ((8, 1), (8, 2), (8, 4)):
        policy, ref = _models()
        tr = Trainer(policy, ref, ToyAdapter(NC, V),
                     _cfg(tmp_path / f"{ac}", grad_accum=ac, max_steps=3, uncond_ratio=uncond_ratio,
                          max_grad_norm=1.0))
        tr.fit(ToyData(32))
        finals.append(policy.state_dict())
    for other in finals[1:]:
        for k in finals[0]:
            torch.testing.assert_close(other[k], finals[0][k], atol=1e-5, rtol=0)


def test_micro_batches_run_2b_rows_and_reference_in_eval_mode(tmp_path):
    policy, ref = _models(dropout=0.5)
    modes = []
    ref.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    adapter = ToyAdapter(NC, V)
    Trainer(policy, ref, adapter, _cfg(tmp_path, grad_accum=2, max_steps=1)).fit(ToyData(16))
    assert adapter.rows_seen == 2 * (2 * 8)           # policy + reference, each on 2B rows
    assert modes == [False, False]
    modes.clear()
    Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path / "t", max_steps=1, ref_train_mode=True)).fit(ToyData(16))
    assert modes == [True]


@pytest.mark.parametrize("loss_type,uncond_ratio", [("CCA", 0.0), ("CCA", 0.4), ("unlearning", 0.4), ("DPO", 0.0)])
def test_split_halves_give_the_joint_pass_update(tmp_path, loss_type, uncond_ratio):
    """The positive and negative halves run one after the other (separable losses) and land on the parameters
    and metrics of the single 2B-row pass; DPO, which couples the halves, always takes the joint pass."""
    results = []
    for split in (True, False):
        policy, ref = _models()
        rows = []
        policy.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
        tr = Trainer(policy, ref, ToyAdapter(NC, V),
                     _cfg(tmp_path / str(split), loss_type=loss_type, uncond_ratio=uncond_ratio, grad_accum=2,
                          max_steps=2, lambda_=2.0, joint_halves=not split))
        last = tr.fit(ToyData(32))
        results.append((policy.state_dict(), last, rows))
    (split_sd, split_last, split_rows), (joint_sd, joint_last, joint_rows) = results
    assert joint_rows == [8] * 4                                   # 2 steps x 2 micro-batches of 2 x 4 rows
    assert split_rows == ([8] * 4 if loss_type == "DPO" else [4] * 8)
    for k in joint_sd:
        torch.testing.assert_close(split_sd[k], joint_sd[k], atol=1e-6, rtol=1e-6)
    for k in ("loss", "pref_acc"):
        assert abs(split_last[k] - joint_last[k]) < 1e-5, k


def test_resume_is_bit_identical(tmp_path):
    data = ToyData(48)
    kw = dict(epochs=2.0, uncond_ratio=0.25, max_grad_norm=0.5, schedule="lin0", warmup_steps=2)
    policy, ref = _models(dropout=0.1)
    Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path / "full", **kw)).fit(data)
    full = policy.state_dict()
    # killed right after the checkpoint at step 4 of 12 (mid-epoch 1 of 2), resumed with fresh models
    class Killed(Exception):
        pass

    def kill(sd, step, final):
        raise Killed

    policy, ref = _models(dropout=0.1)
    with pytest.raises(Killed):
        Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path / "part", ckpt_every=4, **kw), export=kill).fit(data)
    torch.manual_seed(1234)   # a different RNG state before resuming must not matter
    policy2, ref2 = _models(seed=99, dropout=0.1)
    ref2.load_state_dict(ref.state_dict())
    tr = Trainer(policy2, ref2, ToyAdapter(NC, V), _cfg(tmp_path / "part", resume="auto", **kw))
    tr.fit(data)
    assert tr.step == 12
    for k, v in policy2.state_dict().items():
        assert torch.equal(v, full[k]), k


def test_nonfinite_steps_are_skipped_then_abort(tmp_path):
    policy, ref = _models()
    with torch.no_grad():
        policy.head.bias.fill_(float("nan"))
    tr = Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path, max_nonfinite=3, epochs=4.0))
    with pytest.raises(TrainingError, match="3 consecutive non-finite"):
        tr.fit(ToyData(16))
    assert tr.step == 2


def test_bad_config_is_rejected(tmp_path):
    policy, ref = _models()
    with pytest.raises(ValueError, match="multiple of the gradient accumulation"):
        Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path, batch_size=6, grad_accum=4))
    with pytest.raises(ValueError, match="valid: CCA"):
        Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path, loss_type="Unlearnin"))
    with pytest.raises(UsageError, match="smaller than one global batch"):
        Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path, batch_size=32)).fit(ToyData(16))


def test_export_and_ema(tmp_path):
    seen = []
    policy, ref = _models()
    tr = Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path, max_steps=2, ema=0.5),
                 export=lambda sd, step, final: seen.append((sorted(sd), step, final)))
    tr.fit(ToyData(32))
    assert seen == [(sorted(policy.state_dict()), 2, True)]
    ema = torch.load(tmp_path / "ema.pth", weights_only=True)
    assert set(ema) == set(policy.state_dict())
    assert not torch.equal(ema["fc.weight"], policy.state_dict()["fc.weight"])


def test_dist_fallback_single_process():
    d = cdist.init()
    assert (d.rank, d.world_size, d.device.type) == (0, 1, "cpu") and d.is_main
    cdist.barrier()
    assert cdist.all_reduce_dict({"a": 1.5, "b": torch.tensor(2.0)}) == {"a": 1.5, "b": 2.0}


def test_weight_decay_groups_and_per_run_logs(tmp_path):
    policy, ref = _models()
    tr = Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path / "a", max_steps=1, weight_decay=0.1,
                                                      no_decay_keys=("cls_emb",)))
    decayed = {id(p) for g in tr.optimizer.param_groups if g["wd_scale"] > 0 for p in g["params"]}
    names = {n for n, p in policy.named_parameters() if id(p) in decayed}
    assert names == {"tok_emb.weight", "fc.weight", "head.weight"}
    tr.fit(ToyData(16))
    policy2, ref2 = _models()
    Trainer(policy2, ref2, ToyAdapter(NC, V), _cfg(tmp_path / "b", max_steps=1)).fit(ToyData(16))
    a, b = (tmp_path / "a" / "log.txt").read_text(), (tmp_path / "b" / "log.txt").read_text()
    assert a.count("training 1 steps") == 1 and b.count("training 1 steps") == 1


class _Recorder:
    def __init__(self):
        self.calls = []

    def open(self, total, done, text):
        self.calls.append(("open", total, done))

    def advance(self, step):
        self.calls.append(("advance", step))

    def report(self, step, total, metrics):
        self.calls.append(("report", step, sorted(metrics)))

    def close(self, text):
        self.calls.append(("close", text is not None))


def test_the_sink_passed_in_sees_the_run_and_is_closed_also_when_it_fails(tmp_path):
    policy, ref = _models()
    sink = _Recorder()
    Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path / "a", max_steps=2, log_every=2), sink=sink).fit(ToyData(32))
    assert [c[0] for c in sink.calls] == ["open", "advance", "advance", "report", "close"]
    assert sink.calls[0] == ("open", 2, 0) and sink.calls[-1] == ("close", True) and "loss" in sink.calls[3][2]
    assert not (tmp_path / "a" / "log.txt").exists() and not (tmp_path / "a" / "tb").exists()   # nothing else
    failing = _Recorder()
    with pytest.raises(UsageError):
        Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path / "b", batch_size=32), sink=failing).fit(ToyData(16))
    assert failing.calls == [("close", False)]


def test_a_multi_process_ddp_run_refuses_a_model_that_was_not_parallelized(tmp_path):
    policy, ref = _models()
    two = cdist.Dist(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(ValueError, match="cca.parallel.parallelize"):
        Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path), dist=two)
