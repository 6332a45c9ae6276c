"""Feature-extraction throughput: our ADM InceptionV3 vs pytorch-fid's InceptionV3, same weights, same images.

    python benchmarks/bench_eval.py [--repeats 5] [--batch-size 8] [--image-size 256] [--device cpu] [--threads N]

Ours goes from uint8 (B, H, W, 3) to pool_3 + mixed_6/conv spatial features + logits (TF1 resize to 299);
pytorch-fid goes from the same images as float (B, 3, H, W) in [0, 1] to pool_3 (torch bilinear resize to 299).
Both use identical random weights (no download: pytorch-fid's loader is handed our state dict for the
duration of its construction). Runs are interleaved and the best time of each is kept, which is the most
stable statistic on a shared machine. Needs pytorch-fid (a test dependency).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from unittest import mock

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cca.cli import exits_on_errors  # noqa: E402
from cca.errors import UsageError  # noqa: E402
from evaluations.inception import InceptionV3, randomize_  # noqa: E402


def _pytorch_fid_net(state_dict: dict) -> torch.nn.Module:
    try:
        import pytorch_fid.inception as pfi
    except ImportError:
        raise UsageError("bench_eval: pytorch-fid is not installed (pip install -r requirements-test.txt)") from None
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: dict(state_dict)):
        return pfi.InceptionV3([pfi.InceptionV3.DEFAULT_BLOCK_INDEX]).eval()


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_features(repeats: int = 5, batch_size: int = 8, image_size: int = 256, device: str = "cpu",
                   seed: int = 0) -> dict:
    """Returns images/s of both networks and `ratio` = ours / pytorch-fid (>= 1.0 means we are not slower)."""
    dev = torch.device(device)
    ours = randomize_(InceptionV3(), seed=seed).to(dev)
    theirs = _pytorch_fid_net(ours.state_dict()).to(dev)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8, generator=gen)
    images = images.to(dev)  # (B, H, W, 3) uint8

    def run_ours():
        out = ours(images)
        return out["pool"], out["spatial"], out["logits"]

    def run_theirs():
        return theirs(images.permute(0, 3, 1, 2).float() / 255.0)[0]  # (B, 2048, 1, 1)

    times = {"ours": [], "pytorch_fid": []}
    with torch.inference_mode():
        run_ours(), run_theirs()  # warm-up (allocator, oneDNN / cuDNN primitives, BatchNorm folding)
        for r in range(repeats):
            order = (("ours", run_ours), ("pytorch_fid", run_theirs))
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                times[name].append(_timed(fn, dev))
    ours_ips = batch_size / min(times["ours"])
    theirs_ips = batch_size / min(times["pytorch_fid"])
    return {"ours_images_per_s": ours_ips, "pytorch_fid_images_per_s": theirs_ips, "ratio": ours_ips / theirs_ips,
            "ours_times_s": times["ours"], "pytorch_fid_times_s": times["pytorch_fid"], "batch_size": batch_size,
            "image_size": image_size, "repeats": repeats, "device": str(dev), "torch_threads": torch.get_num_threads()}


@exits_on_errors
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = bench_features(args.repeats, args.batch_size, args.image_size, args.device)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()
                      if not k.endswith("times_s")}))
    print(f"feature extraction: ours {result['ours_images_per_s']:.2f} img/s, pytorch-fid "
          f"{result['pytorch_fid_images_per_s']:.2f} img/s, ratio {result['ratio']:.2f}x")
    return result


if __name__ == "__main__":
    main()
