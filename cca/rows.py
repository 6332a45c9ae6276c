"""The paper rows ``python -m cca.reproduce`` knows: which checkpoint, which sampling settings, which numbers to
expect and where each number comes from. docs/reproduce.md explains every row; tests check the two agree.

A row samples with the family's sampler (VAR_sample.py or LLamaGen_sample_ddp.py) and scores the npz with
evaluations/evaluator.py against ``ref`` (OpenAI's ImageNet 256 reference batch for every row here).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cca.hub import LLAMAGEN_SIZES, TOKENIZERS, VAR_DEPTHS

REF_256 = "VIRTUAL_imagenet256_labeled.npz"
REF_URLS = {
    REF_256: "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
             "VIRTUAL_imagenet256_labeled.npz",
    "VIRTUAL_imagenet512.npz": "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/"
                               "512/VIRTUAL_imagenet512.npz",
}
SOURCES = {
    "cca-t2": "CCA paper (arXiv 2410.09347) Table 2 (transcription in deep-diver/ai-paper-reviewer@7afec4f, "
              "content/paper-reviews/2410.09347; not checked against the PDF)",
    "cca-t3": "CCA paper (arXiv 2410.09347) Table 3 (same transcription; not checked against the PDF)",
    "cca-readme": "thu-ml/CCA README, model zoo 'FID (w/o CFG)' (originals/CCA/README.md)",
    "var-readme": "FoundationVision/VAR README, VAR zoo 'FID' (originals/CCA/VAR/README.md)",
    "llamagen-readme": "FoundationVision/LlamaGen README, c2i table 'FID (256x256)' (originals/CCA/LlamaGen/README.md)",
}
METRICS = ("fid", "inception_score", "sfid", "precision", "recall")

VAR_COMMON = ("--num_per_class", "50", "--num_classes", "1000", "--top_k", "900", "--top_p", "0.96", "--seed", "1")
VAR_README_CFG = "1.5"          # VAR README: FID evaluation with cfg=1.5, top_p=0.96, top_k=900, more_smooth=False
LLAMAGEN_COMMON = ("--image-size-eval", "256", "--num-fid-samples", "50000", "--global-seed", "0", "--top-k", "0",
                   "--top-p", "1.0", "--temperature", "1.0", "--cfg-interval", "-1")
LLAMAGEN_CFG = {"B": "2.0", "L": "2.0", "XL": "1.75", "XXL": "1.75", "3B": "1.65"}   # LlamaGen GETTING_STARTED.md


@dataclass(frozen=True)
class Row:
    id: str
    family: str                         # "var" or "llamagen"
    ckpt: str                           # release name (cca.hub) or path
    sampler_args: tuple[str, ...]       # every sampling setting (architecture flags come from the release)
    title: str
    expected: dict[str, tuple[float, str]] = field(default_factory=dict)   # metric -> (value, SOURCES key)
    note: str = ""
    ref: str = REF_256
    tokenizer: str = ""

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or TOKENIZERS[self.family]


def _expect(source: str, **values: float) -> dict[str, tuple[float, str]]:
    return {k: (v, source) for k, v in values.items()}


# Published numbers per size. FID of the base models with CFG and of the CCA models without: the READMEs;
# IS / sFID / precision / recall only where a table of the CCA paper gives them (Table 2: the largest models,
# Table 3: LlamaGen-L and VAR-d24).
VAR_BASE = {24: _expect("cca-t3", fid=6.20, inception_score=154.3, sfid=8.50, precision=0.74, recall=0.62),
            30: _expect("cca-t2", fid=5.25, inception_score=175.6, precision=0.75, recall=0.62)}
VAR_CFG_FID = {16: 3.55, 20: 2.95, 24: 2.33, 30: 1.97}
VAR_CCA_FID = {16: 4.03, 20: 3.02, 24: 2.63, 30: 2.54}
VAR_CCA_MORE = {24: _expect("cca-t3", inception_score=298.8, sfid=7.63, precision=0.84, recall=0.55),
                30: _expect("cca-t2", inception_score=264.2, precision=0.83, recall=0.56)}
LLAMAGEN_BASE = {"L": _expect("cca-t3", fid=19.00, inception_score=64.7, sfid=8.78, precision=0.61, recall=0.67),
                 "3B": _expect("cca-t2", fid=9.38, inception_score=112.9, precision=0.69, recall=0.67)}
LLAMAGEN_CFG_FID = {"B": 6.09, "L": 3.07, "XL": 2.62, "XXL": 2.34, "3B": 2.18}
LLAMAGEN_CFG_MORE = {"3B": _expect("cca-t2", inception_score=263.3)}
LLAMAGEN_CCA_FID = {"B": 7.04, "L": 3.43, "XL": 3.10, "XXL": 3.12, "3B": 2.69}
LLAMAGEN_CCA_MORE = {"L": _expect("cca-t3", inception_score=288.2, sfid=7.44, precision=0.81, recall=0.52),
                     "3B": _expect("cca-t2", inception_score=276.8, precision=0.80, recall=0.59)}


def _var_rows(depth: int) -> list[Row]:
    base = f"var_d{depth}"
    return [
        Row(f"var-d{depth}-base", "var", base, VAR_COMMON + ("--cfg", "0"), f"VAR-d{depth}, w/o guidance",
            VAR_BASE.get(depth, {})),
        Row(f"var-d{depth}-cfg", "var", base, VAR_COMMON + ("--cfg", VAR_README_CFG), f"VAR-d{depth}, CFG 1.5",
            _expect("var-readme", fid=VAR_CFG_FID[depth]),
            "the VAR paper's own guided numbers (e.g. d30: FID 1.92, IS 323.1 in CCA Table 2) used settings we "
            "could not verify; the expected FID is the README's, whose recipe is cfg 1.5"),
        Row(f"var-d{depth}-cca", "var", f"VAR_d{depth}_CCA", VAR_COMMON + ("--cfg", "0"),
            f"VAR-d{depth} + CCA, w/o guidance",
            {**_expect("cca-readme", fid=VAR_CCA_FID[depth]), **VAR_CCA_MORE.get(depth, {})}),
    ]


def _llamagen_rows(size: str) -> list[Row]:
    base, cca = f"c2i_{size}_384", f"c2i_{size}_384_CCA_0005000"
    free, cfg = LLAMAGEN_COMMON + ("--cfg-scale", "1.0"), LLAMAGEN_COMMON + ("--cfg-scale", LLAMAGEN_CFG[size])
    return [
        Row(f"llamagen-{size}-base", "llamagen", base, free, f"LlamaGen-{size}, w/o guidance",
            LLAMAGEN_BASE.get(size, {})),
        Row(f"llamagen-{size}-cfg", "llamagen", base, cfg, f"LlamaGen-{size}, CFG {LLAMAGEN_CFG[size]}",
            {**_expect("llamagen-readme", fid=LLAMAGEN_CFG_FID[size]), **LLAMAGEN_CFG_MORE.get(size, {})}),
        Row(f"llamagen-{size}-cca", "llamagen", cca, free, f"LlamaGen-{size} + CCA, w/o guidance",
            {**_expect("cca-readme", fid=LLAMAGEN_CCA_FID[size]), **LLAMAGEN_CCA_MORE.get(size, {})}),
        Row(f"llamagen-{size}-cca-cfg", "llamagen", f"{cca}_w_CFG", cfg,
            f"LlamaGen-{size} + CCA (trained for CFG), CFG {LLAMAGEN_CFG[size]}", {},
            "CCA+CFG numbers appear only in the paper's Figure 6; the guidance scale used there is not stated in "
            "the sources we read, so this row samples at the base model's scale (unverified)"),
    ]


ROWS: dict[str, Row] = {r.id: r for rows in ([_var_rows(d) for d in VAR_DEPTHS]
                                             + [_llamagen_rows(s) for s in LLAMAGEN_SIZES]) for r in rows}


# The CCA README's fine-tune commands per size (originals/CCA/README.md), without --beta, --lambda_ and the run
# name, which a lambda sweep sets per run (the README's lambda per size is CCA_LAMBDA).
VAR_FINETUNE = {
    16: "--depth=16 --bs=256 --ep=1 --tblr=2e-5 --fp16=1 --alng=1e-3 --wpe=0.1 --loss_type=CCA --ac=4 "
        "--dpr_ratio=0.0 --uncond_ratio=0.1",
    20: "--depth=20 --bs=256 --ep=1 --tblr=2e-5 --fp16=1 --alng=1e-3 --wpe=0.1 --loss_type=CCA --ac=8 "
        "--uncond_ratio=0.1",
    24: "--depth=24 --bs=256 --ep=1 --tblr=2e-5 --fp16=1 --alng=1e-4 --wpe=0.01 --loss_type=CCA --ac=8 "
        "--uncond_ratio=0.1",
    30: "--depth=30 --bs=256 --ep=1 --tblr=2e-5 --fp16=1 --alng=1e-5 --wpe=0.01 --twde=0.08 --loss_type=CCA "
        "--ac=16 --uncond_ratio=0.1",
}
LLAMAGEN_FINETUNE = ("--global-batch-size 256 --gradient-accumulation-step 16 --epochs=1 --ckpt-every=5000 "
                     "--lr=1e-5 --loss_type=CCA --uncond_ratio=0.1 --keep_dropout --image-size=384")
LLAMAGEN_FSDP_SIZES = ("XXL", "3B")          # LlamaGen_finetune_fsdp.py; the others LlamaGen_finetune.py
CCA_LAMBDA = {"var_d16": 50, "var_d20": 50, "var_d24": 100, "var_d30": 1000,
              "c2i_B_384": 1000, "c2i_L_384": 300, "c2i_XL_384": 1000, "c2i_XXL_384": 1000, "c2i_3B_384": 500}
