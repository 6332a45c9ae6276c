"""The seed README's commands get the original recipe (docs/differences.md): reference mode, how micro-batch
gradients add up and where they are clipped, the schedule, the fp16 loss scaler, dropout, FSDP's reduce dtype,
pixel conversion and sampling labels; each improvement is a flag that is off by default."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import LLamaGen_sample_ddp
import VAR_finetune
import VAR_sample
from cca.checkpoint import load_strict
from cca.sampling import balanced_labels, random_labels, to_uint8_nhwc
from cca.schedule import lr_wd_at
from cca.trainer import Hooks, TrainConfig, Trainer
from fixture_utils import LAYOUTS
from LlamaGen import finetune_cli
from toy import ToyAdapter, ToyAR, ToyData

VAR_D16 = ["--depth=16", "--bs=256", "--ep=1", "--tblr=2e-5", "--fp16=1", "--alng=1e-3", "--wpe=0.1",
           "--loss_type=CCA", "--beta=0.02", "--lambda_=50.0", "--ac=4", "--exp_name=default", "--dpr_ratio=0.0",
           "--uncond_ratio=0.1", "--ref_ckpt=/p/var_d16.pth", "--data_path=/p/imagenet"]
LLAMAGEN_B = ["--global-batch-size", "256", "--gradient-accumulation-step", "16", "--epochs=1", "--ckpt-every=5000",
              "--lr=1e-5", "--loss_type=CCA", "--expid", "default", "--lambda_=1000.0", "--beta=0.02",
              "--uncond_ratio=0.1", "--keep_dropout", "--ref_ckpt=/p/c2i_B_384.pt", "--code-path=/p/codes/",
              "--image-size=384", "--gpt-model=GPT-B"]
IMAGENET = 1_281_167


def test_var_seed_command_trains_the_original_recipe(tmp_path):
    args = VAR_finetune.build_parser().parse_args(VAR_D16)
    cfg = VAR_finetune.train_config(args, 8, IMAGENET, tmp_path)
    assert (cfg.batch_size, cfg.grad_accum, cfg.grad_accum_reduction) == (32, 4, "mean")
    assert cfg.lr == pytest.approx(2e-5) and cfg.max_grad_norm == 2.0 and cfg.fused_adamw is True
    # lr_wd_annealing once per micro-iteration: ceil(1,281,167 / 64) of them per epoch, warmup ep / 50 epochs
    assert (cfg.schedule, cfg.schedule_unit, cfg.schedule_total) == ("lin0", "micro", 20019)
    assert cfg.warmup_steps == pytest.approx(20019 / 50) and (cfg.warmup_start, cfg.final_lr_ratio) == (0.005, 0.1)
    assert (cfg.weight_decay, cfg.wd_end) == (0.05, 0.05)
    assert cfg.precision == "fp16" and cfg.fp16_scaler == (2.0 ** 11, 1000, 2.0 ** 15)
    assert cfg.ref_train_mode is True                                    # --ref_dropout 0: the eval-mode reference
    off = VAR_finetune.build_parser().parse_args(VAR_D16 + ["--ref_dropout=0", "--twde=0.08"])
    cfg = VAR_finetune.train_config(off, 8, IMAGENET, tmp_path)
    assert cfg.ref_train_mode is False and cfg.wd_end == 0.08


@pytest.mark.parametrize("fsdp", [False, True])
def test_llamagen_seed_command_trains_the_original_recipe(tmp_path, fsdp):
    args = finetune_cli.build_parser(fsdp).parse_args(LLAMAGEN_B)
    cfg = finetune_cli.train_config(args, 8, tmp_path, None, fsdp)
    assert (cfg.batch_size, cfg.grad_accum, cfg.grad_accum_reduction) == (32, 16, "sum")
    assert (cfg.lr, cfg.weight_decay, cfg.max_grad_norm, cfg.schedule, cfg.warmup_steps) == (1e-5, 0.05, 1.0,
                                                                                              "constant", 0.0)
    assert cfg.precision == "bf16" and cfg.ref_train_mode is True and cfg.fused_adamw is True
    assert cfg.fp16_scaler == (None if fsdp else (2.0 ** 16, 2000, math.inf))   # torch's; the FSDP script: none
    assert cfg.ckpt_every == 5000 and 5000 in cfg.ckpt_steps
    assert finetune_cli.model_kwargs(args, fsdp) == dict(class_dropout_prob=1e-6 if fsdp else 1e-5, dropout_p=0.1,
                                                         token_dropout_p=0.1, drop_path_rate=0.0)
    drop_path = finetune_cli.build_parser(fsdp).parse_args(LLAMAGEN_B + ["--drop-path-rate=0.1"])
    assert finetune_cli.model_kwargs(drop_path, fsdp)["dropout_p"] == 0.0          # as the original scripts
    both = finetune_cli.build_parser(fsdp).parse_args(LLAMAGEN_B + ["--drop-path-rate=0.1",
                                                                     "--dropout-with-drop-path"])
    assert finetune_cli.model_kwargs(both, fsdp)["dropout_p"] == 0.1
    better = finetune_cli.build_parser(fsdp).parse_args(LLAMAGEN_B + ["--ref-eval-mode", "--grad-accum-mean"])
    cfg = finetune_cli.train_config(better, 8, tmp_path, None, fsdp)
    assert cfg.ref_train_mode is False and cfg.grad_accum_reduction == "mean"
    bare = finetune_cli.build_parser(fsdp).parse_args(["--ref_ckpt=x", "--code-path=y"])
    assert (bare.epochs, bare.lr, bare.num_workers, bare.keep_dropout) == (300, 1e-4, 24, False)


def test_fsdp_reduces_gradients_in_the_mixed_precision_dtype(monkeypatch):
    seen = []
    monkeypatch.setattr("LlamaGen.fsdp.shard_gpt", lambda model, dp, param, grad, dist: seen.append((param, grad))
                        or model)
    from cca import dist as cdist
    for extra, want in (([], ("bf16", "bf16")), (["--grad-precision", "fp32"], ("bf16", "fp32")),
                        (["--mixed-precision", "fp16"], ("fp16", "fp16"))):
        args = finetune_cli.build_parser(True).parse_args(LLAMAGEN_B + extra)
        seen.clear()
        shard = finetune_cli.fsdp_sharding(args, cdist.init())      # for the policy and the reference
        shard(torch.nn.Linear(2, 2))
        assert seen == [want]


def _toy_run(tmp_path, name, steps=2, **kw):
    """Train the toy model; returns (per-step metrics, final policy)."""
    torch.manual_seed(0)
    ref = ToyAR(4, 6)
    policy = copy.deepcopy(ref)
    seen = []
    base = dict(out_dir=str(tmp_path / name), batch_size=8, lr=1e-2, beta=1.0, lambda_=1.0, log_every=1,
                max_steps=steps, uncond_ratio=0.25)
    Trainer(policy, ref, ToyAdapter(4, 6), TrainConfig(**{**base, **kw}),
            hooks=Hooks(step=lambda s, m: seen.append({k: float(v) for k, v in m.items()}))).fit(ToyData(64))
    return seen, policy


def test_summed_micro_batch_gradients_are_clipped_as_a_sum(tmp_path):
    mean, _ = _toy_run(tmp_path, "mean", steps=1, grad_accum=2, grad_accum_reduction="mean")
    summed, _ = _toy_run(tmp_path, "sum", steps=1, grad_accum=2, grad_accum_reduction="sum")
    assert summed[0]["grad_norm"] == pytest.approx(2 * mean[0]["grad_norm"], rel=1e-5)   # before clipping
    _, clipped_mean = _toy_run(tmp_path, "cm", steps=1, grad_accum=2, max_grad_norm=1e-3)
    _, clipped_sum = _toy_run(tmp_path, "cs", steps=1, grad_accum=2, grad_accum_reduction="sum",
                              max_grad_norm=1e-3)
    for a, b in zip(clipped_mean.parameters(), clipped_sum.parameters()):   # both clipped to the same norm
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_schedule_follows_micro_iterations_and_max_steps_keeps_its_length(tmp_path):
    kw = dict(schedule="lin0", schedule_unit="micro", grad_accum=2, warmup_steps=3, epochs=2.0, weight_decay=0.3,
              wd_end=0.1, final_lr_ratio=0.1)
    seen, _ = _toy_run(tmp_path, "sched", steps=3, **kw)
    total = 2 * (64 // 8) * 2                      # micro-iterations in 2 epochs of 8 steps
    for step, m in enumerate(seen):                # a step uses the values of its last micro-iteration
        lr, wd = lr_wd_at(2 * step + 1, total, schedule="lin0", lr=1e-2, weight_decay=0.3, wd_end=0.1,
                          warmup_steps=3, final_lr_ratio=0.1)
        assert (m["lr"], m["weight_decay"]) == (pytest.approx(lr), pytest.approx(wd))
    squeezed = lr_wd_at(5, 6, schedule="lin0", lr=1e-2, weight_decay=0.3, wd_end=0.1, warmup_steps=3,
                        final_lr_ratio=0.1)[0]    # what a schedule cut down to the 3 steps would give: the final lr
    assert len(seen) == 3 and seen[-1]["lr"] > 9 * squeezed


def test_var_fp16_loss_scale_starts_at_2_11_grows_every_1000_and_is_capped(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), batch_size=8, precision="fp16", fp16_scaler=(2.0 ** 11, 1000, 2.0 ** 15))
    tr = Trainer(ToyAR(4, 6), ToyAR(4, 6), ToyAdapter(4, 6), cfg)
    assert tr.scaler.is_enabled() and tr.scaler.get_scale() == 2.0 ** 11 and tr.scaler.get_growth_interval() == 1000
    assert tr.scaler.scale(torch.tensor(1.0)).item() == 2.0 ** 11
    tr.scaler.update(new_scale=2.0 ** 16)         # grown past the cap: the next update sets it back
    tr._update_scale()
    assert tr.scaler.get_scale() == 2.0 ** 15
    assert not Trainer(ToyAR(4, 6), ToyAR(4, 6), ToyAdapter(4, 6),
                       TrainConfig(out_dir=str(tmp_path), batch_size=8, precision="fp16",
                                   fp16_scaler=None)).scaler.is_enabled()


def test_var_sampler_cuts_pixels_like_the_original():
    args = VAR_sample.build_parser().parse_args(["--ckpt_path=x"])
    assert (args.cfg, args.round_uint8, args.top_k, args.top_p, args.num_per_class) == (1.0, False, 900, 0.96, 50)
    x = torch.tensor([0.0, 0.3, 0.999, 1.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert to_uint8_nhwc(x, rounding="truncate")[0, :, :, 0].ravel().tolist() == [0, 76, 254, 255]
    assert to_uint8_nhwc(x)[0, :, :, 0].ravel().tolist() == [0, 77, 255, 255]
    half = x.half()                                # the original multiplies its float16 images by 255 in float16
    assert np.array_equal(to_uint8_nhwc(half, rounding="truncate"),
                          half.permute(0, 2, 3, 1).mul(255).numpy().astype(np.uint8))


def test_llamagen_sampler_draws_labels_and_pixels_like_the_original():
    args = LLamaGen_sample_ddp.build_parser().parse_args(["--vq-ckpt=v", "--gpt-ckpt=g"])
    assert args.balanced_labels is False
    labels = random_labels(1000, 10, seed=0)
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 1000 and counts.min() != counts.max()          # independent draws, not balanced
    assert np.array_equal(labels, random_labels(1000, 10, seed=0))
    assert np.bincount(balanced_labels(1000, 10)).tolist() == [100] * 10
    x = torch.randn(2, 3, 5, 5) * 1.2                                       # bicubic output may leave [-1, 1]
    original = torch.clamp(127.5 * x + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    assert np.array_equal(to_uint8_nhwc(x, (-1.0, 1.0)), original)


def test_var_d36s_flags_build_the_released_layout():
    from VAR.build import build_vae, build_var, parse_patch_nums
    spec = json.loads((LAYOUTS / "var_d36.json").read_text())
    for parser in (VAR_finetune.build_parser(), VAR_sample.build_parser()):
        args = parser.parse_known_args(["--depth=36", "--saln=1", "--pn=512", "--ref_ckpt=x", "--data_path=y",
                                        "--ckpt_path=z"])[0]
        patch_nums = parse_patch_nums(args.pn)
        vae = build_vae(patch_nums=patch_nums, device="meta")
        var = build_var(vae, depth=args.depth, patch_nums=patch_nums, shared_aln=args.saln, device="meta")
        state = {e["key"]: torch.empty(e["shape"], dtype=getattr(torch, e["dtype"]), device="meta")
                 for e in spec["state_dict"]}
        load_strict(var, state, source="var_d36.json", assign=True)
        assert sum(p.numel() for p in var.parameters()) == spec["num_parameters"] == 2_353_893_904


def test_released_checkpoints_and_fine_tunes_interoperate(tmp_path):
    """Our VAR fine-tune output is a bare state dict (the original sampler's strict load); the original CCA
    VAR_finetune.py's {'epoch', 'iter', 'trainer', 'args'} file loads in VAR_sample.py's loader."""
    from VAR.build import build_tiny_vae_var, load_var_weights
    _, var = build_tiny_vae_var(seed=1)
    sd = {k: v.clone() for k, v in var.state_dict().items()}
    torch.save({"epoch": 1, "iter": 0, "trainer": sd, "args": {"pn": "1_2_3_4", "tf32": True}}, tmp_path / "o.pth")
    _, other = build_tiny_vae_var(seed=2)
    load_var_weights(other, Path(tmp_path / "o.pth"))
    assert all(torch.equal(other.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.parametrize("per_micro", [False, True])
def test_negatives_are_rolled_over_the_batch_or_within_each_micro_batch(tmp_path, per_micro):
    seen = []
    torch.manual_seed(0)
    ref = ToyAR(4, 6)
    cfg = TrainConfig(out_dir=str(tmp_path), batch_size=8, grad_accum=2, max_steps=1, shuffle=False,
                      roll_per_micro_batch=per_micro)
    data = [(torch.tensor(c), torch.full((5,), c)) for c in (0, 1, 2, 3, 1, 2, 3, 0)]
    Trainer(copy.deepcopy(ref), ref, ToyAdapter(4, 6), cfg,
            hooks=Hooks(micro_step=lambda m: seen.append(m["labels"].tolist()))).fit(data)
    want = [[0, 1, 2, 3, 1, 2, 3, 0], [1, 2, 3, 0, 2, 3, 0, 1]] if per_micro else \
        [[0, 1, 2, 3, 1, 2, 3, 1], [1, 2, 3, 0, 2, 3, 0, 0]]      # (positives, negatives) of each micro-batch
    assert seen == want
