"""Sampling the variants to npz through the families' own samplers, and timing them.

* LlamaGen: ``LlamaGen.generate.generate`` (static KV cache; ``cfg_scale`` 1 = guidance-free, only B rows run),
  then the VQ decoder.
* VAR: ``VAR.autoregressive_infer_cfg`` (``cfg`` 0 = guidance-free, only B rows run; otherwise the original's
  linear ramp over scales).

Samples go through ``cca.sampling.ShardedNpzWriter`` (the sample scripts' writer: resumable batches, one shuffled
npz with ``arr_0`` uint8 (N, H, W, 3) and ``arr_1`` int64 labels). Pure sampling: temperature 1, no top-k / top-p.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cca.sampling import ShardedNpzWriter, balanced_labels, random_labels, to_uint8_nhwc
from demo.cpuload import THREADS, LoadMeter, wait_for_quiet
from demo.tokenizers import llamagen_decode
from LlamaGen.generate import generate as llamagen_generate
from VAR.sampler import generate as var_generate

SampleFn = Callable[[torch.Tensor, int], np.ndarray]   # (labels (B,), seed) -> uint8 (B, H, W, 3)


@dataclass
class Variant:
    name: str          # e.g. "llamagen_base_cfg2.0"
    family: str        # "llamagen" | "var"
    model: str         # "base" | "cca"
    guided: bool
    cfg: float         # the family's own convention (LlamaGen: 1 = none; VAR: 0 = none)
    sample: SampleFn
    tokens: Callable[[torch.Tensor, int], object] | None = None   # the AR part alone (for the timing breakdown)
    balanced_labels: bool = True   # every class equally often; False: uniform draws (the original LlamaGen sampler)


def llamagen_sampler(gpt, vq, cfg_scale: float) -> tuple[SampleFn, Callable]:
    """(images sampler, tokens-only sampler) with LlamaGen's cfg-scale."""
    grid_tokens = gpt.block_size

    def tokens(labels: torch.Tensor, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return llamagen_generate(gpt, labels, grid_tokens, cfg_scale=cfg_scale, temperature=1.0, top_k=0,
                                 top_p=1.0, generator=gen)                      # (B, L)

    def run(labels: torch.Tensor, seed: int) -> np.ndarray:
        return to_uint8_nhwc(llamagen_decode(vq, tokens(labels, seed)), value_range=(-1.0, 1.0))
    return run, tokens


def var_sampler(var, cfg: float, round_uint8: bool = True) -> tuple[SampleFn, Callable]:
    """(images sampler, tokens-only sampler: up to the final f_hat, before the VQVAE decoder) with VAR's cfg;
    pixels rounded to the nearest level, or cut as the original VAR_sample.py does (``round_uint8`` False)."""
    def tokens(labels: torch.Tensor, seed: int) -> torch.Tensor:
        return var_generate(var, len(labels), labels, g_seed=seed, cfg=cfg, top_k=0, top_p=0.0)

    def run(labels: torch.Tensor, seed: int) -> np.ndarray:
        images = var.autoregressive_infer_cfg(len(labels), label_B=labels, g_seed=seed, cfg=cfg, top_k=0,
                                              top_p=0.0)                      # (B, 3, H, W) in [0, 1]
        return to_uint8_nhwc(images, value_range=(0.0, 1.0), rounding="nearest" if round_uint8 else "truncate")
    return run, tokens


def sample_to_npz(variant: Variant, out_dir: Path, *, per_class: int, num_classes: int = 10, batch_size: int = 500,
                  seed: int = 0, progress: bool = True) -> dict:
    """Writes ``out_dir/samples_<name>.npz``; returns {'path', 'seconds', 'count'} (resumes a killed run)."""
    draw = balanced_labels if variant.balanced_labels else random_labels     # as LLamaGen_sample_ddp.py chooses
    labels = draw(per_class * num_classes, num_classes, seed=seed)
    writer = ShardedNpzWriter(out_dir, f"samples_{variant.name}", labels, batch_size=batch_size, shuffle_seed=seed)
    seconds = 0.0
    bar = tqdm(total=writer.num_pending(), desc=f"sample {variant.name}", disable=not progress, unit="img",
               dynamic_ncols=True)
    for indices in writer.pending_batches():
        THREADS.adapt()
        t0 = time.perf_counter()
        with torch.inference_mode():
            images = variant.sample(torch.from_numpy(labels[indices]), seed * 1_000_003 + int(indices[0]))
        seconds += time.perf_counter() - t0
        writer.save_batch(indices, images)
        bar.update(len(indices))
    bar.close()
    path = writer.finalize()
    shutil.rmtree(writer.parts, ignore_errors=True)
    return {"path": str(path), "seconds": seconds, "count": int(len(labels))}


def timing_schedule(variants: list[Variant], paired: str | None = None) -> list[tuple[str, str, Callable]]:
    """One round of timed jobs (variant name, what, callable): every sampler whole once, and the token generation
    of those that expose it. ``paired`` (a guidance-free variant's name) is instead timed just before each guided
    sampler: then the fastest CFG scale and that sampler are each the best of as many timed batches (n scales would
    otherwise give the CFG side n times as many draws at catching a quiet moment of a shared machine)."""
    by_name = {v.name: v for v in variants}
    if paired is not None and paired not in by_name:
        raise KeyError(f"paired variant {paired!r} is not among {list(by_name)}")
    pairs_with_cfg = paired is not None and any(v.guided for v in variants)
    jobs = []
    for v in variants:
        if v.guided and pairs_with_cfg:
            jobs.append((paired, "sec_per_image", by_name[paired].sample))
        if not (pairs_with_cfg and v.name == paired):
            jobs.append((v.name, "sec_per_image", v.sample))
    jobs += [(v.name, "token_sec_per_image", v.tokens) for v in variants if v.tokens is not None]
    return jobs


@dataclass
class TimingPolicy:
    """When a timed batch counts as quiet and how long the stage may wait or repeat batches to get quiet ones."""
    quiet_load: float = 0.1        # foreign cores (demo.cpuload) during a batch at most this: the batch is quiet
    patience: float = 90.0         # seconds the stage may spend waiting for quiet and repeating loaded batches
    retries: int = 2               # repeats of one loaded batch at most


def _timed(fn, labels, seed: int) -> tuple[float, float]:
    """(seconds, foreign load in cores) of one call."""
    with LoadMeter() as m, torch.inference_mode():
        fn(labels, seed)
    return m.seconds, m.foreign


def time_variants(variants: list[Variant], *, batch_size: int, rounds: int, paired: str | None = None,
                  policy: TimingPolicy = TimingPolicy(), num_classes: int = 10, progress: bool = True
                  ) -> tuple[dict[str, dict], dict]:
    """Seconds per image of each sampler, whole (tokens and decoding) and tokens only: the fastest of its quiet
    timed batches (``rounds`` rounds of ``timing_schedule``, each rotated by one job). A batch during which other
    processes kept more than ``policy.quiet_load`` cores busy is repeated after waiting for a quiet moment, while
    the stage's patience lasts. Returns ({name: {what: s / image, what + '_load': foreign cores during the kept
    batch, what + '_quiet': bool}}, the load the stage saw)."""
    labels = torch.arange(batch_size) % num_classes
    jobs = timing_schedule(variants, paired)
    best: dict[str, dict] = {v.name: {} for v in variants}
    with torch.inference_mode():
        for fn in {id(fn): fn for _, _, fn in jobs}.values():
            fn(labels[:min(8, batch_size)], 0)
    loads, spent = [], 0.0
    bar = tqdm(total=rounds * len(jobs), desc="timing samplers", disable=not progress, dynamic_ncols=True)
    for r in range(rounds):
        shift = r % len(jobs)
        for name, what, fn in jobs[shift:] + jobs[:shift]:
            for attempt in range(policy.retries + 1):
                seconds, load = _timed(fn, labels, 1000 + r)
                loads.append(load)
                quiet = load <= policy.quiet_load
                _keep(best[name], what, seconds / batch_size, load, quiet)
                if quiet or attempt == policy.retries or spent >= policy.patience:
                    break
                _, waited = wait_for_quiet(policy.quiet_load, timeout=min(10.0, policy.patience - spent))
                spent += waited + seconds
            bar.update(1)
    bar.close()
    seen = np.asarray(loads, dtype=np.float64)
    seen_summary = {"batches": len(loads), "loaded_batches": int((~(seen <= policy.quiet_load)).sum()),
                     "median_load": float(np.median(seen)), "max_load": float(np.max(seen)),
                     "seconds_waiting_or_repeating": spent, "quiet_load": policy.quiet_load}
    return best, seen_summary


def _keep(entry: dict, what: str, per_image: float, load: float, quiet: bool) -> None:
    """Keeps the fastest quiet batch; a loaded one only while no quiet one exists."""
    had_quiet = entry.get(what + "_quiet", False)
    if (quiet and not had_quiet) or (quiet == had_quiet and per_image < entry.get(what, float("inf"))):
        entry.update({what: per_image, what + "_load": load, what + "_quiet": quiet})
