"""Full-shape check: PathMNIST's split sizes (89,996 / 10,004 / 7,180) through the real training command.

    python scripts/scale_check.py                                   # 28 px, baseline and SimCLR, 20 training batches
    python scripts/scale_check.py --size 224 --counts 2000,500,500  # the 224-px shape at reduced counts
    python scripts/scale_check.py --counts 720,100,100 --train-batches 2 --no-docs   # the slow test's form

Each model runs `python -m sslpath.train` (tiny backbone, data=synthetic at the given shape, one epoch
of --train-batches training batches, then the full validation and test splits) as its own process; the
callback in scripts/scale_probe.py records peak resident memory after the data load and per phase,
training/validation/test times, the kNN monitor's bank and compute time and the projector's output,
and os.wait4 gives the process's peak RSS. The kNN monitor is then timed alone on a bank of the
full training count (random unit features of the tiny backbone's and ResNet-18's widths), since
--train-batches fills only part of it. Prints a markdown section; appends it to --docs unless --no-docs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from sslpath.models.knn import WeightedKNN

sys.path.insert(0, str(Path(__file__).parent))
from scale_probe import peak_mib, reset_peak, rss_mib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PATHMNIST = (89996, 10004, 7180)


def run_model(model: str, args: argparse.Namespace, work: Path) -> dict:
    """One training command as its own process: the probe's record, the process's peak RSS, the outputs' sizes."""
    train, val, test = args.counts
    run_dir, probe = work / f"run_{model}", work / f"probe_{model}.json"
    command = [
        sys.executable, "-m", "sslpath.train", f"model={model}", "model.backbone.name=tiny", "trainer=cpu",
        "trainer.max_epochs=1", f"+trainer.limit_train_batches={args.train_batches}", "+trainer.enable_model_summary=false",
        "callbacks.progress_bar.refresh_rate=0", "data=synthetic", f"data.size={args.size}", f"data.train_count={train}",
        f"data.val_count={val}", f"data.test_count={test}", f"data.batch_size={args.batch_size}",
        f"data.eval_batch_size={args.eval_batch_size}", "+callbacks.probe._target_=scale_probe.ScaleProbe",
        f"+callbacks.probe.out={probe}", f"hydra.run.dir={run_dir}", f"paths.log_dir={work}/logs",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"scale_check: {model} failed:\n{output[-4000:]}")
    record = json.loads(probe.read_text())
    after_test = time.time() - record.pop("test_end_time")  # SSL runs' frozen-feature evaluation, writing outputs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    predictions = run_dir / "test_predictions.csv"
    with predictions.open() as f:
        rows = sum(1 for _ in csv.DictReader(f))
    embedding = [p for p in run_dir.rglob("*") if p.name in ("tensors.tsv", "metadata.tsv", "sprite.png")]
    checkpoints = {p.name: round(p.stat().st_size / 2**20, 2) for p in sorted(run_dir.rglob("*.ckpt"))}
    return {
        "model": model,
        "wall_s": round(time.perf_counter() - start, 1),
        "after_test_s": round(after_test, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # kB on Linux
        **record,
        "predictions": {"rows": rows, "mib": round(predictions.stat().st_size / 2**20, 2)},
        "checkpoint_mib": checkpoints,
        "embedding_projector_mib": round(sum(p.stat().st_size for p in embedding) / 2**20, 2),
        "test_acc": metrics.get("test_acc"),
    }


def knn_alone(rows: int, queries: int, width: int, num_classes: int = 9) -> dict:
    """The kNN monitor's compute on a full bank of unit features: time, peak memory above the bank, bank size."""
    gen = torch.Generator().manual_seed(0)
    knn = WeightedKNN(num_classes=num_classes)
    knn.update(train_feats=torch.randn(rows, width, generator=gen), train_labels=torch.randint(0, num_classes, (rows,)))
    knn.update(test_feats=torch.randn(queries, width, generator=gen), test_labels=torch.randint(0, num_classes, (queries,)))
    before = rss_mib()
    reset_peak()
    start = time.perf_counter()
    knn.compute()
    took = time.perf_counter() - start
    return {
        "rows": rows,
        "queries": queries,
        "width": width,
        "bank_mib": round(rows * width * 4 / 2**20, 1),
        "compute_s": round(took, 2),
        "compute_peak_above_mib": round(peak_mib() - before),
        "similarity_chunk_mib": round(knn.chunk * rows * 4 / 2**20, 1),
    }


def arithmetic(size: int) -> str:
    """uint8 bytes of PathMNIST's full counts at this size: per split, per process, and for 8 processes."""
    per_tile = 3 * size * size
    sizes = [n * per_tile / 1e9 for n in PATHMNIST]
    total = sum(sizes)
    return (
        f"At {size} px a tile is {per_tile:,} bytes of uint8: PathMNIST's full splits are "
        f"{sizes[0]:.2f} / {sizes[1]:.2f} / {sizes[2]:.2f} GB (train/val/test), {total:.2f} GB in all per copy; "
        f"one copy per process on an 8-GPU node is {8 * total:.1f} GB, one per node (data.node_cache) {total:.2f} GB."
    )


def table(results: list[dict], knn: list[dict], args: argparse.Namespace) -> str:
    counts = "/".join(str(c) for c in args.counts)
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU"
    lines = [
        f"### Scale check {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} · {args.size} px · {counts} tiles",
        "",
        f"`python scripts/scale_check.py {' '.join(sys.argv[1:])}` on this {cpu}; torch {torch.__version__}. "
        f"Tiny backbone, data=synthetic, one epoch of {args.train_batches} training batches of {args.batch_size}, then the "
        f"full validation and test splits (eval batches of {args.eval_batch_size}). Memory is resident memory (MiB); "
        "*test loop*: the test batches; *test*: with the on_test_end hooks (TensorBoard's embedding projector of up to "
        "2000 test tiles); *after test*: what runs after testing (SSL runs: the frozen-feature evaluation on every training "
        "image).",
        "",
        "| model | data MiB | peak RSS | after load | train peak | val peak | test loop peak | test peak | train s | val s | "
        "test loop s | test s | kNN bank (rows×width, MiB) | kNN s | SSL projector head output | predictions (rows, MiB) | "
        "embedding projector MiB | after test s | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|---:|---:|---:|",
    ]
    if not results:  # --models '': the kNN timing alone
        lines = lines[:4]
    for r in results:
        bank, proj = r.get("knn_bank"), r.get("projector_output")
        bank_text = f"{bank['rows']}×{bank['width']}, {bank['mib']}" if bank else "—"
        proj_text = f"{proj['shape']} {proj['dtype']}" if proj else "—"
        lines.append(
            f"| {r['model']} | {r['data_mib']} | {r['peak_rss_mib']} | {r['load_peak_mib']} | {r['train_peak_mib']} | "
            f"{r['val_peak_mib']} | {r['test_loop_peak_mib']} | {r['test_peak_mib']} | {r['train_s']} | {r['val_s']} | "
            f"{r['test_loop_s']} | {r['test_s']} | "
            f"{bank_text} | {r.get('knn_s', '—')} | {proj_text} | {r['predictions']['rows']}, {r['predictions']['mib']} | "
            f"{r['embedding_projector_mib']} | {r['after_test_s']} | {r['wall_s']} |"
        )
    lines += (
        []
        if not knn
        else [
            "",
            "kNN monitor alone on a full bank (random unit features; the validation split as queries):",
            "",
            "| bank rows | width | bank MiB | queries | compute s | peak above bank MiB | similarity chunk MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
    )
    lines += [
        f"| {k['rows']} | {k['width']} | {k['bank_mib']} | {k['queries']} | {k['compute_s']} | "
        f"{k['compute_peak_above_mib']} | {k['similarity_chunk_mib']} |"
        for k in knn
    ]
    return "\n".join([*lines, "", arithmetic(args.size), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--counts", default=",".join(map(str, PATHMNIST)), help="train,val,test tiles")
    parser.add_argument("--models", default="baseline,simclr", help="'' times the kNN monitor alone")
    parser.add_argument("--train-batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--eval-batch-size", type=int, default=1024)
    parser.add_argument("--knn-rows", type=int, default=PATHMNIST[0], help="bank rows of the kNN timing (0: skip it)")
    parser.add_argument("--knn-widths", default="tiny,512", help="feature widths of the kNN timing; tiny: the run's")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    args.counts = [int(c) for c in args.counts.split(",")]
    if len(args.counts) != 3 or min(args.counts) < 1:
        parser.error("--counts takes three positive counts: train,val,test")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = [run_model(m, args, work) for m in filter(None, args.models.split(","))]
    tiny = next((r["knn_bank"]["width"] for r in results if "knn_bank" in r), 0)  # the backbone's feature width
    widths = [tiny if w == "tiny" else int(w) for w in args.knn_widths.split(",")]
    knn = [knn_alone(args.knn_rows, args.counts[1], w) for w in widths if w and args.knn_rows]
    text = table(results, knn, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "knn": knn}, indent=1))
    if not args.no_docs:
        with args.docs.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
