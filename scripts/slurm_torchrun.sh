#!/usr/bin/env bash
# Run one of the toolkit's scripts on several nodes under SLURM: srun starts one torchrun agent per node, each agent
# starts one process per GPU, and the agents meet at a c10d rendezvous on the job's first node (docs/multinode.md).
#
#   sbatch --nodes=2 --gpus-per-node=8 scripts/slurm_torchrun.sh VAR_finetune.py --depth=16 --bs=256 ...
#   sbatch --nodes=2 --gpus-per-node=8 scripts/slurm_torchrun.sh LLamaGen_sample_ddp.py --gpt-model=GPT-XL ...
#
# Submit from the repository root (the job starts there: SLURM_SUBMIT_DIR); paths in the flags must be readable on
# every node (a shared file system), and the output folders writable from every node. Environment: GPUS_PER_NODE
# (default: SLURM_GPUS_ON_NODE, else 8), MASTER_PORT (default 29500), PYTHON (default python3).
#SBATCH --job-name=cca
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --output=slurm-%j.out
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: sbatch --nodes=N [--gpus-per-node=G] scripts/slurm_torchrun.sh SCRIPT.py [flags ...]" >&2
  exit 2
fi
if [ -z "${SLURM_NNODES:-}" ] || [ -z "${SLURM_JOB_NODELIST:-}" ]; then
  echo "scripts/slurm_torchrun.sh: not inside a SLURM job (SLURM_NNODES / SLURM_JOB_NODELIST unset); submit it" \
       "with sbatch, or run torchrun directly (docs/multinode.md)" >&2
  exit 2
fi
cd "${SLURM_SUBMIT_DIR:-.}"
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
gpus=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
port=${MASTER_PORT:-29500}
echo "[slurm_torchrun] $SLURM_NNODES node(s) x $gpus process(es), rendezvous at $head_node:$port: $*" >&2
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  "${PYTHON:-python3}" -m torch.distributed.run --nnodes "$SLURM_NNODES" --nproc_per_node "$gpus" \
  --rdzv-backend c10d --rdzv-endpoint "$head_node:$port" --rdzv-id "${SLURM_JOB_ID:-cca}" "$@"
