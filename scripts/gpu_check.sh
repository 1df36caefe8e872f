#!/usr/bin/env bash
# The GPU check: one prepared script for one CUDA device, inside a 10-minute device lease.
#
#   scripts/gpu_check.sh                  # runs from the repo root wherever it is called from
#   OUT=DIR scripts/gpu_check.sh          # also writes the log and the new docs sections into DIR
#
# Steps, most important first; each runs under `timeout`, and a step is cut short or skipped once
# the whole budget (GPU_CHECK_BUDGET_S, default 540 s) is spent, so one hang cannot eat the lease:
#   1. card      nvidia-smi, torch.cuda.get_device_name, torch/CUDA versions          (~5 s)
#   2. tests     python -m pytest -m gpu -n 0 tests/test_gpu.py                        (~60-90 s)
#   3. bf16      benchmark: resnet18 stems cifar,reference, baseline+simclr, modes a,b,c, bf16-mixed (~70-100 s)
#   4. epoch     one epoch of experiment=reference (model=baseline; GPU_CHECK_EXPERIMENT_MODELS=baseline,finetune
#                adds the SimCLR -> fine-tune chain, ~2 min more) on synthetic data of PathMNIST's full shape (~50-70 s)
#   5. fp32      benchmark as 3 at 32-true                                            (~70-100 s)
#   6. compile   benchmark with model.compile=true: bf16-mixed, stem cifar, mode (b) only, since every
#                compiled model pays a ResNet-18 compile in its warm-up                (~90-150 s)
#   7. summary   every step's status and wall time, with the card's name and the date, appended to
#                docs/benchmarks.md (the benchmarks append their own tables there as they finish)
#
# Installs nothing from the network. It uses $PYTHON, else .venv/bin/python, else python3. If that
# Python lacks sslpath's dependencies, carry wheels in .whl/ (see the device notes): they are
# installed offline (--no-index) into a temporary folder, and sslpath itself, if not importable,
# is installed from this checkout (--no-index --no-deps -e .).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
BUDGET=${GPU_CHECK_BUDGET_S:-540}
EXPERIMENT_MODELS=${GPU_CHECK_EXPERIMENT_MODELS:-baseline}
DOCS=${GPU_CHECK_DOCS:-$REPO/docs/benchmarks.md}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sslpath-gpu-check.XXXXXX")
if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT"; LOG=$OUT/gpu_check.log; else LOG=$WORK/gpu_check.log; fi
export PYTHONUNBUFFERED=1

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3)
fi

SUMMARY=()
FAILED=0

# step NAME LIMIT_S COMMAND...: run COMMAND under timeout (capped by what is left of the budget),
# its output into the log and $WORK/NAME.out; record status and wall time.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - SECONDS))
    if ((left < 30)); then
        echo "=== [$name] skipped: ${left}s of the ${BUDGET}s budget left"
        SUMMARY+=("| $name | skipped (budget spent) | 0 |")
        FAILED=1
        return 0
    fi
    ((limit > left)) && limit=$left
    echo
    echo "=== [$name] $(date -u +%H:%M:%S) limit ${limit}s: $*"
    local start=$SECONDS rc
    set +e
    # functions below are exported, so a fresh bash runs them under timeout like any command
    timeout --kill-after=15 "$limit" bash -euo pipefail -c '"$@"' "$name" "$@" 2>&1 | tee "$WORK/$name.out"
    rc=${PIPESTATUS[0]}
    set -e
    local took=$((SECONDS - start)) status
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMED OUT after ${limit}s"; FAILED=1 ;;
        *) status="FAILED (exit $rc)"; FAILED=1 ;;
    esac
    echo "=== [$name] $status in ${took}s"
    SUMMARY+=("| $name | $status$(step_note "$name") | $took |")
}

# A figure from a step's output for the summary table.
step_note() {
    local out=$WORK/$1.out
    [[ -f $out ]] || return 0
    case $1 in
        tests) grep -E '[0-9]+ (passed|failed|skipped|error)' "$out" | tail -1 | sed 's/^=* */: /; s/ *=*$//' ;;
        epoch) grep '^EPOCH ' "$out" | tail -1 | sed 's/^EPOCH /: /' ;;
        bf16 | fp32 | compile) grep -q '^### Benchmark run' "$out" && echo ": table appended above" ;;
    esac
    return 0
}

prepare_python() {
    echo "python: $PY"
    if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
        echo "installing the carried wheels in .whl/ offline into $WORK/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl
        export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    if ! "$PY" -c "import sslpath.conf" 2>/dev/null && "$PY" -c "import setuptools, hydra, kornia" 2>/dev/null; then
        echo "sslpath is not installed in this Python: installing this checkout offline (--no-index --no-deps -e .)"
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
    fi
    "$PY" - <<'EOF'
import importlib.util, sys
need = ["torch", "torchvision", "lightning", "hydra", "omegaconf", "kornia", "torchmetrics", "tensorboard", "PIL",
        "filelock", "pytest", "sslpath.conf"]
missing = [name for name in need if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"gpu_check: this Python lacks {', '.join(missing)}. Nothing is downloaded here: use a venv that has "
             "them (PYTHON=...), or carry their wheels in .whl/ (hydra-core, omegaconf, antlr4-python3-runtime, "
             "kornia, kornia_rs) and run again.")
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no CUDA device; "
             "this check needs one GPU. Nothing was run.")
EOF
}

card() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "(no nvidia-smi on PATH)"; fi
    "$PY" - <<'EOF'
import platform, torch
p = torch.cuda.get_device_properties(0)
print(f"GPU: {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
      f"capability {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"Python {platform.python_version()}")
EOF
}

epoch() {
    local models=$EXPERIMENT_MODELS
    "$PY" -m sslpath.train experiment=reference "model=$models" trainer=gpu trainer.max_epochs=1 \
        data=synthetic data.train_count=89996 data.val_count=10004 data.test_count=7180 \
        callbacks.progress_bar.refresh_rate=0 "paths.log_dir=$WORK/runs"
    "$PY" - "$WORK/runs" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).rglob("metrics.json")):
    m = json.loads(path.read_text())
    print(f"EPOCH {m['run_name']}: fit+test {m['wall_seconds']:.1f} s for {m['epochs']} epoch(s) of 89996 images, "
          f"test_acc {m['test_acc']:.3f}")
EOF
}

bench() {
    "$PY" scripts/benchmark.py --device cuda --backbones resnet18 --docs "$DOCS" "$@"
}

export -f card epoch bench
export PY WORK DOCS EXPERIMENT_MODELS

main() {
    echo "gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') in $REPO, budget ${BUDGET}s, work dir $WORK"
    prepare_python
    local docs_lines
    docs_lines=$(wc -l <"$DOCS")

    step card 60 card
    step tests 200 "$PY" -m pytest -m gpu -n 0 tests/test_gpu.py -q -p no:cacheprovider
    step bf16 150 bench --precision bf16-mixed --stems cifar,reference
    step epoch 180 epoch
    step fp32 150 bench --precision 32-true --stems cifar,reference
    step compile 170 bench --precision bf16-mixed --compile --stems cifar --modes b

    local gpu torch_version
    gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
    torch_version=$("$PY" -c 'import torch; print(torch.__version__)')
    {
        echo
        echo "### GPU check $(date -u '+%Y-%m-%d %H:%M UTC') · $gpu · torch $torch_version"
        echo
        echo "\`scripts/gpu_check.sh\`, budget ${BUDGET}s, epoch models: $EXPERIMENT_MODELS. Wall times include start-up."
        echo
        echo "| step | result | wall s |"
        echo "|---|---|---:|"
        printf '%s\n' "${SUMMARY[@]}"
    } >>"$DOCS"
    echo
    echo "=== summary (appended to $DOCS)"
    printf '%s\n' "${SUMMARY[@]}"
    if [[ -n "${OUT:-}" ]]; then
        tail -n "+$((docs_lines + 1))" "$DOCS" >"$OUT/benchmarks_appended.md"
        cp "$DOCS" "$OUT/benchmarks.md"
        echo "log and docs copied to $OUT"
    fi
    echo "total ${SECONDS}s; log: $LOG"
    return "$FAILED"
}

main 2>&1 | tee "$LOG"
