"""One command from a released checkpoint to the paper's numbers.

    python -m cca.reproduce --list
    python -m cca.reproduce var-d16-cca [MORE ROWS] [--out results] [--ref-dir DIR] [--inception-weights PATH]
    torchrun --nproc_per_node=8 -m cca.reproduce llamagen-XL-cca       # sampling on every rank, scoring on rank 0

For each row (cca/rows.py, explained in docs/reproduce.md): sample with the family's sampler, record provenance,
score with evaluations/evaluator.py, then append one line to ``<out>/results.jsonl`` and rewrite the markdown view
``<out>/results.md``. Rerunning resumes every stage: sampling from ``.parts/``, the provenance and metrics from
their json files beside the npz; a row already in results.jsonl with the same samples and scoring is not added twice.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

from cca import sample_eval
from cca.checkpoint import write_text_atomic
from cca.cli import exits_on_errors
from cca.errors import UsageError
from cca.rows import METRICS, ROWS, SOURCES, Row


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cca.reproduce", description=__doc__.strip().splitlines()[0],
                                allow_abbrev=False)
    p.add_argument("rows", nargs="*", help="row ids (--list shows them)")
    p.add_argument("--list", action="store_true", help="print the known rows and exit")
    p.add_argument("--commands", action="store_true",
                   help="print each row's sampler and evaluator commands (the manual route) and exit")
    p.add_argument("--rows-file", help="JSON file of extra rows: {id: {family, ckpt, sampler_args, title, ...}}")
    p.add_argument("--out", default="results", help="results.jsonl / results.md folder")
    p.add_argument("--sample-dir", help="where samples go (default: <out>/samples)")
    p.add_argument("--ref-dir", default=".", help="folder holding the rows' reference batches")
    p.add_argument("--ref", help="reference batch to use instead of <ref-dir>/<the row's>")
    p.add_argument("--sampler-args", default="", help="extra sampler flags, appended (recorded in the results)")
    p.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (see evaluations/README.md)")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--eval-device", default="auto")
    p.add_argument("--is-split-size", type=int, default=5000, help="Inception Score split (ADM: 5000)")
    p.add_argument("--inception-resolution", type=int, default=299, help="299 (ADM); smaller only for smoke tests")
    return p


def load_rows(rows_file: str | None) -> dict[str, Row]:
    rows = dict(ROWS)
    if rows_file:
        try:
            extra = json.loads(Path(rows_file).read_text())
            for rid, spec in extra.items():
                expected = {k: (float(v), "rows-file") for k, v in spec.pop("expected", {}).items()}
                rows[rid] = Row(rid, sampler_args=tuple(spec.pop("sampler_args", ())), expected=expected, **spec)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise UsageError(f"--rows-file {rows_file}: {type(e).__name__}: {e} (expected {{id: {{family, ckpt, "
                             f"sampler_args, title, expected}}}})") from None
    return rows


def print_rows(rows: dict[str, Row]) -> None:
    for r in rows.values():
        fid = r.expected.get("fid", (None,))[0]
        print(f"{r.id:24s} {r.title:52s} {r.ckpt:30s} FID {fid if fid is not None else '-'}")


def manual_commands(spec: sample_eval.PointSpec, sample_dir: Path, opts: sample_eval.EvalOptions) -> str:
    """The sampler command (8 GPUs) and the evaluator command that this row runs."""
    run = sample_eval.plan(spec, sample_dir)
    script = f"{sample_eval.FAMILIES[spec.family].script}.py"
    return "\n".join([f"torchrun --nproc_per_node=8 {script} {shlex.join(run.argv)}",
                      f"python evaluations/evaluator.py {shlex.join(opts.argv(run.npz))}"])


def result_record(row: Row, point: dict, extra_args: list[str]) -> dict:
    prov, ev = point["provenance"], point["evaluation"]
    key_src = json.dumps([row.id, prov["samples"]["sha256"], ev["key"]], sort_keys=True)
    return {"row": row.id, "title": row.title, "family": row.family,
            "measured": ev["metrics"], "expected": {k: v for k, (v, _) in row.expected.items()},
            "sources": {k: SOURCES.get(s, s) for k, (_, s) in row.expected.items()}, "note": row.note,
            "extra_sampler_args": extra_args, "checkpoint": prov["checkpoint"], "tokenizer": prov["tokenizer"],
            "sampler": prov["sampler"], "settings": prov["settings"], "samples": prov["samples"],
            "sampling_machine": prov["machine"], "git_commit": prov["git_commit"],
            "evaluation": {k: ev[k] for k in ("feature_net", "weights_sha256", "reference", "machine", "evaluated")},
            "key": hashlib.sha256(key_src.encode()).hexdigest()}


def append_result(out_dir: Path, record: dict) -> bool:
    """Add ``record`` to results.jsonl unless an entry with its key is there; rewrite results.md. True if added."""
    path = out_dir / "results.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    added = all(r.get("key") != record["key"] for r in records)
    if added:
        records.append(record)
        write_text_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in records))
    write_text_atomic(out_dir / "results.md", markdown(records))
    return added


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def markdown(records: list[dict]) -> str:
    """The results table: measured next to the paper's number for each metric, plus what made the samples."""
    head = ["row", *(f"{m} (paper)" for m in METRICS), "checkpoint sha256", "samples", "device", "evaluated"]
    lines = ["# Results (python -m cca.reproduce)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in records:
        cells = [r["row"] + (" *" if r["extra_sampler_args"] else "")]
        cells += [f"{_fmt(r['measured'].get(m))} ({_fmt(r['expected'].get(m))})" for m in METRICS]
        ck = r["checkpoint"]
        mark = {True: " (published)", False: " (DIFFERS from published)"}.get(ck.get("matches_published"), "")
        cells += [f"`{ck['sha256'][:12]}`{mark}", Path(r["samples"]["path"]).name,
                  f"{r['sampling_machine']['device']} x{r['sampling_machine']['world_size']}",
                  r["evaluation"]["evaluated"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "`*`: sampled with extra sampler flags (see `extra_sampler_args` in results.jsonl). "
              "Paper numbers and their sources: docs/reproduce.md.", ""]
    return "\n".join(lines)


@exits_on_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = load_rows(args.rows_file)
    if args.list:
        print_rows(rows)
        return 0
    unknown = [r for r in args.rows if r not in rows]
    if unknown or not args.rows:
        raise UsageError(f"cca.reproduce: unknown or no row id(s) {unknown}; known: {', '.join(rows)}")
    out = Path(args.out)
    sample_dir = Path(args.sample_dir) if args.sample_dir else out / "samples"
    extra = shlex.split(args.sampler_args)
    jobs = []
    for rid in args.rows:            # every check before any sampling
        row = rows[rid]
        opts = sample_eval.EvalOptions(Path(args.ref) if args.ref else Path(args.ref_dir) / row.ref,
                                       args.inception_weights, args.eval_batch_size, args.eval_device,
                                       args.is_split_size, args.inception_resolution)
        spec = sample_eval.PointSpec(row.family, row.ckpt, row.tokenizer_name, row.sampler_args + tuple(extra))
        if args.commands:
            print(f"# {row.id}: {row.title}\n{manual_commands(spec, sample_dir, opts)}")
            continue
        opts.check()
        sample_eval.plan(spec, sample_dir)
        spec.check()
        jobs.append((row, spec, opts))
    for row, spec, opts in jobs:
        point = sample_eval.run_point(spec, sample_dir, opts)
        if point is None:
            continue
        record = result_record(row, point, extra)
        added = append_result(out, record)
        summary = ", ".join(f"{m} {_fmt(record['measured'].get(m))} (paper {_fmt(record['expected'].get(m))})"
                            for m in METRICS if record["measured"].get(m) is not None)
        print(f"[cca.reproduce] {row.id}: {summary}" + ("" if added else " (already in results.jsonl)"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
