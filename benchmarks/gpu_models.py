"""Models at the released sizes (random weights) and the measurements benchmarks/gpu_check.py makes with them.

GPU_CHECK_SMOKE=1 swaps every model for a tiny one on the CPU, so the whole script can be run before a GPU is lent.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import os
import time

import torch

SMOKE = os.environ.get("GPU_CHECK_SMOKE") == "1"
DEV = torch.device("cpu" if SMOKE else "cuda")
NUM_CLASSES = 1000
VAR_TOP = dict(top_k=900, top_p=0.96)               # the released VAR sampling setting


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV.type == "cuda" else float("nan")


def free_memory() -> None:
    gc.collect()
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def timed(fn, repeats: int = 2, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def autocast(dtype=torch.bfloat16):
    return torch.autocast(DEV.type, dtype=dtype) if DEV.type == "cuda" and dtype else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ VAR
def var_model(eval_mode: bool = False):
    from VAR import build_vae_var
    torch.manual_seed(0)
    if SMOKE:
        _, var = build_vae_var(device=DEV, depth=2, cond_drop_rate=0.0, patch_nums=(1, 2, 4), V=64, Cvae=8, ch=32,
                               vae_ch_mult=(1, 2), vae_num_res_blocks=1)
    else:
        _, var = build_vae_var(device=DEV, depth=16, cond_drop_rate=0.0)
    with torch.no_grad():   # AdaLN gammas and head near zero at init: give every block and class a say
        for name, p in var.named_parameters():
            if "ada_lin" in name or name.startswith("head."):
                p.normal_(0.0, 0.02)
    return var.eval() if eval_mode else var.train()


def var_tokens(var, labels: torch.Tensor, cfg: float, cuda_graph: bool | None = None, **kwargs):
    from VAR.sampler import generate
    return generate(var, labels.shape[0], labels, cfg=cfg, cuda_graph=cuda_graph, **{**VAR_TOP, **kwargs})


def var_images(var, B: int, cfg: float):
    """Sampling of B images (tokens and VQVAE decode) under bf16 autocast, as the sampler runs on GPUs."""
    labels = torch.randint(NUM_CLASSES, (B,), device=DEV)

    @torch.no_grad()
    def run():
        with autocast():
            return var.vae_proxy[0].fhat_to_img(var_tokens(var, labels, cfg))
    return run


def var_graph_vs_eager_tokens(var, labels: torch.Tensor, cfg: float, dtype) -> dict:
    from VAR.sampler import SampleTrace
    traces = {}
    with autocast(dtype):
        for graph in (False, True):
            traces[graph] = SampleTrace()
            var_tokens(var, labels, cfg, cuda_graph=graph and DEV.type == "cuda", top_k=1, top_p=0.0, g_seed=0,
                       trace=traces[graph])
    eager, graphed = traces[False], traces[True]
    differ = [si for si, (a, b) in enumerate(zip(eager.tokens, graphed.tokens)) if not torch.equal(a, b)]
    logit_diff = max((a - b).abs().max().item() for a, b in zip(eager.guided_logits, graphed.guided_logits))
    return {"tokens_equal": not differ, "first_differing_scale": differ[0] if differ else None,
            "max_abs_logit_diff": logit_diff}


def var_batch(B: int):
    from VAR.adapter import VARAdapter
    var = var_model()
    vae = var.vae_proxy[0]
    res = vae.image_size
    images = torch.rand(B, 3, res, res, device=DEV) * 2 - 1
    labels = torch.randint(NUM_CLASSES, (B,), device=DEV)
    return var, VARAdapter(vae, NUM_CLASSES), (images, labels)


# ------------------------------------------------------------------------------------------------ LlamaGen
def gpt(dtype=torch.bfloat16):
    from LlamaGen import GPT_models, ModelArgs, Transformer
    torch.manual_seed(0)
    with DEV:
        if SMOKE:
            model = Transformer(ModelArgs(dim=64, n_layer=2, n_head=4, vocab_size=16384, block_size=16,
                                          num_classes=NUM_CLASSES))
        else:
            model = GPT_models["GPT-B"](vocab_size=16384, block_size=576, num_classes=NUM_CLASSES)
    with torch.no_grad():   # the zero-initialised head would make every logit equal
        for p in model.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
    return model.to(dtype) if dtype else model


def llamagen_models():
    from LlamaGen import VQ_models
    with DEV:
        vq = VQ_models["VQ-16"](ch=32 if SMOKE else 128).eval()
    return gpt().eval(), vq


def llamagen_images(model, vq, B: int, cfg_scale: float):
    """Generation of B images: bf16 GPT (CUDA-graph decode on GPUs), fp32 VQ decode."""
    from LlamaGen import generate
    labels = torch.randint(NUM_CLASSES, (B,), device=DEV)
    grid = model.config.grid_size

    @torch.no_grad()
    def run():
        codes = generate(model, labels, grid * grid, cfg_scale=cfg_scale)
        return vq.decode_code(codes, [B, vq.config.codebook_embed_dim, grid, grid])
    return run


def llamagen_graph_vs_eager(n: int = 64) -> dict:
    """Greedy (top-k 1) decoding with the CUDA graph and eagerly, same seed (top-k 1 keeps exactly tied top logits
    and draws among them): tokens equal, and the largest step-logit difference up to the first differing step."""
    from LlamaGen import generate
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = gpt(dtype).eval()
        n_tok = min(n, model.block_size)
        labels = torch.arange(8, device=DEV)
        for scale in (1.0, 3.0):
            logs = {False: [], True: []}
            toks = {g: generate(model, labels, n_tok, cfg_scale=scale, top_k=1, cuda_graph=g and DEV.type == "cuda",
                                generator=torch.Generator(DEV).manual_seed(0),   # tied top logits: same draw
                                logits_hook=lambda i, lg, g=g: logs[g].append(lg.clone())) for g in (False, True)}
            first = next((i for i in range(n_tok) if not torch.equal(toks[False][:, i], toks[True][:, i])), None)
            common = n_tok if first is None else first + 1
            diff = max((a - b).abs().max().item() for a, b in zip(logs[False][:common], logs[True][:common]))
            out[f"{name}_cfg{scale:g}"] = {"tokens_equal": first is None, "first_differing_step": first,
                                           "max_abs_logit_diff_common_prefix": diff}
    return out


def llamagen_batch(B: int):
    from LlamaGen.adapter import LlamaGenAdapter
    model = gpt(None).train()
    L = model.block_size
    codes = torch.randint(16384, (B, L), device=DEV)
    labels = torch.randint(NUM_CLASSES, (B,), device=DEV)
    return model, LlamaGenAdapter(NUM_CLASSES), (codes, labels)


# ------------------------------------------------------------------------------------------------ shared
def sweep(make, batches, free: float, guided: float, more_time) -> dict:
    """Guidance-free (``free``) and CFG (``guided``) images/s at each batch while ``more_time()``; the guidance-free
    / CFG time per image with each at its own fastest batch (the ratio of their best images/s), and per batch."""
    rows = {}
    for B in batches:
        if rows and not more_time():
            break
        try:
            t_free, t_cfg = timed(make(B, free)), timed(make(B, guided))
        except torch.OutOfMemoryError:
            free_memory()
            break
        rows[B] = {"free_images_per_s": B / t_free, "cfg_images_per_s": B / t_cfg, "free_over_cfg_time": t_free / t_cfg}
        free_memory()
    best_free = max(rows, key=lambda b: rows[b]["free_images_per_s"])
    best_cfg = max(rows, key=lambda b: rows[b]["cfg_images_per_s"])
    return {"per_batch": rows, "best_batch_free": best_free, "best_batch_cfg": best_cfg,
            "free_over_cfg_time_per_image": rows[best_cfg]["cfg_images_per_s"] / rows[best_free]["free_images_per_s"],
            "target": 0.6}


class Prepared:
    """A family adapter whose batch is tokenised once: the step timing is the transformer work."""

    def __init__(self, adapter, batch):
        self.inner, self.num_classes = adapter, adapter.num_classes
        self.batch = adapter.prepare(batch, DEV)

    def prepare(self, batch, device):
        return self.batch

    def logits(self, model, labels, inputs):
        return self.inner.logits(model, labels, inputs)


def _cca_step(make, B: int, split_halves: bool = True) -> dict:
    from cca.dist import Dist
    from cca.trainer import TrainConfig, Trainer
    policy, adapter, batch = make(B)
    adapter = Prepared(adapter, batch)
    one = Dist(rank=0, world_size=1, local_rank=0, device=DEV, backend=None)
    tr = Trainer(policy, copy.deepcopy(policy), adapter, TrainConfig(
        out_dir="/tmp/gpu-check", batch_size=B, lr=1e-6, uncond_ratio=0.1, precision="bf16",
        split_halves=split_halves), dist=one)
    free_memory()
    sec = timed(lambda: tr.train_step(None), repeats=3)
    return {"batch": B, "images_per_s": B / sec, "step_s": sec, "peak_gib": peak_gib()}


def cca_step_rate(make, batches) -> dict:
    """Largest batch of ``batches`` whose CCA step fits (halves one after the other, the default): images/s and
    peak GiB; then the single 2B-row pass at that batch, for comparison."""
    for B in batches:
        try:
            out = _cca_step(make, B)
        except torch.OutOfMemoryError:
            out = None
        free_memory()                    # outside the except block: the failed attempt's tensors are gone
        if out is None:
            continue
        try:
            out["joint_pass"] = _cca_step(make, B, split_halves=False)
        except torch.OutOfMemoryError:
            out["joint_pass"] = {"batch": B, "error": "out of memory"}
        free_memory()
        return out
    return {"error": f"no batch of {batches} fits"}
