"""How the demo's CPU work slows down when another process is busy, per thread count and OpenMP wait policy.

    python3 -m demo.threadcheck                     # every configuration (~10 min; under `flock /work/cpu.lock`)
    python3 -m demo.threadcheck --configs 2,auto    # some of them

Each configuration runs in a fresh process (OpenMP reads OMP_WAIT_POLICY / GOMP_SPINCOUNT when it starts) and
times two of the demo's workloads at the full run's sizes with random weights: LlamaGen pretraining steps (dim
256 x 8 layers, batch 64: many small parallel regions) and guidance-free sampling of 500 images (larger ones).
"busy" starts one process spinning on a core beside it. "auto" is the demo's default thread policy
(``demo.cpuload.ThreadPolicy``, re-deciding every second here). The configurations take turns over ``--rounds`` rounds;
each time is the fastest round, printed with the load other processes (beyond the spinner) put on the machine
during it (demo.cpuload), since a shared machine is never quite quiet.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from cca.cli import exits_on_errors
from cca.errors import UsageError

SPIN = "while True: pass"
CONFIGS = {"1": (1, {}), "2": (2, {}), "2-passive": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
           "2-spin10k": (2, {"GOMP_SPINCOUNT": "10000"}), "auto": (0, {})}       # label: (--threads, environment)


def workload(kind: str, threads: int) -> tuple[float, float]:
    """(seconds, foreign load in cores) of one timed run of ``kind`` ('train' or 'sample') after a warm-up."""
    import torch

    from demo.cpuload import THREADS, LoadMeter
    from demo.pretrain import build_llamagen_gpt, llamagen_loss
    from LlamaGen.generate import generate
    THREADS.configure(threads, every=1.0)
    torch.manual_seed(0)
    gpt = build_llamagen_gpt(vocab_size=256, grid=4, dim=256, n_layer=8, n_head=4)
    codes, labels = torch.randint(256, (64, 16)), torch.randint(10, (64,))
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-4)

    def train(steps: int) -> None:
        gpt.train()
        for _ in range(steps):
            THREADS.adapt()
            opt.zero_grad()
            llamagen_loss(gpt, codes, labels).backward()
            opt.step()

    def sample(n: int) -> None:
        gpt.eval()
        with torch.inference_mode():
            THREADS.adapt()
            generate(gpt, torch.arange(n) % 10, 16, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
                     generator=torch.Generator().manual_seed(0))
    run, size, warm = (train, 8, 2) if kind == "train" else (sample, 500, 50)
    run(warm)
    with LoadMeter() as m:
        run(size)
    return m.seconds, m.foreign


def timed_config(threads: int, env_extra: dict, kind: str, busy: bool, timeout: float) -> tuple[float, float]:
    """(seconds, foreign load beyond the spinner) of one run in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(env_extra)
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        out = subprocess.run([sys.executable, "-m", "demo.threadcheck", "--worker", kind, "--threads", str(threads)],
                             env=env,
                             capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return float("inf"), float("nan")
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    seconds, load = (float(v) for v in out.stdout.split()[-2:])
    return seconds, max(0.0, load - (1.0 if busy else 0.0))


@exits_on_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m demo.threadcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--worker", choices=["train", "sample"], help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3, help="runs of each configuration (the fastest is kept)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per run before it counts as too slow")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(*workload(args.worker, args.threads))
        return 0
    labels = [c for c in args.configs.split(",") if c]
    if not labels or any(c not in CONFIGS for c in labels):
        raise UsageError(f"--configs {args.configs!r}: expected a comma-separated subset of {','.join(CONFIGS)}")
    from demo.cpuload import machine_description
    print(f"machine: {machine_description()}; load average before: {open('/proc/loadavg').read().split()[:3]}")
    best: dict = {}
    for _ in range(args.rounds):
        for kind in ("train", "sample"):
            for label in labels:
                for busy in (False, True):
                    seconds, load = timed_config(*CONFIGS[label], kind, busy, args.timeout)
                    key = (kind, label, busy)
                    best[key] = min(best.get(key, (float("inf"), float("nan"))), (seconds, load))
    print("| workload | threads | environment | quiet s (other load) | busy s (other load) | busy / quiet |\n"
          "|---|---|---|---|---|---:|")
    for kind in ("train", "sample"):
        for label in labels:
            threads, env = CONFIGS[label]
            (q, ql), (b, bl) = best[(kind, label, False)], best[(kind, label, True)]
            print(f"| {kind} | {threads or 'auto'} | {' '.join(f'{k}={v}' for k, v in env.items()) or '-'} | "
                  f"{q:.2f} ({ql:.2f}) | {b:.2f} ({bl:.2f}) | {b / q:.1f} |")
    print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
