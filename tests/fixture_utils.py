"""Shared helpers for fixture-parity tests: where ../shared is and how to compare with a fixture's tolerances."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
FIXTURES_RECIPE = SHARED / "fixtures_recipe"        # training-step fixtures (+ the tokenizer they refer to)
LAYOUTS = SHARED / "checkpoint_layouts"


def fixture_config(fixture_dir: Path) -> dict:
    return json.loads((Path(fixture_dir) / "config.json").read_text())


def compare_with_expected(fixture_dir: Path, produced: dict[str, torch.Tensor]) -> None:
    """Assert every expected tensor is produced with equal dtype/shape, ints exact, floats within the per-tensor atol."""
    fixture_dir = Path(fixture_dir)
    expected = load_file(str(fixture_dir / "expected.safetensors"))
    tol = fixture_config(fixture_dir)["tolerance"]
    per_tensor = tol.get("suggested_atol_per_tensor", {})
    for name, exp in expected.items():
        assert name in produced, f"{name} not produced"
        got = produced[name].detach().cpu()
        assert got.dtype == exp.dtype, f"{name}: dtype {got.dtype} != {exp.dtype}"
        assert got.shape == exp.shape, f"{name}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
        if exp.is_floating_point():
            atol = per_tensor.get(name, tol.get("suggested_atol_float"))
            if atol is None:   # e.g. cca_loss records raw differences: 20x, at least 1e-5 * max(1, |x|)
                diff = tol["max_abs_diff_per_tensor"][name]
                mag = tol.get("max_abs_value_per_tensor", {}).get(name, 1.0)
                atol = max(20 * float(diff), 1e-5 * max(1.0, float(mag)))
            err = (got - exp).abs().max().item() if exp.numel() else 0.0
            assert err <= atol, f"{name}: max abs diff {err:.3g} > atol {atol:.3g}"
        else:
            assert torch.equal(got, exp), f"{name}: integer tensor differs"
