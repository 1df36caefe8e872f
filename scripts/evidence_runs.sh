#!/usr/bin/env bash
# docs/evidence/ on a labelled npz (CPU-sized by default): a SimCLR pretraining, then the supervised baseline,
# a fine-tune and a linear probe from it over several seeds; the report's tables with intervals and paired
# comparisons (python -m sslpath.report); few-shot curves (python -m sslpath.evaluate protocol=fewshot) of
# the SimCLR, random-init and baseline features. One training at a time.
#
#   NPZ=../shared/data/pathmnist_sample.npz OUT=outputs/evidence SEEDS="0 1 2 3 4" EPOCHS=4 SSL_EPOCHS=10 \
#       BACKBONE=tiny bash scripts/evidence_runs.sh
#
# Settings (environment): NPZ (required), OUT (default outputs/evidence, must not exist), SEEDS, EPOCHS (each
# supervised run), SSL_EPOCHS, BACKBONE (tiny | resnet18), DOCS (where the tables are copied; default
# docs/evidence), PYTHON (default python), SSL_RUN (a finished model=simclr run dir to reuse instead of pretraining).
# Extra Hydra overrides for every training: TRAIN_ARGS.
set -euo pipefail

: "${NPZ:?set NPZ=path/to/labelled.npz}"
OUT=${OUT:-outputs/evidence}
SEEDS=${SEEDS:-0 1 2 3 4}
EPOCHS=${EPOCHS:-4}
SSL_EPOCHS=${SSL_EPOCHS:-10}
BACKBONE=${BACKBONE:-tiny}
DOCS=${DOCS:-docs/evidence}
PYTHON=${PYTHON:-python}
read -r -a EXTRA <<<"${TRAIN_ARGS:-}"

if [ -e "$OUT" ]; then
    echo "evidence_runs.sh: $OUT exists; pass a new OUT=" >&2
    exit 2
fi
COMMON=(data.path="$NPZ" model.backbone.name="$BACKBONE" model.backbone.stem=cifar "${EXTRA[@]}")

train() { # LOG_DIR ARGS…: one training; prints its run dir
    local log_dir=$1
    shift
    "$PYTHON" -m sslpath.train "${COMMON[@]}" paths.log_dir="$log_dir" "$@" >&2
    ls -td "$log_dir"/runs/*/ | head -1
}

ckpt_of() { # RUN_DIR: the checkpoint its metrics.json tested
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1] + "/metrics.json"))["ckpt_path"])' "$1"
}

start=$(date +%s)
if [ -n "${SSL_RUN:-}" ]; then # reuse a finished SimCLR run dir
    ssl_run=$SSL_RUN
else
    ssl_run=$(train "$OUT/ssl" model=simclr trainer.max_epochs="$SSL_EPOCHS" seed=0)
fi
ssl_ckpt=$(ckpt_of "$ssl_run")
for seed in $SEEDS; do
    train "$OUT/supervised" model=baseline trainer.max_epochs="$EPOCHS" seed="$seed" >/dev/null
    train "$OUT/supervised" model=finetune model.pretrained_ckpt="$ssl_ckpt" trainer.max_epochs="$EPOCHS" seed="$seed" >/dev/null
    train "$OUT/supervised" model=probe model.pretrained_ckpt="$ssl_ckpt" trainer.max_epochs="$EPOCHS" seed="$seed" >/dev/null
done
# Random-init features: one step at lr 1e-12 leaves the weights at their seeded initialisation (to 1e-11) and gives
# a checkpoint evaluate can read; BatchNorm's running statistics come from that one batch.
random_run=$(train "$OUT/random" model=baseline run_name=random-init optimizer.lr=1e-12 trainer.max_epochs=1 \
    ++trainer.limit_train_batches=1 seed=0)
baseline_run=$(ls -td "$OUT"/supervised/runs/*_baseline/ | tail -1) # the first seed's

"$PYTHON" -m sslpath.report "$OUT/supervised" --out "$OUT/report" --no-tensorboard
for pair in "simclr:$ssl_run" "random-init:$random_run" "baseline:$baseline_run"; do
    name=${pair%%:*}
    "$PYTHON" -m sslpath.evaluate ckpt="$(ckpt_of "${pair#*:}")" data.path="$NPZ" protocol=fewshot device=cpu \
        run_name="$name" out="$OUT/fewshot/$name"
done

rm -rf "$DOCS/report" "$DOCS/fewshot"
mkdir -p "$DOCS/fewshot"
cp -r "$OUT/report" "$DOCS/report"
for name in simclr random-init baseline; do
    for ext in md png json; do
        cp "$OUT/fewshot/$name/fewshot.$ext" "$DOCS/fewshot/$name.$ext"
    done
done
echo "evidence_runs.sh: done in $(($(date +%s) - start)) s -> $DOCS" >&2
