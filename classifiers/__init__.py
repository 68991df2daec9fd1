"""classifiers: 3D classifiers, training and metrics (a stand-in for a user's own training loop).

    from classifiers import FitConfig, build_model, evaluate, fit

    model = build_model("efficientnet-b0", in_channels=1, num_classes=2, seed=0)
    result = fit(model, train_ds, val_ds, FitConfig(epochs=50, seed=0))
    print(evaluate(model, test_ds, threshold=result.threshold).metrics)

It never imports ``synthaug``.
"""

from classifiers.errors import ClassifierError
from classifiers.metrics import (
    METRIC_NAMES,
    BinaryMetrics,
    ConfidenceInterval,
    accuracy,
    auroc,
    average_precision,
    balanced_accuracy,
    binary_metric,
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    npv,
    ppv,
    sensitivity,
    specificity,
)
from classifiers.models import build_model, list_models, load_weights, register_model
from classifiers.train import EvalResult, FitConfig, FitResult, augmentation, evaluate, fit

__all__ = [
    "METRIC_NAMES", "BinaryMetrics", "ClassifierError", "ConfidenceInterval", "EvalResult", "FitConfig",
    "FitResult", "accuracy", "augmentation", "auroc", "average_precision", "balanced_accuracy", "binary_metric",
    "binary_metrics", "bootstrap_ci", "build_model", "choose_threshold", "evaluate", "fit", "list_models",
    "load_weights", "npv", "ppv", "register_model", "sensitivity", "specificity",
]
