"""Test metrics of a classifier over the classes present in a split."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_auroc

from sslpath.results.calibration import expected_calibration_error
from sslpath.results.stats import Bootstrap, balanced_accuracy, bootstrap_intervals


def classification_results(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Loss, accuracy, macro AUC and per-class accuracy of one split.

    A class absent from the split has no accuracy and no AUC: it is reported as null and listed in
    `absent_classes`, and the macro AUC averages the present classes only (never a silent 0.0).
    """
    num_classes = len(class_names)
    probs = logits.float().softmax(dim=1)
    preds = probs.argmax(dim=1)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    per_class: dict[str, float | None] = {}
    for c, name in enumerate(class_names):
        per_class[name] = float((preds[labels == c] == c).float().mean()) if present[c] else None
    auc: float | None = None
    if int(present.sum()) > 1:
        per_class_auc = multiclass_auroc(probs, labels, num_classes, average=None)
        auc = float(per_class_auc[present].mean())
    return {
        "test_loss": float(F.cross_entropy(logits.float(), labels)),
        "test_acc": float((preds == labels).float().mean()),
        "test_auc": auc,
        "per_class_acc": per_class,
        "absent_classes": [name for c, name in enumerate(class_names) if not present[c]],
    }


def bootstrap_settings(node: Mapping[str, Any]) -> Bootstrap:
    """The bootstrap of a config's `eval` node (conf/eval/default.yaml), checked by sslpath.checks.validate."""
    return Bootstrap(resamples=int(node["bootstrap_resamples"]), seed=int(node["bootstrap_seed"]), level=float(node["ci_level"]))


def evidence_results(logits: torch.Tensor, labels: torch.Tensor, bootstrap: Bootstrap, ece_bins: int) -> dict[str, Any]:
    """What a reviewer asks of one run's test numbers (docs/evidence.md): percentile-bootstrap intervals of
    accuracy, balanced accuracy and macro AUC (stratified by class), the balanced accuracy itself, the
    expected calibration error, and the settings that made them. Intervals are [lo, hi]; the AUC's is null
    where the AUC is (fewer than two classes present)."""
    probs = logits.float().softmax(dim=1).double().numpy()
    y = labels.numpy()
    ci = bootstrap_intervals(y, probs, bootstrap)
    return {
        "test_acc_ci": list(ci["acc"]),
        "test_balanced_acc": balanced_accuracy(y, probs.argmax(axis=1)),
        "test_balanced_acc_ci": list(ci["balanced_acc"]),
        "test_auc_ci": None if ci["auc"] is None else list(ci["auc"]),
        "test_ece": expected_calibration_error(y, probs, ece_bins),
        "ece_bins": ece_bins,
        "bootstrap": bootstrap.to_dict(),
    }
