"""The miniature's text encoder: a tiny T5 encoder built here, with a word-level tokenizer over the training
captions' words (appending </s>, as T5's does; a word it never saw becomes <unk>). Saved as a Hugging Face folder,
so the project's T5 code path (``LlamaGen.extract_t5_features``: cleaning, tokenising, encoding) runs on it
unchanged. ``train_t5`` then teaches it the training phrasings: a linear head on its mean-pooled features predicts
the class a caption names, with words replaced by <unk> at random so that unseen words (the held-out templates')
are ignored. A random, untrained encoder is what ``train_steps = 0`` keeps.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2          # the tokenizer's special ids; words follow from 3


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
    vocab = {"<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS_ID)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = transformers.T5Config(vocab_size=len(vocab), d_model=width, d_kv=max(4, width // 4), num_heads=2,
                                       num_layers=layers, d_ff=2 * width, feed_forward_proj="gated-gelu")
        transformers.T5EncoderModel(config).save_pretrained(folder)
    return Path(folder)


def _token_ids(tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions tokenised as the T5 path tokenises them: ids (N, S) right-padded, mask (N, S) bool."""
    from LlamaGen.caption_text import preprocess
    batch = tokenizer([preprocess(c) for c in captions], padding="longest", add_special_tokens=True,
                      return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"].bool()


def _class_logits(encoder, head: torch.nn.Linear, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, classes): the head on the encoder's mean features over each caption's real tokens."""
    h = encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state   # (N, S, D)
    return head((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


def train_t5(folder: Path, captions: list[str], labels: list[int], steps: int, *, lr: float = 3e-3,
             unk_prob: float = 0.2, seed: int = 0) -> dict:
    """Trains the encoder in ``folder`` to tell the classes of ``captions`` apart (cross-entropy of a linear head
    on its mean features), full batch, AdamW; saves it back. Returns the last loss and the accuracy afterwards."""
    from LlamaGen.extract_t5_features import load_t5
    tokenizer, encoder = load_t5(folder, torch.float32, torch.device("cpu"))
    encoder.train()
    ids, mask = _token_ids(tokenizer, captions)                               # (N, S), (N, S)
    y = torch.tensor(labels)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = torch.nn.Linear(encoder.config.d_model, int(y.max()) + 1)
        opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=lr, weight_decay=0.0)
        words = mask & (ids > UNK_ID)                                         # not <pad> / </s> / <unk>
        for _ in range(steps):
            drop = words & (torch.rand(ids.shape, generator=gen) < unk_prob)
            loss = F.cross_entropy(_class_logits(encoder, head, ids.masked_fill(drop, UNK_ID), mask), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    encoder.eval().save_pretrained(folder)
    with torch.no_grad():                                                     # no dropout, no <unk>
        accuracy = (_class_logits(encoder, head, ids, mask).argmax(1) == y).float().mean().item()
    return {"loss": loss.item(), "accuracy": accuracy}
