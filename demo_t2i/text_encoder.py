"""The miniature's text encoder: a tiny T5 encoder built here, randomly initialised and never trained, with a
word-level tokenizer over the captions' words (appending </s>, as T5's does). Saved as a Hugging Face folder, so
the project's T5 code path (``LlamaGen.extract_t5_features``: cleaning, tokenising, encoding) runs on it unchanged.
"""
from __future__ import annotations

from pathlib import Path

import torch


def words_of(texts: list[str]) -> list[str]:
    """The words the tokenizer must know: every caption cleaned as the T5 path cleans it, then split as the
    tokenizer splits it (whitespace and punctuation runs), in first-seen order."""
    from tokenizers import pre_tokenizers

    from LlamaGen.caption_text import preprocess
    split = pre_tokenizers.Whitespace()
    return list(dict.fromkeys(w for t in texts for w, _ in split.pre_tokenize_str(preprocess(t))))


def build_t5(folder: Path, words: list[str], width: int = 16, layers: int = 1, seed: int = 0) -> Path:
    """Writes the tokenizer and a ``layers``-block T5 encoder of ``width`` into ``folder``; returns it."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = transformers.T5Config(vocab_size=len(vocab), d_model=width, d_kv=max(4, width // 4), num_heads=2,
                                       num_layers=layers, d_ff=2 * width, feed_forward_proj="gated-gelu")
        transformers.T5EncoderModel(config).save_pretrained(folder)
    return Path(folder)
