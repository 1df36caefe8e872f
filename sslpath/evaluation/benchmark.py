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
from sslpath.results.stats import Bootstrap, Interval, percentile_interval, resampled_metrics


@dataclass
class Robustness:
    """Accuracy and AUC of one model on the clean split and under each corruption × severity."""

    clean: dict[str, Any]  # classification_results of the clean split
    results: dict[str, dict[int, dict[str, Any]]]  # corruption -> severity -> classification_results
    suite: Suite
    num_images: int
    intervals: dict[str, Interval | None] = field(default_factory=dict)  # robustness_intervals' keys
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
            "acc_ci": self._ci(f"acc:{name}/{severity}"),
            "auc_ci": self._ci(f"auc:{name}/{severity}"),
            "relative_drop_ci": self._ci(f"drop:{name}/{severity}"),
        }

    def _ci(self, key: str) -> list[float] | None:
        interval = self.intervals.get(key)
        return None if interval is None else list(interval)

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
            **{f"clean_{m}_ci": self._ci(f"{m}:clean/0") for m in ("acc", "auc")},
            **{f"mean_corruption_{m}_ci": self._ci(f"{m}:mean") for m in ("acc", "auc")},
            **{f"corruption_{m}_ci": {n: self._ci(f"{m}:corruption/{n}") for n in self.suite.names} for m in ("acc", "auc")},
            **{f"severity_{m}_ci": [self._ci(f"{m}:severity/{s}") for s in self.suite.severities] for m in ("acc", "auc")},
            "relative_drop_ci": self._ci("drop:mean"),
            "bootstrap": self.bootstrap.to_dict(),
        }


def condition_means(by_cell: dict[str, dict[int, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays per corruption × severity under the keys the robustness tables use: each `<corruption>/<severity>`,
    `corruption/<name>` (mean over severities), `severity/<s>` (mean over corruptions) and `mean` (over all)."""
    out = {f"{name}/{s}": values for name, by in by_cell.items() for s, values in by.items()}
    out |= {f"corruption/{name}": np.mean(list(by.values()), axis=0) for name, by in by_cell.items()}
    severities = sorted({s for by in by_cell.values() for s in by})
    out |= {f"severity/{s}": np.mean([by[s] for by in by_cell.values()], axis=0) for s in severities}
    out["mean"] = np.mean([values for by in by_cell.values() for values in by.values()], axis=0)
    return out


def robustness_intervals(
    labels: np.ndarray,
    clean: np.ndarray,
    correct: dict[str, dict[int, np.ndarray]],
    clean_probs: np.ndarray,
    probs: dict[str, dict[int, np.ndarray]],
    bootstrap: Bootstrap,
) -> dict[str, Interval | None]:
    """Stratified percentile-bootstrap intervals (sslpath.results.stats) of every estimate the robustness tables
    show, all from one set of resamples of the test tiles. `acc:<key>`: accuracy of the clean split (`clean/0`)
    and of condition_means' keys, a mean accuracy being the mean of each tile's correctness over its conditions;
    `auc:<key>`: macro AUC of each, a mean AUC being the mean of the conditions' AUCs on the same resample;
    `drop:<key>`: relative drop 1 − acc/clean acc, each resample's ratio of the two accuracies on the same
    resampled tiles (paired), None where a resample's clean accuracy is 0."""
    scores = {f"acc:{k}": v for k, v in {"clean/0": clean, **condition_means(correct)}.items()}
    cells = {f"auc:{name}/{s}": p for name, by in probs.items() for s, p in by.items()}
    draws = resampled_metrics(labels, bootstrap, scores=scores, probs={"auc:clean/0": clean_probs, **cells})
    if set(cells) <= set(draws):  # every condition has an AUC: their means do
        aucs = {name: {s: draws[f"auc:{name}/{s}"] for s in by} for name, by in probs.items()}
        draws |= {f"auc:{k}": v for k, v in condition_means(aucs).items()}
    intervals = {key: percentile_interval(values, bootstrap.level) for key, values in draws.items()}
    base = draws["acc:clean/0"]
    for key in ("clean/0", *(f"{name}/{s}" for name, by in correct.items() for s in by), "mean"):
        ratio = 1 - draws[f"acc:{key}"] / np.where(base > 0, base, np.nan)
        intervals[f"drop:{key}"] = percentile_interval(ratio, bootstrap.level) if np.all(base > 0) else None
    return intervals


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
    Every accuracy, AUC and relative drop gets a percentile-bootstrap interval over the test tiles
    (`bootstrap`, default 1,000 resamples at 95 %; robustness_intervals).
    """
    bootstrap = bootstrap or Bootstrap()
    y = labels.cpu().numpy()
    correct: dict[str, dict[int, np.ndarray]] = {}
    probs: dict[str, dict[int, np.ndarray]] = {}
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
        probs[name] = {s: _probs(out) for s, out in merged.items()}
    clean = classification_results(clean_logits, labels, class_names)
    intervals = robustness_intervals(y, _correct(clean_logits, y), correct, _probs(clean_logits), probs, bootstrap)
    return Robustness(clean=clean, results=results, suite=suite, num_images=len(images), intervals=intervals, bootstrap=bootstrap)


def _correct(logits: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    return (logits.float().argmax(dim=1).cpu().numpy() == labels).astype(float)


def _probs(logits: torch.Tensor) -> np.ndarray:
    """Class probabilities as the run's own AUC interval takes them (sslpath.results.metrics.evidence_results)."""
    return logits.float().softmax(dim=1).double().cpu().numpy()
