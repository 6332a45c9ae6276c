"""``report.md`` (tables with 95 % intervals under every feature network, target checks, seeds, extra CCA points,
stage times, settings), sample grids and guidance plots."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from demo import plots
from demo.curves import curves_section, draw_curves
from demo.targets import HALF, ROBUST_LOWER, TIME_LIMIT, family_variants, gap_checks

CFG_LABEL = {"llamagen": "cfg-scale (LlamaGen: 1 = no guidance)", "var": "cfg (VAR: 0 = no guidance)"}


def _ci(ci, digits: int = 2) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _yes(flag) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def _main_variants(metrics: dict) -> dict:
    seed = metrics["seeds"][0]
    return {n: v for n, v in metrics["variants"].items() if v["seed"] == seed}


def scores_table(variants: dict, net: str) -> list[str]:
    rows = ["| variant | guided | cfg | classifier-FID | 95 % interval | accuracy | 95 % interval | precision | "
            "recall |", "|---|---|---:|---:|---|---:|---|---:|---:|"]
    for name, v in variants.items():
        s = v["scores"][net]
        rows.append(f"| {name} | {'yes' if v['guided'] else 'no'} | {v['cfg']:g} | {s['fid']:.2f} | "
                    f"{_ci(s['fid_ci'])} | {s['accuracy']:.3f} | {_ci(s['accuracy_ci'], 3)} | "
                    f"{s['precision']:.3f} | {s['recall']:.3f} |")
    return rows


def timing_table(variants: dict) -> list[str]:
    rows = ["| variant | s / image | of which tokens | foreign load during the kept batch (cores) |",
            "|---|---:|---:|---:|"]
    for name, v in variants.items():
        if "sec_per_image" in v:
            tok = v.get("token_sec_per_image")
            rows.append(f"| {name} | {v['sec_per_image'] * 1e3:.2f} ms | {f'{tok * 1e3:.2f} ms' if tok else ''} | "
                        f"{v['timing_load']:.2f}{'' if v['timing_quiet'] else ' (loaded)'} |")
    return rows


def time_text(t: dict) -> str:
    if t["ratio"] is not None:
        return f"{t['ratio']:.2f} ({_yes(t['pass'])})"
    return (f"not measured: the machine was not quiet (other processes kept up to "
            f"{t['max_load_of_kept_batches']:.2f} cores busy during the kept batches)")


def targets_section(metrics: dict) -> list[str]:
    lines = ["## Targets", "",
             f"Gap closed = (base guidance-free - CCA guidance-free) / (base guidance-free - best base+CFG), best CFG "
             f"value of each metric taken separately; 95 % interval from {metrics['bootstrap']['replicates']} joint "
             f"bootstrap replicates (each variant's samples resampled; the best CFG value is taken per replicate). "
             f"A target is met only if it holds under every feature network: gap closed >= {HALF} in FID and in "
             f"accuracy, CCA strictly better than base guidance-free; robust: the intervals' lower ends above "
             f"{ROBUST_LOWER} too. Time ratio: CCA against the fastest CFG sampler, at most {TIME_LIMIT}, printed "
             f"only when every kept timed batch was quiet.", "",
             "| family | network | FID gap closed | 95 % interval | accuracy gap closed | 95 % interval | "
             "strictly better |", "|---|---|---:|---|---:|---|---|"]
    for fam, t in metrics["targets"].items():
        if t is None:
            continue
        for net, c in t["networks"].items():
            lines.append(f"| {fam} | {net} | {c['fid_gap_closed']:.2f} | {_ci(c['fid_gap_closed_ci'])} | "
                         f"{c['accuracy_gap_closed']:.2f} | {_ci(c['accuracy_gap_closed_ci'])} | "
                         f"{_yes(c['strictly_better'])} |")
    lines += ["", "| family | half the gap, both networks | robust (lower ends > 0.3) | strictly better | time ratio | "
              "all targets |", "|---|---|---|---|---|---|"]
    for fam, t in metrics["targets"].items():
        if t is not None:
            lines.append(f"| {fam} | {_yes(t['pass_half_gap'])} | {_yes(t['pass_robust'])} | "
                         f"{_yes(t['pass_strictly_better'])} | {time_text(t['time'])} | {_yes(t['pass_all'])} |")
    return lines + [""]


def seeds_section(metrics: dict) -> list[str]:
    if not metrics["seed_summary"]:
        return []
    lines = ["## Run seeds", "", f"CCA fine-tuning and all sampling repeated with seeds {metrics['seeds']} (tokenizers, "
             "base models and feature networks fixed): mean +- standard deviation over seeds (min - max).", "",
             "| family | network | base FID | CCA FID | best CFG FID | FID gap closed | base acc. | CCA acc. | "
             "best CFG acc. | acc. gap closed |", "|---|---|---|---|---|---|---|---|---|---|"]
    keys = ("base_fid", "cca_fid", "best_cfg_fid", "fid_gap_closed", "base_accuracy", "cca_accuracy",
            "best_cfg_accuracy", "accuracy_gap_closed")
    for fam, summary in metrics["seed_summary"].items():
        if summary is None:
            continue
        for net in metrics["feature_networks"]:
            cells = []
            for k in keys:
                s, d = summary[net][k], 3 if "accuracy" in k and "gap" not in k else 2
                cells.append(f"{s['mean']:.{d}f} +- {s['sd']:.{d}f} ({s['min']:.{d}f} - {s['max']:.{d}f})")
            lines.append(f"| {fam} | {net} | " + " | ".join(cells) + " |")
        lines.append(f"\n{fam}: half the gap under both networks in every seed: "
                     f"{_yes(summary['pass_half_gap_every_seed'])}; robust in every seed: "
                     f"{_yes(summary['pass_robust_every_seed'])}.\n")
    return lines


def points_section(metrics: dict, notes: dict, replicates: Callable[[dict], dict]) -> list[str]:
    """Extra CCA runs (--point / --sweep), guidance-free, against the main run's base and CFG variants."""
    points = [(fam, p) for fam in notes for p in notes[fam].get("points", [])]
    if not points:
        return []
    lines = ["## Extra CCA settings (guidance-free, gaps against this run's base and CFG samples)", "",
             "| family | setting | network | classifier-FID | accuracy | FID gap closed | accuracy gap closed |",
             "|---|---|---|---:|---:|---|---|"]
    for fam, p in points:
        trio = family_variants(_main_variants(metrics), fam, metrics["seeds"][0])
        setting = ", ".join(f"{k} = {v:g}" for k, v in p["settings"].items())
        for net in metrics["feature_networks"]:
            s = p["scores"][net]
            c = gap_checks((trio[0], p, trio[2]), net, replicates) if trio else None
            gaps = (f"{c['fid_gap_closed']:.2f} {_ci(c['fid_gap_closed_ci'])} | {c['accuracy_gap_closed']:.2f} "
                    f"{_ci(c['accuracy_gap_closed_ci'])}") if c else "n/a | n/a"
            lines.append(f"| {fam} | {setting} | {net} | {s['fid']:.2f} {_ci(s['fid_ci'])} | {s['accuracy']:.3f} | "
                         f"{gaps} |")
    return lines + [""]


def _plot_family(out_dir: Path, variants: dict, family: str, net: str) -> str | None:
    base, cca = variants.get(f"{family}_base"), variants.get(f"{family}_cca")
    guided = sorted((v for v in variants.values() if v["family"] == family and v["model"] == "base" and v["guided"]),
                    key=lambda v: v["cfg"])
    if base is None or cca is None:
        return None

    def point(v):
        return v["cfg"], v["scores"][net]["fid"], v["scores"][net]["accuracy"]
    name = f"guidance_{family}_{net}.png"
    plots.guidance_plot(out_dir / name, f"{family} ({net})", CFG_LABEL.get(family, "cfg"),
                        [point(base)] + [point(v) for v in guided], point(cca))
    return name


def header(metrics: dict, cfg, stage_seconds: dict, skipped: list, wall_seconds: float) -> list[str]:
    m, t = metrics["machine"], metrics["threads"]
    threads = ", ".join(f"{n} thread(s) for {s:.0f} s" for n, s in t["seconds_at_threads"].items())
    nets = "; ".join(f"**{n}** ({i['spec']['stages']} convs, {'averaged' if i['spec']['global_pool'] else 'flattened'}"
                     f", {i['spec']['feat_dim']} features, seed {i['spec']['seed']}): test accuracy "
                     f"{i['test_accuracy']:.4f}" for n, i in metrics["feature_networks"].items())
    return ["# CCA in miniature: Fashion-MNIST, 16 px, both model families", "",
            f"Wall time of this invocation: **{wall_seconds / 60:.1f} min** ({wall_seconds:.0f} s) on {m['cpu']}, "
            f"{m['cpus']} logical CPUs, torch {m['torch']}; threads {t['mode']}: {threads} ({t['switches']} "
            f"switches; OMP_WAIT_POLICY {m['omp_wait_policy']}); stages computed from scratch would take {sum(stage_seconds.values()) / 60:.1f} min "
            f"(sum of their recorded times){'; cached stages: ' + str(len(skipped)) if skipped else ''}.", "",
            f"Feature networks, trained independently on the train split: {nets}. Under each: classifier-FID and "
            f"precision/recall (k = 3) against the test split, accuracy = share of samples the network assigns to "
            f"the requested class; 95 % intervals from {cfg.bootstrap_replicates} bootstrap resamples of the "
            f"samples (the test split fixed). {cfg.per_class * 10} samples per variant.", ""]


def write_report(out_dir: Path, metrics: dict, *, notes: dict, cfg, stage_seconds: dict, stage_threads: dict,
                 skipped: list, wall_seconds: float, replicates: Callable[[dict], dict]) -> Path:
    variants = _main_variants(metrics)
    families = list(metrics["targets"])
    lines = header(metrics, cfg, stage_seconds, skipped, wall_seconds) + ["## Results", ""]
    for net in metrics["feature_networks"]:
        lines += [f"### Under {net}", ""] + scores_table(variants, net) + [""]
    lines += ["### Time per image", "", f"Fastest quiet batch of {cfg.timing_batch} images per sampler "
              f"({cfg.timing_rounds} rounds; CCA timed next to each CFG scale, so both sides are the best of equally "
              f"many batches). A batch is quiet when other processes kept at most {cfg.quiet_load} cores busy "
              f"during it (/proc/stat); loaded batches are repeated after waiting for a quiet moment while the "
              f"stage's patience ({cfg.timing_patience:.0f} s) lasts. Tokens and decoding; the tokens column is "
              f"the token generation alone.", ""] + timing_table(variants)
    for fam in families:
        load = notes.get(fam, {}).get("timing_load")
        if load:
            lines.append(f"\n{fam} timing: {load['batches']} batches, {load['loaded_batches']} of them loaded; "
                         f"foreign load median {load['median_load']:.2f}, max {load['max_load']:.2f} cores; "
                         f"{load['seconds_waiting_or_repeating']:.0f} s spent waiting or repeating.")
    lines += [""] + targets_section(metrics) + seeds_section(metrics) + points_section(metrics, notes, replicates)
    lines += ["## Guidance plots", ""]
    for fam in families:
        for net in metrics["feature_networks"]:
            png = _plot_family(out_dir, variants, fam, net)
            lines += [f"![{fam} {net}]({png})", ""] if png else []
    draw_curves(out_dir, metrics["curves"], list(metrics["feature_networks"]))
    lines += curves_section(metrics["curves"], list(metrics["feature_networks"]), CFG_LABEL)
    lines += ["## Samples (one row per class)", ""]
    for name, v in variants.items():
        png = f"grid_{name}.png"
        plots.sample_grid(out_dir / v["samples"], out_dir / png)
        lines += [f"**{name}**", "", f"![{name}]({png})", ""]
    tuning = Path(__file__).with_name("TUNING.md")
    if tuning.is_file():
        lines += ["## How the CCA settings were chosen (sweeps recorded while developing the demo)", "",
                  tuning.read_text().strip(), ""]
    lines += ["## Training notes", ""]
    for fam in families:
        for part in ("tokenizer", "pretrain", "cca"):
            lines.append(f"- **{fam}** {part}: {json.dumps(notes.get(fam, {}).get(part, {}))}")
    lines += ["", "## Stage times (s)", "", "Threads: seconds of the stage's work at each thread count (auto mode switches "
              "to fewer threads while other processes keep cores busy; the numbers of stages that ran with the same "
              "threads are bit-identical on one machine).", "", "| stage | seconds | threads | |", "|---|---:|---|---|"]
    lines += [f"| {name} | {s:.1f} | {', '.join(f'{n}: {t:.0f} s' for n, t in stage_threads.get(name, {}).items())} "
              f"| {'cached' if name in skipped else ''} |" for name, s in stage_seconds.items()]
    lines += ["", "## Settings", "", "```json", json.dumps(dataclasses.asdict(cfg), indent=1), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def summary_lines(metrics: dict) -> list[str]:
    """Console summary: per family and network the gaps closed with intervals, then the verdict."""
    out = []
    for fam, t in metrics["targets"].items():
        if t is None:
            continue
        for net, c in t["networks"].items():
            out.append(f"{fam} [{net}]: FID gap closed {c['fid_gap_closed']:.2f} {_ci(c['fid_gap_closed_ci'])}, "
                       f"accuracy gap closed {c['accuracy_gap_closed']:.2f} {_ci(c['accuracy_gap_closed_ci'])}, "
                       f"strictly better {c['strictly_better']}")
        out.append(f"{fam}: time ratio {time_text(t['time'])}; robust {t['pass_robust']} -> "
                   f"{'all targets met' if t['pass_all'] else 'targets NOT met'}")
    return out
