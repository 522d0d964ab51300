#!/usr/bin/env bash
# Build the medmeta-edge wheels for Linux x86-64 (native) and aarch64 (cross-compiled with
# Debian's g++-aarch64-linux-gnu) into edge/dist/, and check each wheel's kernel library from
# C (edge/tests/kernels_check.c), the aarch64 one under QEMU (qemu-user). DIST=folder
# puts the wheels elsewhere. The wheels are
# py3-none-linux_<arch>: one per platform for every Python 3. For manylinux wheels for PyPI,
# run cibuildwheel with the [tool.cibuildwheel] settings of edge/pyproject.toml instead.
#
#   apt-get install g++-aarch64-linux-gnu qemu-user   # once
#   edge/build_wheels.sh
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"
dist="$(realpath -m "${DIST:-dist}")"  # where the wheels go (default edge/dist)
rm -rf "$dist" && mkdir -p "$dist"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

check() {  # check WHEEL RUNNER...: unpack it and run the C check on its library
  local wheel="$1"; shift
  local dir="$work/$(basename "$wheel" .whl)"
  "$python" -m zipfile -e "$wheel" "$dir"
  "$@" "$work/kernels_check" "$dir/medmeta/edge/libmedmeta_kernels.so"
}

"$python" -m pip wheel --no-deps -q -w "$dist" .
gcc -O1 -o "$work/kernels_check" tests/kernels_check.c -ldl -lm
check "$dist"/medmeta_edge-*-linux_x86_64.whl

CMAKE_TOOLCHAIN_FILE="$PWD/toolchains/aarch64-linux-gnu.cmake" _PYTHON_HOST_PLATFORM=linux-aarch64 \
  "$python" -m pip wheel --no-deps -q -w "$dist" .
aarch64-linux-gnu-gcc -O1 -o "$work/kernels_check" tests/kernels_check.c -ldl -lm
check "$dist"/medmeta_edge-*-linux_aarch64.whl qemu-aarch64 -L /usr/aarch64-linux-gnu

ls -l "$dist"
