"""Cached pipeline stages: a stage's result JSON (``<cache>/<name>.json``) is written last, with the key of the
settings that produced it; a rerun with the same key and its output files present skips the stage."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cca.checkpoint import load_state_dict_file, load_strict, save_safetensors_atomic
from demo.cpuload import THREADS


class StageCache:
    def __init__(self, root: Path, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.seconds: dict[str, float] = {}     # stage -> compute seconds (recorded when it ran)
        self.threads: dict[str, dict] = {}      # stage -> {thread count: seconds} (recorded when it ran)
        self.skipped: list[str] = []

    def path(self, name: str, suffix: str) -> Path:
        return self.root / f"{name}{suffix}"

    def run(self, name: str, key: str, compute: Callable[[], dict], outputs: tuple[Path, ...] = ()) -> dict:
        meta_path = self.path(name, ".json")
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                meta = {}
            if meta.get("key") == key and all(Path(p).exists() for p in outputs):
                self.seconds[name] = float(meta.get("seconds", 0.0))
                self.threads[name] = meta.get("threads", {})
                self.skipped.append(name)
                self.log(f"[demo] {name}: cached ({meta.get('seconds', 0):.0f}s when computed)")
                return meta["result"]
        THREADS.adapt(force=True)
        self.log(f"[demo] {name}: running")
        t0, before = time.perf_counter(), THREADS.usage()
        result = compute()
        seconds = time.perf_counter() - t0
        self.seconds[name] = seconds
        self.threads[name] = {str(n): round(s - before.get(n, 0.0), 1) for n, s in THREADS.usage().items()
                              if s - before.get(n, 0.0) >= 0.05}
        tmp = meta_path.with_name(meta_path.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "seconds": seconds, "threads": self.threads[name], "result": result},
                                  indent=1))
        os.replace(tmp, meta_path)
        used = ", ".join(f"{s:.0f}s at {n}" for n, s in self.threads[name].items())
        self.log(f"[demo] {name}: done in {seconds:.0f}s ({used} threads)")
        return result


def save_module(module: nn.Module, path: Path) -> None:
    save_safetensors_atomic({k: v.detach().clone() for k, v in module.state_dict().items()}, path)


def load_module(module: nn.Module, path: Path) -> nn.Module:
    load_strict(module, load_state_dict_file(path), source=str(path))
    return module.eval()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_safetensors_atomic(tensors, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))
