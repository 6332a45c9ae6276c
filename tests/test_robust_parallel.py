"""Multi-process correctness: 2 DDP processes (gloo, CPU, fp32) give the parameters of 1 process on the same global
batches, for both fine-tune scripts.

Negatives are the per-process batch's labels rolled by one (as in the original release), so in general the pairing
depends on the world size (README, Determinism). Here the data are arranged so that both pairings coincide: every
global batch is two halves with the same label sequence (LlamaGen), or there is a single class (VAR). With the
conditions equal, the only difference left is what DDP must hide: sharding, gradient averaging, accumulation
without sync, clipping of the synced gradient."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from fixture_utils import REPO
from llamagen_tiny import CLASSES, TINY_FLAGS, make_assets

from cca.data import ResumableBatchSampler
from VAR.build import build_vae, build_var

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def assert_close_and_moved(one: dict, two: dict, ref: dict, what: str) -> None:
    assert one.keys() == two.keys() == ref.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    moved = max((one[k] - ref[k]).abs().max().item() for k in one)
    assert worst <= 1e-5, f"{what}: 1 vs 2 processes differ by {worst:.3g}"
    assert moved > 100 * max(worst, 1e-6), f"{what}: training moved the weights by only {moved:.3g}"


def write_paired_codes(code_path: Path, n: int, per_rank: int, seed: int, tokens: int = 16, vocab: int = 64,
                       global_batch: int = 0) -> None:
    """n code files whose labels make every per-rank slice of every global batch (default 2 x per_rank) of epoch 0
    carry the same label sequence."""
    order = list(ResumableBatchSampler(n, global_batch or 2 * per_rank, seed=seed))   # 1-process view of epoch 0
    rng = np.random.default_rng(3)
    (code_path / "imagenet64_codes").mkdir(parents=True)
    (code_path / "imagenet64_labels").mkdir(parents=True)
    for batch in order:
        for pos, i in enumerate(batch):
            label = (pos % per_rank) % CLASSES
            np.save(code_path / "imagenet64_codes" / f"{i}.npy", rng.integers(0, vocab, (1, 1, tokens)))
            np.save(code_path / "imagenet64_labels" / f"{i}.npy", np.array([label], dtype=np.int64))


def test_llamagen_ddp_two_processes_equal_one_process(tmp_path):
    assets = make_assets(tmp_path)
    write_paired_codes(tmp_path / "codes", 32, per_rank=4, seed=0)
    base = [str(REPO / "LlamaGen_finetune.py"), "--ref_ckpt", str(assets["ref"]), "--code-path",
            str(tmp_path / "codes"), "--global-batch-size", "8", "--epochs", "1", "--lr", "1e-3", "--lambda_", "10",
            "--weight-decay", "0.05", "--max-grad-norm", "0.5", "--uncond_ratio", "0", "--mixed-precision", "none",
            "--num-workers", "0", "--global-seed", "0", "--ckpt-every", "100", *TINY_FLAGS]
    run([sys.executable, *base, "--results-dir", str(tmp_path / "one")], cwd=tmp_path)
    run([*TORCHRUN, *base, "--results-dir", str(tmp_path / "two"), "--gradient-accumulation-steps", "2"],
        cwd=tmp_path)
    one, two = (torch.load(tmp_path / d / "000-default-GPT-debug" / "checkpoints" / "0000004.pt",
                           weights_only=True)["model"] for d in ("one", "two"))
    ref = torch.load(assets["ref"], weights_only=True)["model"]
    assert_close_and_moved(one, two, ref, "LlamaGen, 4 steps")


def test_var_ddp_two_processes_equal_one_process(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "n01").mkdir(parents=True)
    for i in range(16):                             # exactly the final size: resize and crop draw nothing
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / "n01" / f"{i}.png")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = build_vae(V=64, Cvae=8, ch=32, patch_nums=(1, 2))
        var = build_var(vae, depth=2, num_classes=1, patch_nums=(1, 2))
    torch.save(vae.state_dict(), tmp_path / "vae.pth")
    torch.save(var.state_dict(), tmp_path / "ref.pth")
    base = [str(REPO / "VAR_finetune.py"), "--depth", "2", "--pn", "1_2", "--vae_ch", "32", "--vae_V", "64",
            "--vae_Cvae", "8", "--num_classes", "1", "--bs", "8", "--ep", "2", "--tblr", "0.1", "--lambda_", "10",
            "--uncond_ratio", "0", "--dpr_ratio", "0", "--hflip", "0", "--mid_reso", "1", "--data_path",
            str(tmp_path / "data"), "--ref_ckpt", str(tmp_path / "ref.pth"), "--vae_ckpt", str(tmp_path / "vae.pth"),
            "--local_out_dir", str(tmp_path / "out")]
    # the same --ac: VAR's lr / wd schedule advances per micro-batch, as the original's, so --ac changes it
    run([sys.executable, *base, "--exp_name", "one", "--ac", "2"], cwd=tmp_path)
    run([*TORCHRUN, *base, "--exp_name", "two", "--ac", "2"], cwd=tmp_path)
    one, two = (torch.load(tmp_path / "out" / d / "ar-ckpt-last.pth", weights_only=True) for d in ("one", "two"))
    for d in ("one", "two"):
        assert torch.load(tmp_path / "out" / d / "resume.pt", weights_only=True)["step"] == 4
    assert_close_and_moved(one, two, var.state_dict(), "VAR, 4 steps")
