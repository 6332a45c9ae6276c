"""Building LlamaGen models from CLI-style settings and loading user checkpoints with one-line diagnostics.

Accepted GPT files: ``{'model': sd}`` (B / L / XL releases, the T2I releases, our fine-tunes; ``'module'`` and
``'state_dict'`` too), raw state dicts (XXL / 3B FSDP releases), ``.safetensors``; an extra ``freqs_cis`` entry is
ignored. VQ files (c2i and t2i tokenizers alike): ``{'model': sd}`` or raw.
"""
from __future__ import annotations

import re
from typing import Optional

import torch

from cca.checkpoint import CheckpointError, load_state_dict_file, load_strict
from LlamaGen.gpt import GPT_SIZES, ModelArgs, Transformer
from LlamaGen.vq_model import VQ_models, VQModel, VQModelArgs
from cca.errors import UsageError

_VQ_CH_MULT = {"VQ-16": [1, 1, 2, 2, 4], "VQ-8": [1, 2, 2, 4]}


# ----------------------------------------------------------------------------------------------------- GPT
def describe_gpt_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """Sizes readable from a GPT state dict: n_layer, dim, vocab_size, the registry name, and the condition:
    ``type`` 'c2i' with its class rows, or 't2i' with its caption width and null-caption rows."""
    if "tok_embeddings.weight" not in sd:
        return {}
    if "cls_embedding.embedding_table.weight" in sd:
        info = {"type": "c2i", "class_rows": int(sd["cls_embedding.embedding_table.weight"].shape[0])}
    elif "cls_embedding.cap_proj.fc1.weight" in sd:
        null = sd.get("cls_embedding.uncond_embedding")
        info = {"type": "t2i", "caption_dim": int(sd["cls_embedding.cap_proj.fc1.weight"].shape[1]),
                "caption_tokens": None if null is None else int(null.shape[0])}
    else:
        return {}
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))}
    vocab, dim = sd["tok_embeddings.weight"].shape
    info.update(n_layer=len(layers), dim=int(dim), vocab_size=int(vocab))
    info["name"] = next((n for n, (L, _, d) in GPT_SIZES.items() if (L, d) == (len(layers), dim)), None)
    return info


def gpt_hint(model: Transformer) -> callable:
    def hint(sd: dict[str, torch.Tensor]) -> Optional[str]:
        info = describe_gpt_state_dict(sd)
        if not info:
            return "this is not a LlamaGen GPT checkpoint (no tok_embeddings / cls_embedding weights)"
        size = f"looks like {info['name']}; pass --gpt-model {info['name']}" if info["name"] else \
            f"{info['n_layer']} layers of width {info['dim']} (no registered size)"
        vocab = f"vocab {info['vocab_size']} (--vocab-size / --codebook-size)"
        if info["type"] != model.model_type:
            kind = "text-to-image" if info["type"] == "t2i" else "class-conditional"
            return f"a {kind} GPT: pass --gpt-type {info['type']}; {size}; {vocab}"
        if info["type"] == "t2i":
            return (f"{size}; {vocab}; {info['caption_dim']}-d caption features, {info['caption_tokens']} caption "
                    f"tokens (--cls-token-num)")
        classes = info["class_rows"] - 1          # the last row is the null (unconditional) class
        fix = f"; pass --num-classes {classes}" if classes != model.num_classes else ""
        return f"{size}; {vocab}, {classes} classes{fix}"
    return hint


def build_gpt(gpt_model: str, *, vocab_size: int, image_size: int, downsample_size: int, num_classes: int,
              device: torch.device | str = "cpu", dropout_p: float = 0.0, token_dropout_p: float = 0.0,
              drop_path_rate: float = 0.0, class_dropout_prob: float = 0.0, gpt_type: str = "c2i",
              cls_token_num: Optional[int] = None, caption_dim: int = 2048) -> Transformer:
    """A GPT of a registered size, class-conditional or (``gpt_type='t2i'``) text-conditional with
    ``cls_token_num`` caption tokens (default 120) of width ``caption_dim``; built on ``device`` (use 'meta'
    before a load with assign). ``class_dropout_prob``: label / caption dropout in training mode (off unless asked;
    the CCA fine-tunes use 1e-5 with DDP, 1e-6 with FSDP, as the original).
    A wrong ``gpt_type`` / ``cls_token_num`` raises the model's ValueError."""
    if gpt_model not in GPT_SIZES:
        raise UsageError(f"--gpt-model: unknown size {gpt_model!r}; choose from {', '.join(GPT_SIZES)}")
    if image_size % downsample_size:
        raise UsageError(f"--image-size {image_size} is not a multiple of --downsample-size {downsample_size}")
    tokens = cls_token_num if cls_token_num is not None else (1 if gpt_type == "c2i" else 120)
    n_layer, n_head, dim = GPT_SIZES[gpt_model]
    args = ModelArgs(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=vocab_size, num_classes=num_classes,
                     block_size=(image_size // downsample_size) ** 2, cls_token_num=tokens, model_type=gpt_type,
                     caption_dim=caption_dim, class_dropout_prob=class_dropout_prob, token_dropout_p=token_dropout_p,
                     resid_dropout_p=dropout_p, ffn_dropout_p=dropout_p, attn_dropout_p=0.0,
                     drop_path_rate=drop_path_rate)
    with torch.device(device):
        return Transformer(args)


def load_gpt_weights(model: Transformer, path: str, flag: str = "--gpt-ckpt") -> Transformer:
    """Strict load of a GPT checkpoint file into ``model`` (tensors assigned when the model is on 'meta')."""
    try:
        sd = load_state_dict_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"{flag}: {e}") from None
    on_meta = model.tok_embeddings.weight.is_meta
    load_strict(model, sd, source=f"{flag} {path}", hint=gpt_hint(model), assign=on_meta)
    return model


# ----------------------------------------------------------------------------------------------------- VQ
def vq_args_from_state_dict(sd: dict[str, torch.Tensor], source: str) -> VQModelArgs:
    """Architecture of a VQ checkpoint read from its shapes (ch, ch_mult, res blocks, z channels, codebook)."""
    need = ("encoder.conv_in.weight", "encoder.conv_out.weight", "quantize.embedding.weight")
    if any(k not in sd for k in need):
        raise UsageError(f"{source}: not a LlamaGen VQ tokenizer checkpoint (no {', '.join(need)})")
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))})
    enc_mult = [sd[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch for i in levels]
    dec_levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"decoder\.conv_blocks\.(\d+)\.", k))})
    dec_mult = [sd[f"decoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch for i in reversed(dec_levels)]
    n_res = len({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k))})
    n_e, e_dim = sd["quantize.embedding.weight"].shape
    return VQModelArgs(codebook_size=int(n_e), codebook_embed_dim=int(e_dim),
                       codebook_show_usage="quantize.codebook_used" in sd, encoder_ch_mult=enc_mult,
                       decoder_ch_mult=dec_mult, z_channels=int(sd["encoder.conv_out.weight"].shape[0]), ch=int(ch),
                       num_res_blocks=n_res)


def load_vq(path: str, vq_model: str = "VQ-16", codebook_size: int = 16384, codebook_embed_dim: int = 8,
            device: torch.device | str = "cpu", flag: str = "--vq-ckpt") -> VQModel:
    """The tokenizer in ``path``, checked against the CLI's --vq-model / --codebook-size / --codebook-embed-dim.

    Widths and block counts come from the file (the released VQ-16 has ch 128, 2 blocks, z 256)."""
    if vq_model not in VQ_models:
        raise UsageError(f"--vq-model: unknown tokenizer {vq_model!r}; choose from {', '.join(VQ_models)}")
    try:
        sd = load_state_dict_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"{flag}: {e}") from None
    args = vq_args_from_state_dict(sd, f"{flag} {path}")
    if (args.codebook_size, args.codebook_embed_dim) != (codebook_size, codebook_embed_dim):
        raise UsageError(f"{flag} {path}: codebook is {args.codebook_size} x {args.codebook_embed_dim}, flags say "
                         f"{codebook_size} x {codebook_embed_dim}; pass --codebook-size {args.codebook_size} "
                         f"--codebook-embed-dim {args.codebook_embed_dim}")
    if len(args.encoder_ch_mult) != len(_VQ_CH_MULT[vq_model]):
        other = next((n for n, m in _VQ_CH_MULT.items() if len(m) == len(args.encoder_ch_mult)), None)
        raise UsageError(f"{flag} {path}: downsamples by {2 ** (len(args.encoder_ch_mult) - 1)}, not like "
                         f"{vq_model}" + (f"; pass --vq-model {other}" if other else ""))
    with torch.device("meta"):
        model = VQModel(args)
    load_strict(model, sd, source=f"{flag} {path}", assign=True)
    return model.to(device).eval()
