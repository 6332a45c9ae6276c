"""Recompute the LlamaGen parity fixtures (../shared/fixtures/llamagen_vq, llamagen_gpt,
../shared/fixtures_t2i/llamagen_t2i_gpt) with this package.

``<kind>(fixture_dir, config) -> {name: tensor}`` for every tensor of the fixture's expected.safetensors.
Sizes and settings come from the fixture's config.json and weights, never from the shipped folders' names, so
fixtures of other sizes work too. Driven by ``python -m cca.parity FIXTURE_DIR --out OUT.safetensors``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from cca.checkpoint import load_strict
from LlamaGen.captions import Caption, caption_attention_mask
from LlamaGen.generate import generate
from LlamaGen.gpt import ModelArgs, Transformer
from LlamaGen.vq_model import VQModel, VQModelArgs


def cfg_tag(cfg: float) -> str:
    """Fixture naming: 1.0 -> 'cfg1', 1.5 -> 'cfg1p5'."""
    return "cfg" + format(cfg, "g").replace(".", "p")


def vq_args_from_config(config: dict) -> VQModelArgs:
    args = dict(config["constructor_args"]["ModelArgs"])
    override = config.get("encoder_decoder_override") or {}
    enc, dec = override.get("encoder_args", {}), override.get("decoder_args", {})
    for key in ("ch", "num_res_blocks", "norm_type"):
        if key in enc:
            if key in dec and dec[key] != enc[key]:
                raise ValueError(f"encoder and decoder disagree on {key}: {enc[key]} vs {dec[key]}")
            args[key] = enc[key]
    if "ch_mult" in enc:
        args["encoder_ch_mult"] = list(enc["ch_mult"])
    if "ch_mult" in dec:
        args["decoder_ch_mult"] = list(dec["ch_mult"])
    return VQModelArgs.from_dict(args)


def llamagen_vq(fixture_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    fixture_dir = Path(fixture_dir)
    model = VQModel(vq_args_from_config(config))
    load_strict(model, load_file(str(fixture_dir / "weights.safetensors")), source=str(fixture_dir))
    model.eval()
    images = load_file(str(fixture_dir / "inputs.safetensors"))["images"]     # (B, 3, H, W)
    with torch.no_grad():
        pre = model.pre_quant(images)                                           # (B, D, h, w)
        quant, _, (_, _, codes) = model.encode(images)
        B, D, h, w = pre.shape
        codes = codes.reshape(B, h * w)                                         # (B, h*w) row-major
        decoded = model.decode_code(codes, [B, D, h, w], channel_first=True)   # (B, 3, H, W)
    return {"pre_quant_latent": pre, "quantized_latent": quant, "code_indices": codes,
            "decoded_from_codes": decoded}


def gpt_from_fixture(fixture_dir: Path, config: dict) -> Transformer:
    """Build the fixture's GPT (c2i: null class row iff its weights have it) and load the weights strictly."""
    weights = load_file(str(Path(fixture_dir) / "weights.safetensors"))
    args = dict(config["constructor_args"]["ModelArgs"])
    if args.get("model_type", "c2i") == "c2i":
        rows = weights["cls_embedding.embedding_table.weight"].shape[0]
        args["null_class_row"] = rows > args["num_classes"]
        if not args["null_class_row"]:
            args["class_dropout_prob"] = 0.0
    model = Transformer(ModelArgs.from_dict(args))
    load_strict(model, weights, source=str(fixture_dir))
    return model.eval()   # eval only disables dropout; both paths are the same in either mode


def generation_outputs(model: Transformer, cond: torch.Tensor | Caption, gen: dict) -> dict[str, torch.Tensor]:
    """Greedy (or seeded) generation at every cfg scale of ``config.calls.generation``, through ``generate``:
    the tokens and the logits handed to the sampler at each step, per cfg tag."""
    out: dict[str, torch.Tensor] = {}
    for cfg in gen["cfg_scale"]:
        steps: list[torch.Tensor] = []
        tokens_out = generate(model, cond, int(gen["max_new_tokens"]), cfg_scale=float(cfg),
                              cfg_interval=int(gen.get("cfg_interval", -1)),
                              temperature=float(gen.get("temperature", 1.0)), top_k=int(gen.get("top_k", 0)),
                              top_p=float(gen.get("top_p", 1.0)), sample_logits=bool(gen.get("sample_logits", True)),
                              logits_hook=lambda step, lg, steps=steps: steps.append(lg.float().clone()))
        tag = cfg_tag(float(cfg))
        out[f"generated_tokens_{tag}"] = tokens_out.long()
        out[f"generation_step_logits_{tag}"] = torch.stack(steps, dim=1)       # (B, steps, V)
    return out


def llamagen_gpt(fixture_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    fixture_dir = Path(fixture_dir)
    model = gpt_from_fixture(fixture_dir, config)
    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    tokens, labels = inputs["tokens"], inputs["labels"]                        # (B, L), (B,)
    with torch.no_grad():
        logits, loss = model(tokens[:, :-1], labels, targets=tokens)           # (B, L, V), ()
        out = {"teacher_forced_logits": logits, "teacher_forced_ce_loss": loss.reshape(1)}
        out.update(generation_outputs(model, inputs["generation_labels"], config["calls"]["generation"]))
    return out


def llamagen_t2i_gpt(fixture_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    """Text-to-image GPT: teacher forcing on left-padded captions (with and without the recorded caption dropout,
    i.e. rows replaced by the null caption under their own masks), then guided generation."""
    fixture_dir = Path(fixture_dir)
    model = gpt_from_fixture(fixture_dir, config)
    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    tokens, valid = inputs["tokens"], inputs["train_valid"]                    # (B, L), (B,)
    captions = Caption(inputs["train_caption_embs"], inputs["train_emb_masks"])
    recorded = inputs["train_attn_mask"]                                        # (B, 1, T + L, T + L)
    if not torch.equal(caption_attention_mask(captions.mask, tokens.shape[1]), recorded):
        raise ValueError(f"{fixture_dir}: train_attn_mask is not the mask its train_emb_masks imply")
    dropped = captions.where(inputs["caption_drop_rows"], model.cls_embedding.null_like(captions))
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for suffix, cond in (("", captions), ("_caption_dropout", dropped)):
            logits, loss = model(tokens[:, :-1], cond, targets=tokens, valid=valid)   # (B, L, V), ()
            out[f"teacher_forced_logits{suffix}"] = logits
            out[f"teacher_forced_ce_loss{suffix}"] = loss.reshape(1)
        prompts = Caption(inputs["gen_caption_embs"], inputs["gen_emb_masks"])
        out.update(generation_outputs(model, prompts, config["calls"]["generation"]))
    return out

