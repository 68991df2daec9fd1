"""Training and evaluation of a binary classifier on any map-style dataset of dict items.

    result = fit(model, train_ds, val_ds, FitConfig(epochs=20, seed=0))
    result.best_epoch, result.best_metric, result.history   # the model now holds the best epoch's weights
    test = evaluate(model, test_ds, threshold=result.threshold)
    test.metrics["auroc"]

An item is ``{"image": (C, *spatial) tensor/array/MetaTensor, "label": 0|1, ...}`` (other keys are ignored).
The recipe is the paper's: focal loss (gamma 2), AdamW lr 1e-4, polynomial (power 2) decay per iteration,
MONAI flip / rotate-about-z / translate / zoom augmentation (p=0.5 each), selection on the validation
metric with early stopping. Epochs are counted from 0. A dataset with ``set_epoch(epoch)`` (e.g.
``SyntheticMixDataset``) is told each epoch. Same config and seed -> same history on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from monai.losses import FocalLoss
from monai.transforms import Compose, RandAffined, RandFlipd, RandRotated, RandZoomd
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from classifiers.distributed import EpochShardSampler, all_mean, rank_and_world, sync_buffers
from classifiers.errors import ClassifierError
from classifiers.metrics import METRIC_NAMES, THRESHOLD_RULES, BinaryMetrics, binary_metrics, choose_threshold


@dataclass
class FitConfig:
    """Hyper-parameters of ``fit``/``evaluate``; the defaults are the paper's recipe."""

    epochs: int = 50
    batch_size: int = 4
    samples_per_epoch: int | None = None  # items drawn per epoch (reshuffled as needed); None: one pass.
    # Fix it to compare training sets of different sizes (e.g. synthetic ratios) at equal optimiser steps.
    lr: float = 1e-4  # AdamW
    weight_decay: float = 1e-5
    lr_power: float = 2.0  # polynomial decay to 0 over epochs x iterations, stepped per iteration
    focal_gamma: float = 2.0
    focal_alpha: float | None = None  # MONAI FocalLoss alpha (weight of the positive class), None: off
    augment: bool = True  # RandFlipd, RandRotated about the slice axis, RandAffined translate, RandZoomd
    aug_prob: float = 0.5  # of each augmentation
    flip_axis: int = 0  # spatial axis flipped (0 = X, left-right in RAS)
    slice_axis: int = 2  # spatial axis of the slices (Z of (X, Y, Z)); rotation is about it
    rotate_degrees: float = 15.0
    translate_fraction: float = 0.1  # of the image size, each in-plane axis; half that through-plane
    zoom: tuple[float, float] = (0.9, 1.1)
    amp: str | bool = "auto"  # "auto": bf16 autocast on a GPU that supports it, off on CPU; True/"bf16"; False
    patience: int | None = 10  # epochs without improvement before stopping; None: run every epoch
    metric: str = "auroc"  # validation metric that selects the epoch (any of METRIC_NAMES, or "loss")
    threshold_rule: str = "fixed"  # "fixed" (0.5), "youden" or "f1", chosen on validation after training
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"  # "auto": CUDA if available, else CPU
    image_key: str = "image"
    label_key: str = "label"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or (self.samples_per_epoch or 1) < 1:
            raise ClassifierError(f"need epochs, batch_size and samples_per_epoch >= 1, got {self.epochs}, "
                                  f"{self.batch_size}, {self.samples_per_epoch}")
        if self.metric not in (*METRIC_NAMES, "loss"):
            raise ClassifierError(f"unknown metric {self.metric!r}; known: {', '.join(METRIC_NAMES)}, loss")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ClassifierError(f"unknown threshold rule {self.threshold_rule!r}; known: {THRESHOLD_RULES}")
        if self.amp not in ("auto", "bf16", True, False):
            raise ClassifierError(f"amp must be 'auto', 'bf16', True or False, got {self.amp!r}")


@dataclass
class FitResult:
    """What ``fit`` found: the best epoch (0-based), its metric, per-epoch history and weights (on CPU)."""

    best_epoch: int
    best_metric: float | None
    metric: str
    history: list[dict[str, Any]]  # {"epoch", "train_loss", "lr", "val": {metric: value, "loss": ...}}
    best_state: dict[str, torch.Tensor] = field(repr=False)
    threshold: float = 0.5
    stopped_early: bool = False
    seconds: float = 0.0


@dataclass
class EvalResult:
    """Probabilities of class 1 and labels ``(N,)``, the mean focal loss and metrics at ``threshold``."""

    probabilities: np.ndarray
    labels: np.ndarray
    metrics: BinaryMetrics
    loss: float
    threshold: float


class _Items(Dataset):
    """``(image, label)`` pairs of a dict dataset, optionally augmented; a MetaTensor becomes a plain tensor."""

    def __init__(self, dataset, config: FitConfig, transform: Compose | None = None) -> None:
        self.dataset, self.config, self.transform = dataset, config, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.dataset[i]
        key, label_key = self.config.image_key, self.config.label_key
        if not isinstance(item, dict) or key not in item or label_key not in item:
            raise ClassifierError(f"item {i} must be a dict with {key!r} and {label_key!r} keys, got "
                                  f"{sorted(item) if isinstance(item, dict) else type(item).__name__}")
        image = item[key] if torch.is_tensor(item[key]) else torch.as_tensor(np.asarray(item[key]))
        if self.transform is not None:
            with _untracked_meta():
                image = self.transform({"image": image})["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        return image.float(), torch.as_tensor(int(item[label_key]), dtype=torch.long)


@contextlib.contextmanager
def _untracked_meta():
    """MONAI transforms on plain tensors: the same values (bitwise, tested) at half the cost, since the
    classifier needs no MetaTensor affine or history. MONAI's switch is global: restored on exit."""
    from monai.data import get_track_meta, set_track_meta

    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


def augmentation(config: FitConfig, spatial_shape: tuple[int, ...]) -> Compose:
    """The MONAI training augmentation of ``config`` for images of ``spatial_shape`` (2D: rotation in-plane)."""
    p, axis = config.aug_prob, config.slice_axis
    angle = math.radians(config.rotate_degrees)
    rotate = {f"range_{'xyz'[axis]}": angle} if len(spatial_shape) == 3 else {"range_x": angle}
    translate = [config.translate_fraction * n * (0.5 if a == axis else 1.0) for a, n in enumerate(spatial_shape)]
    return Compose([
        RandFlipd("image", prob=p, spatial_axis=config.flip_axis),
        RandRotated("image", prob=p, keep_size=True, padding_mode="zeros", **rotate),
        RandAffined("image", prob=p, translate_range=translate, padding_mode="zeros"),
        RandZoomd("image", prob=p, min_zoom=config.zoom[0], max_zoom=config.zoom[1], keep_size=True),
    ])


def _device(config: FitConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def _autocast(config: FitConfig, device: torch.device):
    """bf16 autocast where it helps: on a bf16-capable GPU for "auto"; always for True/"bf16". "auto" leaves
    it off on CPU: the gain depends on the CPU (measured on an AVX512-BF16 EPYC, one thread: tiny-cnn steps
    1.4-1.9x faster, EfficientNet-B0 no clear gain) and fp32 keeps a seed's history the same on every CPU."""
    on = config.amp in (True, "bf16") or (
        config.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def _focal(config: FitConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MONAI focal loss: sigmoid on one logit, softmax over two."""
    if logits.ndim != 2 or logits.shape[1] not in (1, 2):
        raise ClassifierError(f"the model must return (B, 1) or (B, 2) logits for a binary task, "
                              f"got {tuple(logits.shape)}")
    two = logits.shape[1] == 2
    loss = FocalLoss(gamma=config.focal_gamma, alpha=config.focal_alpha, use_softmax=two, to_onehot_y=two)
    return loss(logits.float(), labels[:, None] if two else labels[:, None].float())


def _positive_prob(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.softmax(1)[:, 1] if logits.shape[1] == 2 else logits[:, 0].sigmoid()


def _loader(items: _Items, config: FitConfig, shuffle: bool, generator: torch.Generator | None,
            sampler=None) -> DataLoader:
    from monai.data.utils import worker_init_fn  # reseeds each worker's random transforms from its torch seed

    if sampler is None and shuffle:
        sampler = RandomSampler(items, num_samples=config.samples_per_epoch, generator=generator)
    return DataLoader(items, batch_size=config.batch_size, sampler=sampler, generator=generator,
                      num_workers=config.num_workers, worker_init_fn=worker_init_fn if config.num_workers else None,
                      pin_memory=False, drop_last=False)


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def _advance(bar, task, epoch: int, loss: float) -> None:
    bar.update(task, advance=1, description=f"epoch {epoch} loss {loss:.4f}")


@torch.no_grad()
def _predict(model: nn.Module, loader: DataLoader, config: FitConfig, device: torch.device):
    model.eval()
    probs, labels, losses = [], [], []
    for image, label in loader:
        image, label = image.to(device), label.to(device)
        with _autocast(config, device):
            logits = model(image)
        losses.append(float(_focal(config, logits, label)) * len(label))
        probs.append(_positive_prob(logits).cpu())
        labels.append(label.cpu())
    n = sum(len(x) for x in labels)
    if n == 0:
        raise ClassifierError("the evaluation dataset is empty")
    return torch.cat(probs).numpy().astype(np.float64), torch.cat(labels).numpy(), sum(losses) / n


def evaluate(model: nn.Module, ds, config: FitConfig | None = None, *, threshold: float = 0.5,
             batch_size: int | None = None, device: str | None = None) -> EvalResult:
    """Probabilities, labels, loss and ``binary_metrics`` of ``model`` on ``ds`` (no augmentation)."""
    config = FitConfig() if config is None else config
    overrides = {k: v for k, v in (("batch_size", batch_size), ("device", device)) if v is not None}
    config = FitConfig(**{**asdict(config), **overrides}) if overrides else config
    dev = _device(config)
    model.to(dev)
    probs, labels, loss = _predict(model, _loader(_Items(ds, config), config, False, None), config, dev)
    return EvalResult(probs, labels, binary_metrics(labels, probs, threshold), loss, threshold)


def _train_epoch(model: nn.Module, loader: DataLoader, optimizer, scheduler, config: FitConfig,
                 device: torch.device, report: Callable[[float], None] | None) -> float:
    """One pass over ``loader`` (an optimiser and scheduler step per batch); returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for image, label in loader:
        image, label = image.to(device), label.to(device)
        with _autocast(config, device):
            logits = model(image)
        loss = _focal(config, logits, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        total, count = total + value * len(label), count + len(label)
        if report is not None:
            report(value)
    return total / count


def _better(value: float | None, best: float | None, metric: str) -> bool:
    if value is None:
        return False
    return best is None or (value < best if metric == "loss" else value > best)


def fit(model: nn.Module, train_ds, val_ds, config: FitConfig | None = None,
        on_epoch: Callable[[int, dict[str, float | None]], None] | None = None, progress: bool = True) -> FitResult:
    """Train ``model`` on ``train_ds``, select the epoch with the best validation ``config.metric``, stop
    after ``config.patience`` epochs without improvement, and load the best weights into ``model``.

    ``on_epoch(epoch, val_metrics)`` runs after every epoch (``val_metrics`` includes ``"loss"``); an
    exception it raises (e.g. ``optuna.TrialPruned``) stops training and propagates.

    Under torchrun (``torch.distributed`` initialised with several processes, e.g. by
    ``classifiers.distributed.init_from_env()``) the model trains as DistributedDataParallel: each epoch's
    items are dealt to the ranks, gradients and the training loss are averaged, and every rank scores the
    whole validation set, so all ranks select the same epoch; progress shows on rank 0 only.
    """
    config = FitConfig() if config is None else config
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ClassifierError(f"fit needs non-empty datasets, got {len(train_ds)} train and {len(val_ds)} val items")
    start = time.perf_counter()
    run = _prepare(model, train_ds, val_ds, config)
    history: list[dict[str, Any]] = []
    best_epoch, best_metric, best_state, best_probs = 0, None, None, None
    stopped_early = False
    with torch.random.fork_rng(devices=run.rng_devices), _progress(progress and run.rank == 0) as bar:
        torch.manual_seed(config.seed)  # dropout and other in-model randomness
        task = bar.add_task("training", total=config.epochs * len(run.train_loader)) if bar is not None else None
        for epoch in range(config.epochs):
            _start_epoch(train_ds, run.shard, epoch)
            lr = run.optimizer.param_groups[0]["lr"]
            report = functools.partial(_advance, bar, task, epoch) if bar is not None else None
            train_loss = all_mean(_train_epoch(run.trained, run.train_loader, run.optimizer, run.scheduler, config,
                                               run.device, report))
            sync_buffers(model)  # every rank validates the same model
            probs, labels, val_loss = _predict(model, run.val_loader, config, run.device)
            val = {**binary_metrics(labels, probs), "loss": val_loss}
            history.append({"epoch": epoch, "train_loss": train_loss, "lr": lr, "val": val})
            if _better(val[config.metric], best_metric, config.metric) or best_state is None:
                best_epoch, best_metric, best_probs = epoch, val[config.metric], (labels, probs)
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if on_epoch is not None:
                on_epoch(epoch, val)
            if config.patience is not None and epoch - best_epoch >= config.patience:
                stopped_early = epoch + 1 < config.epochs
                break
    model.load_state_dict(best_state)
    threshold = choose_threshold(*best_probs, rule=config.threshold_rule)
    return FitResult(best_epoch, best_metric, config.metric, history, best_state, threshold, stopped_early,
                     time.perf_counter() - start)


@dataclass
class _Run:
    """What ``fit`` trains with: the device, the model to step (DDP-wrapped under torchrun), loaders and optimizer."""

    device: torch.device
    rank: int
    trained: nn.Module  # the model, or its DistributedDataParallel wrapper
    shard: EpochShardSampler | None  # deals each epoch's items to the ranks (torchrun), else None
    train_loader: DataLoader
    val_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    @property
    def rng_devices(self) -> list[int]:
        """The CUDA devices whose random state ``fit`` forks (none on a CPU)."""
        return [self.device.index or 0] if self.device.type == "cuda" else []


def _prepare(model: nn.Module, train_ds, val_ds, config: FitConfig) -> _Run:
    """Move ``model`` to its device (wrapped for DDP under torchrun) and build the loaders, optimizer and schedule."""
    device = _device(config)
    rank, world = rank_and_world()  # under torchrun: DDP, each rank a share of every epoch
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    model.to(device)
    trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                  else None) if world > 1 else model
    generator = torch.Generator().manual_seed(config.seed)
    transform = None
    if config.augment:  # the first item gives the image size that the translation range is a fraction of
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(0)
        transform = augmentation(config, tuple(_Items(train_ds, config)[0][0].shape[1:]))
        transform.set_random_state(seed=config.seed + rank)
    items = _Items(train_ds, config, transform)
    shard = EpochShardSampler(len(items), config.samples_per_epoch, config.seed, rank, world) if world > 1 else None
    train_loader = _loader(items, config, True, generator, sampler=shard)
    val_loader = _loader(_Items(val_ds, config), config, False, None)
    # fused: the same AdamW update in one kernel instead of a loop over tensors, as for the VAE and LDM (a tiny-cnn
    # classifier epoch 1.22x, the demo's sweep 2%; benchmarks/README.md, bench_speed.py). CPU and CUDA, torch >= 2.4.
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=config.epochs * len(train_loader),
                                                      power=config.lr_power)
    return _Run(device, rank, trained, shard, train_loader, val_loader, optimizer, scheduler)


def _start_epoch(train_ds, shard: EpochShardSampler | None, epoch: int) -> None:
    """Tell the dataset (``set_epoch``, e.g. ``SyntheticMixDataset``) and the rank sharder which epoch begins."""
    if hasattr(train_ds, "set_epoch"):
        train_ds.set_epoch(epoch)
    if shard is not None:
        shard.set_epoch(epoch)
