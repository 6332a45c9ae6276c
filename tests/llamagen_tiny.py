"""Tiny LlamaGen assets for CLI tests: an image folder, a VQ-16-shaped tokenizer and a GPT-debug checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from LlamaGen.checkpoints import build_gpt
from LlamaGen.vq_model import VQModel, VQModelArgs

VOCAB, EMBED, CLASSES, IMAGE = 64, 4, 3, 64      # 64 px / ds16 -> 4x4 = 16 tokens
TINY_FLAGS = ["--gpt-model", "GPT-debug", "--vocab-size", str(VOCAB), "--num-classes", str(CLASSES),
              "--image-size", str(IMAGE)]


def make_assets(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        folder = root / "images" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(2):
            pixels = rng.integers(0, 255, (70 + 10 * j, 90, 3), dtype=np.uint8)   # not square: centre crop
            Image.fromarray(pixels).save(folder / f"{j}.png")
    torch.manual_seed(0)
    vq = VQModel(VQModelArgs(codebook_size=VOCAB, codebook_embed_dim=EMBED, ch=32, num_res_blocks=1, z_channels=8))
    torch.save({"model": vq.state_dict()}, root / "vq.pt")
    gpt = build_gpt("GPT-debug", vocab_size=VOCAB, image_size=IMAGE, downsample_size=16, num_classes=CLASSES)
    for p in gpt.parameters():
        torch.nn.init.normal_(p, std=0.3)
    torch.save({"model": gpt.state_dict()}, root / "ref.pt")
    return {"images": root / "images", "vq": root / "vq.pt", "ref": root / "ref.pt"}


def write_codes(code_path: Path, n: int, image_size: int = IMAGE, tokens: int = 16, n_aug: int = 2,
                vocab: int = VOCAB) -> None:
    rng = np.random.default_rng(1)
    (code_path / f"imagenet{image_size}_codes").mkdir(parents=True, exist_ok=True)
    (code_path / f"imagenet{image_size}_labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(code_path / f"imagenet{image_size}_codes" / f"{i}.npy",
                rng.integers(0, vocab, (1, n_aug, tokens), dtype=np.int64))
        np.save(code_path / f"imagenet{image_size}_labels" / f"{i}.npy", np.array([i % CLASSES], dtype=np.int64))
