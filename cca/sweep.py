"""Sweeps and trade-off curves: FID against IS over guidance scales of one checkpoint, or over a list of
checkpoints (a lambda or beta sweep of fine-tunes); one curve per series, guidance-free points ringed.

    python -m cca.sweep run --out sweeps/d16 --family var --series "VAR-d16 + CFG" --ckpt var_d16 --scales 0,1,1.5,3
    python -m cca.sweep run --out sweeps/d16 --family var --series "VAR-d16 + CCA" --param lambda \\
        --ckpts 10=local_output/lambda-10/ar-ckpt-last.pth,50=local_output/lambda-50/ar-ckpt-last.pth
    python -m cca.sweep plot --out sweeps/d16
    python -m cca.sweep lambda-commands --base var_d16 --lambdas 10,50,300 --data-path /path/to/imagenet

Every run into the same --out adds its series to ``points.json`` / ``points.csv`` / ``fid_is.png``. A point is
(series, label); a finished point with the same sampler and evaluator settings is skipped, so a rerun resumes
(and a killed point resumes its sampling). Works under torchrun like cca.reproduce (sampling on every rank).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from cca import sample_eval
from cca.checkpoint import write_text_atomic
from cca.cli import exits_on_errors
from cca.errors import UsageError
from cca.hub import TOKENIZERS
from cca.rows import METRICS, REF_256
from cca.sweep_commands import add_lambda_commands_parser, lambda_commands

CSV_FIELDS = ("series", "label", "param", "value", "guidance", "guidance_free", *METRICS, "ckpt", "ckpt_sha256",
              "samples")


@dataclass(frozen=True)
class Point:
    series: str
    label: str
    param: str
    value: float
    spec: sample_eval.PointSpec


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def _checkpoints(text: str) -> list[tuple[float, str]]:
    pairs = []
    for item in text.split(","):
        value, sep, ckpt = item.partition("=")
        if not sep or not ckpt:
            raise UsageError(f"--ckpts: expected VALUE=CHECKPOINT[,VALUE=CHECKPOINT...], got {item!r}")
        pairs.append((_floats(value, "--ckpts")[0], ckpt))
    return pairs


def points_of(args: argparse.Namespace) -> list[Point]:
    """The run's points: one checkpoint at each --scales value, or each --ckpts checkpoint at --guidance."""
    family = sample_eval.FAMILIES[args.family]
    tokenizer = args.tokenizer or TOKENIZERS[args.family]
    base = tuple(shlex.split(args.sampler_args))
    name = family.guidance_flag.lstrip("-")
    if args.scales is not None:
        if not args.ckpt or args.ckpts:
            raise UsageError("--scales needs --ckpt (one checkpoint) and no --ckpts")
        return [Point(args.series, f"{name}={s:g}", name, s, sample_eval.PointSpec(
            args.family, args.ckpt, tokenizer, base + (family.guidance_flag, f"{s:g}"))) for s in
            _floats(args.scales, "--scales")]
    if not args.ckpts or args.ckpt:
        raise UsageError("give --ckpt with --scales, or --ckpts VALUE=CHECKPOINT,... (with --param)")
    guidance = (family.guidance_flag, f"{family.guidance_free if args.guidance is None else args.guidance:g}")
    return [Point(args.series, f"{args.param}={v:g}", args.param, v,
                  sample_eval.PointSpec(args.family, ckpt, tokenizer, base + guidance))
            for v, ckpt in _checkpoints(args.ckpts)]


def point_key(point: Point, sample_dir: Path, opts: sample_eval.EvalOptions) -> str:
    run = sample_eval.plan(point.spec, sample_dir)
    return hashlib.sha256(json.dumps([run.argv, opts.argv(run.npz)]).encode()).hexdigest()


def record_of(point: Point, result: dict, key: str) -> dict:
    run, prov, ev = result["run"], result["provenance"], result["evaluation"]
    return {"series": point.series, "label": point.label, "param": point.param, "value": point.value,
            "guidance": run.guidance, "family": run.family,
            "guidance_free": run.guidance == sample_eval.FAMILIES[run.family].guidance_free,
            **ev["metrics"], "ckpt": point.spec.ckpt, "ckpt_sha256": prov["checkpoint"]["sha256"],
            "samples": str(run.npz), "device": prov["machine"]["device"], "evaluated": ev["evaluated"], "key": key}


def load_points(out: Path) -> list[dict]:
    path = out / "points.json"
    return json.loads(path.read_text()) if path.is_file() else []


def save_points(out: Path, records: list[dict]) -> None:
    write_text_atomic(out / "points.json", json.dumps(records, indent=1) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_text_atomic(out / "points.csv", buf.getvalue())
    plot(out, records)


def curves(records: list[dict]) -> list[dict]:
    """One chart series per sweep series: (IS, FID) points in order of the swept value, guidance-free ringed."""
    from evaluations.plots import PALETTE
    names = list(dict.fromkeys(r["series"] for r in records))
    out = []
    for i, name in enumerate(names):
        pts = sorted((r for r in records if r["series"] == name and r.get("fid") is not None
                      and r.get("inception_score") is not None), key=lambda r: r["value"])
        if pts:
            out.append({"label": name, "color": PALETTE[i % len(PALETTE)], "x": [r["inception_score"] for r in pts],
                        "y": [r["fid"] for r in pts], "texts": [f"{r['value']:g}" for r in pts],
                        "rings": [j for j, r in enumerate(pts) if r["guidance_free"]]})
    return out


def plot(out: Path, records: list[dict]) -> Path | None:
    from evaluations.plots import chart
    series = curves(records)
    if not series:
        return None
    return chart(out / "fid_is.png", "FID against IS (lower right is better)", "Inception Score", "FID", series,
                 note="ringed: guidance-free point (one forward per token); numbers: swept value")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    sample_dir = out / "samples"
    opts = sample_eval.EvalOptions(Path(args.ref), args.inception_weights, args.eval_batch_size, args.eval_device,
                                   args.is_split_size, args.inception_resolution)
    opts.check()
    points = points_of(args)
    keys = [point_key(p, sample_dir, opts) for p in points]       # every sampler flag checked before sampling
    for p in points:
        p.spec.check()
    records = load_points(out)
    for point, key in zip(points, keys):
        done = [r for r in records if (r["series"], r["label"]) == (point.series, point.label)]
        if done and done[0]["key"] == key:
            continue
        result = sample_eval.run_point(point.spec, sample_dir, opts)
        if result is None:               # not rank 0: on to the next point's sampling
            continue
        records = [r for r in records if r not in done] + [record_of(point, result, key)]
        save_points(out, records)
        rec = records[-1]
        print(f"[cca.sweep] {point.series} {point.label}: FID {rec['fid']}, IS {rec['inception_score']}", flush=True)
    if sample_eval.is_main_process():
        save_points(out, records)
        print(f"[cca.sweep] {len(records)} points in {out / 'points.csv'}; curve {out / 'fid_is.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cca.sweep", description=__doc__.strip().splitlines()[0],
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="sample and score every point, then redraw", allow_abbrev=False)
    r.add_argument("--out", required=True, help="sweep folder (points.json, points.csv, fid_is.png, samples/)")
    r.add_argument("--family", choices=sorted(sample_eval.FAMILIES), required=True)
    r.add_argument("--series", required=True, help="curve name, e.g. 'VAR-d16 + CFG'")
    r.add_argument("--ckpt", help="one checkpoint (release name or path), swept over --scales")
    r.add_argument("--scales", help="guidance values in the family's convention (VAR --cfg, LlamaGen --cfg-scale)")
    r.add_argument("--ckpts", help="VALUE=CHECKPOINT,...: one point per checkpoint, e.g. 10=a.pth,50=b.pth")
    r.add_argument("--param", default="lambda", help="name of the value in --ckpts (lambda, beta, ...)")
    r.add_argument("--guidance", type=float,
                   help="guidance for every --ckpts point (default: none, the family's guidance-free value)")
    r.add_argument("--tokenizer", help="tokenizer (default: the family's released one)")
    r.add_argument("--sampler-args", default="", help="sampler flags for every point, e.g. '--num_per_class 10'")
    r.add_argument("--ref", default=REF_256, help="reference batch")
    r.add_argument("--inception-weights")
    r.add_argument("--eval-batch-size", type=int, default=64)
    r.add_argument("--eval-device", default="auto")
    r.add_argument("--is-split-size", type=int, default=5000)
    r.add_argument("--inception-resolution", type=int, default=299)
    pl = sub.add_parser("plot", help="redraw fid_is.png and points.csv from points.json", allow_abbrev=False)
    pl.add_argument("--out", required=True)
    add_lambda_commands_parser(sub)
    return p


@exits_on_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "plot":
        records = load_points(Path(args.out))
        if not records:
            raise UsageError(f"--out {args.out}: no points.json with finished points")
        save_points(Path(args.out), records)
        print(f"wrote {Path(args.out) / 'fid_is.png'} ({len(records)} points)")
        return 0
    print(lambda_commands(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
