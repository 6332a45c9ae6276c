"""LlamaGen.parity reproduces the shipped llamagen_vq / llamagen_gpt fixtures within their tolerances."""
from __future__ import annotations

import subprocess
import sys

from fixture_utils import FIXTURES, REPO, compare_with_expected, fixture_config
from safetensors.torch import load_file

from LlamaGen.parity import cfg_tag


def test_gpt_fixture_covers_every_cfg():
    config = fixture_config(FIXTURES / "llamagen_gpt")
    expected = load_file(str(FIXTURES / "llamagen_gpt" / "expected.safetensors"))
    for cfg in config["calls"]["generation"]["cfg_scale"]:
        assert f"generated_tokens_{cfg_tag(float(cfg))}" in expected
    assert cfg_tag(1.5) == "cfg1p5" and cfg_tag(4.0) == "cfg4"


def test_parity_cli(tmp_path):
    out = tmp_path / "gpt.safetensors"
    subprocess.run([sys.executable, "-m", "cca.parity", str(FIXTURES / "llamagen_gpt"), "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    compare_with_expected(FIXTURES / "llamagen_gpt", load_file(str(out)))
