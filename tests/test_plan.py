"""The dry-run planner (cca/plan.py, VAR/plan.py, LlamaGen/plan.py): its activation counts equal what autograd
saves, its peak-memory prediction is within 15 % of the measured peak of real CPU runs at a tiny and a mid size of
both families (fine-tune steps and sampling), its FLOPs match torch's FLOP counter, and --dry-run on every script
prints the plan without allocating the model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cca import plan
from cca.errors import UsageError
from cca.loss import sequence_logprob
from fixture_utils import REPO
from LlamaGen.gpt import ModelArgs, Transformer
from LlamaGen.plan import activations as gpt_activations, gpt_net
from plan_models import predicted
from VAR.build import build_vae, build_var
from VAR.plan import activations as var_activations, var_net

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def saved_bytes(out: torch.Tensor, params: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``out`` (parameters excluded)."""
    own = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}
    stack, visited = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        tensors = [getattr(node, a) for a in dir(node) if a.startswith("_saved_")]
        tensors += list(getattr(node, "saved_tensors", ()))
        for t in tensors:
            for x in (t if isinstance(t, (tuple, list)) else [t]):
                if isinstance(x, torch.Tensor) and x.untyped_storage().data_ptr() not in own:
                    seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        stack += [f for f, _ in node.next_functions]
    return sum(seen.values())


@pytest.mark.parametrize("precision", ["fp32", "amp", "half"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_llamagen_saved_activations_match_autograd(precision, dropout):
    cfg = ModelArgs(dim=96, n_layer=2, n_head=3, vocab_size=64, block_size=64, num_classes=3, class_dropout_prob=0.0,
                    token_dropout_p=dropout, resid_dropout_p=dropout, ffn_dropout_p=dropout)
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    model = model.to(torch.bfloat16) if precision == "half" else model
    N, T = 5, cfg.block_size
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "amp")   # LlamaGen has no LayerNorm:
    with amp:                                                  # CPU and CUDA autocast save the same tensors
        logits = model(torch.randint(64, (N, T - 1)), torch.randint(3, (N,)))[0]
    got = saved_bytes(sequence_logprob(logits, torch.randint(64, (N, T))).sum(), list(model.parameters()))
    act = gpt_activations(cfg, precision, "cpu")
    cast = 2 * plan.linear_weights(model) if precision == "amp" else 0
    want = N * T * (act.saved_per_token + 4 * cfg.vocab_size + 4) + N * act.saved_per_row + cast
    assert want == pytest.approx(got, rel=0.01)


def test_var_saved_activations_match_autograd():
    patch_nums = (1, 2, 3, 4, 5)
    torch.manual_seed(0)
    vae = build_vae(V=64, Cvae=8, ch=16, patch_nums=patch_nums, ch_mult=(1, 2), num_res_blocks=1)
    var = build_var(vae, depth=2, num_classes=3, patch_nums=patch_nums, embed_dim=96, num_heads=3, dpr_ratio=0.0,
                    cond_drop_rate=0.0).train()
    N, L = 5, var.L
    logits = var(torch.randint(3, (N,)), torch.randn(N, L - 1, 8))
    got = saved_bytes(sequence_logprob(logits, torch.randint(64, (N, L))).sum(), list(var.parameters()))
    act = var_activations(var, "fp32")
    assert N * L * (act.saved_per_token + 4 * var.V + 4) + N * act.saved_per_row == pytest.approx(got, rel=0.01)


GPT_TINY = {"family": "gpt", "size": {"dim": 128, "layers": 2, "heads": 4, "vocab": 1024, "grid": 8, "vq_ch": 32}}
GPT_MID = {"family": "gpt", "size": {"dim": 256, "layers": 4, "heads": 4, "vocab": 4096, "grid": 16, "vq_ch": 32}}
VAR_TINY = {"family": "var", "size": {"depth": 2, "width": 128, "heads": 4, "vocab": 512, "pn": [1, 2, 3, 4, 6, 8],
                                      "cvae": 8, "vae_ch": 32}}
VAR_MID = {"family": "var", "size": {"depth": 4, "width": 256, "heads": 4, "vocab": 2048,
                                     "pn": [1, 2, 3, 4, 5, 6, 8, 10], "cvae": 16, "vae_ch": 32}}
RUNS = {   # about 35-60 MB (tiny) and 250-370 MB (mid) of tensors at the peak
    "gpt-tiny-finetune": {**GPT_TINY, "task": "finetune", "micro": 8, "accum": 2},
    "gpt-tiny-finetune-joint-dropout": {"family": "gpt", "size": {**GPT_TINY["size"], "dropout": 0.1},
                                        "task": "finetune", "micro": 8, "accum": 2, "joint": True},
    "gpt-mid-finetune": {**GPT_MID, "task": "finetune", "micro": 4, "accum": 2},
    "var-tiny-finetune": {**VAR_TINY, "task": "finetune", "micro": 4, "accum": 2},
    "var-mid-finetune": {**VAR_MID, "task": "finetune", "micro": 8, "accum": 2},
    "gpt-tiny-sample-cfg": {**GPT_TINY, "task": "sample", "batch": 4, "cfg": 2.0},
    "gpt-mid-sample": {**GPT_MID, "task": "sample", "batch": 8, "cfg": 1.0},
    "var-tiny-sample": {**VAR_TINY, "task": "sample", "batch": 16, "cfg": 0.0},
    "var-mid-sample-cfg": {"family": "var", "size": {**VAR_MID["size"], "pn": [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]},
                           "task": "sample", "batch": 16, "cfg": 1.5},
}


@pytest.mark.parametrize("name", list(RUNS))
def test_predicted_peak_within_15_percent_of_measured_cpu_peak(name):
    spec = RUNS[name]
    env = {**ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}      # see tests/plan_measure.py
    out = subprocess.run([sys.executable, str(REPO / "tests" / "plan_measure.py"), json.dumps(spec)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    want = predicted(spec)
    print(f"[plan] {name}: measured {measured / 1e6:.1f} MB, predicted {want / 1e6:.1f} MB ({want / measured:.3f})")
    assert measured > 15e6, measured                      # a real run, well above the resident set's noise
    assert want == pytest.approx(measured, rel=0.15), (want / 1e6, measured / 1e6)


def test_flops_match_torch_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    gpt = Transformer(ModelArgs(dim=64, n_layer=2, n_head=4, vocab_size=128, block_size=36, num_classes=3))
    T = gpt.config.block_size
    # the math attention: its matmuls are counted (the counter has no formula for the CPU flash kernel)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        gpt(torch.randint(128, (1, T - 1)), torch.randint(3, (1,)))
    causal_skipped = 4 * 64 * 2 * (T * T - T * (T + 1) / 2)    # math attention computes every query-key pair
    assert gpt_net(gpt).flops_per_row + causal_skipped == pytest.approx(counter.get_total_flops(), rel=0.01)

    vae = build_vae(V=64, Cvae=8, ch=16, patch_nums=(1, 2, 3), ch_mult=(1, 2), num_res_blocks=1)
    var = build_var(vae, depth=2, num_classes=3, patch_nums=(1, 2, 3), embed_dim=64, num_heads=4)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        var(torch.randint(3, (1,)), torch.randn(1, var.L - 1, 8))
    assert var_net(var, var.L * var.L).flops_per_row == pytest.approx(counter.get_total_flops(), rel=0.01)


def _setup(**kw) -> plan.Finetune:
    net = plan.Net(params=10**9, linear_params=9 * 10**8, block_params=10**7, root_params=10**8,
                   largest_param=10**7, tokens=256, vocab=16384, flops_per_row=1e12)
    act = plan.Activations(saved_per_token=1e5, saved_per_row=0.0, inference_per_token=1e5)
    return plan.Finetune(**{**dict(net=net, act=act, precision="amp", world=8, shard=1, mode="ddp", micro=4,
                                   accum=2, joint=False), **kw})


def test_memory_model_parts():
    ddp, one = plan.finetune_memory(_setup()), plan.finetune_memory(_setup(world=1))
    assert ddp["gradients"] == 2 * one["gradients"] == 8e9            # DDP's buckets as large as the gradients
    fsdp = plan.finetune_memory(_setup(mode="fsdp", shard=8, precision="half"))
    assert fsdp["weights"] == one["weights"] / 8 and fsdp["optimizer"] == one["optimizer"] / 8
    hsdp = plan.finetune_memory(_setup(mode="hsdp", shard=4, world=16, precision="half"))
    assert hsdp["optimizer"] == 2 * fsdp["optimizer"]                # sharded inside a node of 4 only
    split, joint = plan.finetune_transients(_setup()), plan.finetune_transients(_setup(joint=True))
    assert joint["policy pass of 8 rows"] - split["policy pass of 4 rows"] == pytest.approx(
        4 * 256 * (1e5 + 8 * 16384 + 4))                             # 4 more rows of activations and logits
    ema = plan.finetune_memory(_setup(ema=True))
    assert ema["optimizer"] - ddp["optimizer"] == 4e9
    assert plan.finetune_flops(_setup()) == 8 * 8 * 1e12


def test_largest_fitting_is_the_boundary():
    s = _setup()
    limit = 40 * plan.GiB
    best = plan.largest_fitting(lambda b: plan.finetune_memory(s, b)["total"], limit)
    assert plan.finetune_memory(s, best)["total"] <= limit < plan.finetune_memory(s, best + 1)["total"]
    assert plan.largest_fitting(lambda b: 1e12 * b, 1e11) == 0


DRY_RUN = """
import importlib, json, sys
from pathlib import Path
import LlamaGen.plan, LlamaGen.plan_t2i, LlamaGen.t2i_data, VAR.plan, VAR.data, LlamaGen.codes
from transformers import T5Config, T5EncoderModel
def kib(field):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
module, fsdp, argv = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
main = importlib.import_module(module).main
rss, peak = kib("VmRSS"), kib("VmPeak")
Path("/proc/self/clear_refs").write_text("5")
main(argv, fsdp=fsdp) if module == "LlamaGen.finetune_cli" else main(argv)
print(json.dumps({"rss": (kib("VmHWM") - rss) * 1024, "virtual": (kib("VmPeak") - peak) * 1024}))
"""
LLAMAGEN_SEED = ["--global-batch-size", "256", "--gradient-accumulation-step", "16", "--epochs=1", "--ckpt-every=5000",
                 "--lr=1e-5", "--loss_type=CCA", "--expid", "default", "--lambda_=1000.0", "--beta=0.02",
                 "--uncond_ratio=0.1", "--keep_dropout", "--code-path=/nonexistent/codes", "--image-size=384"]
VAR_SEED = ["--bs=256", "--ep=1", "--tblr=2e-5", "--fp16=1", "--alng=1e-3", "--wpe=0.1", "--loss_type=CCA",
            "--beta=0.02", "--lambda_=50.0", "--ac=4", "--dpr_ratio=0.0", "--uncond_ratio=0.1",
            "--ref_ckpt=/nonexistent/var.pth", "--vae_ckpt=/nonexistent/vae.pth", "--data_path=/nonexistent/imagenet"]
DRY_RUNS = {   # script, its flags: the released sizes, checkpoints and data that do not exist
    "LlamaGen_finetune.py": ("LlamaGen.finetune_cli", "0", [*LLAMAGEN_SEED, "--ref_ckpt=/no/c2i_XL_384.pt",
                                                           "--gpt-model=GPT-XL"]),
    "LlamaGen_finetune_fsdp.py": ("LlamaGen.finetune_cli", "1", [*LLAMAGEN_SEED, "--ref_ckpt=/no/c2i_3B_384.pt",
                                                                "--gpt-model=GPT-3B"]),
    "VAR_finetune.py": ("VAR_finetune", "0", [*VAR_SEED, "--depth=24"]),
    "VAR_sample.py": ("VAR_sample", "0", ["--cfg=0.0", "--ckpt_path=/no/var_d24.pth", "--vae_ckpt=/no/vae.pth",
                                          "--depth", "24"]),
    "LLamaGen_sample_ddp.py": ("LLamaGen_sample_ddp", "0", [
        "--vq-ckpt=/no/vq_ds16_c2i.pt", "--ckpt_path=/no/c2i_3B_384.pt", "--gpt-model=GPT-3B", "--image-size=384",
        "--image-size-eval=256", "--per-proc-batch-size=48", "--cfg-scale=1.0", "--num-fid-samples=50000"]),
    "LlamaGen_finetune_fsdp.py (t2i)": ("LlamaGen.finetune_cli", "1", [
        *LLAMAGEN_SEED, "--ref_ckpt=/no/t2i_XL_stage2_512.pt", "--gpt-model=GPT-XL", "--gpt-type=t2i",
        "--data-path=/no/jsonl", "--t5-feat-path=/no/t5", "--image-size=512"]),
    "sample_t2i.py": ("LlamaGen.sample_t2i", "0", ["--prompts=/no/prompts.txt", "--gpt-ckpt=/no/t2i_XL_stage2_512.pt",
                                                   "--vq-ckpt=/no/vq_ds16_t2i.pt", "--samples-per-prompt=50000"]),
}


@pytest.mark.parametrize("script", list(DRY_RUNS))
def test_dry_run_prints_the_plan_without_allocating_the_model(script):
    module, fsdp, argv = DRY_RUNS[script]
    out = subprocess.run([sys.executable, "-c", DRY_RUN, module, fsdp, *argv, "--dry-run", "--gpus", "8",
                          "--gpu-mem", "80"], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text, grew = out.stdout, json.loads(out.stdout.strip().splitlines()[-1])
    assert f"[dry run] {script.split()[0]}" in text and "nothing was allocated" in text
    assert "8 process(es)" in text and "fits in 80 GiB" in text
    if "finetune" in script:
        assert "assuming ImageNet's 1,281,167 images" in text and "steps per epoch: 5,004" in text
        assert "largest micro-batch within 80 GiB:" in text
    else:
        assert "largest batch within 80 GiB:" in text
        assert "50,000 samples" in text or "planning one batch per process" in text
    # the models hold 1-3 billion parameters (4-12 GB each in fp32): nothing of that size came into being
    assert grew["rss"] < 200e6 and grew["virtual"] < 1e9, grew


def test_dry_run_counts_the_data_that_exist(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    import VAR_finetune
    from llamagen_tiny import TINY_FLAGS, write_codes
    from LlamaGen.finetune_cli import main as llamagen_main
    write_codes(tmp_path / "codes", 40)
    llamagen_main([*TINY_FLAGS, "--ref_ckpt=/no/ref.pt", "--code-path", str(tmp_path / "codes"),
                   "--global-batch-size", "8", "--dry-run", "--gpus", "2"])
    text = capsys.readouterr().out
    assert "40 training items in --code-path" in text and "steps per epoch: 5 (global batch 8)" in text
    for cls in ("a", "b"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / cls / f"{i}.png")
    VAR_finetune.main(["--depth=2", "--num_classes=2", "--bs=2", "--ref_ckpt=/no/ref.pth", "--data_path",
                       str(tmp_path / "images"), "--dry-run"])
    text = capsys.readouterr().out
    assert "6 training items in --data_path" in text and "steps per epoch: 3 (global batch 2)" in text


def test_gpus_flag(capsys):
    from LlamaGen.finetune_cli import build_parser
    from LlamaGen.plan import finetune_setup
    parse = build_parser(True).parse_args
    flags = ["--ref_ckpt=x", "--code-path=y", "--gpt-model=GPT-XXL", "--image-size=384", "--data-parallel", "hsdp"]
    args = parse([*flags, "--gpus", "2x8"])
    assert plan.plan_world(args) == (16, 8)
    assert finetune_setup(args, True, 16, 8).shard == 8          # HSDP shards inside a node, replicates across
    assert finetune_setup(parse([*flags[:-2], "--gpus", "2x8"]), True, 16, 8).shard == 16
    with pytest.raises(UsageError, match="--gpus: expected N or NODESxPER_NODE"):
        plan.plan_world(parse([*flags, "--gpus", "two"]))
