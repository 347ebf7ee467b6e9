#!/usr/bin/env bash
# Time `make demo` on a fresh clone of this repository (install included) and print the
# phantom test split's macro AUROC from the demo's metrics.json.
#   bash benchmarks/fresh_clone_demo.sh [REPO]      (REPO defaults to this checkout)
set -euo pipefail
repo=$(cd "${1:-$(dirname "$0")/..}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/cxrkit"
cd "$work/cxrkit"
start=$(date +%s)
make install > "$work/install.log" 2>&1
installed=$(date +%s)
make demo 2>&1 | tee "$work/demo.log" | grep -v -E "it/s|img/s|patient/s" || true
end=$(date +%s)
echo "install: $((installed - start)) s; demo: $((end - installed)) s; make demo total: $((end - start)) s"
.venv/bin/python -c "import json; m = json.load(open('runs/demo/eval/metrics.json')); print('test macro AUROC', round(m['macro']['auroc'], 4), 'on', m['n_images'], 'images')"
