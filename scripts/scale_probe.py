"""A Lightning callback that records where a run's time and memory go, for scripts/scale_check.py.

Added to a training command as `+callbacks.probe._target_=scale_probe.ScaleProbe +callbacks.probe.out=FILE`
(with scripts/ on PYTHONPATH). Peak resident memory per phase comes from /proc/self/status VmHWM, reset
between phases by writing 5 to /proc/self/clear_refs (Linux); times are wall seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch


def peak_mib() -> float:
    """This process's peak resident memory since the last reset_peak() (or its start), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


def rss_mib() -> float:
    """This process's resident memory now, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class ScaleProbe(L.Callback):
    """Peak memory after the data load and in each phase; training, validation, kNN and test times
    (the test loop alone, and with the on_test_end hooks: TensorBoard's embedding projector); the kNN
    bank's size; the SSL projector head's output shape."""

    def __init__(self, out: str) -> None:
        self.out, self.record, self.start = Path(out), {}, {}

    def _begin(self, phase: str) -> None:
        self.record[f"{phase}_start_peak_mib"] = peak_mib()
        reset_peak()
        self.start[phase] = time.perf_counter()

    def _end(self, phase: str) -> None:
        self.record[f"{phase}_s"] = round(time.perf_counter() - self.start[phase], 2)
        self.record[f"{phase}_peak_mib"] = round(peak_mib())

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if "load_peak_mib" in self.record:  # trainer.test calls setup again: the load was measured at fit
            return
        splits = trainer.datamodule.splits
        self.record["data_mib"] = round(sum(s.images.nbytes + s.labels.nbytes for s in splits.values()) / 2**20, 1)
        self.record["split_counts"] = {name: len(s) for name, s in splits.items()}
        self.record["load_peak_mib"] = round(peak_mib())  # imports, model and data load, before training
        reset_peak()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        projector = getattr(pl_module, "projector", None)
        if projector is not None:
            projector.register_forward_hook(self._projector_output)
        knn = getattr(pl_module, "knn", None)
        if knn is not None:
            compute = knn.compute

            def timed() -> Any:  # the bank as compute sees it, then its cost
                bank = sum(t.numel() * t.element_size() for t in knn.train_feats)
                rows, width = sum(len(t) for t in knn.train_feats), knn.train_feats[0].shape[1]
                self.record["knn_bank"] = {"rows": rows, "width": width, "mib": round(bank / 2**20, 2)}
                self.record["knn_queries"] = sum(len(t) for t in knn.test_feats)
                self._begin("knn")
                value = compute()
                self._end("knn")
                return value

            knn.compute = timed

    def _projector_output(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.record["projector_output"] = {"shape": list(output.shape), "dtype": str(output.dtype)}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("train")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end("train")
            self.record["train_batches"] = trainer.num_training_batches
            self._begin("val")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._end("val")  # the kNN compute reset the peak inside validation: the phase's peak is the larger
            inner = [self.record.get(k, 0) for k in ("val_peak_mib", "knn_start_peak_mib", "knn_peak_mib")]
            self.record["val_peak_mib"] = round(max(inner))

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin("test")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["test_loop_s"] = round(time.perf_counter() - self.start["test"], 2)  # before the on_test_end hooks
        self.record["test_loop_peak_mib"] = round(peak_mib())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Runs after the other callbacks' on_test_end (it is added last): includes TensorBoard's embedding projector."""
        self._end("test")
        self.record["test_end_time"] = time.time()  # what follows (SSL runs' frozen-feature evaluation) is timed by the caller
        self.out.write_text(json.dumps(self.record, indent=1))
