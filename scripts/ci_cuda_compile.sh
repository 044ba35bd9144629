#!/usr/bin/env bash
# CI check: the CUDA kernels (csrc/cuda) compile with nvcc and register in _C -- no GPU needed.
# Configures a separate build dir with -DXITE_ENABLE_CUDA=ON (never copies _C in place), builds,
# then imports the CUDA-enabled _C in a subprocess and checks that the bindings exist and reject
# CPU tensors with a clear error.
# Usage: scripts/ci_cuda_compile.sh [extra cmake -D flags], e.g. -DXITE_CUDA_ARCHITECTURES="80;90"
# Env: XITE_CUDA_ARCHS (default 80: one arch keeps CI fast), XITE_CUDA_BUILD_DIR (default build/cuda-ci).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BUILD=${XITE_CUDA_BUILD_DIR:-build/cuda-ci}
ARCHS=${XITE_CUDA_ARCHS:-80}
if ! command -v nvcc >/dev/null 2>&1; then
  echo "nvcc not found; skipping the CUDA compile check" >&2
  exit 0
fi
nvcc --version | tail -n 2
start=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DXITE_INPLACE=OFF -DXITE_ENABLE_CUDA=ON \
  -DXITE_CUDA_ARCHITECTURES="$ARCHS" \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" \
  -DPython_EXECUTABLE="$("$PY" -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
  -DCMAKE_MAKE_PROGRAM="$("$PY" -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))')" "$@" >/dev/null
cmake --build "$BUILD" -j "$(nproc)"
echo "CUDA build (archs $ARCHS) took $(($(date +%s) - start)) s"

so=$(ls "$BUILD"/_C*.so | head -n 1)
"$PY" - "$so" <<'PYEOF'
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("xite_fast._C", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
assert mod.with_cuda(), "built with XITE_ENABLE_CUDA=ON but with_cuda() is False"
for name in ("cosine_topk_cuda", "lda_project_interp_cuda"):
    assert hasattr(mod, name), f"{name} is not registered in _C (ops: {mod.ops})"
import torch

for call in (
    lambda: mod.cosine_topk_cuda(torch.zeros(2, 4), torch.zeros(3, 4), 1),
    lambda: mod.lda_project_interp_cuda(torch.zeros(2, 4), torch.zeros(2, 4), None, 0.5, "interp"),
):
    try:
        call()
    except ValueError as exc:
        assert "must be a CUDA tensor" in str(exc), exc
    else:
        raise SystemExit("CPU tensors were not rejected")
print("CUDA _C ok:", [n for n in mod.ops if n.endswith("_cuda")])
PYEOF
