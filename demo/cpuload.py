"""Foreign CPU load: what the rest of the machine runs while this process works, from Linux's /proc.

Busy jiffies of all CPUs (``/proc/stat``: user, nice, system, irq, softirq, steal) minus this process's own
(``/proc/self/stat``: utime, stime, all threads), divided by the elapsed jiffies per CPU: the number of cores
other work kept busy. Steal time counts as foreign (a hypervisor gave the core to someone else). Where /proc is
missing the load is nan: unknown, never taken for quiet.
"""
from __future__ import annotations

import math
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


class ThreadPolicy:
    """The demo's torch thread count: fixed, or 'auto': every core unless other processes keep some busy.

    Auto decides from the foreign load since its last decision (no extra waiting: the jiffies of the work just
    done), at every stage start and every ``every`` seconds inside the long loops (``adapt``):
    threads = cores - round(foreign load), at least 1. Two threads that spin-wait in OpenMP barriers next to a busy
    process run several times slower than one (demo/README.md has the measurements); one thread on the free core
    does not. Thread counts change the floating-point summation order, so the record of switches goes into the
    report: runs that used the same threads throughout give the same numbers on one machine."""

    def __init__(self):
        self._reset(auto=False, every=10.0)

    def _reset(self, auto: bool, every: float) -> None:
        self.auto, self.every = auto, every
        self._last: Jiffies | None = read_jiffies() if auto else None
        self._decided = self._t = time.perf_counter()
        self.seconds_at: dict[int, float] = {}            # threads -> seconds of work at that count
        self.switches: list[dict] = []

    def configure(self, threads: int, every: float = 10.0) -> None:
        """``threads`` > 0: fixed; 0: auto (first decision after half a second of measuring)."""
        import torch
        self._reset(threads == 0, every)
        if threads:
            torch.set_num_threads(threads)
            return
        time.sleep(0.5)
        self.adapt(force=True)

    def usage(self) -> dict[int, float]:
        """Seconds of work at each thread count so far (since ``configure``)."""
        import torch
        now, current = time.perf_counter(), torch.get_num_threads()
        self.seconds_at[current] = self.seconds_at.get(current, 0.0) + now - self._t
        self._t = now
        return dict(self.seconds_at)

    def adapt(self, force: bool = False) -> int:
        """Re-decides (auto only) when ``every`` seconds have passed, or now with ``force``; returns the count."""
        import torch
        current, now = torch.get_num_threads(), time.perf_counter()
        if not self.auto or now - self._decided < (0.5 if force else self.every):   # a decision needs data
            return current
        reading = read_jiffies()
        foreign = foreign_cores(self._last, reading)
        self._last, self._decided = reading, now
        cpus = reading.cpus if reading else (os.cpu_count() or 1)
        wanted = current if math.isnan(foreign) else max(1, min(cpus, cpus - int(round(foreign))))
        if wanted != current:
            self.usage()
            torch.set_num_threads(wanted)
            self.switches.append({"to": wanted, "foreign_load": round(foreign, 2)})
        return wanted

    def summary(self) -> dict:
        """{'mode', 'seconds_at_threads' (seconds of work per thread count), 'switches'}."""
        return {"mode": "auto" if self.auto else "fixed",
                "seconds_at_threads": {str(k): round(v, 1) for k, v in sorted(self.usage().items())},
                "switches": len(self.switches)}


THREADS = ThreadPolicy()


def machine_description() -> dict:
    """CPU model (/proc/cpuinfo), logical CPUs, torch version: what a run's numbers depend on (with the threads)."""
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
    return {"cpu": model, "cpus": os.cpu_count(), "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)")}
