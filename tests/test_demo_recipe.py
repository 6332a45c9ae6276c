"""The miniature's recipe switches (demo.config.CCAConfig) reach the trainer, model and sampler switches of the
fine-tune and sample scripts they are named after; at their defaults the miniature and its cache keys are as
before they existed. Tiny models, one optimizer step."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from demo.config import ARConfig, CCAConfig, FamilyConfig, TokenizerConfig, check_cca_fields, key_of
from demo.data import CodeLabelDataset
from demo.families import FAMILIES, finetune_copies
from demo.finetune import cca_finetune, train_config
from demo.samplers import Variant, sample_to_npz, var_sampler
from demo.tokenizers import build_var_vqvae
from cca.errors import UsageError
from cca.sampling import balanced_labels, random_labels
from LlamaGen import family as llamagen_family

VQ = type("VQ", (), {"downsample": 4})()      # 16 px -> 4 x 4 codes


def llamagen_setup(cca: CCAConfig):
    fc = FamilyConfig("llamagen", TokenizerConfig(vocab_size=16), ARConfig(dim=32, n_layer=2, n_head=2), cca, [])
    torch.manual_seed(0)
    base = FAMILIES["llamagen"].build_ar(fc, VQ).eval()
    with torch.no_grad():
        for p in base.parameters():          # LlamaGen's init zeroes the output head: nothing would show
            if not p.any():
                p.normal_(0.0, 0.5)
    data = CodeLabelDataset(torch.randint(0, 16, (32, 16)), torch.arange(32) % 10)
    return fc, base, data


def finetune(tmp_path, **switches) -> tuple[nn.Module, nn.Module, dict]:
    """One optimizer step of the tiny LlamaGen (8 rows of 32 per step, 0.25 epoch); (policy, reference, metrics)."""
    cca = CCAConfig(batch_size=8, epochs=0.25, lr=1e-3, **switches)
    fc, base, data = llamagen_setup(cca)
    policy, reference = finetune_copies(FAMILIES["llamagen"], fc, VQ, base, cca)
    modes = []
    reference.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    tuned, last = cca_finetune(policy, reference, llamagen_family.adapter_for(base), data, cca, tmp_path, seed=0)
    return tuned, reference, {**last, "reference_training": modes}


def test_defaults_keep_the_cache_keys_of_runs_before_the_switches():
    cca = CCAConfig(beta=0.2, lambda_=3.0)
    before = {k: getattr(cca, k) for k in ("beta", "lambda_", "lr", "epochs", "batch_size", "uncond_ratio")}
    assert key_of(cca.train_key()) == key_of(before)
    assert key_of(dataclasses.replace(cca, grad_accum=4).train_key()) != key_of(before)
    assert dataclasses.replace(cca, round_uint8=False, balanced_labels=False).train_key() == before   # sampling
    assert dataclasses.replace(cca, round_uint8=False).sampling_changes() == {"round_uint8": False}


@pytest.mark.parametrize("switches, field, value", [
    ({"unlearning": True}, "loss_type", "unlearning"),
    ({}, "loss_type", "CCA"),
    ({"ref_eval_mode": False}, "ref_train_mode", True),
    ({}, "ref_train_mode", False),
    ({"grad_accum": 4, "grad_accum_mean": False}, "grad_accum_reduction", "sum"),
    ({"grad_accum": 4}, "grad_accum", 4),
    ({"max_grad_norm": 1.0}, "max_grad_norm", 1.0),
    ({"roll_per_micro_batch": True}, "roll_per_micro_batch", True),
])
def test_switches_set_the_trainer_fields_the_scripts_set(tmp_path, switches, field, value):
    assert getattr(train_config(CCAConfig(**switches), tmp_path, 640, 0), field) == value


def test_reference_mode(tmp_path):
    assert set(finetune(tmp_path / "a", keep_dropout=True)[2]["reference_training"]) == {False}
    assert set(finetune(tmp_path / "b", keep_dropout=True, ref_eval_mode=False)[2]["reference_training"]) == {True}


def test_summed_micro_batch_gradients_are_grad_accum_times_the_mean(tmp_path):
    mean = finetune(tmp_path / "mean", grad_accum=4)[2]["grad_norm"]
    total = finetune(tmp_path / "sum", grad_accum=4, grad_accum_mean=False)[2]["grad_norm"]
    assert total == pytest.approx(4 * mean, rel=1e-4)         # the norm the clip at max_grad_norm acts on


def dropout_ps(model: nn.Module) -> dict:
    c = model.config
    return {"resid": c.resid_dropout_p, "ffn": c.ffn_dropout_p, "token": c.token_dropout_p,
            "drop_path": c.drop_path_rate}


@pytest.mark.parametrize("switches, expected", [
    ({}, {"resid": 0.0, "ffn": 0.0, "token": 0.0, "drop_path": 0.0}),             # the pretrained models' setup
    ({"keep_dropout": True}, {"resid": 0.1, "ffn": 0.1, "token": 0.1, "drop_path": 0.0}),
    ({"keep_dropout": True, "drop_path_rate": 0.1}, {"resid": 0.0, "ffn": 0.0, "token": 0.1, "drop_path": 0.1}),
    ({"keep_dropout": True, "drop_path_rate": 0.1, "dropout_with_drop_path": True},
     {"resid": 0.1, "ffn": 0.1, "token": 0.1, "drop_path": 0.1}),
    ({"drop_path_rate": 0.1}, {"resid": 0.0, "ffn": 0.0, "token": 0.0, "drop_path": 0.0}),  # needs --keep_dropout
])
def test_llamagen_fine_tune_dropout_is_the_scripts(switches, expected):
    cca = CCAConfig(**switches)
    fc, base, _ = llamagen_setup(cca)
    policy, reference = finetune_copies(FAMILIES["llamagen"], fc, VQ, base, cca)
    assert dropout_ps(policy) == dropout_ps(reference) == expected
    assert dropout_ps(base)["resid"] == 0.0
    codes, labels = torch.randint(0, 16, (4, 15)), torch.arange(4)
    policy.train()
    runs = [policy(codes, labels)[0] for _ in range(2)]
    assert torch.equal(*runs) == (expected == dropout_ps(base))          # dropout draws only when switched on
    policy.eval()
    assert torch.equal(policy(codes, labels)[0], base(codes, labels)[0])  # the base model's weights


def test_llamagen_reference_dtype():
    for ref_bf16, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        cca = CCAConfig(ref_bf16=ref_bf16)
        fc, base, _ = llamagen_setup(cca)
        policy, reference = finetune_copies(FAMILIES["llamagen"], fc, VQ, base, cca)
        assert {p.dtype for p in reference.parameters()} == {dtype}
        assert {p.dtype for p in policy.parameters()} == {torch.float32}


def test_a_bf16_reference_trains(tmp_path):
    _, reference, last = finetune(tmp_path, ref_bf16=True)
    assert np.isfinite(last["loss"]) and next(reference.parameters()).dtype == torch.bfloat16


def tiny_var(cca: CCAConfig):
    vae = build_var_vqvae(16, 8, 8, [1, 1, 1], 0, [1, 2, 3, 4])
    fc = FamilyConfig("var", TokenizerConfig(vocab_size=16, z_channels=8, ch=8), ARConfig(dim=32, n_layer=2,
                                                                                        n_head=2), cca, [])
    return fc, vae, FAMILIES["var"].build_ar(fc, vae).eval()


def test_var_drop_path_in_policy_and_reference():
    cca = CCAConfig(drop_path_rate=0.5)
    fc, vae, base = tiny_var(cca)
    policy, reference = finetune_copies(FAMILIES["var"], fc, vae, base, cca)
    assert policy.drop_path_rate == reference.drop_path_rate == 0.5 and base.drop_path_rate == 0.0
    labels, x = torch.arange(2), torch.randn(2, sum(p * p for p in base.patch_nums) - 1, 8)
    with torch.no_grad():
        reference.train()
        assert not torch.equal(reference(labels, x), reference(labels, x))          # drop path draws in train mode
        reference.eval()
        assert torch.equal(reference(labels, x), base(labels, x))


def test_var_round_uint8_cuts_like_the_original():
    _, _, var = tiny_var(CCAConfig())
    labels = torch.arange(4)
    rounded = var_sampler(var, 0.0, round_uint8=True)[0](labels, 3).astype(int)
    cut = var_sampler(var, 0.0, round_uint8=False)[0](labels, 3).astype(int)
    assert ((rounded - cut >= 0) & (rounded - cut <= 1)).all() and 0.3 < (rounded - cut).mean() < 0.7


@pytest.mark.parametrize("balanced, draw", [(True, balanced_labels), (False, random_labels)])
def test_sampler_labels(tmp_path, balanced, draw):
    v = Variant("v", "llamagen", "cca", False, 1.0, lambda labels, seed: np.zeros((len(labels), 2, 2, 3), np.uint8),
                balanced_labels=balanced)
    sample_to_npz(v, tmp_path, per_class=7, batch_size=20, seed=5, progress=False)
    with np.load(tmp_path / "samples_v.npz") as f:
        got = f["arr_1"]
    assert np.array_equal(np.bincount(got, minlength=10), np.bincount(draw(70, 10, seed=5), minlength=10))
    assert (np.bincount(got, minlength=10) == 7).all() == balanced


def test_switches_of_the_other_family_are_refused():
    check_cca_fields("llamagen", ["keep_dropout", "ref_bf16", "balanced_labels", "grad_accum"], "--point")
    check_cca_fields("var", ["round_uint8", "drop_path_rate", "ref_eval_mode"], "--point")
    for family, name in (("var", "keep_dropout"), ("var", "ref_bf16"), ("llamagen", "round_uint8")):
        with pytest.raises(UsageError, match=f"--point: {name}"):
            check_cca_fields(family, [name], "--point")
