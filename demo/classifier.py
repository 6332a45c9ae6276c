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
from demo.config import ClassifierConfig
from demo.cpuload import THREADS



class FashionCNN(nn.Module):
    """Stages of (conv 3x3 -> BatchNorm -> ReLU) x len(stage), each followed by a 2x2 max-pool; then the last map
    flattened (or averaged over its positions: ``global_pool``) -> fc ``feat_dim`` (ReLU; the features) -> fc 10."""

    def __init__(self, image_size: int, stages: list[list[int]], feat_dim: int, global_pool: bool,
                 num_classes: int = 10):
        super().__init__()
        layers, width = [], 1
        for stage in stages:
            for out in stage:
                layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                width = out
            layers.append(nn.MaxPool2d(2))
        self.convs = nn.Sequential(*layers)
        self.global_pool = global_pool
        side = image_size // 2 ** len(stages)
        self.fc = nn.Linear(width if global_pool else width * side * side, feat_dim)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(feat_dim, num_classes)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, S, S) in [-1, 1] -> (features (B, feat_dim), logits (B, 10))."""
        h = self.convs(x)                                              # (B, C, S', S')
        h = h.mean((2, 3)) if self.global_pool else h.flatten(1)       # (B, C) or (B, C * S' * S')
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

    def __init__(self, net: FashionCNN, name: str, weights_sha256: str | None = None):
        self.net = net.eval()
        self.name, self.weights_sha256 = name, weights_sha256

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, logits = self.net.features_and_logits(FashionCNN.from_uint8(images))
        return {"pool": feats, "logits": logits}


def build_classifier(spec: ClassifierConfig, image_size: int) -> FashionCNN:
    return FashionCNN(image_size, spec.stages, spec.feat_dim, spec.global_pool)


def _batches(n: int, batch: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for s in range(0, n - batch + 1, batch):
        yield order[s:s + batch]


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, spec: ClassifierConfig, *, image_size: int,
                     batch_size: int = 128, lr: float = 2e-3, progress: bool = True) -> FashionCNN:
    """Adam with a cosine schedule; light augmentation (random 1-px shifts, horizontal flips); seeded by the spec."""
    seed, epochs = spec.seed, spec.epochs
    torch.manual_seed(seed)
    net = build_classifier(spec, image_size)
    x = torch.from_numpy(np.array(train_images)).float().div_(127.5).sub_(1.0)[:, None]   # (N, 1, S, S)
    y = torch.from_numpy(np.asarray(train_labels)).long()
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(y) // batch_size
    total = max(1, int(round(epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    bar = tqdm(total=total, desc=f"classifier {spec.name}", disable=not progress, dynamic_ncols=True)
    step = 0
    net.train()
    while step < total:
        for idx in _batches(len(y), batch_size, gen):
            THREADS.adapt()
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


def load_classifier(path, spec: ClassifierConfig, image_size: int) -> ClassifierFeatures:
    from cca.checkpoint import load_state_dict_file, load_strict
    from evaluations.inception import file_sha256
    net = build_classifier(spec, image_size)
    load_strict(net, load_state_dict_file(path), source=str(path))
    return ClassifierFeatures(net, spec.name, file_sha256(path))


if __name__ == "__main__":   # quick manual check: python3 -m demo.classifier
    from demo.config import DemoConfig
    from demo.data import load_split, resolve_data_dir
    root = resolve_data_dir(None)
    tr, te = load_split(root, True, 16), load_split(root, False, 16)
    for c in DemoConfig().classifiers:
        t0 = time.time()
        model = train_classifier(tr.images, tr.labels, c, image_size=16)
        print(f"{c.name}: {time.time() - t0:.1f}s test accuracy {accuracy(model, te.uint8_rgb(), te.labels):.4f}")
