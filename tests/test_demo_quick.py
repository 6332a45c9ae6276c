"""`python3 -m demo --quick` end to end (both families), then the shape of everything it writes.

The quick run checks that the pipeline works and its outputs are well-formed, not the paper's claim (that is the
full `make demo`). Needs Fashion-MNIST (Debian's dataset-fashion-mnist, `make fashion-mnist`, or
$FASHION_MNIST_DIR).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
VARIANT_KEYS = {"family", "model", "guided", "cfg", "seed", "scores", "samples", "replicates", "sampling_seconds"}
TIMED_KEYS = {"sec_per_image", "timing_load", "timing_quiet"}
SCORE_KEYS = {"fid", "fid_ci", "accuracy", "accuracy_ci", "precision", "recall"}
NETS = {"cnn-a", "cnn-b"}
GUIDANCE_FREE = {"llamagen": 1.0, "var": 0.0}


def run_demo(*args: str, timeout: float = 170) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "demo", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not any(DATA.glob("*train-images*")):
        pytest.fail(f"Fashion-MNIST not found in {DATA}: run `make fashion-mnist` or set FASHION_MNIST_DIR")
    out = tmp_path_factory.mktemp("demo_quick")
    proc = run_demo("--quick", "--data", str(DATA), "--out", str(out), "--threads", "1", "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_metrics_json_schema(quick_run):
    out = quick_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"machine", "feature_networks", "bootstrap", "seeds", "variants", "targets", "seed_summary",
                            "threads", "curves"}
    assert metrics["curves"] == {}                       # only with --curves
    threads = metrics["threads"]
    assert (threads["mode"], set(threads["seconds_at_threads"]), threads["switches"]) == ("fixed", {"1"}, 0)
    assert threads["seconds_at_threads"]["1"] > 0
    assert set(metrics["feature_networks"]) == NETS
    assert all(0.0 < n["test_accuracy"] <= 1.0 for n in metrics["feature_networks"].values())
    assert {"cpu", "torch"} <= set(metrics["machine"])
    variants = metrics["variants"]
    for family in ("llamagen", "var"):
        mine = {k: v for k, v in variants.items() if v["family"] == family}
        kinds = {(v["model"], v["guided"]) for v in mine.values()}
        assert {("base", False), ("cca", False), ("base", True)} <= kinds, (family, kinds)
        targets = metrics["targets"][family]
        assert set(targets["networks"]) == NETS
        assert isinstance(targets["pass_all"], bool) and isinstance(targets["pass_robust"], bool)
    for name, v in variants.items():
        assert VARIANT_KEYS <= set(v) and set(v) - VARIANT_KEYS <= TIMED_KEYS | {"token_sec_per_image"}, (name, set(v))
        assert TIMED_KEYS <= set(v), name                # one seed: every variant is timed
        assert v["family"] in GUIDANCE_FREE and v["model"] in ("base", "cca") and isinstance(v["guided"], bool)
        assert v["samples"] == f"samples_{name}.npz" and (out / v["replicates"]).is_file()
        if v["guided"]:
            assert v["model"] == "base" and v["cfg"] != GUIDANCE_FREE[v["family"]]
        else:
            assert v["cfg"] == GUIDANCE_FREE[v["family"]]
        assert isinstance(v["sec_per_image"], float) and v["sec_per_image"] > 0
        assert set(v["scores"]) == NETS
        for net, s in v["scores"].items():
            assert set(s) == SCORE_KEYS, (name, net, set(s))
            for key in ("fid", "accuracy", "precision", "recall"):
                assert isinstance(s[key], float) and math.isfinite(s[key]), (name, net, key, s[key])
            assert s["fid"] >= 0
            for key in ("accuracy", "precision", "recall"):
                assert 0.0 <= s[key] <= 1.0, (name, net, key, s[key])
            for key in ("fid_ci", "accuracy_ci"):
                lo, hi = s[key]
                assert lo <= hi, (name, net, key)


def test_sample_files(quick_run):
    out = quick_run
    metrics = json.loads((out / "metrics.json").read_text())
    for name, v in metrics["variants"].items():
        with np.load(out / v["samples"]) as d:
            assert set(d.files) == {"arr_0", "arr_1"}
            images, labels = d["arr_0"], d["arr_1"]
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (16, 16, 3), images.shape
        assert labels.dtype == np.int64 and labels.shape == (images.shape[0],)
        counts = np.bincount(labels, minlength=10)
        assert len(counts) == 10 and (counts == counts[0]).all() and counts[0] > 0, counts
        assert not (np.diff(labels) >= 0).all(), "samples must be shuffled, not sorted by class"
        assert images.std() > 0, f"{name}: blank images"
    assert not list(out.glob("*.parts")), "sampling leftovers not cleaned up"


def test_report_and_pngs(quick_run):
    out = quick_run
    metrics = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    assert "| variant |" in report and "## Targets" in report and "95 % interval" in report
    pngs = [f"grid_{name}.png" for name in metrics["variants"]] + [f"guidance_{fam}_{net}.png" for fam in
                                                                   ("llamagen", "var") for net in NETS]
    for png in pngs:
        assert f"({png})" in report, png
        with Image.open(out / png) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100, (png, im.size)
    for name in metrics["variants"]:
        assert f"| {name} |" in report


def test_rerun_uses_the_cache(quick_run):
    out = quick_run
    before = json.loads((out / "metrics.json").read_text())
    proc = run_demo("--quick", "--data", str(DATA), "--out", str(out), "--threads", "1", "--no-progress",
                    timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ": running" not in proc.stdout, proc.stdout          # every stage was cached
    assert "var_cca: cached" in proc.stdout
    after = json.loads((out / "metrics.json").read_text())
    threads = after.pop("threads"), before.pop("threads")      # the work of each invocation: little when cached
    assert after == before and threads[0]["seconds_at_threads"]["1"] < threads[1]["seconds_at_threads"]["1"]


def test_a_fresh_run_at_the_same_threads_repeats_every_score(quick_run, tmp_path):
    """The seeded stages are bit-stable on one machine at a fixed thread count (demo/README.md's claim)."""
    proc = run_demo("--quick", "--data", str(DATA), "--out", str(tmp_path / "again"), "--threads", "1",
                    "--no-progress", "--families", "var", timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = json.loads((quick_run / "metrics.json").read_text())
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["feature_networks"] == first["feature_networks"]
    for name, v in again["variants"].items():
        assert v["scores"] == first["variants"][name]["scores"], name


def test_seeds_and_extra_points_reuse_the_run(quick_run, tmp_path):
    out = quick_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    proc = run_demo("--quick", "--data", str(DATA), "--out", str(copy), "--threads", "1", "--no-progress",
                    "--families", "var", "--seeds", "2", "--point", "var.lambda_=2,beta=0.2",
                    "--point", "var.round_uint8=0", timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "var_base: cached" in proc.stdout and "var_cca: cached" in proc.stdout     # seed 0 is the first run
    assert "var_cca_seed1: running" in proc.stdout and "var_cca_lambda2_beta0.2: running" in proc.stdout
    # a sampling switch samples the main CCA model again (its training stage is the cached main run)
    assert "samples_var_cca_round_uint80: running" in proc.stdout and "[demo] var_cca_round" not in proc.stdout
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1]
    seeded = {n: v for n, v in metrics["variants"].items() if v["seed"] == 1}
    assert set(seeded) == {f"{n}_seed1" for n, v in metrics["variants"].items() if v["seed"] == 0}
    assert all("sec_per_image" not in v for v in seeded.values())        # only the first seed is timed
    summary = metrics["seed_summary"]["var"]
    for net in NETS:
        assert len(summary[net]["fid_gap_closed"]["values"]) == 2       # nan where CFG did not beat the base
        fid = summary[net]["cca_fid"]
        assert len(fid["values"]) == 2 and fid["min"] <= fid["mean"] <= fid["max"] and fid["sd"] >= 0
    report = (copy / "report.md").read_text()
    assert "## Run seeds" in report and "lambda_ = 2, beta = 0.2" in report


def near(img: Image.Image, xy: tuple[float, float], color: tuple[int, int, int], r: int = 2) -> bool:
    a, b = round(xy[0]), round(xy[1])
    return any(img.getpixel((a + i, b + j)) == color for i in range(-r, r + 1) for j in range(-r, r + 1))


def test_curves_reuse_the_run_and_draw_every_point(quick_run, tmp_path):
    from demo import plots
    from evaluations.plots import panel_mapping
    copy = tmp_path / "out"
    shutil.copytree(quick_run, copy)
    proc = run_demo("--quick", "--data", str(DATA), "--out", str(copy), "--threads", "1", "--no-progress",
                    "--curves", "--set", "var.curve_lambdas=[2, 0.5, 1]", timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "llamagen_cca: cached" in proc.stdout and "llamagen_cca_lambda0.5: running" in proc.stdout
    metrics = json.loads((copy / "metrics.json").read_text())
    report = (copy / "report.md").read_text()
    for fam, cfg_scales in (("llamagen", [1.0, 2.0]), ("var", [0.0, 1.0])):
        curve = metrics["curves"][fam]
        assert [p["cfg"] for p in curve["cfg"]] == cfg_scales            # guidance-free first, then the scales
        assert [p["lambda"] for p in curve["cca"]] == [0.5, 1.0, 2.0]    # sorted; lambda 1 is the main CCA run
        assert curve["cca"][1]["variant"] == f"{fam}_cca" and curve["cca"][0]["variant"] == f"{fam}_cca_lambda0.5"
        assert curve["cca"][1]["scores"]["cnn-a"]["fid"] == metrics["variants"][f"{fam}_cca"]["scores"]["cnn-a"]["fid"]
        assert curve["cfg"][0]["variant"] == f"{fam}_base"
        with Image.open(copy / f"curves_{fam}.png") as im:
            img = im.convert("RGB")
        W, H = plots.CURVE_PANEL
        assert img.size == (2 * W, H)
        for i, net in enumerate(sorted(NETS)):
            series = plots.curve_series(curve, net)
            assert [s["texts"] for s in series] == [[f"{v:g}" for v in cfg_scales], ["0.5", "1", "2"]]
            px, _ = panel_mapping((i * W, 0, (i + 1) * W, H), series, [])
            points = [(px(x, y), s["color"]) for s in series for x, y in zip(s["x"], s["y"])]
            for xy, color in points:        # every point drawn in its series' colour, unless another covers it
                covered = any(c != color and abs(q[0] - xy[0]) < 8 and abs(q[1] - xy[1]) < 8 for q, c in points)
                assert near(img, xy, color) or covered, (fam, net, xy)
        assert f"(curves_{fam}.png)" in report
        for p in curve["cca"]:
            s = p["scores"]["cnn-b"]
            assert f"| {fam} | CCA, guidance-free | lambda {p['lambda']:g} |" in report and f"{s['fid']:.2f}" in report


@pytest.mark.parametrize("args, names", [
    (["--data", "/nonexistent/fashion"], "--data"),
    (["--set", "llamagen.cca.no_such_field=1"], "--set"),
    (["--families", "llamagen,dit"], "--families"),
    (["--sweep", "var.lambda_=ten"], "--sweep"),
    (["--point", "llamagen.lambda_=2,gamma=1"], "--point"),
    (["--point", "var.keep_dropout=1"], "--point"),                    # a LlamaGen switch
    (["--seeds", "0"], "--seeds"),
])
def test_bad_input_fails_fast_with_one_line(tmp_path, args, names):
    proc = run_demo("--quick", "--out", str(tmp_path / "o"), *args, timeout=60)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and names in message[0], proc.stderr
    assert not (tmp_path / "o" / "cache").exists()


def test_timing_gives_cca_as_many_draws_as_the_cfg_side():
    from demo.samplers import TimingPolicy, Variant, time_variants, timing_schedule
    calls: list[str] = []

    def sampler(name):
        def run(labels, seed):
            calls.append(name)
            return np.zeros((len(labels), 2, 2, 3), np.uint8)
        return run
    variants = [Variant(n, "var", m, g, c, sampler(n), sampler(n + ":tokens") if t else None)
                for n, m, g, c, t in [("base", "base", False, 0.0, False), ("cca", "cca", False, 0.0, True),
                                      ("cfg1", "base", True, 1.0, True), ("cfg2", "base", True, 2.0, False),
                                      ("cfg3", "base", True, 3.0, False)]]
    schedule = [(name, what) for name, what, _ in timing_schedule(variants, paired="cca")]
    assert schedule == [("base", "sec_per_image"), ("cca", "sec_per_image"), ("cfg1", "sec_per_image"),
                        ("cca", "sec_per_image"), ("cfg2", "sec_per_image"), ("cca", "sec_per_image"),
                        ("cfg3", "sec_per_image"), ("cca", "token_sec_per_image"), ("cfg1", "token_sec_per_image")]
    assert [n for n, _, _ in timing_schedule(variants)].count("cca") == 2     # unpaired: once whole, once tokens
    with pytest.raises(KeyError, match="nope"):
        timing_schedule(variants, paired="nope")

    best, load = time_variants(variants, batch_size=4, rounds=2, paired="cca", progress=False,
                               policy=TimingPolicy(patience=0.0))     # no repeats of loaded batches here
    timed = calls[7:]                                 # after one warm-up of each distinct sampler
    assert sorted(calls[:7]) == sorted(["base", "cca", "cfg1", "cfg2", "cfg3", "cca:tokens", "cfg1:tokens"])
    assert timed.count("cca") == 2 * 3 and all(timed.count(c) == 2 for c in ("base", "cfg1", "cfg2", "cfg3"))
    assert {"sec_per_image", "token_sec_per_image"} <= set(best["cca"]) and "token_sec_per_image" not in best["cfg2"]
    assert load["batches"] >= len(schedule) * 2
