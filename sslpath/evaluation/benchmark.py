"""The robustness benchmark: a model's accuracy on a clean split and under each corruption × severity of a
`Suite` (sslpath.data.corruptions), on the same corrupted images for every model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sslpath.data.corruptions import Suite
from sslpath.results.metrics import classification_results
from sslpath.results.robustness import relative_drop


@dataclass
class Robustness:
    """Accuracy and AUC of one model on the clean split and under each corruption × severity."""

    clean: dict[str, Any]  # classification_results of the clean split
    results: dict[str, dict[int, dict[str, Any]]]  # corruption -> severity -> classification_results
    suite: Suite
    num_images: int

    @property
    def params(self) -> dict[str, list[Any]]:
        """Each corruption's parameter at severities 1..MAX_SEVERITY."""
        return {name: list(values) for name, values in self.suite.params.items()}

    def rows(self) -> list[dict[str, Any]]:
        """Long table: the clean split (severity 0), then each corruption × severity."""
        rows = [self._row("clean", 0, None, self.clean)]
        for name, by_severity in self.results.items():
            rows += [self._row(name, s, self.suite.param(name, s), r) for s, r in by_severity.items()]
        return rows

    def _row(self, name: str, severity: int, param: Any, result: dict[str, Any]) -> dict[str, Any]:
        acc = result["test_acc"]
        return {
            "corruption": name,
            "severity": severity,
            "param": param,
            "acc": acc,
            "auc": result["test_auc"],
            "loss": result["test_loss"],
            "relative_drop": relative_drop(self.clean["test_acc"], acc),
        }

    def summary(self) -> dict[str, Any]:
        """Mean corruption accuracy and AUC over every corruption and severity, and the drop from clean."""
        accs = [r["test_acc"] for by in self.results.values() for r in by.values()]
        aucs = [r["test_auc"] for by in self.results.values() for r in by.values() if r["test_auc"] is not None]
        mca = sum(accs) / len(accs)
        return {
            "clean_acc": self.clean["test_acc"],
            "clean_auc": self.clean["test_auc"],
            "mean_corruption_acc": mca,
            "mean_corruption_auc": sum(aucs) / len(aucs) if aucs else None,
            "relative_drop": relative_drop(self.clean["test_acc"], mca),
            "corruptions": self.suite.names,
            "severities": list(self.suite.severities),
            "seed": self.suite.seed,
            "num_images": self.num_images,
        }


def benchmark(
    suite: Suite,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    predict: Callable[[torch.Tensor], torch.Tensor],
    clean_logits: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> Robustness:
    """Every corruption × severity of the uint8 split `images`, batch by batch on `device`.

    `predict` maps a uint8 batch to logits exactly as the clean evaluation did (severity 0 would give
    `clean_logits` bit for bit). Each batch's random draws are made once and shared by its severities.
    """
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in suite.names:
        logits: dict[int, list[torch.Tensor]] = {s: [] for s in suite.severities}
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            draws = suite.draws(name, batch, start)
            for severity in suite.severities:
                logits[severity].append(predict(suite.apply(name, batch, severity, draws)))
        results[name] = {s: classification_results(torch.cat(parts), labels, class_names) for s, parts in logits.items()}
    clean = classification_results(clean_logits, labels, class_names)
    return Robustness(clean=clean, results=results, suite=suite, num_images=len(images))
