"""The one checkpoint module: safe loading, container unwrapping, strict loading with diagnostics, atomic saves.

Loading never unpickles arbitrary objects: ``.pth`` / ``.pt`` go through ``torch.load(weights_only=True)`` and
``.safetensors`` through safetensors. The one class allowed beyond torch's own list is ``argparse.Namespace``
(plain data: the ``args`` entry of upstream LlamaGen's training checkpoints).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from cca.errors import UsageError


class CheckpointError(UsageError):
    """A checkpoint could not be used; the message is one line naming the file and what was expected."""


_CONTAINER_KEYS = ("model", "module", "state_dict", "model_state_dict", "trainer")   # trainer: CCA's VAR_finetune
_PREFIXES = ("_orig_mod.", "module.")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the model state dict inside the containers users have, and strip wrapper prefixes."""
    seen = 0
    while not _is_state_dict(obj):
        seen += 1
        if not isinstance(obj, dict) or seen > 4:
            raise CheckpointError(f"{source}: no model state dict found (expected tensors by name, or a dict with "
                                  f"one of {_CONTAINER_KEYS} or trainer.var_wo_ddp)")
        if isinstance(obj.get("trainer"), dict) and "var_wo_ddp" in obj["trainer"]:
            obj = obj["trainer"]["var_wo_ddp"]
            continue
        for key in _CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        else:
            keys = ", ".join(map(str, list(obj)[:8]))
            raise CheckpointError(f"{source}: no model state dict found (top-level keys: {keys}; expected tensors by "
                                  f"name, or a dict with one of {_CONTAINER_KEYS} or trainer.var_wo_ddp)")
    out = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def resolve_path(path: str | os.PathLike) -> Path:
    """A local path as is; a release name (``python -m cca.hub list``) or ``hf://OWNER/REPO/FILE`` through
    huggingface_hub's cache (downloading only when online); offline, one CheckpointError line (see cca.hub)."""
    from cca import hub
    return hub.resolve(path)


def load_file_raw(path: str | os.PathLike) -> Any:
    """Whatever a checkpoint file holds, loaded safely (tensors, dicts, lists, numbers, strings only)."""
    path = resolve_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)   # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(str(e))
        with open(path, "rb") as f:
            is_pickle = f.read(1) == b"\x80"          # pickle's PROTO opcode: a real pickle, not a damaged file
        if is_pickle or "global" in reason.lower():  # objects beyond tensors: unpickling them could run code
            raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than tensors, "
                                  f"which could run code ({reason[:160]})") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt? {reason[:160]})") \
            from None
    except Exception as e:  # any other failure of a torch checkpoint reader: unreadable file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt? {first[:200]})") \
            from None


def _unpickler_reason(message: str) -> str:
    """The one specific line of torch's weights-only refusal (its boilerplate suggests weights_only=False, which is
    exactly what must not be done with an untrusted file)."""
    for line in message.splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if line and not line.startswith(("Weights only load failed", "(1)", "(2)", "Check the documentation",
                                         "Please file an issue")):
            return line.split(". Please use")[0]
    return "unpickling refused"


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from a .pth/.pt/.safetensors file, unwrapped (see ``unwrap_state_dict``)."""
    return unwrap_state_dict(load_file_raw(path), source=str(path))


def diff_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], ignore: tuple[str, ...] = ("freqs_cis",)
                    ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape mismatches) of ``state_dict`` against ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own and k not in ignore]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, mismatched


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint",
                hint: Callable[[dict], str | None] | None = None, ignore: tuple[str, ...] = ("freqs_cis",),
                assign: bool = False) -> nn.Module:
    """Load strictly; on any mismatch raise one CheckpointError line listing the first 10 of each kind."""
    missing, unexpected, mismatched = diff_state_dict(model, state_dict, ignore)
    if missing or unexpected or mismatched:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
                parts.append(f"{name} {len(items)}: {', '.join(items[:10])}{more}")
        extra = hint(state_dict) if hint is not None else None
        msg = f"{source}: does not fit the model; " + "; ".join(parts)
        raise CheckpointError(msg + (f"; {extra}" if extra else ""))
    sd = {k: v for k, v in state_dict.items() if k not in ignore or k in model.state_dict()}
    model.load_state_dict(sd, strict=True, assign=assign)
    return model


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` to a temp file beside ``path``, fsync, then rename into place (also removes temp files a
    process killed mid-save left there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):   # left by a process killed mid-save
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file beside ``path``, fsync, then rename: a crash never leaves a half-written file."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Text written to a temp file beside ``path``, fsync, rename (readers never see half a file)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp))


def check_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create ``path`` if needed and prove it is writable, or exit with a one-line error naming ``flag``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"{flag}: {path} is not a writable folder ({e.strerror or e})") from None
    return path


def check_free_space(path: str | os.PathLike, need_bytes: int, what: str) -> None:
    """Exit with one line when the file system of ``path`` has less than ``need_bytes`` free (before any work)."""
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise UsageError(f"{path}: {free / 2**30:.2f} GiB free, but {what} needs about {need_bytes / 2**30:.2f} GiB; "
                         f"free some space or choose another folder")


def require_checkpoint(path: str | os.PathLike, flag: str) -> None:
    """Up-front check of a checkpoint flag: a local file, or a release name / ``hf://`` address that resolves
    (from the hub cache, or downloaded when online), else a one-line UsageError."""
    from cca import hub
    if hub.is_remote(path):
        try:
            hub.resolve(path)
        except CheckpointError as e:
            raise CheckpointError(f"{flag} {e}") from None
    elif not Path(path).is_file():
        raise UsageError(f"{flag} {path}: not found (expected a checkpoint file, a release name such as var_d16 "
                         f"(python -m cca.hub list) or hf://OWNER/REPO/FILE)")


def dataclass_from_dict(cls, d: dict):
    """``cls(**d)`` for a dataclass, refusing keys it has no field for (a config saved by another version or
    model kind) with one line that names them."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**d)
