"""``report.md`` (tables, target checks, stage times, settings), sample grids and guidance plots."""
from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

import torch

from demo import plots

CFG_LABEL = {"llamagen": "cfg-scale (LlamaGen: 1 = no guidance)", "var": "cfg (VAR: 0 = no guidance)"}


def target_checks(variants: dict, family: str) -> dict | None:
    """The issue's targets for one family, measured strictly: gaps to the best CFG value of each metric
    separately, time against the fastest CFG sampler."""
    base, cca = variants.get(f"{family}_base"), variants.get(f"{family}_cca")
    guided = [v for v in variants.values() if v["family"] == family and v["model"] == "base" and v["guided"]]
    if base is None or cca is None or not guided:
        return None
    best_fid = min(v["fid"] for v in guided)
    best_acc = max(v["accuracy"] for v in guided)
    fid_gap, acc_gap = base["fid"] - best_fid, best_acc - base["accuracy"]
    fid_closed = (base["fid"] - cca["fid"]) / fid_gap if fid_gap > 0 else float("nan")
    acc_closed = (cca["accuracy"] - base["accuracy"]) / acc_gap if acc_gap > 0 else float("nan")
    ratio = cca["sec_per_image"] / min(v["sec_per_image"] for v in guided)
    checks = {
        "best_cfg_fid": best_fid, "best_cfg_accuracy": best_acc,
        "fid_gap_closed": fid_closed, "accuracy_gap_closed": acc_closed, "time_ratio": ratio,
        "pass_fid_half_gap": fid_closed >= 0.5, "pass_accuracy_half_gap": acc_closed >= 0.5,
        "pass_strictly_better": cca["fid"] < base["fid"] and cca["accuracy"] > base["accuracy"],
        "pass_time": ratio <= 0.55,
    }
    checks["pass_all"] = all(v for k, v in checks.items() if k.startswith("pass_"))
    return checks


def _token_ratio(variants: dict, family: str, token_seconds: dict) -> str:
    guided = [token_seconds[n] for n, v in variants.items()
              if v["family"] == family and v["model"] == "base" and v["guided"] and token_seconds.get(n)]
    cca = token_seconds.get(f"{family}_cca")
    if not cca or not guided:
        return "n/a"
    return f"{cca / min(guided):.2f}"


def _fmt(x, digits: int = 3) -> str:
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def variants_table(variants: dict, token_seconds: dict | None = None) -> list[str]:
    """One row per variant; ``token_seconds`` (name -> s / image of the AR part alone) adds a column."""
    extra = token_seconds is not None
    rows = ["| variant | family | model | guided | cfg | classifier-FID | accuracy | precision | recall | s / image |"
            + (" of which tokens |" if extra else ""),
            "|---|---|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if extra else "")]
    for name, v in variants.items():
        tok = token_seconds.get(name) if extra else None
        rows.append(f"| {name} | {v['family']} | {v['model']} | {'yes' if v['guided'] else 'no'} | {v['cfg']:g} | "
                    f"{v['fid']:.2f} | {v['accuracy']:.3f} | {v['precision']:.3f} | {v['recall']:.3f} | "
                    f"{v['sec_per_image'] * 1e3:.2f} ms |" + (f" {tok * 1e3:.2f} ms |" if tok else (" |" if extra
                                                                                            else "")))
    return rows


def _plot_family(out_dir: Path, variants: dict, family: str) -> str | None:
    base, cca = variants.get(f"{family}_base"), variants.get(f"{family}_cca")
    guided = sorted((v for v in variants.values() if v["family"] == family and v["model"] == "base" and v["guided"]),
                    key=lambda v: v["cfg"])
    if base is None or cca is None:
        return None
    curve = [(base["cfg"], base["fid"], base["accuracy"])] + [(v["cfg"], v["fid"], v["accuracy"]) for v in guided]
    name = f"guidance_{family}.png"
    plots.guidance_plot(out_dir / name, family, CFG_LABEL.get(family, "cfg"), curve,
                        (cca["cfg"], cca["fid"], cca["accuracy"]))
    return name


def write_report(out_dir: Path, metrics: dict, *, notes: dict, cfg, stage_seconds: dict, skipped: list,
                 wall_seconds: float) -> Path:
    variants = metrics["variants"]
    families = sorted({v["family"] for v in variants.values()})
    lines = ["# CCA in miniature: Fashion-MNIST, 16 px, both model families", "",
             f"Wall time of this invocation: **{wall_seconds / 60:.1f} min** ({wall_seconds:.0f} s) on "
             f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}; "
             f"stages computed from scratch would take {sum(stage_seconds.values()) / 60:.1f} min "
             f"(sum of their recorded times){'; cached stages: ' + str(len(skipped)) if skipped else ''}.", "",
             f"Feature network: a small CNN trained on the train split, test-split accuracy "
             f"**{metrics['classifier_test_accuracy']:.4f}**. classifier-FID and precision/recall (k = 3) are "
             f"against the test split; accuracy is the share of samples the classifier assigns to the requested "
             f"class; s / image is the fastest of the interleaved timed batches of {cfg.timing_batch} images "
             f"({cfg.timing_rounds} rounds; in each, every sampler once and CCA once next to each CFG scale, so "
             f"CCA and the fastest CFG scale are each the best of equally many batches). Tokens and decoding; the "
             f"last column is the token generation alone, timed for CCA and the first CFG scale.", "",
             "## Results", ""]
    token_seconds = {name: t.get("token_sec_per_image") for fam in families
                     for name, t in notes.get(fam, {}).get("timing", {}).items()}
    lines += variants_table(variants, token_seconds)
    lines += ["", "## Targets", "",
              "Gap closed = (base guidance-free - CCA guidance-free) / (base guidance-free - best base+CFG), with the "
              "best CFG value of each metric taken separately; time ratio against the fastest CFG sampler.", "",
              "| family | FID gap closed | accuracy gap closed | strictly better | time ratio | all targets | "
              "time ratio, tokens only |", "|---|---:|---:|---|---:|---|---:|"]
    for fam in families:
        c = target_checks(variants, fam)
        if c is None:
            continue
        lines.append(f"| {fam} | {c['fid_gap_closed']:.2f} ({_fmt(c['pass_fid_half_gap'])}) | "
                     f"{c['accuracy_gap_closed']:.2f} ({_fmt(c['pass_accuracy_half_gap'])}) | "
                     f"{_fmt(c['pass_strictly_better'])} | {c['time_ratio']:.2f} ({_fmt(c['pass_time'])}) | "
                     f"{_fmt(c['pass_all'])} | {_token_ratio(variants, fam, token_seconds)} |")
    for fam in families:
        cca, tok = variants.get(f"{fam}_cca"), token_seconds.get(f"{fam}_cca")
        if cca and tok:
            decode = cca["sec_per_image"] - tok
            if decode <= 0:   # the two are the best of different numbers of batches
                lines += ["", f"{fam}: decoding tokens to pixels is within the timing noise (whole sampler "
                          f"{cca['sec_per_image'] * 1e3:.2f} ms per image, token generation alone {tok * 1e3:.2f} ms)."]
                continue
            lines += ["", f"{fam}: decoding tokens to pixels takes about {decode * 1e3:.2f} ms per image (whole "
                      f"sampler minus token generation), {decode / tok:.0%} of the guidance-free token generation; "
                      f"CFG doubles the rows of the token generation but not the decoding, so the whole-sampler "
                      f"ratio sits above the tokens-only one by that fixed cost."]
    lines += ["", "## Guidance plots", ""]
    for fam in families:
        png = _plot_family(out_dir, variants, fam)
        if png:
            lines += [f"![{fam}]({png})", ""]
    lines += ["## Samples (one row per class)", ""]
    for name, v in variants.items():
        png = f"grid_{name}.png"
        plots.sample_grid(out_dir / v["samples"], out_dir / png)
        lines += [f"**{name}**", "", f"![{name}]({png})", ""]
    sweep = [p for fam in families for p in notes.get(fam, {}).get("sweep", [])]
    if sweep:
        lines += ["## CCA sweep (guidance-free)", "", "| family | setting | classifier-FID | accuracy | precision | "
                  "recall |", "|---|---|---:|---:|---:|---:|"]
        for p in sweep:
            lines.append(f"| {p['family']} | {p['field']} = {p['value']:g} | {p['fid']:.2f} | {p['accuracy']:.3f} | "
                         f"{p['precision']:.3f} | {p['recall']:.3f} |")
        lines.append("")
    tuning = Path(__file__).with_name("TUNING.md")
    if tuning.is_file():
        lines += ["## How the CCA settings were chosen (sweeps recorded while developing the demo)", "",
                  tuning.read_text().strip(), ""]
    lines += ["## Training notes", ""]
    for fam in families:
        n = notes.get(fam, {})
        lines.append(f"- **{fam}** tokenizer: {json.dumps(n.get('tokenizer', {}))}")
        lines.append(f"- **{fam}** pretraining: {json.dumps(n.get('pretrain', {}))}")
        lines.append(f"- **{fam}** CCA: {json.dumps(n.get('cca', {}))}")
    lines += ["", "## Stage times (s)", "", "| stage | seconds | |", "|---|---:|---|"]
    for name, s in stage_seconds.items():
        lines.append(f"| {name} | {s:.1f} | {'cached' if name in skipped else ''} |")
    lines += ["", "## Settings", "", "```json", json.dumps(dataclasses.asdict(cfg), indent=1), "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def summary_lines(metrics: dict) -> list[str]:
    """Console summary: the table and the per-family checks."""
    out = variants_table(metrics["variants"])
    for fam in sorted({v["family"] for v in metrics["variants"].values()}):
        c = target_checks(metrics["variants"], fam)
        if c:
            out.append(f"{fam}: FID gap closed {c['fid_gap_closed']:.2f}, accuracy gap closed "
                       f"{c['accuracy_gap_closed']:.2f}, strictly better {c['pass_strictly_better']}, "
                       f"time ratio {c['time_ratio']:.2f} -> "
                       f"{'all targets met' if c['pass_all'] else 'targets NOT met'}")
    return out
