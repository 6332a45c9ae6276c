"""A tiny class-conditional autoregressive model and its trainer adapter, for testing the shared core."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class ToyAR(nn.Module):
    """Two layers over (class, previous token): logits_t = head(relu(fc(cls_emb[c] + tok_emb[x_{t-1}])))."""

    def __init__(self, num_classes: int = 4, vocab: int = 6, dim: int = 16, dropout: float = 0.0):
        super().__init__()
        self.cls_emb = nn.Embedding(num_classes + 1, dim)      # last row: the null class
        self.tok_emb = nn.Embedding(vocab + 1, dim)            # last row: start token
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, vocab)
        self.vocab = vocab

    def forward(self, labels: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        h = self.cls_emb(labels)[:, None] + self.tok_emb(prev_tokens)        # (N, L, dim)
        return self.head(self.drop(torch.relu(self.fc(h))))                 # (N, L, V)


class ToyAdapter:
    def __init__(self, num_classes: int, vocab: int):
        self.num_classes, self.vocab = num_classes, vocab
        self.rows_seen = 0

    def prepare(self, batch, device):
        labels, tokens = batch
        start = torch.full_like(tokens[:, :1], self.vocab)
        prev = torch.cat([start, tokens[:, :-1]], dim=1)
        return labels.to(device), prev.to(device), tokens.to(device)

    def logits(self, model, labels, inputs):
        self.rows_seen += labels.shape[0]
        return model(labels, inputs)


class ToyData(Dataset):
    """Class c's sequences are mostly token c repeated (a strong class signal), plus noise."""

    def __init__(self, n: int = 64, num_classes: int = 4, vocab: int = 6, length: int = 5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(num_classes, (n,), generator=g)
        noise = torch.randint(vocab, (n, length), generator=g)
        keep = torch.rand(n, length, generator=g) < 0.7
        self.tokens = torch.where(keep, self.labels[:, None], noise)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.labels[i], self.tokens[i]
