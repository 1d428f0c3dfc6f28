#!/usr/bin/env bash
# The GPU benchmark in one device call (bench/gpu_prepare.sh prepares the kit and prints the
# call). Within --budget-seconds (540, leaving the device tool's 600 s some slack) on one
# H100/H200, each step under `timeout`, none fatal, in this order:
#   install      the kit's wheels (pydantic & co.) into a private target dir: the image's torch
#                is never touched
#   environment  Python, torch, CUDA, GPUs; every module the run needs imports (bench/gpu_env.py)
#   checks       CUDA smoke checks: device augmentation, bf16, channels_last, DataParallel on the
#                visible GPUs (2+), one DDP trial over NCCL, each with a short limit (gpu_checks.py)
#   data         CIFAR-10 extracted and decoded once, outside the recipes' timings
#   recipe:default  TrainConfig() to completion (40 epochs): wall time, validation-selected test
#                accuracy, img/s, GPU memory, and the test accuracy after every epoch, to show
#                where accuracy stops improving (bench/gpu_recipes.py --test-curve)
#   recipe:NAME  the variants (--recipes), each to completion, in order, as long as the time left
#                holds the one's estimate (from the default's timings) and the throughput step
#   throughput   ours against the report-style loop, short windows (bench/train_throughput.py)
# After every step, $OUT/summary.json holds everything so far (bench/gpu_summary.py); the log
# goes to $OUT/gpu.log as it is written; the tables are printed last. Temporary files (the
# extracted data, checkpoints, compiler caches) live on /dev/shm and are removed at the end.
#
# usage: bench/gpu.sh [--dry-run] [--data PATH] [--kit DIR] [--recipes a,b] [--budget-seconds N]
#   --dry-run  every step on the CPU, on a few images per class of the archive, 2 epochs (1 per
#              variant), two variants (a compiled one: traced by dynamo, no code generated); no
#              deadline, nothing depends on the machine's speed; about a minute on 2 idle cores.
# Data: --data, else KIT/cifar10-jpeg.tar.gz, ../shared/datasets/ or ./shared/cifar10-jpeg.tar.gz.
# Kit: --kit (default .gpu-kit): wheels/*.whl are installed when present. Results: $OUT when set
# (the device machine), else a new temporary folder. Python: $PYTHON, else .venv/bin/python when
# present, else python3.
set -uo pipefail # not -e: a failed step is recorded and the next one runs

cd "$(dirname "$0")/.."
dry_run=0
data=""
kit=.gpu-kit
budget=540
recipes=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --data) data="$2"; shift 2 ;;
    --kit) kit="$2"; shift 2 ;;
    --recipes) recipes="$2"; shift 2 ;;
    --budget-seconds) budget="$2"; shift 2 ;;
    *) echo "usage: bench/gpu.sh [--dry-run] [--data PATH] [--kit DIR] [--recipes a,b] [--budget-seconds N]" >&2
       exit 2 ;;
  esac
done

if [[ -z "$data" ]]; then
  for candidate in "$kit/cifar10-jpeg.tar.gz" ../shared/datasets/cifar10-jpeg.tar.gz ./shared/cifar10-jpeg.tar.gz; do
    if [[ -f "$candidate" ]]; then data="$candidate"; break; fi
  done
fi
if [[ -z "$data" || ! -f "$data" ]]; then
  echo "no CIFAR-10 archive: run bench/gpu_prepare.sh, or pass --data" >&2
  exit 1
fi
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
if [[ -d /dev/shm && -w /dev/shm ]]; then shm=/dev/shm; else shm="${TMPDIR:-/tmp}"; fi
work=$(mktemp -d "$shm/sweepserve-gpu.XXXXXX")
mkdir -p "$work/tmp"
export TMPDIR="$work/tmp" TORCHINDUCTOR_CACHE_DIR="$work/inductor" PYTHONUNBUFFERED=1
cache="${BENCH_CACHE:-$work/data}"
exec > >(tee -a "$out/gpu.log") 2>&1

if [[ $dry_run -eq 1 ]]; then
  mode=dry-run
  budget=0 # no deadline: a busy machine is slower, never wrong
  # One thread per process: on a small shared CPU, OpenMP threads spinning against other
  # processes made an epoch of 36 images take 12 s instead of 0.6 (load average 7 on 2 cores).
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  recipes="${recipes:-compiled,airbench_aug}"
  device=(--device cpu)
  checks=(--epoch-images 512)
  default_epochs=(--epochs 2)
  variant_epochs=(--epochs 1)
  compile_backend=(--compile-backend eager)
  throughput=(--limit 64 --windows 1 --window-seconds 0.5 --warmup-seconds 0.2 --stem-batch 4)
else
  mode=gpu
  recipes="${recipes:-airbench_aug,compiled,batch1024,cudagraphs,epochs60,label_smoothing,cutout12_translate,alternate_flip,max_autotune}"
  device=(--device cuda)
  checks=(--check-seconds 100)
  default_epochs=()
  variant_epochs=()
  compile_backend=()
  throughput=(--windows 3 --window-seconds 2 --warmup-seconds 2)
fi
printf '{"mode": "%s", "date": "%s", "budget_seconds": %d, "recipes": "%s", "data": "%s", "python": "%s"}\n' \
  "$mode" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$budget" "$recipes" "$data" "$python" >"$work/run.json"

started=$SECONDS
reserve=100 # seconds kept for the throughput step and the summary, until their turn

summarize() { "$python" bench/gpu_summary.py "$work" "$out" "$@" || echo "(no summary: exit status $?)"; }
finish() {
  summarize --print
  echo "== done in $((SECONDS - started)) s ($mode); results in $out: summary.json, gpu.log"
  rm -rf "$work"
}
trap finish EXIT

# room CAP: CAP seconds, or fewer when the budget leaves fewer after `reserve`.
room() {
  if ((budget == 0)); then echo "$1"; return; fi
  local left=$((budget - (SECONDS - started) - reserve))
  if ((left < $1)); then echo "$left"; else echo "$1"; fi
}

# step NAME LIMIT COMMAND...: COMMAND under `timeout LIMIT`; its exit status is recorded, never fatal.
step() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  if ((limit < 20)); then
    echo "== $name: skipped, ${limit} s left"
    printf '%s\t-1\t0\t%d\n' "$name" "$limit" >>"$work/steps.tsv"
    return
  fi
  echo "== $name (limit ${limit} s; $((SECONDS - started)) s so far)"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  printf '%s\t%d\t%d\t%d\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$work/steps.tsv"
  if ((rc != 0)); then echo "== $name: exit status $rc (124: timed out)"; fi
  summarize
}

echo "== $mode run; data $data; kit $kit; results $out; scratch $work"
wheels=("$kit"/wheels/*.whl)
if [[ -f "${wheels[0]}" ]]; then
  # For CPython 3.12 on x86-64 Linux, whatever Python runs pip: the same command installs the
  # kit on the GPU machine and, in a dry run, checks it here.
  step install "$(room 120)" "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --target "$work/site" "${wheels[@]}"
  # On the GPU machine the wheels supply what its image lacks. A dry run only installs them: this
  # machine's Python has its own packages (and may not be 3.12).
  if [[ $dry_run -eq 0 ]]; then export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"; fi
else
  echo "== install: no wheels in $kit/wheels (bench/gpu_prepare.sh puts them there)"
fi

step environment "$(room 60)" "$python" bench/gpu_env.py --json "$work/env.json"
step checks "$(room 300)" "$python" bench/gpu_checks.py "${device[@]}" "${checks[@]}" --json "$work/checks.json"

if [[ $dry_run -eq 1 ]]; then # a few images per class: the same steps, tiny sizes
  step tiny-data "$(room 600)" "$python" bench/gpu_kit.py tiny-archive "$data" "$work/tiny/cifar10-jpeg.tar.gz"
  data="$work/tiny/cifar10-jpeg.tar.gz"
fi
recipe=("$python" bench/gpu_recipes.py "${device[@]}" --data "$data" --cache-dir "$cache")
step data "$(room 120)" "${recipe[@]}" --data-only
step recipe:default "$(room 300)" "${recipe[@]}" --recipe default --test-curve "${default_epochs[@]}" \
  --json "$work/recipe-default.json"

for name in ${recipes//,/ }; do
  limit=$(room 600)
  deadline=()
  if ((budget > 0)); then deadline=(--seconds-left "$limit" --reference "$work/recipe-default.json"); fi
  step "recipe:$name" "$limit" "${recipe[@]}" --recipe "$name" "${variant_epochs[@]}" "${compile_backend[@]}" \
    "${deadline[@]}" --json "$work/recipe-$name.json"
done

reserve=10
step throughput "$(room 120)" "$python" bench/train_throughput.py "${device[@]}" "${throughput[@]}" \
  --data "$data" --cache-dir "$cache" --json "$work/throughput.json"
