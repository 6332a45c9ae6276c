import argparse
import os
import pickle
import socket
from collections import OrderedDict

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cca.checkpoint import (CheckpointError, load_state_dict_file, load_strict, save_atomic,
                            save_safetensors_atomic)


def _sd():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    return m, {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model": sd, "optimizer": {}, "steps": 3},
    lambda sd: {"module": sd},
    lambda sd: {"state_dict": sd},
    lambda sd: {"trainer": {"var_wo_ddp": sd, "config": {"a": 1}}, "args": {"x": 1}},
    # what the original CCA VAR_finetune.py writes to ar-ckpt-last.pth (its args: an OrderedDict of plain values)
    lambda sd: {"epoch": 1, "iter": 0, "trainer": sd, "args": OrderedDict(pn="1_2_3", patch_nums=(1, 2, 3))},
    # an upstream LlamaGen train_c2i.py checkpoint: its args are an argparse.Namespace
    lambda sd: {"model": sd, "optimizer": {}, "steps": 5000, "args": argparse.Namespace(gpt_model="GPT-B", lr=1e-4)},
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
])
def test_every_container_unwraps(tmp_path, wrap):
    model, sd = _sd()
    path = tmp_path / "ck.pth"
    torch.save(wrap(sd), path)
    got = load_state_dict_file(path)
    assert sorted(got) == sorted(sd)
    load_strict(model, got)


def test_safetensors_and_freqs_cis(tmp_path):
    model, sd = _sd()
    save_safetensors_atomic({**sd, "freqs_cis": torch.zeros(2, 2)}, tmp_path / "w.safetensors")
    load_strict(model, load_state_dict_file(tmp_path / "w.safetensors"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # the hostile file is written with protocol 4
def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="could run code"):
        load_state_dict_file(path)
    torch.save({"model": {"w": torch.zeros(1)}, "obj": Evil()}, tmp_path / "evil2.pth")
    # a Namespace is allowed, but not whatever it holds
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(x=Evil())}, tmp_path / "evil3.pth")
    marker.unlink(missing_ok=True)
    for name in ("evil2.pth", "evil3.pth"):
        with pytest.raises(CheckpointError, match="could run code"):
            load_state_dict_file(tmp_path / name)
    assert not marker.exists()


def test_missing_truncated_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pth")
    model, sd = _sd()
    torch.save(sd, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict_file(tmp_path / "cut.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pth"):
        load_state_dict_file(tmp_path / "text.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_state_dict_file(tmp_path / "bad.safetensors")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "noweights.pth")
    with pytest.raises(CheckpointError, match="no model state dict"):
        load_state_dict_file(tmp_path / "noweights.pth")


def test_strict_load_reports_keys_and_hint():
    model, sd = _sd()
    bad = dict(sd)
    bad.pop("0.bias")
    bad["extra.weight"] = torch.zeros(1)
    bad["1.weight"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as e:
        load_strict(model, bad, source="x.pth", hint=lambda s: "looks like depth 20; pass --depth 20")
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("x.pth", "missing 1: 0.bias", "unexpected 1: extra.weight", "1.weight (7,) vs model (4,)",
                 "pass --depth 20"):
        assert part in msg


def test_save_atomic_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    save_atomic({"w": torch.ones(2)}, path)

    def boom(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load_state_dict_file(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]


def _worker(rank, world, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from cca import dist as cdist
    d = cdist.init()
    assert d.backend == "gloo" and d.world_size == world
    got = cdist.all_reduce_dict({"x": float(rank), "y": torch.tensor(2.0 * rank)})
    mx = cdist.all_reduce_dict({"x": float(rank)}, op="max")
    out.put((rank, got, mx))
    cdist.barrier()
    cdist.cleanup()


def test_two_process_gloo_all_reduce():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    res = sorted(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for rank, got, mx in res:
        assert got == {"x": 0.5, "y": 1.0} and mx == {"x": 1.0}


def test_hub_address_fails_offline_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        load_state_dict_file("hf://ChenDRAG/CCA_VAR/CCA_VAR_Guidance_Free/VAR_d16_CCA.pth")
    msg = str(e.value)
    assert "\n" not in msg and "local path" in msg and msg.startswith("hf://ChenDRAG/CCA_VAR")
    with pytest.raises(CheckpointError, match="expected hf://OWNER/REPO"):
        load_state_dict_file("hf://only/two")
