#!/usr/bin/env bash
# Cross-build the native runner (device/native) for 64-bit Arm Linux into build/native-aarch64, against the runtime
# that the executorch manylinux_2_28_aarch64 wheel ships; with --check, also run it under qemu-user and compare its
# scores with eager torch, ONNX and the x86 runner (device/native/cross/parity.py). `make native-aarch64` runs this;
# `make native-aarch64 CHECK=1` adds --check. Details and findings: device/native/cross/README.md.
#
#   device/native/cross/build-aarch64.sh [--check]
#
# Environment (all optional):
#   ET_AARCH64_WHEEL  a downloaded executorch-<version>-*-manylinux_2_28_aarch64.whl (else pip downloads it)
#   ET_VERSION        the executorch version (default: the pin in pyproject.toml; .pte and runtime must match)
#   NATIVE_SRC        the sources to build (default device/native)
#   BUILD_DIR         the build folder (default build/native-aarch64)
#   JOBS              parallel compile jobs (default 2)
#   PYTHON            the Python for pip and the check (default .venv/bin/python, else python3)
#
# Every missing prerequisite stops the script with one line naming it and the Debian package that provides it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"

TRIPLE=aarch64-linux-gnu
NATIVE_SRC=${NATIVE_SRC:-device/native}
BUILD_DIR=${BUILD_DIR:-build/native-aarch64}
DEPS_DIR=build/cross-deps              # the unpacked wheel, kept apart so that removing BUILD_DIR keeps the download
JOBS=${JOBS:-2}
TOOLCHAIN=device/native/cross/$TRIPLE.cmake
ET_VERSION=${ET_VERSION:-$(sed -n 's/.*"executorch==\([0-9][0-9.]*\)".*/\1/p' pyproject.toml | head -n 1)}
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

CHECK=0
for arg in "$@"; do
  case $arg in
    --check) CHECK=1 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-aarch64: unknown argument '$arg' (usage: build-aarch64.sh [--check])" >&2; exit 2 ;;
  esac
done

die() {
  echo "build-aarch64: $*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------------- preflight
[[ -n $ET_VERSION ]] || die "cannot read the executorch pin from pyproject.toml: set ET_VERSION"
command -v cmake >/dev/null || die "missing cmake (Debian: cmake)"
command -v $TRIPLE-g++ >/dev/null || die "missing the aarch64 cross compiler $TRIPLE-g++ (Debian: g++-$TRIPLE)"
[[ -f /usr/include/nlohmann/json.hpp ]] || die "missing nlohmann/json.hpp (Debian: nlohmann-json3-dev)"
[[ -f /usr/lib/$TRIPLE/libcrypto.so && -d /usr/include/$TRIPLE/openssl ]] ||
  die "missing the arm64 libcrypto (Debian: dpkg --add-architecture arm64 && apt-get update &&" \
    "apt-get install libssl-dev:arm64)"
if ((CHECK)); then
  command -v qemu-aarch64 >/dev/null || die "missing qemu-aarch64 for --check (Debian: qemu-user)"
  [[ -f /usr/$TRIPLE/lib/ld-linux-aarch64.so.1 ]] ||
    die "missing the aarch64 glibc under /usr/$TRIPLE for --check (Debian: libc6-arm64-cross, from g++-$TRIPLE)"
  "$PYTHON" -c 'import torch, executorch.exir, onnxruntime' 2>/dev/null ||
    die "--check exports its models with torch and executorch: $PYTHON lacks them (run \`make venv\` or set PYTHON)"
fi

# -------------------------------------------------------------------------------------------------- the wheel
# Only the runtime is used: lib/*.so, include/ and the CMake package under share/cmake (nothing of libtorch/c10).
ET_ROOT=$DEPS_DIR/executorch-$ET_VERSION-manylinux_2_28_aarch64
if [[ ! -f $ET_ROOT/executorch/share/cmake/executorch-config.cmake ]]; then
  wheel=${ET_AARCH64_WHEEL:-}
  if [[ -z $wheel ]]; then
    mkdir -p "$DEPS_DIR/download"
    echo "build-aarch64: downloading executorch==$ET_VERSION (manylinux_2_28_aarch64, cp311) into $DEPS_DIR/download"
    "$PYTHON" -m pip --disable-pip-version-check download -q --no-deps --only-binary=:all: \
      --platform manylinux_2_28_aarch64 --python-version 3.11 -d "$DEPS_DIR/download" "executorch==$ET_VERSION" \
      >"$DEPS_DIR/download/pip.log" 2>&1 ||
      die "cannot download the executorch==$ET_VERSION aarch64 wheel (see $DEPS_DIR/download/pip.log;" \
        "offline? set ET_AARCH64_WHEEL=<the .whl>)"
    wheel=$(ls "$DEPS_DIR"/download/executorch-"$ET_VERSION"-*manylinux_2_28_aarch64*.whl | head -n 1)
  fi
  [[ -f $wheel ]] || die "the executorch wheel '$wheel' does not exist"
  rm -rf "$ET_ROOT.partial" && mkdir -p "$ET_ROOT.partial"
  "$PYTHON" -m zipfile -e "$wheel" "$ET_ROOT.partial" || die "cannot unpack $wheel"
  [[ -f $ET_ROOT.partial/executorch/share/cmake/executorch-config.cmake ]] ||
    die "$wheel has no executorch/share/cmake/executorch-config.cmake (not an executorch wheel with its runtime?)"
  rm -rf "$ET_ROOT" && mv "$ET_ROOT.partial" "$ET_ROOT"
fi
ET_LIB=$ET_ROOT/executorch/lib
machine() { $TRIPLE-readelf -h "$1" 2>/dev/null | sed -n 's/^ *Machine: *//p'; }
[[ $(machine "$ET_LIB/libexecutorch.so") == AArch64 ]] ||
  die "$ET_LIB/libexecutorch.so is missing or not an AArch64 library"

# ------------------------------------------------------------------------------------------------------ build
mkdir -p "$BUILD_DIR"
# a build folder configured from another source tree (a copy of this one, say) is configured again from scratch
if [[ -f $BUILD_DIR/CMakeCache.txt ]] &&
   ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$(cd "$NATIVE_SRC" && pwd)" "$BUILD_DIR/CMakeCache.txt"; then
  rm -rf "$BUILD_DIR/CMakeCache.txt" "$BUILD_DIR/CMakeFiles"
fi
generator=()
command -v ninja >/dev/null && [[ ! -f $BUILD_DIR/Makefile ]] && generator=(-G Ninja)
# LSC4REC_PYTHON=false: should the prefix path not find the aarch64 package, CMakeLists.txt's fallback (asking a
# Python where `import executorch` is) must fail instead of finding the host's x86_64 wheel.
cmake -S "$NATIVE_SRC" -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_TOOLCHAIN_FILE="$ROOT/$TOOLCHAIN" \
  -DCMAKE_PREFIX_PATH="$ROOT/$ET_ROOT/executorch" -DLSC4REC_PYTHON=false --no-warn-unused-cli \
  >"$BUILD_DIR/configure.log" 2>&1 ||
  { tail -n 15 "$BUILD_DIR/configure.log" >&2; die "cmake configure failed (full log: $BUILD_DIR/configure.log)"; }
cmake --build "$BUILD_DIR" -j "$JOBS" >"$BUILD_DIR/build.log" 2>&1 ||
  { tail -n 25 "$BUILD_DIR/build.log" >&2; die "the build failed (full log: $BUILD_DIR/build.log)"; }

for f in lsc4rec-native liblsc4rec_native.so libexecutorch.so libexecutorch_threadpool.so \
  libexecutorch_kernels_optimized.so libexecutorch_backend_xnnpack.so; do
  [[ $(machine "$BUILD_DIR/$f") == AArch64 ]] ||
    die "$BUILD_DIR/$f is missing or not AArch64: the build picked up a host library"
done
echo "build-aarch64: built $BUILD_DIR (aarch64, executorch $ET_VERSION):"
(cd "$BUILD_DIR" && ls -l lsc4rec-native *.so | awk '{printf "  %10d  %s\n", $5, $NF}')

if ((CHECK)); then
  "$PYTHON" device/native/cross/parity.py --build "$BUILD_DIR"
fi
