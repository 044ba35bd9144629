#!/usr/bin/env bash
# CI: build the user-facing wheel (scikit-build-core; compiles the extension) into build/ci-wheel/,
# with the dev venv's build tools (no build isolation, no network). Prints the wheel's path.
# Usage: bash scripts/ci_wheel.sh   (PYTHON defaults to .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf build/ci-wheel
"$PY" -m pip wheel -q --no-build-isolation --no-deps -w build/ci-wheel . >&2
whl=$(ls build/ci-wheel/xite_fast-*.whl)
# the wheel ships the extension, its stub and py.typed
for f in xite_fast/py.typed xite_fast/_C.pyi xite_fast/_version.py; do
  "$PY" -c "import sys, zipfile; sys.exit(sys.argv[2] not in zipfile.ZipFile(sys.argv[1]).namelist())" "$whl" "$f" \
    || { echo "wheel lacks $f" >&2; exit 1; }
done
"$PY" -c "import sys, zipfile; n = zipfile.ZipFile(sys.argv[1]).namelist(); sys.exit(not any(x.startswith('xite_fast/_C.') and x.endswith('.so') for x in n))" "$whl" \
  || { echo "wheel lacks the compiled extension" >&2; exit 1; }
echo "$whl"
