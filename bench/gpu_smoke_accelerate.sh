#!/usr/bin/env bash
# Multi-GPU smoke run: `iaunet train` started by `accelerate launch` on a tiny synthetic world (resnet18, 64x32,
# one epoch), then checks that metrics.json and model.pth were written. See README "Multi-GPU".
#
#   bench/gpu_smoke_accelerate.sh            # 1 process on the GPU (what the README reports)
#   bench/gpu_smoke_accelerate.sh 2          # 2 processes (needs 2 GPUs)
#   bench/gpu_smoke_accelerate.sh --cpu      # 1 process on the CPU through `accelerate launch --cpu`
#   bench/gpu_smoke_accelerate.sh --cpu 2    # 2 CPU processes (gloo): `accelerate launch --cpu` starts only one process
#                                            # (its multi-CPU mode needs MPI), so this uses torchrun instead
#
# Run from the repository root. PYTHON and ACCELERATE pick the interpreter and the launcher (default: .venv's).
set -euo pipefail
CPU=""
if [ "${1:-}" = "--cpu" ]; then CPU="--cpu"; shift; fi
NPROC="${1:-1}"
PY="${PYTHON:-.venv/bin/python}"
ACC="${ACCELERATE:-$(dirname "$PY")/accelerate}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "from iaunet_fastai.synthetic import make_synthetic_reid; make_synthetic_reid('$TMP/synth', preset='tiny', img_size=(64, 32))" >/dev/null
start=$(date +%s)
if [ -n "$CPU" ] && [ "$NPROC" -gt 1 ]; then LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
elif [ "$NPROC" -gt 1 ]; then LAUNCH=("$ACC" launch --multi_gpu --num_processes "$NPROC" --num_machines 1 --mixed_precision no --dynamo_backend no)
else LAUNCH=("$ACC" launch $CPU --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no); fi
echo "${LAUNCH[*]} -m iaunet_fastai.cli train ..."
"${LAUNCH[@]}" -m iaunet_fastai.cli train --dataset market1501 --root "$TMP/synth/Market-1501" --arch resnet18 --no-pretrained \
    --epochs 1 --size 64,32 --pk 2x4 --workers 0 --out "$TMP/run"
end=$(date +%s)
test -s "$TMP/run/metrics.json" && test -s "$TMP/run/model.pth"
"$PY" -c "import json; r = json.load(open('$TMP/run/metrics.json')); print('${NPROC} process(es)${CPU:+ on the CPU}: ok in $((end - start))s  rank1 %.4f  mAP %.4f  mINP %.4f  queries %d' % (r['rank1'], r['mAP'], r['mINP'], r['num_valid_queries']))"
