"""ADM-style evaluation (Inception Score, FID, sFID, precision, recall) in PyTorch, offline, no TensorFlow.

    python evaluations/evaluator.py REF.npz SAMPLE.npz [--inception-weights PATH] [--batch-size 64] [--device …]
    python evaluations/evaluator.py IMAGES.npz --save-stats OUT.npz          # a reference batch like OpenAI's

Prints `Inception Score: …`, `FID: …`, `sFID: …`, `Precision: …`, `Recall: …` (as guided-diffusion's evaluator)
and writes the same lines, after a `#` provenance header, to SAMPLE.txt beside the sample file.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package from the repository root, not this folder
    _repo_root = str(Path(__file__).resolve().parents[1])
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path[0] = _repo_root
    elif _repo_root not in sys.path:
        sys.path.insert(0, _repo_root)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evaluations import features as feat  # noqa: E402
from evaluations import inception, npz_io  # noqa: E402

METRIC_LINES = (("Inception Score", "inception_score"), ("FID", "fid"), ("sFID", "sfid"),
                ("Precision", "precision"), ("Recall", "recall"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("ref_batch", help="reference batch .npz (arr_0 uint8 images; optional mu/sigma/mu_s/sigma_s)")
    p.add_argument("sample_batch", nargs="?", help="sample batch .npz (arr_0 uint8 images, optional arr_1 labels)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help=f"{inception.WEIGHTS_FILENAME} (default: ${inception.WEIGHTS_ENV}, then the torch hub cache)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (ADM: 64)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--is-split-size", type=int, default=5000, help="contiguous Inception Score split (ADM: 5000)")
    p.add_argument("--save-stats", metavar="OUT.npz",
                   help="write mu/sigma/mu_s/sigma_s of REF's images plus its first --ref-images images to OUT")
    p.add_argument("--ref-images", type=int, default=10000, help="images kept in --save-stats output (10000)")
    p.add_argument("--recompute-ref-stats", action="store_true",
                   help="ignore mu/sigma/mu_s/sigma_s stored in REF and compute them from its images")
    p.add_argument("--feature-net", metavar="MODULE:FACTORY",
                   help="another feature network: FACTORY(weights_path_or_None) returning a FeatureNet")
    p.add_argument("--feature-weights", metavar="PATH", help="weight file passed to --feature-net's factory")
    p.add_argument("--inception-resolution", type=int, default=299,
                   help="resize target of the Inception graph: 299 (ADM); smaller values only for smoke tests")
    return p


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise npz_io.InputError(f"--device: unknown device {name!r} (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise npz_io.InputError(f"--device {name}: CUDA is not available here")
    return device


def check_args(args, parser) -> None:
    for flag, value in (("--batch-size", args.batch_size), ("--is-split-size", args.is_split_size),
                        ("--ref-images", args.ref_images)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.save_stats and args.sample_batch:
        parser.error("--save-stats takes one npz (the images to summarise), not two")
    if not args.save_stats and not args.sample_batch:
        parser.error("need REF.npz and SAMPLE.npz (or one npz with --save-stats OUT.npz)")
    if args.feature_weights and not args.feature_net:
        parser.error("--feature-weights needs --feature-net")
    if args.feature_net and args.inception_weights:
        parser.error("--inception-weights and --feature-net exclude each other")
    if args.inception_resolution < 75:
        parser.error(f"--inception-resolution must be >= 75, got {args.inception_resolution}")


def check_inputs(sample: npz_io.ImageBatchInfo, is_split_size: int) -> None:
    """Header-level check before any network runs (the warnings come from compute_all_metrics)."""
    if sample.count < is_split_size:
        raise npz_io.InputError(f"{sample.path}: {sample.count} images, fewer than one Inception Score split "
                                f"(--is-split-size {is_split_size})")


def build_feature_net(args, device: torch.device):
    if args.feature_net:
        net = feat.load_feature_net(args.feature_net, args.feature_weights)
        return net.to(device) if isinstance(net, torch.nn.Module) else net
    net = inception.load_inception(args.inception_weights, resolution=args.inception_resolution, device=device)
    if net.name != inception.NET_NAME:
        warnings.warn(f"{net.name}: a reduced debug network; numbers are not ADM-comparable")
    elif not net.weights_sha256.startswith(inception.WEIGHTS_SHA256_PREFIX):
        warnings.warn(f"Inception weights sha256 {net.weights_sha256[:12]}... differs from the published "
                      f"{inception.WEIGHTS_FILENAME}; numbers are not ADM-comparable")
    return net


def provenance_header(net, device: torch.device, **inputs: npz_io.ImageBatchInfo) -> list[str]:
    lines = [f"# feature network: {net.name}", f"# weights sha256: {net.weights_sha256 or 'none (random/unknown)'}",
             f"# torch {torch.__version__}, device {device}"]
    for role, info in inputs.items():
        lines.append(f"# {role}: {info.path} ({info.count} images, {info.size[0]}x{info.size[1]})")
    return lines


def save_stats(args, net, device: torch.device, info: npz_io.ImageBatchInfo) -> None:
    batches = npz_io.iter_image_batches(info, args.batch_size)
    feats = feat.extract_features(net, batches, device=device, total=-(-info.count // args.batch_size),
                                  progress=True, desc="images")
    arrays = {"mu": feats.mu, "sigma": feats.sigma, "feature_net": np.array(net.name),
              "weights_sha256": np.array(net.weights_sha256 or "")}
    if feats.mu_s is not None:
        arrays.update(mu_s=feats.mu_s, sigma_s=feats.sigma_s)
    kept = min(args.ref_images, info.count)
    npz_io.write_reference_npz(args.save_stats, arrays, npz_io.iter_image_batches(info, args.batch_size, kept),
                               (kept,) + info.shape[1:])
    print(f"wrote {args.save_stats}: statistics of {info.count} images, {kept} images as arr_0")


def run(args, parser) -> dict | None:
    check_args(args, parser)
    device = resolve_device(args.device)
    ref_info = npz_io.inspect_images(args.ref_batch)
    if args.save_stats:
        net = build_feature_net(args, device)
        print("\n".join(provenance_header(net, device, images=ref_info)))
        save_stats(args, net, device, ref_info)
        return None
    sample_info = npz_io.inspect_images(args.sample_batch)
    check_inputs(sample_info, args.is_split_size)
    stats = None if args.recompute_ref_stats else npz_io.read_precomputed_stats(ref_info.path)
    net = build_feature_net(args, device)
    if stats is not None:
        feat.check_stats_provenance(stats, net, ref_info.path)  # before any image goes through the network
    header = provenance_header(net, device, reference=ref_info, sample=sample_info)
    print("\n".join(header))
    results = feat.compute_all_metrics(ref_info.path, sample_info.path, net, batch_size=args.batch_size,
                                       device=device, is_split_size=args.is_split_size,
                                       use_ref_stats=not args.recompute_ref_stats, progress=True)
    lines = [f"{label}: {results[key]}" for label, key in METRIC_LINES if results[key] is not None]
    print("\n".join(lines))
    txt_path = sample_info.path.with_suffix(".txt")
    txt_path.write_text("\n".join(header + lines) + "\n")
    print(f"writing to {txt_path}")
    return results


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> dict | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _one_line_warning
        try:
            return run(args, parser)
        except (npz_io.InputError, FileNotFoundError) as e:
            raise SystemExit(f"evaluator.py: error: {e}") from None


if __name__ == "__main__":
    main()
