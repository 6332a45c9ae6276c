"""demo.cpuload and the timing stage's load detection, against a deliberately busy process."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from demo.cpuload import Jiffies, LoadMeter, ThreadPolicy, foreign_cores, read_jiffies
from demo.samplers import TimingPolicy, Variant, time_variants


@pytest.fixture
def spinner():
    """A process spinning on one core for the length of the test."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)                                   # let it start spinning
    yield proc
    proc.kill()
    proc.wait()


def test_foreign_cores_subtracts_this_process():
    before = Jiffies(busy=1000, total=4000, own=100, cpus=2)
    after = Jiffies(busy=1300, total=4400, own=250, cpus=2)      # 200 jiffies per CPU; 300 busy, 150 ours
    assert foreign_cores(before, after) == pytest.approx(0.75)
    assert foreign_cores(before, Jiffies(1000, 4400, 250, 2)) == 0.0     # never negative
    assert np.isnan(foreign_cores(None, after)) and np.isnan(foreign_cores(before, before))


def test_reading_proc_counts_this_process():
    start, cpu0 = read_jiffies(), time.process_time()
    while time.process_time() - cpu0 < 0.3:          # 0.3 s of our own CPU time, however busy the machine is
        pass
    end, spent = read_jiffies(), time.process_time() - cpu0
    tick = os.sysconf("SC_CLK_TCK")
    assert end.own - start.own == pytest.approx(spent * tick, abs=0.05 * tick)
    assert end.busy - start.busy >= end.own - start.own and end.cpus >= 1


def test_a_busy_process_is_seen(spinner):
    with LoadMeter() as m:
        time.sleep(1.0)
    assert m.foreign >= 0.5 and m.seconds >= 1.0


def work(labels, seed):
    """A fixed amount of CPU work (one thread), standing in for a sampler."""
    x = torch.full((256, 256), 0.01)
    for _ in range(30):
        x = torch.tanh(x @ x)
    return np.zeros((len(labels), 2, 2, 3), np.uint8)


def test_timing_under_a_busy_process_is_flagged_or_unaffected(spinner):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        variants = [Variant(n, "f", m, g, c, work) for n, m, g, c in
                    (("cca", "cca", False, 0.0), ("cfg", "base", True, 1.0))]
        policy = TimingPolicy(quiet_load=0.1, patience=1.0, retries=1)
        busy, load = time_variants(variants, batch_size=10, rounds=2, paired="cca", policy=policy, progress=False)
        spinner.kill()
        spinner.wait()
        quiet, _ = time_variants(variants, batch_size=10, rounds=2, paired="cca", policy=policy, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert load["batches"] >= 6 and load["max_load"] >= 0.5          # the spinner was seen
    for name in ("cca", "cfg"):
        flagged = not busy[name]["sec_per_image_quiet"] and busy[name]["sec_per_image_load"] > 0.1
        unaffected = busy[name]["sec_per_image"] <= 1.25 * quiet[name]["sec_per_image"]
        assert flagged or unaffected, (name, busy[name], quiet[name])


def test_auto_threads_leave_a_busy_core_to_its_process(spinner):
    """Auto mode: with one core kept busy by another process, the next decision uses the cores left (at least
    one); a fixed count never changes."""
    policy = ThreadPolicy()
    threads = torch.get_num_threads()
    try:
        policy.configure(0, every=0.2)
        time.sleep(1.2)
        got = policy.adapt(force=True)
        cpus = read_jiffies().cpus
        assert got == max(1, cpus - 1) or (cpus > 2 and got < cpus), (got, cpus, policy.switches)
        assert policy.summary()["mode"] == "auto"
        policy.configure(2)
        time.sleep(0.3)
        assert policy.adapt(force=True) == 2 and policy.summary()["switches"] == 0
    finally:
        torch.set_num_threads(threads)
