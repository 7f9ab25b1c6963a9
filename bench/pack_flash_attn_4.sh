#!/usr/bin/env bash
# Pack flash-attn-4 and what it needs for the lent GPU machine, which has no network and takes at most 64 MiB of
# carried files per call (docs/gpu.md). Run here, once: it writes .fa4/ (ignored by git), about 57 MB.
#
#     bash bench/pack_flash_attn_4.sh            # then carry ".fa4" and start the device command with
#     source bench/gpu_flash_attn_4.sh           # there: installs into /tmp/fa4/site-packages, exports PYTHONPATH
#
# A normal install needs none of this: `pip install flash-attn-4` (pure Python, CuTe DSL: nothing to compile).
# Here the wheels are fetched for the device's Python 3.12 and CUDA 13, and the 92 MB CUDA library wheel of the
# CuTe DSL compiler is unpacked and recompressed with xz and its x86 filter (51 MiB) to fit the carry limit.
set -euo pipefail
OUT=${1:-.fa4}
PY=${PY:-3.12}
VERSION=${FLASH_ATTN_4_VERSION:-4.0.0b36}
CUTLASS=${CUTLASS_DSL_VERSION:-4.8.1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
download() {
  python3 -m pip download --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -q -d "$1" "${@:2}"
}
mkdir -p "$OUT" "$work/libs"
download "$OUT" "flash-attn-4==$VERSION" "quack-kernels==0.6.5" "apache-tvm-ffi==0.1.15.post2" \
  "torch-c-dlpack-ext==0.1.5" "nvidia-cutlass-dsl-libs-core==$CUTLASS"
# The CuTe DSL compiler: the meta package, its base libraries and the CUDA 13 build, merged into one tree.
download "$work/libs" "nvidia-cutlass-dsl==$CUTLASS" "nvidia-cutlass-dsl-libs-base==$CUTLASS" \
  "nvidia-cutlass-dsl-libs-cu13==$CUTLASS"
mkdir -p "$work/tree"
for wheel in "$work"/libs/*.whl; do python3 -m zipfile -e "$wheel" "$work/tree"; done
rm -rf "$work/tree/nvidia_cutlass_dsl/cu13/lib/stubs"  # aarch64/QNX stubs
echo "compressing the CuTe DSL libraries (xz, x86 filter: a few minutes)..."
tar -C "$work/tree" -cf - . | xz --x86 --lzma2=preset=9e,dict=256MiB -T1 > "$OUT/cutlass_dsl.tar.xz"
du -sh "$OUT"
