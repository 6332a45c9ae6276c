"""``python -m cca.sweep lambda-commands``: the torchrun fine-tune commands of a lambda sweep (the CCA README's
recipe for the base model's size, one run per lambda), followed by the two ``cca.sweep run`` commands that draw its
CCA curve next to the base model's CFG curve."""
from __future__ import annotations

import argparse
import shlex

from cca.errors import UsageError
from cca.hub import RELEASES
from cca.rows import CCA_LAMBDA, LLAMAGEN_CFG, LLAMAGEN_FINETUNE, LLAMAGEN_FSDP_SIZES, VAR_FINETUNE

VAR_SCALES = "0,0.5,1,1.5,2,3"          # VAR --cfg values of the base model's curve
LLAMAGEN_SCALES = "1,1.25,1.5,1.75,2,2.5,3"


def add_lambda_commands_parser(sub) -> None:
    c = sub.add_parser("lambda-commands", help="print the fine-tune and sweep commands of a lambda sweep",
                       allow_abbrev=False)
    c.add_argument("--base", required=True, choices=sorted(CCA_LAMBDA), help="released base model")
    c.add_argument("--lambdas", required=True, help="comma-separated lambda values")
    c.add_argument("--beta", type=float, default=0.02)
    c.add_argument("--nproc", type=int, default=8, help="GPUs per node (torchrun --nproc_per_node)")
    c.add_argument("--data-path", default="/path/to/imagenet", help="VAR: ImageNet folder")
    c.add_argument("--code-path", default="/path/to/imagenet384_train_code_c2i_flip_ten_crop",
                   help="LlamaGen: extracted codes (LlamaGen/extract_codes_c2i.py)")
    c.add_argument("--out", help="sweep folder (default: sweeps/<base>-lambda)")


def _tag(value: float) -> str:
    return f"lambda-{value:g}"


def _var_run(args, lam: float) -> tuple[str, str]:
    """(fine-tune command, checkpoint it writes) of one lambda."""
    depth = int(args.base.split("_d")[1])
    return (f"torchrun --nproc_per_node={args.nproc} VAR_finetune.py {VAR_FINETUNE[depth]} --beta={args.beta:g} "
            f"--lambda_={lam:g} --exp_name={_tag(lam)} --ref_ckpt={args.base} --vae_ckpt=vae_ch160v4096z32 "
            f"--data_path={shlex.quote(args.data_path)}", f"local_output/{_tag(lam)}/ar-ckpt-last.pth")


def _llamagen_run(args, lam: float) -> tuple[str, str]:
    """(fine-tune command, checkpoint it writes: the run folder is numbered, so the latest one of this name)."""
    size = args.base.split("_")[1]
    script = "LlamaGen_finetune_fsdp.py" if size in LLAMAGEN_FSDP_SIZES else "LlamaGen_finetune.py"
    return (f"torchrun --nproc_per_node={args.nproc} {script} {LLAMAGEN_FINETUNE} --beta={args.beta:g} "
            f"--lambda_={lam:g} --expid={_tag(lam)} --ref_ckpt={args.base} --gpt-model=GPT-{size} "
            f"--code-path={shlex.quote(args.code_path)}",
            f"$(ls -d results/*-{_tag(lam)}-GPT-{size} | tail -1)/checkpoints/0005000.pt")


def lambda_commands(args: argparse.Namespace) -> str:
    try:
        lambdas = [float(v) for v in args.lambdas.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--lambdas: expected comma-separated numbers, got {args.lambdas!r}") from None
    family = RELEASES[args.base].family
    pairs = [(_var_run if family == "var" else _llamagen_run)(args, lam) for lam in lambdas]
    runs = [command for command, _ in pairs]
    ckpts = [f"{lam:g}={ckpt}" for lam, (_, ckpt) in zip(lambdas, pairs)]
    out = args.out or f"sweeps/{args.base}-lambda"
    scales = VAR_SCALES if family == "var" else LLAMAGEN_SCALES
    nproc = f"torchrun --nproc_per_node={args.nproc} -m"
    lines = [f"# lambda sweep of {args.base}: the CCA README's recipe for this size (its lambda: "
             f"{CCA_LAMBDA[args.base]}), beta {args.beta:g}, one fine-tune per lambda"]
    lines += runs
    lines += ["# then the CCA curve (guidance-free) and the base model's CFG curve, into one picture:",
              f"{nproc} cca.sweep run --out {out} --family {family} --series \"{args.base} + CCA\" --param lambda "
              f"--ckpts \"{','.join(ckpts)}\"",
              f"{nproc} cca.sweep run --out {out} --family {family} --series \"{args.base} + CFG\" --ckpt "
              f"{args.base} --scales {scales}"]
    if family == "llamagen":
        lines.append(f"# (LlamaGen README's scale for this size: {LLAMAGEN_CFG[args.base.split('_')[1]]})")
    return "\n".join(lines)
