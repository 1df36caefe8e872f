"""Test results over the classes present: an absent class is null and listed, never 0.0."""

import pytest
import torch

from sslpath.results.metrics import classification_results

NAMES = ["a", "b", "c"]


def test_absent_class_is_null_and_auc_averages_present_classes():
    labels = torch.tensor([0, 0, 1, 1])  # class "c" absent
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [3.0, 0, 0]])
    results = classification_results(logits, labels, NAMES)
    assert results["absent_classes"] == ["c"]
    assert results["per_class_acc"] == {"a": 0.5, "b": 0.5, "c": None}
    assert results["test_acc"] == pytest.approx(0.5)
    assert results["test_auc"] == pytest.approx(0.5)  # both present classes: one right, one wrong ranking


def test_one_present_class_has_no_auc():
    results = classification_results(torch.randn(3, 3), torch.tensor([1, 1, 1]), NAMES)
    assert results["test_auc"] is None and results["absent_classes"] == ["a", "c"]
