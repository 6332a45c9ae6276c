"""Interrupted runs, for real: SIGKILL a fine-tune at a random step and --resume it (parameters bit-identical to an
uninterrupted run, CPU fp32), SIGKILL inside a checkpoint save (the previous file stays loadable), SIGKILL a sampling
run and finish it with 2 processes (every index once, the same npz as one uninterrupted process)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from fixture_utils import REPO
from llamagen_tiny import CLASSES, EMBED, IMAGE, TINY_FLAGS, VOCAB, make_assets, write_codes
from test_var_cli import finetune_args as var_finetune_args
from test_var_cli import make_workspace as make_var_workspace

from cca.checkpoint import load_file_raw, save_atomic

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
RNG = random.Random()          # a fresh kill point every run; it is part of every failure message


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def run_until(cmd: list[str], cwd: Path, ready: Callable[[], bool], what: str, log_path: Path) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds (polled every millisecond); output to ``log_path``."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, \
        f"{what}: the run ended ({proc.returncode}) before the kill: {log_path.read_text()[-2000:]}"


def save_counter(path: Path) -> Callable[[], int]:
    """How many times ``path`` has been (atomically) replaced so far, as seen by polling."""
    seen: set[int] = set()

    def count() -> int:
        try:
            st = os.stat(path)                        # every atomic save renames a new file into place
            seen.add((st.st_ino, st.st_mtime_ns))
        except FileNotFoundError:
            pass
        return len(seen)
    return count


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


# --------------------------------------------------------------------------------------------------- VAR
def test_var_finetune_sigkill_then_resume_is_bit_identical(tmp_path):
    ws = make_var_workspace(tmp_path)
    steps = 12                                               # 8 images, --bs 4: 2 steps per epoch, 6 epochs
    flags = ["--ep", "6", "--ckpt_every", "1", "--dpr_ratio", "1", "--tclip", "0.5"]   # drop path: RNG in use
    script = [sys.executable, str(REPO / "VAR_finetune.py")]
    run(script + var_finetune_args(ws, "full", *flags), cwd=ws)

    kill_after = RNG.randint(1, steps - 4)
    killed = ws / "out" / "killed"
    saves = save_counter(killed / "resume.pt")
    run_until(script + var_finetune_args(ws, "killed", *flags), ws, lambda: saves() >= kill_after,
              f"VAR kill after save {kill_after}", tmp_path / "killed_run.log")
    state = load_file_raw(killed / "resume.pt")              # the last checkpoint before the kill loads
    assert kill_after <= state["step"] < steps, (kill_after, state["step"])

    out = run(script + var_finetune_args(ws, "killed", *flags, "--resume"), cwd=ws)
    assert f"resumed at step {state['step']}" in (killed / "log.txt").read_text(), out[-2000:]
    full = torch.load(ws / "out" / "full" / "ar-ckpt-last.pth", weights_only=True)
    resumed = torch.load(killed / "ar-ckpt-last.pth", weights_only=True)
    assert_same_tensors(full, resumed, f"VAR killed after checkpoint {state['step']}")
    ref = torch.load(ws / "ref.pth", weights_only=True)
    assert any(not torch.equal(full[k], ref[k]) for k in ref)
    opt_full = torch.load(ws / "out" / "full" / "resume.pt", weights_only=True)["optimizer"]["state"]
    opt_resumed = torch.load(killed / "resume.pt", weights_only=True)["optimizer"]["state"]
    for i in opt_full:
        assert_same_tensors(opt_full[i], opt_resumed[i], f"AdamW state of parameter {i}")


# ---------------------------------------------------------------------------------------------- LlamaGen
@pytest.fixture(scope="module")
def llg(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("robust_resume_llamagen")
    paths = {**make_assets(root), "root": root, "codes": root / "codes"}
    write_codes(paths["codes"], 24, n_aug=4)     # several stored views, drawn at random (in 2 worker processes)
    return paths


def test_llamagen_finetune_sigkill_then_resume_is_bit_identical(llg):
    steps = 12                                               # 24 code files, batch 4: 6 steps per epoch, 2 epochs
    def cmd(results: str, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "LlamaGen_finetune.py"), "--ref_ckpt", str(llg["ref"]), "--code-path",
                str(llg["codes"]), "--results-dir", str(llg["root"] / results), "--global-batch-size", "4",
                "--gradient-accumulation-steps", "2", "--epochs", "2", "--ckpt-every", "1", "--lr", "1e-3",
                "--uncond_ratio", "0.3", "--lambda_", "10", "--keep_dropout", "--mixed-precision", "none",
                "--num-workers", "2", "--log-every", "1", *TINY_FLAGS, *extra]
    run(cmd("full"), cwd=llg["root"])
    kill_at = RNG.randint(1, steps - 4)
    ckpts = llg["root"] / "killed" / "000-default-GPT-debug" / "checkpoints"
    run_until(cmd("killed"), llg["root"], lambda: (ckpts / f"{kill_at:07d}.pt").exists(),
              f"LlamaGen kill at step {kill_at}", llg["root"] / "killed_run.log")
    step = load_file_raw(ckpts.parent / "resume.pt")["step"]
    assert kill_at <= step < steps
    out = run(cmd("killed", "--resume", "auto"), cwd=llg["root"])
    assert f"resumed at step {step}" in out
    full = torch.load(llg["root"] / "full" / "000-default-GPT-debug" / "checkpoints" / f"{steps:07d}.pt",
                      weights_only=True)["model"]
    resumed = torch.load(ckpts / f"{steps:07d}.pt", weights_only=True)["model"]
    assert_same_tensors(full, resumed, f"LlamaGen killed after checkpoint {step}")
    assert sorted(p.name for p in (llg["root"] / "killed").iterdir()) == ["000-default-GPT-debug"]   # same run


# ------------------------------------------------------------------------------------------ kill mid-save
CHILD = """
import os, sys, time, torch
from cca.checkpoint import save_atomic
path, phase = sys.argv[1], sys.argv[2]
save_atomic({"w": torch.ones(4)}, path)
class Stall:                       # pickled inside torch.save: the new file is half written when this runs
    def __reduce__(self):
        print("saving", flush=True); time.sleep(600)
if phase == "rename":              # the new file is complete, the rename has not happened
    os.replace = lambda src, dst: (print("saving", flush=True), time.sleep(600))
save_atomic({"w": torch.zeros(4), **({"x": Stall()} if phase == "write" else {})}, path)
"""


@pytest.mark.parametrize("phase", ["write", "rename"])
def test_sigkill_during_a_save_leaves_the_previous_checkpoint(tmp_path, phase):
    path = tmp_path / "resume.pt"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), phase], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert torch.equal(load_file_raw(path)["w"], torch.ones(4))           # the previous checkpoint, whole
    stale = [p.name for p in tmp_path.iterdir() if p.name != "resume.pt"]
    assert len(stale) == 1 and stale[0].startswith(".resume.pt.") and stale[0].endswith(".tmp")
    save_atomic({"w": torch.full((4,), 2.0)}, path)                        # the next save clears the leftover
    assert [p.name for p in tmp_path.iterdir()] == ["resume.pt"]
    assert torch.equal(load_file_raw(path)["w"], torch.full((4,), 2.0))


# ---------------------------------------------------------------------------------------------- sampling
def test_sampling_sigkilled_then_finished_by_two_processes_equals_one_uninterrupted_run(llg):
    n = 24

    def argv(sample_dir: Path) -> list[str]:        # batch 1: every image depends on its index only
        return ["LLamaGen_sample_ddp.py", f"--vq-ckpt={llg['vq']}", f"--ckpt_path={llg['ref']}",
                "--gpt-model=GPT-debug", f"--image-size={IMAGE}", "--image-size-eval=32", f"--num-classes={CLASSES}",
                f"--codebook-size={VOCAB}", f"--codebook-embed-dim={EMBED}", f"--num-fid-samples={n}",
                "--per-proc-batch-size=1", "--cfg-scale=1.0", "--top-k=16", f"--sample-dir={sample_dir}"]
    one, two = llg["root"] / "samples_one", llg["root"] / "samples_killed"
    run([sys.executable, *argv(one)], cwd=REPO)
    kill_after = RNG.randint(2, 10)
    run_until([sys.executable, *argv(two)], REPO,
              lambda: len(list(two.glob("*.parts/*.idx.npy"))) >= kill_after, f"sampling kill after {kill_after}",
              llg["root"] / "killed_sampling.log")
    done_before = len(list(two.glob("*.parts/*.idx.npy")))
    assert kill_after <= done_before < n and not list(two.glob("*.npz"))
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *argv(two)], cwd=REPO)

    (npz_one,), (npz_two,) = one.glob("*.npz"), two.glob("*.npz")
    assert npz_one.name == npz_two.name
    with np.load(npz_one) as a, np.load(npz_two) as b:
        assert np.array_equal(a["arr_1"], b["arr_1"]), "class assignment differs from one process"
        assert np.array_equal(a["arr_0"], b["arr_0"]), f"images differ after a kill at {done_before} of {n}"
        assert sorted(np.bincount(a["arr_1"], minlength=CLASSES)) == [8, 8, 8]
    parts = sorted(npz_two.with_suffix(".parts").glob("*.idx.npy"))
    done = np.concatenate([np.load(p) for p in parts])
    assert sorted(done.tolist()) == list(range(n))                          # every index exactly once
    assert {p.name[:2] for p in parts} == {"r0", "r1"}                      # the rerun used both processes
