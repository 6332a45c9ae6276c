"""LlamaGen/extract_t5_features.py on a tiny randomly initialised T5 (no download): LlamaGen's on-disk layout (real
rows only, left-padded by the reader), caption cleaning, caption keys, resume, two processes, the offline error."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixture_utils import REPO

from demo_t2i.text_encoder import build_t5
from LlamaGen import extract_t5_features as xt5
from LlamaGen.caption_text import preprocess
from LlamaGen.captions import left_pad

WORDS = "a dog cat red blue photo of sitting on the couch first second llava caption".split()
MAX_LEN, WIDTH = 6, 16
RECORDS = {"part0": [["A Red DOG", "llava caption", "x"], ["a cat. second sentence", "b", "c"],
                     ["photo of a red dog sitting on the couch", "l", "f"]],
           "part1": ["a blue cat"]}                  # "text" may also be one string
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A T5 folder (word-level tokenizer that appends </s>, 1-layer encoder) and a listing of 4 captions."""
    root = tmp_path_factory.mktemp("t5")
    folder = build_t5(root / "models" / "flan-t5-xl", WORDS, WIDTH)
    (root / "listing").mkdir()
    for stem, records in RECORDS.items():
        (root / "listing" / f"{stem}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in records))
    return {"root": root, "model": folder, "listing": root / "listing"}


def _flags(tiny, out, *extra):
    return ["--data-path", str(tiny["listing"]), "--t5-path", str(out), "--t5-model-path", str(tiny["model"]),
            "--precision", "none", "--t5-feature-max-len", str(MAX_LEN), *extra]


def _alone(tiny, caption: str) -> np.ndarray:
    """The encoder on the caption's own tokens only (no padding at all): what the stored real rows must be."""
    tokenizer, encoder = xt5.load_t5(tiny["model"], torch.float32, torch.device("cpu"))
    ids = tokenizer([preprocess(caption)], max_length=MAX_LEN, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return encoder(input_ids=ids).last_hidden_state.numpy()               # (1, n, D)


def test_features_hold_the_real_rows_of_the_cleaned_captions(tiny, tmp_path):
    out = tmp_path / "feats"
    xt5.main(_flags(tiny, out, "--batch-size", "2"))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy"))
    assert files == ["part0/0.npy", "part0/1.npy", "part0/2.npy", "part1/0.npy"]
    first = np.load(out / "part0" / "0.npy")
    assert first.dtype == np.float32 and first.shape == (1, 4, WIDTH)          # a red dog </s>
    np.testing.assert_allclose(first, _alone(tiny, "A Red DOG"), atol=1e-5)   # cleaned: lower case
    long = np.load(out / "part0" / "2.npy")                                   # 9 tokens, truncated to 6
    assert long.shape == (1, MAX_LEN, WIDTH)
    np.testing.assert_allclose(long, _alone(tiny, RECORDS["part0"][2][0]), atol=1e-5)
    np.testing.assert_allclose(np.load(out / "part1" / "0.npy"), _alone(tiny, "a blue cat"), atol=1e-5)
    # what training reads: the real rows at the end of 120 (here MAX_LEN) rows, zeros before
    cond = left_pad(torch.from_numpy(first), torch.ones(1, 4, dtype=torch.bool), tokens=MAX_LEN)
    assert cond.mask.tolist() == [[False, False, True, True, True, True]]
    assert not cond.emb[0, :2].any() and torch.equal(cond.emb[0, 2:], torch.from_numpy(first[0]))


def test_caption_key_truncation_model_folder_and_resume(tiny, tmp_path):
    out = tmp_path / "feats"
    flags = _flags(tiny, out, "--caption-key", "llava", "--trunc-caption", "--data-end", "0")
    flags[flags.index("--t5-model-path") + 1] = str(tiny["model"].parent)   # a folder holding flan-t5-xl/
    xt5.main(flags)
    assert sorted(p.name for p in out.rglob("*.npy")) == ["0.npy", "1.npy", "2.npy"]   # part0.jsonl only
    np.testing.assert_allclose(np.load(out / "part0" / "0.npy"), _alone(tiny, "llava caption"), atol=1e-5)
    key_blip = _flags(tiny, tmp_path / "blip", "--trunc-caption", "--data-end", "0")
    xt5.main(key_blip)
    np.testing.assert_allclose(np.load(tmp_path / "blip" / "part0" / "1.npy"), _alone(tiny, "a cat"), atol=1e-5)
    kept = (out / "part0" / "0.npy").stat().st_mtime_ns
    (out / "part0" / "2.npy").unlink()
    xt5.main(flags)
    assert (out / "part0" / "2.npy").is_file() and (out / "part0" / "0.npy").stat().st_mtime_ns == kept


def test_two_processes_share_the_work(tiny, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    xt5.main(_flags(tiny, one))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
           "LlamaGen/extract_t5_features.py", *_flags(tiny, two)]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in one.rglob("*.npy"):
        np.testing.assert_allclose(np.load(two / f.relative_to(one)), np.load(f), atol=1e-6)
    assert len(list(two.rglob("*.npy"))) == 4


def test_bad_inputs_and_the_offline_error_are_one_line(tiny, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jsonl").write_text(json.dumps({"image_path": "a.png"}) + "\n")
    with pytest.raises(SystemExit, match="x.jsonl line 1 has no caption for --caption-key blip"):
        xt5.main(["--data-path", str(bad), "--t5-path", str(tmp_path / "o"), "--t5-model-path", str(tiny["model"])])
    with pytest.raises(SystemExit, match="--t5-model-path .*no T5 model"):
        xt5.main(["--data-path", str(tiny["listing"]), "--t5-path", str(tmp_path / "o"), "--t5-model-path",
                  str(tmp_path)])
    env = {**ENV, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "LlamaGen/extract_t5_features.py", "--data-path", str(tiny["listing"]),
                           "--t5-path", str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
    assert "google/flan-t5-xl" in lines[0] and "hf download" in lines[0] and "--t5-model-path" in lines[0]
    assert not (tmp_path / "o").exists()                                      # nothing written before the error


@pytest.mark.parametrize("raw,clean", [
    ("A Dog sitting on a couch.", "a dog sitting on a couch."),
    ("Visit https://www.example.com/foo for FREE shipping!!", "visit for !!"),
    ("<b>bold</b> text &amp; more", "bold text more"),
    ("this-is-my-cute-cat_photo", "this is my cute cat photo"),
    ("@user hello #123 photo 1234567 image.jpg", "hello photo"),
    ("size 1920x1080 jc6640 poster", "size poster"),
    ("“Quoted” ‘single’", "quoted\" 'single"),
    ("Page 12 of the book: click for details", "of the book"),
    ("中文 text", "text"),
    ("x%20y+z", "x y z"),
    ("a,b.c", "a, b. c"),
])
def test_caption_cleaning_gives_the_original_texts(raw, clean):
    """Outputs recorded from the original T5 embedder's text preprocessing (cleaning applied twice)."""
    assert preprocess(raw) == clean
