#!/usr/bin/env bash
# End-to-end CPU inference, cxrkit vs torchxrayvision's documented pipeline, on the same real
# images and the same 2 threads, in alternating rounds (so load from elsewhere hits both).
#   bash benchmarks/infer_vs_txv.sh [IMAGES] [ROUNDS] [CHECKPOINT]
# IMAGES defaults to ../shared/data/nih-sample/images; CHECKPOINT (a bundle or .ckpt) defaults
# to an untrained DenseNet121 at 224 standing in (speed does not depend on the weights),
# exported to ONNX and quantised to static int8 (calibrated on the first 32 images).
# BACKENDS (default onnx,onnx-int8,openvino-int8): the infer backends timed end to end,
# each against the same round's torchxrayvision figure.
# `infer --checkpoint best.ckpt` with its ONNX copy (issue 13): benchmarks/bench_onnx_copy.py.
# torchxrayvision lives in its own venv, never in cxrkit's:
#   python3 -m venv /tmp/xrv && /tmp/xrv/bin/pip install torch==2.14.1 torchvision==0.29.1 torchxrayvision
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
images=${1:-$here/../shared/data/nih-sample/images}
rounds=${2:-3}
checkpoint=${3:-}
xrv_python=${XRV_PYTHON:-/tmp/xrv/bin/python}
txv=$here/../shared/tools/txv_baseline.py
[ -d "$images" ] || { echo "no images folder $images" >&2; exit 2; }
[ -x "$xrv_python" ] || { echo "no torchxrayvision venv at $xrv_python (see the header)" >&2; exit 2; }
export OMP_NUM_THREADS=2
args=(bench infer --images "$images" --workers 0 --backend "${BACKENDS:-onnx,onnx-int8,openvino-int8}")
[ -n "$checkpoint" ] && args+=(--checkpoint "$checkpoint")
for round in $(seq "$rounds"); do
    t=$("$xrv_python" "$txv" "$images" 2>/dev/null | tail -n 1)
    c=$("$here/.venv/bin/cxrkit" "${args[@]}" 2>/dev/null)
    echo "round $round: torchxrayvision $t images/s"
    echo "$c" | sed -n 's/^end to end ([0-9]* images, \([a-z0-9-]*\)): \([0-9.]*\) images.*/\2 \1/p' |
        while read -r rate backend; do
            echo "round $round: cxrkit end to end, $backend: $rate images/s;" \
                "ratio $(awk -v a="$rate" -v b="$t" 'BEGIN {printf "%.2f", a / b}')"
        done
    echo "$c" | sed 's/^/    /'
done
