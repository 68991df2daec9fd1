"""classifiers.train: fit/evaluate on small phantom volumes held in memory (a list of dicts is a dataset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from torch import nn

from classifiers import ClassifierError, FitConfig, build_model, evaluate, fit
from synthaug.config import DataConfig, PhantomConfig
from synthaug.data.phantom import make_phantom_case


@pytest.fixture(scope="module")
def phantom() -> dict[str, list[dict]]:
    """Small, conspicuous phantom volumes (1, 32, 32, 16) scaled to [0, 1]: 24 train and 12 val cases."""
    data = DataConfig(image_shape=(32, 32, 16), spacing=(3.0, 3.0, 6.0))
    config = PhantomConfig(difficulty=0.0)

    def item(index: int) -> dict:
        case = make_phantom_case(index, data, config, positive=bool(index % 2))
        image = np.clip(case.array / np.percentile(case.array, 99.5), 0, 1)
        return {"image": torch.from_numpy(image[None].astype(np.float32)), "label": case.label, "case_id": case.case_id}

    return {"train": [item(i) for i in range(24)], "val": [item(i) for i in range(100, 112)]}


def quick(**overrides) -> FitConfig:
    return FitConfig(**{"epochs": 4, "batch_size": 8, "lr": 1e-3, "patience": None, **overrides})


def test_fit_lowers_the_training_loss(phantom):
    model = build_model("tiny-cnn", in_channels=1, num_classes=2, seed=0)
    result = fit(model, phantom["train"], phantom["val"], quick(epochs=6, augment=False), progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_fit_keeps_the_best_validation_epoch(phantom):
    model = build_model("tiny-cnn", 1, 2, seed=0)
    result = fit(model, phantom["train"], phantom["val"], quick(metric="balanced_accuracy"), progress=False)
    scores = [h["val"]["balanced_accuracy"] for h in result.history]
    assert result.best_epoch == int(np.argmax(scores)) and result.best_metric == max(scores)
    # the model now holds the best epoch's weights: evaluating it reproduces that epoch's score
    assert evaluate(model, phantom["val"]).metrics["balanced_accuracy"] == pytest.approx(result.best_metric)
    assert set(result.history[0]) == {"epoch", "train_loss", "lr", "val"} and "loss" in result.history[0]["val"]


def test_same_seed_same_history(phantom):
    def history(seed: int) -> list[dict]:
        model = build_model("tiny-cnn", 1, 2, seed=seed)
        return fit(model, phantom["train"], phantom["val"], quick(epochs=2, seed=seed), progress=False).history

    first = history(0)
    assert first == history(0)
    assert first != history(1)


def test_fit_steps_one_fused_adamw_with_the_configured_lr_and_weight_decay(phantom, monkeypatch):
    """One AdamW kernel per step, not a loop over tensors (what bench_speed.py's classifier epoch measures)."""
    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            made.append(kwargs)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    config = quick(epochs=1, lr=3e-4, weight_decay=1e-3)
    fit(build_model("tiny-cnn", 1, 2, seed=0), phantom["train"], phantom["val"], config, progress=False)
    assert made == [{"lr": 3e-4, "weight_decay": 1e-3, "fused": True}]


def test_on_epoch_reports_every_epoch_and_an_exception_stops_training(phantom):
    seen = []

    def prune_after_two(epoch: int, val: dict) -> None:
        seen.append((epoch, val["auroc"]))
        if epoch == 1:
            raise RuntimeError("pruned")  # e.g. optuna.TrialPruned

    with pytest.raises(RuntimeError, match="pruned"):
        fit(build_model("tiny-cnn", 1, 2), phantom["train"], phantom["val"], quick(), on_epoch=prune_after_two,
            progress=False)
    assert [epoch for epoch, _ in seen] == [0, 1]


class _Constant(nn.Module):
    """A linear model that never changes with lr=0: its validation metric never improves."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(32 * 32 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_early_stopping_after_patience_epochs_without_improvement(phantom):
    torch.manual_seed(0)
    result = fit(_Constant(), phantom["train"], phantom["val"], quick(epochs=10, lr=0.0, patience=2, augment=False),
                 progress=False)
    assert result.best_epoch == 0 and len(result.history) == 3 and result.stopped_early


class _EpochAware(torch.utils.data.Dataset):
    """A dataset of MetaTensor/NumPy images that, like SyntheticMixDataset, wants ``set_epoch``."""

    def __init__(self, items: list[dict]) -> None:
        self.items, self.epochs = items, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        image = MetaTensor(item["image"]) if i % 2 else item["image"].numpy()
        return {"image": image, "label": np.int64(item["label"]), "is_synthetic": False, "report": None}


def test_fit_works_with_metatensors_arrays_and_set_epoch(phantom):
    train = _EpochAware(phantom["train"])
    result = fit(build_model("tiny-cnn", 1, 2, seed=0), train, _EpochAware(phantom["val"]), quick(epochs=3),
                 progress=False)
    assert len(result.history) == 3 and set(train.epochs) == {0, 1, 2}


def test_augmentation_runs_untracked_with_the_values_of_the_tracked_path():
    from monai.data import get_track_meta

    from classifiers.train import _Items, augmentation

    config, shape = FitConfig(seed=0), (16, 16, 8)
    images = [torch.rand(1, *shape, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    transform, seen = augmentation(config, shape), []
    transform.set_random_state(seed=0)

    def spy(item: dict) -> dict:
        seen.append(get_track_meta())
        return transform(item)

    items = _Items([{"image": MetaTensor(x), "label": i % 2} for i, x in enumerate(images)], config, spy)
    fast = [items[i][0] for i in range(len(images))]
    assert seen == [False] * len(images) and get_track_meta()  # untracked inside, MONAI's switch restored after
    reference = augmentation(config, shape)
    reference.set_random_state(seed=0)
    tracked = [reference({"image": MetaTensor(x)})["image"] for x in images]
    assert all(isinstance(t, MetaTensor) for t in tracked)
    assert sum(not torch.equal(t.as_tensor(), x) for t, x in zip(tracked, images)) >= 6  # most were augmented
    assert all(torch.equal(a, b.as_tensor()) for a, b in zip(fast, tracked))


def test_samples_per_epoch_fixes_the_steps_whatever_the_dataset_size(phantom):
    class Counting(_EpochAware):
        def __getitem__(self, i: int) -> dict:
            self.reads = getattr(self, "reads", 0) + 1
            return super().__getitem__(i)

    train = Counting(phantom["train"])  # 24 items; 8 drawn per epoch = 2 batches of 4
    fit(build_model("tiny-cnn", 1, 2, seed=0), train, phantom["val"],
        quick(epochs=3, batch_size=4, samples_per_epoch=8, augment=False), progress=False)
    assert train.reads == 3 * 8


def test_evaluate_returns_probabilities_labels_and_metrics(phantom):
    model = build_model("tiny-cnn", 1, 1, seed=0)  # one logit: sigmoid probabilities
    result = fit(model, phantom["train"], phantom["val"], quick(epochs=2, threshold_rule="youden"), progress=False)
    out = evaluate(model, phantom["val"], threshold=result.threshold, batch_size=5)
    assert out.probabilities.shape == out.labels.shape == (12,)
    assert ((out.probabilities >= 0) & (out.probabilities <= 1)).all()
    assert out.threshold == result.threshold and set(out.metrics) >= {"auroc", "balanced_accuracy", "ppv"}


def test_bad_input_is_a_clear_error(phantom):
    with pytest.raises(ClassifierError, match="unknown metric 'f1'"):
        FitConfig(metric="f1")
    with pytest.raises(ClassifierError, match=r"\(B, 1\) or \(B, 2\) logits"):
        evaluate(build_model("tiny-cnn", 1, 3), phantom["val"])
    with pytest.raises(ClassifierError, match="'image' and 'label'"):
        evaluate(build_model("tiny-cnn", 1, 2), [{"img": phantom["val"][0]["image"], "label": 0}])
