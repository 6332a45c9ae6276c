"""Sharded checkpoints of LlamaGen_finetune_fsdp.py for real (torchrun, gloo, CPU, fp32): a 2-process run
SIGKILLed while writing a checkpoint resumes from the previous one, at 2 processes to weights bit-identical to the
uninterrupted 2-process run, at 1 and at 4 processes to within 1e-6 of them (FSDP reduces gradients in another
order at another world size).

Labels alternate along every global batch, so the negatives (labels rolled by one over each process's batch) are
the same at every world size (see test_robust_parallel.py); no dropout and no null-class draws, whose random
streams are per process and restart at another world size."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixture_utils import REPO
from llamagen_tiny import TINY_FLAGS, make_assets
from test_robust_parallel import write_paired_codes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
RUN = "000-default-GPT-debug"          # the run folder of --expid default in a fresh --results-dir


def command(nproc: int, ws: Path, results: str, *extra: str) -> list[str]:
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={nproc}"]
    return [*launch, str(REPO / "LlamaGen_finetune_fsdp.py"), "--ref_ckpt", str(ws / "ref.pt"), "--code-path",
            str(ws / "codes"), "--global-batch-size", "8", "--epochs", "1", "--lr", "1e-3", "--lambda_", "10",
            "--uncond_ratio", "0", "--mixed-precision", "none", "--num-workers", "0", "--ckpt-every", "1",
            "--log-every", "1", "--results-dir", str(ws / results), *TINY_FLAGS, *extra]


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def weights(ws: Path, results: str, step: int = 4) -> dict[str, torch.Tensor]:
    return torch.load(ws / results / RUN / "checkpoints" / f"{step:07d}.pt", weights_only=True)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Tiny assets, 32 code files (4 global batches of 8), and the uninterrupted 2-process run of 4 steps."""
    root = tmp_path_factory.mktemp("dcp_reshard")
    make_assets(root)
    write_paired_codes(root / "codes", 32, per_rank=2, seed=0, global_batch=8)
    run(command(2, root, "full"), root)
    return root


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:                                      # the process has just ended
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def kill_while_saving(cmd: list[str], cwd: Path, root: Path, log_path: Path) -> None:
    """Start ``cmd`` (torchrun) and SIGKILL it and its workers as soon as a checkpoint exists and part of a later
    one is on disk."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if any(root.glob("step-*")) and any(root.glob(".step-*.tmp/*")):
                for pid in process_tree(proc.pid):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.0005)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended ({proc.returncode}) before the kill: " \
                                               f"{log_path.read_text()[-2000:]}"


def test_killed_mid_save_then_resumed_at_2_1_and_4_processes(ws):
    root = ws / "killed" / RUN / "resume"
    for _ in range(3):              # a loaded machine may let the save finish between the poll and the kill
        shutil.rmtree(ws / "killed", ignore_errors=True)
        kill_while_saving(command(2, ws, "killed"), ws, root, ws / "killed.log")
        if any(root.glob(".step-*.tmp")):
            break
    (published,) = list(root.glob("step-*"))
    (unfinished,) = list(root.glob(".step-*.tmp"))
    step = int(published.name[len("step-"):])
    assert step < int(unfinished.name[len(".step-"):-len(".tmp")])
    assert sorted(p.name for p in published.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]   # one per rank
    for nproc in (1, 4):
        shutil.copytree(ws / "killed", ws / f"from2to{nproc}")            # leftover of the killed save included
    for nproc, results in ((2, "killed"), (1, "from2to1"), (4, "from2to4")):
        out = run(command(nproc, ws, results, "--resume", "auto"), ws)
        assert f"resumed at step {step}" in out and ("random streams restart" in out) == (nproc != 2)
        assert sorted(p.name for p in (ws / results / RUN / "resume").iterdir()) == ["step-0000004"]
    full, ref = weights(ws, "full"), torch.load(ws / "ref.pt", weights_only=True)["model"]
    assert max((full[k] - ref[k]).abs().max().item() for k in ref) > 1e-3          # training moved the weights
    same = weights(ws, "killed")
    for k in full:                                                               # same world size: bit-identical
        assert torch.equal(same[k], full[k]), k
    for nproc in (1, 4):                                                         # FSDP sums in another order
        resumed = weights(ws, f"from2to{nproc}")
        assert resumed.keys() == full.keys()
        worst = max((resumed[k] - full[k]).abs().max().item() for k in full)
        assert worst <= 1e-6, f"saved at 2, resumed at {nproc}: {worst:.3g} from the uninterrupted run"
