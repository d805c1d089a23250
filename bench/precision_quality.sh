#!/usr/bin/env bash
# fp32 against bf16 autocast for the same fine-tune (issue 33): one degrade run, two `realsr train`
# runs that differ only in --precision, and one `realsr evaluate` of both beside Real-ESRGAN x4plus
# on the same validation crops (held-out photos, degraded as training degrades).
#
#   bash bench/precision_quality.sh WORK [ITERATIONS] [SEED]    (default 400 iterations: the `cpu` preset's; seed 0)
#
# WORK gets photos/ (8 synthetic camera photos, `realsr sample`), run/, t_fp32/, t_bf16/, eval/ and
# the logs; wall times come from /usr/bin/time in train_*.log.
set -euo pipefail
work=$1; its=${2:-400}; seed=${3:-0}
cd "$(dirname "$0")/.."
mkdir -p "$work"
[ -d "$work/photos" ] || .venv/bin/realsr sample --out "$work/photos" --count 8 --seed "$seed" > "$work/sample.log"
[ -f "$work/run/summary.json" ] || .venv/bin/realsr degrade --source "$work/photos" --out "$work/run" --kernels kernelgan --kernelgan-seeds 1 --seed "$seed" > "$work/degrade.log" 2>&1
for p in fp32 bf16; do
  /usr/bin/time -v .venv/bin/realsr train "$work/run" --out "$work/t_$p" --preset finetune --iterations "$its" --batch-size 4 --hr-size 64 \
    --val-every 100 --save-every 100 --workers 1 --seed "$seed" --precision "$p" > "$work/train_$p.log" 2>&1
  grep -h "Elapsed" "$work/train_$p.log" | sed "s/^/$p: /"
done
.venv/bin/realsr evaluate --lr "$work/t_fp32/val/lr" --hr "$work/t_fp32/val/hr" --model realesrgan-x4plus \
  --model "$work/t_fp32/models/net_g_latest.pth" --model "$work/t_bf16/models/net_g_latest.pth" --out "$work/eval" | grep "^|"
