"""VAR fixture parity: our VQVAE / transformer / sampler reproduce the original code's outputs."""
from __future__ import annotations

import subprocess
import sys

from safetensors.torch import load_file

from fixture_utils import FIXTURES, REPO, compare_with_expected, fixture_config


def test_every_cfg_of_the_fixture_is_checked():
    config = fixture_config(FIXTURES / "var_transformer")
    expected = load_file(str(FIXTURES / "var_transformer" / "expected.safetensors"))
    cfgs = config["calls"]["sampling"]["cfg"]
    assert 0.0 in cfgs and len(cfgs) >= 2
    for cfg in cfgs:
        tag = "cfg" + format(cfg, "g").replace(".", "p")
        for what in ("tokens", "guided_logits", "images"):
            assert f"sample_{what}_{tag}" in expected


def test_parity_cli_writes_all_expected(tmp_path):
    out = tmp_path / "vq.safetensors"
    subprocess.run([sys.executable, "-m", "cca.parity", str(FIXTURES / "var_vqvae"), "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True)
    compare_with_expected(FIXTURES / "var_vqvae", load_file(str(out)))
