"""VAR's per-scale sampling steps captured as CUDA graphs, one per scale, over static buffers.

An eager scale step of VAR-d16 is a few hundred small kernels; at moderate batch the GPU waits on their launches,
and running 2B rows costs about as much as B. A graph replays the whole step with one launch. The graphs of a model
are captured at its first sampling run of a given shape (rows, autocast dtype) and replayed by every later one; they
are captured again if the model's parameters move to new storage (a load that assigns new tensors). Sampling
(random, with the run's generator) and the VQVAE side of each step stay outside the graphs.

``GraphedScaleSteps(var, rows, capture=False)`` runs the very same buffer copies and step functions eagerly: the CPU
tests check that path against ``ScaleSteps``; on a GPU ``benchmarks/gpu_check.py`` checks the replayed graphs.
"""
from __future__ import annotations

import contextlib
import weakref

import torch

from .sampler import ScaleSteps

_GRAPHED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()     # model -> {key: GraphedScaleSteps}


class GraphedScaleSteps(ScaleSteps):
    def __init__(self, var, rows: int, capture: bool = True):
        super().__init__(var, rows)
        p = var.pos_1LC
        self.cond = torch.zeros(rows, var.C, dtype=p.dtype, device=p.device)              # (rows, C)
        self.inputs = [torch.zeros(rows, pn * pn, var.C, dtype=p.dtype, device=p.device)   # (rows, pn^2, C)
                       for pn in var.patch_nums]
        self.capture = capture
        if capture:
            self._capture()

    def _prologue(self) -> None:
        ScaleSteps.start(self, self.cond)

    def _scale(self, si: int) -> torch.Tensor:
        return ScaleSteps.step(self, si, self.inputs[si])

    def _capture(self) -> None:
        dev = self.cond.device
        autocast = contextlib.nullcontext()
        if torch.is_autocast_enabled(dev.type):   # cached weight casts would outlive the capture: no cache
            autocast = torch.autocast(dev.type, dtype=torch.get_autocast_dtype(dev.type), cache_enabled=False)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), autocast:      # warm-up: allocates the cache, picks the kernels
            self._prologue()
            for si in range(len(self.inputs)):
                self._scale(si)
        torch.cuda.current_stream(dev).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        self.prologue_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.prologue_graph, pool=pool), autocast:
            self._prologue()                          # self.mods are now the graph's static outputs
        self.graphs, self.logits = [], []
        for si in range(len(self.inputs)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool), autocast:
                self.logits.append(self._scale(si))   # (rows, pn^2, V), overwritten by every replay
            self.graphs.append(graph)

    def start(self, cond_BD: torch.Tensor) -> None:
        self.cond.copy_(cond_BD)
        if self.capture:
            self.prologue_graph.replay()
        else:
            self._prologue()

    def step(self, si: int, token_map: torch.Tensor) -> torch.Tensor:
        self.inputs[si].copy_(token_map)
        if not self.capture:
            return self._scale(si)
        self.graphs[si].replay()
        return self.logits[si]


def graphed_scale_steps(var, rows: int) -> GraphedScaleSteps:
    """The model's captured steps for ``rows`` rows under the current autocast setting (captured on first use)."""
    dev = var.pos_1LC.device.type
    weights = tuple(p.data_ptr() for p in var.parameters())
    key = (rows, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
    per_model = _GRAPHED.setdefault(var, {})
    if per_model.get("weights") != weights:      # parameters replaced since the capture: the graphs read stale memory
        per_model.clear()
        per_model["weights"] = weights
    if key not in per_model:
        per_model[key] = GraphedScaleSteps(var, rows)
    return per_model[key]
