"""--ref-dtype bf16 (LlamaGen fine-tunes): the frozen reference is held and run in bf16, its sequence log-probs
come out (and are summed) in fp32, close to the fp32 reference's; the dry-run planner counts it at 2 bytes a
parameter.

Tolerance: on the tiny GPT with weights of std 0.3 (peaked next-token distributions, 16 tokens), the bf16
reference's log-probs differ from the fp32 one's by at most 0.02 nats per token and 0.5 % of the sequence's
log-prob. Measured 2026-12-01 on these rows: 0.0031 nats and 0.073 % (autocast-bf16 over the fp32 weights, what
--mixed-precision bf16 already does: 0.0022 nats, 0.050 %); other seeds and 256 tokens stayed under 0.011 nats
and 0.2 %."""
from __future__ import annotations

import logging

import pytest
import torch
from llamagen_tiny import CLASSES, TINY_FLAGS, VOCAB, make_assets

from cca import dist as cdist
from cca import plan
from cca.loss import sequence_logprob
from LlamaGen import finetune_cli
from LlamaGen.adapter import LlamaGenAdapter
from LlamaGen.plan import finetune_setup

ONE = cdist.Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


@pytest.mark.parametrize("fsdp", [False, True])
def test_bf16_reference_logprobs_close_to_fp32(tmp_path, fsdp):
    assets = make_assets(tmp_path)
    args = finetune_cli.build_parser(fsdp).parse_args(["--ref_ckpt", str(assets["ref"]), "--code-path", "x",
                                                        "--ref-dtype", "bf16", *TINY_FLAGS])
    policy, reference, _ = finetune_cli.place_models(finetune_cli.build_policy(args, fsdp), args, ONE, fsdp,
                                                  logging.getLogger("test"))
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert {p.dtype for p in reference.parameters()} == {torch.bfloat16}
    g = torch.Generator().manual_seed(0)
    codes, labels = torch.randint(VOCAB, (16, 16), generator=g), torch.randint(CLASSES, (16,), generator=g)
    adapter = LlamaGenAdapter(CLASSES)
    with torch.inference_mode():                       # the policy still has the reference's weights, in fp32
        fp32 = sequence_logprob(adapter.logits(policy.eval(), labels, codes[:, :-1]), codes)
        bf16 = sequence_logprob(adapter.logits(reference.eval(), labels, codes[:, :-1]), codes)
    assert bf16.dtype == torch.float32
    per_token = (bf16 - fp32).abs() / codes.shape[1]
    assert per_token.max() <= 0.02 and ((bf16 - fp32).abs() / fp32.abs()).max() <= 5e-3
    assert per_token.max() > 0                           # it did run in bf16


def test_planner_counts_the_bf16_reference():
    flags = ["--ref_ckpt=x", "--code-path=y", "--gpt-model=GPT-XXL", "--image-size=384"]
    parse = finetune_cli.build_parser(True).parse_args
    fp32, bf16 = (finetune_setup(parse([*flags, *extra]), True, 8, 8) for extra in ([], ["--ref-dtype", "bf16"]))
    saved = plan.finetune_memory(fp32)["weights"] - plan.finetune_memory(bf16)["weights"]
    assert saved == pytest.approx(2 * fp32.net.params / 8, rel=1e-6)      # 2 bytes a parameter, sharded over 8
