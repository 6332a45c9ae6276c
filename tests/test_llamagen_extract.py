"""LlamaGen/extract_codes_c2i.py: the original's on-disk layout, script and module entry points, resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixture_utils import REPO
from llamagen_tiny import EMBED, IMAGE, VOCAB, make_assets

from LlamaGen import extract_codes_c2i

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}   # the script must find the repo by itself


def _flags(assets, code_path):
    return ["--vq-ckpt", str(assets["vq"]), "--data-path", str(assets["images"]), "--code-path", str(code_path),
            "--image-size", str(IMAGE), "--codebook-size", str(VOCAB), "--codebook-embed-dim", str(EMBED),
            "--num-workers", "0"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # tiny convolutions: one thread is much faster on a shared 2-core box
    root = tmp_path_factory.mktemp("llamagen_extract")
    yield {**make_assets(root), "root": root}
    torch.set_num_threads(threads)


def test_script_ten_crop_layout_and_resume(assets):
    code_path = assets["root"] / "codes"
    cmd = [sys.executable, "LlamaGen/extract_codes_c2i.py", *_flags(assets, code_path), "--ten-crop",
           "--crop-range", "1.1"]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes_dir, labels_dir = code_path / f"imagenet{IMAGE}_codes", code_path / f"imagenet{IMAGE}_labels"
    assert sorted(p.name for p in codes_dir.iterdir()) == [f"{i}.npy" for i in range(6)]
    codes, label = np.load(codes_dir / "5.npy"), np.load(labels_dir / "5.npy")
    assert codes.shape == (1, 10, 16) and codes.dtype == np.int64 and codes.min() >= 0 and codes.max() < VOCAB
    assert label.shape == (1,) and label.dtype == np.int64 and label[0] == 2     # sorted ImageFolder classes
    # the last five crops are the horizontal flips of the first five: different codes for a random image
    assert not np.array_equal(codes[0, :5], codes[0, 5:])
    before = (codes_dir / "0.npy").stat().st_mtime_ns
    saved3 = np.load(codes_dir / "3.npy")
    (codes_dir / "3.npy").unlink()
    extract_codes_c2i.main(_flags(assets, code_path) + ["--ten-crop", "--crop-range", "1.1"])   # resume
    assert (codes_dir / "0.npy").stat().st_mtime_ns == before
    assert np.array_equal(np.load(codes_dir / "3.npy"), saved3)


def test_two_view_mode_and_module_entry(assets):
    code_path = assets["root"] / "codes_flip"
    extract_codes_c2i.main(_flags(assets, code_path))
    assert np.load(code_path / f"imagenet{IMAGE}_codes" / "0.npy").shape == (1, 2, 16)
    proc = subprocess.run([sys.executable, "-m", "LlamaGen.extract_codes_c2i", "--help"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--ten-crop" in proc.stdout and "--crop-range" in proc.stdout


def test_bad_inputs(assets, tmp_path):
    with pytest.raises(SystemExit, match="--data-path .*not found"):
        extract_codes_c2i.main(_flags(assets, tmp_path)[:2] + ["--data-path", str(tmp_path / "nope"),
                                                                "--code-path", str(tmp_path)])
    with pytest.raises(SystemExit, match="--vq-ckpt .*not found"):
        extract_codes_c2i.main(["--vq-ckpt", str(tmp_path / "none.pt"), "--data-path", str(assets["images"]),
                                "--code-path", str(tmp_path)])
    with pytest.raises(SystemExit, match="--codebook-size 64 --codebook-embed-dim 4"):
        extract_codes_c2i.main(_flags(assets, tmp_path)[:-6] + ["--num-workers", "0"])   # default 16384 x 8


def test_t2i_listing_writes_one_centre_crop_per_record_where_the_original_did(assets, tmp_path):
    """LlamaGen's T2I listing (.jsonl files with image_path) goes through the same tokenizer path:
    <code-path>/<jsonl stem>/<line>.npy (1, h*w) int64, the codes of the centre crop, as extract_codes_t2i.py."""
    from PIL import Image

    from LlamaGen.checkpoints import load_vq
    images = sorted(str(p) for p in assets["images"].rglob("*.png"))
    listing = tmp_path / "listing"
    listing.mkdir()
    for name, chosen in (("part0.jsonl", images[:3]), ("part1.jsonl", images[3:5])):
        (listing / name).write_text("".join(json.dumps({"image_path": p, "text": ["a caption"]}) + "\n"
                                            for p in chosen))
    (listing / "readme.txt").write_text("not a listing")
    flags = _flags(assets, tmp_path / "codes")
    flags[flags.index("--data-path") + 1] = str(listing)
    extract_codes_c2i.main(flags + ["--data-start", "1", "--data-end", "1"])   # sorted entry 1 = part1.jsonl
    assert sorted(p.relative_to(tmp_path / "codes").as_posix() for p in (tmp_path / "codes").rglob("*.npy")) == \
        ["part1/0.npy", "part1/1.npy"]
    extract_codes_c2i.main(flags)
    vq = load_vq(str(assets["vq"]), "VQ-16", VOCAB, EMBED)
    view = extract_codes_c2i.ViewsTransform(IMAGE, False, 1.0, flip=False)(Image.open(images[2]))   # (1, 3, S, S)
    with torch.no_grad():
        want = vq.encode(view)[2][2].reshape(1, -1).numpy()
    got = np.load(tmp_path / "codes" / "part0" / "2.npy")
    assert got.shape == (1, 16) and got.dtype == np.int64 and np.array_equal(got, want)
    with pytest.raises(SystemExit, match="--ten-crop"):
        extract_codes_c2i.main(flags + ["--ten-crop"])
