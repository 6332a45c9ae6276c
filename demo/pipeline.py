"""The miniature end to end: data -> classifier -> per family (tokenizer -> codes -> base AR -> CCA fine-tune ->
samples -> timing -> evaluation) -> metrics.json + report. Every stage is cached under ``<out>/cache``."""
from __future__ import annotations

import copy
import dataclasses
import functools
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
from demo.config import SAMPLING_FIELDS, DemoConfig, FamilyConfig, key_of
from demo.cpuload import THREADS, machine_description
from demo.curves import curve_settings, family_curve
from demo.data import Split, load_split
from demo.evaluate import Scorer, load_replicates
from demo.families import FAMILIES, Family, finetune_copies
from demo.finetune import cca_finetune
from demo.pretrain import eval_loss, pretrain_ar
from demo.samplers import TimingPolicy, Variant, sample_to_npz, time_variants
from demo.stages import StageCache, load_module, load_tensors, save_module, save_tensors
from demo.targets import family_targets, seed_summary


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


def train_classifiers(cfg: DemoConfig, train: Split, test: Split, cache: StageCache, progress: bool
                      ) -> tuple[dict, dict, list[str]]:
    """Trains (or loads) each feature network: ({name: FeatureNet}, {name: test accuracy and spec}, stage keys)."""
    nets, info, keys = {}, {}, []
    for spec in cfg.classifiers:
        key = key_of(cfg.image_size, cfg.train_images, spec)
        weights = cache.path(f"classifier_{spec.name}", ".safetensors")

        def train_one(spec=spec, weights=weights) -> dict:
            net = train_classifier(train.images, train.labels, spec, image_size=cfg.image_size, progress=progress)
            save_classifier(net, weights)
            return {"test_accuracy": accuracy(net, test.uint8_rgb(), test.labels), "train_images": len(train)}
        result = cache.run(f"classifier_{spec.name}", key, train_one, (weights,))
        nets[spec.name] = load_classifier(weights, spec, cfg.image_size)
        info[spec.name] = {**result, "spec": dataclasses.asdict(spec)}
        keys.append(key)
    return nets, info, keys


class FamilyRun:
    """One family's stages; ``run`` returns its variants (name -> metadata and scores), ``self.notes`` the rest."""

    def __init__(self, cfg: DemoConfig, fc: FamilyConfig, cache: StageCache, out_dir: Path, train: Split,
                 test: Split, scorer: Scorer, progress: bool):
        self.cfg, self.fc, self.cache, self.out_dir = cfg, fc, cache, out_dir
        self.fam: Family = FAMILIES[fc.family]
        self.train, self.test, self.scorer, self.progress = train, test, scorer, progress
        self.x_train, _ = train.tensors()
        self.x_test, _ = test.tensors()
        self.notes: dict = {}
        self.sample_keys: dict[str, str] = {}
        self.condition_keys: tuple[str, ...] = ()    # what the conditions depend on beyond the data (a text encoder)

    # ---------------------------------------------------------------- models
    def tokenizer(self):
        fc, name = self.fc, f"{self.fc.family}_tokenizer"
        self.tok_key = key_of(self.cfg.image_size, self.cfg.train_images, self.cfg.seed, fc.tokenizer, "seeded-init")
        with torch.random.fork_rng():       # the same initial weights whatever ran before in this process
            torch.manual_seed(self.cfg.seed)
            tok = self.fam.build_tokenizer(fc)
        weights = self.cache.path(name, ".safetensors")
        first_net = next(iter(self.scorer.nets.values())).net

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
                first_net, to_uint8_nhwc(rec, (-1.0, 1.0)), self.test.labels)
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
        self.base_key = key_of(self.tok_key, fc.ar, *self.condition_keys)
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

    def cca_model(self, cca_cfg, tag: str, seed: int):
        """The base model CCA fine-tuned with ``cca_cfg`` and trainer seed ``seed`` (cached as ``<family>_<tag>``)."""
        name = f"{self.fc.family}_{tag}"
        key = key_of(self.base_key, cca_cfg.train_key(), seed)
        weights = self.cache.path(name, ".safetensors")
        model = copy.deepcopy(self.base)

        def train() -> dict:
            adapter, dataset = self.fam.adapter_and_dataset(self.base, self.train, self.codes_train)
            run_dir = self.cache.root / f"{name}_trainer"
            shutil.rmtree(run_dir, ignore_errors=True)
            policy, reference = finetune_copies(self.fam, self.fc, self.tok, self.base, cca_cfg)
            tuned, last = cca_finetune(policy, reference, adapter, dataset, cca_cfg, run_dir, seed=seed)
            save_module(tuned, weights)
            return {"last_logged": last, "steps": int(round(cca_cfg.epochs * (len(dataset) // cca_cfg.batch_size)))}
        notes = self.cache.run(name, key, train, (weights,))
        return load_module(model, weights), key, notes

    # ---------------------------------------------------------------- samples, timing, scores
    def variants(self, cca_model, cca_key: str, seed: int) -> list[tuple[Variant, str]]:
        """Base and CCA guidance-free and base + CFG at each scale; names carry the run seed unless it is the
        configuration's own."""
        fam, f = self.fam, self.fc.family
        tail = "" if seed == self.cfg.seed else f"_seed{seed}"
        gf = fam.guidance_free_cfg
        out = [(Variant(f"{f}_base{tail}", f, "base", False, gf, *fam.sampler(self.base, self.tok, gf)),
                self.base_key),
               (Variant(f"{f}_cca{tail}", f, "cca", False, gf, *fam.sampler(cca_model, self.tok, gf)), cca_key)]
        for s in self.fc.cfg_scales:
            out.append((Variant(f"{f}_base_cfg{s:g}{tail}", f, "base", True, float(s),
                                *fam.sampler(self.base, self.tok, float(s))), self.base_key))
        return out

    def sample_and_score(self, variant: Variant, model_key: str, seed: int) -> dict:
        cfg = self.cfg
        npz = self.out_dir / f"samples_{variant.name}.npz"
        skey = key_of(model_key, variant.cfg, cfg.per_class, seed, cfg.sample_batch)
        self.sample_keys[variant.name] = skey

        def sample() -> dict:
            parts = self.out_dir / f"samples_{variant.name}.parts"
            marker = parts / "KEY"
            if parts.exists() and (not marker.is_file() or marker.read_text() != skey):
                shutil.rmtree(parts)                       # leftovers of other settings: start over
            parts.mkdir(parents=True, exist_ok=True)
            marker.write_text(skey)
            return sample_to_npz(variant, self.out_dir, per_class=cfg.per_class, batch_size=cfg.sample_batch,
                                 seed=seed, progress=self.progress)
        info = self.cache.run(f"samples_{variant.name}", skey, sample, (npz,))
        reps = self.cache.path(f"eval_{variant.name}", ".npz")
        scores = self.cache.run(f"eval_{variant.name}", key_of(skey, self.scorer.key, cfg.test_images),
                                lambda: self.scorer.score(npz, reps, variant.name), (npz, reps))
        return {"family": variant.family, "model": variant.model, "guided": variant.guided, "cfg": variant.cfg,
                "seed": seed, "scores": scores, "samples": npz.name, "replicates": str(reps.relative_to(self.out_dir)),
                "sampling_seconds": info["seconds"]}

    def time(self, pairs: list[tuple[Variant, str]], records: dict) -> None:
        """Times the samplers of one run seed and adds s / image (and the load seen) to their records."""
        # every sampler is timed whole, CCA once next to each CFG scale (equally many draws on both sides of the
        # time ratio); the token generation alone only for CCA and the first CFG scale (a like-for-like pair: the
        # other scales run the same computation), which keeps the timing stage about a third shorter
        cca_name = next(v.name for v, _ in pairs if v.model == "cca")
        first_cfg = next(v.name for v, _ in pairs if v.guided)
        timed = [v if v.name in (cca_name, first_cfg) else dataclasses.replace(v, tokens=None) for v, _ in pairs]
        policy = TimingPolicy(self.cfg.quiet_load, self.cfg.timing_patience)
        tkey = key_of([self.sample_keys[v.name] for v, _ in pairs], self.cfg.timing_batch, self.cfg.timing_rounds,
                      dataclasses.asdict(policy), "whole+tokens of cca and first cfg; cca paired with each cfg")

        def measure() -> dict:
            best, load = time_variants(timed, batch_size=self.cfg.timing_batch, rounds=self.cfg.timing_rounds,
                                       paired=cca_name, policy=policy, progress=self.progress)
            return {"samplers": best, "load": load}
        timing = self.cache.run(f"{self.fc.family}_timing", tkey, measure)
        for name, t in timing["samplers"].items():
            records[name].update({"sec_per_image": t["sec_per_image"], "timing_load": t["sec_per_image_load"],
                                  "timing_quiet": t["sec_per_image_quiet"]})
            if "token_sec_per_image" in t:
                records[name]["token_sec_per_image"] = t["token_sec_per_image"]
        self.notes["timing_load"] = timing["load"]

    def run(self, seeds: list[int], points: list[dict] = (), curves: bool = False) -> dict[str, dict]:
        self.tokenizer()
        self.codes()
        self.base_model()
        records = {}
        for seed in seeds:
            cca_model, cca_key, notes = self.cca_model(self.fc.cca, "cca" if seed == self.cfg.seed
                                                       else f"cca_seed{seed}", seed)
            self.notes.setdefault("cca", {})[str(seed)] = notes
            pairs = self.variants(cca_model, cca_key, seed)
            records.update({v.name: self.sample_and_score(v, key, seed) for v, key in pairs})
            if seed == seeds[0]:
                self.time(pairs, records)
        self.notes["points"] = [self.extra_point(p) for p in points]
        self.curve_runs = [self.curve_run(s, records) for s in
                           curve_settings(self.fc.curve_lambdas, self.fc.cca.lambda_)] if curves else []
        return records

    def curve_run(self, settings: dict, records: dict) -> tuple[float, str, dict]:
        """(lambda, variant name, scores) of one point of the lambda curve; {} is the main CCA run."""
        if not settings:
            name = f"{self.fc.family}_cca"
            return self.fc.cca.lambda_, name, records[name]["scores"]
        p = self.extra_point(settings)
        return settings["lambda_"], p["name"], p["scores"]

    def extra_point(self, settings: dict) -> dict:
        """One extra CCA run with ``cca.<field> = value`` for each item of ``settings``, sampled guidance-free
        with the configuration's seed and scored (not in the variants of metrics.json). Settings that only change
        the sampling reuse the model fine-tuned with the others (the main CCA model when there are none)."""
        cca_cfg = copy.deepcopy(self.fc.cca)
        for field, value in settings.items():
            setattr(cca_cfg, field, type(getattr(cca_cfg, field))(value))
        trained = {k: v for k, v in settings.items() if k not in SAMPLING_FIELDS}
        model, key, notes = self.cca_model(cca_cfg, _tag(trained), self.cfg.seed)
        gf, sampling = self.fam.guidance_free_cfg, cca_cfg.sampling_changes()
        options = {k: v for k, v in sampling.items() if k != "balanced_labels"}     # the sampler's own
        v = Variant(f"{self.fc.family}_{_tag(settings)}", self.fc.family, "cca", False, gf,
                    *self.fam.sampler(model, self.tok, gf, **options), balanced_labels=cca_cfg.balanced_labels)
        sample_key = key_of(key, sampling) if sampling else key
        return {**self.sample_and_score(v, sample_key, self.cfg.seed), "name": v.name, "settings": settings,
                "cca": dataclasses.asdict(cca_cfg), "train": notes}


def _tag(settings: dict) -> str:
    """'cca' and each setting's name and value, e.g. cca_lambda2_beta0.05 (the main run's name for none)."""
    return "_".join(["cca"] + [f"{field.rstrip('_')}{value:g}" for field, value in settings.items()])


def shared_stages(cfg: DemoConfig, data_dir: Path, out_dir: Path, progress: bool
                  ) -> tuple[StageCache, Split, Split, dict, dict, Scorer]:
    """What every demo run starts with: (stage cache under <out>/cache, train and test splits, classifiers, their
    description, the scorer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = StageCache(out_dir / "cache")
    train, test = load_data(cfg, data_dir, cache)
    nets, net_info, net_keys = train_classifiers(cfg, train, test, cache, progress)
    scorer = Scorer(nets, test.uint8_rgb(), key_of(net_keys, cfg.bootstrap_replicates, cfg.seed),
                    cfg.bootstrap_replicates, cfg.seed)
    return cache, train, test, nets, net_info, scorer


def run_demo(cfg: DemoConfig, data_dir: Path, out_dir: Path, families: list[str], *, progress: bool = True,
             points: list[tuple[str, dict]] = (), seeds: int = 1, curves: bool = False) -> dict:
    """Every stage of the named families; writes metrics.json and the report; returns the metrics."""
    t0 = time.perf_counter()
    cache, train, test, nets, net_info, scorer = shared_stages(cfg, data_dir, out_dir, progress)
    run_seeds = [cfg.seed + k for k in range(seeds)]
    metrics = {"machine": machine_description(), "feature_networks": net_info,
               "bootstrap": {"replicates": cfg.bootstrap_replicates, "level": 0.95, "of": "the samples"},
               "seeds": run_seeds, "variants": {}, "targets": {}, "seed_summary": {}, "curves": {}}
    notes = {}
    for name in families:
        run = FamilyRun(cfg, cfg.family(name), cache, out_dir, train, test, scorer, progress)
        metrics["variants"].update(run.run(run_seeds, [p for fam, p in points if fam == name], curves))
        notes[name] = run.notes
        if curves:
            metrics["curves"][name] = family_curve(metrics["variants"], name, cfg.seed, run.curve_runs)
    replicates = functools.lru_cache(maxsize=None)(lambda rel: load_replicates(out_dir / rel))
    for name in families:
        metrics["targets"][name] = family_targets(metrics["variants"], name, cfg.seed, list(nets),
                                                  lambda v: replicates(v["replicates"]))
        if seeds > 1:
            metrics["seed_summary"][name] = seed_summary(metrics["variants"], name, run_seeds, list(nets),
                                                         lambda v: replicates(v["replicates"]))
    metrics["threads"] = THREADS.summary()
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report.write_report(out_dir, metrics, notes=notes, cfg=cfg, stage_seconds=cache.seconds,
                        stage_threads=cache.threads, skipped=cache.skipped, wall_seconds=time.perf_counter() - t0,
                        replicates=lambda v: replicates(v["replicates"]))
    return metrics
