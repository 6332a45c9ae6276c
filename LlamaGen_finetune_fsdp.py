"""CCA fine-tuning of LlamaGen XXL / 3B with FSDP2 (policy and frozen reference sharded per block). See --help.

    torchrun --nproc_per_node=8 LlamaGen_finetune_fsdp.py --global-batch-size 256 --gradient-accumulation-step 16 \
        --epochs=1 --ckpt-every=5000 --lr=1e-5 --loss_type="CCA" --expid "default" --lambda_=1000.0 --beta=0.02 \
        --uncond_ratio=0.1 --keep_dropout --ref_ckpt=c2i_XXL_384.pt --code-path=/path/to/codes/ \
        --image-size=384 --gpt-model="GPT-XXL"

Weights go to <run>/checkpoints/<step>.pt as the bare state dict (the original FSDP script's format, what upstream
sample_c2i_ddp.py --from-fsdp reads; streamed one tensor at a time), which LLamaGen_sample_ddp.py loads as-is;
resumable state is sharded per rank in <run>/resume/step-<step>/ (torch.distributed.checkpoint) and --resume
works at any number of processes.
"""
from LlamaGen.finetune_cli import main

if __name__ == "__main__":
    main(fsdp=True)
