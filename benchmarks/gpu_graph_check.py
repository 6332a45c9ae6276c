"""CUDA-graph decode vs eager decode on one GPU: same step logits (fp32 and bf16) and greedy tokens in fp32."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from LlamaGen import GPT_models, generate  # noqa: E402


def run(dtype, n=64):
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GPT_models["GPT-B"](vocab_size=16384, block_size=576, num_classes=1000).eval().to(dtype)
    for p in model.parameters():        # break the zero-initialised head so logits are not all equal
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
    labels = torch.arange(8, device="cuda")
    for scale in (1.0, 3.0):
        logs = {False: [], True: []}
        toks = {g: generate(model, labels, n, cfg_scale=scale, top_k=1, cuda_graph=g,
                            logits_hook=lambda i, l, g=g: logs[g].append(l.clone())) for g in (False, True)}
        first_diff = next((i for i in range(n) if not torch.equal(toks[False][:, i], toks[True][:, i])), None)
        same_prefix = first_diff if first_diff is not None else n
        diff = max((a - b).abs().max().item() for a, b in zip(logs[False][:same_prefix + 1], logs[True]))
        print(f"{dtype} cfg {scale}: tokens equal={first_diff is None} first differing step={first_diff} "
              f"max |logit diff| over the common prefix={diff:.3g} (logit scale {logs[False][0].abs().max():.3g})")


run(torch.float32)
run(torch.bfloat16)
