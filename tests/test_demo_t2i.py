"""The text-to-image miniature's pieces: held-out phrasings, a text encoder that knows every caption word, the
caption bank in LlamaGen's layout, CCA data with one fixed phrasing per image, samplers prompted with held-out
phrasings only, an encoder trained on the training phrasings that tells classes apart in phrasings it never saw."""
from __future__ import annotations

import numpy as np
import torch

from demo.config import ARConfig, CCAConfig, FamilyConfig, TokenizerConfig
from demo_t2i.captions import CLASS_NAMES, TEST_TEMPLATES, TRAIN_TEMPLATES, phrasings
from demo_t2i.family import CaptionCodes, encode_bank, t2i_family
from demo_t2i.text_encoder import UNK_ID, build_t5, train_t5, words_of
from LlamaGen.extract_t5_features import load_t5

TOKENS, WIDTH = 12, 8


def test_held_out_phrasings_are_new_sentences_with_known_names():
    train, test = phrasings(TRAIN_TEMPLATES), phrasings(TEST_TEMPLATES)
    assert len(train) == len(test) == len(CLASS_NAMES) == 10
    assert not {t for g in train for t in g} & {t for g in test for t in g}
    for c, names in enumerate(CLASS_NAMES):
        assert all(any(n in t for n in names) for t in train[c] + test[c])


def test_bank_encodes_every_word_and_left_pads(tmp_path):
    texts = [t for g in phrasings(TRAIN_TEMPLATES + TEST_TEMPLATES) for t in g]
    folder = build_t5(tmp_path / "t5", words_of(texts), WIDTH)
    tokenizer, _ = load_t5(folder, torch.float32, torch.device("cpu"))
    ids = tokenizer(texts)["input_ids"]
    assert tokenizer.unk_token_id not in {i for row in ids for i in row}
    assert max(map(len, ids)) <= TOKENS
    bank = encode_bank(folder, TEST_TEMPLATES, TOKENS)
    assert bank.emb.shape == (10, len(TEST_TEMPLATES) * 3, TOKENS, WIDTH)
    n = bank.mask.sum(-1)                                                  # real tokens per phrasing
    assert torch.equal(bank.mask, torch.arange(TOKENS) >= TOKENS - n[..., None])   # left-padded
    assert not bank.emb[~bank.mask].any()


def test_family_trains_on_training_phrasings_and_samples_held_out_ones(tmp_path, monkeypatch):
    texts = [t for g in phrasings(TRAIN_TEMPLATES + TEST_TEMPLATES) for t in g]
    folder = build_t5(tmp_path / "t5", words_of(texts), WIDTH)
    train, held = encode_bank(folder, TRAIN_TEMPLATES, TOKENS), encode_bank(folder, TEST_TEMPLATES, TOKENS)
    fc = FamilyConfig("t2i", TokenizerConfig(vocab_size=32), ARConfig(dim=32, n_layer=1, n_head=2),
                      CCAConfig(batch_size=4), cfg_scales=[2.0])
    fam = t2i_family(fc, WIDTH, TOKENS, train, held)
    labels = np.array([3, 3, 7, 1])
    data = CaptionCodes(torch.randint(0, 32, (4, 16)), labels, train, seed=0)
    for i, c in enumerate(labels):
        codes, emb, mask = data[i]
        assert any(torch.equal(emb, e) for e in train.emb[c]) and codes.shape == (16,)
    seen = []
    vq = type("VQ", (), {"downsample": 4})()
    model = fam.build_ar(fc, vq)
    monkeypatch.setattr("demo_t2i.family.llamagen_sampler",         # record the captions the sampler gets
                        lambda gpt, tok, cfg: (lambda cap, seed: seen.append(cap), None))
    fam.sampler(model, vq, 1.0)[0](torch.tensor([3, 3, 7]), 5)
    (cap,) = seen
    held_rows = {c: held.emb[c] for c in (3, 7)}
    assert all(any(torch.equal(cap.emb[i], e) for e in held_rows[c]) for i, c in enumerate([3, 3, 7]))
    assert not torch.equal(cap.emb[0], cap.emb[1])                        # phrasings spread over the batch
    loss = fam.ar_loss(model, torch.randint(0, 32, (4, 16)), torch.tensor(labels))
    assert loss.ndim == 0 and torch.isfinite(loss)


def _pooled(folder, texts):
    tokenizer, encoder = load_t5(folder, torch.float32, torch.device("cpu"))
    batch = tokenizer(texts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        h = encoder(**batch).last_hidden_state
    m = batch["attention_mask"][..., None]
    return (h * m).sum(1) / m.sum(1), batch["input_ids"]


def test_trained_encoder_separates_classes_of_held_out_phrasings(tmp_path):
    train, test = phrasings(TRAIN_TEMPLATES), phrasings(TEST_TEMPLATES)
    texts = [t for g in train for t in g]
    labels = [c for c, g in enumerate(train) for _ in g]
    folder = build_t5(tmp_path / "t5", words_of(texts), 16)
    before = _pooled(folder, texts)[0]
    fit = train_t5(folder, texts, labels, steps=150, lr=1e-2, seed=0)
    assert fit["accuracy"] == 1.0
    after, _ = _pooled(folder, texts)
    assert not torch.allclose(before, after)                      # the folder holds the trained weights
    centroids = torch.stack([after[torch.tensor(labels) == c].mean(0) for c in range(10)])
    held, ids = _pooled(folder, [t for g in test for t in g])
    assert (ids == UNK_ID).any()                                  # held-out template words are unknown to it
    nearest = torch.cdist(held, centroids).argmin(1)
    truth = torch.tensor([c for c, g in enumerate(test) for _ in g])
    assert (nearest == truth).float().mean() > 0.8                # a random encoder: about chance


def test_set_reaches_the_family_the_text_encoder_and_the_demo():
    from demo_t2i.__main__ import override
    from demo_t2i.config import full_config
    cfg, text = full_config()
    for assignment in ("t2i.cca.lambda_=3", "text.train_steps=0", "text.unk_prob=0.5", "per_class=7"):
        override(cfg, text, assignment)
    assert cfg.family("t2i").cca.lambda_ == 3.0 and cfg.per_class == 7
    assert text.train_steps == 0 and text.unk_prob == 0.5
