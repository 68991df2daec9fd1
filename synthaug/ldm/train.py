"""Train the CCELLA latent diffusion model end to end and write a bundle.

    result = train_generator("phantom/manifest.jsonl", "runs/bundle", load_config(preset="tiny"))

Stages (each cached in the work folder, so a re-run or ``resume=True`` repeats nothing finished):
1. the manifest's train split is preprocessed (``synthaug.data.transforms``);
2. the 3D VAE is trained (or loaded from ``autoencoder=``), the cases are encoded once to latents and
   the scale factor is 1/std over all of them;
3. reports (the train split's, their shorter variants if ``loss.report_variants``, and the val split's for
   the logged class accuracy) are encoded once by the frozen text encoder (``synthaug.text``);
4. the LDM (adapter + U-Net) trains on the cached latents with the joint loss: AdamW, polynomial
   decay, gradient clipping, autocast, EMA, text dropout, teacher forcing of the U-Net's class slot;
   ``ldm_log.jsonl`` logs the losses and the adapter's val class accuracy; checkpoints every N steps and on
   SIGINT/SIGTERM; ``resume=True`` continues exactly where the last checkpoint left off;
5. the bundle (``synthaug.ldm.bundle``) is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from synthaug import __version__
from synthaug.config import SynthaugConfig
from synthaug.data.io import atomic_path, atomic_write_text, check_weights, file_sha256, read_volume
from synthaug.data.manifest import CaseRecord, Manifest, load_manifest
from synthaug.distributed import Dist
from synthaug.errors import ConfigError, InputError, SynthaugError, TrainingInterrupted
from synthaug.ldm import checkpoint as ckpt
from synthaug.ldm.autoencoder import (
    build_autoencoder,
    check_image_shape,
    downsample_factor,
    encode_volumes,
    load_autoencoder,
    resolve_precision,
    save_autoencoder,
    scale_factor,
    train_autoencoder,
)
from synthaug.ldm.bundle import AUTOENCODER_FILE, read_bundle_info, save_bundle
from synthaug.ldm.model import CCELLALDM, class_slot, focal_term, joint_loss, text_dropout
from synthaug.ldm.objective import training_scheduler, training_target, training_timesteps
from synthaug.progress import Progress


@dataclass
class TrainResult:
    bundle: Path
    fingerprint: str
    steps: int
    seconds: float
    final_loss: float


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- data


def training_cases(manifest: Manifest) -> list[CaseRecord]:
    """The train split; refuses one with no cases or a single class (nothing to condition on)."""
    cases = manifest.split("train")
    where = str(manifest.path)
    if not cases:
        raise InputError("manifest has no cases in the 'train' split", where=where,
                         fix="mark the training cases with \"split\": \"train\"")
    labels = {c.label for c in cases}
    if len(labels) < 2:
        raise InputError(f"the train split has only label {labels.pop()}", where=where,
                         fix="the class-conditioned model needs positive and negative training cases")
    return cases


def data_key(manifest: Manifest, cases: list[CaseRecord], cfg: SynthaugConfig) -> str:
    """Identity of the training data: case ids, labels, reports, image bytes and preprocessing settings."""
    files = [(c.case_id, c.label, c.report, [file_sha256(p) for p in manifest.resolved_images(c).values()])
             for c in cases]
    return _hash(files, cfg.data.model_dump(mode="json"))


def load_volumes(manifest: Manifest, cases: list[CaseRecord], cfg: SynthaugConfig,
                 progress: Progress | None = None) -> torch.Tensor:
    """Preprocess the cases' images into one tensor ``(N, C, X, Y, Z)`` in [0, 1]."""
    from synthaug.data.transforms import preprocessing_transforms

    preprocess = preprocessing_transforms(cfg.data)
    items = {i["case_id"]: i for i in manifest.items("train")}
    out = []
    for n, case in enumerate(cases, start=1):
        out.append(torch.as_tensor(preprocess(dict(items[case.case_id]))["image"]).float())
        if progress:
            progress("preprocess", n, len(cases), {})
    return torch.stack(out)


def intensity_stats(manifest: Manifest, cases: list[CaseRecord]) -> dict[str, float]:
    """Median raw T2W percentiles (0, 99.5) of the training cases: maps [0, 1] back to scanner-like units."""
    lows, highs = [], []
    for case in cases:
        array = read_volume(manifest.resolved_images(case)["image"]).array
        low, high = np.percentile(array, [0.0, 99.5])
        lows.append(float(low))
        highs.append(float(high))
    return {"p0_median": float(np.median(lows)), "p99_5_median": float(np.median(highs))}


# ---------------------------------------------------------------- stage 1: autoencoder and latents


def _check_autoencoder_source(source: Path, cfg: SynthaugConfig) -> Path:
    """The weights file of ``--autoencoder`` (a bundle folder or a .safetensors file), checked to be readable."""
    if source.is_dir():
        document, _ = read_bundle_info(source)
        if document["config"].get("autoencoder") != cfg.autoencoder.model_dump(mode="json"):
            raise ConfigError("the bundle's autoencoder settings differ from this config", where=str(source),
                              fix="train with the same autoencoder settings or without --autoencoder")
        source = source / AUTOENCODER_FILE
    return check_weights(source)  # not found, a pickle or not safetensors: one InputError naming the file


def autoencoder_file(cfg: SynthaugConfig, work: Path, key: str) -> Path:
    """Where the VAE trained for data ``key`` and these settings is kept in ``work`` (its checkpoints beside it)."""
    return work / f"autoencoder-{_hash(key, cfg.autoencoder.model_dump(mode='json'), cfg.train.seed)}.safetensors"


def _autoencoder_checkpoints(file: Path) -> Path:
    return file.with_name(file.name.removesuffix(".safetensors") + ".checkpoints")


def prepare_autoencoder(cfg: SynthaugConfig, volumes: torch.Tensor, work: Path, key: str, *,
                        autoencoder: str | Path | None, device: torch.device,
                        progress: Progress | None, resume: bool = False,
                        should_stop: Callable[[], str | None] | None = None) -> tuple[torch.nn.Module, str]:
    """Load the user's VAE (``autoencoder``: its checked weights file), reuse one trained earlier in ``work``, or
    train one; returns (model, weights hash).

    Training checkpoints every ``train.checkpoint_every`` steps and on a stop signal; ``resume`` continues
    from the newest checkpoint exactly.
    """
    if autoencoder is not None:
        model = load_autoencoder(cfg.autoencoder, autoencoder, in_channels=volumes.shape[1])
        return model.to(device).eval(), file_sha256(autoencoder)
    file = autoencoder_file(cfg, work, key)
    if file.is_file():
        return load_autoencoder(cfg.autoencoder, file, in_channels=volumes.shape[1]).to(device).eval(), file_sha256(file)
    model = build_autoencoder(cfg.autoencoder, in_channels=volumes.shape[1], seed=cfg.train.seed)
    checkpoints = _autoencoder_checkpoints(file)
    train_autoencoder(model, list(volumes), cfg.autoencoder, device=device, precision=cfg.train.precision,
                      seed=cfg.train.seed, progress=progress, checkpoints=checkpoints, run_key=file.name,
                      checkpoint_every=cfg.train.checkpoint_every, resume=resume, should_stop=should_stop)
    with atomic_path(file) as tmp:  # a kill mid-write leaves the checkpoints, never a torn weights file
        save_autoencoder(model, tmp)
    ckpt.clear_checkpoints(checkpoints)
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    return model.eval(), file_sha256(file)


def prepare_latents(model: torch.nn.Module, volumes: torch.Tensor, work: Path, ae_hash: str,
                    cfg: SynthaugConfig, device: torch.device) -> torch.Tensor:
    """Encode every training case once (posterior mean unless ``latent_sampling``); cached by VAE hash."""
    from safetensors.torch import load_file

    from synthaug.data.io import save_weights

    file = work / f"latents-{_hash(ae_hash, volumes.shape, cfg.autoencoder.latent_sampling, cfg.train.seed)}.safetensors"
    if file.is_file():
        return load_file(str(file))["latents"]
    generator = torch.Generator().manual_seed(cfg.train.seed)
    latents = encode_volumes(model, list(volumes), batch_size=cfg.autoencoder.batch_size, device=device,
                             sample=cfg.autoencoder.latent_sampling, generator=generator).float().cpu()
    with atomic_path(file) as tmp:
        save_weights({"latents": latents.contiguous()}, tmp)
    return latents


# ---------------------------------------------------------------- stage 2: text


@dataclass
class ReportVariants:
    """Shorter versions of the training reports that the class head also learns from (``loss.report_variants``)."""

    text: Any  # TextBatch (M, T, D) of every variant
    index: torch.Tensor  # (N, K) long: row in ``text`` of case i's k-th variant; -1 where its report has none


def variant_texts(reports: Sequence[str], k: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """``k`` variants per report (``synthaug.data.report_variants``), drawn from ``seed``: (the variants in
    order, the (N, K) index of each case's variants in that list, -1 where the report names no PI-RADS)."""
    from synthaug.data.report_variants import report_variants

    rng = np.random.default_rng(seed)
    texts: list[str] = []
    index = torch.full((len(reports), k), -1, dtype=torch.long)
    for i, report in enumerate(reports):
        variants = report_variants(report, k, rng)
        if variants:
            index[i] = torch.arange(len(texts), len(texts) + k)
            texts.extend(variants)
    return texts, index


def prepare_text(encoder, reports: list[str], work: Path, progress: Progress | None,
                 val_reports: Sequence[str] = (), variants: int = 0, seed: int = 0):
    """Encode the training reports, the empty report, any validation reports and ``variants`` variants of each
    training report (drawn from ``seed``) once with ``encoder``; returns (train TextBatch, empty-report
    TextBatch, validation TextBatch or None, ReportVariants or None)."""
    from synthaug.text.store import EmbeddingStore

    store = EmbeddingStore(work / "text", encoder)
    report = (lambda done, total: progress("text", done, total, {})) if progress else None
    shorter, index = variant_texts(reports, variants, seed) if variants else ([], None)
    store.precompute([*reports, "", *val_reports, *shorter], progress=report)
    batch = store.get(reports)  # (N, T, D), padded to the longest report
    null = store.get([""])
    return (batch, null, store.get(list(val_reports)) if val_reports else None,
            ReportVariants(store.get(shorter), index) if shorter else None)


def validation_reports(manifest: Manifest) -> tuple[list[str], torch.Tensor]:
    """The val split's non-empty reports and their labels: what the adapter's class accuracy is measured on."""
    cases = [c for c in manifest.split("val") if c.report.strip()]
    return [c.report for c in cases], torch.tensor([c.label for c in cases], dtype=torch.long)


# ---------------------------------------------------------------- stage 3: the LDM


def epoch_batch(step: int, n: int, batch_size: int, seed: int, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    """Indices of batch ``step``: every case once per epoch, a fresh seeded order per epoch, stateless."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    out = []
    for p in positions:
        epoch = p // n
        if epoch not in cache:
            cache.clear()  # keep only the current epoch's order
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(cache[epoch][p % n]))
    return torch.tensor(out)


def parameter_groups(model: CCELLALDM, cfg: SynthaugConfig) -> list[dict]:
    """One group at lr, or the reference's three: U-Net lr, adapter lr/10, final classifier lr/100."""
    lr = cfg.train.lr
    if not cfg.train.lr_groups:
        return [{"params": list(model.parameters()), "lr": lr}]
    final = list(model.adapter.classifier.parameters())
    final_ids = {id(p) for p in final}
    adapter = [p for p in model.adapter.parameters() if id(p) not in final_ids]
    return [{"params": list(model.unet.parameters()), "lr": lr},
            {"params": adapter, "lr": lr / 10}, {"params": final, "lr": lr / 100}]


@contextmanager
def _stop_signals():
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step (to checkpoint and stop)."""
    flag = {"stop": None}

    def handler(signum, frame):
        flag["stop"] = signal.Signals(signum).name

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in previous:
            signal.signal(s, handler)
    except ValueError:  # not the main thread: signals cannot be caught here
        previous = {}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ema_with_warmup(decay: float):  # an AveragedModel multi_avg_fn
    """EMA whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates (the rule of the
    original DDPM/LDM code and diffusers' ``EMAModel``).

    A fixed 0.999 from the first step keeps 0.999^n of the random initial weights in the average: 13% after
    2000 steps, enough to make short runs' EMA weights sample latents 8x too large.
    """

    @torch.no_grad()
    def update(ema_params, params, num_averaged) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        floating = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        for e, p in zip(ema_params, params):
            if not e.is_floating_point():
                e.copy_(p)
        if floating:  # one foreach call instead of a Python loop over ~300 tensors: the same lerp, faster
            torch._foreach_lerp_([e for e, _ in floating], [p for _, p in floating], 1.0 - d)

    return update


class LDMTrainer:
    """The LDM optimisation loop on cached latents and text features, with exact checkpoint/resume."""

    def __init__(self, cfg: SynthaugConfig, latents: torch.Tensor, labels: torch.Tensor, text, null,
                 device: torch.device, run_key: str, work: Path, dist: Dist | None = None,
                 val: tuple | None = None, variants: ReportVariants | None = None) -> None:
        """``val``: (TextBatch, labels (M,)) of validation reports for the logged class accuracy, or None;
        ``variants``: shorter training reports for the class head (``loss.report_variants``), or None."""
        self.cfg = cfg
        self.device = device
        self.dist = dist or Dist()
        if cfg.train.batch_size % self.dist.world:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} does not split over {self.dist.world} processes",
                              where="train.batch_size", fix=f"use a multiple of {self.dist.world} (the global batch)")
        self.latents, self.labels = latents, labels  # (N, C, d, h, w) scaled, (N,)
        self.text, self.null = text, null
        self.variants = variants
        self.val = val if val is not None and len(val[1]) else None
        self.run_key = run_key
        self.checkpoints = work / "checkpoints"
        self.log_file = work / "ldm_log.jsonl"
        with torch.random.fork_rng(devices=[]):  # parameter init from the seed; the global RNG is left as it was
            torch.default_generator.manual_seed(cfg.train.seed)
            self.model = CCELLALDM.from_config(cfg, text_dim=text.features.shape[-1])
        self.model.to(device)  # every later draw uses self.generator
        # Under torchrun each rank computes its share of the global batch; DDP averages the gradients.
        self.forward = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[device.index] if
                                                                  device.type == "cuda" else None)
                        if self.dist.active else self.model)
        self.ema = (AveragedModel(self.model, multi_avg_fn=ema_with_warmup(cfg.train.ema_decay), use_buffers=True)
                    if cfg.train.ema_decay > 0 else None)
        # fused: the same AdamW update in one kernel (the default single-tensor loop cost 11% of a demo-size
        # step on 2 cores; benchmarks/README.md, bench_speed.py). CPU and CUDA both have it.
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, cfg), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay, fused=True)
        self._parameters = list(self.model.parameters())  # gradient clipping walks the module tree otherwise
        steps, power = cfg.train.steps, cfg.train.lr_power
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, 1.0 - s / steps) ** power)
        self.scheduler = training_scheduler(cfg.diffusion)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.dtype = resolve_precision(cfg.train.precision, device, cpu_auto="fp32")
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.spacing = torch.tensor(cfg.data.spacing, dtype=torch.float32)
        self.step = 0
        self._perms: dict[int, torch.Tensor] = {}
        self.probe = self._probe_batch()

    def _probe_batch(self) -> dict[str, torch.Tensor]:
        """A fixed batch (first cases, fixed noise, timesteps spread over the schedule) for a low-noise loss curve."""
        n = min(8, len(self.latents))
        g = torch.Generator().manual_seed(self.cfg.train.seed + 1)  # never touches the training generator
        x0 = self.latents[:n]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.linspace(0, self.cfg.diffusion.num_train_timesteps - 1, n).long()
        x_t, target = training_target(self.cfg.diffusion, self.scheduler, x0, noise, t)
        return {"x_t": x_t, "t": t, "target": target,
                "text": self.text.features[:n].float(), "mask": self.text.mask[:n]}

    @torch.no_grad()
    def probe_loss(self) -> float:
        """L1 of the model's prediction on the fixed probe batch (deterministic; falls as training works)."""
        p, dev = self.probe, self.device
        self.model.eval()
        pred, _ = self.model(p["x_t"].to(dev), p["t"].to(dev), p["text"].to(dev), p["mask"].to(dev),
                             self.spacing.expand(len(p["t"]), 3).to(dev))
        return float(torch.nn.functional.l1_loss(pred.float(), p["target"].to(dev)))

    @torch.no_grad()
    def val_class_accuracy(self) -> dict[str, float]:
        """The adapter's class accuracy on the validation reports at t = 0 (where generation reads its
        prediction), for the raw and the EMA weights; empty without validation reports."""
        if self.val is None:
            return {}
        text, labels = self.val
        models = {"val_class_acc": self.model}
        if self.ema is not None:
            models["val_class_acc_ema"] = self.ema.module
        out = {}
        for key, model in models.items():
            model.eval()
            correct = 0
            for start in range(0, len(labels), self.cfg.train.batch_size):
                part = slice(start, start + self.cfg.train.batch_size)
                t = torch.zeros(len(labels[part]), dtype=torch.long, device=self.device)
                logits = model.adapter(text.features[part].to(self.device), text.mask[part].to(self.device), t)[1]
                correct += int((logits.argmax(dim=-1).cpu() == labels[part]).sum())
            out[key] = correct / len(labels)
        return out

    # -- checkpoints
    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        opt_tensors, self._opt_rest = ckpt.flatten_optimizer(self.optimizer.state_dict())
        groups = {"model": self.model.state_dict(), "optimizer": opt_tensors,
                  "rng": {"generator": self.generator.get_state()}}
        if self.ema is not None:
            groups["ema"] = self.ema.state_dict()
        return groups

    def save(self) -> None:
        """Rank 0 writes the checkpoint (every rank holds the same state); the others wait for it."""
        if self.dist.is_main:
            groups = self.state()
            meta = {"optimizer": self._opt_rest, "lr_schedule": self.lr_schedule.state_dict()}
            ckpt.save_checkpoint(self.checkpoints, self.step, groups, meta, self.run_key)
        self.dist.barrier()

    def restore(self) -> None:
        step, groups, meta = ckpt.load_checkpoint(self.checkpoints, self.run_key)
        self.model.load_state_dict(groups["model"])
        if self.ema is not None:
            self.ema.load_state_dict(groups["ema"])
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(groups.get("optimizer", {}), meta["optimizer"]))
        self.lr_schedule.load_state_dict(meta["lr_schedule"])
        self.generator.set_state(groups["rng"]["generator"])
        self.step = step

    # -- one step
    def train_step(self) -> dict[str, float]:
        cfg, g = self.cfg, self.generator
        idx = epoch_batch(self.step, len(self.latents), cfg.train.batch_size, cfg.train.seed, self._perms)
        x0 = self.latents[idx]  # (B, C, d, h, w)
        noise = torch.randn(x0.shape, generator=g)
        t = training_timesteps(cfg.diffusion, len(idx), g)
        x_t, target = training_target(cfg.diffusion, self.scheduler, x0, noise, t)
        text, mask, isnull = (self.text.features[idx].float(), self.text.mask[idx], self.text.isnull[idx])
        text, mask, isnull = text_dropout(text, mask, isnull, self.null.features[0], self.null.mask[0],
                                          cfg.loss.text_dropout, generator=g)
        labels = self.labels[idx]
        class_probs, given = class_slot(labels, cfg.loss.p_label, cfg.loss.p_null, generator=g)  # None, None: no draw
        variant = self.variant_rows(idx)  # (B,) rows of self.variants.text, -1 = none; None (no draw) without them
        focal_denominator = variant_denominator = None
        if self.dist.active:  # every draw above is for the global batch (the same on every rank); keep our share
            focal_denominator = isnull.logical_not().sum().clamp(min=1).float() / self.dist.world
            part = self.dist.local_slice(len(idx))
            x_t, t, target, text, mask, isnull, labels = (v[part] for v in (x_t, t, target, text, mask, isnull, labels))
            if given is not None:
                class_probs, given = class_probs[part], given[part]
            if variant is not None:
                variant_denominator = variant.ge(0).sum().clamp(min=1).float() / self.dist.world
                variant = variant[part]
        dev = self.device
        slot = {} if given is None else {"class_probs": class_probs.to(dev), "given": given.to(dev)}
        self.model.train()
        with torch.autocast(dev.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            pred, logits = self.forward(x_t.to(dev), t.to(dev), text.to(dev), mask.to(dev),
                                        self.spacing.expand(len(t), 3).to(dev), **slot)
            loss, logs = joint_loss(pred, target.to(dev), logits, labels.to(dev), isnull.to(dev), cfg.loss,
                                    focal_denominator=focal_denominator)
            if variant is not None:
                focal = self.variant_focal(variant, t, labels, variant_denominator)
                loss = loss + cfg.loss.focal_weight * focal
                logs["loss"], logs["focal_variants"] = torch.stack([loss, focal]).detach().tolist()  # one sync
        if not math.isfinite(logs["loss"]):
            raise SynthaugError(f"LDM loss is not finite at step {self.step + 1}", where="LDM training",
                                fix="lower train.lr or use train.precision fp32")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self._parameters, cfg.train.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_schedule.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        if self.dist.active:  # the log shows the global batch's losses
            keys = ("loss", self.cfg.loss.diffusion_loss, "focal")
            keys += ("focal_variants",) if "focal_variants" in logs else ()
            averaged = self.dist.all_mean(torch.tensor([logs[k] for k in keys], dtype=torch.float64)).tolist()
            logs.update(zip(keys, averaged))
        return {**logs, "grad_norm": float(grad_norm), "lr": self.optimizer.param_groups[0]["lr"]}

    def variant_rows(self, idx: torch.Tensor) -> torch.Tensor | None:
        """One of each case's report variants, drawn from the training generator: (B,) rows of
        ``self.variants.text``, -1 where a report has none; None, drawing nothing, without variants."""
        if self.variants is None:
            return None
        pick = torch.randint(0, self.variants.index.shape[1], (len(idx),), generator=self.generator)
        return self.variants.index[idx, pick]

    def variant_focal(self, rows: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                      denominator: torch.Tensor | None) -> torch.Tensor:
        """The class head's focal loss on the report variants ``rows`` (B,) at the cases' timesteps, over the
        cases that have one. The adapter is called on its own: the U-Net never sees a variant."""
        dev, text = self.device, self.variants.text
        _, logits = self.model.adapter(text.features[rows.clamp(min=0)].to(dev), text.mask[rows.clamp(min=0)].to(dev),
                                       t.to(dev))
        return focal_term(logits, labels.to(dev), rows.ge(0).to(dev), self.cfg.loss, denominator)

    def run(self, progress: Progress | None = None) -> list[dict]:
        """Train up to ``cfg.train.steps``, checkpointing every ``checkpoint_every`` steps and on a stop signal.

        Under torchrun rank 0 logs, probes and reports progress; every rank stops at the same step.
        """
        cfg, main = self.cfg.train, self.dist.is_main
        history: list[dict] = []
        started = time.perf_counter()
        first = self.step
        log_file = open(self.log_file, "a", encoding="utf-8") if main else contextlib.nullcontext()  # noqa: SIM115
        with _stop_signals() as flag, log_file as log:
            if self.step == 0 and main:
                log.write(json.dumps({"step": 0, "probe_l1": self.probe_loss(), **self.val_class_accuracy()}) + "\n")
            while self.step < cfg.steps:
                logs = self.train_step()
                logs["step"] = self.step
                logs["it_s"] = (self.step - first) / max(time.perf_counter() - started, 1e-9)
                history.append(logs)
                if main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    logs["probe_l1"] = self.probe_loss()
                    logs.update(self.val_class_accuracy())
                    log.write(json.dumps(logs) + "\n")
                    log.flush()
                if progress and main:
                    progress("ldm", self.step, cfg.steps, logs)
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.save()
                stop = flag["stop"]
                if self.dist.active:  # a signal may reach the ranks at different steps: stop together
                    stop = flag["stop"] or ("SIGTERM" if self.dist.all_sum(torch.tensor(float(bool(stop)))) else None)
                if stop:
                    self.save()
                    raise TrainingInterrupted(
                        f"stopped by {stop} at step {self.step}; checkpoint saved",
                        where=str(self.checkpoints), fix="run the same command with --resume to continue")
        return history


# ---------------------------------------------------------------- the whole pipeline


def _versions() -> dict[str, str]:
    import monai
    import transformers

    return {"synthaug": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "transformers": transformers.__version__}


def train_generator(
    manifest_path: str | Path,
    out: str | Path,
    cfg: SynthaugConfig,
    *,
    autoencoder: str | Path | None = None,
    work_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> TrainResult:
    """Train VAE (unless given) and LDM on the manifest's train split; write the bundle to ``out``.

    ``work_dir`` (default ``<out>.work``) keeps caches (latents, text features), the VAE and
    checkpoints; it is not part of the bundle and can be deleted after training.
    """
    started = time.perf_counter()
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")
    dist = Dist.from_env(device)  # torchrun: data-parallel LDM training; rank 0 builds caches and writes
    device = dist.device(device)
    progress = progress if dist.is_main else None
    # Everything that can refuse the input is checked before the work folder is made or any work starts.
    _check_request(out, cfg, overwrite)
    inputs = _read_inputs(manifest_path, cfg, autoencoder)
    _prepare_work(work, cfg, inputs.key, resume=resume, overwrite=overwrite, dist=dist)

    encoded = _encode_training_set(inputs, cfg, work, device=device, dist=dist, progress=progress, resume=resume)
    trainer, history = _train_ldm(inputs, encoded, cfg, work, device=device, dist=dist, progress=progress,
                                  resume=resume)
    if dist.is_main:  # rank 0 writes the bundle; the others wait for it and return what it wrote
        fingerprint = _write_bundle(out, work, cfg, inputs, encoded, trainer, history, overwrite=overwrite)
        dist.barrier()
    else:
        dist.barrier()
        fingerprint = (work / "bundle_fingerprint").read_text().strip()
    return TrainResult(bundle=out, fingerprint=fingerprint, steps=trainer.step,
                       seconds=time.perf_counter() - started,
                       final_loss=float(history[-1]["loss"]) if history else float("nan"))


@dataclass
class _Inputs:
    """What ``train_generator`` reads and checks before any work starts."""

    manifest_path: str | Path
    manifest: Manifest
    cases: list[CaseRecord]  # the train split
    key: str  # ``data_key``: the cases and their preprocessing
    autoencoder: Path | None  # the user's VAE weights (checked), or None to train one
    encoder: Any  # the frozen synthaug.text.TextEncoder


@dataclass
class _Encoded:
    """The training set as the LDM sees it: VAE latents and text features (cached in the work folder)."""

    vae: torch.nn.Module
    ae_hash: str  # sha256 of the VAE weights
    latents: torch.Tensor  # (N, C, d, h, w), unscaled
    scale: float  # 1 / std of the latents
    labels: torch.Tensor  # (N,)
    text: Any  # TextBatch of the train reports
    null: Any  # TextBatch of the empty report
    val: tuple | None  # (TextBatch, labels (M,)) of the validation reports, or None
    variants: ReportVariants | None  # shorter training reports for the class head, or None


def _check_request(out: Path, cfg: SynthaugConfig, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` (without ``overwrite``) and image shapes the VAE and U-Net cannot divide."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError("bundle folder exists and is not empty", where=str(out),
                         fix="choose another --out or pass --overwrite")
    check_image_shape(cfg.data.image_shape, cfg.autoencoder)
    unet_factor = 2 ** (len(cfg.unet.channels) - 1)
    latent_shape = [s // downsample_factor(cfg.autoencoder) for s in cfg.data.image_shape]
    if any(s % unet_factor for s in latent_shape):
        raise ConfigError(f"latent shape {latent_shape} is not divisible by the U-Net's downsampling {unet_factor}",
                          where="data.image_shape",
                          fix=f"use an image shape divisible by {unet_factor * downsample_factor(cfg.autoencoder)}")


def _read_inputs(manifest_path: str | Path, cfg: SynthaugConfig, autoencoder: str | Path | None) -> _Inputs:
    """The manifest's train split, its data key, the checked VAE weights and the text encoder."""
    manifest = load_manifest(manifest_path)
    cases = training_cases(manifest)
    key = data_key(manifest, cases, cfg)
    if autoencoder is not None:
        autoencoder = _check_autoencoder_source(Path(autoencoder), cfg)
    from synthaug.text.encoder import TextEncoder

    encoder = TextEncoder.from_config(cfg.text)
    return _Inputs(manifest_path, manifest, cases, key, autoencoder, encoder)


def _prepare_work(work: Path, cfg: SynthaugConfig, key: str, *, resume: bool, overwrite: bool, dist: Dist) -> None:
    """Check the work folder's checkpoints against ``resume``/``overwrite``, then make the folder (and, to
    start again, clear the checkpoints)."""
    checkpoints = work / "checkpoints"
    vae_checkpoints = _autoencoder_checkpoints(autoencoder_file(cfg, work, key))
    left = [c for c in (checkpoints, vae_checkpoints) if ckpt.has_checkpoint(c)]
    if left and not (resume or overwrite):
        raise InputError("an earlier training run left checkpoints here", where=str(left[0]),
                         fix="pass --resume to continue it or --overwrite to start again")
    if resume and not left and not autoencoder_file(cfg, work, key).is_file():
        raise InputError("nothing to resume: no checkpoint of this run", where=str(work),
                         fix="train without --resume (the same data, config and --work as the interrupted run)")
    work.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume and dist.is_main:
        ckpt.clear_checkpoints(checkpoints)
        ckpt.clear_checkpoints(vae_checkpoints)


def _encode_training_set(inputs: _Inputs, cfg: SynthaugConfig, work: Path, *, device: torch.device, dist: Dist,
                         progress: Progress | None, resume: bool) -> _Encoded:
    """Stages 1-3: preprocess, train (or load) the VAE, encode the cases to latents and the reports to features."""
    cases = inputs.cases
    with dist.main_first(), _stop_signals() as flag:  # VAE, latents and text features: made once, by rank 0
        volumes = load_volumes(inputs.manifest, cases, cfg, progress)
        vae, ae_hash = prepare_autoencoder(cfg, volumes, work, inputs.key, autoencoder=inputs.autoencoder,
                                           device=device, progress=progress, resume=resume,
                                           should_stop=lambda: flag["stop"])
        latents = prepare_latents(vae, volumes, work, ae_hash, cfg, device)
        del volumes
        reports = [c.report for c in cases]
        val_reports, val_labels = validation_reports(inputs.manifest)
        text, null, val_text, variants = prepare_text(inputs.encoder, reports, work, progress, val_reports,
                                                      variants=cfg.loss.report_variants, seed=cfg.train.seed)
    scale = scale_factor(latents)
    labels = torch.tensor([c.label for c in cases])
    return _Encoded(vae, ae_hash, latents, scale, labels, text, null,
                    val=(val_text, val_labels) if val_text is not None else None, variants=variants)


def _train_ldm(inputs: _Inputs, encoded: _Encoded, cfg: SynthaugConfig, work: Path, *, device: torch.device,
               dist: Dist, progress: Progress | None, resume: bool) -> tuple[LDMTrainer, list[dict]]:
    """Stage 4: train the LDM on the scaled latents, from the last checkpoint with ``resume``; (trainer, history)."""
    # Only what shapes the LDM's training: the phantom and sampling sections can change and a checkpoint still resumes.
    run_key = _hash(inputs.key, encoded.ae_hash, inputs.encoder.fingerprint,
                    {k: v for k, v in cfg.to_dict().items() if k not in ("phantom", "sample", "preset")})
    trainer = LDMTrainer(cfg, encoded.latents * encoded.scale, encoded.labels, encoded.text, encoded.null, device,
                         run_key, work, dist, val=encoded.val, variants=encoded.variants)
    if resume and ckpt.has_checkpoint(trainer.checkpoints):  # else the run was stopped before the LDM stage began
        trainer.restore()
    return trainer, trainer.run(progress)


def _write_bundle(out: Path, work: Path, cfg: SynthaugConfig, inputs: _Inputs, encoded: _Encoded,
                  trainer: LDMTrainer, history: list[dict], *, overwrite: bool) -> str:
    """Stage 5 (rank 0): write the bundle, note its fingerprint in the work folder, clear the checkpoints."""
    cases, labels = inputs.cases, encoded.labels
    encoder = inputs.encoder
    info = {
        "scale_factor": encoded.scale,
        "latent_shape": list(encoded.latents.shape[1:]),
        "text": {"model_id": encoder.model_id, "fingerprint": encoder.fingerprint,
                 "dim": int(encoded.text.features.shape[-1]), "kind": encoder.kind, "max_tokens": cfg.text.max_tokens},
        "data": {"manifest": str(Path(inputs.manifest_path).resolve()), "n_train": len(cases),
                 "labels": {str(k): int(v) for k, v in zip(*np.unique(labels.numpy(), return_counts=True))},
                 "image_shape": list(cfg.data.image_shape), "spacing": list(cfg.data.spacing),
                 "intensity": intensity_stats(inputs.manifest, cases), "data_key": inputs.key},
        "training": {"ldm_steps": trainer.step, "autoencoder_sha256": encoded.ae_hash,
                     "final_loss": history[-1]["loss"] if history else None},
        "versions": _versions(),
    }
    train_cases = [{"case_id": c.case_id, "label": c.label, "report": c.report} for c in cases]
    ema_model = trainer.ema.module if trainer.ema is not None else None
    fingerprint = save_bundle(out, cfg, encoded.vae, trainer.model, ema_model, info, train_cases, overwrite=overwrite)
    atomic_write_text(work / "bundle_fingerprint", fingerprint + "\n")
    ckpt.clear_checkpoints(trainer.checkpoints)  # training is complete; caches stay for re-use
    return fingerprint
