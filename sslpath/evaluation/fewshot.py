"""Heads fitted on cached frozen features with few labels: few-shot (k labelled tiles per class, nearest
centroid and logistic regression) and label fractions (the linear probe on a stratified share of the
training labels), each repeated over seeds, so every point of a labels curve has a spread.

Few-shot follows SimpleShot (Wang et al. 2019, "CL2N"): features are centred by the mean of the training
features (computed without their labels: the unlabelled pool a user has anyway) and L2-normalised; the
nearest-centroid head predicts the class whose support mean is most similar; the logistic head is
`features.fit_linear` on the support set with a fixed L2 strength (few-shot has no labelled validation set
to choose one on). The label-fraction probe is `features.fit_probe`: L2 chosen on the full validation split,
as the linear probe's protocol (and the usual linear-evaluation protocol) does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sslpath.data.splits import stratified_subset
from sslpath.evaluation.feature_cache import Features
from sslpath.evaluation.features import fit_linear, fit_probe, threads_for
from sslpath.results.stats import balanced_accuracy

Trial = dict[str, Any]  # one fit: head, x (shots or fraction), labels per class, seed, accuracies


def support_set(labels: torch.Tensor, shots: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of `shots` tiles of each class, drawn without replacement by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:shots]])
    return torch.cat(picked)


def cl2n(feats: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """SimpleShot's centring and L2 normalisation."""
    return F.normalize(feats - centre, dim=1)


def nearest_centroid(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cosine similarity of each query to each class's support mean (CL2N features in, scores out)."""
    centroids = torch.stack([support[labels == c].mean(0) for c in range(num_classes)])
    return query @ F.normalize(centroids, dim=1).T


def _scores(head: str, x: Any, per_class: float, seed: int, preds: torch.Tensor, labels: torch.Tensor) -> Trial:
    y, p = labels.numpy(), preds.numpy()
    acc, balanced = float((preds == labels).double().mean()), balanced_accuracy(y, p)
    return {"head": head, "x": x, "labels_per_class": per_class, "seed": seed, "acc": acc, "balanced_acc": balanced}


def fewshot(features: Features, num_classes: int, shots: Sequence[int], seeds: int, l2: float, max_iter: int) -> list[Trial]:
    """Test accuracies of both heads for every number of shots and seed (seeds 0 … seeds-1)."""
    train, labels = features["train"]
    centre = train.mean(0)
    test = cl2n(features["test"][0], centre)
    trials = []
    for k in shots:
        for seed in range(seeds):
            idx = support_set(labels, k, num_classes, seed)
            support, y = cl2n(train[idx], centre), labels[idx]
            scores = nearest_centroid(support, y, test, num_classes)
            trials.append(_scores("centroid", k, k, seed, scores.argmax(1), features["test"][1]))
            with threads_for(support):
                linear = fit_linear(support, y, num_classes, l2, max_iter)
            with torch.no_grad():
                preds = linear(test.double()).argmax(1)
            trials.append(_scores("logistic", k, k, seed, preds, features["test"][1]))
    return trials


def label_fractions(
    features: Features, num_classes: int, fractions: Sequence[float], seeds: int, l2_grid: Sequence[float], max_iter: int
) -> list[Trial]:
    """Test accuracies of the linear probe fitted on a stratified share of the training labels, per fraction
    and seed; all labels (fraction 1) are one subset, so it is fitted once."""
    feats, labels = features["train"]
    trials = []
    for fraction in fractions:
        for seed in range(1 if fraction == 1 else seeds):
            idx = stratified_subset(labels, fraction, num_classes, seed)
            probe = fit_probe((feats[idx], labels[idx]), features["val"], num_classes, l2_grid, max_iter)
            logits = probe.logits(features["test"][0])
            trial = _scores("linear", fraction, len(idx) / num_classes, seed, logits.argmax(1), features["test"][1])
            trial |= {"l2": probe.l2, "val_acc": probe.val_acc}
            if fraction == 1:  # a single fit: its test probabilities give a bootstrap interval over the tiles
                trial["probs"] = logits.softmax(1).numpy()
            trials.append(trial)
    return trials


def too_few(labels: torch.Tensor, num_classes: int, shots: Sequence[int] = (), fractions: Sequence[float] = ()) -> str | None:
    """Why the training labels cannot give these shots or fractions (a class with fewer tiles), or None."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    smallest = min(range(num_classes), key=lambda c: counts[c])
    if shots and max(shots) > counts[smallest]:
        return f"{max(shots)} shots per class, but class {smallest} has {counts[smallest]} labelled training tiles"
    for fraction in fractions:
        if round(fraction * counts[smallest]) == 0:
            return f"label fraction {fraction} keeps no tile of class {smallest} ({counts[smallest]} labelled training tiles)"
    return None
