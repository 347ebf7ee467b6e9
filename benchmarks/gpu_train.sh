#!/usr/bin/env bash
# Training throughput on a GPU (issue 6): DenseNet121 at 224 and 320 px — train-step images/s,
# peak GPU memory and training-loader images/s (loader capacity) — from `cxrkit bench train`.
#   bash benchmarks/gpu_train.sh [WORK]
# The cached batches come from a phantom set written here (`cxrkit synth`, 512 px, cached at 256
# and 320 px like the real NIH runs of docs/benchmarks.md): the step's speed does not depend on
# the pixels, and the script needs no dataset on the GPU machine.
# Environment: CXRKIT (command, default `cxrkit`), PATIENTS (400), BACKBONE (densenet121),
# BATCHES ("16 64"), WORKERS (loader processes, default 8), BENCH_SECONDS (per figure, default 8),
# COMPILE_BATCH (batch of the extra torch.compile run at each size, default 64; empty: none).
set -euo pipefail
work=${1:-/tmp/cxrkit-gpu}
cxrkit=${CXRKIT:-cxrkit}
backbone=${BACKBONE:-densenet121}
common=(--backbone "$backbone" --workers "${WORKERS:-8}" --seconds "${BENCH_SECONDS:-8}")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__)" || true
$cxrkit synth --out "$work/phantom" --n-patients "${PATIENTS:-400}" --size 512 --overwrite
for cache in 256 320; do
    $cxrkit prepare nih --root "$work/phantom" --out "$work/prep$cache" --size "$cache" --overwrite
done
run() {  # image size, cache size, batch, extra options
    echo "== $backbone ${1} px (cache ${2}), batch ${3} ${4:-}"
    $cxrkit bench train --data "$work/prep$2" --image-size "$1" --batch-size "$3" "${common[@]}" ${4:-}
}
for batch in ${BATCHES:-16 64}; do
    run 224 256 "$batch"
    run 320 320 "$batch"
done
if [ -n "${COMPILE_BATCH-64}" ]; then
    run 224 256 "${COMPILE_BATCH-64}" --compile
    run 320 320 "${COMPILE_BATCH-64}" --compile
fi
