"""Sizes and hyper-parameters of the miniature: the full run (``make demo``) and the ``--quick`` smoke run.

Each family has its own section; a stage's cache key is the JSON of the sections it depends on, so changing a
number here reruns exactly the stages it affects.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from cca.errors import UsageError


@dataclass
class TokenizerConfig:
    vocab_size: int = 256
    ch: int = 16                                   # GroupNorm(min(32, ch)); decoder cost per image ~ ch^2
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 1])   # 16 px -> 4 x 4 latents
    num_res_blocks: int = 0
    z_channels: int = 32                           # LlamaGen: encoder width; VAR: Cvae (code dimension)
    patch_nums: list[int] = field(default_factory=lambda: [1, 2, 3, 4])   # VAR only
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3


@dataclass
class ARConfig:
    dim: int = 128
    n_layer: int = 4
    n_head: int = 4
    label_dropout: float = 0.1                     # the null class is learned (CFG needs it)
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3


BOTH = ("llamagen", "var")


def _switch(default, families: tuple[str, ...] = BOTH, sampling: bool = False):
    """A recipe switch of the fine-tune / sample scripts (docs/differences.md). A training cache key leaves it out
    while it is at its default, so that the keys of runs made before it existed stay valid, and always when it
    only changes the sampling (then the fine-tuned model is reused)."""
    return field(default=default, metadata={"switch": True, "families": families, "sampling": sampling})


@dataclass
class CCAConfig:
    beta: float = 0.1
    lambda_: float = 1.0
    lr: float = 1e-4
    epochs: float = 0.15                           # share of the train split seen once (<= 1 epoch)
    batch_size: int = 64
    uncond_ratio: float = 0.0
    # the scripts' switches, each defaulting to what the miniature did before it had them (demo/finetune.py)
    unlearning: bool = _switch(False)              # --loss_type unlearning (else CCA)
    ref_eval_mode: bool = _switch(True)            # LlamaGen --ref-eval-mode, VAR --ref_dropout 0; 0: train mode
    ref_bf16: bool = _switch(False, ("llamagen",))   # LlamaGen --ref-dtype bf16
    grad_accum: int = _switch(1)                   # LlamaGen --gradient-accumulation-steps, VAR --ac
    grad_accum_mean: bool = _switch(True)          # LlamaGen --grad-accum-mean (0: the original's sum); VAR: 1
    max_grad_norm: float = _switch(0.0)            # LlamaGen --max-grad-norm, VAR --tclip (0: no clipping)
    roll_per_micro_batch: bool = _switch(False)    # LlamaGen --roll-per-micro-batch, VAR --roll_per_micro_batch
    keep_dropout: bool = _switch(False, ("llamagen",))             # LlamaGen --keep_dropout with the flags below
    dropout_p: float = _switch(0.1, ("llamagen",))                 # --dropout-p
    token_dropout_p: float = _switch(0.1, ("llamagen",))           # --token-dropout-p
    drop_path_rate: float = _switch(0.0)           # LlamaGen --drop-path-rate (with keep_dropout); VAR: the
                                                   # model's rate (--dpr_ratio r gives 0.1 r depth / 24)
    dropout_with_drop_path: bool = _switch(False, ("llamagen",))   # --dropout-with-drop-path
    balanced_labels: bool = _switch(True, ("llamagen",), sampling=True)   # LLamaGen_sample_ddp --balanced-labels
    round_uint8: bool = _switch(True, ("var",), sampling=True)            # VAR_sample.py --round_uint8

    def train_key(self) -> dict:
        """The settings that make the fine-tuned model (the training stage's cache key)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("switch")
                or (f.name not in SAMPLING_FIELDS and getattr(self, f.name) != f.default)}

    def sampling_changes(self) -> dict:
        """The sampling switches that differ from their defaults, e.g. {'round_uint8': False}."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name in SAMPLING_FIELDS and getattr(self, f.name) != f.default}


SAMPLING_FIELDS = {f.name for f in dataclasses.fields(CCAConfig) if f.metadata.get("sampling")}


def check_cca_fields(family: str, fields, flag: str) -> None:
    """UsageError naming ``flag`` for a CCA setting that ``family``'s scripts do not have."""
    meta = {f.name: f.metadata for f in dataclasses.fields(CCAConfig)}
    for name in fields:
        if family not in meta[name].get("families", BOTH):
            raise UsageError(f"{flag}: {name} is a {' / '.join(meta[name]['families'])} setting, not {family}'s")


@dataclass
class ClassifierConfig:
    """A feature network of the evaluation (``demo.classifier.FashionCNN``), trained on the train split."""
    name: str
    stages: list[list[int]]                        # conv widths per stage; each stage ends in a 2x2 max-pool
    feat_dim: int                                  # the features (classifier-FID, precision / recall)
    global_pool: bool                              # average the last map over positions (else flatten it)
    seed: int
    epochs: float = 1.0


def feature_networks() -> list[ClassifierConfig]:
    """Two independently trained networks of different depth, width, pooling and seed: a target counts only
    if it holds under both (one network's features alone flipped a claim, issue 19)."""
    return [ClassifierConfig("cnn-a", [[32, 32], [64, 64]], 128, False, seed=0),
            ClassifierConfig("cnn-b", [[24], [48], [96]], 64, True, seed=1)]


@dataclass
class FamilyConfig:
    family: str
    tokenizer: TokenizerConfig
    ar: ARConfig
    cca: CCAConfig
    cfg_scales: list[float]                        # base + CFG sweep, in the family's own convention
    curve_lambdas: list[float] = field(default_factory=list)   # --curves: CCA fine-tunes at these lambdas


@dataclass
class DemoConfig:
    image_size: int = 16
    train_images: int | None = None                # None: all 60,000
    test_images: int | None = None                 # None: all 10,000 (the FID / precision-recall reference)
    classifiers: list[ClassifierConfig] = field(default_factory=feature_networks)
    per_class: int = 500                           # samples per class and variant (FID noise at 2,000 was ~1)
    # 2,500 rows per step amortise the per-step fixed cost (Python, weight reads, thread wake-ups: worse on a
    # loaded machine) that would otherwise favour CFG's 2B rows; 5,000 samples = 2 batches
    sample_batch: int = 2500
    timing_batch: int = 2500                       # as sample_batch: timed as the samples were made
    timing_rounds: int = 2                         # CCA timed next to each CFG scale in every round
    quiet_load: float = 0.1                        # foreign cores during a timed batch at most this: it is quiet
    timing_patience: float = 90.0                  # s per family the timing may wait for quiet / repeat batches
    bootstrap_replicates: int = 1000               # resamples of each variant's samples (95 % intervals)
    seed: int = 0
    families: list[FamilyConfig] = field(default_factory=list)

    def family(self, name: str) -> FamilyConfig:
        for f in self.families:
            if f.family == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def key_of(*parts) -> str:
    """Short stable hash of JSON-able parts (dataclasses allowed)."""
    blob = json.dumps([dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def full_config() -> DemoConfig:
    # CCA settings from the sweeps in demo/TUNING.md: lambda 1-2 (the paper's 50-1000 collapse models this small),
    # beta 0.1, 0.15 epoch; VAR also trains the null class on 10 % of rows, as the paper does.
    # Sizes: decoding to pixels costs every sampler the same, so it must be small beside the token generation for
    # CFG's doubled rows to show as about twice the time per image (as on the GPUs the paper timed, where the
    # sequential token steps dominate).
    # Hence 16-channel tokenizers (0.04-0.13 ms per image to decode), a LlamaGen of dim 256 x 8 layers (1.4-1.8 ms
    # per image of tokens; 900 pretraining steps keep the whole run under 25 minutes) and a VAR of 6 blocks (1.0 ms
    # of tokens per image against 0.07 ms of decoding), all measured in the full runs of demo/TUNING.md
    llamagen = FamilyConfig("llamagen", TokenizerConfig(), ARConfig(dim=256, n_layer=8, steps=900),
                            CCAConfig(beta=0.1, lambda_=2.0, lr=1e-4), cfg_scales=[1.5, 2.0, 3.0, 4.0],
                            curve_lambdas=[0.5, 1.0, 2.0, 4.0])
    var = FamilyConfig("var", TokenizerConfig(z_channels=16), ARConfig(n_layer=6),
                       CCAConfig(beta=0.1, lambda_=2.0, lr=2e-4, uncond_ratio=0.1),
                       cfg_scales=[1.0, 2.0, 3.0, 4.0], curve_lambdas=[0.5, 1.0, 2.0, 4.0])
    return DemoConfig(families=[llamagen, var])


def quick_config() -> DemoConfig:
    """About a minute: checks the pipeline end to end and the shape of its outputs, not the claim."""
    tok = dict(steps=40, batch_size=32)
    ar = dict(dim=64, n_layer=2, n_head=2, steps=60, batch_size=32)
    cca = dict(epochs=0.5, batch_size=32)
    llamagen = FamilyConfig("llamagen", TokenizerConfig(vocab_size=64, **tok), ARConfig(**ar), CCAConfig(**cca),
                            cfg_scales=[2.0], curve_lambdas=[0.5, 1.0, 2.0])
    var = FamilyConfig("var", TokenizerConfig(vocab_size=64, z_channels=16, **tok), ARConfig(**ar),
                       CCAConfig(**cca), cfg_scales=[1.0], curve_lambdas=[0.5, 1.0, 2.0])
    return DemoConfig(train_images=1000, test_images=500, per_class=5, sample_batch=50,
                      timing_batch=20, timing_rounds=1, timing_patience=5.0, bootstrap_replicates=200,
                      families=[llamagen, var],
                      classifiers=[dataclasses.replace(c, epochs=4.0) for c in feature_networks()])
