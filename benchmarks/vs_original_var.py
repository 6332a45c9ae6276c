"""VAR rows of vs_original.py: the same random-weight VQVAE + VAR built by our code and by the original, with
identical weights (our state dict loaded strictly into the original), and the work each row times on both."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from VAR.adapter import VARAdapter
from VAR.sampler import autoregressive_infer_cfg, generate
from VAR.var import VAR
from VAR.vqvae import VQVAE

from originals import quiet
from side_by_side import NUM_CLASSES, ROW_KEYS, Pair, Row

CONFIGS = {   # the original VQVAE hard-codes ch_mult / num_res_blocks; its encoder and decoder are swapped to match
    "default": dict(patch_nums=(1, 2, 3, 4, 5, 6), V=512, Cvae=16, ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=2,
                    depth=4, embed_dim=256, num_heads=4),                          # 48 px images
    "quick": dict(patch_nums=(1, 2, 3), V=64, Cvae=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, depth=2,
                  embed_dim=64, num_heads=4),
    "released": dict(patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), V=4096, Cvae=32, ch=160, ch_mult=(1, 1, 2, 2, 4),
                     num_res_blocks=2, depth=16, embed_dim=1024, num_heads=16),
}
CFG, CCA = 1.5, dict(loss_type="CCA", beta=0.02, lambda_=50.0, uncond_ratio=0.1, lr=1e-6, grad_clip=2.0)


def top_k_p(c: dict) -> tuple[int, float]:
    """The released sampling setting (top-k 900 of 4096 codes, top-p 0.96) scaled to the vocabulary."""
    return max(1, round(900 * c["V"] / 4096)), 0.96


def build_ours(c: dict, device: torch.device) -> SimpleNamespace:
    torch.manual_seed(0)
    with torch.device(device):
        vae = VQVAE(vocab_size=c["V"], z_channels=c["Cvae"], ch=c["ch"], test_mode=True, share_quant_resi=4,
                    v_patch_nums=c["patch_nums"], ch_mult=c["ch_mult"], num_res_blocks=c["num_res_blocks"])
        var = VAR(vae, num_classes=NUM_CLASSES, depth=c["depth"], embed_dim=c["embed_dim"],
                  num_heads=c["num_heads"], cond_drop_rate=0.0, attn_l2_norm=True, patch_nums=c["patch_nums"])
        var.init_weights(init_std=-1)
    return SimpleNamespace(vae=vae, var=var.eval())


def build_original(o, c: dict, ours: SimpleNamespace, device: torch.device) -> SimpleNamespace:
    conv = dict(ch=c["ch"], ch_mult=c["ch_mult"], num_res_blocks=c["num_res_blocks"], dropout=0.0, in_channels=3,
                z_channels=c["Cvae"], using_sa=True, using_mid_sa=True)
    with quiet(), torch.device(device):
        vae = o.models.VQVAE(vocab_size=c["V"], z_channels=c["Cvae"], ch=c["ch"], test_mode=True,
                             share_quant_resi=4, v_patch_nums=c["patch_nums"])
        vae.encoder, vae.decoder = o.basic_vae.Encoder(double_z=False, **conv), o.basic_vae.Decoder(**conv)
        vae.load_state_dict(ours.vae.state_dict(), strict=True)
        vae.eval().requires_grad_(False)
        var = o.models.VAR(vae_local=vae, num_classes=NUM_CLASSES, depth=c["depth"], embed_dim=c["embed_dim"],
                           num_heads=c["num_heads"], drop_path_rate=0.0, norm_eps=1e-6, shared_aln=False,
                           cond_drop_rate=0.0, attn_l2_norm=True, patch_nums=c["patch_nums"])
        var.load_state_dict(ours.var.state_dict(), strict=True)
    return SimpleNamespace(vae=vae, var=var.eval())


class _NoDecode:
    """Stands in for the original sampler's VQVAE when only the tokens (the final f_hat) are timed."""

    @staticmethod
    def fhat_to_img(f_hat):
        return f_hat


def _original_tokens(var, **kwargs):
    proxy, var.vae_proxy = var.vae_proxy, (_NoDecode(),)
    try:
        return var.autoregressive_infer_cfg(**kwargs)
    finally:
        var.vae_proxy = proxy


def image_size(c: dict) -> int:
    return c["patch_nums"][-1] * 2 ** (len(c["ch_mult"]) - 1)


class VARRows(Pair):
    def __init__(self, o, c: dict, device: torch.device):
        super().__init__(o, c, device, build_ours, build_original)

    def sampling(self, cfg: float, whole: bool):
        k, p = top_k_p(self.c)

        def make(side, B):
            args = dict(B=B, label_B=self.labels(B), g_seed=0, cfg=cfg, top_k=k, top_p=p)
            if side == "ours":
                fn = autoregressive_infer_cfg if whole else generate
                return lambda: fn(self.ours.var, **args)
            if whole:
                return lambda: self.orig.var.autoregressive_infer_cfg(**args)
            return lambda: _original_tokens(self.orig.var, **args)
        return make

    def decode(self, side, B):
        pn, vae = self.c["patch_nums"][-1], self.side(side).vae
        f_hat = torch.randn(B, self.c["Cvae"], pn, pn, device=self.device)
        return torch.no_grad()(lambda: vae.fhat_to_img(f_hat))

    def encode(self, side, B):
        vae = self.side(side).vae
        res = image_size(self.c)
        img = torch.rand(B, 3, res, res, device=self.device) * 2 - 1
        return torch.no_grad()(lambda: vae.img_to_idxBl(img))

    def _teacher_forcing(self, B):
        g = torch.Generator().manual_seed(B)
        idx = [torch.randint(self.c["V"], (B, p * p), generator=g).to(self.device) for p in self.c["patch_nums"]]
        return self.labels(B), self.ours.vae.quantize.idxBl_to_var_input(idx), torch.cat(idx, 1)

    def plain_step(self, side, B):
        model = copy.deepcopy(self.side(side).var).train()
        labels, x, gt = self._teacher_forcing(B)

        def step():
            logits = model(labels, x)                                               # (B, L, V)
            F.cross_entropy(logits.view(-1, logits.shape[-1]), gt.view(-1)).backward()
            model.zero_grad(set_to_none=True)
        return step

    def cca_step(self, side, B):
        res = image_size(self.c)
        images = torch.rand(B, 3, res, res, device=self.device) * 2 - 1
        labels = self.labels(B)
        return (self._ours_cca if side == "ours" else self._original_cca)(B, images, labels)

    def _ours_cca(self, B, images, labels):
        tr = self.our_trainer(copy.deepcopy(self.ours.var), VARAdapter(self.ours.vae, NUM_CLASSES), B,
                              loss_type=CCA["loss_type"], beta=CCA["beta"], lambda_=CCA["lambda_"],
                              uncond_ratio=CCA["uncond_ratio"], lr=CCA["lr"], max_grad_norm=CCA["grad_clip"])
        return lambda: tr.train_step((images, labels))

    def _original_cca(self, B, images, labels):
        o = self.o
        policy, ref = copy.deepcopy(self.orig.var).train(), copy.deepcopy(self.orig.var).train()
        names, params = zip(*[(n, p) for n, p in policy.named_parameters() if p.requires_grad])
        opt = o.AmpOptimizer(mixed_precision=0, optimizer=torch.optim.AdamW(params, lr=CCA["lr"],
                             betas=(0.9, 0.95), weight_decay=0.0), names=list(names), paras=list(params),
                             grad_clip=CCA["grad_clip"], n_gradient_accumulation=1)
        tr = o.VAR_CCATrainer(device=self.device, patch_nums=self.c["patch_nums"], resos=(), vae_local=self.orig.vae,
                              ref_var_wo_ddp=ref, var_wo_ddp=policy, var=policy, var_opt=opt, label_smooth=0.0,
                              loss_type=CCA["loss_type"], beta=CCA["beta"], lambda_=CCA["lambda_"],
                              uncond_ratio=CCA["uncond_ratio"])
        # it=1, g_it=50: past the trainer's logging iterations (they need a process group)
        return lambda: tr.train_step(it=1, g_it=50, stepping=True, metric_lg=o.metric_logger, tb_lg=o.metric_logger,
                                     inp_B3HW=images, label_B=labels, prog_si=-1, prog_wp_it=1.0)


def rows(o, config: str, device: torch.device, sample_batches, train_batches) -> list[Row]:
    r = VARRows(o, CONFIGS[config], device)
    rows = [
        Row("free_whole", "guidance-free sampling, whole (tokens + VQVAE decode)", r.sampling(0.0, True),
            sample_batches),
        Row("free_tokens", "guidance-free sampling, tokens only", r.sampling(0.0, False), sample_batches),
        Row("cfg_whole", f"CFG sampling (cfg {CFG}), whole", r.sampling(CFG, True), sample_batches),
        Row("cfg_tokens", f"CFG sampling (cfg {CFG}), tokens only", r.sampling(CFG, False), sample_batches),
        Row("decode", "VQVAE decode (f_hat -> images)", r.decode, sample_batches),
        Row("encode", "VQVAE encode (images -> multi-scale tokens)", r.encode, sample_batches),
        Row("plain_step", "plain next-token step: forward + backward", r.plain_step, train_batches),
        Row("cca_step", "CCA step (tokenize, reference, policy fwd+bwd, clip, AdamW)", r.cca_step, train_batches),
    ]
    assert tuple(row.key for row in rows) == ROW_KEYS
    return rows
