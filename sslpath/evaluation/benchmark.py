"""The robustness benchmark: a model's accuracy on a clean split and under each corruption × severity of a
`Suite` (sslpath.data.corruptions), on the same corrupted images for every model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sslpath.data.corruptions import Suite
from sslpath.results.metrics import classification_results
from sslpath.results.robustness import relative_drop
from sslpath.results.stats import Bootstrap, Interval, score_intervals


@dataclass
class Robustness:
    """Accuracy and AUC of one model on the clean split and under each corruption × severity."""

    clean: dict[str, Any]  # classification_results of the clean split
    results: dict[str, dict[int, dict[str, Any]]]  # corruption -> severity -> classification_results
    suite: Suite
    num_images: int
    intervals: dict[str, Interval] = field(default_factory=dict)  # accuracy_intervals' keys
    bootstrap: Bootstrap = field(default_factory=Bootstrap)

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
            "acc_ci": self._ci(f"{name}/{severity}"),
        }

    def _ci(self, key: str) -> list[float] | None:
        return list(self.intervals[key]) if key in self.intervals else None

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
            "clean_acc_ci": self._ci("clean/0"),
            "mean_corruption_acc_ci": self._ci("mean"),
            "corruption_acc_ci": {name: self._ci(f"corruption/{name}") for name in self.suite.names},
            "severity_acc_ci": [self._ci(f"severity/{s}") for s in self.suite.severities],
            "bootstrap": self.bootstrap.to_dict(),
        }


def accuracy_intervals(
    labels: np.ndarray, clean: np.ndarray, correct: dict[str, dict[int, np.ndarray]], bootstrap: Bootstrap
) -> dict[str, Interval]:
    """Stratified percentile-bootstrap intervals (sslpath.results.stats) of every accuracy the robustness
    tables show, from one set of resamples of the test tiles: `clean/0`, each `<corruption>/<severity>`,
    `mean` (mCA), `corruption/<name>` (mean over severities) and `severity/<s>` (mean over corruptions). A
    mean accuracy over conditions is the mean of each tile's correctness over them, so it is resampled by tile."""
    scores = {"clean/0": clean}
    scores |= {f"{name}/{s}": c for name, by in correct.items() for s, c in by.items()}
    scores |= {f"corruption/{name}": np.mean(list(by.values()), axis=0) for name, by in correct.items()}
    severities = sorted({s for by in correct.values() for s in by})
    scores |= {f"severity/{s}": np.mean([by[s] for by in correct.values()], axis=0) for s in severities}
    scores["mean"] = np.mean([c for by in correct.values() for c in by.values()], axis=0)
    return score_intervals(labels, scores, bootstrap)


def benchmark(
    suite: Suite,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    predict: Callable[[torch.Tensor], torch.Tensor],
    clean_logits: torch.Tensor,
    batch_size: int,
    device: torch.device,
    bootstrap: Bootstrap | None = None,
) -> Robustness:
    """Every corruption × severity of the uint8 split `images`, batch by batch on `device`.

    `predict` maps a uint8 batch to logits exactly as the clean evaluation did (severity 0 would give
    `clean_logits` bit for bit). Each batch's random draws are made once and shared by its severities.
    Every accuracy gets a percentile-bootstrap interval over the test tiles (`bootstrap`, default 1,000
    resamples at 95 %).
    """
    bootstrap = bootstrap or Bootstrap()
    y = labels.cpu().numpy()
    correct: dict[str, dict[int, np.ndarray]] = {}
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in suite.names:
        logits: dict[int, list[torch.Tensor]] = {s: [] for s in suite.severities}
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            draws = suite.draws(name, batch, start)
            for severity in suite.severities:
                logits[severity].append(predict(suite.apply(name, batch, severity, draws)))
        merged = {s: torch.cat(parts) for s, parts in logits.items()}
        results[name] = {s: classification_results(out, labels, class_names) for s, out in merged.items()}
        correct[name] = {s: _correct(out, y) for s, out in merged.items()}
    clean = classification_results(clean_logits, labels, class_names)
    intervals = accuracy_intervals(y, _correct(clean_logits, y), correct, bootstrap)
    return Robustness(clean=clean, results=results, suite=suite, num_images=len(images), intervals=intervals, bootstrap=bootstrap)


def _correct(logits: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    return (logits.float().argmax(dim=1).cpu().numpy() == labels).astype(float)
