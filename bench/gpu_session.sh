#!/usr/bin/env bash
# One prepared GPU session (an offline machine with Python, torch, timm, accelerate but no fastai):
#   ../shared/gpu/wheels.sh                 # here, once: fastai & co. wheels into .whl/
#   bash bench/gpu_session.sh OUT [a|b|c|all] # there: results under OUT; parts below
# Runs, each under its own time limit so that one slow part cannot eat the session:
#   bench_train.py (loader / bare step ± optimizer / fastai loop, baseline vs IAUnet, bf16 + channels_last),
#   bench_loop.py (the loop's host time and kernels per batch by part and callback),
#   bench_iau_blocks.py (block time, kernels and bf16 error, eager and compiled), bench_models.py --device cuda --amp,
#   bench_schp.py --device cuda, an `accelerate launch --num_processes 1` smoke run of `iaunet train`, and (last) the
#   loop with torch.compile (the IAU blocks only, then the whole model).
set -uo pipefail
OUT=${1:-bench/results/gpu}
PART=${2:-all}
mkdir -p "$OUT"
if ! python3 -c "import fastai" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, fastai; print('torch', torch.__version__, 'timm', timm.__version__, 'fastai', fastai.__version__)" | tee -a "$OUT/gpu.txt"
W=$(( $(nproc) - 2 ))
run() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "USDT\|DeviceProperties" | tail -40; echo "== rc ${PIPESTATUS[0]}"; }
# Parts (each fits one 600 s device call; a session's 15 device-minutes hold about two, startup included):
#   a  the pace: bench_train (loader / bare / loop) and bench_loop (host ms and kernels per batch by part)
#   b  the IAU blocks: bench_iau_blocks --compile (eager, fused attention, compiled), the loop with CIAU.fused
#      (bf16), then the loop with compile='iau' (compile=True was measured in session 2: 1,746 images/s)
#   c  the rest: bench_models, bench_schp, the accelerate smoke run, loader workers kept vs new (bench_workers)
case "$PART" in a|all)
run 270 python3 bench/bench_train.py --device cuda --amp --channels-last --workers "$W" --profile --out "$OUT/train-cuda.md"
run 120 python3 bench/bench_loop.py --device cuda --amp --channels-last --arch resnet50 --size 256,128 --pk 16x4 --workers "$W" --preset medium --steps 30 --out "$OUT/loop-cuda.md"
;; esac
case "$PART" in b|all)
run 150 python3 bench/bench_iau_blocks.py --device cuda --compile --out "$OUT/iau-blocks-cuda.md"
run 150 python3 bench/bench_train.py --device cuda --amp --channels-last --workers "$W" --variants iaunet --ciau fused-bf16 --steps 30 --out "$OUT/train-cuda-fused.md"
run 200 python3 bench/bench_train.py --device cuda --amp --channels-last --workers "$W" --variants iaunet --compile iau --steps 30 --out "$OUT/train-cuda-compile.md"
;; esac
case "$PART" in c|all)
run 90  python3 bench/bench_models.py --device cuda --amp --iters 10 --out "$OUT/models-cuda.md"
run 100 python3 bench/bench_schp.py --device cuda --n 256 --batch-size 32 --precision both --reps 5 --out "$OUT/schp-cuda.md"
export PYTHON=python3 ACCELERATE=$(command -v accelerate); run 120 bash bench/gpu_smoke_accelerate.sh 1
run 150 python3 bench/bench_workers.py --workers "$W" --epochs 3 --data /tmp/bench_workers_world --out "$OUT/workers-gpu-host.md"
;; esac
ls -la "$OUT"
