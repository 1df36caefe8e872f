"""Frozen-feature protocols of `python -m sslpath.evaluate … protocol=knn|linear|fewshot` (docs/evaluation.md).

The encoder is an sslpath checkpoint's exported backbone (`ckpt=…`) or a public one (`encoder=timm/<name>`
with `encoder.weights=FILE.safetensors`, or timm's weights already in the local Hugging Face cache). Its
features of the clean train, val and test tiles (eval mode) are extracted once and cached
(sslpath.evaluation.feature_cache); the heads are fitted on them in seconds:

- knn: weighted kNN (sslpath.models.knn) for every k of `protocol.k`, with percentile-bootstrap intervals
  over the test tiles; the k chosen on validation is named.
- linear: the L-BFGS linear probe of sslpath.evaluation.features (L2 chosen on validation) on all training
  labels and on stratified label fractions × seeds.
- fewshot: k labelled tiles per class × seeds, nearest centroid and logistic (sslpath.evaluation.fewshot).

Points fitted once carry a bootstrap interval over the test tiles; points over seeds carry mean, std, n and a
Student-t interval (sslpath.results.stats). Written to `out`: <protocol>.json (records), <protocol>.md (table)
and, for linear and fewshot, <protocol>.png (test accuracy against labelled tiles per class, with intervals).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from sslpath.checks.validate import check_paths
from sslpath.core.devices import resolve_device
from sslpath.core.errors import UserError
from sslpath.core.files import atomic_write_json, atomic_write_text
from sslpath.data.corruptions import load_suite
from sslpath.evaluation.encoder_robustness import probe_robustness
from sslpath.evaluation.encoders import features_of, from_checkpoint, from_timm
from sslpath.evaluation.evaluate import check_evaluate_settings, check_finite, evaluate
from sslpath.evaluation.feature_cache import Features
from sslpath.evaluation.fewshot import fewshot, label_fractions, too_few
from sslpath.models.knn import weighted_votes
from sslpath.results.metrics import bootstrap_settings
from sslpath.results.stats import balanced_accuracy, bootstrap_intervals, macro_auc, seed_summary

log = logging.getLogger(__name__)

PROG = "sslpath.evaluate"
PROTOCOLS = ("knn", "linear", "fewshot")
REQUIRED = {
    "knn": ("k", "temperature"),
    "linear": ("l2", "max_iter", "label_fractions", "seeds"),
    "fewshot": ("shots", "seeds", "logistic_l2", "max_iter"),
}
SETTINGS = ("protocol.", "features.", "encoder.")  # schema rows (sslpath.checks.schema.PATHS) checked here
KNN_CHUNK = 1024  # test tiles per similarity block: 1024 × a 90,000-tile bank is 370 MB of float32


def run(cfg: DictConfig) -> dict[str, Any]:
    """What `python -m sslpath.evaluate` does: a frozen-feature protocol when one is asked for, else evaluate."""
    return run_protocol(cfg) if wanted(cfg) else evaluate(cfg)


def wanted(cfg: DictConfig) -> bool:
    """Whether this evaluate call runs a protocol (or names a public encoder, which needs one)."""
    return cfg.get("protocol") is not None or OmegaConf.select(cfg, "encoder.name") is not None


def check(cfg: DictConfig) -> None:
    """Every protocol, feature and encoder setting, and their relations to evaluate's own, before any work."""

    check_paths(cfg, SETTINGS)
    encoder, ckpt = cfg.encoder.name, cfg.get("ckpt") not in (None, "")
    if cfg.get("protocol") is None:
        raise UserError(
            f"encoder={encoder} is tested by a frozen-feature protocol (a public encoder has no classifier head): "
            "add protocol=knn, protocol=linear or protocol=fewshot."
        )
    name = cfg.protocol.get("name")
    missing = [k for k in REQUIRED.get(name, ()) if cfg.protocol.get(k) is None]
    if missing:
        raise UserError(
            f"protocol.name={name} lacks {', '.join('protocol.' + k for k in missing)}; choose the protocol with "
            f"protocol={name} (conf/protocol/{name}.yaml sets them) rather than by protocol.name."
        )
    if encoder is not None and ckpt:
        raise UserError(
            f"both ckpt={cfg.ckpt} and encoder={encoder} are set; a protocol tests one encoder per call. Leave out "
            "ckpt= to test the public encoder, or encoder= to test the checkpoint's backbone."
        )
    if encoder is None and not ckpt:
        raise UserError(
            f"protocol={name} needs an encoder: ckpt=PATH (an sslpath checkpoint) or encoder=timm/<name> "
            "[encoder.weights=FILE.safetensors]."
        )
    if encoder is None and cfg.encoder.weights is not None:
        raise UserError(f"encoder.weights={cfg.encoder.weights} needs encoder=timm/<name>, the architecture of those weights.")

    refusals = {
        "split": (cfg.split != "test", "fits on train, chooses on val and reports test"),
        "calibrate": (cfg.calibrate, "fits its own heads (calibration applies to a checkpoint's classifier)"),
        "corruptions": (
            name != "linear" and load_suite(cfg.get("corruptions")) is not None,
            "tests clean tiles only (protocol=linear tests its full-label probe under corruptions)",
        ),
        "data.label_fraction": (cfg.data.get("label_fraction", 1) != 1, "draws its own label subsets"),
    }
    for key, (refused, why) in refusals.items():
        if refused:
            value = "pathology" if key == "corruptions" else OmegaConf.select(cfg, key)
            raise UserError(
                f"{key}={value} cannot be combined with protocol={name}, which {why}. Leave "
                f"{key} at its default; label subsets are set by protocol.label_fractions and protocol.shots."
            )


# ------------------------------------------------------------------------------------------------
# The heads


def knn_trials(features: Features, num_classes: int, ks: Sequence[int], temperature: float) -> list[dict[str, Any]]:
    """Weighted kNN for every k: validation and test accuracy, and the test tiles' vote shares (for intervals)."""

    bank, bank_labels = F.normalize(features["train"][0], dim=1), features["train"][1]
    votes = {}
    for split in ("val", "test"):
        feats = F.normalize(features[split][0], dim=1)
        blocks = [weighted_votes(bank, bank_labels, part, tuple(ks), temperature, num_classes) for part in feats.split(KNN_CHUNK)]
        votes[split] = [torch.cat([block[i] for block in blocks]) for i in range(len(ks))]
    per_class = len(bank_labels) / num_classes
    trials = []
    for i, k in enumerate(ks):
        test, val = votes["test"][i], votes["val"][i]
        trial = {"head": "knn", "x": k, "labels_per_class": per_class, "seed": None}
        trial["val_acc"] = float((val.argmax(1) == features["val"][1]).double().mean())
        trials.append(trial | {"probs": (test / test.sum(1, keepdim=True)).double().numpy()})
    return trials


def summarise(trials: list[dict[str, Any]], test_labels: torch.Tensor, cfg: DictConfig) -> list[dict[str, Any]]:
    """One record per head and x: a fit's accuracies with bootstrap intervals over the test tiles, or over
    seeds the mean, std, n and Student-t interval."""

    y = test_labels.numpy()
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for trial in trials:
        groups.setdefault((trial["head"], trial["x"]), []).append(trial)
    records = []
    for (head, x), group in groups.items():
        record = {"head": head, "x": x, "labels_per_class": round(group[0]["labels_per_class"], 3), "n": len(group)}
        extra = {k: group[0][k] for k in ("val_acc", "l2") if k in group[0] and len(group) == 1}
        if len(group) == 1 and "probs" in group[0]:
            probs = group[0]["probs"]
            ci = bootstrap_intervals(y, probs, bootstrap_settings(cfg.eval))
            preds = probs.argmax(1)
            record |= {
                "acc": float((preds == y).mean()),
                "acc_ci": list(ci["acc"]),
                "balanced_acc": balanced_accuracy(y, preds),
                "balanced_acc_ci": list(ci["balanced_acc"]),
                "auc": macro_auc(y, probs),
                "auc_ci": None if ci["auc"] is None else list(ci["auc"]),
                "interval": "bootstrap over test tiles",
            }
        else:
            acc = seed_summary([t["acc"] for t in group], cfg.eval.ci_level)
            record |= {
                "acc": acc.mean,
                "acc_std": acc.std,
                "acc_ci": None if acc.ci is None else [max(acc.ci[0], 0.0), min(acc.ci[1], 1.0)],  # an accuracy's range
                "balanced_acc": seed_summary([t["balanced_acc"] for t in group], cfg.eval.ci_level).mean,
                "seeds": [t["seed"] for t in group],
                "per_seed_acc": [t["acc"] for t in group],
                "interval": "t over seeds" if acc.ci is not None else "none (one seed)",
            }
        records.append(record | extra)
    return records


def run_heads(cfg: DictConfig, features: Features, num_classes: int) -> list[dict[str, Any]]:

    p = cfg.protocol
    if p.name == "knn":
        trials = knn_trials(features, num_classes, list(p.k), float(p.temperature))
    elif p.name == "linear":
        trials = label_fractions(features, num_classes, list(p.label_fractions), p.seeds, list(p.l2), p.max_iter)
    else:
        trials = fewshot(features, num_classes, list(p.shots), p.seeds, float(p.logistic_l2), p.max_iter)
    return summarise(trials, features["test"][1], cfg)


def check_labels(cfg: DictConfig, features_labels: torch.Tensor, num_classes: int) -> None:
    """Enough labelled training tiles per class for every shot count, fraction and k, before any extraction."""

    p = cfg.protocol
    problem = too_few(
        features_labels, num_classes, shots=list(p.get("shots") or ()), fractions=list(p.get("label_fractions") or ())
    )
    if p.name == "knn" and max(p.k) > len(features_labels):
        problem = f"k={max(p.k)} neighbours, but the training split has {len(features_labels)} labelled tiles"
    if problem:
        raise UserError(f"protocol={p.name} asks for {problem}. Lower it (conf/protocol/{p.name}.yaml) or use more data.")


# ------------------------------------------------------------------------------------------------
# Outputs


def labels_figure(curves: dict[str, list[dict[str, Any]]], title: str) -> Figure:
    """Test accuracy against labelled tiles per class (log axis), one line per model and head, with each
    point's interval as a band. Matplotlib's object API (Agg): no global pyplot state."""

    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for label, records in curves.items():
        for head in dict.fromkeys(r["head"] for r in records):
            points = sorted((r for r in records if r["head"] == head), key=lambda r: r["labels_per_class"])
            x = [r["labels_per_class"] for r in points]
            line = ax.plot(x, [r["acc"] for r in points], marker="o", label=f"{label}: {head}")[0]
            shown = [(r["labels_per_class"], *r["acc_ci"]) for r in points if r.get("acc_ci")]
            if shown:
                xs, lo, hi = zip(*shown)
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(xscale="log", xlabel="labelled training tiles per class", ylabel="test accuracy", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def table(records: list[dict[str, Any]], name: str) -> str:
    """The records as a markdown table."""
    x = {"knn": "k", "linear": "label fraction", "fewshot": "shots per class"}[name]
    lines = [
        f"| head | {x} | labels per class | test acc | interval | n | balanced acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ci = "–" if r.get("acc_ci") is None else f"[{r['acc_ci'][0]:.4f}, {r['acc_ci'][1]:.4f}] ({r['interval']})"
        std = f" ± {r['acc_std']:.4f}" if r.get("acc_std") is not None else ""
        lines.append(
            f"| {r['head']} | {r['x']} | {r['labels_per_class']:g} | {r['acc']:.4f}{std} | {ci} | {r['n']} | "
            f"{r['balanced_acc']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def run_protocol(cfg: DictConfig) -> dict[str, Any]:
    """Check, load the encoder and data, get the features (cache or extraction), fit the heads, write the
    results; returns the results file's content."""

    start = time.perf_counter()
    check(cfg)
    name = cfg.protocol.name
    label = cfg.ckpt if cfg.encoder.name is None else (cfg.encoder.weights or cfg.encoder.name.replace("/", "-"))
    ckpt, out = check_evaluate_settings(OmegaConf.merge(cfg, {"ckpt": str(label)}))  # evaluate's own checks of out and the rest
    device = resolve_device(str(cfg.device))
    encoder = from_checkpoint(cfg, ckpt) if cfg.encoder.name is None else from_timm(cfg)
    num_classes = encoder.datamodule.num_classes
    train = encoder.datamodule.splits["train"].labels
    check_labels(cfg, train[train >= 0].cpu(), num_classes)
    loaded = time.perf_counter()
    features, hit = features_of(cfg, encoder, device)
    extracted = time.perf_counter()
    records = run_heads(cfg, features, num_classes)
    run_name = str(cfg.run_name or encoder.kind)
    suite = load_suite(cfg.get("corruptions"))
    robustness = None if suite is None else probe_robustness(cfg, encoder, features, suite, device, out, run_name)
    done = time.perf_counter()
    results = {
        "protocol": name,
        "run_name": run_name,
        "model": encoder.kind,
        "encoder": encoder.key.source,
        "data": encoder.key.data | {"settings": OmegaConf.to_container(cfg.data, resolve=True)},
        "preprocessing": encoder.key.preprocessing,
        "class_names": list(encoder.datamodule.class_names),
        "images": {s: len(features[s][1]) for s in features},
        "settings": OmegaConf.to_container(cfg.protocol, resolve=True),
        "bootstrap": bootstrap_settings(cfg.eval).to_dict(),
        "feature_cache": None
        if cfg.features.cache_dir is None
        else {"file": str(encoder.key.file(Path(str(cfg.features.cache_dir)).expanduser())), "hit": hit},
        "records": records,
        "robustness": None if robustness is None else robustness["summary"],
        "seconds": {
            "load": round(loaded - start, 2),
            "features": round(extracted - loaded, 2),
            "heads": round(done - extracted, 2),
            "total": round(done - start, 2),
        },
    }

    check_finite(results, ckpt)
    written = [atomic_write_text(out / f"{name}.md", f"# {run_name}: protocol={name}\n\n" + table(records, name))]
    if name != "knn":
        fig = labels_figure({run_name: records}, f"{run_name}: frozen features, protocol={name}")
        fig.savefig(out / f"{name}.png", dpi=120)
        written.append(out / f"{name}.png")
    if robustness is not None:
        written += [out / f"robustness.{ext}" for ext in ("json", "md", "csv", "png")]
    written.insert(0, atomic_write_json(out / f"{name}.json", results))
    announce(results, written, device)
    return results


def announce(results: dict[str, Any], written: list[Path], device: torch.device) -> None:
    """One line per head (its best point and its fewest-labels point), then the files and the seconds."""
    records, name = results["records"], results["protocol"]
    for head in dict.fromkeys(r["head"] for r in records):
        rows = [r for r in records if r["head"] == head]
        if name == "knn":
            val_best = max(rows, key=lambda r: r["val_acc"])  # ties: the smallest k
            shown = f"best k on val = {val_best['x']}: test acc {val_best['acc']:.4f} {_ci(val_best)}"
        else:
            parts = [f"{r['labels_per_class']:g}/class {r['acc']:.4f} {_ci(r)}" for r in rows]
            shown = "; ".join(parts)
        print(f"{PROG}: protocol={name} {results['run_name']} {head}: {shown}", flush=True)
    cache = results["feature_cache"]
    where = "no cache" if cache is None else ("read from cache" if cache["hit"] else "extracted and cached")
    s = results["seconds"]
    print(
        f"{PROG}: features {where} ({s['features']:.1f} s, {device}); heads {s['heads']:.1f} s; total {s['total']:.1f} s "
        f"-> {', '.join(str(p) for p in written)}",
        flush=True,
    )


def _ci(record: dict[str, Any]) -> str:
    ci = record.get("acc_ci")
    return "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
