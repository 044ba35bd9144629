#!/usr/bin/env bash
# In-place development build of xite_fast._C (copies the .so into xite_fast/).
# Usage: scripts/build_ext.sh [extra cmake -D flags]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BUILD=${XITE_BUILD_DIR:-build/dev}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DXITE_INPLACE=ON \
  -DPython_EXECUTABLE="$("$PY" -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
  -DCMAKE_MAKE_PROGRAM="$("$PY" -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))')" "$@" >/dev/null
cmake --build "$BUILD" -j "$(nproc)"
