"""The miniature of the paper's trade-off figure (``--curves``): per family, CCA fine-tuned at several lambda
values and sampled guidance-free, beside the base model sampled at growing CFG scales, both in classifier-FID
against accuracy under every feature network."""
from __future__ import annotations

from pathlib import Path

from demo import plots

NUMBERS = ("fid", "fid_ci", "accuracy", "accuracy_ci")


def curve_settings(lambdas: list[float], default_lambda: float) -> list[dict]:
    """The extra CCA settings of a family's lambda curve: {} stands for the main CCA run (its own lambda)."""
    return [{} if float(lam) == float(default_lambda) else {"lambda_": float(lam)} for lam in lambdas]


def _numbers(scores: dict) -> dict:
    return {net: {k: s[k] for k in NUMBERS} for net, s in scores.items()}


def family_curve(variants: dict, family: str, seed: int, cca_runs: list[tuple[float, str, dict]]) -> dict:
    """{'cfg': [{cfg, variant, scores}] guidance-free first, then growing scales; 'cca': [{lambda, variant,
    scores}] by growing lambda} of one family and run seed; ``cca_runs``: (lambda, variant name, scores)."""
    base = sorted(((n, v) for n, v in variants.items()
                   if v["family"] == family and v["seed"] == seed and v["model"] == "base"),
                  key=lambda item: (item[1]["guided"], item[1]["cfg"]))
    return {"cfg": [{"cfg": v["cfg"], "variant": n, "scores": _numbers(v["scores"])} for n, v in base],
            "cca": [{"lambda": lam, "variant": n, "scores": _numbers(s)} for lam, n, s in sorted(cca_runs)]}


def curves_section(curves: dict, nets: list[str], cfg_labels: dict) -> list[str]:
    """Report lines: each family's picture and its numbers (95 % intervals from the bootstrap of the samples)."""
    if not curves:
        return []
    lines = ["## CFG-scale and CCA lambda curves", "",
             "Base model sampled with growing CFG scale against CCA fine-tunes at growing lambda sampled "
             "guidance-free (`--curves`), classifier-FID against accuracy: the miniature of the paper's trade-off "
             "figure. Each point is labelled with its scale or lambda.", ""]
    for fam, curve in curves.items():
        lines += [f"![{fam} curves](curves_{fam}.png)", "", "| family | series | setting | " +
                  " | ".join(f"{net} FID [95 %] | {net} acc. [95 %]" for net in nets) + " |",
                  "|---|---|---|" + "---|---|" * len(nets)]
        rows = [("base + CFG", f"{cfg_labels.get(fam, 'cfg').split(' ')[0]} {p['cfg']:g}", p) for p in curve["cfg"]]
        rows += [("CCA, guidance-free", f"lambda {p['lambda']:g}", p) for p in curve["cca"]]
        for series, setting, p in rows:
            cells = [f"{s['fid']:.2f} [{s['fid_ci'][0]:.2f}, {s['fid_ci'][1]:.2f}] | {s['accuracy']:.3f} "
                     f"[{s['accuracy_ci'][0]:.3f}, {s['accuracy_ci'][1]:.3f}]" for s in (p["scores"][n] for n in nets)]
            lines.append(f"| {fam} | {series} | {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def draw_curves(out_dir: Path, curves: dict, nets: list[str]) -> list[Path]:
    """curves_<family>.png for every family: one panel per network."""
    return [plots.curve_plot(out_dir / f"curves_{fam}.png", fam, curve, nets) for fam, curve in curves.items()]
