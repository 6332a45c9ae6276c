"""A Hugging Face hub cache pre-filled with tiny checkpoints under the registry's real names, for offline tests of
name resolution, cca.reproduce and cca.sweep; plus a tiny evaluator (random debug Inception) and a reference batch."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cca.hub import RELEASES
from evaluations import inception
from llamagen_tiny import make_assets
from VAR.build import build_vae, build_var

# architecture of the tiny VAR pair (tests/test_var_cli.py's sizes): 32 px images, 2 classes
TINY_VAR = ("--depth", "2", "--pn", "1_2", "--vae_ch", "32", "--vae_V", "64", "--vae_Cvae", "8", "--num_classes", "2")
CACHED = ("vae_ch160v4096z32", "var_d16", "VAR_d16_CCA")   # the VAR names the cache holds
# the tiny LlamaGen pair of tests/llamagen_tiny.py, cached as vq_ds16_c2i and c2i_B_384: 64 px, 3 classes
TINY_LLAMAGEN = ("--gpt-model", "GPT-debug", "--image-size", "64", "--image-size-eval", "32", "--num-classes", "3",
                 "--codebook-size", "64", "--codebook-embed-dim", "4")
FAKE_MAIN_COMMIT = "0" * 40                                  # what refs/main points to for unpinned releases


def cache_file(cache: Path, name: str) -> Path:
    """Where huggingface_hub looks for a release's file in the cache ``cache`` (HF_HUB_CACHE); folders made."""
    r = RELEASES[name]
    repo_dir = cache / f"models--{r.repo.replace('/', '--')}"
    commit = r.revision if r.pinned else FAKE_MAIN_COMMIT
    if not r.pinned:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / r.revision).write_text(commit)
    path = repo_dir / "snapshots" / commit / r.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _spread(var):
    """Weights large enough that the class and the guidance scale visibly change the images (the default init
    makes a depth-2 model almost class-blind)."""
    for name, p in var.named_parameters():
        if p.dim() > 1 or "class_emb" in name:
            torch.nn.init.normal_(p, std=0.5)
    return var


def make_hub(root: Path) -> dict[str, Path]:
    """The cache (tiny VQVAE, a depth-2 VAR as var_d16 and a second one as VAR_d16_CCA, a tiny LlamaGen pair),
    tiny Inception weights and a 16-image reference batch. Returns their paths."""
    cache = root / "hub"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = build_vae(V=64, Cvae=8, ch=32, patch_nums=(1, 2))
        models = [_spread(build_var(vae, depth=2, num_classes=2, patch_nums=(1, 2))) for _ in range(2)]
        net = inception.randomize_(inception.InceptionV3(resolution=299, width=1 / 16), seed=0)
        llamagen = make_assets(root / "llamagen")          # seeds torch itself: inside the forked RNG state
    for name, module in zip(CACHED, (vae, *models)):
        torch.save(module.state_dict(), cache_file(cache, name))
    for name, key in (("vq_ds16_c2i", "vq"), ("c2i_B_384", "ref")):
        cache_file(cache, name).write_bytes(llamagen[key].read_bytes())
    torch.save(net.state_dict(), root / "tiny_inception.pth")
    rng = np.random.default_rng(0)
    np.savez(root / "ref.npz", rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    return {"cache": cache, "weights": root / "tiny_inception.pth", "ref": root / "ref.npz"}


def offline_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def offline_hub(monkeypatch, tiny_hub):
    """This process reads the tiny cache offline (huggingface_hub reads its settings at import: patch both)."""
    import huggingface_hub.constants as hf_constants
    for key, value in (("HF_HUB_CACHE", str(tiny_hub["cache"])), ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tiny_hub["cache"]))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return tiny_hub


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory):
    return make_hub(tmp_path_factory.mktemp("tiny_hub"))
