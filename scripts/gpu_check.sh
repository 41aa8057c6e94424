#!/usr/bin/env bash
# GPU check, about 4 minutes on one H100/H200, compile time included (each stage is capped: at most ~5
# minutes): the CUDA tests (pytest -m gpu), then the SR4IR step benchmark (python -m src.bench) on CUDA: ours
# vs the official-style reference loop in fp32, then ours with bf16 autocast + channels_last, and with
# torch.compile on top (cls paper size only: compiling costs about a minute per network and input shape); on a
# machine with 2 or more GPUs also python -m src.bench_dist (NCCL, one process per GPU; up to 2.5 more minutes).
# A stage that fails or runs out of time is reported and the script goes on; the exit status says whether all passed.
# Results: reports/bench/cuda_*.json and cuda_table*.md, copied to "$OUT" when that is set.
#
#   scripts/gpu_check.sh                      # from the repository root
#   PYTHON=python3 scripts/gpu_check.sh       # a python with the dependencies, without .venv
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
if [[ ! -x "$PY" ]] && ! command -v "$PY" >/dev/null 2>&1; then
    PY=python3
fi
OUTDIR="${BENCH_OUT:-reports/bench}"
STEPS="${BENCH_STEPS:-5}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR"
"$PY" - <<'EOF'
import sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh: CUDA is not available")
EOF

status=0
stage() {  # stage <seconds> <name> <command...>: run with a time limit, record a failure, go on
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS rc=0
    timeout --signal=INT --kill-after=10 "$limit" "$@" || rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0))s"
    if [[ $rc -ne 0 ]]; then status=1; fi
}

stage 90 "pytest -m gpu" "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors tests
stage 60 "bench fp32 (ours vs reference)" "$PY" -m src.bench --device cuda --tasks cls,seg,det --sizes paper,default \
    --steps "$STEPS" --warmup 2 --out "$OUTDIR"
stage 60 "bench bf16 + channels_last" "$PY" -m src.bench --device cuda --tasks cls,seg,det --sizes paper \
    --steps "$STEPS" --warmup 2 --amp bf16 --channels-last --out "$OUTDIR"
stage 90 "bench bf16 + channels_last + compile (cls paper)" "$PY" -m src.bench --device cuda --tasks cls --sizes paper \
    --steps "$STEPS" --warmup 3 --amp bf16 --channels-last --compile --out "$OUTDIR"
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
if [[ "$GPUS" -ge 2 ]]; then  # one NCCL process per GPU: DDP's step against one process and no communication
    stage 150 "bench_dist on $GPUS GPUs (NCCL)" "$PY" -m src.bench_dist --device cuda --nproc "$GPUS" \
        --tasks cls,seg,det --sizes paper --steps "$STEPS" --warmup 2 --out "$OUTDIR"
fi

echo
echo "== tables"
for f in "$OUTDIR"/cuda_table*.md "$OUTDIR"/cuda_dist*_table.md; do
    [[ -e "$f" ]] && { cat "$f"; echo; }
done
if [[ -n "${OUT:-}" ]]; then  # the GPU machine returns at most 8 files from $OUT: the tables, and the JSONs in one archive
    mkdir -p "$OUT/bench"
    cp "$OUTDIR"/cuda_table*.md "$OUTDIR"/cuda_dist*_table.md "$OUT/bench/" 2>/dev/null || true
    tar -czf "$OUT/bench/cuda_json.tar.gz" -C "$OUTDIR" $(cd "$OUTDIR" && ls cuda_*.json 2>/dev/null) 2>/dev/null || true
fi
exit $status
