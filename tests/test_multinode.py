"""Multi-node launches, simulated on one machine: one torchrun agent per "node" (--nnodes 2 --node_rank R, or a c10d
rendezvous), one process each, gloo, meeting at 127.0.0.1 on a free port. They must give what one torchrun with two
processes gives: the same npz from both samplers and the same fine-tuned weights from the DDP and FSDP fine-tunes.
HSDP's mesh follows the nodes (LOCAL_WORLD_SIZE), and scripts/slurm_torchrun.sh launches the same way under a fake
srun."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fixture_utils import REPO
from llamagen_tiny import CLASSES, EMBED, IMAGE, TINY_FLAGS, VOCAB, make_assets, write_codes
from test_var_cli import finetune_args, make_workspace, sample_args

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
RUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(procs: list[subprocess.Popen], timeout: int = 300) -> None:
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]


def two_nodes(args: list[str], cwd: Path, per_node: int = 1, rendezvous: bool = False) -> None:
    """Two torchrun agents as two nodes of ``per_node`` processes: the static form (--node_rank, --master_addr)
    or the c10d rendezvous form of docs/multinode.md."""
    port = free_port()
    procs = []
    for node in range(2):
        launch = (["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test"]
                  if rendezvous else ["--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port",
                                      str(port)])
        procs.append(subprocess.Popen([*RUN, "--nnodes", "2", "--nproc_per_node", str(per_node), *launch, *args],
                                      cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    _wait(procs)


def one_node(args: list[str], cwd: Path, nproc: int = 2) -> None:
    _wait([subprocess.Popen([*RUN, "--standalone", "--nproc_per_node", str(nproc), *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)])


def assert_same_npz(a: Path, b: Path) -> None:
    (fa,), (fb,) = list(a.glob("*.npz")), list(b.glob("*.npz"))
    assert fa.name == fb.name
    with np.load(fa) as x, np.load(fb) as y:
        assert np.array_equal(x["arr_0"], y["arr_0"]) and np.array_equal(x["arr_1"], y["arr_1"])
        assert len(np.unique(x["arr_1"])) > 1


def assert_same_weights(a: dict, b: dict, ref: dict) -> None:
    assert a.keys() == b.keys() == ref.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "2 nodes x 1 process and 1 node x 2 processes differ"
    assert any(not torch.equal(a[k], ref[k]) for k in a), "fine-tuning changed nothing"


@pytest.fixture(scope="module")
def var_ws(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("var_multinode"))


@pytest.fixture(scope="module")
def llamagen(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("llamagen_multinode")
    assets = make_assets(root)
    write_codes(root / "codes", 16)
    return {**assets, "root": root, "codes": root / "codes"}


def test_var_finetune(var_ws):
    two_nodes([str(REPO / "VAR_finetune.py"), *finetune_args(var_ws, "two_nodes")], var_ws)
    one_node([str(REPO / "VAR_finetune.py"), *finetune_args(var_ws, "one_node")], var_ws)
    a, b = (torch.load(var_ws / "out" / e / "ar-ckpt-last.pth", weights_only=True) for e in ("two_nodes", "one_node"))
    assert_same_weights(a, b, torch.load(var_ws / "ref.pth", weights_only=True))
    state = torch.load(var_ws / "out" / "two_nodes" / "resume.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 2


def llamagen_sample_args(assets: dict, out: str) -> list[str]:
    return [str(REPO / "LLamaGen_sample_ddp.py"), f"--vq-ckpt={assets['vq']}", f"--ckpt_path={assets['ref']}",
            "--gpt-model=GPT-debug", f"--image-size={IMAGE}", "--image-size-eval=32", "--per-proc-batch-size=3",
            "--cfg-scale=2.0", "--num-fid-samples=10", f"--codebook-size={VOCAB}", f"--codebook-embed-dim={EMBED}",
            f"--num-classes={CLASSES}", f"--sample-dir={assets['root'] / out}"]


def test_llamagen_sampler(llamagen):
    two_nodes(llamagen_sample_args(llamagen, "two_nodes"), llamagen["root"])
    one_node(llamagen_sample_args(llamagen, "one_node"), llamagen["root"])
    assert_same_npz(llamagen["root"] / "two_nodes", llamagen["root"] / "one_node")


def llamagen_finetune_args(assets: dict, script: str, results: str, *extra: str) -> list[str]:
    return [str(REPO / script), "--global-batch-size", "8", "--epochs", "1", "--lr", "1e-3", "--lambda_", "10",
            "--uncond_ratio", "0.25", "--mixed-precision", "none", "--num-workers", "0", "--ckpt-every", "100",
            "--ref_ckpt", str(assets["ref"]), "--code-path", str(assets["codes"]), "--results-dir",
            str(assets["root"] / results), *TINY_FLAGS, *extra]


def final_weights(results: Path) -> dict:
    """The exported weights: {"model": ...} from the DDP script, the bare state dict from the FSDP one."""
    (ckpt,) = results.glob("*/checkpoints/0000002.pt")
    saved = torch.load(ckpt, weights_only=True)
    return saved["model"] if "model" in saved else saved


@pytest.mark.parametrize("script", ["LlamaGen_finetune.py", "LlamaGen_finetune_fsdp.py"])
def test_llamagen_finetune(llamagen, script):
    tag = script.split(".")[0]
    two_nodes(llamagen_finetune_args(llamagen, script, f"{tag}-two"), llamagen["root"], rendezvous=True)
    one_node(llamagen_finetune_args(llamagen, script, f"{tag}-one"), llamagen["root"])
    ref = torch.load(llamagen["ref"], weights_only=True)["model"]
    assert_same_weights(final_weights(llamagen["root"] / f"{tag}-two"),
                        final_weights(llamagen["root"] / f"{tag}-one"), ref)


MESH = """
from cca import dist as cdist
from LlamaGen.fsdp import make_mesh
d = cdist.init()
mesh = make_mesh("hsdp", d)
print(f"rank {d.rank} mesh {tuple(mesh.shape)} shard {mesh['shard'].mesh.tolist()} "
      f"replicate {mesh['replicate'].mesh.tolist()}", flush=True)
cdist.cleanup()
"""


def test_hsdp_shards_within_a_node_and_replicates_across_nodes(llamagen, tmp_path):
    """2 nodes x 2 processes: torchrun's LOCAL_WORLD_SIZE makes a (2 nodes, 2 per node) mesh, and the HSDP
    fine-tune ends with the weights of plain FSDP over the same 4 processes (up to the reduction order)."""
    script = tmp_path / "mesh.py"
    script.write_text(MESH)
    port = free_port()
    procs = [subprocess.Popen([*RUN, "--nnodes", "2", "--nproc_per_node", "2", "--node_rank", str(node),
                               "--master_addr", "127.0.0.1", "--master_port", str(port), str(script)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    lines = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        lines += [line for line in out.splitlines() if line.startswith("rank")]
    assert sorted(lines) == ["rank 0 mesh (2, 2) shard [0, 1] replicate [0, 2]",
                             "rank 1 mesh (2, 2) shard [0, 1] replicate [1, 3]",
                             "rank 2 mesh (2, 2) shard [2, 3] replicate [0, 2]",
                             "rank 3 mesh (2, 2) shard [2, 3] replicate [1, 3]"]

    root = llamagen["root"]
    two_nodes(llamagen_finetune_args(llamagen, "LlamaGen_finetune_fsdp.py", "hsdp", "--data-parallel", "hsdp"), root,
              per_node=2)
    one_node(llamagen_finetune_args(llamagen, "LlamaGen_finetune_fsdp.py", "fsdp4"), root, nproc=4)
    hsdp, fsdp = final_weights(root / "hsdp"), final_weights(root / "fsdp4")
    assert max((hsdp[k] - fsdp[k]).abs().max().item() for k in hsdp) <= 1e-6


SRUN = """#!/usr/bin/env bash
# fake srun: the command once per node (SLURM_NNODES of them), in parallel, like srun --ntasks-per-node=1
while [ "${1#--}" != "$1" ]; do shift; done
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@" & pids+=($!); done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
"""


def test_slurm_script_and_var_sampler(var_ws, tmp_path):
    """scripts/slurm_torchrun.sh under a stand-in srun: two agents meet at the first node's rendezvous and
    VAR_sample.py writes the npz of one node with two processes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho 127.0.0.1\n")   # the job's first node
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    slurm = str(REPO / "scripts" / "slurm_torchrun.sh")
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable, "SLURM_SUBMIT_DIR": str(REPO),
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "7", "GPUS_PER_NODE": "1",
           "MASTER_PORT": str(free_port())}
    out = subprocess.run(["bash", slurm, "VAR_sample.py", *sample_args(var_ws, var_ws / "ref.pth", "--sample_dir",
                                                                        str(var_ws / "slurm"))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 node(s) x 1 process(es), rendezvous at 127.0.0.1" in out.stderr
    one_node([str(REPO / "VAR_sample.py"), *sample_args(var_ws, var_ws / "ref.pth", "--sample_dir", "slurm_ref")],
             var_ws)
    assert_same_npz(var_ws / "slurm", var_ws / "slurm_ref")
    bare = subprocess.run(["bash", slurm, "VAR_sample.py"], env=ENV, capture_output=True, text=True)
    assert bare.returncode == 2 and "not inside a SLURM job" in bare.stderr
