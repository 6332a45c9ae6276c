"""LlamaGen rows of vs_original.py: the same random-weight GPT and VQ tokenizer built by our code and by the
original, with identical weights (our state dict loaded strictly into the original), and the work each row times."""
from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import torch

from LlamaGen.adapter import LlamaGenAdapter
from LlamaGen.generate import generate
from LlamaGen.gpt import ModelArgs, Transformer
from LlamaGen.vq_model import VQModel, VQModelArgs

from originals import quiet
from side_by_side import NUM_CLASSES, ROW_KEYS, Pair, Row

CONFIGS = {   # the original VQModel hard-codes ch / num_res_blocks; its encoder and decoder are swapped to match
    "default": dict(dim=256, n_layer=4, n_head=4, vocab_size=1024, grid=8, codebook_embed_dim=8, z_channels=64,
                    ch=32, ch_mult=(1, 2, 2, 4)),                                  # 64 px images
    "quick": dict(dim=64, n_layer=2, n_head=4, vocab_size=128, grid=4, codebook_embed_dim=8, z_channels=16, ch=32,
                  ch_mult=(1, 1)),
    "released": dict(dim=768, n_layer=12, n_head=12, vocab_size=16384, grid=24, codebook_embed_dim=8,
                     z_channels=256, ch=128, ch_mult=(1, 1, 2, 2, 4)),        # GPT-B at 384 px, VQ-16
}
CFG_SCALE = 2.0
SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0)          # LlamaGen's sampling defaults
CCA = dict(loss_type="CCA", beta=0.02, lambda_=1000.0, uncond_ratio=0.1, lr=1e-6, max_grad_norm=1.0)


def gpt_args(c: dict) -> dict:
    return dict(dim=c["dim"], n_layer=c["n_layer"], n_head=c["n_head"], vocab_size=c["vocab_size"],
                block_size=c["grid"] ** 2, num_classes=NUM_CLASSES, class_dropout_prob=1e-5, token_dropout_p=0.0,
                resid_dropout_p=0.0, ffn_dropout_p=0.0, drop_path_rate=0.0)


def vq_args(c: dict) -> dict:
    return dict(codebook_size=c["vocab_size"], codebook_embed_dim=c["codebook_embed_dim"], z_channels=c["z_channels"],
                encoder_ch_mult=list(c["ch_mult"]), decoder_ch_mult=list(c["ch_mult"]))


def build_ours(c: dict, device: torch.device) -> SimpleNamespace:
    torch.manual_seed(0)
    with torch.device(device):
        gpt = Transformer(ModelArgs(**gpt_args(c)))
        for p in gpt.parameters():           # the zero-initialised head would make every logit equal
            torch.nn.init.normal_(p, std=0.02)
        vq = VQModel(VQModelArgs(ch=c["ch"], **vq_args(c)))
    return SimpleNamespace(gpt=gpt.eval(), vq=vq.eval())


def build_original(o, c: dict, ours: SimpleNamespace, device: torch.device) -> SimpleNamespace:
    conv = dict(ch=c["ch"], ch_mult=c["ch_mult"], num_res_blocks=2, norm_type="group", dropout=0.0)
    with quiet(), torch.device(device):
        gpt = o.gpt.Transformer(o.gpt.ModelArgs(**gpt_args(c)))
        gpt.load_state_dict(ours.gpt.state_dict(), strict=True)
        vq = o.vq.VQModel(o.vq.ModelArgs(**vq_args(c)))
        vq.encoder = o.vq.Encoder(in_channels=3, z_channels=c["z_channels"], **conv)
        vq.decoder = o.vq.Decoder(z_channels=c["z_channels"], out_channels=3, **conv)
        vq.load_state_dict(ours.vq.state_dict(), strict=True)
    return SimpleNamespace(gpt=gpt.eval(), vq=vq.eval())


class LlamaGenRows(Pair):
    def __init__(self, o, c: dict, device: torch.device):
        super().__init__(o, c, device, build_ours, build_original)

    def _codes(self, B):
        g = torch.Generator().manual_seed(B)
        return torch.randint(self.c["vocab_size"], (B, self.c["grid"] ** 2), generator=g).to(self.device)

    def _shape(self, B):
        return [B, self.c["codebook_embed_dim"], self.c["grid"], self.c["grid"]]

    def sampling(self, cfg_scale: float, whole: bool):
        T = self.c["grid"] ** 2

        def make(side, B):
            m = self.side(side)
            fn = generate if side == "ours" else self.o.generate
            cond = self.labels(B)
            tokens = lambda: fn(m.gpt, cond, T, cfg_scale=cfg_scale, **SAMPLING)                   # noqa: E731
            if not whole:
                return tokens
            return torch.no_grad()(lambda: m.vq.decode_code(tokens(), self._shape(B)))
        return make

    def decode(self, side, B):
        vq, codes = self.side(side).vq, self._codes(B)
        return torch.no_grad()(lambda: vq.decode_code(codes, self._shape(B)))

    def encode(self, side, B):
        vq, res = self.side(side).vq, self.c["grid"] * 2 ** (len(self.c["ch_mult"]) - 1)
        img = torch.rand(B, 3, res, res, device=self.device) * 2 - 1
        return torch.no_grad()(lambda: vq.encode(img))

    def _fresh_gpt(self, side):
        """A training copy; the original's sampler leaves KV caches on its model, so copy a clean one."""
        model = copy.deepcopy(self.side(side).gpt)
        for layer in model.layers if side == "original" else ():
            layer.attention.kv_cache = None
        return model.train()

    def plain_step(self, side, B):
        model, codes, labels = self._fresh_gpt(side), self._codes(B), self.labels(B)

        def step():
            _, loss = model(cond_idx=labels, idx=codes[:, :-1], targets=codes)
            loss.backward()
            model.zero_grad(set_to_none=True)
        return step

    def cca_step(self, side, B):
        codes, labels = self._codes(B), self.labels(B)
        policy = self._fresh_gpt(side)
        if side == "ours":
            tr = self.our_trainer(policy, LlamaGenAdapter(NUM_CLASSES), B, **CCA)
            return lambda: tr.train_step((codes, labels))
        # the original loop body with what its main() sets up: train-mode reference, its own AdamW, no scaler
        args = SimpleNamespace(num_classes=NUM_CLASSES, gradient_accumulation_steps=1, ema=False, **CCA)
        env = dict(args=args, device=self.device, model=policy, ref_model=copy.deepcopy(policy).requires_grad_(False),
                   optimizer=self.o.creat_optimizer(policy, 0.0, CCA["lr"], (0.9, 0.95), logging.getLogger("null")),
                   scaler=torch.amp.GradScaler("cuda", enabled=False), ptdtype=torch.float32, acc_step=0)
        return lambda: self.o.cca_step(codes, labels.clone(), env)   # the loop writes null labels into y


def rows(o, config: str, device: torch.device, sample_batches, train_batches) -> list[Row]:
    r = LlamaGenRows(o, CONFIGS[config], device)
    rows = [
        Row("free_whole", "guidance-free generation, whole (tokens + VQ decode)", r.sampling(1.0, True),
            sample_batches),
        Row("free_tokens", "guidance-free generation, tokens only", r.sampling(1.0, False), sample_batches),
        Row("cfg_whole", f"CFG generation (scale {CFG_SCALE}), whole", r.sampling(CFG_SCALE, True), sample_batches),
        Row("cfg_tokens", f"CFG generation (scale {CFG_SCALE}), tokens only", r.sampling(CFG_SCALE, False),
            sample_batches),
        Row("decode", "VQ decode (codes -> images)", r.decode, sample_batches),
        Row("encode", "VQ encode (images -> codes)", r.encode, sample_batches),
        Row("plain_step", "plain next-token step: forward + backward", r.plain_step, train_batches),
        Row("cca_step", "CCA step (reference, policy fwd+bwd, clip, AdamW)", r.cca_step, train_batches),
    ]
    assert tuple(row.key for row in rows) == ROW_KEYS
    return rows
