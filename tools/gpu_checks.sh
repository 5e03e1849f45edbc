#!/usr/bin/env bash
# The GPU checks of the README ("On a GPU"): one short script, run on a machine with a CUDA GPU
# (`make gpu-check`). Each line is one check; its output goes to $OUT (default gpu_checks/).
set -euo pipefail
OUT=${OUT:-gpu_checks}
PY=${PY:-python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
run() {  # name, then the command; wall time and exit status to $OUT/summary.txt
    local name=$1; shift
    local start=$SECONDS status=0
    "$@" > "$OUT/$name.log" 2>&1 || status=$?
    echo "$name exit=$status seconds=$((SECONDS - start))" | tee -a "$OUT/summary.txt"
}
run smoke_gpu $PY -m gur_lightning.train +experiment=smoke trainer=gpu hydra.run.dir="$OUT/smoke_gpu"
run synvi_gpu $PY -m gur_lightning.train +experiment=synvi trainer=gpu model.channels_last=true \
    hydra.run.dir="$OUT/synvi_gpu" trainer.enable_progress_bar=false
run synvi_ddp1 $PY -m gur_lightning.train +experiment=synvi trainer=ddp trainer.devices=1 \
    hydra.run.dir="$OUT/synvi_ddp1" trainer.enable_progress_bar=false
run synvi_official $PY -m gur_lightning.train +experiment=synvi trainer=gpu recipe=official \
    hydra.run.dir="$OUT/synvi_official" trainer.enable_progress_bar=false
run bench_replicas $PY -m gur_lightning.bench replicas --device cuda --depth 50 --height 288 \
    --width 144 --visible 128 --infrared 256 --replicas 4 --steps 5 --rounds 2
cat "$OUT/summary.txt"
