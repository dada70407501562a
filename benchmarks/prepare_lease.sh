#!/usr/bin/env bash
# What a GPU lease carries, made here (no GPU needed) before its first device call. None of it is committed, and a
# session's work tree is laid anew, so each session that is lent a GPU runs this once:
#
#   bash benchmarks/prepare_lease.sh
#
# .whl/     pydantic, pytest and onnxconverter-common (the fp16 export) with what they need, as wheels for the
#           device's Python 3.12 (it has torch, numpy, onnx and the rest, but not these), at the versions installed
#           in .venv here
# .data/    the CIFAR-10 archive, copied from ../shared/datasets
# Then carry [".whl", ".data"] (and a teacher under benchmarks/teachers/, where there is one). GPU busy % needs
# nothing carried: benchmarks.gpu reads NVML through nvidia-ml-py, or nvidia-smi where that is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
ARCHIVE=${ARCHIVE:-../shared/datasets/cifar10-jpeg.tar.gz}
[ -x "$PYTHON" ] || { echo "error: $PYTHON not found: run make install first" >&2; exit 2; }
[ -f "$ARCHIVE" ] || { echo "error: $ARCHIVE not found" >&2; exit 2; }

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for path in /.whl/ /.data/; do
    grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >> "$exclude"
done

packages=(pydantic pydantic_core annotated-types typing-inspection pytest pluggy iniconfig packaging pygments onnxconverter-common)
pins=()
for name in "${packages[@]}"; do
    pins+=("$name==$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf .whl && mkdir .whl
platforms=()
for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$platform")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${pins[@]}"

mkdir -p .data && cp "$ARCHIVE" .data/cifar10-jpeg.tar.gz
echo "ready to carry: .whl ($(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1)), .data ($(du -sh .data | cut -f1))"
