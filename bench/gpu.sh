#!/usr/bin/env bash
# The GPU benchmark, in one go (under 8 minutes on one H100):
#   1. smoke checks of the CUDA paths: device augmentation, bf16, channels_last, DataParallel
#      (with 2+ GPUs) and DDP over the GPUs present            (bench/gpu_checks.py)
#   2. training throughput against the report-style reference loop, and the CIFAR-stem model's
#      img/s and epoch time, fp32 and bf16                      (bench/train_throughput.py)
#   3. the default recipe to completion (40 epochs, 45k/5k split), with its training time and
#      test accuracy; goal >= 95 % within 60 s of training       (bench/time_to_accuracy.py)
#
# usage: bench/gpu.sh [--dry-run] [--data PATH/cifar10-jpeg.tar.gz]
#   --dry-run  CPU only, tiny sizes: checks this script and what it calls, without a GPU.
# Data: --data, else ../shared/datasets/cifar10-jpeg.tar.gz, else ./shared/cifar10-jpeg.tar.gz.
# Results (JSON) go to $OUT when set (the device machine), else to a new temp folder; the
# extracted data to $BENCH_CACHE (default: $TMPDIR/sweepserve-bench-cache).
# Python: $PYTHON, else .venv/bin/python when present, else python3. Installs nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
dry_run=0
data=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --data) data="$2"; shift 2 ;;
    *) echo "usage: bench/gpu.sh [--dry-run] [--data PATH]" >&2; exit 2 ;;
  esac
done

if [[ -z "$data" ]]; then
  for candidate in ../shared/datasets/cifar10-jpeg.tar.gz ./shared/cifar10-jpeg.tar.gz; do
    if [[ -f "$candidate" ]]; then data="$candidate"; break; fi
  done
fi
if [[ -z "$data" || ! -f "$data" ]]; then
  echo "no CIFAR-10 archive: pass --data, or put cifar10-jpeg.tar.gz in ../shared/datasets or ./shared" >&2
  exit 1
fi

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
# The extracted archive and its decoded arrays: kept out of $OUT, which is copied back.
cache="${BENCH_CACHE:-${TMPDIR:-/tmp}/sweepserve-bench-cache}"

# What the benchmarks import, and nothing is installed if it is missing.
"$python" - <<'EOF'
import importlib, sys
missing = []
for name in ("torch", "torchvision", "numpy", "PIL", "pydantic"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '')}")
    except ImportError:
        missing.append(name)
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (this script installs nothing)")
EOF

if [[ $dry_run -eq 1 ]]; then
  echo "== dry run on the CPU, tiny sizes; data: $data; results: $out"
  checks=(--device cpu --epoch-images 512)
  throughput=(--device cpu --limit 64 --windows 1 --window-seconds 0.5 --warmup-seconds 0.2 --stem-batch 4)
  recipe=(--device cpu --recipes default --budget-seconds 15 --probe-seconds 0.5)
else
  echo "== data: $data; results: $out"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  checks=(--device cuda)
  throughput=(--device cuda --windows 4 --window-seconds 4)
  recipe=(--device cuda --recipes default --complete)
fi

start=$SECONDS
echo "== 1/3 device checks"
"$python" bench/gpu_checks.py "${checks[@]}" --json "$out/checks.json"
echo "== 2/3 throughput against the reference ($((SECONDS - start)) s so far)"
"$python" bench/train_throughput.py "${throughput[@]}" --data "$data" --cache-dir "$cache" \
  --json "$out/throughput.json"
echo "== 3/3 the default recipe ($((SECONDS - start)) s so far)"
"$python" bench/time_to_accuracy.py "${recipe[@]}" --data "$data" --cache-dir "$cache" \
  --json "$out/recipe.json"

"$python" - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
ratio = json.loads((out / "throughput.json").read_text())["reference"]["ratio"]
recipe = json.loads((out / "recipe.json").read_text())["recipes"][0]
if "does_not_fit" in recipe:
    sys.exit(f"default recipe did not fit its budget: {recipe['does_not_fit']}")
train_s, accuracy = recipe["train_seconds"], recipe["test_accuracy"]
print(f"\nthroughput vs the report-style reference: {ratio:.2f}x (goal on a GPU: >= 5x)")
print(f"default recipe: test accuracy {accuracy:.4f} after {train_s:.1f} s of training and validation "
      f"({recipe['epochs_run']} epochs, {recipe['wall_seconds']:.1f} s in all); goal: >= 0.95 in <= 60 s")
EOF
echo "== done in $((SECONDS - start)) s; results in $out"
