"""cca.reproduce and cca.sweep end to end on tiny VAR checkpoints stored under registry names in an offline hub
cache, scored by a tiny random Inception: results rows with provenance, resumption, torchrun, sweep points, the
FID-IS curve's pixels, and the lambda-sweep commands."""
from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import VAR_finetune
from cca import hub, reproduce, sample_eval, sweep
from cca.rows import METRICS, ROWS, SOURCES
from evaluations import evaluator, plots
from fixture_utils import REPO
from LlamaGen import finetune_cli
from tiny_hub import TINY_LLAMAGEN, TINY_VAR, cache_file, offline_env, offline_hub, tiny_hub  # noqa: F401 - fixtures

SAMPLING = [*TINY_VAR, "--num_per_class", "4", "--batch_size", "4"]


def eval_flags(h: dict) -> list[str]:
    return ["--ref", str(h["ref"]), "--inception-weights", str(h["weights"]), "--inception-resolution", "75",
            "--is-split-size", "4", "--eval-device", "cpu"]


def rows_file(path: Path) -> Path:
    rows = {"tiny-base": {"family": "var", "ckpt": "var_d16", "title": "tiny VAR, w/o guidance",
                          "sampler_args": SAMPLING + ["--cfg", "0"], "expected": {"fid": 1.5}},
            "tiny-cca": {"family": "var", "ckpt": "VAR_d16_CCA", "title": "tiny VAR + CCA",
                         "sampler_args": SAMPLING + ["--cfg", "0"]},
            "tiny-llamagen": {"family": "llamagen", "ckpt": "c2i_B_384", "title": "tiny LlamaGen, CFG 2",
                              "sampler_args": [*TINY_LLAMAGEN, "--num-fid-samples", "6", "--cfg-scale", "2.0",
                                               "--per-proc-batch-size", "4"]}}
    path.write_text(json.dumps(rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_paper_row_parses_with_its_sampler(tmp_path):
    for row in ROWS.values():
        spec = sample_eval.PointSpec(row.family, row.ckpt, row.tokenizer_name, row.sampler_args)
        run = sample_eval.plan(spec, tmp_path)
        release = hub.release_of(row.ckpt)
        assert release is not None and release.family == row.family and release.role == "model"
        free = sample_eval.FAMILIES[row.family].guidance_free
        assert (run.guidance == free) == row.id.endswith(("-base", "-cca")) and run.guidance >= free
        assert all(k in METRICS and s in SOURCES for k, (_, s) in row.expected.items())
    assert ROWS["llamagen-3B-cfg"].expected["fid"] == (2.18, "llamagen-readme")
    assert sample_eval.plan(sample_eval.PointSpec("llamagen", "c2i_XL_384", "vq_ds16_c2i", ROWS[
        "llamagen-XL-cfg"].sampler_args), tmp_path).settings.gpt_model == "GPT-XL"


def test_docs_give_every_row_its_expected_fid_and_every_release_name():
    text = (REPO / "docs" / "reproduce.md").read_text()
    for row in ROWS.values():
        lines = [line for line in text.splitlines() if f"`{row.id}`" in line and line.startswith("|")]
        assert lines, f"{row.id} has no table line in docs/reproduce.md"
        if "fid" in row.expected:
            assert f"{row.expected['fid'][0]:.2f}" in lines[0], row.id
    for name in hub.RELEASES:
        assert f"`{name}`" in text, name


def test_reproduce_rows_end_to_end_then_resume_from_caches(offline_hub, tmp_path, monkeypatch, capsys):
    out = tmp_path / "res"
    argv = ["tiny-base", "tiny-cca", "tiny-llamagen", "--rows-file", str(rows_file(tmp_path / "rows.json")),
            "--out", str(out), *eval_flags(offline_hub)]
    assert reproduce.main(argv) == 0
    records = read_jsonl(out / "results.jsonl")
    assert [r["row"] for r in records] == ["tiny-base", "tiny-cca", "tiny-llamagen"]
    base = records[0]
    assert set(base["measured"]) == set(METRICS) and all(isinstance(v, float) for v in base["measured"].values())
    assert base["expected"] == {"fid": 1.5}
    ckpt_file = cache_file(offline_hub["cache"], "var_d16")
    assert base["checkpoint"]["sha256"] == hub.file_sha256(ckpt_file) and base["checkpoint"]["name"] == "var_d16"
    assert base["checkpoint"]["matches_published"] is False and records[1]["checkpoint"]["matches_published"] is None
    assert base["tokenizer"]["sha256"] == hub.file_sha256(cache_file(offline_hub["cache"], "vae_ch160v4096z32"))
    assert base["evaluation"]["weights_sha256"] == hub.file_sha256(offline_hub["weights"])
    assert base["samples"]["sha256"] == hub.file_sha256(base["samples"]["path"])
    assert base["settings"]["depth"] == 2 and base["settings"]["cfg"] == 0.0 and base["settings"]["top_k"] == 900
    assert base["sampling_machine"]["torch"] == torch.__version__ and base["sampling_machine"]["world_size"] == 1
    with np.load(base["samples"]["path"]) as f:
        assert f["arr_0"].shape == (8, 32, 32, 3) and np.bincount(f["arr_1"]).tolist() == [4, 4]
    llamagen = records[2]
    assert llamagen["checkpoint"]["name"] == "c2i_B_384" and llamagen["tokenizer"]["name"] == "vq_ds16_c2i"
    assert llamagen["settings"]["cfg_scale"] == 2.0 and llamagen["settings"]["gpt_model"] == "GPT-debug"
    with np.load(llamagen["samples"]["path"]) as f:
        assert f["arr_0"].shape == (6, 32, 32, 3)                   # 64 px resized to --image-size-eval 32
    table = (out / "results.md").read_text()
    assert table.count("| tiny-") == 3 and "(DIFFERS from published)" in table
    assert f"{base['measured']['fid']:.4g} (1.5)" in table

    def refuse(*_a, **_k):
        raise AssertionError("a finished stage ran again")
    monkeypatch.setattr(evaluator, "main", refuse)
    for script in ("VAR_sample", "LLamaGen_sample_ddp"):
        monkeypatch.setattr(sample_eval.importlib.import_module(script), "main", refuse)
    capsys.readouterr()
    reproduce.main(argv)                                   # everything cached: no sampling, no scoring
    assert capsys.readouterr().out.count("(already in results.jsonl)") == 3
    assert len(read_jsonl(out / "results.jsonl")) == 3
    monkeypatch.undo()


def test_reproduce_rescores_when_the_cache_is_gone_and_refuses_bad_input(offline_hub, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["tiny-base", "--rows-file", str(rows_file(tmp_path / "rows.json")), "--out", str(out),
            *eval_flags(offline_hub)]
    reproduce.main(argv)
    first = read_jsonl(out / "results.jsonl")[0]
    Path(first["samples"]["path"]).with_suffix(".eval.json").unlink()
    reproduce.main(argv)                                   # scored again, same numbers, the same row not added
    again = read_jsonl(out / "results.jsonl")
    assert len(again) == 1 and again[0]["measured"] == first["measured"]
    with pytest.raises(SystemExit, match="unknown or no row id"):
        reproduce.main(["no-such-row", "--out", str(out)])
    with pytest.raises(SystemExit) as err:
        reproduce.main(["var-d20-cca", "--out", str(tmp_path / "x"), "--ref", str(tmp_path / "VIRTUAL.npz")])
    assert "reference batch" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SystemExit) as err:                 # released row, checkpoint not in the cache
        reproduce.main(["var-d20-cca", "--out", str(tmp_path / "x"), *eval_flags(offline_hub)])
    assert "python -m cca.hub fetch VAR_d20_CCA" in str(err.value)
    assert not (tmp_path / "x").exists()


def test_reproduce_under_torchrun_samples_on_two_ranks(tiny_hub, tmp_path):
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "cca.reproduce", "tiny-base", "--rows-file", str(rows_file(tmp_path / "rows.json")), "--out", str(out),
           *eval_flags(tiny_hub)]
    proc = subprocess.run(cmd, cwd=REPO, env=offline_env(tiny_hub["cache"]), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = read_jsonl(out / "results.jsonl")
    assert record["sampling_machine"]["world_size"] == 2 and proc.stdout.count("[cca.reproduce] tiny-base") == 1
    parts = Path(record["samples"]["path"]).with_suffix(".parts")
    assert {p.name.split("-")[0] for p in parts.glob("*.idx.npy")} == {"r0", "r1"}


def sweep_flags(h: dict, out: Path) -> list[str]:
    return ["--out", str(out), "--family", "var", "--sampler-args", shlex.join(SAMPLING), *eval_flags(h)]


def ringed(img: Image.Image, a: float, b: float) -> int:
    """How many of the four pixels on the ring (radius 5 around the rounded point) are black."""
    a, b, r = round(a), round(b), plots.RING_RADIUS - 1
    return sum(max(img.getpixel(xy)) < 90 for xy in ((a + r, b), (a - r, b), (a, b + r), (a, b - r)))


def test_sweep_points_table_and_curve(offline_hub, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    sweep.main(["run", *sweep_flags(offline_hub, out), "--series", "base + CFG", "--ckpt", "var_d16",
                "--scales", "0,3"])
    local = tmp_path / "lambda-2.pth"
    local.write_bytes(cache_file(offline_hub["cache"], "var_d16").read_bytes())
    sweep.main(["run", *sweep_flags(offline_hub, out), "--series", "CCA", "--param", "lambda",
                "--ckpts", f"1=VAR_d16_CCA,2={local}"])
    records = json.loads((out / "points.json").read_text())
    assert [(r["series"], r["label"], r["guidance_free"]) for r in records] == [
        ("base + CFG", "cfg=0", True), ("base + CFG", "cfg=3", False), ("CCA", "lambda=1", True),
        ("CCA", "lambda=2", True)]
    assert records[3]["ckpt_sha256"] == hub.file_sha256(local) and records[1]["guidance"] == 3.0
    with open(out / "points.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["cfg=0", "cfg=3", "lambda=1", "lambda=2"]
    assert float(rows[2]["fid"]) == pytest.approx(records[2]["fid"]) and rows[0]["guidance_free"] == "True"

    img = Image.open(out / "fid_is.png").convert("RGB")
    assert img.size == (640, 480)
    series = sweep.curves(records)
    px, _ = plots.panel_mapping((0, 0, 640, 466), series, [])
    assert [s["label"] for s in series] == ["base + CFG", "CCA"] and series[0]["rings"] == [0]
    for s in series:
        for i, (x, y) in enumerate(zip(s["x"], s["y"])):
            a, b = px(x, y)
            assert img.getpixel((round(a), round(b))) in {s["color"]} | {t["color"] for t in series}
            assert (ringed(img, a, b) >= 3) == (i in s["rings"]), (s["label"], i)

    def refuse(*_a, **_k):
        raise AssertionError("a finished point ran again")
    monkeypatch.setattr(sample_eval, "run_point", refuse)
    sweep.main(["run", *sweep_flags(offline_hub, out), "--series", "base + CFG", "--ckpt", "var_d16",
                "--scales", "0,3"])
    assert len(json.loads((out / "points.json").read_text())) == 4


def test_lambda_commands_are_runnable_invocations(capsys):
    for base, parser in (("var_d16", VAR_finetune.build_parser()), ("c2i_3B_384", finetune_cli.build_parser(True)),
                         ("c2i_L_384", finetune_cli.build_parser(False))):
        sweep.main(["lambda-commands", "--base", base, "--lambdas", "10,300"])
        lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
        finetunes = [line for line in lines if "cca.sweep" not in line]
        assert len(finetunes) == 2 and "_fsdp.py" in finetunes[0] if base == "c2i_3B_384" else len(finetunes) == 2
        for line, lam in zip(finetunes, ("10", "300")):
            args = parser.parse_args(shlex.split(line)[3:])
            assert args.lambda_ == float(lam) and args.ref_ckpt == base and args.beta == 0.02
        runs = [shlex.split(line)[4:] for line in lines if "cca.sweep" in line]
        parsed = [sweep.build_parser().parse_args(r) for r in runs]
        assert parsed[0].ckpts.count("=") == 2 and parsed[1].ckpt == base
        assert re.search(r"lambda-10\b", parsed[0].ckpts) and parsed[0].out == parsed[1].out
