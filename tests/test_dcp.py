"""Sharded checkpoints (cca/dcp.py) in one process: save / load round trip, the streamed single-file export, an
interrupted save that leaves the previous checkpoint usable, a bit-identical trainer resume (random streams
included), and refusal of pickled objects. Several processes and other world sizes: test_dcp_reshard.py."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
from test_cca_trainer import NC, V, _cfg, _models
from toy import ToyAdapter, ToyAR, ToyData

from cca import dcp
from cca import dist as cdist
from cca.checkpoint import CheckpointError
from cca.trainer import Trainer

ONE = cdist.Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def _stepped(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A toy policy and its AdamW after one step (so the optimizer has moments to save)."""
    policy, _ = _models(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.1)
    labels, tokens = torch.tensor([0, 1]), torch.tensor([[1, 2, 3], [4, 5, 0]])
    policy(labels, tokens).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return policy, opt


def _assert_same(model_a, opt_a, model_b, opt_b) -> None:
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), k
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i, entry in sa["state"].items():
        for name, value in entry.items():
            assert torch.equal(value, sb["state"][i][name]), (i, name)


def test_save_load_round_trip(tmp_path):
    policy, opt = _stepped(0)
    streams = {"rng": torch.get_rng_state()}
    path = dcp.save(tmp_path / "resume", 7, policy, opt, {"step": 7, "note": "x"}, streams, ONE)
    assert path == tmp_path / "resume" / "step-0000007" and (path / ".metadata").is_file()
    fresh, fresh_opt = _stepped(5)                       # other weights and moments, overwritten by the load
    state, rng = dcp.load(path, fresh, fresh_opt, ONE)
    assert state["step"] == 7 and state["note"] == "x" and state["world_size"] == 1
    assert torch.equal(rng["rng"], streams["rng"])
    _assert_same(policy, opt, fresh, fresh_opt)
    # find(): a run folder, its resume/ folder and the checkpoint folder all name it; resume.pt is the fallback
    assert dcp.find(tmp_path) == dcp.find(tmp_path / "resume") == dcp.find(path) == path
    assert dcp.run_folder(path) == tmp_path and dcp.find(tmp_path / "nothing") is None


def test_streamed_export_is_a_plain_state_dict_file(tmp_path):
    tensors = {"w": torch.randn(3, 5), "low": torch.randn(700).to(torch.bfloat16), "ids": torch.arange(4),
               "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5), "view": torch.randn(6, 4).t()}
    model = torch.nn.Module()
    for k, v in tensors.items():
        model.register_buffer(k, v)
    path = dcp.export_weights(model, tmp_path / "w.pt", ONE)
    for mmap in (False, True):
        back = torch.load(path, weights_only=True, mmap=mmap)
        assert list(back) == list(tensors)
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]     # no temp file left


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "resume"
    policy, opt = _stepped(0)
    dcp.save(root, 1, policy, opt, {"step": 1}, {}, ONE)
    before, before_opt = _stepped(0)
    moved, moved_opt = _stepped(3)
    real_save = dcp.dcp.save

    def dies_after_one_shard(state_dict, checkpoint_id, **kw):     # the process dies with one shard on disk
        (checkpoint_id / "__0_0.distcp").write_bytes(b"part of a shard")
        raise KeyboardInterrupt
    monkeypatch.setattr(dcp.dcp, "save", dies_after_one_shard)
    with pytest.raises(KeyboardInterrupt):
        dcp.save(root, 2, moved, moved_opt, {"step": 2}, {}, ONE)
    assert (root / ".step-0000002.tmp").is_dir() and dcp.find(tmp_path) == root / "step-0000001"
    fresh, fresh_opt = _stepped(5)
    assert dcp.load(dcp.find(tmp_path), fresh, fresh_opt, ONE)[0]["step"] == 1
    _assert_same(before, before_opt, fresh, fresh_opt)
    # the next save clears the leftover and replaces the previous checkpoint
    monkeypatch.setattr(dcp.dcp, "save", real_save)
    dcp.save(root, 2, moved, moved_opt, {"step": 2}, {}, ONE)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000002"]


def test_saving_a_step_again_replaces_it(tmp_path):
    policy, opt = _stepped(0)
    dcp.save(tmp_path, 4, policy, opt, {"step": 4, "run": "first"}, {}, ONE)
    dcp.save(tmp_path, 4, policy, opt, {"step": 4, "run": "second"}, {}, ONE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000004"]
    assert dcp.load(tmp_path / "step-0000004", *_stepped(1), ONE)[0]["run"] == "second"


def test_trainer_resume_from_sharded_checkpoint_is_bit_identical(tmp_path):
    """The FSDP trainer path in one process: killed after the checkpoint at step 3 of 8, resumed (random streams of
    the null-class draws and dropout restored) to the same parameters as an uninterrupted run."""
    data = ToyData(32)
    kw = dict(epochs=2.0, uncond_ratio=0.25, max_grad_norm=0.5, parallel="fsdp")
    policy, ref = _models(dropout=0.1)
    Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path / "full", **kw)).fit(data)
    full = policy.state_dict()

    class Killed(Exception):
        pass

    def kill(step):
        raise Killed
    policy, ref = _models(dropout=0.1)
    with pytest.raises(Killed):
        Trainer(policy, ref, ToyAdapter(NC, V), _cfg(tmp_path / "part", ckpt_every=3, **kw), weights_path=kill).fit(data)
    assert dcp.find(tmp_path / "part") == tmp_path / "part" / "resume" / "step-0000003"
    torch.manual_seed(1234)
    policy2, ref2 = _models(seed=99, dropout=0.1)
    ref2.load_state_dict(ref.state_dict())
    trainer = Trainer(policy2, ref2, ToyAdapter(NC, V), _cfg(tmp_path / "part", resume="auto", **kw),
                      weights_path=lambda step: tmp_path / f"{step}.pt")
    trainer.fit(data)
    assert trainer.step == 8
    exported = torch.load(tmp_path / "8.pt", weights_only=True)
    for k, v in policy2.state_dict().items():
        assert torch.equal(v, full[k]) and torch.equal(exported[k], v), k


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_refused(tmp_path):
    policy, opt = _stepped(0)
    path = dcp.save(tmp_path, 1, policy, opt, {"step": 1}, {}, ONE)
    (path / ".metadata").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(CheckpointError, match="refused global"):
        dcp.load(path, *_stepped(1), ONE)
    (path / ".metadata").unlink()
    with pytest.raises(CheckpointError, match="not a complete sharded checkpoint"):
        dcp.load(path, *_stepped(1), ONE)


def test_checkpoint_of_another_model_is_one_line(tmp_path):
    policy, opt = _stepped(0)
    path = dcp.save(tmp_path, 1, policy, opt, {"step": 1}, {}, ONE)
    other = ToyAR(NC, V, dim=8)
    with pytest.raises(CheckpointError) as err:
        dcp.load(path, other, torch.optim.AdamW(other.parameters()), ONE)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: cannot be loaded") and "size" in msg.lower()
