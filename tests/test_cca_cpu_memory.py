"""cca.cpu_memory: on glibc, freed tensors stay in the heap, so a CPU op loop stops page-faulting its memory in."""
import subprocess
import sys

import pytest

from cca.cpu_memory import keep_freed_memory

# 64 MB activations: above glibc's largest adaptive mmap threshold (32 MB), so by default every one is mapped
# fresh and faulted in page by page; with the heap kept, the freed block serves the next one
LOOP = """
import resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    from cca.cpu_memory import keep_freed_memory
    assert keep_freed_memory()
x = torch.randn(4000, 4000)                          # 64 MB; silu(x) allocates another 64 MB each call
with torch.inference_mode():
    for _ in range(3):
        torch.nn.functional.silu(x).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.nn.functional.silu(x).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux") or not keep_freed_memory(),
                                 reason="mallopt is glibc's (on other platforms the helper is a no-op)")


@glibc_linux
def test_tuned_allocator_stops_the_page_faults():
    default, tuned = _faults("default"), _faults("tuned")
    assert default > 20 * 8000, default                 # glibc's default: each 64 MB result faulted in again
    assert tuned < default / 4, (default, tuned)        # tuned: the freed block is reused (measured ~1/7)


def test_idempotent_and_boolean():
    first = keep_freed_memory()
    assert isinstance(first, bool) and keep_freed_memory() is first


@glibc_linux
def test_a_cli_process_on_cpu_tunes_the_allocator_and_the_library_does_not(monkeypatch):
    from cca import cli, cpu_memory, dist
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(dist, "_STATE", None)
    dist.init("cpu")
    assert calls == []                                   # no hidden side effect in the process-group helper
    monkeypatch.setattr(dist, "_STATE", None)
    cli.start_process("cpu")
    assert calls == [1]
    assert cpu_memory.keep_freed_memory() is True
