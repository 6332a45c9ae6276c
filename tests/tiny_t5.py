"""A tiny randomly initialised T5 encoder folder (word-level tokenizer that appends </s>), built offline."""
from __future__ import annotations

from pathlib import Path

import torch
import transformers


def make_t5(folder: Path, words: list[str], width: int = 16, seed: int = 0) -> Path:
    """Writes tokenizer + 1-layer T5 encoder of ``width`` to ``folder``; returns it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = transformers.T5Config(vocab_size=len(vocab), d_model=width, d_kv=4, num_heads=2, num_layers=1,
                                       d_ff=2 * width, feed_forward_proj="gated-gelu")
        transformers.T5EncoderModel(config).save_pretrained(folder)
    return folder
