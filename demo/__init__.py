"""CCA in miniature: pretrain, CCA fine-tune, sample and evaluate both model families on Fashion-MNIST on a CPU.

    python3 -m demo [--data DIR] [--out demo_output] [--quick]
"""
