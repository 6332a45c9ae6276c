"""VAR's per-scale sampling steps captured as CUDA graphs, one per scale, over static buffers.

An eager scale step of VAR-d16 is a few hundred small kernels; at moderate batch the GPU waits on their launches,
and running 2B rows costs about as much as B. A graph replays the whole step with one launch. The graphs of a model
are captured at its first sampling run of a given shape (rows, autocast dtype) and replayed by every later one of that
shape; another shape, or parameters moved to new storage (a load that assigns new tensors), captures them again. Sampling
(random, with the run's generator) and the VQVAE side of each step stay outside the graphs.

``GraphedScaleSteps(var, rows, capture=False)`` runs the very same buffer copies and step functions eagerly: the CPU
tests check that path against ``ScaleSteps``; on a GPU ``benchmarks/gpu_check.py`` checks the replayed graphs.
"""
from __future__ import annotations

import contextlib
import weakref

import torch

from .sampler import ScaleSteps

_GRAPHED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()     # model -> (key, GraphedScaleSteps)


class GraphedScaleSteps(ScaleSteps):
    def __init__(self, var, rows: int, capture: bool = True):
        super().__init__(weakref.proxy(var), rows)      # the cache below is keyed weakly by the model
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
    """The model's captured steps for ``rows`` rows under the current autocast setting, captured on first use. One
    shape is kept per model (its static buffers hold a KV cache and every scale's logits): another shape, or
    parameters moved to new storage since the capture, replaces it."""
    dev = var.pos_1LC.device.type
    key = (rows, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev),
           tuple(p.data_ptr() for p in var.parameters()))
    kept = _GRAPHED.get(var)
    if kept is None or kept[0] != key:
        _GRAPHED.pop(var, None)                  # free the old buffers before capturing new ones
        kept = _GRAPHED[var] = (key, GraphedScaleSteps(var, rows))
    return kept[1]


def drop_graphs(var) -> None:
    """Free the captured graphs and static buffers of ``var`` (they are rebuilt by its next sampling run)."""
    _GRAPHED.pop(var, None)
