"""evaluations/evaluator.py and features.py: CLI end to end, input errors and warnings, saved stats, plug-ins."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluations import evaluator, features, inception, npz_io

REPO = Path(__file__).resolve().parents[1]
PIXEL_NET = "evaluations.features:pixel_feature_net"
torch.set_num_threads(2)


def images(n, size=16, seed=0, shift=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (n, size, size, 3)) + shift, 0, 255).astype(np.uint8)


def save(path, *arrays, **named):
    np.savez(path, *arrays, **named)
    return str(path)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    net = inception.randomize_(inception.InceptionV3(resolution=299, width=1 / 16), seed=0)
    path = tmp_path_factory.mktemp("weights") / "tiny_inception.pth"
    torch.save(net.state_dict(), path)
    return path


def metric_lines(text):
    return {k.strip(): float(v) for k, v in (line.split(":", 1) for line in text.splitlines()
                                            if line.split(":", 1)[0] in dict(evaluator.METRIC_LINES))}


def test_cli_end_to_end_with_tiny_inception_writes_txt(tmp_path, tiny_weights):
    ref = save(tmp_path / "ref.npz", images(24, 32, seed=1))
    sample = save(tmp_path / "sample.npz", images(24, 32, seed=2, shift=40), np.arange(24) % 3)
    cmd = [sys.executable, "evaluations/evaluator.py", ref, sample, "--inception-weights", str(tiny_weights),
           "--inception-resolution", "75", "--is-split-size", "8", "--batch-size", "10", "--device", "cpu"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = metric_lines(proc.stdout)
    assert list(printed) == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    assert printed["Inception Score"] >= 1.0 and printed["FID"] > 0 and printed["sFID"] > 0
    assert 0 <= printed["Precision"] <= 1 and 0 <= printed["Recall"] <= 1
    txt = (tmp_path / "sample.txt").read_text()
    assert metric_lines(txt) == printed
    assert f"# weights sha256: {inception.file_sha256(tiny_weights)}" in txt
    assert "# feature network: adm-inception-v3-debug(res=75,width=0.0625)" in txt
    assert "not ADM-comparable" in proc.stderr


@pytest.mark.parametrize("case, expected", [
    ("float_images", "dtype float32; expected uint8"),
    ("rank3", "shape (4, 16, 16); expected images (N, H, W, 3)"),
    ("out_of_range", "values range over [-1, 300]"),
    ("missing_arr_0", "missing arr_0"),
    ("too_few_for_split", "4 images, fewer than one Inception Score split (--is-split-size 5000)"),
    ("not_npz", "not an .npz archive"),
    ("no_file", "no such file"),
])
def test_bad_input_is_a_one_line_error_before_any_network(tmp_path, monkeypatch, case, expected):
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "absent.pth"))  # would fail later if reached
    ref = save(tmp_path / "ref.npz", images(4))
    bad = tmp_path / "bad.npz"
    if case == "float_images":
        save(bad, images(4).astype(np.float32))
    elif case == "rank3":
        save(bad, images(4)[..., 0])
    elif case == "out_of_range":
        arr = images(4).astype(np.int16)
        arr[0, 0, 0, 0], arr[1, 0, 0, 0] = -1, 300
        save(bad, arr)
    elif case == "missing_arr_0":
        save(bad, samples=images(4))
    elif case == "too_few_for_split":
        save(bad, images(4))
    elif case == "not_npz":
        bad.write_text("hello")
    with pytest.raises(SystemExit) as err:
        evaluator.main([ref, str(bad)])
    message = str(err.value.code)
    assert "\n" not in message and str(bad) in message and expected in message


def test_flag_errors(tmp_path, monkeypatch, capsys):
    ref, sample = save(tmp_path / "r.npz", images(8)), save(tmp_path / "s.npz", images(8))
    for argv in ([ref, sample, "--batch-size", "0"], [ref, sample, "--batch", "8"], [ref],
                 [ref, sample, "--save-stats", str(tmp_path / "o.npz")]):
        with pytest.raises(SystemExit) as err:
            evaluator.main(argv)
        assert err.value.code == 2
    with pytest.raises(SystemExit, match="--device: unknown device 'gpu0'"):
        evaluator.main([ref, sample, "--device", "gpu0", "--is-split-size", "4"])
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(SystemExit) as err:
        evaluator.main([ref, sample, "--is-split-size", "4"])
    assert inception.WEIGHTS_URL in str(err.value.code) and "\n" not in str(err.value.code)


def test_warnings_for_sorted_labels_short_split_and_resolution_mismatch(tmp_path, capsys):
    ref = save(tmp_path / "ref.npz", images(20, 16, seed=1))
    sample = save(tmp_path / "sample.npz", images(20, 24, seed=2), np.repeat(np.arange(4), 5))
    results = evaluator.main([ref, sample, "--feature-net", PIXEL_NET, "--is-split-size", "8", "--device", "cpu"])
    err = capsys.readouterr().err
    assert "arr_1 labels are sorted by class" in err
    assert err.count("20 images is not a multiple of --is-split-size 8") == 1
    assert "reference images are 16x16 but samples are 24x24" in err
    assert set(results) == {"inception_score", "fid", "sfid", "precision", "recall"}
    assert (tmp_path / "sample.txt").read_text().startswith("# feature network: pixel-features")


def test_save_stats_writes_a_reference_batch_whose_statistics_are_used(tmp_path):
    ref_images, sample_images = images(40, seed=3), images(30, seed=4, shift=30)
    src, sample = save(tmp_path / "all.npz", ref_images), save(tmp_path / "sample.npz", sample_images)
    out = tmp_path / "ref_stats.npz"
    evaluator.main([src, "--save-stats", str(out), "--ref-images", "10", "--feature-net", PIXEL_NET])
    with np.load(out) as data:
        assert set(data.files) == {"arr_0", "mu", "sigma", "mu_s", "sigma_s", "feature_net", "weights_sha256"}
        np.testing.assert_array_equal(data["arr_0"], ref_images[:10])
        assert str(data["feature_net"]) == "pixel-features" and data["sigma"].shape == (48, 48)
    net = features.PixelFeatureNet()
    with_stats = evaluator.main([str(out), sample, "--feature-net", PIXEL_NET, "--is-split-size", "10"])
    full = features.compute_all_metrics(ref_images, sample_images, net, is_split_size=10)
    kept = features.compute_all_metrics(ref_images[:10], sample_images, net, is_split_size=10)
    assert with_stats["fid"] == pytest.approx(full["fid"], rel=1e-9)  # statistics of all 40 images
    assert with_stats["sfid"] == pytest.approx(full["sfid"], rel=1e-9)
    assert (with_stats["precision"], with_stats["recall"]) == (kept["precision"], kept["recall"])  # 10 kept
    assert with_stats["fid"] != pytest.approx(kept["fid"], rel=1e-6)
    recomputed = evaluator.main([str(out), sample, "--feature-net", PIXEL_NET, "--is-split-size", "10",
                                 "--recompute-ref-stats"])
    assert recomputed["fid"] == pytest.approx(kept["fid"], rel=1e-9)


def test_precomputed_stats_of_another_network_are_refused(tmp_path):
    openai_like = save(tmp_path / "VIRTUAL_like.npz", images(8), mu=np.zeros(2048), sigma=np.eye(2048),
                       mu_s=np.zeros(2023), sigma_s=np.eye(2023))
    sample = save(tmp_path / "s.npz", images(8, seed=5))
    with pytest.raises(SystemExit, match="come from 'adm-inception-v3', not 'pixel-features'.*--recompute-ref-stats"):
        evaluator.main([openai_like, sample, "--feature-net", PIXEL_NET, "--is-split-size", "4"])


class PoolOnlyNet(torch.nn.Module):
    name, weights_sha256 = "pool-only", None

    def forward(self, images):
        return {"pool": images.float().mean(dim=(1, 2))}  # (B, 3)


def test_compute_all_metrics_with_plugged_networks():
    imgs = images(12, seed=6)
    same = features.compute_all_metrics(imgs, imgs, features.PixelFeatureNet(), is_split_size=6, batch_size=5)
    assert abs(same["fid"]) < 1e-6 and abs(same["sfid"]) < 1e-6
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["inception_score"] > 1.0
    pool_only = features.compute_all_metrics(imgs, images(12, seed=7, shift=50), PoolOnlyNet())
    assert pool_only["inception_score"] is None and pool_only["sfid"] is None and pool_only["fid"] > 100
    assert isinstance(PoolOnlyNet(), features.FeatureNet)
    with pytest.raises(npz_io.InputError, match="fewer than one Inception Score split"):
        features.compute_all_metrics(imgs, imgs, features.PixelFeatureNet())  # 12 < 5000
    with pytest.raises(npz_io.InputError, match="expected uint8 images"):
        features.compute_all_metrics(imgs.astype(np.float32), imgs, PoolOnlyNet())


def test_streaming_reader_matches_np_load_for_compressed_and_integer_files(tmp_path):
    imgs = images(23, seed=8)
    path = tmp_path / "c.npz"
    np.savez_compressed(path, imgs.astype(np.int64))
    info = npz_io.inspect_images(path)
    assert (info.count, info.size, info.streamable) == (23, (16, 16), True)
    batches = list(npz_io.iter_image_batches(info, 10))
    assert [len(b) for b in batches] == [10, 10, 3] and all(b.dtype == np.uint8 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), imgs)
    assert [len(b) for b in npz_io.iter_image_batches(info, 10, limit=12)] == [10, 2]


def test_exact_fp32_switches_tf32_off_on_cuda_only_and_restores():
    conv = torch.backends.cudnn.conv if hasattr(torch.backends.cudnn, "conv") else None
    if conv is None:
        pytest.skip("torch < 2.9 has no per-backend fp32_precision")  # legacy path; covered on older torch
    before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    with features.exact_fp32(torch.device("cpu")):
        assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before
    with features.exact_fp32(torch.device("cuda")):  # only flips flags; no CUDA needed
        assert conv.fp32_precision == "ieee" and torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before
