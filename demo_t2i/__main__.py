"""python3 -m demo_t2i [--data DIR] [--out DIR] [--quick] : text-to-image CCA in miniature (demo_t2i/README.md)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cca.cli import exits_on_errors, start_process
from cca.errors import UsageError
from demo.__main__ import add_data_and_out_flags, apply_override


@exits_on_errors
def override(cfg, text, assignment: str) -> None:
    """--set: 't2i.FIELD=V' the family's settings, 'text.FIELD=V' the text encoder's, else the demo's."""
    group, dot, rest = assignment.partition(".")
    if group == "t2i" and dot:          # the demo's override names its families; ours is 't2i'
        apply_override(cfg.family("t2i"), rest)
    elif group == "text" and dot:       # demo_t2i.config.TextConfig
        apply_override(text, rest)
    else:
        apply_override(cfg, assignment)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m demo_t2i", description=__doc__, allow_abbrev=False)
    add_data_and_out_flags(p, "demo_t2i_output")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline, not the claim")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads: 0 (default) auto, as python3 -m demo")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a setting, e.g. --set t2i.cca.lambda_=3 --set per_class=50 "
                        "--set text.train_steps=0")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")

    from cca.checkpoint import check_writable_dir
    from demo.cpuload import THREADS
    from demo.data import resolve_data_dir
    from demo.report import summary_lines
    from demo_t2i.config import full_config, quick_config
    from demo_t2i.pipeline import run_t2i_demo
    cfg, text = quick_config() if args.quick else full_config()
    for assignment in args.set:
        override(cfg, text, assignment)
    data_dir = resolve_data_dir(args.data)
    check_writable_dir(Path(args.out), "--out")
    THREADS.configure(args.threads)
    start_process("cpu")                      # the miniature runs on the CPU, in this one process
    t0 = time.perf_counter()
    metrics = run_t2i_demo(cfg, text, data_dir, Path(args.out), progress=not args.no_progress)
    print("\n".join(summary_lines(metrics)))
    print(f"[demo-t2i] wrote {Path(args.out) / 'report.md'} in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
