"""The text-to-image miniature end to end, on the class-conditional demo's stages: data -> feature networks ->
text encoder -> caption banks -> (tokenizer -> codes -> base T2I GPT -> CCA fine-tune -> samples -> timing ->
scores) -> targets -> metrics.json + report.md. Every stage is cached under ``<out>/cache``."""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

from demo import plots, report
from demo.config import DemoConfig, FamilyConfig, key_of
from demo.cpuload import THREADS, machine_description
from demo.evaluate import load_replicates
from demo.families import Family
from demo.pipeline import FamilyRun, shared_stages
from demo.stages import StageCache
from demo.targets import family_targets
from demo_t2i.captions import CLASS_NAMES, TEST_TEMPLATES, TRAIN_TEMPLATES, phrasings
from demo_t2i.config import TextConfig
from demo_t2i.family import encode_bank, t2i_family
from demo_t2i.text_encoder import build_t5, train_t5, words_of


class T2IRun(FamilyRun):
    """The demo's per-family stages with the text-to-image ``Family`` (not one of ``demo.families.FAMILIES``)."""

    def __init__(self, cfg: DemoConfig, fc: FamilyConfig, family: Family, text_key: str, *args):
        super().__init__(cfg, dataclasses.replace(fc, family="llamagen"), *args)   # its lookup; then ours
        self.fc, self.fam = fc, family
        self.condition_keys = (text_key,)        # the caption features come from this text encoder


def text_encoder(cache: StageCache, text: TextConfig) -> tuple[Path, str, dict]:
    """The tiny T5 folder (built once per text settings and caption set): the training phrasings' words, and
    ``text.train_steps`` of learning to tell their classes apart; held-out words stay unknown to it."""
    folder = cache.root / "text_encoder"
    groups = phrasings(TRAIN_TEMPLATES)
    texts = [t for group in groups for t in group]
    labels = [c for c, group in enumerate(groups) for _ in group]

    def build() -> dict:
        words = words_of(texts)
        build_t5(folder, words, text.width, text.layers, text.seed)
        fit = train_t5(folder, texts, labels, text.train_steps, unk_prob=text.unk_prob, seed=text.seed) \
            if text.train_steps > 0 else {}
        return {"words": len(words), "width": text.width, "layers": text.layers, **fit}
    key = key_of(text, texts)
    return folder, key, cache.run("text_encoder", key, build, (folder / "config.json",))


def run_t2i_demo(cfg: DemoConfig, text: TextConfig, data_dir: Path, out_dir: Path, *, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    cache, train, test, nets, net_info, scorer = shared_stages(cfg, data_dir, out_dir, progress)
    t5, text_key, text_notes = text_encoder(cache, text)
    banks = [encode_bank(t5, templates, text.tokens) for templates in (TRAIN_TEMPLATES, TEST_TEMPLATES)]
    fc = cfg.family("t2i")
    run = T2IRun(cfg, fc, t2i_family(fc, text.width, text.tokens, *banks, seed=cfg.seed), text_key, cache, out_dir,
                 train, test, scorer, progress)
    run.notes["text_encoder"] = text_notes
    variants = run.run([cfg.seed])
    replicates = functools.lru_cache(maxsize=None)(lambda rel: load_replicates(out_dir / rel))
    metrics = {"machine": machine_description(), "feature_networks": net_info,
               "bootstrap": {"replicates": cfg.bootstrap_replicates, "level": 0.95, "of": "the samples"},
               "seeds": [cfg.seed], "variants": variants, "seed_summary": {},
               "targets": {"t2i": family_targets(variants, "t2i", cfg.seed, list(nets),
                                                 lambda v: replicates(v["replicates"]))},
               "captions": {"train_templates": TRAIN_TEMPLATES, "held_out_templates": TEST_TEMPLATES,
                            "class_names": CLASS_NAMES},
               "threads": THREADS.summary()}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(out_dir, metrics, run.notes, cfg, text, cache, time.perf_counter() - t0)
    return metrics


def _encoder_training(text: TextConfig) -> str:
    if text.train_steps == 0:
        return "randomly initialised and never trained"
    return (f"trained {text.train_steps} full-batch steps to name the class of each training phrasing (words "
            f"dropped to <unk> with probability {text.unk_prob}; the held-out templates' own words are <unk> to it)")


def write_report(out_dir: Path, metrics: dict, notes: dict, cfg: DemoConfig, text: TextConfig, cache: StageCache,
                 wall_seconds: float) -> Path:
    """report.md: the demo's header, score tables, timing and targets, then captions, grids and stage times."""
    lines = report.header(metrics, cfg, cache.seconds, cache.skipped, wall_seconds)
    lines[0] = "# Text-to-image CCA in miniature: Fashion-MNIST captions, 16 px, LlamaGen T2I GPT"
    for net in metrics["feature_networks"]:
        lines += [f"## Under {net} (held-out phrasings)", ""] + report.scores_table(metrics["variants"], net) + [""]
    lines += ["## Time per image", ""] + report.timing_table(metrics["variants"]) + [""]
    lines += report.targets_section(metrics)
    lines += ["## Captions", "", f"Training templates: {TRAIN_TEMPLATES}; held out (sampling, scoring): "
              f"{TEST_TEMPLATES}; names per class: {CLASS_NAMES}. Text encoder: a T5 encoder of width {text.width}, "
              f"{text.layers} blocks, built here, "
              f"{_encoder_training(text)}; captions left-padded to {text.tokens} tokens.", "", "## Samples (one row per class)", ""]
    for name, v in metrics["variants"].items():
        plots.sample_grid(out_dir / v["samples"], out_dir / f"grid_{name}.png")
        lines += [f"**{name}**", "", f"![{name}](grid_{name}.png)", ""]
    lines += ["## Training notes", ""] + [f"- {part}: {json.dumps(notes.get(part, {}))}"
                                          for part in ("text_encoder", "tokenizer", "pretrain", "cca")]
    lines += ["", "## Stage times (s)", "", "| stage | seconds | |", "|---|---:|---|"]
    lines += [f"| {n} | {s:.1f} | {'cached' if n in cache.skipped else ''} |" for n, s in cache.seconds.items()]
    lines += ["", "## Settings", "", "```json", json.dumps({"demo": dataclasses.asdict(cfg),
                                                            "text": dataclasses.asdict(text)}, indent=1), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
