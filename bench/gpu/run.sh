#!/bin/bash
# The device checks of a lent GPU, in one call. Build .gpu first (.venv/bin/python bench/gpu/carry.py),
# then, with the device tool: run(command="bash bench/gpu/run.sh", carry=[".gpu"], timeout_s=590).
# Parts run most important first, each under a time limit inside BUDGET seconds; the logs and a
# tarball of the small result files land in $OUT after every part (at most 8 files), so a cut-off
# call keeps what ran.
#   prepare     featinv prepare --size 256 of the imagenet-sample photos and of the extra-train ones
#   throughput  bench/throughput.py --device cuda --images 8192: the original loop, the default
#               recipe through the loader, preloaded, and preloaded at batch 16 (images/s, first
#               epoch, peak memory, FLOP/s against a matmul timed in the same run)
#   b256, b16   the stride-4 decoder (efficientnet_lite0 stage1) on the 2,437 training photos, to
#               convergence or a 1.2-minute budget: the GPU default (batch 256, lr by the square-root
#               rule, epoch repeats) and batch 16 at lr 1e-3 (the CPU recipe), both preloaded
#   all         the default recipe on all four stages (batch 256, preloaded) under a time budget:
#               its learning curve and rate, for the ImageNet-val estimate
#   compile     bench/throughput.py --variants e: the preloaded default with --compile
# TP_LIMIT=400 gives the throughput part 400 s (its six variants on a GPU, compile and no-autotune included).
# PARTS="throughput compile" runs only those (the older parts invert, noise and rule too).
# SMOKE=1 DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu/run.sh  tries every part in seconds on a CPU.
set -u
START=$(date +%s)
BUDGET=${BUDGET:-560}
export PYTHONPATH=$PWD/src:$PWD/.gpu/site PYTHONUNBUFFERED=1
O=${OUT:-/tmp/gpu-out}; W=${WORK:-/tmp/gpu-work}; mkdir -p "$O" "$W"
D=.gpu/data/imagenet-sample; X=.gpu/data/extra-train
DEV=${DEVICE:-cuda}
PY=${PYTHON:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
  TP="--images 24 --epochs 2 --steps 2 --warmup 1"; Q="--max-images 24 --epochs 2"; MIN=""
  INV="--images 2 --steps 3 --batch-size 2"; NOISE="--max-images 24 --epochs 3 --images 8"; RULE="--max-images 24 --epochs 2"
else TP="--images 8192 --epochs 3"; Q="--epochs 300"; MIN="--minutes 1.2"
  INV="--images 20 --steps 500 --batch-size 20"; NOISE="--epochs 20"; RULE=""; fi

PARTS=${PARTS:-prepare throughput b256 b16 all compile}
left() { echo $(( START + BUDGET - $(date +%s) )); }
part() {  # part NAME LIMIT_S COMMAND...: run under min(LIMIT_S, time left), log to $W/NAME.log, then pack
  local name=$1 limit=$2; shift 2
  case " $PARTS " in *" $name "*) ;; *) return ;; esac
  local t=$(left); [ "$t" -lt "$limit" ] && limit=$t
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped, ${limit}s left" | tee -a "$O/parts.txt"; return; fi
  local t0=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc, $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$O/parts.txt"
  tail -n 4 "$W/$name.log" | cut -c1-300
  (cd "$W" && find . \( -path ./cache -o -path ./extra \) -prune -o \( -name '*.json' -o -name '*.csv' \
      -o -name '*.yaml' -o -name '*.md' -o -name '*.log' -o -name '*.txt' \) -print | tar -czf "$O/results.tar.gz" -T - 2>/dev/null)
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
  echo "cpus $(nproc)"; } > "$O/env.txt" 2>&1
cat "$O/env.txt"

part prepare 60 bash -c "$PY -m featinv prepare --data $D --out $W/cache --size 256 && \
    $PY -m featinv prepare --data $X --out $W/extra --size 256"
part throughput ${TP_LIMIT:-220} $PY bench/throughput.py --device "$DEV" --data "$D" $TP --json "$W/throughput.json"
cp "$W/throughput.log" "$W/throughput.json" "$O/" 2>/dev/null
# the stride-4 decoder on the 900 + 1,537 training photos, val = the split's 100
T="$PY -m featinv train --data $W/cache --split-file $D/split.csv --extra-data $W/extra --backbone efficientnet_lite0 \
   --weights imagenet --device $DEV --num-save 0 $Q"
# wall time = the passes (--minutes) + validation, precise BN and the final scoring
part b256 140 $T --layers stage1 $MIN --out "$W/b256"
part b16 110 $T --layers stage1 --batch-size 16 --lr 1e-3 $MIN --out "$W/b16"
part all 140 $T $MIN --out "$W/all"
part compile 120 $PY bench/throughput.py --device "$DEV" --data "$D" $TP --variants e --json "$W/compile.json"
cp "$W/compile.log" "$W/compile.json" "$O/" 2>/dev/null
# older parts, by name only
part invert 120 $PY bench/invert.py $INV --device "$DEV" --data "$D" --out "$W/invert"
part noise 150 $PY bench/validation_noise.py --data "$W/cache" --split-file "$D/split.csv" --configs all $NOISE \
    --device "$DEV" --out "$W/noise"
part rule 240 $PY bench/stopping_rule.py --data "$W/cache" --split-file "$D/split.csv" --configs all $RULE \
    --device "$DEV" --out "$W/rule"
for r in b16 b256 all; do
  [ -f "$W/$r/summary.json" ] && $PY -c "import json,sys; s=json.load(open('$W/$r/summary.json')); \
print('$r', 'val %.2f dB / %.3f' % (s['val']['psnr'], s['val']['ssim']), 'converged', s['converged'], 'epochs', s['epochs_run'], \
'pass_s', s['train_pass_s'], 'wall_s', s['train_time_s'], 'images/s', s['train_images_per_s'], 'batch', s['batch_size'], \
'repeats', s['epoch_repeats'], 'peak MiB', s['peak_memory_mib'])"
done | tee "$O/summary.txt"
echo "total $(( $(date +%s) - START )) s"
