"""VAR_finetune.py and VAR_sample.py end to end on a tiny generated image folder with a tiny VQVAE / VAR:
2 fine-tuning steps in one process (torchrun: test_var_torchrun.py), then sampling the exported checkpoint into a
valid, shuffled, resumable npz; plus the one-line errors for bad input."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import VAR_finetune
import VAR_sample
from fixture_utils import REPO
from VAR.build import build_vae, build_var

TINY = ["--depth", "2", "--pn", "1_2", "--vae_ch", "32", "--vae_V", "64", "--vae_Cvae", "8", "--num_classes", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def make_workspace(root: Path) -> Path:
    """2 classes x 4 random 40x44 images, a tiny VQVAE (ch 32, V 64, Cvae 8) and a depth-2 VAR for --pn 1_2."""
    rng = np.random.default_rng(0)
    for cls in ("n01", "n02"):
        (root / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(root / "data" / cls / f"{i}.png")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = build_vae(V=64, Cvae=8, ch=32, patch_nums=(1, 2))
        var = build_var(vae, depth=2, num_classes=2, patch_nums=(1, 2))
    torch.save(vae.state_dict(), root / "vae.pth")
    torch.save(var.state_dict(), root / "ref.pth")
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("var_cli"))


def finetune_args(ws: Path, exp: str, *extra: str) -> list[str]:
    return [*TINY, "--bs", "4", "--ep", "1", "--tblr", "1e-2", "--dpr_ratio", "0", "--uncond_ratio", "0.25",
            "--hflip", "1", "--data_path", str(ws / "data"), "--ref_ckpt", str(ws / "ref.pth"),
            "--vae_ckpt", str(ws / "vae.pth"),
            "--local_out_dir", str(ws / "out"), "--exp_name", exp, *extra]


def sample_args(ws: Path, ckpt: Path, *extra: str) -> list[str]:
    return [*TINY, "--ckpt_path", str(ckpt), "--vae_ckpt", str(ws / "vae.pth"), "--num_per_class", "4",
            "--batch_size", "3", "--sample_dir", str(ws / "samples"), *extra]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def check_run_folder(run_dir: Path, ref: dict[str, torch.Tensor]) -> None:
    assert (run_dir / "resume.pt").is_file() and (run_dir / "log.txt").is_file()
    assert "step 2/2" in (run_dir / "log.txt").read_text()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    sd = torch.load(run_dir / "ar-ckpt-last.pth", map_location="cpu", weights_only=True)
    assert set(sd) == set(ref) and all(isinstance(v, torch.Tensor) for v in sd.values())   # a plain state dict
    # ... that the original VAR_sample.py's plain torch.load + strict load_state_dict accepts
    build_var(build_vae(V=64, Cvae=8, ch=32, patch_nums=(1, 2)), depth=2, num_classes=2,
              patch_nums=(1, 2)).load_state_dict(torch.load(run_dir / "ar-ckpt-last.pth"), strict=True)
    assert any(not torch.equal(sd[k], ref[k]) for k in ref), "fine-tuning changed nothing"


def test_finetune_two_steps_then_sample_npz(ws):
    run([sys.executable, str(REPO / "VAR_finetune.py"), *finetune_args(ws, "single")], cwd=ws)
    ref = torch.load(ws / "ref.pth", weights_only=True)
    ckpt = ws / "out" / "single" / "ar-ckpt-last.pth"
    check_run_folder(ckpt.parent, ref)

    run([sys.executable, str(REPO / "VAR_sample.py"), *sample_args(ws, ckpt, "--png")], cwd=ws)
    (npz_path,) = (ws / "samples").glob("*.npz")
    with np.load(npz_path) as f:
        images, labels = f["arr_0"], f["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (8, 32, 32, 3)
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [4, 4]
    assert not (np.all(labels[:-1] <= labels[1:])), "samples must be shuffled, not class-sorted"
    assert len(list(npz_path.with_suffix("").glob("*.png"))) == 8

    # a killed run: the npz and the last batch are gone; a rerun redoes only that batch, identically
    parts = npz_path.with_name(npz_path.stem + ".parts")
    batches = sorted(parts.glob("*.idx.npy"))
    assert len(batches) == 3                                   # 8 samples in batches of 3
    npz_path.unlink()
    batches[-1].unlink()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in the first run (OMP_NUM_THREADS=1), so floats round identically
    try:
        VAR_sample.main(sample_args(ws, ckpt))
    finally:
        torch.set_num_threads(threads)
    with np.load(npz_path) as f:
        assert np.array_equal(f["arr_1"], labels) and np.array_equal(f["arr_0"], images)
    assert len(list(parts.glob("*.idx.npy"))) == 3


def test_sample_reruns_never_keep_a_result_of_other_settings(ws, capsys):
    ckpt, out = ws / "ref.pth", ws / "reruns"
    VAR_sample.main(sample_args(ws, ckpt, "--num_per_class", "1", "--sample_dir", str(out)))
    VAR_sample.main(sample_args(ws, ckpt, "--num_per_class", "2", "--sample_dir", str(out)))   # another file
    files = sorted(out.glob("*.npz"))
    assert [np.load(f)["arr_0"].shape[0] for f in files] == [2, 4]
    for parts in out.glob("*.parts"):                   # finished runs whose shards were cleaned away
        shutil.rmtree(parts)
    msg = one_line_exit(VAR_sample.main, sample_args(ws, ckpt, "--num_per_class", "2", "--sample_dir", str(out),
                                                     "--round_uint8", "1"), capsys)
    assert "other settings" in msg and "round_uint8: False -> True" in msg


def test_help_lists_every_flag_of_the_seed_commands():
    text = VAR_finetune.build_parser().format_help()
    for flag in ("--depth", "--bs", "--ep", "--tblr", "--fp16", "--alng", "--wpe", "--twde", "--loss_type", "--beta",
                 "--lambda_", "--ac", "--exp_name", "--dpr_ratio", "--uncond_ratio", "--ref_ckpt", "--data_path",
                 "--vae_ckpt", "--pn", "--vae_ch", "--vae_V", "--vae_Cvae", "--num_classes", "--hflip",
                 "--mid_reso", "--workers", "--seed", "--resume", "--local_out_dir"):
        assert flag in text, flag
    seed_cmd = ["--depth=16", "--bs=256", "--ep=1", "--tblr=2e-5", "--fp16=1", "--alng=1e-3", "--wpe=0.1",
                "--loss_type=CCA", "--beta=0.02", "--lambda_=50.0", "--ac=4", "--exp_name=default", "--dpr_ratio=0.0",
                "--uncond_ratio=0.1", "--ref_ckpt=/p/var_d16.pth", "--data_path=/p/imagenet", "--twde=0.08"]
    args = VAR_finetune.build_parser().parse_args(seed_cmd)
    assert (args.bs, args.ac, args.fp16, args.lambda_, args.twde) == (256, 4, 1, 50.0, 0.08)
    sample = VAR_sample.build_parser()
    text = sample.format_help()
    for flag in ("--cfg", "--ckpt_path", "--vae_ckpt", "--depth", "--sample_dir", "--num_per_class", "--num_classes",
                 "--batch_size", "--top_k", "--top_p", "--more_smooth", "--seed", "--png"):
        assert flag in text, flag
    a = sample.parse_args(["--cfg=0.0", "--ckpt_path=/p/var_d20.pth", "--vae_ckpt=./vae_ch160v4096z32.pth",
                           "--depth", "20"])
    assert (a.cfg, a.depth, a.top_k, a.top_p, a.num_per_class) == (0.0, 20, 900, 0.96, 50)


def test_image_folder_dataset(ws, tmp_path):
    from VAR.data import build_train_dataset, resolve_image_root
    ds = build_train_dataset(ws / "data", 32, mid_reso=1.125, hflip=True, num_classes=2)
    img, label = ds[5]
    assert img.shape == (3, 32, 32) and -1 <= img.min() < img.max() <= 1 and label == 1
    assert ds.classes == ["n01", "n02"]
    (tmp_path / "imagenet" / "train" / "c0").mkdir(parents=True)   # ImageNet layout: <root>/train/<class>
    Image.new("RGB", (8, 8)).save(tmp_path / "imagenet" / "train" / "c0" / "a.jpg")
    assert resolve_image_root(tmp_path / "imagenet") == tmp_path / "imagenet" / "train"


def one_line_exit(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    msg = str(err.value.code) if not isinstance(err.value.code, int) else capsys.readouterr().err.strip()
    assert msg.count("\n") == 0 or err.value.code == 2, msg
    return msg


def test_bad_finetune_input_fails_fast_with_one_line(ws, tmp_path, capsys):
    fa = lambda *extra: finetune_args(ws, "bad", *extra)   # noqa: E731  (later flags override earlier ones)
    assert "unrecognized arguments: --tblrr" in one_line_exit(VAR_finetune.main, fa("--tblrr", "1"), capsys)
    assert "--ref_ckpt" in one_line_exit(VAR_finetune.main, fa("--ref_ckpt", str(tmp_path / "nope.pth")), capsys)
    (tmp_path / "empty").mkdir()
    assert "--data_path" in one_line_exit(VAR_finetune.main, fa("--data_path", str(tmp_path / "empty")), capsys)
    msg = one_line_exit(VAR_finetune.main, fa("--num_classes", "3"), capsys)
    assert "2 class folders" in msg and "--num_classes 3" in msg
    assert "empty per-process batch" in one_line_exit(VAR_finetune.main, fa("--bs", "2", "--ac", "4"), capsys)
    assert "pass --depth 2" in one_line_exit(VAR_finetune.main, fa("--depth", "3"), capsys)
    msg = one_line_exit(VAR_finetune.main, fa("--vae_V", "128"), capsys)
    assert msg.startswith("--vae_ckpt") and "--vae_V 64" in msg
    (tmp_path / "corrupt.pth").write_bytes(b"\x00" * 100)
    msg = one_line_exit(VAR_finetune.main, fa("--ref_ckpt", str(tmp_path / "corrupt.pth")), capsys)
    assert msg.startswith("--ref_ckpt") and "corrupt" in msg
    (tmp_path / "file").write_text("")
    assert "--local_out_dir" in one_line_exit(VAR_finetune.main, fa("--local_out_dir", str(tmp_path / "file")), capsys)
    assert not (ws / "out" / "bad").exists()


def test_bad_sample_input_fails_fast_with_one_line(ws, capsys):
    msg = one_line_exit(VAR_sample.main, sample_args(ws, ws / "ref.pth", "--depth", "4"), capsys)
    assert msg.startswith("--ckpt_path") and "pass --depth 2" in msg
    msg = one_line_exit(VAR_sample.main, sample_args(ws, ws / "ref.pth", "--pn", "1_2_3"), capsys)
    assert "5 tokens" in msg and "pass --pn 1_2" in msg
    msg = one_line_exit(VAR_sample.main, sample_args(ws, ws / "missing.pth"), capsys)
    assert "--ckpt_path" in msg and "not found" in msg
    assert "--vae_ckpt" in one_line_exit(VAR_sample.main, sample_args(ws, ws / "ref.pth", "--vae_ch", "64"), capsys)
