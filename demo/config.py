"""Sizes and hyper-parameters of the miniature: the full run (``make demo``) and the ``--quick`` smoke run.

Each family has its own section; a stage's cache key is the JSON of the sections it depends on, so changing a
number here reruns exactly the stages it affects.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field


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


@dataclass
class CCAConfig:
    beta: float = 0.1
    lambda_: float = 1.0
    lr: float = 1e-4
    epochs: float = 0.15                           # share of the train split seen once (<= 1 epoch)
    batch_size: int = 64
    uncond_ratio: float = 0.0


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
