"""Foreign CPU load: what the rest of the machine runs while this process works, from Linux's /proc.

Busy jiffies of all CPUs (``/proc/stat``: user, nice, system, irq, softirq, steal) minus this process's own
(``/proc/self/stat``: utime, stime, all threads), divided by the elapsed jiffies per CPU: the number of cores
other work kept busy. Steal time counts as foreign (a hypervisor gave the core to someone else). Where /proc is
missing the load is nan: unknown, never taken for quiet.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Jiffies:
    busy: int          # all CPUs
    total: int         # all CPUs, busy + idle + iowait
    own: int           # this process, all threads
    cpus: int


def read_jiffies() -> Jiffies | None:
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        own_fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = ([int(v) for v in lines[0].split()[1:9]] + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    # after the ")" closing the command name, field 3 (state) comes first: utime, stime are fields 14, 15
    return Jiffies(busy, busy + idle + iowait, int(own_fields[11]) + int(own_fields[12]), max(1, cpus))


def foreign_cores(before: Jiffies | None, after: Jiffies | None) -> float:
    """Average number of cores kept busy by other processes between two readings (nan if unknown)."""
    if before is None or after is None:
        return float("nan")
    per_cpu = (after.total - before.total) / after.cpus
    if per_cpu <= 0:
        return float("nan")
    foreign = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, foreign / per_cpu)


class LoadMeter:
    """``with LoadMeter() as m: work()`` -> ``m.foreign`` (cores) and ``m.seconds`` of that stretch."""

    def __enter__(self) -> "LoadMeter":
        self._start, self._t0 = read_jiffies(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.foreign = foreign_cores(self._start, read_jiffies())


def measure_foreign(seconds: float = 0.5) -> float:
    """Foreign load over ``seconds`` of this process sleeping."""
    with LoadMeter() as m:
        time.sleep(seconds)
    return m.foreign


def wait_for_quiet(threshold: float, timeout: float, probe: float = 0.5) -> tuple[float, float]:
    """Probes the foreign load until it is at most ``threshold`` cores or ``timeout`` seconds have passed;
    returns (the last load seen, seconds waited)."""
    t0 = time.perf_counter()
    load = measure_foreign(probe)
    while not load <= threshold and time.perf_counter() - t0 + probe <= timeout:
        load = measure_foreign(probe)
    return load, time.perf_counter() - t0


def machine_description() -> dict:
    """CPU model (/proc/cpuinfo), logical CPUs, torch version and threads: what a run's numbers depend on."""
    import platform

    import torch
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        model += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return {"cpu": model, "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)")}
