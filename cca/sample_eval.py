"""One point of a reproduction or a sweep: sample with a family's sampler script, record where the samples came
from, score them; every stage resumable. Used by ``cca.reproduce`` (paper rows) and ``cca.sweep`` (curves).

Stages and the files they leave beside ``<sample_dir>/<run name>.npz`` (the sampler's own name):
  1. sampling, on every rank: the sampler's ``main(argv)`` (``.parts/`` resume; skipped when the npz exists);
  2. provenance, rank 0: ``<run name>.provenance.json`` (checkpoint and tokenizer sha256, every sampler setting,
     torch version, device, world size, git commit of this repository);
  3. evaluation, rank 0: ``evaluations/evaluator.py`` writes ``<run name>.txt``; the metrics and the evaluator's
     provenance are cached in ``<run name>.eval.json`` under a key of every input (reused while it matches).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cca import hub
from cca.checkpoint import require_checkpoint, write_text_atomic
from cca.errors import UsageError
from LlamaGen.family import GUIDANCE_FREE_CFG_SCALE
from VAR.family import GUIDANCE_FREE_CFG

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Family:
    script: str                  # sampler module at the repository root
    ckpt_flag: str
    tokenizer_flag: str
    dir_flag: str
    guidance_flag: str
    guidance_free: float         # the guidance value that means "no guidance" in this family's convention

    @property
    def guidance_dest(self) -> str:
        return self.guidance_flag.lstrip("-").replace("-", "_")


FAMILIES = {"var": Family("VAR_sample", "--ckpt_path", "--vae_ckpt", "--sample_dir", "--cfg", GUIDANCE_FREE_CFG),
            "llamagen": Family("LLamaGen_sample_ddp", "--gpt-ckpt", "--vq-ckpt", "--sample-dir", "--cfg-scale",
                               GUIDANCE_FREE_CFG_SCALE)}


@dataclass(frozen=True)
class PointSpec:
    """What to sample: a checkpoint (release name or path), its tokenizer and the sampler's other flags."""
    family: str
    ckpt: str
    tokenizer: str
    sampler_args: tuple[str, ...] = ()

    def argv(self, sample_dir: str | os.PathLike) -> list[str]:
        """Sampler argv: the release's architecture flags, then ours (later flags win), then files and folder."""
        if self.family not in FAMILIES:
            raise UsageError(f"family {self.family!r}: expected one of {', '.join(FAMILIES)}")
        fam = FAMILIES[self.family]
        release = hub.release_of(self.ckpt)
        if release is not None and release.family != self.family:
            raise UsageError(f"{self.ckpt}: a {release.family} checkpoint, not {self.family}")
        arch = release.sampler_args if release is not None else ()
        return [*arch, *self.sampler_args, fam.ckpt_flag, self.ckpt, fam.tokenizer_flag, self.tokenizer,
                fam.dir_flag, str(sample_dir)]

    def check(self) -> None:
        """Checkpoint and tokenizer exist or resolve (release names from the hub cache), else one-line UsageError."""
        fam = FAMILIES[self.family]
        require_checkpoint(self.ckpt, fam.ckpt_flag)
        require_checkpoint(self.tokenizer, fam.tokenizer_flag)


@dataclass(frozen=True)
class SamplerRun:
    family: str
    module: object               # the sampler script's module (build_parser, run_name, main)
    argv: list[str]
    settings: argparse.Namespace
    npz: Path

    @property
    def guidance(self) -> float:
        return float(getattr(self.settings, FAMILIES[self.family].guidance_dest))


def plan(spec: PointSpec, sample_dir: str | os.PathLike) -> SamplerRun:
    """Parse the sampler's flags (its own parser: a bad flag is its one-line error) and name the npz it writes."""
    module = importlib.import_module(FAMILIES[spec.family].script)
    argv = spec.argv(sample_dir)
    settings = module.build_parser().parse_args(argv)
    return SamplerRun(spec.family, module, argv, settings,
                      Path(settings.sample_dir) / f"{module.run_name(settings)}.npz")


def is_main_process() -> bool:
    """Rank 0 (torchrun's RANK); the samplers tear their process group down when they finish."""
    return int(os.environ.get("RANK", "0")) == 0


def sample(run: SamplerRun) -> Path:
    """Stage 1 on every rank: run the sampler unless its npz exists (a killed run resumes from ``.parts/``)."""
    if not run.npz.exists():
        run.module.main(run.argv)
    return run.npz


def machine() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if torch.cuda.is_available():
        out.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count())
    else:
        out["device"] = f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return out


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(run: SamplerRun, spec: PointSpec) -> dict:
    """Stage 2 (rank 0): ``<npz>.provenance.json``, written once; a later call reads it back."""
    path = run.npz.with_suffix(".provenance.json")
    if path.is_file():
        return json.loads(path.read_text())
    record = {"sampler": f"{run.module.__name__}.py", "argv": run.argv, "settings": vars(run.settings),
              "checkpoint": hub.provenance(spec.ckpt), "tokenizer": hub.provenance(spec.tokenizer),
              "samples": {"path": str(run.npz), "sha256": hub.file_sha256(run.npz)},
              "machine": machine(), "git_commit": git_commit(), "recorded": now()}
    for part in ("checkpoint", "tokenizer"):
        warning = hub.mismatch_warning(record[part])
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    write_text_atomic(path, json.dumps(record, indent=1, default=str) + "\n")
    return record


@dataclass(frozen=True)
class EvalOptions:
    """How evaluations/evaluator.py scores a sample file."""
    ref: Path
    inception_weights: str | None = None
    batch_size: int = 64
    device: str = "auto"
    is_split_size: int = 5000
    inception_resolution: int = 299

    def argv(self, npz: Path) -> list[str]:
        weights = ["--inception-weights", str(self.inception_weights)] if self.inception_weights else []
        return [str(self.ref), str(npz), *weights, "--batch-size", str(self.batch_size), "--device", self.device,
                "--is-split-size", str(self.is_split_size), "--inception-resolution", str(self.inception_resolution)]

    def check(self) -> None:
        """One-line UsageError before any sampling when the reference batch or the Inception weights are missing."""
        from cca.rows import REF_URLS
        from evaluations.inception import find_inception_weights
        if not self.ref.is_file():
            url = REF_URLS.get(self.ref.name)
            raise UsageError(f"reference batch {self.ref} not found" + (f"; download it from {url}" if url else ""))
        try:
            find_inception_weights(self.inception_weights)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _header(txt: Path) -> dict:
    """The evaluator's '# key: value' provenance lines of SAMPLE.txt."""
    out = {}
    for line in txt.read_text().splitlines():
        if line.startswith("# ") and ": " in line:
            key, value = line[2:].split(": ", 1)
            out[key] = value
    return out


def evaluate(npz: Path, opts: EvalOptions) -> dict:
    """Stage 3 (rank 0): metrics of ``npz``, cached in ``<npz>.eval.json`` while every input is unchanged."""
    from evaluations import evaluator
    from evaluations.inception import find_inception_weights
    cache = npz.with_suffix(".eval.json")
    key = {"argv": opts.argv(npz), "samples": _stat_key(npz), "reference": _stat_key(opts.ref),
           "weights_sha256": hub.file_sha256(find_inception_weights(opts.inception_weights))}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    results = evaluator.main(opts.argv(npz))
    header = _header(npz.with_suffix(".txt"))
    record = {"key": key, "metrics": {k: None if v is None else float(v) for k, v in results.items()},
              "feature_net": header.get("feature network"), "weights_sha256": key["weights_sha256"],
              "reference": {"path": str(opts.ref), "sha256": hub.file_sha256(opts.ref)},
              "machine": machine(), "evaluated": now()}
    write_text_atomic(cache, json.dumps(record, indent=1) + "\n")
    return record


def run_point(spec: PointSpec, sample_dir: str | os.PathLike, opts: EvalOptions) -> dict | None:
    """All three stages; every rank samples, rank 0 returns {'run', 'provenance', 'evaluation'}, others None."""
    run = plan(spec, sample_dir)
    sample(run)
    if not is_main_process():
        return None
    return {"run": run, "provenance": provenance(run, spec), "evaluation": evaluate(run.npz, opts)}
