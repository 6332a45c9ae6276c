#!/usr/bin/env bash
# The dry-run plan (--dry-run, cca/plan.py) of every seed command on 8 GPUs: the CCA release's VAR d16/d20/d24/d30
# and LlamaGen B/L/XL/XXL/3B fine-tunes and the samplers at the README's settings. Needs no checkpoint, no data and no
# GPU; prints predictions only (docs/sizing.md has them as a table).
#   bash scripts/dry_run_seed_commands.sh [--gpu-mem 80] [--gpus 8]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
plan=(--dry-run --gpus 8 "$@")
var_common=(--bs=256 --ep=1 --tblr=2e-5 --fp16=1 --loss_type=CCA --beta=0.02 --exp_name=default --uncond_ratio=0.1
            --vae_ckpt=/path/to/vae_ch160v4096z32.pth --data_path=/path/to/imagenet)
$PY VAR_finetune.py --depth=16 "${var_common[@]}" --alng=1e-3 --wpe=0.1 --lambda_=50.0 --ac=4 --dpr_ratio=0.0 \
  --ref_ckpt=/path/to/var_d16.pth "${plan[@]}"
$PY VAR_finetune.py --depth=20 "${var_common[@]}" --alng=1e-3 --wpe=0.1 --lambda_=50.0 --ac=8 \
  --ref_ckpt=/path/to/var_d20.pth "${plan[@]}"
$PY VAR_finetune.py --depth=24 "${var_common[@]}" --alng=1e-4 --wpe=0.01 --lambda_=100.0 --ac=8 \
  --ref_ckpt=/path/to/var_d24.pth "${plan[@]}"
$PY VAR_finetune.py --depth=30 "${var_common[@]}" --alng=1e-5 --wpe=0.01 --twde=0.08 --lambda_=1000.0 --ac=16 \
  --ref_ckpt=/path/to/var_d30.pth "${plan[@]}"
llamagen_common=(--global-batch-size 256 --gradient-accumulation-step 16 --epochs=1 --ckpt-every=5000 --lr=1e-5
                 --loss_type=CCA --expid default --beta=0.02 --uncond_ratio=0.1 --keep_dropout
                 --code-path=/path/to/imagenet384_train_code_c2i_flip_ten_crop/ --image-size=384)
for size_lambda in B:1000.0 L:300.0 XL:1000.0; do
  size=${size_lambda%%:*}
  $PY LlamaGen_finetune.py "${llamagen_common[@]}" --lambda_="${size_lambda#*:}" --ref_ckpt="/path/to/c2i_${size}_384.pt" \
    --gpt-model="GPT-$size" "${plan[@]}"
done
for size_lambda in XXL:1000.0 3B:500.0; do
  size=${size_lambda%%:*}
  $PY LlamaGen_finetune_fsdp.py "${llamagen_common[@]}" --lambda_="${size_lambda#*:}" \
    --ref_ckpt="/path/to/c2i_${size}_384.pt" --gpt-model="GPT-$size" "${plan[@]}"
done
for depth in 16 20 24 30; do
  $PY VAR_sample.py --cfg=0.0 --ckpt_path="/path/to/var_d$depth.pth" --vae_ckpt=/path/to/vae_ch160v4096z32.pth \
    --depth "$depth" "${plan[@]}"
done
for size in B L XL XXL 3B; do
  $PY LLamaGen_sample_ddp.py --vq-ckpt=/path/to/vq_ds16_c2i.pt --ckpt_path="/path/to/c2i_${size}_384.pt" \
    --gpt-model="GPT-$size" --image-size=384 --image-size-eval=256 --per-proc-batch-size=48 --cfg-scale=1.0 \
    --num-fid-samples=50000 "${plan[@]}"
done
