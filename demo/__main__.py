"""python3 -m demo [--data DIR] [--out DIR] [--quick] ... : CCA in miniature on Fashion-MNIST (see demo/README.md)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from cca.cli import exits_on_errors, start_process
from cca.errors import UsageError
from demo.config import CCAConfig, check_cca_fields


def parse_value(text: str, like):
    if isinstance(like, bool):
        if text.lower() not in ("0", "1", "true", "false"):
            raise ValueError(f"expected true/false, got {text!r}")
        return text.lower() in ("1", "true")
    if isinstance(like, (list, dict)) or like is None:
        return json.loads(text)
    return type(like)(text)


def apply_override(cfg, assignment: str, flag: str = "--set") -> None:
    """'llamagen.cca.lambda_=300' or 'per_class=50' -> sets that field (cast to the field's type)."""
    path, eq, text = assignment.partition("=")
    if not eq:
        raise UsageError(f"{flag} {assignment!r}: expected FIELD=VALUE, e.g. llamagen.cca.lambda_=300")
    parts = path.split(".")
    obj = cfg
    try:
        if parts[0] in ("llamagen", "var"):
            obj = cfg.family(parts[0])
            parts = parts[1:]
        for p in parts[:-1]:
            obj = getattr(obj, p)
        if not dataclasses.is_dataclass(obj) or parts[-1] not in {f.name for f in dataclasses.fields(obj)}:
            raise AttributeError(parts[-1])
        setattr(obj, parts[-1], parse_value(text, getattr(obj, parts[-1])))
    except (AttributeError, KeyError, IndexError):
        raise UsageError(f"{flag} {assignment!r}: no such setting (see the Settings section of report.md)") from None
    except (ValueError, json.JSONDecodeError) as e:
        raise UsageError(f"{flag} {assignment!r}: bad value ({e})") from None


def _cca_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(CCAConfig)}


def parse_sweep(text: str) -> list[tuple[str, dict]]:
    """'llamagen.lambda_=10,100,1000' -> one extra CCA point per value: [('llamagen', {'lambda_': 10.0}), ...]."""
    path, eq, values = text.partition("=")
    fam, dot, field = path.partition(".")
    if not eq or not dot or fam not in ("llamagen", "var") or field not in _cca_fields():
        raise UsageError(f"--sweep {text!r}: expected FAMILY.CCA_FIELD=V1,V2,... (e.g. var.lambda_=10,50,200)")
    try:
        points = [(fam, {field: float(v)}) for v in values.split(",") if v]
    except ValueError:
        raise UsageError(f"--sweep {text!r}: values must be numbers") from None
    check_cca_fields(fam, [field], f"--sweep {text!r}")
    return points


def parse_point(text: str) -> tuple[str, dict]:
    """'llamagen.lambda_=2,beta=0.05' -> ('llamagen', {'lambda_': 2.0, 'beta': 0.05}): one extra CCA run."""
    fam, dot, rest = text.partition(".")
    settings = {}
    for item in rest.split(","):
        field, eq, value = item.partition("=")
        if fam not in ("llamagen", "var") or not dot or not eq or field not in _cca_fields():
            raise UsageError(f"--point {text!r}: expected FAMILY.CCA_FIELD=V,CCA_FIELD=V,... "
                             f"(e.g. llamagen.lambda_=2,beta=0.05)")
        try:
            settings[field] = float(value)
        except ValueError:
            raise UsageError(f"--point {text!r}: values must be numbers") from None
    check_cca_fields(fam, settings, f"--point {text!r}")
    return fam, settings


def add_data_and_out_flags(p: argparse.ArgumentParser, out: str) -> None:
    """--data and --out of the miniatures (python3 -m demo, python3 -m demo_t2i)."""
    p.add_argument("--data", default=None, help="Fashion-MNIST IDX folder (default: $FASHION_MNIST_DIR, else "
                                               "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", default=out, help="output folder (stage cache in OUT/cache)")


@exits_on_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m demo", description=__doc__, allow_abbrev=False)
    add_data_and_out_flags(p, "demo_output")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline, not the claim (< 3 min)")
    p.add_argument("--families", default="llamagen,var", help="comma-separated subset of llamagen,var")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads: 0 (default) auto, every core unless other processes keep some busy "
                        "(re-decided as the run goes, see demo/README.md); N: fixed")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a setting, e.g. --set llamagen.cca.lambda_=300 --set per_class=50")
    p.add_argument("--sweep", action="append", default=[], metavar="FAMILY.FIELD=V1,V2",
                   help="extra CCA runs over one CCA setting, scored guidance-free, e.g. var.lambda_=10,50,200")
    p.add_argument("--point", action="append", default=[], metavar="FAMILY.FIELD=V,FIELD=V",
                   help="one extra CCA run with these CCA settings, scored guidance-free, e.g. "
                        "llamagen.lambda_=2,beta=0.05")
    p.add_argument("--seeds", type=int, default=1, help="repeat the CCA fine-tune and all sampling with this many "
                                                        "run seeds and report mean +- spread (default 1)")
    p.add_argument("--curves", action="store_true",
                   help="also CCA fine-tune each family at the lambdas of its curve_lambdas setting and draw the "
                        "CCA lambda curve beside the CFG-scale curve (FID against accuracy, curves_<family>.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    from demo.config import full_config, quick_config
    from demo.data import resolve_data_dir
    cfg = quick_config() if args.quick else full_config()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in families if f not in ("llamagen", "var")]
    if bad or not families:
        raise UsageError(f"--families: expected a comma-separated subset of llamagen,var, got {args.families!r}")
    for assignment in args.set:
        apply_override(cfg, assignment)
    for fc in cfg.families:
        check_cca_fields(fc.family, {**fc.cca.train_key(), **fc.cca.sampling_changes()}, "--set")
    points = [pt for s in args.sweep for pt in parse_sweep(s)] + [parse_point(s) for s in args.point]
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    data_dir = resolve_data_dir(args.data)
    out_dir = Path(args.out)
    from cca.checkpoint import check_writable_dir
    check_writable_dir(out_dir, "--out")
    from demo.cpuload import THREADS
    THREADS.configure(args.threads)
    start_process("cpu")                      # the miniature runs on the CPU, in this one process
    from demo.pipeline import run_demo
    from demo.report import summary_lines
    t0 = time.perf_counter()
    metrics = run_demo(cfg, data_dir, out_dir, families, progress=not args.no_progress, points=points,
                       seeds=args.seeds, curves=args.curves)
    print("\n".join(summary_lines(metrics)))
    print(f"[demo] wrote {out_dir / 'report.md'} and {out_dir / 'metrics.json'} in "
          f"{(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
