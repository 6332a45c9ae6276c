"""The miniature end to end: data -> classifier -> per family (tokenizer -> codes -> base AR -> CCA fine-tune ->
samples -> timing -> evaluation) -> metrics.json + report. Every stage is cached under ``<out>/cache``."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cca.sampling import to_uint8_nhwc
from demo import report
from demo.classifier import accuracy, load_classifier, save_classifier, train_classifier
from demo.config import DemoConfig, FamilyConfig, key_of
from demo.data import Split, load_split
from demo.evaluate import evaluate_npz, reference_features
from demo.families import FAMILIES, Family
from demo.finetune import cca_finetune
from demo.pretrain import eval_loss, pretrain_ar
from demo.samplers import Variant, sample_to_npz, time_variants
from demo.stages import StageCache, load_module, load_tensors, save_module, save_tensors


def load_data(cfg: DemoConfig, data_dir: Path, cache: StageCache) -> tuple[Split, Split]:
    path = cache.path(f"fashion_mnist_{cfg.image_size}px", ".npz")

    def read() -> dict:
        train, test = load_split(data_dir, True, cfg.image_size), load_split(data_dir, False, cfg.image_size)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, train_x=train.images, train_y=train.labels, test_x=test.images, test_y=test.labels)
        os.replace(tmp, path)
        return {"train": len(train), "test": len(test), "source": str(data_dir)}
    cache.run(f"data_{cfg.image_size}px", key_of(str(data_dir), cfg.image_size), read, (path,))
    with np.load(path) as d:
        train = Split(d["train_x"], d["train_y"]).subset(cfg.train_images, cfg.seed)
        test = Split(d["test_x"], d["test_y"]).subset(cfg.test_images, cfg.seed + 1)
    return train, test


class FamilyRun:
    """One family's stages; fills ``self.variants`` (name -> metadata) and ``self.notes`` for the report."""

    def __init__(self, cfg: DemoConfig, fc: FamilyConfig, cache: StageCache, out_dir: Path, train: Split,
                 test: Split, classifier, progress: bool):
        self.cfg, self.fc, self.cache, self.out_dir = cfg, fc, cache, out_dir
        self.fam: Family = FAMILIES[fc.family]
        self.train, self.test, self.net, self.progress = train, test, classifier, progress
        self.x_train, _ = train.tensors()
        self.x_test, _ = test.tensors()
        self.notes: dict = {}

    # ---------------------------------------------------------------- models
    def tokenizer(self):
        fc, name = self.fc, f"{self.fc.family}_tokenizer"
        self.tok_key = key_of(self.cfg.image_size, self.cfg.train_images, self.cfg.seed, fc.tokenizer, "seeded-init")
        with torch.random.fork_rng():       # the same initial weights whatever ran before in this process
            torch.manual_seed(self.cfg.seed)
            tok = self.fam.build_tokenizer(fc)
        weights = self.cache.path(name, ".safetensors")

        def train() -> dict:
            t = fc.tokenizer
            stats = self.fam.train_tokenizer(tok, self.x_train, steps=t.steps, batch_size=t.batch_size, lr=t.lr,
                                             seed=self.cfg.seed, progress=self.progress)
            save_module(tok, weights)
            codes = self.fam.encode(tok.eval(), self.x_test)
            rec = self.fam.decode(tok, codes)                                   # (N, 3, S, S) in [-1, 1]
            stats["test_mse"] = float(((rec.clamp(-1, 1) - self.x_test) ** 2).mean())
            stats["codes_used_on_test"] = int(codes.unique().numel())
            stats["classifier_accuracy_on_reconstructions"] = accuracy(
                self.net.net, to_uint8_nhwc(rec, (-1.0, 1.0)), self.test.labels)
            return stats
        self.notes["tokenizer"] = self.cache.run(name, self.tok_key, train, (weights,))
        self.tok = load_module(tok, weights)
        if hasattr(self.tok, "test_mode"):
            self.tok.requires_grad_(False)

    def codes(self):
        name = f"{self.fc.family}_codes"
        path = self.cache.path(name, ".safetensors")

        def encode() -> dict:
            save_tensors({"train": self.fam.encode(self.tok, self.x_train),
                          "test": self.fam.encode(self.tok, self.x_test)}, path)
            return {}
        self.cache.run(name, key_of(self.tok_key, self.cfg.test_images), encode, (path,))
        codes = load_tensors(path)
        self.codes_train, self.codes_test = codes["train"], codes["test"]

    def base_model(self):
        fc, name = self.fc, f"{self.fc.family}_base"
        self.base_key = key_of(self.tok_key, fc.ar)
        with torch.random.fork_rng():
            torch.manual_seed(self.cfg.seed + 1)
            model = self.fam.build_ar(fc, self.tok)
        weights = self.cache.path(name, ".safetensors")
        y_train, y_test = torch.from_numpy(self.train.labels), torch.from_numpy(self.test.labels)

        def train() -> dict:
            a = fc.ar
            stats = pretrain_ar(model, self.fam.ar_loss, self.codes_train, y_train, steps=a.steps,
                                batch_size=a.batch_size, lr=a.lr, seed=self.cfg.seed,
                                desc=f"pretrain {fc.family}", progress=self.progress)
            save_module(model, weights)
            stats["test_loss"] = eval_loss(model, self.fam.ar_loss, self.codes_test, y_test)
            stats["parameters"] = sum(p.numel() for p in model.parameters())
            return stats
        self.notes["pretrain"] = self.cache.run(name, self.base_key, train, (weights,))
        self.base = load_module(model, weights)

    def cca_model(self, cca_cfg=None, tag: str = "cca"):
        fc = self.fc
        cca_cfg = cca_cfg or fc.cca
        name = f"{fc.family}_{tag}"
        key = key_of(self.base_key, cca_cfg)
        weights = self.cache.path(name, ".safetensors")
        model = copy.deepcopy(self.base)

        def train() -> dict:
            adapter, dataset = self.fam.adapter_and_dataset(self.base, self.train, self.codes_train)
            run_dir = self.cache.root / f"{name}_trainer"
            shutil.rmtree(run_dir, ignore_errors=True)
            tuned, last = cca_finetune(self.base, adapter, dataset, cca_cfg, run_dir, seed=self.cfg.seed)
            save_module(tuned, weights)
            return {"last_logged": last, "steps": int(round(cca_cfg.epochs * (len(dataset) // cca_cfg.batch_size)))}
        notes = self.cache.run(name, key, train, (weights,))
        return load_module(model, weights), key, notes

    # ---------------------------------------------------------------- samples, timing, scores
    def variants(self, cca_model, cca_key) -> list[tuple[Variant, str]]:
        fam, f = self.fam, self.fc.family
        gf = fam.guidance_free_cfg
        out = [(Variant(f"{f}_base", f, "base", False, gf, *fam.sampler(self.base, self.tok, gf)),
                self.base_key),
               (Variant(f"{f}_cca", f, "cca", False, gf, *fam.sampler(cca_model, self.tok, gf)), cca_key)]
        for s in self.fc.cfg_scales:
            out.append((Variant(f"{f}_base_cfg{s:g}", f, "base", True, float(s),
                                *fam.sampler(self.base, self.tok, float(s))), self.base_key))
        return out

    def sample_and_score(self, variant: Variant, model_key: str, classifier_key: str) -> dict:
        cfg = self.cfg
        npz = self.out_dir / f"samples_{variant.name}.npz"
        skey = key_of(model_key, variant.cfg, cfg.per_class, cfg.seed, cfg.sample_batch)

        def sample() -> dict:
            parts = self.out_dir / f"samples_{variant.name}.parts"
            marker = parts / "KEY"
            if parts.exists() and (not marker.is_file() or marker.read_text() != skey):
                shutil.rmtree(parts)                       # leftovers of other settings: start over
            parts.mkdir(parents=True, exist_ok=True)
            marker.write_text(skey)
            return sample_to_npz(variant, self.out_dir, per_class=cfg.per_class, batch_size=cfg.sample_batch,
                                 seed=cfg.seed, progress=self.progress)
        info = self.cache.run(f"samples_{variant.name}", skey, sample, (npz,))
        ekey = key_of(skey, classifier_key, cfg.test_images)
        scores = self.cache.run(f"eval_{variant.name}", ekey, lambda: evaluate_npz(npz, self.net, self.ref_feats),
                                (npz,))
        return {**scores, "sampling_seconds_total": info["seconds"], "key": skey}

    def run(self, classifier_key: str, ref_feats, sweep: list[tuple[str, list]] = ()) -> dict[str, dict]:
        self.ref_feats = ref_feats
        self.tokenizer()
        self.codes()
        self.base_model()
        cca_model, cca_key, self.notes["cca"] = self.cca_model()
        pairs = self.variants(cca_model, cca_key)
        scored = {v.name: self.sample_and_score(v, k, classifier_key) for v, k in pairs}
        # every sampler is timed whole, CCA once next to each CFG scale (equally many draws on both sides of the
        # time ratio); the token generation alone only for CCA and the first CFG scale (a like-for-like pair: the
        # other scales run the same computation), which keeps the timing stage about a third shorter
        cca_name = f"{self.fc.family}_cca"
        first_cfg = next(v.name for v, _ in pairs if v.guided)
        timed = [v if v.name in (cca_name, first_cfg) else dataclasses.replace(v, tokens=None) for v, _ in pairs]
        tkey = key_of([scored[v.name]["key"] for v, _ in pairs], self.cfg.timing_batch, self.cfg.timing_rounds,
                      "whole+tokens of cca and first cfg; cca paired with each cfg")
        timing = self.cache.run(f"{self.fc.family}_timing", tkey, lambda: time_variants(
            timed, batch_size=self.cfg.timing_batch, rounds=self.cfg.timing_rounds, paired=cca_name,
            progress=self.progress))
        variants = {}
        for v, _ in pairs:
            s = scored[v.name]
            variants[v.name] = {"family": v.family, "model": v.model, "guided": v.guided, "cfg": v.cfg,
                                "fid": s["fid"], "accuracy": s["accuracy"], "precision": s["precision"],
                                "recall": s["recall"], "sec_per_image": timing[v.name]["sec_per_image"],
                                "samples": f"samples_{v.name}.npz"}
        self.notes["timing"] = timing
        self.notes["sweep"] = [self.sweep_point(field, value, classifier_key) for field, values in sweep
                               for value in values]
        return variants

    def sweep_point(self, field: str, value, classifier_key: str) -> dict:
        """One extra CCA run with ``cca.<field> = value``, sampled guidance-free and scored (not in metrics.json)."""
        cca_cfg = copy.deepcopy(self.fc.cca)
        setattr(cca_cfg, field, type(getattr(cca_cfg, field))(value))
        tag = f"cca_{field.rstrip('_')}{value:g}"
        model, key, notes = self.cca_model(cca_cfg, tag)
        gf = self.fam.guidance_free_cfg
        v = Variant(f"{self.fc.family}_{tag}", self.fc.family, "cca", False, gf,
                    *self.fam.sampler(model, self.tok, gf))
        s = self.sample_and_score(v, key, classifier_key)
        return {"family": self.fc.family, "field": field, "value": value, "cca": json.loads(json.dumps(
            cca_cfg.__dict__)), **{k: s[k] for k in ("fid", "accuracy", "precision", "recall")}, "train": notes}


def run_demo(cfg: DemoConfig, data_dir: Path, out_dir: Path, families: list[str], *, progress: bool = True,
             sweep: list[tuple[str, str, list]] = ()) -> dict:
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out_dir / "cache")
    train, test = load_data(cfg, data_dir, cache)
    ckey = key_of(cfg.image_size, cfg.train_images, cfg.classifier_epochs, cfg.seed)
    cweights = cache.path("classifier", ".safetensors")

    def train_cls() -> dict:
        net = train_classifier(train.images, train.labels, image_size=cfg.image_size, epochs=cfg.classifier_epochs,
                               seed=cfg.seed, progress=progress)
        save_classifier(net, cweights)
        return {"test_accuracy": accuracy(net, test.uint8_rgb(), test.labels), "train_images": len(train)}
    cls_info = cache.run("classifier", ckey, train_cls, (cweights,))
    net = load_classifier(cweights, cfg.image_size)
    ref_feats = reference_features(net, test.uint8_rgb())
    metrics = {"classifier_test_accuracy": cls_info["test_accuracy"], "variants": {}}
    notes = {}
    for name in families:
        run = FamilyRun(cfg, cfg.family(name), cache, out_dir, train, test, net, progress)
        metrics["variants"].update(run.run(ckey, ref_feats, [(f, v) for fam, f, v in sweep if fam == name]))
        notes[name] = run.notes
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    wall = time.perf_counter() - t0
    report.write_report(out_dir, metrics, notes=notes, cfg=cfg, stage_seconds=cache.seconds,
                        skipped=cache.skipped, wall_seconds=wall)
    return metrics
