"""LlamaGen CLIs: every flag of the seed commands is accepted, bad input fails fast with one clear line."""
from __future__ import annotations

import pytest
import torch
from llamagen_tiny import TINY_FLAGS, make_assets, write_codes

import LLamaGen_sample_ddp
from LlamaGen import finetune_cli
from LlamaGen.codes import CodeDataset

SEED_FINETUNE = ["--global-batch-size", "256", "--gradient-accumulation-step", "16", "--epochs=1",
                 "--ckpt-every=5000", "--lr=1e-5", "--loss_type=CCA", "--expid", "default", "--lambda_=1000.0",
                 "--beta=0.02", "--uncond_ratio=0.1", "--keep_dropout", "--ref_ckpt=/x/c2i_B_384.pt",
                 "--code-path=/x/codes/", "--image-size=384", "--gpt-model=GPT-B"]
SEED_SAMPLE = ["--vq-ckpt=v.pt", "--ckpt_path=c2i_XL_384.pt", "--gpt-model=GPT-XL", "--image-size=384",
               "--image-size-eval=256", "--per-proc-batch-size=48", "--cfg-scale=1.0", "--num-fid-samples=50000"]


@pytest.mark.parametrize("fsdp", [False, True])
def test_seed_finetune_command_parses(fsdp):
    args = finetune_cli.build_parser(fsdp).parse_args(SEED_FINETUNE + (["--data-parallel", "fsdp"] if fsdp else []))
    assert (args.grad_accum, args.global_batch_size, args.gpt_model, args.keep_dropout) == (16, 256, "GPT-B", True)
    text = finetune_cli.build_parser(fsdp).format_help()
    for flag in ["--global-batch-size", "--gradient-accumulation-steps", "--epochs", "--ckpt-every", "--lr",
                 "--loss_type", "--expid", "--lambda_", "--beta", "--uncond_ratio", "--keep_dropout", "--ref_ckpt",
                 "--code-path", "--image-size", "--gpt-model", "--results-dir", "--mixed-precision", "--no-compile",
                 "--ema", "--resume", "--num-workers", "--global-seed", "--vocab-size", "--num-classes",
                 "--downsample-size", "--max-grad-norm", "--weight-decay"] + (["--data-parallel"] if fsdp else []):
        assert flag in text, flag
    with pytest.raises(SystemExit):      # no silent prefix matching of misspelt flags
        finetune_cli.build_parser(fsdp).parse_args(SEED_FINETUNE + ["--gradient-acc", "2"])


def test_seed_sample_command_parses():
    args = LLamaGen_sample_ddp.build_parser().parse_args(SEED_SAMPLE)
    assert args.gpt_ckpt == "c2i_XL_384.pt" and args.cfg_scale == 1.0 and args.per_proc_batch_size == 48
    assert LLamaGen_sample_ddp.build_parser().parse_args(["--vq-ckpt=v", "--gpt-ckpt=g"]).gpt_ckpt == "g"
    text = LLamaGen_sample_ddp.build_parser().format_help()
    for flag in ["--gpt-ckpt", "--ckpt_path", "--top-k", "--top-p", "--temperature", "--cfg-interval", "--precision",
                 "--compile", "--no-compile", "--sample-dir", "--global-seed", "--num-classes", "--codebook-size",
                 "--downsample-size"]:
        assert flag in text, flag


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamagen_cli")
    paths = {**make_assets(root), "root": root}
    write_codes(root / "codes", 8)
    return paths


def _finetune_argv(assets, *extra, code_path=None):
    return ["--ref_ckpt", str(assets["ref"]), "--code-path", str(code_path or assets["root"] / "codes"),
            "--results-dir", str(assets["root"] / "results"), "--global-batch-size", "4", "--num-workers", "0",
            *TINY_FLAGS, *extra]


def test_finetune_bad_inputs(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="--global-batch-size 4 must be divisible by world size 2 x "
                                         "--gradient-accumulation-steps 4"):
        finetune_cli.main(_finetune_argv(assets, "--gradient-accumulation-steps", "4"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit, match="--ref_ckpt .*not found"):
        finetune_cli.main(_finetune_argv(assets) + ["--ref_ckpt", str(tmp_path / "none.pt")])
    with pytest.raises(SystemExit, match="--code-path .*imagenet64_codes/ not found"):
        finetune_cli.main(_finetune_argv(assets, code_path=tmp_path))
    (tmp_path / "imagenet64_codes").mkdir()
    (tmp_path / "imagenet64_labels").mkdir()
    with pytest.raises(SystemExit, match="--code-path .*no <i>.npy files"):
        finetune_cli.main(_finetune_argv(assets, code_path=tmp_path))
    write_codes(tmp_path / "big", 4, image_size=128, tokens=16)
    with pytest.raises(SystemExit, match="codes have 16 tokens per image .*needs 64"):
        finetune_cli.main(_finetune_argv(assets, "--image-size", "128", code_path=tmp_path / "big"))
    with pytest.raises(SystemExit, match="outside \\[0, 32\\); pass the tokenizer's --vocab-size"):
        finetune_cli.main(_finetune_argv(assets, "--vocab-size", "32"))
    with pytest.raises(SystemExit, match="--loss_type"):
        finetune_cli.main(_finetune_argv(assets, "--loss_type", "ipo"))
    with pytest.raises(SystemExit, match="looks like GPT-debug; pass --gpt-model GPT-debug"):
        finetune_cli.main(_finetune_argv(assets, "--gpt-model", "GPT-B"))
    with pytest.raises(SystemExit, match="3 classes; pass --num-classes 3$"):     # the reference has 3 (+ null)
        finetune_cli.main(_finetune_argv(assets, "--num-classes", "1000"))
    (tmp_path / "trunc.pt").write_bytes(assets["ref"].read_bytes()[:200])
    with pytest.raises(SystemExit, match="trunc.pt"):
        finetune_cli.main(_finetune_argv(assets) + ["--ref_ckpt", str(tmp_path / "trunc.pt")])


def test_sample_bad_inputs(assets, tmp_path):
    base = [f"--vq-ckpt={assets['vq']}", f"--ckpt_path={assets['ref']}", "--gpt-model=GPT-debug",
            "--image-size=64", "--num-classes=3", f"--sample-dir={tmp_path}", "--num-fid-samples=2"]
    with pytest.raises(SystemExit, match="--vq-ckpt .*not found"):
        LLamaGen_sample_ddp.main(base + [f"--vq-ckpt={tmp_path / 'none.pt'}"])
    with pytest.raises(SystemExit, match="--cfg-scale must be >= 1"):
        LLamaGen_sample_ddp.main(base + ["--cfg-scale=0.5"])
    with pytest.raises(SystemExit, match="pass --codebook-size 64 --codebook-embed-dim 4"):
        LLamaGen_sample_ddp.main(base)
    with pytest.raises(SystemExit, match="--gpt-ckpt/--ckpt_path .*shape mismatch.*vocab 64"):
        LLamaGen_sample_ddp.main(base + ["--codebook-size=32", "--codebook-embed-dim=4", "--vq-ckpt=" +
                                         str(_vq_with_codebook(assets, tmp_path, 32))])


def _vq_with_codebook(assets, tmp_path, n):
    """The tiny tokenizer with a smaller codebook (so the GPT's vocab no longer matches)."""
    sd = torch.load(assets["vq"], weights_only=True)["model"]
    sd["quantize.embedding.weight"] = sd["quantize.embedding.weight"][:n]
    path = tmp_path / "vq_small.pt"
    torch.save({"model": sd}, path)
    return path


def test_code_dataset_counts_files_and_draws_views(assets, tmp_path):
    write_codes(tmp_path, 5, n_aug=10)
    (tmp_path / "imagenet64_codes" / "4.npy").unlink()          # only ids present in both folders count
    ds = CodeDataset(tmp_path, 64, 16)
    assert len(ds) == 4
    codes, label = ds[3]
    assert codes.shape == (16,) and codes.dtype == torch.int64 and label.dtype == torch.int64 and label.item() == 0
    stored = torch.from_numpy(__import__("numpy").load(tmp_path / "imagenet64_codes" / "3.npy"))[0]
    torch.manual_seed(0)
    seen = {int((stored == ds[3][0]).all(-1).nonzero()[0]) for _ in range(60)}
    assert len(seen) > 5                                         # several of the 10 stored views are used
