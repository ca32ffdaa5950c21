#!/bin/bash
# The device checks of a lent GPU, in one call. Build .gpu first (.venv/bin/python bench/gpu/carry.py),
# then, with the device tool: run(command="bash bench/gpu/run.sh", carry=[".gpu"], timeout_s=560).
# Parts run most important first, each under a time limit inside BUDGET seconds; the logs and a
# tarball of the small result files land in $OUT after every part, so a cut-off call keeps what ran.
#   1. bench/invert.py: decoder / refine / optimize per stage, 20 val photos, 500 steps, s/image
#   2. a plain `featinv train` on the imagenet-sample JPEG folder (the default recipe): wall time, score
#   noise: bench/validation_noise.py all, 20 epochs at a constant rate: val PSNR per epoch with the
#      running averages and with recomputed statistics, and where each stopping rule fires
#   rule: bench/stopping_rule.py all: the default recipe trained with the stopping rule before and now, paired
#   3. bench/quality.py stride4: the default decoder, the same with --upsample lowres (is it worse at
#      convergence, not only per epoch?), then a wider one (width 128, 4 blocks), to convergence
#   4. bench/quality.py all: the same wider decoder with all four stages
#   exit: how long a finished `featinv train` takes to exit (data-loader workers; pytorch/pytorch#81794)
# PARTS="invert exit" runs only those parts (default: train, prepare, noise and the quality parts;
# invert ran on an H100, its log is in bench/results/).
# SMOKE=1 DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu/run.sh  tries every part in seconds on a CPU.
set -u
START=$(date +%s)
BUDGET=${BUDGET:-540}
export PYTHONPATH=$PWD/src:$PWD/.gpu/site PYTHONUNBUFFERED=1
O=${OUT:-/tmp/gpu-out}; W=${WORK:-/tmp/gpu-work}; mkdir -p "$O" "$W"
D=.gpu/data/imagenet-sample
DEV=${DEVICE:-cuda}
PY=${PYTHON:-python3}
if [ "${SMOKE:-0}" = 1 ]; then
  INV="--images 2 --steps 3 --batch-size 2"; TRAIN="--max-images 24 --epochs 1 --batch-size 8 --workers 0"
  Q1="--max-images 24 --epochs 1"; Q2=$Q1; Q3=$Q1; NOISE="--max-images 24 --epochs 3 --images 8"; RULE="--max-images 24 --epochs 2"
else INV="--images 20 --steps 500 --batch-size 20"; TRAIN=""; Q1="--minutes 2"; Q2="--minutes 2.5"; Q3="--minutes 2.5"
  NOISE="--epochs 20"; RULE=""; fi

PARTS=${PARTS:-train prepare noise rule quality-stride4 quality-lowres-stride4 quality-wide-stride4 quality-wide-all}
left() { echo $(( START + BUDGET - $(date +%s) )); }
part() {  # part NAME LIMIT_S COMMAND...: run under min(LIMIT_S, time left), log to $O/NAME.log, then pack
  local name=$1 limit=$2; shift 2
  case " $PARTS " in *" $name "*) ;; *) return ;; esac
  local t=$(left); [ "$t" -lt "$limit" ] && limit=$t
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped, ${limit}s left" | tee -a "$O/parts.txt"; return; fi
  local t0=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$O/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc, $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$O/parts.txt"
  (cd "$W" && find . -path ./cache -prune -o \( -name '*.json' -o -name '*.csv' -o -name '*.yaml' -o -name '*.md' \
      -o -name '*.log' -o -name comparison.png \) -print | tar -czf "$O/results.tar.gz" -T - 2>/dev/null)
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
  echo "cpus $(nproc)"; } > "$O/env.txt" 2>&1
cat "$O/env.txt"

part invert 120 $PY bench/invert.py $INV --device "$DEV" --data "$D" --out "$W/invert"
part train 150 $PY -m featinv train --data "$D" --split-file "$D/split.csv" --backbone efficientnet_lite0 \
    --weights imagenet --device "$DEV" $TRAIN --out "$W/train-default"
part prepare 40 $PY -m featinv prepare --data "$D" --out "$W/cache" --size 256
part noise 150 $PY bench/validation_noise.py --data "$W/cache" --split-file "$D/split.csv" --configs all $NOISE \
    --device "$DEV" --out "$W/noise"
part rule 240 $PY bench/stopping_rule.py --data "$W/cache" --split-file "$D/split.csv" --configs all $RULE \
    --device "$DEV" --out "$W/rule"
# quality.py's --minutes caps each configuration's training passes, so it ends before the part's limit
Q="$PY bench/quality.py --data $W/cache --split-file $D/split.csv --test-data none --device $DEV"
WIDE="--set decoder.width=128 decoder.blocks=4"
part quality-stride4 170 $Q $Q1 --configs stride4 --out "$W/quality-default"
part quality-lowres-stride4 170 $Q $Q1 --configs stride4 --set decoder.upsample=lowres --out "$W/quality-lowres"
part quality-wide-stride4 200 $Q $Q2 --configs stride4 $WIDE --out "$W/quality-wide"
part quality-wide-all 200 $Q $Q3 --configs all $WIDE --out "$W/quality-wide"
# every output line stamped; the last stamp is when the process and its workers let go of stdout
part exit 90 bash -c "$PY -m featinv train --data $D --split-file $D/split.csv --backbone efficientnet_lite0 \
    --layers stage1 --epochs 1 --max-images 256 --device $DEV --out $W/exit-check 2>&1 | \
    while IFS= read -r line; do echo \"\$(date +%s.%N) \$line\"; done; echo \"\$(date +%s.%N) exited\""
[ -f "$O/exit.log" ] && grep -E "done:|exited" "$O/exit.log"
echo "total $(( $(date +%s) - START )) s"
