#!/usr/bin/env bash
# Prepares the GPU kit on this (CPU) machine, so that one device `run` call turns a GPU lease into
# numbers (bench/gpu.sh). The GPU machine has Python 3.12 with torch, torchvision, numpy and
# pillow, no pydantic, no network, and receives only this checkout (../shared does not travel).
# So this puts into .gpu-kit/ (ignored by git, and by .git/info/exclude):
#   - cifar10-jpeg.tar.gz, the CIFAR-10 copy (19 MB);
#   - wheels/: the cp312 manylinux wheels of every distribution the GPU run imports beyond the
#     image, and what they require, at the versions installed here (bench/gpu_kit.py requirements);
# then checks the kit (every import covered, <= 60 MiB; all that travels <= 64 MiB) and prints
# the device call: its command, carry list and timeout_s.
#
# usage: bench/gpu_prepare.sh [--data PATH/cifar10-jpeg.tar.gz]
# Python: $PYTHON, else .venv/bin/python when present, else python3. Downloads the wheels with pip.
set -euo pipefail

cd "$(dirname "$0")/.."
data=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) data="$2"; shift 2 ;;
    *) echo "usage: bench/gpu_prepare.sh [--data PATH]" >&2; exit 2 ;;
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

kit=.gpu-kit
# Ignored twice: .gitignore (tracked) and this clone's own exclude file, for checkouts whose
# .gitignore predates the kit. Ignored paths travel only when the call's carry names them.
if exclude=$(git rev-parse --git-path info/exclude 2>/dev/null); then
  mkdir -p "$(dirname "$exclude")"
  grep -qxF "/$kit/" "$exclude" 2>/dev/null || echo "/$kit/" >>"$exclude"
fi
mkdir -p "$kit/wheels"
cp -f "$data" "$kit/cifar10-jpeg.tar.gz"

mapfile -t wanted < <("$python" bench/gpu_kit.py requirements)
echo "wheels for Python 3.12 on x86-64 Linux: ${wanted[*]}"
rm -f "$kit"/wheels/*.whl  # one version of each: two make pip refuse the whole install
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$kit/wheels" "${wanted[@]}"
ls -l "$kit/wheels"
"$python" bench/gpu_kit.py check --kit "$kit"
