"""The evaluator's feature network for the miniature: a small CNN trained on the Fashion-MNIST train split.

It plugs into ``evaluations.features`` (the ``FeatureNet`` protocol): called on uint8 (B, H, W, 3) images it
returns ``pool`` (the penultimate features: classifier-FID, precision / recall) and ``logits`` (conditional
accuracy: the share of samples assigned to the class they were asked for).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cca.checkpoint import save_safetensors_atomic

NAME = "fmnist-cnn"


class FashionCNN(nn.Module):
    """conv 32 -> conv 32 -> pool -> conv 64 -> conv 64 -> pool -> fc ``feat_dim`` (ReLU; the features) -> fc 10."""

    def __init__(self, image_size: int = 16, feat_dim: int = 128, num_classes: int = 10):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        side = image_size // 4
        self.fc = nn.Linear(64 * side * side, feat_dim)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(feat_dim, num_classes)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, S, S) in [-1, 1] -> (features (B, feat_dim), logits (B, 10))."""
        h = self.convs(x).flatten(1)                                   # (B, 64 * S/4 * S/4)
        feats = F.relu(self.fc(h))                                     # (B, feat_dim)
        return feats, self.head(self.drop(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]

    @staticmethod
    def from_uint8(images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> (B, 1, H, W) in [-1, 1] (channels averaged: generated RGB may differ slightly)."""
        return images.float().mean(dim=-1)[:, None].div(127.5).sub(1.0)



class ClassifierFeatures:
    """``evaluations.features.FeatureNet`` around a trained FashionCNN: uint8 (B, H, W, C) ->
    {'pool': (B, feat_dim), 'logits': (B, 10)}."""

    def __init__(self, net: FashionCNN, weights_sha256: str | None = None):
        self.net = net.eval()
        self.name, self.weights_sha256 = NAME, weights_sha256

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, logits = self.net.features_and_logits(FashionCNN.from_uint8(images))
        return {"pool": feats, "logits": logits}


def _batches(n: int, batch: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for s in range(0, n - batch + 1, batch):
        yield order[s:s + batch]


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, *, image_size: int, epochs: float,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0, feat_dim: int = 128,
                     progress: bool = True) -> FashionCNN:
    """Adam with a cosine schedule; light augmentation (random 1-px shifts, horizontal flips)."""
    torch.manual_seed(seed)
    net = FashionCNN(image_size, feat_dim)
    x = torch.from_numpy(np.array(train_images)).float().div_(127.5).sub_(1.0)[:, None]   # (N, 1, S, S)
    y = torch.from_numpy(np.asarray(train_labels)).long()
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(y) // batch_size
    total = max(1, int(round(epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    bar = tqdm(total=total, desc="classifier", disable=not progress, dynamic_ncols=True)
    step = 0
    net.train()
    while step < total:
        for idx in _batches(len(y), batch_size, gen):
            xb = x[idx]
            if torch.rand((), generator=gen) < 0.5:
                xb = xb.flip(-1)
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(-2, -1))
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= total:
                break
    bar.close()
    return net.eval()


@torch.no_grad()
def accuracy(net: FashionCNN, images_uint8: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    """Share of (N, H, W, 3) uint8 images whose argmax class equals ``labels``."""
    hits = 0
    for s in range(0, len(labels), batch):
        x = FashionCNN.from_uint8(torch.from_numpy(np.ascontiguousarray(images_uint8[s:s + batch])))
        logits = net.eval()(x)                                          # (b, 10)
        hits += int((logits.argmax(1).numpy() == labels[s:s + batch]).sum())
    return hits / max(1, len(labels))


def save_classifier(net: FashionCNN, path) -> None:
    save_safetensors_atomic({k: v.detach().contiguous() for k, v in net.state_dict().items()}, path)


def load_classifier(path, image_size: int, feat_dim: int = 128) -> ClassifierFeatures:
    from cca.checkpoint import load_state_dict_file, load_strict
    from evaluations.inception import file_sha256
    net = FashionCNN(image_size, feat_dim)
    load_strict(net, load_state_dict_file(path), source=str(path))
    return ClassifierFeatures(net, file_sha256(path))


if __name__ == "__main__":   # quick manual check: python3 -m demo.classifier
    from demo.data import load_split, resolve_data_dir
    root = resolve_data_dir(None)
    tr, te = load_split(root, True, 16), load_split(root, False, 16)
    t0 = time.time()
    model = train_classifier(tr.images, tr.labels, image_size=16, epochs=2)
    print(f"{time.time() - t0:.1f}s test accuracy {accuracy(model, te.uint8_rgb(), te.labels):.4f}")
