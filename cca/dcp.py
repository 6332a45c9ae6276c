"""Sharded, resumable checkpoints of the FSDP fine-tune with torch.distributed.checkpoint (DCP), and the streamed
export of its weights as one plain file.

Layout under a run folder (torchtitan's scheme: every rank writes the shards it holds, nothing is gathered):

    resume/step-0000004/        one complete checkpoint: .metadata and __<rank>_0.distcp (model and AdamW moments,
                                sharded as the ranks held them), state.pt (loop counters, AdamW's hyper-parameters,
                                world size, config; rank 0) and rng-<rank>.pt (each rank's random streams)
    resume/.step-0000006.tmp/   a save under way, or one a crash interrupted: never read, removed by the next save

A save is written into the temp folder and appears under its final name by one rename, after every rank has
finished writing; only then are older checkpoints removed. A crash at any point leaves the previous checkpoint
whole. Loading reshards: a checkpoint written by W ranks loads at any world size (each rank reads the pieces its
own shards cover). Random streams are per rank, so they are restored only at the world size that wrote them.

Nothing read here unpickles arbitrary objects: DCP's metadata goes through an unpickler that admits DCP's own
classes and torch sizes / dtypes only, tensors load with weights_only=True, and the non-tensor optimizer entries
are kept in state.pt (weights_only) instead of DCP's pickled byte items.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_state_dict

from cca import dist as cdist
from cca.checkpoint import CheckpointError, atomic_write, load_file_raw, save_atomic

ROOT = "resume"          # <run folder>/resume/
PREFIX = "step-"
log = logging.getLogger("cca")


def checkpoint_dirs(root: Path) -> list[Path]:
    """The complete checkpoints in ``root``, oldest first."""
    found = [d for d in Path(root).glob(f"{PREFIX}*") if d.is_dir() and d.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda d: int(d.name[len(PREFIX):]))


def find(path: str | os.PathLike) -> Path | None:
    """The resumable state ``path`` names: a resume.pt file or a checkpoint folder as they are; in a resume/ folder
    its newest checkpoint; in a run folder its newest checkpoint, else its resume.pt. None if there is none."""
    path = Path(path)
    if path.is_file() or (path / ".metadata").is_file():
        return path
    dirs = checkpoint_dirs(path) or checkpoint_dirs(path / ROOT)
    if dirs:
        return dirs[-1]
    return path / "resume.pt" if (path / "resume.pt").is_file() else None


def run_folder(source: Path) -> Path:
    """The run folder of a resumable state found by ``find`` (resume.pt or resume/step-NNNNNNN/)."""
    return source.parent if source.is_file() else source.parent.parent


# ----------------------------------------------------------------------------------------------------- save
def save(root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, rng: dict,
         dist: cdist.Dist) -> Path:
    """Write checkpoint ``step``: ``model`` and ``optimizer`` (FSDP-sharded or not) by every rank, ``state``
    (numbers, strings, small tensors) by rank 0, each rank's ``rng``; collective. Returns the checkpoint folder."""
    tmp, final = root / f".{PREFIX}{step:07d}.tmp", root / f"{PREFIX}{step:07d}"
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".{PREFIX}*.tmp"):          # left by a save that a crash interrupted
            shutil.rmtree(stale)
        tmp.mkdir()
    cdist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    groups = optim_sd.pop("param_groups")                     # floats and names: kept out of DCP's pickles
    save_atomic(rng, tmp / f"rng-{dist.rank}.pt")
    if dist.is_main:
        save_atomic({**state, "param_groups": groups, "world_size": dist.world_size}, tmp / "state.pt")
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp, no_dist=dist.world_size == 1)
    cdist.barrier()                                           # every rank's files are complete
    if dist.is_main:
        _publish(tmp, final)
    cdist.barrier()
    return final


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns at every call without a process group that it assumes one process: what we asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished temp folder into place, then remove every other checkpoint."""
    if final.exists():      # the same step saved again (a resume from it, or from an older one): replace it
        old = final.with_name(f".{final.name}.old.tmp")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    for other in checkpoint_dirs(final.parent):
        if other != final:
            shutil.rmtree(other)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------- load
class _MetadataReader(dcp.FileSystemReader):
    """DCP's file reader whose metadata unpickler admits DCP's classes, torch sizes / dtypes and paths only."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        with open(Path(self.path) / ".metadata", "rb") as f:     # (save() never writes per-rank metadata)
            metadata = _RestrictedUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{self.path}/.metadata: not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
               ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath")}

    def find_class(self, module: str, name: str):
        found = super().find_class(module, name) if module.startswith(("torch", "pathlib")) else None
        dcp_class = module.startswith("torch.distributed.checkpoint.") and isinstance(found, type)
        if dcp_class or (module, name) in self.ALLOWED or isinstance(found, torch.dtype):
            return found
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


class _TensorsOnlyPlanner(DefaultLoadPlanner):
    """Every entry this module loads is a tensor: a pickled object in its place is refused, never unpickled."""

    def load_bytes(self, read_item, value) -> None:
        raise CheckpointError(f"{read_item.dest_index.fqn}: a pickled object where a tensor was expected")


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, dist: cdist.Dist
         ) -> tuple[dict, dict | None]:
    """Load checkpoint folder ``path`` into ``model`` and ``optimizer`` at this process group's world size (any);
    returns (rank 0's state, this rank's random streams, or None when the checkpoint has another world size)."""
    if not (path / ".metadata").is_file() or not (path / "state.pt").is_file():
        raise CheckpointError(f"{path}: not a complete sharded checkpoint (expected .metadata and state.pt)")
    state = load_file_raw(path / "state.pt")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    optim_sd.pop("param_groups")
    try:
        with _single_process_quiet():
            dcp.load({"model": model_sd, "optimizer": optim_sd}, storage_reader=_MetadataReader(path),
                     planner=_TensorsOnlyPlanner(), no_dist=dist.world_size == 1)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:   # (a BaseException) every rank's traceback; the last line: why
        reason = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        raise CheckpointError(f"{path}: cannot be loaded into this model and optimizer ({reason[-1][:300]})") \
            from None
    set_state_dict(model, optimizer, model_state_dict=model_sd,
                   optim_state_dict={**optim_sd, "param_groups": state["param_groups"]})
    same_world = state["world_size"] == dist.world_size
    return state, load_file_raw(path / f"rng-{dist.rank}.pt") if same_world else None


# ----------------------------------------------------------------------------------------------------- export
def export_weights(model: nn.Module, path: Path, dist: cdist.Dist) -> Path | None:
    """Write ``model``'s full state dict to ``path`` as one torch.save file (a bare state dict, loadable with
    ``torch.load(weights_only=True)``) without ever holding it whole: rank 0 writes the file with room for every
    tensor, then the tensors are gathered one at a time and rank 0 writes each into its place; collective.
    Returns the path on rank 0, None elsewhere."""
    state_dict = get_model_state_dict(model)          # sharded tensors (DTensor) under FSDP, plain ones otherwise
    if not dist.is_main:
        for value in state_dict.values():
            _full(value)                              # take part in every gather
        return None
    written = atomic_write(path, lambda tmp: _stream(state_dict, tmp))
    log.info("saved %s", written)
    return written


def _full(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _stream(state_dict: dict[str, torch.Tensor], tmp: str) -> None:
    """torch.save's file for ``state_dict`` with the storage bytes left out (torch.serialization.skip_data over
    fake tensors of the same shapes and dtypes), then every tensor's bytes written at its record's offset."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        skeleton = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in state_dict.items()}
    with torch.serialization.skip_data(materialize_fake_tensors=True):
        torch.save(skeleton, tmp)
    offsets = _record_offsets(tmp, [v.numel() * v.element_size() for v in state_dict.values()])
    with open(tmp, "r+b") as f:
        for value, offset in zip(state_dict.values(), offsets):
            full = _full(value).detach().cpu().contiguous()          # (one tensor at a time)
            data = memoryview(full.reshape(-1).view(torch.uint8).numpy())
            while len(data):                                          # pwrite may write less than asked
                done = os.pwrite(f.fileno(), data, offset)
                data, offset = data[done:], offset + done
            del full


def _record_offsets(path: str, sizes: list[int]) -> list[int]:
    """File offsets of the data of records data/0, data/1, ... of a torch.save zip file (storages are numbered in
    the order the pickler meets them: the state dict's order here), checked against the expected sizes."""
    with zipfile.ZipFile(path) as z:
        records = {info.filename.split("/", 1)[-1]: info for info in z.infolist()}
    offsets = []
    with open(path, "rb") as f:
        for i, size in enumerate(sizes):
            info = records.get(f"data/{i}")
            if info is None or info.file_size != size:
                raise RuntimeError(f"{path}: record data/{i} is not the expected {size} bytes")
            f.seek(info.header_offset)
            header = f.read(30)                          # a zip local file header: 30 bytes, then name and extra
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offsets.append(info.header_offset + 30 + name_len + extra_len)
    return offsets
