"""Recompute a parity fixture with this project's code.

    python -m cca.parity FIXTURE_DIR --out OUT.safetensors

Reads ``config.json`` (its ``fixture`` field says which kind), recomputes every tensor named in the fixture's
``expected.safetensors`` and writes them under the same names. Sizes, seeds and settings all come from the
fixture's files, so any fixture of a supported kind works.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cca.conditions import make_conditions
from cca.cli import exits_on_errors
from cca.errors import UsageError
from cca.fixture_kinds import FIXTURE_KINDS, fixture_function
from cca.loss import compute_loss, sequence_logprob



def cca_loss_fixture(fixture_dir: Path, config: dict) -> dict[str, torch.Tensor]:
    """The two original scripts' losses on recorded logits.

    They agree except for loss_type CCA with uncond_ratio 0, where the original LlamaGen script used the linear
    (unlearning) form; we reproduce that here by name only, our ``CCA`` is always the log-sigmoid form. The VAR
    script wrote the literal 1000 as null class, the LlamaGen script ``num_classes``.
    """
    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    labels, targets = inputs["labels"], inputs["targets"]
    B = labels.shape[0]
    logp_pol = sequence_logprob(inputs["policy_logits"], torch.cat([targets, targets]))
    logp_ref = sequence_logprob(inputs["reference_logits"], torch.cat([targets, targets]))
    out = {"logp_policy_pos": logp_pol[:B], "logp_policy_neg": logp_pol[B:],
           "logp_ref_pos": logp_ref[:B], "logp_ref_neg": logp_ref[B:]}
    ratio = float(config["uncond_ratio_used_for_uncond_branch"])
    nulls = {"var": 1000, "llamagen": int(config["num_classes_given_to_llamagen"])}
    for fam, null in nulls.items():
        for branch, r in (("uncond", ratio), ("nouncond", 0.0)):
            cond = make_conditions(labels, null, r, uniform_draws=inputs["uniform_draws"])
            out[f"labels_to_model_{fam}_{branch}"] = torch.cat([cond.pos, cond.neg])
            for h in config["hyperparameters"]:
                for loss_type in ("CCA", "DPO", "unlearning"):
                    used = "unlearning" if (fam, loss_type, branch) == ("llamagen", "CCA", "nouncond") else loss_type
                    loss, _ = compute_loss(used, out["logp_policy_pos"], out["logp_ref_pos"], out["logp_policy_neg"],
                                           out["logp_ref_neg"], beta=h["beta"], lambda_=h["lambda_"],
                                           neg_is_positive=cond.neg_is_positive)
                    out[f"loss_{fam}_{loss_type}_{branch}_h{h['index']}"] = loss.reshape(1)
    return out


class StepRecorder:
    """The trainer hooks (cca.trainer.Hooks) a training-step fixture needs: the recorded null-class draws fed in
    order, and per micro-step / optimizer step what the fixture expects, collected under its tensor names."""

    def __init__(self, uniform_draws: torch.Tensor | None):
        self.draws = None if uniform_draws is None else uniform_draws.reshape(-1).float()
        self.used, self.trainer = 0, None
        self.micro: list[dict] = []
        self.out: dict[str, list] = {"grad_norm_pre_clip": [], "lr_per_step": [], "weight_decay_per_step": [],
                                     "global_iteration_of_step": []}

    def hooks(self):
        from cca.trainer import Hooks
        return Hooks(uniforms=self.uniforms, micro_step=self.micro.append, step=self.step)

    def uniforms(self, n: int) -> torch.Tensor:
        if self.draws is None or self.used + n > self.draws.numel():
            raise RuntimeError(f"the fixture recorded {0 if self.draws is None else self.draws.numel()} null-class "
                               f"draws; the trainer asked for {self.used + n}")
        self.used += n
        return self.draws[self.used - n:self.used]

    def step(self, step: int, metrics: dict) -> None:
        self.out["grad_norm_pre_clip"].append(float(metrics["grad_norm"]))
        self.out["lr_per_step"].append(metrics["lr"])
        self.out["weight_decay_per_step"].append(metrics["weight_decay"])
        self.out["global_iteration_of_step"].append(len(self.micro) - 1)
        for name, p in self.trainer.policy.named_parameters():
            self.out.setdefault(f"step{step}/{name}", p.detach().clone())
            if self.trainer.ema is not None:
                self.out.setdefault(f"ema_step{step}/{name}", self.trainer.ema[name].clone())

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {k: v for k, v in self.out.items() if isinstance(v, torch.Tensor)}
        out["grad_norm_pre_clip"] = torch.tensor(self.out["grad_norm_pre_clip"], dtype=torch.float32)
        for k in ("lr_per_step", "weight_decay_per_step"):
            out[k] = torch.tensor(self.out[k], dtype=torch.float64)
        out["global_iteration_of_step"] = torch.tensor(self.out["global_iteration_of_step"], dtype=torch.int64)
        out["loss_per_microstep"] = torch.stack([m["loss"].float() for m in self.micro])
        out["labels_to_model"] = torch.stack([m["labels"].long().cpu() for m in self.micro])
        out["logp_gap_pos"] = torch.stack([m["delta_pos"].float() for m in self.micro])
        out["logp_gap_neg"] = torch.stack([m["delta_neg"].float() for m in self.micro])
        return out


def run_recorded_steps(make_trainer, dataset, uniform_draws: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Train on ``dataset`` in its order with ``make_trainer(hooks, out_dir)`` (a Trainer built the way a CLI
    builds it) in a scratch folder; returns the recorded tensors (see StepRecorder)."""
    import tempfile
    recorder = StepRecorder(uniform_draws)
    with tempfile.TemporaryDirectory() as tmp, torch.enable_grad():
        trainer = make_trainer(recorder.hooks(), tmp)
        trainer.cfg.shuffle = False          # the fixture's batches come in the order it recorded them,
        trainer.cfg.num_workers = 0          # from memory
        recorder.trainer = trainer
        trainer.fit(dataset)
    return recorder.tensors()


def compute_fixture(fixture_dir: str | Path) -> dict[str, torch.Tensor]:
    fixture_dir = Path(fixture_dir)
    cfg_path = fixture_dir / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"cca.parity: {cfg_path} not found (FIXTURE_DIR must hold config.json and the safetensors)")
    config = json.loads(cfg_path.read_text())
    kind = config.get("fixture")
    fn = fixture_function(kind)
    if fn is None:
        raise UsageError(f"cca.parity: {cfg_path}: unknown fixture kind {kind!r}; known: {', '.join(FIXTURE_KINDS)}")
    with torch.no_grad():
        produced = fn(fixture_dir, config)
    expected_names = set(load_file(str(fixture_dir / "expected.safetensors")))
    missing = sorted(expected_names - set(produced))
    if missing:
        raise RuntimeError(f"cca.parity: {kind} did not produce {missing[:10]}")
    return {k: v.detach().contiguous().cpu() for k, v in produced.items() if k in expected_names}


@exits_on_errors
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cca.parity", description=__doc__.strip().splitlines()[0],
                                 allow_abbrev=False)
    ap.add_argument("fixture_dir", help="folder with config.json, inputs.safetensors, expected.safetensors")
    ap.add_argument("--out", required=True, help="where to write the recomputed tensors (.safetensors)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    tensors = compute_fixture(args.fixture_dir)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out)
    print(f"wrote {len(tensors)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
