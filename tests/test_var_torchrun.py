"""VAR_finetune.py under torchrun with 2 CPU processes (gloo): 2 steps on the tiny workspace of test_var_cli,
then --resume for a second epoch; VAR_sample.py sharded over 2 processes."""
from __future__ import annotations

import sys

import numpy as np

import pytest
import torch

from fixture_utils import REPO
from test_var_cli import check_run_folder, finetune_args, make_workspace, run, sample_args


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("var_torchrun"))


def test_finetune_under_torchrun_with_two_cpu_processes_then_resume(ws):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "VAR_finetune.py"), *finetune_args(ws, "ddp")], cwd=ws)
    check_run_folder(ws / "out" / "ddp", torch.load(ws / "ref.pth", weights_only=True))
    state = torch.load(ws / "out" / "ddp" / "resume.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 2

    # --resume continues that run (here in one process: another world size) for a second epoch
    run([sys.executable, str(REPO / "VAR_finetune.py"), *finetune_args(ws, "ddp", "--ep", "2", "--resume")], cwd=ws)
    state = torch.load(ws / "out" / "ddp" / "resume.pt", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 1
    assert "resumed at step 2" in (ws / "out" / "ddp" / "log.txt").read_text()


def test_sampling_sharded_over_two_processes(ws):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "VAR_sample.py"), *sample_args(ws, ws / "ref.pth")], cwd=ws)
    (npz_path,) = (ws / "samples").glob("*.npz")
    with np.load(npz_path) as f:
        assert f["arr_0"].shape == (8, 32, 32, 3) and np.bincount(f["arr_1"]).tolist() == [4, 4]
    parts = sorted(npz_path.with_name(npz_path.stem + ".parts").glob("*.idx.npy"))
    assert {p.name[:2] for p in parts} == {"r0", "r1"}           # both ranks produced samples
    done = np.concatenate([np.load(p) for p in parts])
    assert sorted(done.tolist()) == list(range(8))               # every index exactly once
