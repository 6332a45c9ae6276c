"""InceptionV3 as frozen in TensorFlow's `classify_image_graph_def.pb` (inception-2015-12-05), the network behind
the ADM evaluator's IS, FID, sFID, precision and recall.

Differences from torchvision's InceptionV3 (the "FID variant", as ported by pytorch-fid):
- the 3x3 average pools inside the 35x35, 17x17 and first 8x8 blocks ignore zero padding (TF "SAME" pooling),
- the last 8x8 block pools with a 3x3 *max* pool in its pool branch,
- 1008 output classes; BatchNorm eps 1e-3.
Parameter names equal pytorch-fid's (torchvision's) so `pt_inception-2015-12-05-6726825d.pth` loads strictly.

Preprocessing follows the TF graph that ADM feeds at `ExpandDims:0`: float RGB in [0, 255] -> TF1 `ResizeBilinear`
to 299x299 (align_corners=False, no half-pixel centres) -> (x - 128) / 128.
Outputs (see `forward`): `pool` = pool_3 (2048), `spatial` = the first 7 channels of `mixed_6/conv` (the 1x1 branch
of Mixed_6d, after its ReLU) flattened in TF's HWC order (7 * 17 * 17 = 2023), `logits` = pool_3 @ W_softmax^T
*without* the bias, which is what ADM's Inception Score softmax uses.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cca.hub import file_sha256
from evaluations.npz_io import InputError

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch-hub convention: the file name carries its sha256 prefix
WEIGHTS_ENV = "CCA_INCEPTION_WEIGHTS"
NET_NAME = "adm-inception-v3"  # the TF graph ADM uses; recorded in saved stats and the printed header
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]


def tf1_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x ResizeBilinear (align_corners=False, half_pixel_centers=False) on (B, C, H, W) float input.

    Source coordinate of output pixel i is i * (in / out) (no half-pixel shift), neighbours clamp at the border,
    and the lerp is evaluated in TF's order: along x first, then y.
    """
    in_h, in_w = x.shape[-2:]
    out_h, out_w = size
    if (in_h, in_w) == (out_h, out_w):
        return x

    def source_grid(in_n: int, out_n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_n / out_n, dtype=torch.float32)
        pos = torch.arange(out_n, dtype=torch.float32) * scale  # (out_n,) float32 as in TF
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=in_n - 1)
        frac = pos - lo.float()
        return lo.to(x.device), hi.to(x.device), frac.to(device=x.device, dtype=x.dtype)

    y_lo, y_hi, dy = source_grid(in_h, out_h)
    x_lo, x_hi, dx = source_grid(in_w, out_w)
    left, right = x.index_select(-1, x_lo), x.index_select(-1, x_hi)  # (B, C, in_h, out_w)
    rows = left + (right - left) * dx  # (B, C, in_h, out_w): every input row lerped along x, as TF does per row
    top, bottom = rows.index_select(-2, y_lo), rows.index_select(-2, y_hi)  # (B, C, out_h, out_w)
    return top + (bottom - top) * dy[:, None]  # (B, C, out_h, out_w)


class ConvBNReLU(nn.Module):
    """Bias-free convolution, inference BatchNorm (eps 1e-3), ReLU: TF's conv2d_params + batchnorm + Relu.

    In eval mode the BatchNorm is folded into the convolution (weights scaled by gamma / sqrt(var + eps),
    computed in float64 and cached until any of the five tensors changes): one pass less per layer, same
    function up to float rounding.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)
        self._folded: tuple | None = None  # (versions, source tensors, folded weight, folded bias)

    def _folded_conv(self) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = (self.conv.weight, self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var)
        versions = tuple((t._version, t.data_ptr(), t.device, t.dtype) for t in tensors)
        cached = self._folded
        if cached is None or cached[0] != versions or any(a is not b for a, b in zip(cached[1], tensors)):
            with torch.inference_mode(False), torch.no_grad():
                w, gamma, beta, mean, var = (t.detach().double() for t in tensors)
                scale = gamma / torch.sqrt(var + self.bn.eps)  # (out,)
                weight = (w * scale[:, None, None, None]).to(self.conv.weight.dtype)  # (out, in, kh, kw)
                weight = weight.contiguous(memory_format=_memory_format(weight.device))
                bias = (beta - mean * scale).to(self.conv.weight.dtype)  # (out,)
            self._folded = (versions, tensors, weight, bias)  # holds the sources: identity checks stay valid
        return self._folded[2], self._folded[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.relu(self.bn(self.conv(x)))
        weight, bias = self._folded_conv()
        return F.relu(F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding), inplace=True)


def _memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CPU (oneDNN's pools and convolutions are markedly faster in NHWC), NCHW on GPUs."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)  # TF SAME average


class FusedPointwise(nn.Module):
    """Runs several 1x1 ConvBNReLU layers that read the same input as one convolution (eval mode).

    The layers stay registered where they are (state-dict names unchanged); only their folded weights are
    concatenated, so each output channel is computed as before, up to float rounding.
    """

    def __init__(self, *names: str):
        super().__init__()
        self.names = names
        self._fused: tuple | None = None

    def forward(self, block: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        layers = [getattr(block, n) for n in self.names]
        if block.training:
            return [layer(x) for layer in layers]
        folded = [t for layer in layers for t in layer._folded_conv()]  # rebuilt whenever a source changes
        if self._fused is None or any(a is not b for a, b in zip(self._fused[0], folded)):
            weight = torch.cat(folded[0::2]).contiguous(memory_format=_memory_format(x.device))
            self._fused = (folded, weight, torch.cat(folded[1::2]))  # keeps `folded` alive for the check
        y = F.relu(F.conv2d(x, self._fused[1], self._fused[2]), inplace=True)  # (B, sum of outs, H, W)
        return list(y.split([layer.conv.out_channels for layer in layers], dim=1))


class Block35(nn.Module):
    """35x35 block (Mixed_5b/5c/5d; TF mixed, mixed_1, mixed_2): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, in_ch: int, pool_ch: int, ch=int):
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_ch, ch(64), 1)
        self.branch5x5_1 = ConvBNReLU(in_ch, ch(48), 1)
        self.branch5x5_2 = ConvBNReLU(ch(48), ch(64), 5, padding=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_ch, ch(64), 1)
        self.branch3x3dbl_2 = ConvBNReLU(ch(64), ch(96), 3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(ch(96), ch(96), 3, padding=1)
        self.branch_pool = ConvBNReLU(in_ch, ch(pool_ch), 1)
        self.out_ch = ch(64) + ch(64) + ch(96) + ch(pool_ch)
        self.entry = FusedPointwise("branch1x1", "branch5x5_1", "branch3x3dbl_1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.entry(self, x)  # (B, 64, H, W), (B, 48, H, W), (B, 64, H, W)
        b = self.branch5x5_2(b)  # (B, 64, H, W)
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(c))  # (B, 96, H, W)
        d = self.branch_pool(_avg_pool_same(x))  # (B, pool_ch, H, W)
        return torch.cat([a, b, c, d], dim=1)


class Reduction35to17(nn.Module):
    """Mixed_6a (TF mixed_3): stride-2 3x3 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, in_ch: int, ch=int):
        super().__init__()
        self.branch3x3 = ConvBNReLU(in_ch, ch(384), 3, stride=2)
        self.branch3x3dbl_1 = ConvBNReLU(in_ch, ch(64), 1)
        self.branch3x3dbl_2 = ConvBNReLU(ch(64), ch(96), 3, padding=1)
        self.branch3x3dbl_3 = ConvBNReLU(ch(96), ch(96), 3, stride=2)
        self.out_ch = ch(384) + ch(96) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)  # (B, 384, H', W')
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))  # (B, 96, H', W')
        c = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, in_ch, H', W')
        return torch.cat([a, b, c], dim=1)


class Block17(nn.Module):
    """17x17 block (Mixed_6b..6e; TF mixed_4..mixed_7) with factorised 7x7 convolutions."""

    def __init__(self, in_ch: int, mid: int, ch=int):
        super().__init__()
        mid, out = ch(mid), ch(192)
        self.branch1x1 = ConvBNReLU(in_ch, out, 1)
        self.branch7x7_1 = ConvBNReLU(in_ch, mid, 1)
        self.branch7x7_2 = ConvBNReLU(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBNReLU(mid, out, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBNReLU(in_ch, mid, 1)
        self.branch7x7dbl_2 = ConvBNReLU(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBNReLU(mid, mid, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBNReLU(mid, mid, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBNReLU(mid, out, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBNReLU(in_ch, out, 1)
        self.out_ch = 4 * out
        self.entry = FusedPointwise("branch1x1", "branch7x7_1", "branch7x7dbl_1")

    def forward_with_1x1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (block output (B, 768, H, W), the 1x1 branch (B, 192, H, W) = TF `mixed_N/conv`)."""
        a, b, c = self.entry(self, x)  # (B, 192, H, W), (B, mid, H, W), (B, mid, H, W)
        b = self.branch7x7_3(self.branch7x7_2(b))  # (B, 192, H, W)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)  # (B, mid or 192, H, W)
        d = self.branch_pool(_avg_pool_same(x))  # (B, 192, H, W)
        return torch.cat([a, b, c, d], dim=1), a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_1x1(x)[0]


class Reduction17to8(nn.Module):
    """Mixed_7a (TF mixed_8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, in_ch: int, ch=int):
        super().__init__()
        self.branch3x3_1 = ConvBNReLU(in_ch, ch(192), 1)
        self.branch3x3_2 = ConvBNReLU(ch(192), ch(320), 3, stride=2)
        self.branch7x7x3_1 = ConvBNReLU(in_ch, ch(192), 1)
        self.branch7x7x3_2 = ConvBNReLU(ch(192), ch(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBNReLU(ch(192), ch(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBNReLU(ch(192), ch(192), 3, stride=2)
        self.out_ch = ch(320) + ch(192) + in_ch
        self.entry = FusedPointwise("branch3x3_1", "branch7x7x3_1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.entry(self, x)  # (B, 192, H, W) each
        a = self.branch3x3_2(a)  # (B, 320, H', W')
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(b)))  # (B, 192, H', W')
        c = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, in_ch, H', W')
        return torch.cat([a, b, c], dim=1)


class Block8(nn.Module):
    """8x8 block (Mixed_7b avg-pool branch, Mixed_7c max-pool branch; TF mixed_9, mixed_10)."""

    def __init__(self, in_ch: int, pool: str, ch=int):
        super().__init__()
        self.pool = pool
        c384 = ch(384)
        self.branch1x1 = ConvBNReLU(in_ch, ch(320), 1)
        self.branch3x3_1 = ConvBNReLU(in_ch, c384, 1)
        self.branch3x3_2a = ConvBNReLU(c384, c384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBNReLU(c384, c384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBNReLU(in_ch, ch(448), 1)
        self.branch3x3dbl_2 = ConvBNReLU(ch(448), c384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBNReLU(c384, c384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBNReLU(c384, c384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBNReLU(in_ch, ch(192), 1)
        self.out_ch = ch(320) + 4 * c384 + ch(192)
        self.entry = FusedPointwise("branch1x1", "branch3x3_1", "branch3x3dbl_1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, t, u = self.entry(self, x)  # (B, 320, H, W), (B, 384, H, W), (B, 448, H, W)
        b = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], dim=1)  # (B, 768, H, W)
        u = self.branch3x3dbl_2(u)  # (B, 384, H, W)
        c = torch.cat([self.branch3x3dbl_3a(u), self.branch3x3dbl_3b(u)], dim=1)  # (B, 768, H, W)
        pooled = _avg_pool_same(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        d = self.branch_pool(pooled)  # (B, 192, H, W)
        return torch.cat([a, b, c, d], dim=1)


class InceptionV3(nn.Module):
    """FID InceptionV3; `__call__(uint8 (B, H, W, 3 or 1)) -> {'pool', 'spatial', 'logits'}` (a FeatureNet).

    `resolution` (the resize target) must be 299 and `width` (channel multiplier) 1 for ADM-comparable numbers.
    Smaller values give the tiny "debug" flavour used by CPU tests (width 1/16: 128-d pool features).
    """

    def __init__(self, resolution: int = 299, width: float = 1.0):
        super().__init__()
        if resolution < 75:
            raise ValueError(f"InceptionV3 resolution must be >= 75, got {resolution}")
        if not 7 / 192 <= width <= 1:
            raise ValueError(f"InceptionV3 width must be in [7/192, 1] (mixed_6/conv keeps 7 channels), got {width}")
        self.resolution, self.width = resolution, width
        debug = (resolution, width) != (299, 1.0)
        self.name = f"{NET_NAME}-debug(res={resolution},width={width:g})" if debug else NET_NAME
        self.weights_sha256: str | None = None

        def ch(n: int) -> int:
            return max(1, round(n * width))

        self.Conv2d_1a_3x3 = ConvBNReLU(3, ch(32), 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBNReLU(ch(32), ch(32), 3)
        self.Conv2d_2b_3x3 = ConvBNReLU(ch(32), ch(64), 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBNReLU(ch(64), ch(80), 1)
        self.Conv2d_4a_3x3 = ConvBNReLU(ch(80), ch(192), 3)
        self.Mixed_5b = Block35(ch(192), pool_ch=32, ch=ch)
        self.Mixed_5c = Block35(self.Mixed_5b.out_ch, pool_ch=64, ch=ch)
        self.Mixed_5d = Block35(self.Mixed_5c.out_ch, pool_ch=64, ch=ch)
        self.Mixed_6a = Reduction35to17(self.Mixed_5d.out_ch, ch=ch)
        self.Mixed_6b = Block17(self.Mixed_6a.out_ch, mid=128, ch=ch)
        self.Mixed_6c = Block17(self.Mixed_6b.out_ch, mid=160, ch=ch)
        self.Mixed_6d = Block17(self.Mixed_6c.out_ch, mid=160, ch=ch)
        self.Mixed_6e = Block17(self.Mixed_6d.out_ch, mid=192, ch=ch)
        self.Mixed_7a = Reduction17to8(self.Mixed_6e.out_ch, ch=ch)
        self.Mixed_7b = Block8(self.Mixed_7a.out_ch, pool="avg", ch=ch)
        self.Mixed_7c = Block8(self.Mixed_7b.out_ch, pool="max", ch=ch)
        self.fc = nn.Linear(self.Mixed_7c.out_ch, 1008)  # TF softmax/weights, softmax/biases
        self.eval()
        self.requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) with C in {1, 3} -> normalised (B, 3, R, R) float32, as the TF graph does."""
        x = images.permute(0, 3, 1, 2).float()  # (B, C, H, W) in [0, 255]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, H, W) grey -> RGB
        x = tf1_resize_bilinear(x, (self.resolution, self.resolution))  # (B, 3, R, R)
        x = (x - 128.0) / 128.0  # (B, 3, R, R) in [-1, 1)
        return x.contiguous(memory_format=_memory_format(x.device))

    def forward_normalized(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, R, R) input already resized and scaled to [-1, 1] -> feature dict (float32)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))  # (B, 768, 17, 17)
        x, mixed_6_conv = self.Mixed_6d.forward_with_1x1(x)  # (B, 768, 17, 17), (B, 192, 17, 17)
        x = self.Mixed_7a(self.Mixed_6e(x))  # (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        pool = x.mean(dim=(2, 3))  # (B, 2048) = pool_3 (8x8 average)
        spatial = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)  # (B, 17*17*7) HWC like TF
        logits = pool @ self.fc.weight.t()  # (B, 1008) no bias, as ADM's softmax graph
        return {"pool": pool, "spatial": spatial, "logits": logits}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, C) images -> {'pool': (B, 2048), 'spatial': (B, 2023 at 299), 'logits': (B, 1008)}."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"InceptionV3 expects uint8 (B, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
        return self.forward_normalized(self.preprocess(images))


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """--inception-weights PATH, else $CCA_INCEPTION_WEIGHTS, else the torch hub cache; one-line error if none."""
    given = path or os.environ.get(WEIGHTS_ENV)
    if given:
        if not Path(given).is_file():
            raise FileNotFoundError(f"--inception-weights: no such file: {path}" if path
                                    else f"${WEIGHTS_ENV} points to a missing file: {given}")
        return Path(given)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME
    if cached.is_file():
        return cached
    raise FileNotFoundError(
        f"Inception weights {WEIGHTS_FILENAME} not found: pass --inception-weights PATH or set ${WEIGHTS_ENV} "
        f"(looked in {cached}); the file is published at {WEIGHTS_URL} (nothing is downloaded automatically)")


def load_inception(path: str | os.PathLike | None = None, *, resolution: int = 299,
                   device: str | torch.device = "cpu") -> InceptionV3:
    """Builds the FID InceptionV3 and loads pytorch-fid's weight file strictly (weights_only).

    The channel width is read from the file (Conv2d_1a_3x3 has 32 filters in the real network), so a debug
    flavour's random weights load too; its `name` then says "debug".
    """
    weights = find_inception_weights(path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise InputError(f"{weights}: not a loadable PyTorch state dict ({type(e).__name__}: {e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise InputError(f"{weights}: expected a state dict, got {type(state).__name__}")
    first = state.get("Conv2d_1a_3x3.conv.weight")
    width = first.shape[0] / 32 if isinstance(first, torch.Tensor) and first.dim() == 4 else 1.0
    try:
        net = InceptionV3(resolution=resolution, width=width)
    except ValueError:
        net = InceptionV3(resolution=resolution)  # report the shape mismatch below
    expected = net.state_dict()     # old files predate BatchNorm's num_batches_tracked: those default to the net's
    state = {**{k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        raise InputError(f"{weights}: not pytorch-fid's FID Inception weights (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shape {shapes[:3]})")
    net.load_state_dict(state, strict=True)
    net.weights_sha256 = file_sha256(weights)
    return net.to(device)


def randomize_(net: InceptionV3, seed: int = 0) -> InceptionV3:
    """Random weights whose activations stay O(1) through the depth (He-normal convs, random BN statistics); for
    tests and benchmarks only, no released file is involved."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.05, generator=gen)
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    net.weights_sha256 = None
    return net
