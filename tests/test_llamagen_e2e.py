"""End to end on CPU: images -> extract codes -> CCA fine-tune 2 steps with DDP and with FSDP (2 gloo processes
each) -> resume FSDP in bf16 -> sample -> npz. Tiny models; each torchrun launch is mostly start-up time."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixture_utils import REPO
from llamagen_tiny import CLASSES, EMBED, IMAGE, TINY_FLAGS, VOCAB, make_assets

import LLamaGen_sample_ddp
from cca.sampling import random_labels
from LlamaGen import extract_codes_c2i
from LlamaGen.checkpoints import build_gpt, load_gpt_weights

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("llamagen_e2e")
    paths = {**make_assets(root), "root": root, "codes": root / "codes_flip_ten_crop"}
    extract_codes_c2i.main(["--vq-ckpt", str(paths["vq"]), "--data-path", str(paths["images"]), "--code-path",
                            str(paths["codes"]), "--image-size", str(IMAGE), "--codebook-size", str(VOCAB),
                            "--codebook-embed-dim", str(EMBED), "--num-workers", "0", "--ten-crop"])
    yield paths
    torch.set_num_threads(threads)


def _torchrun(args: list[str]) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout + proc.stderr


def _finetune(assets, script, expid, *extra):
    return _torchrun([script, "--global-batch-size", "4", "--gradient-accumulation-step", "2", "--epochs", "2",
                      "--max-steps", "2", "--ckpt-every", "1", "--lr", "1e-3", "--loss_type", "CCA", "--expid",
                      expid, "--lambda_", "10", "--beta", "0.02", "--uncond_ratio", "0.3", "--ref_ckpt",
                      str(assets["ref"]), "--code-path", str(assets["codes"]), "--results-dir",
                      str(assets["root"] / "results"), "--num-workers", "0", "--log-every", "1", *TINY_FLAGS,
                      *extra])


def _weights(path):
    """The weights as the original samplers read them: the DDP script's {'model': ...}, the FSDP script's bare
    state dict (upstream sample_c2i_ddp.py --from-fsdp takes the whole file)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["model"] if "model" in ckpt else ckpt


def _sample(assets, ckpt, samples, *extra):
    LLamaGen_sample_ddp.main([f"--vq-ckpt={assets['vq']}", f"--ckpt_path={ckpt}", "--gpt-model=GPT-debug",
                              f"--image-size={IMAGE}", "--image-size-eval=32", "--per-proc-batch-size=4",
                              "--cfg-scale=1.0", "--num-fid-samples=10", f"--codebook-size={VOCAB}",
                              f"--codebook-embed-dim={EMBED}", f"--num-classes={CLASSES}", f"--sample-dir={samples}",
                              *extra])


def test_extract_finetune_ddp_fsdp_sample(assets):
    results = assets["root"] / "results"
    _finetune(assets, "LlamaGen_finetune.py", "ddp", "--mixed-precision", "none")
    _finetune(assets, "LlamaGen_finetune_fsdp.py", "fsdp", "--mixed-precision", "none")
    ddp_dir, fsdp_dir = results / "000-ddp-GPT-debug", results / "001-fsdp-GPT-debug"
    assert (ddp_dir / "resume.pt").is_file() and (fsdp_dir / "resume" / "step-0000002" / ".metadata").is_file()
    ddp, fsdp, ref = (_weights(ddp_dir / "checkpoints/0000002.pt"), _weights(fsdp_dir / "checkpoints/0000002.pt"),
                      _weights(assets["ref"]))
    # FSDP's consolidated file is a bare float32 state dict (the original FSDP script's format): the whole file
    # loads strictly into an unsharded model, as upstream --from-fsdp loads it, and through our loader
    assert "model" not in torch.load(fsdp_dir / "checkpoints/0000002.pt", weights_only=True)
    plain = build_gpt("GPT-debug", vocab_size=VOCAB, image_size=IMAGE, downsample_size=16, num_classes=CLASSES)
    plain.load_state_dict(torch.load(fsdp_dir / "checkpoints/0000002.pt"), strict=True)
    plain.load_state_dict(torch.load(ddp_dir / "checkpoints/0000002.pt")["model"], strict=True)
    load_gpt_weights(plain, str(fsdp_dir / "checkpoints/0000002.pt"))
    for k, v in plain.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, fsdp[k]), k
    # ... training moved it, and in fp32 it equals the DDP run (same data order and conditions per rank)
    assert max((ddp[k] - ref[k]).abs().max().item() for k in ref) > 1e-4
    assert all(torch.allclose(fsdp[k], ddp[k], atol=1e-6, rtol=1e-5) for k in ddp)

    # one more FSDP step after a resume, in bf16 mixed precision, with dropout and a bf16 reference: saved weights
    # stay float32
    out = _finetune(assets, "LlamaGen_finetune_fsdp.py", "fsdp", "--mixed-precision", "bf16", "--resume", "auto",
                    "--keep_dropout", "--max-steps", "3", "--epochs", "3", "--ref-dtype", "bf16")
    assert "resumed at step 2" in out
    step3 = _weights(fsdp_dir / "checkpoints/0000003.pt")
    assert all(v.dtype == torch.float32 for v in step3.values()) and not torch.equal(step3["norm.weight"],
                                                                                      fsdp["norm.weight"])

    samples = assets["root"] / "samples"
    _sample(assets, ddp_dir / "checkpoints/0000002.pt", samples)
    npz_files = list(samples.glob("*.npz"))
    assert len(npz_files) == 1 and "cfg-1.0" in npz_files[0].name and "000-ddp-GPT-debug-0000002" in npz_files[0].name
    with np.load(npz_files[0]) as npz:
        images, labels = npz["arr_0"], npz["arr_1"]
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 0
    assert labels.dtype == np.int64 and np.array_equal(labels, random_labels(10, CLASSES, seed=0))
    _sample(assets, ddp_dir / "checkpoints/0000002.pt", samples)        # rerun: everything done, same file
    with np.load(npz_files[0]) as npz:
        assert np.array_equal(npz["arr_0"], images) and np.array_equal(npz["arr_1"], labels)
    with pytest.raises(SystemExit, match="other settings .*dtype"):       # not in the name: refused, not reused
        _sample(assets, ddp_dir / "checkpoints/0000002.pt", samples, "--precision=fp16")
