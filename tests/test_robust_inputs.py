"""Bad-input rows of docs/robustness.md not already covered by the family / core / evaluator tests: every entry
point refuses the input with one line naming the flag or file, before heavy work, and writes nothing."""
from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from llamagen_tiny import CLASSES, EMBED, IMAGE, TINY_FLAGS, VOCAB, make_assets, write_codes
from test_var_cli import finetune_args as var_finetune_args
from test_var_cli import make_workspace as make_var_workspace
from test_var_cli import sample_args as var_sample_args

import LLamaGen_sample_ddp
import VAR_finetune
import VAR_sample
from cca.checkpoint import CheckpointError, save_atomic
from cca.errors import UsageError
from cca.sampling import ShardedNpzWriter, balanced_labels
from cca.trainer import TrainConfig, Trainer
from LlamaGen import extract_codes_c2i, finetune_cli
from toy import ToyAdapter, ToyAR, ToyData


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.one_thread


def one_line_exit(fn, *args) -> str:
    """Run ``fn(*args)``; it must exit with a one-line message (returned)."""
    with pytest.raises(SystemExit) as err:
        fn(*args)
    msg = err.value.code
    assert isinstance(msg, str) and msg and "\n" not in msg, repr(msg)
    return msg


class CodeRunner:
    """Pickle payload: unpickling it would create ``marker`` (the proof that code ran)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path, inner: dict | None = None) -> Path:
    """A torch checkpoint whose state dict is real tensors next to an object that would run a shell command."""
    torch.save({"model": inner or {"w": torch.zeros(1)}, "payload": CodeRunner(marker)}, path)
    return path


@pytest.fixture(scope="module")
def var_ws(tmp_path_factory) -> Path:
    return make_var_workspace(tmp_path_factory.mktemp("robust_var"))


@pytest.fixture(scope="module")
def llg(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("robust_llamagen")
    paths = {**make_assets(root), "root": root, "codes": root / "codes"}
    write_codes(paths["codes"], 8)
    return paths


def llg_finetune_argv(llg: dict, results: Path, *extra: str, code_path: Path | None = None) -> list[str]:
    return ["--ref_ckpt", str(llg["ref"]), "--code-path", str(code_path or llg["codes"]), "--results-dir",
            str(results), "--global-batch-size", "4", "--num-workers", "0", "--mixed-precision", "none",
            "--max-steps", "1", *TINY_FLAGS, *extra]


def llg_sample_argv(llg: dict, sample_dir: Path, *extra: str) -> list[str]:
    return [f"--vq-ckpt={llg['vq']}", f"--ckpt_path={llg['ref']}", "--gpt-model=GPT-debug", f"--image-size={IMAGE}",
            "--image-size-eval=32", f"--num-classes={CLASSES}", f"--codebook-size={VOCAB}",
            f"--codebook-embed-dim={EMBED}", "--num-fid-samples=2", "--cfg-scale=1.0", f"--sample-dir={sample_dir}",
            *extra]


# ------------------------------------------------------------------------------------------- unknown flags
BASE_ARGV = {   # required flags only; the files are never opened
    "VAR_sample": (VAR_sample.build_parser, ["--ckpt_path", "x.pth"], "--num_per"),
    "LLamaGen_sample_ddp": (LLamaGen_sample_ddp.build_parser, ["--vq-ckpt", "v.pt", "--gpt-ckpt", "g.pt"],
                            "--num-fid"),
    "extract_codes": (extract_codes_c2i.build_parser, ["--vq-ckpt", "v.pt", "--data-path", "d", "--code-path", "c"],
                      "--ten"),
    "LlamaGen_finetune_fsdp": (lambda: finetune_cli.build_parser(True), ["--ref_ckpt", "r.pt", "--code-path", "c"],
                               "--global-batch"),
}


@pytest.mark.parametrize("entry", sorted(BASE_ARGV))
def test_unknown_or_abbreviated_flag_is_refused(entry, capsys):
    build, base, prefix = BASE_ARGV[entry]
    build().parse_args(base)                                  # the base is valid
    for bogus in ("--bogus_flag", prefix):                    # a typo, and a prefix of a real flag
        with pytest.raises(SystemExit) as err:
            build().parse_args(base + [bogus, "1"])
        assert err.value.code == 2
        err_text = capsys.readouterr().err
        assert f"unrecognized arguments: {bogus}" in err_text and err_text.count("error:") == 1


# ------------------------------------------------------------------------------- code-executing checkpoints
def test_code_executing_checkpoint_is_refused_by_every_entry_point(var_ws, llg, tmp_path):
    marker = tmp_path / "code_ran"
    evil = evil_checkpoint(tmp_path / "evil.pth", marker)
    out = tmp_path / "out"
    cases = [
        (VAR_finetune.main, var_finetune_args(var_ws, "evil") + ["--ref_ckpt", str(evil), "--local_out_dir",
                                                                  str(out)], "--ref_ckpt"),
        (VAR_finetune.main, var_finetune_args(var_ws, "evil") + ["--vae_ckpt", str(evil), "--local_out_dir",
                                                                  str(out)], "--vae_ckpt"),
        (VAR_sample.main, var_sample_args(var_ws, evil) + ["--sample_dir", str(out)], "--ckpt_path"),
        (finetune_cli.main, llg_finetune_argv(llg, out, "--ref_ckpt", str(evil)), "--ref_ckpt"),
        (LLamaGen_sample_ddp.main, llg_sample_argv(llg, out, f"--vq-ckpt={evil}"), "--vq-ckpt"),
        (LLamaGen_sample_ddp.main, llg_sample_argv(llg, out, f"--ckpt_path={evil}"), "--gpt-ckpt"),
    ]
    for main, argv, flag in cases:
        msg = one_line_exit(main, argv)
        assert flag in msg and "evil.pth" in msg and "could run code" in msg, msg
    assert not marker.exists(), "unpickling ran the payload"
    assert not [p for p in out.rglob("*") if p.is_file()]                 # nothing written


def test_code_executing_resume_file_is_refused(var_ws, llg, tmp_path):
    marker = tmp_path / "code_ran"
    evil = evil_checkpoint(tmp_path / "resume.pt", marker)
    msg = one_line_exit(VAR_finetune.main, var_finetune_args(var_ws, "evil_resume", "--resume", str(evil)))
    assert "resume.pt" in msg and "could run code" in msg
    msg = one_line_exit(finetune_cli.main, llg_finetune_argv(llg, tmp_path / "results", "--resume", str(evil)))
    assert "resume.pt" in msg and "could run code" in msg
    assert not marker.exists()


# ------------------------------------------------------------------------------ truncated / other checkpoints
def test_truncated_checkpoints_name_the_flag(var_ws, llg, tmp_path):
    data = (var_ws / "ref.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    msg = one_line_exit(VAR_sample.main, var_sample_args(var_ws, tmp_path / "cut.pth"))
    assert msg.startswith("--ckpt_path") and "truncated or corrupt" in msg
    data = llg["vq"].read_bytes()
    (tmp_path / "vq_cut.pt").write_bytes(data[: len(data) // 3])
    def sample(vq: Path) -> str:
        return one_line_exit(LLamaGen_sample_ddp.main, llg_sample_argv(llg, tmp_path / "s", f"--vq-ckpt={vq}"))
    msg = sample(tmp_path / "vq_cut.pt")
    assert msg.startswith("--vq-ckpt") and "truncated or corrupt" in msg
    (tmp_path / "notes.pt").write_text("these are not weights")
    msg = sample(tmp_path / "notes.pt")
    assert msg.startswith("--vq-ckpt") and "notes.pt" in msg and "not a readable PyTorch checkpoint" in msg
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def _toy_trainer(out: Path, dim: int = 16, **kw) -> tuple[Trainer, ToyAR]:
    torch.manual_seed(0)
    ref = ToyAR(4, 6, dim=dim)
    policy = ToyAR(4, 6, dim=dim)
    policy.load_state_dict(ref.state_dict())
    cfg = TrainConfig(out_dir=str(out), batch_size=8, lr=1e-2, beta=1.0, lambda_=1.0, log_every=1, **kw)
    return Trainer(policy, ref, ToyAdapter(4, 6), cfg), policy


def test_resume_file_of_another_model_or_not_a_resume_file(tmp_path, llg):
    trainer, _ = _toy_trainer(tmp_path / "small", max_steps=1, dim=8)
    trainer.fit(ToyData(16))
    before = (tmp_path / "small" / "resume.pt").read_bytes()
    big, policy = _toy_trainer(tmp_path / "big", dim=16, resume=str(tmp_path / "small" / "resume.pt"))
    with pytest.raises(CheckpointError) as err:
        big.fit(ToyData(16))
    msg = str(err.value)
    assert "\n" not in msg and "resume.pt" in msg and "fc.weight (8, 8) vs model (16, 16)" in msg
    assert (tmp_path / "small" / "resume.pt").read_bytes() == before        # the file given is left alone
    other, _ = _toy_trainer(tmp_path / "w", resume=str(llg["ref"]))
    with pytest.raises(CheckpointError, match="not a resumable checkpoint"):
        other.fit(ToyData(16))
    # through the LlamaGen CLI: one line naming the file
    state = torch.load(tmp_path / "small" / "resume.pt", weights_only=True)
    save_atomic(state, tmp_path / "toy_run" / "resume.pt")
    msg = one_line_exit(finetune_cli.main, llg_finetune_argv(llg, tmp_path / "results", "--resume",
                                                             str(tmp_path / "toy_run")))
    assert "resume.pt" in msg and "does not fit the model" in msg


def test_resume_path_without_a_resume_file(var_ws, llg, tmp_path):
    msg = one_line_exit(VAR_finetune.main, var_finetune_args(var_ws, "noresume", "--resume", str(tmp_path / "x.pt")))
    assert msg.startswith("--resume") and "x.pt not found" in msg
    (tmp_path / "empty_run").mkdir()
    msg = one_line_exit(finetune_cli.main, llg_finetune_argv(llg, tmp_path / "results", "--resume",
                                                             str(tmp_path / "empty_run")))
    assert msg.startswith("--resume") and "no resume.pt there" in msg
    assert not (var_ws / "out" / "noresume").exists()
    assert not [p for p in (tmp_path / "results").rglob("*") if p.is_file()]


# ---------------------------------------------------------------------------------- data and code folders
def test_malformed_image_folder(var_ws, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    msg = one_line_exit(VAR_finetune.main, var_finetune_args(var_ws, "bad", "--data_path", str(tmp_path / "file.txt")))
    assert msg.startswith("--data_path") and "is not a folder" in msg
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "readme.txt").write_text("no images here")
    msg = one_line_exit(VAR_finetune.main, var_finetune_args(var_ws, "bad", "--data_path", str(tmp_path / "imgs")))
    assert msg.startswith("--data_path") and "without images" in msg and "a, b" in msg
    assert not (var_ws / "out" / "bad").exists()


@pytest.mark.parametrize("case, expected", [
    ("garbage_codes", "imagenet64_codes/0.npy is not a readable .npy array"),
    ("pickled_codes", "imagenet64_codes/0.npy is not a readable .npy array"),
    ("float_codes", "imagenet64_codes/0.npy holds float32; expected integer VQ codes"),
    ("label_too_big", "imagenet64_labels/2.npy holds [3]; expected one class label in [0, 3) (--num-classes)"),
    ("label_negative", "imagenet64_labels/5.npy holds [-1]; expected one class label in [0, 3)"),
    ("garbage_label", "imagenet64_labels/1.npy is not a readable .npy array"),
])
def test_malformed_code_folder(llg, tmp_path, case, expected):
    codes = tmp_path / "codes"
    write_codes(codes, 8)
    cdir, ldir = codes / "imagenet64_codes", codes / "imagenet64_labels"
    if case == "garbage_codes":
        (cdir / "0.npy").write_bytes(b"\x93NUMPY garbage")
    elif case == "pickled_codes":
        np.save(cdir / "0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "float_codes":
        np.save(cdir / "0.npy", np.zeros((1, 2, 16), np.float32))
    elif case == "label_too_big":
        np.save(ldir / "2.npy", np.array([CLASSES], np.int64))
    elif case == "label_negative":
        np.save(ldir / "5.npy", np.array([-1], np.int64))
    elif case == "garbage_label":
        (ldir / "1.npy").write_text("1")
    msg = one_line_exit(finetune_cli.main, llg_finetune_argv(llg, tmp_path / "results", code_path=codes))
    assert msg.startswith(f"--code-path {codes}") and expected in msg, msg
    assert not (tmp_path / "results").exists()


def test_label_out_of_range_late_in_the_data_stops_before_the_update(tmp_path):
    """Only the first files are checked up front; a bad label later stops training at that batch, with the
    parameters not updated by it and the last checkpoint intact."""
    data = ToyData(32)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0)).tolist()   # the sampler's epoch 0
    data.labels[order[-1]] = 4                 # == num_classes (the null class is no data label); in batch 4 of 4
    trainer, policy = _toy_trainer(tmp_path, ckpt_every=1, epochs=1.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got \[0, 4\]"):
        trainer.fit(data)
    assert trainer.step == 3
    state = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert state["step"] == 3
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in state["model"].items())


# --------------------------------------------------------------------------------- output folders, disk space
def test_unwritable_output_folders_fail_before_loading_models(var_ws, llg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    inside = blocker / "sub"                       # cannot be created: its parent is a regular file
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)              # if a model were loaded first, its error would show instead
    msg = one_line_exit(LLamaGen_sample_ddp.main, llg_sample_argv(llg, inside, f"--ckpt_path={garbage}"))
    assert msg.startswith("--sample-dir") and "not a writable folder" in msg
    msg = one_line_exit(VAR_sample.main, var_sample_args(var_ws, garbage) + ["--sample_dir", str(inside)])
    assert msg.startswith("--sample_dir") and "not a writable folder" in msg
    msg = one_line_exit(finetune_cli.main, llg_finetune_argv(llg, inside))
    assert msg.startswith("--results-dir") and "not a writable folder" in msg
    msg = one_line_exit(extract_codes_c2i.main, ["--vq-ckpt", str(llg["vq"]), "--data-path", str(llg["images"]),
                                                 "--code-path", str(inside), "--image-size", str(IMAGE),
                                                 "--codebook-size", str(VOCAB), "--codebook-embed-dim", str(EMBED),
                                                 "--num-workers", "0"])
    assert msg.startswith("--code-path") and "not a writable folder" in msg
    if os.geteuid() != 0:                          # permissions do not bind root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        msg = one_line_exit(finetune_cli.main, llg_finetune_argv(llg, locked))
        assert msg.startswith("--results-dir") and "not a writable folder" in msg


def test_full_disk_is_refused_before_training(llg, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("cca.checkpoint.shutil.disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UsageError) as err:
        _toy_trainer(tmp_path / "toy")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "toy") in msg and "GiB free" in msg and "one checkpoint" in msg
    assert [p.name for p in (tmp_path / "toy").iterdir()] == []
    msg = one_line_exit(finetune_cli.main, llg_finetune_argv(llg, tmp_path / "results"))
    assert "GiB free" in msg
    (run,) = (tmp_path / "results").iterdir()
    assert not (run / "resume.pt").exists() and not list((run / "checkpoints").iterdir())


# ------------------------------------------------------------------------------------------ sampling folders
def test_parts_folder_from_other_sampling_settings_is_refused(tmp_path):
    labels = balanced_labels(10, 3, seed=0)
    writer = ShardedNpzWriter(tmp_path, "run", labels, batch_size=4)
    idx = next(writer.pending_batches())
    writer.save_batch(idx, np.zeros((len(idx), 2, 2, 3), np.uint8))
    ShardedNpzWriter(tmp_path, "run", labels, batch_size=4)                    # same settings: resumes
    with pytest.raises(UsageError, match="another index -> class assignment"):
        ShardedNpzWriter(tmp_path, "run", balanced_labels(12, 3, seed=0))      # more samples: other classes
    with pytest.raises(UsageError, match="another index -> class assignment"):
        ShardedNpzWriter(tmp_path, "run", np.repeat(np.arange(5), 2))          # VAR-style, another per-class count
