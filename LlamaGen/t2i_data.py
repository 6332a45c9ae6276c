"""Text-to-image CCA data: VQ codes and T5 caption features of LlamaGen's T2I listing, read from disk.

    <data-path>/<stem>.jsonl               one JSON record per line (what the two extraction scripts read)
    <code-path>/<stem>/<line>.npy          int64 (1, h*w) or (1, n_aug, h*w)   LlamaGen/extract_codes_c2i.py
    <t5-feat-path>/<stem>/<line>.npy       float32 (1, n, D): the n real tokens  LlamaGen/extract_t5_features.py

Item i -> (codes (h*w,) int64, caption features (T, D) float32, caption mask (T,) bool): the features LEFT-padded
to the model's T = --cls-token-num rows (the first T kept when n > T), as upstream LlamaGen's T2I dataset pads them
(``LlamaGen.captions.left_pad``). Records whose codes or features are missing are left out (upstream trained on a
zero caption for them); the CLI says how many.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from cca.errors import UsageError
from LlamaGen.captions import left_pad, listed_records, record_file


class CaptionCodeDataset(Dataset):
    def __init__(self, data_path: str | os.PathLike, code_path: str | os.PathLike,
                 t5_feat_path: str | os.PathLike, *, tokens: int, seq_len: int, data_start: int = 0,
                 data_end: Optional[int] = None):
        """One-line UsageError (naming the flag) on a missing folder, no usable record, or files of the wrong
        shape or type."""
        for flag, folder in (("--code-path", code_path), ("--t5-feat-path", t5_feat_path)):
            if not Path(folder).is_dir():
                raise UsageError(f"{flag} {folder}: folder not found")
        records = listed_records(data_path, data_start, data_end, flag="--data-path")
        pairs = [(record_file(code_path, stem, i), record_file(t5_feat_path, stem, i)) for _, stem, i in records]
        self.files = [(c, f) for c, f in pairs if c.is_file() and f.is_file()]
        self.listed, self.tokens, self.seq_len = len(records), tokens, seq_len
        if not self.files:
            raise UsageError(f"--code-path {code_path} / --t5-feat-path {t5_feat_path}: none of the {len(records)} "
                             f"listed records has both <stem>/<line>.npy files (run LlamaGen/extract_codes_c2i.py and "
                             f"LlamaGen/extract_t5_features.py on --data-path {data_path} first)")
        codes = self._codes(0)
        if codes.shape[-1] != seq_len:
            raise UsageError(f"--code-path {code_path}: {self.files[0][0].parent.name}/{self.files[0][0].name} has "
                             f"{codes.shape[-1]} tokens per image; --image-size / --downsample-size need {seq_len}")
        self.caption_dim = int(self._features(0).shape[-1])

    def _load(self, path: Path, kind: str) -> np.ndarray:
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UsageError(f"{path.parent.name}/{path.name} is not a readable .npy array ({type(e).__name__})"
                             ) from None
        if arr.dtype.kind not in kind or arr.ndim < 2 or arr.size == 0:
            raise UsageError(f"{path.parent.name}/{path.name}: {arr.dtype} {arr.shape} is not "
                             f"{'integer VQ codes (1, h*w)' if kind == 'iu' else 'T5 features (1, n, D)'}")
        return arr

    def _codes(self, idx: int) -> np.ndarray:
        arr = self._load(self.files[idx][0], "iu")
        return arr.reshape(-1, arr.shape[-1])                                    # (n_aug, h*w)

    def _features(self, idx: int) -> np.ndarray:
        arr = self._load(self.files[idx][1], "f")
        return arr.reshape(-1, arr.shape[-1])                                    # (n, D)

    def check_vocab(self, vocab_size: int, first: int = 8) -> None:
        """The first few code files must hold codes inside the tokenizer's vocabulary."""
        for idx in range(min(first, len(self))):
            codes = self._codes(idx)
            if codes.min() < 0 or codes.max() >= vocab_size:
                path = self.files[idx][0]
                raise UsageError(f"--code-path: {path.parent.name}/{path.name} has code {int(codes.max())} outside "
                                 f"[0, {vocab_size}); pass the tokenizer's --vocab-size")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int):
        codes = self._codes(idx)
        row = int(torch.randint(codes.shape[0], ())) if codes.shape[0] > 1 else 0   # one stored augmentation
        feats = torch.from_numpy(self._features(idx).astype(np.float32))[None]       # (1, n, D)
        caption = left_pad(feats, torch.ones(feats.shape[:2], dtype=torch.bool), tokens=self.tokens)
        return torch.from_numpy(codes[row].astype(np.int64)), caption.emb[0], caption.mask[0]


def add_t2i_flags(group: argparse._ArgumentGroup) -> None:
    """The text-to-image flags of the fine-tune scripts, named as upstream LlamaGen's train_t2i.py names them."""
    group.add_argument("--gpt-type", choices=["c2i", "t2i"], default="c2i",
                       help="t2i: captions as conditions (--data-path, --t5-feat-path; codes under --code-path)")
    group.add_argument("--data-path", default=None, help="t2i: folder of the .jsonl caption listings")
    group.add_argument("--t5-feat-path", default=None,
                       help="t2i: T5 caption features <stem>/<line>.npy (LlamaGen/extract_t5_features.py --t5-path)")
    group.add_argument("--data-start", type=int, default=0, help="t2i: first sorted entry of --data-path to read")
    group.add_argument("--data-end", type=int, default=None, help="t2i: last sorted entry (inclusive; default all)")


def check_t2i_args(args: argparse.Namespace) -> None:
    """One-line errors for the text-to-image flags; fills in --cls-token-num (1 c2i, 120 t2i, as released)."""
    if args.gpt_type == "c2i":
        if args.cls_token_num not in (None, 1):
            raise UsageError(f"--cls-token-num {args.cls_token_num}: class-conditional models use one class token")
        args.cls_token_num = 1
        return
    missing = [flag for flag, value in (("--data-path", args.data_path), ("--t5-feat-path", args.t5_feat_path))
               if value is None]
    if missing:
        raise UsageError(f"--gpt-type t2i needs {' and '.join(missing)} (the caption listing and its T5 features)")
    args.cls_token_num = 120 if args.cls_token_num is None else args.cls_token_num
    if args.cls_token_num < 1:
        raise UsageError(f"--cls-token-num must be >= 1, got {args.cls_token_num}")


def open_t2i_data(args: argparse.Namespace) -> CaptionCodeDataset:
    """The T2I data of the fine-tune's flags, counted, its first record read (codes' length, caption width)."""
    return CaptionCodeDataset(args.data_path, args.code_path, args.t5_feat_path, tokens=args.cls_token_num,
                              seq_len=(args.image_size // args.downsample_size) ** 2,
                              data_start=args.data_start, data_end=args.data_end)


def t2i_dataset(args: argparse.Namespace) -> CaptionCodeDataset:
    """The fine-tune's T2I data from its flags; bad input raises a one-line UsageError."""
    data = open_t2i_data(args)
    data.check_vocab(args.vocab_size)
    if len(data) < data.listed:
        print(f"--data-path: {data.listed - len(data)} of {data.listed} listed records have no codes or no T5 "
              f"features; they are left out", file=sys.stderr)
    return data
