"""Pre-extract T5 caption features for LlamaGen's text-to-image GPT (the original's language/extract_t5_feature.py).

    torchrun --nproc_per_node=8 LlamaGen/extract_t5_features.py --data-path /path/to/jsonl_folder \
        --t5-path /path/to/flan_t5_xl_features --caption-key blip

Reads LlamaGen's T2I listing: each line of the ``.jsonl`` files in --data-path is a JSON record whose "text" is a
list of captions (--caption-key blip / llava / llava_first picks entry 0 / 1 / 2) or one string. Writes
``<t5-path>/<jsonl stem>/<line index>.npy``, float32 (1, n, D): the encoder's last hidden states at the n real
tokens only (end-of-sequence token included, at most --t5-feature-max-len), as the original did; the training
data pads them on the LEFT (``LlamaGen.captions.left_pad``). Captions are cleaned as the original cleaned them
(``LlamaGen.caption_text.preprocess``), then tokenised: padded to --t5-feature-max-len, truncated, special tokens
added.

The encoder is FLAN-T5-XL by name through the Hugging Face hub (google/flan-t5-xl; --t5-model-type picks another)
or a local folder (--t5-model-path: the model folder itself, or one holding ``<t5-model-type>/`` as the original's
./pretrained_models/t5-ckpt). Processes take every world-th record; finished files are skipped, so a rerun resumes.
Runs as one process (CPU or GPU) too.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):   # run as a script: make the repository root importable instead of LlamaGen/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch

from cca import dist as cdist
from cca.checkpoint import check_writable_dir
from LlamaGen.caption_text import preprocess
from LlamaGen.captions import listed_records, record_file
from LlamaGen.extract_codes_c2i import save_npy
from cca.cli import exits_on_errors, finish_process, start_process
from cca.errors import UsageError

CAPTION_KEY = {"blip": 0, "llava": 1, "llava_first": 2}
HUB_REPOS = {"flan-t5-xl": "google/flan-t5-xl", "t5-v1_1-xl": "google/t5-v1_1-xl",
             "t5-v1_1-xxl": "google/t5-v1_1-xxl"}
PRECISION = {"none": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def caption_of(record: dict, key: str, trunc: bool, where: str) -> str:
    """The caption a record holds under --caption-key (up to its first '.' with --trunc-caption)."""
    text = record.get("text") if isinstance(record, dict) else None
    if isinstance(text, list) and CAPTION_KEY[key] < len(text) and isinstance(text[CAPTION_KEY[key]], str):
        text = text[CAPTION_KEY[key]]
    if not isinstance(text, str):
        raise UsageError(f"--data-path: {where} has no caption for --caption-key {key} (expected \"text\": a string "
                         f"or a list with a string at index {CAPTION_KEY[key]})")
    return text.split(".")[0] if trunc else text


def t5_folder(model_path: str | None, model_type: str) -> Path:
    """The local T5 folder: --t5-model-path (or its <t5-model-type>/ sub-folder), else the hub snapshot."""
    if model_path is not None:
        for folder in (Path(model_path) / model_type, Path(model_path)):
            if (folder / "config.json").is_file():
                return folder
        raise UsageError(f"--t5-model-path {model_path}: no T5 model there (expected config.json in it or in "
                         f"{model_type}/)")
    repo = HUB_REPOS[model_type]
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "spiece.model"]))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"--t5-model-type {model_type}: could not fetch {repo} from the Hugging Face hub "
                         f"({type(e).__name__}: {first[:160]}); download it where you are online with "
                         f"`hf download {repo} --local-dir DIR` and pass --t5-model-path DIR") from None


def load_t5(folder: Path, dtype: torch.dtype, device: torch.device):
    """(tokenizer, encoder in eval mode) from a local folder, through transformers."""
    try:
        from transformers import AutoTokenizer, T5EncoderModel
    except ImportError:
        raise UsageError("extract_t5_features.py needs transformers: pip install -r requirements.txt") from None
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    encoder = T5EncoderModel.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    return tokenizer, encoder


@torch.no_grad()
def t5_features(tokenizer, encoder, captions: list[str], max_len: int) -> list[np.ndarray]:
    """Cleaned captions -> per caption float32 (1, n, D): the hidden states of its n real tokens."""
    device = next(encoder.parameters()).device
    batch = tokenizer([preprocess(c) for c in captions], max_length=max_len, padding="max_length",
                      truncation=True, add_special_tokens=True, return_tensors="pt")
    mask = batch["attention_mask"].to(device)                                  # (B, S) 0/1, right-padded
    emb = encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state   # (B, S, D)
    lengths = mask.sum(dim=1).tolist()
    return [emb[i:i + 1, :n].float().cpu().numpy() for i, n in enumerate(lengths)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract_t5_features.py", allow_abbrev=False,
                                description=__doc__.splitlines()[0])
    p.add_argument("--data-path", required=True, help="folder of .jsonl caption listings")
    p.add_argument("--t5-path", required=True, help="output folder of the features")
    p.add_argument("--data-start", type=int, default=0, help="first sorted entry of --data-path to read")
    p.add_argument("--data-end", type=int, default=None, help="last sorted entry to read (inclusive; default all)")
    p.add_argument("--caption-key", choices=list(CAPTION_KEY), default="blip")
    p.add_argument("--trunc-caption", action="store_true", help="keep each caption up to its first '.'")
    p.add_argument("--t5-model-path", default=None, help="local T5 folder (default: the hub, by --t5-model-type)")
    p.add_argument("--t5-model-type", choices=list(HUB_REPOS), default="flan-t5-xl")
    p.add_argument("--t5-feature-max-len", type=int, default=120, help="caption tokens (padding / truncation)")
    p.add_argument("--precision", choices=list(PRECISION), default="bf16", help="encoder precision")
    p.add_argument("--batch-size", type=int, default=1, help="captions per encoder call (the original: 1)")
    p.add_argument("--global-seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0, help="accepted for compatibility (unused)")
    return p


@exits_on_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.t5_feature_max_len < 1 or args.batch_size < 1:
        raise UsageError("--t5-feature-max-len and --batch-size must be >= 1")
    try:
        records = listed_records(args.data_path, args.data_start, args.data_end)
    except ValueError as e:
        raise UsageError(str(e)) from None
    captions = [caption_of(r, args.caption_key, args.trunc_caption, f"{stem}.jsonl line {i + 1}")
                for r, stem, i in records]
    folder = t5_folder(args.t5_model_path, args.t5_model_type)
    dist = start_process()
    torch.manual_seed(args.global_seed * dist.world_size + dist.rank)
    if dist.is_main:
        check_writable_dir(args.t5_path, "--t5-path")
    cdist.barrier()
    outputs = [record_file(args.t5_path, stem, i) for _, stem, i in records]
    mine = [j for j in range(dist.rank, len(records), dist.world_size) if not outputs[j].is_file()]
    tokenizer, encoder = load_t5(folder, PRECISION[args.precision], dist.device)
    from tqdm import tqdm
    for start in tqdm(range(0, len(mine), args.batch_size), desc="T5 features", disable=not dist.is_main):
        chunk = mine[start:start + args.batch_size]
        for j, feats in zip(chunk, t5_features(tokenizer, encoder, [captions[j] for j in chunk],
                                               args.t5_feature_max_len)):
            outputs[j].parent.mkdir(parents=True, exist_ok=True)
            save_npy(outputs[j], feats)
    finish_process(dist, f"T5 features of {len(records)} captions in {args.t5_path}")


if __name__ == "__main__":
    main()
