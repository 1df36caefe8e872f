"""Test metrics of a classifier over the classes present in a split."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_auroc


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
