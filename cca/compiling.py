"""``torch.compile`` of repeated blocks, falling back to eager execution where compiling is not possible.

Used by the LlamaGen fine-tune and sampling scripts on GPUs. Compiling is skipped, with one log line, when
``torch.compile`` is missing or the device's compiler backend is absent (no Triton for CUDA). A command line that
wants errors raised while a block is compiled later, at its first call, to make that block run eagerly instead of
stopping the run says so with ``eager_fallback_on_errors()`` (a process-wide switch of torch._dynamo).
"""
from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import nn


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work on ``device`` here, or None when it should."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "cannot check for Triton in this torch build"
        if not has_triton():
            return "Triton is not installed"
    return None


def compile_blocks(blocks: Iterable[nn.Module], device: torch.device, log: logging.Logger | None = None) -> bool:
    """Compile each block in place (its state-dict keys stay as they are); returns whether it did."""
    log = log or logging.getLogger("cca")
    reason = compile_unavailable_reason(torch.device(device))
    if reason is not None:
        log.warning("torch.compile skipped (%s): running eagerly", reason)
        return False
    for block in blocks:
        block.compile()
    return True


def eager_fallback_on_errors() -> None:
    """Process-wide: a compiled block whose compilation fails runs eagerly instead of raising."""
    import torch._dynamo as dynamo
    dynamo.config.suppress_errors = True
