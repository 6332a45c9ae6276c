"""Sizes of the text-to-image miniature (full run and --quick), in the class-conditional demo's config types."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from demo.config import ARConfig, CCAConfig, DemoConfig, FamilyConfig, TokenizerConfig, feature_networks


@dataclass
class TextConfig:
    width: int = 32                 # T5 d_model = the GPT's caption_dim
    layers: int = 2
    tokens: int = 12                # caption rows (--cls-token-num): the longest caption is 11 tokens with </s>
    seed: int = 0
    train_steps: int = 300          # full-batch steps of the encoder on the training phrasings (0: random encoder)
    unk_prob: float = 0.2           # words replaced by <unk> while it trains


def full_config() -> tuple[DemoConfig, TextConfig]:
    # the class-conditional LlamaGen miniature's tokenizer and CCA settings (demo/config.py, demo/TUNING.md); a
    # GPT of dim 192 x 6 for 700 steps (its 12 caption tokens make every step dearer than the class token's one)
    # and 3,000 samples per variant, to stay well inside 20 minutes on 2 cores
    t2i = FamilyConfig("t2i", TokenizerConfig(), ARConfig(dim=192, n_layer=6, steps=700),
                       CCAConfig(beta=0.1, lambda_=2.0, lr=1e-4), cfg_scales=[1.5, 2.5, 4.0])
    return DemoConfig(per_class=300, sample_batch=1500, timing_batch=1500, families=[t2i]), TextConfig()


def quick_config() -> tuple[DemoConfig, TextConfig]:
    """About a minute: the pipeline end to end at tiny sizes, not the claim."""
    t2i = FamilyConfig("t2i", TokenizerConfig(vocab_size=64, steps=40, batch_size=32),
                       ARConfig(dim=64, n_layer=2, n_head=2, steps=60, batch_size=32),
                       CCAConfig(epochs=0.5, batch_size=32), cfg_scales=[2.0])
    cfg = DemoConfig(train_images=1000, test_images=500, per_class=5, sample_batch=50, timing_batch=20,
                     timing_rounds=1, timing_patience=5.0, bootstrap_replicates=200, families=[t2i],
                     classifiers=[dataclasses.replace(c, epochs=4.0) for c in feature_networks()])
    return cfg, TextConfig(width=16, layers=1, train_steps=30)
