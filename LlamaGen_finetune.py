"""CCA fine-tuning of LlamaGen B / L / XL with DDP (one CPU/GPU process, or torchrun). See --help.

    torchrun --nproc_per_node=8 LlamaGen_finetune.py --global-batch-size 256 --gradient-accumulation-step 16 \
        --epochs=1 --ckpt-every=5000 --lr=1e-5 --loss_type="CCA" --expid "default" --lambda_=1000.0 --beta=0.02 \
        --uncond_ratio=0.1 --keep_dropout --ref_ckpt=c2i_B_384.pt --code-path=/path/to/codes/ \
        --image-size=384 --gpt-model="GPT-B"
"""
from LlamaGen.finetune_cli import main

if __name__ == "__main__":
    main(fsdp=False)
