"""benchmarks/vs_original.py runs end to end and writes every row for both families (shape, never timing).

CI has no copy of the original release, so the first test writes a stand-in tree at run time: the original's module,
class and function names (VAR/models, VAR_CCA_trainer.py, LlamaGen/autoregressive/..., LlamaGen_finetune.py with its
``for x, y in loader`` loop) delegating to this project's code. The second runs against the real originals when
CCA_ORIGINAL_ROOT names them (thu-ml/CCA with VAR/ and LlamaGen/ inside).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"free_whole", "free_tokens", "cfg_whole", "cfg_tokens", "decode", "encode", "plain_step", "cca_step"}

STAND_IN = {
    "VAR/dist.py": "def get_device():\n    return 'cpu'\n",
    "VAR/models/__init__.py": '''
import VAR.var as _var
import VAR.vqvae as _vqvae
from VAR.quant import MultiScaleQuantizer as VectorQuantizer2


class VQVAE(_vqvae.VQVAE):
    def __init__(self, vocab_size, z_channels, ch, test_mode, share_quant_resi, v_patch_nums):
        super().__init__(vocab_size=vocab_size, z_channels=z_channels, ch=ch, test_mode=test_mode,
                         share_quant_resi=share_quant_resi, v_patch_nums=v_patch_nums)


class VAR(_var.VAR):
    def __init__(self, flash_if_available=True, fused_if_available=True, **kwargs):
        super().__init__(**kwargs)
''',
    "VAR/models/basic_vae.py": "from VAR.encoder_decoder import Decoder, Encoder\n",
    "VAR/utils/amp_sc.py": '''
import torch


class AmpOptimizer:
    def __init__(self, mixed_precision, optimizer, names, paras, grad_clip, n_gradient_accumulation=1):
        self.optimizer, self.paras, self.grad_clip = optimizer, paras, grad_clip

    def backward_clip_step(self, stepping, loss):
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.paras, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, None
''',
    "VAR_CCA_trainer.py": '''
import sys
sys.path.append("./VAR")
import torch
import dist
from VAR.models import VAR, VQVAE
from VAR.utils.amp_sc import AmpOptimizer
from VAR.utils.misc import MetricLogger, TensorboardLogger
from cca.loss import compute_loss, sequence_logprob


class VAR_CCATrainer:
    def __init__(self, device, patch_nums, resos, vae_local, ref_var_wo_ddp, var_wo_ddp, var, var_opt, label_smooth,
                 loss_type, beta, lambda_, uncond_ratio):
        self.vae, self.ref, self.var, self.opt, self.beta, self.lambda_ = (vae_local, ref_var_wo_ddp, var, var_opt,
                                                                           beta, lambda_)

    def train_step(self, it, g_it, stepping, metric_lg, tb_lg, inp_B3HW, label_B, prog_si, prog_wp_it):
        idx = self.vae.img_to_idxBl(inp_B3HW)
        gt, x = torch.cat(idx, 1), self.vae.quantize.idxBl_to_var_input(idx)
        labels = torch.cat([label_B, torch.roll(label_B, -1)])
        logp = sequence_logprob(self.var(labels, torch.cat([x, x])), torch.cat([gt, gt]))
        with torch.no_grad():
            ref = sequence_logprob(self.ref(labels, torch.cat([x, x])), torch.cat([gt, gt]))
        B = label_B.shape[0]
        loss, _ = compute_loss("CCA", logp[:B], ref[:B], logp[B:], ref[B:], beta=self.beta, lambda_=self.lambda_)
        return self.opt.backward_clip_step(stepping=stepping, loss=loss)
''',
    "LlamaGen/autoregressive/models/gpt.py": "from LlamaGen.gpt import ModelArgs, Transformer\n",
    "LlamaGen/autoregressive/models/generate.py": '''
from LlamaGen.generate import generate as _ours


def generate(model, cond, max_new_tokens, emb_masks=None, cfg_scale=1.0, cfg_interval=-1, **sampling_kwargs):
    return _ours(model, cond, max_new_tokens, cfg_scale=cfg_scale, cfg_interval=cfg_interval, **sampling_kwargs)
''',
    "LlamaGen/tokenizer/tokenizer_image/vq_model.py": '''
from LlamaGen.vq_model import Decoder, Encoder, VQModel
from LlamaGen.vq_model import VQModelArgs as ModelArgs
''',
    "LlamaGen_finetune.py": '''
import torch
import torch.nn.functional as F


def creat_optimizer(model, weight_decay, learning_rate, betas, logger):
    return torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)


def main(args, loader, model, ref_model, optimizer):
    running_loss = 0
    for x, y in loader:
        from cca.loss import compute_loss, sequence_logprob
        z, c = x.reshape(x.shape[0], -1), y.reshape(-1)
        labels = torch.cat([c, torch.roll(c, -1)])
        logp = sequence_logprob(model(cond_idx=labels, idx=torch.cat([z, z])[:, :-1])[0], torch.cat([z, z]))
        with torch.no_grad():
            ref = sequence_logprob(ref_model(cond_idx=labels, idx=torch.cat([z, z])[:, :-1])[0], torch.cat([z, z]))
        B = z.shape[0]
        loss, _ = compute_loss("CCA", logp[:B], ref[:B], logp[B:], ref[B:], beta=args.beta, lambda_=args.lambda_)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running_loss += loss.item()
''',
}


def write_stand_in(root: Path) -> Path:
    for rel, text in STAND_IN.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text.lstrip())
    return root


def run_tiny(original_root: Path, out: Path) -> tuple[dict, str]:
    cmd = [sys.executable, str(ROOT / "benchmarks/vs_original.py"), "--original-root", str(original_root),
           "--config", "quick", "--batch", "2", "--sample-batches", "2,3", "--train-batches", "2", "--rounds", "1",
           "--extra-rounds", "0", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def check_shape(res: dict, stdout: str) -> None:
    assert set(res["families"]) == {"var", "llamagen"}
    assert res["machine"]["torch"] and res["threads"] == 1
    for fam, family in res["families"].items():
        assert set(family["rows"]) == ROW_KEYS, fam
        for key, row in family["rows"].items():
            assert "error" not in row, (fam, key, row.get("error"))
            batches = ["2"] if key.endswith("step") else ["2", "3"]
            for side in ("ours", "original"):
                assert sorted(row["seconds"][side]) == batches and all(v > 0 for v in row["seconds"][side].values())
                assert str(row["best_batch"][side]) in batches
            assert row["ratio_ref"] > 0 and row["ratio_best_per_image"] > 0 and row["rounds"] >= 1
            assert row["label"] in stdout
    assert stdout.count("| **") == 2 * len(ROW_KEYS)      # one table line with a ratio per row and family


def test_vs_original_against_a_stand_in_tree(tmp_path):
    res, stdout = run_tiny(write_stand_in(tmp_path / "CCA"), tmp_path / "out.json")
    check_shape(res, stdout)


def test_vs_original_names_a_missing_tree(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/vs_original.py"), "--original-root",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "--original-root" in proc.stderr and "VAR/models/__init__.py" in proc.stderr


@pytest.mark.skipif(not os.environ.get("CCA_ORIGINAL_ROOT"), reason="CCA_ORIGINAL_ROOT (the original release) not set")
def test_vs_original_against_the_real_originals(tmp_path):
    res, stdout = run_tiny(Path(os.environ["CCA_ORIGINAL_ROOT"]), tmp_path / "out.json")
    check_shape(res, stdout)
