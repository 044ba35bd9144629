#!/usr/bin/env bash
# CI smoke of xite_fast on one dependency set, in the set's own cached venv.
#   bash scripts/ci_smoke.sh oldest|image|newest [WHEEL]
# Sets: .ci/sets/<set>.txt, pins plus a `# python: X.Y` line (oldest = pyproject's floors on the oldest
# Python; image = torch 2.11 + transformers 5.17 on Python 3.12, like the CUDA images; newest = everything
# as new as pip resolves, upgraded eagerly on every run). The venv holds the set's stack WITHOUT xite_fast
# and is cached under ${XITE_CI_CACHE:-~/.cache/xite_fast-ci}/<set>-<hash of the set file, the Python and
# SETUP_VERSION>. Each run:
#  1. build: the wheel for the set's Python (`pip wheel`, scikit-build-core from a cached build venv,
#     incremental), unless WHEEL is given and has the set's Python tag;
#  2. install check: `pip install --dry-run --report` of WHEEL[assets] into the stack plans no change to an
#     installed package (no torch, no upgrade or downgrade); the real install then changes none either
#     (pip freeze before/after); `WHEEL[gpu]` beside the set's CUDA torch resolves without touching
#     torch, triton or nvidia-* (scripts/ci_install_check.py);
#  3. scripts/ci_smoke.py from a directory outside the checkout: extension, kernels vs references,
#     encode, the demo augment (--max-rows), XiteTrainer steps, save/load round trip;
#  4. xite_fast is uninstalled again (the cached venv stays the bare stack).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SET=${1:-}
[ -n "$SET" ] || { echo "usage: bash scripts/ci_smoke.sh oldest|image|newest [WHEEL]" >&2; exit 2; }
SETFILE=$ROOT/.ci/sets/$SET.txt
[ -f "$SETFILE" ] || { echo "no set file $SETFILE" >&2; exit 2; }
WHEEL=${2:-}
[ -z "$WHEEL" ] || WHEEL=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
pyver=$(sed -n 's/^# *python: *\([0-9.]*\).*/\1/p' "$SETFILE")
if [ -z "${PYTHON:-}" ]; then
  # pythonX.Y on PATH, else a pyenv / uv / deadsnakes install of it
  for c in "python${pyver:-3}" "$HOME"/.pyenv/versions/"$pyver".*/bin/python"$pyver" \
    "$HOME"/.local/share/uv/python/cpython-"$pyver".*/bin/python"$pyver" /usr/bin/python"$pyver"; do
    if "$c" -c 'import venv' >/dev/null 2>&1; then PYTHON=$c; break; fi
  done
  [ -n "${PYTHON:-}" ] || { echo "smoke[$SET]: no Python ${pyver} found (set PYTHON)" >&2; exit 2; }
fi
CACHE=${XITE_CI_CACHE:-$HOME/.cache/xite_fast-ci}
MAX_ROWS=${XITE_SMOKE_MAX_ROWS:-200}
SETUP_VERSION=1
# a plain user's pip: no machine-wide constraint file, extra index or local wheel folder
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_CONSTRAINT || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

key=$({ cat "$SETFILE"; "$PYTHON" -VV; echo "$SETUP_VERSION"; } | sha256sum | cut -c1-12)
VENV=$CACHE/$SET-$key
PY=$VENV/bin/python
t0=$SECONDS
if [ ! -f "$VENV/.ready" ]; then
  echo "smoke[$SET]: building the cached venv $VENV"
  for old in "$CACHE/$SET"-*; do [ -e "$old" ] && rm -rf "$old"; done
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi
TMP=$(mktemp -d /tmp/xite_ci_smoke.XXXXXX)
trap '"$PY" -m pip uninstall -q -y xite_fast >/dev/null 2>&1 || true; rm -rf "$TMP"' EXIT

# 1. build
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
case "$(basename "${WHEEL:-none}")" in
  *-"$tag"-"$tag"-*) ;;
  *)
    t=$SECONDS
    # a small cached build venv per Python (scikit-build-core, pybind11, ninja) and a CMake build folder
    # per checkout path and Python: a rerun recompiles only what changed (an isolated build's temporary
    # paths would recompile everything)
    benv=$CACHE/build/env-$tag
    if [ ! -f "$benv/.ready" ]; then
      rm -rf "$benv"
      "$PYTHON" -m venv "$benv"
      "$benv/bin/python" -m pip install -q --upgrade pip
      "$benv/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" ninja
      touch "$benv/.ready"
    fi
    bdir=$CACHE/build/$tag-$(echo "$ROOT" | sha256sum | cut -c1-8)
    "$benv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$TMP/wheel" \
      --config-settings=build-dir="$bdir" "$ROOT"
    WHEEL=$(ls "$TMP"/wheel/xite_fast-*.whl)
    echo "smoke[$SET]: built $(basename "$WHEEL") ($((SECONDS - t))s)"
    ;;
esac

# the set's stack: its pins plus whatever else the wheel's core and [assets] need, without xite_fast
t=$SECONDS
if [ ! -f "$VENV/.ready" ]; then
  "$PY" -m pip install -q -r "$SETFILE" "$WHEEL[assets]"
  "$PY" -m pip uninstall -q -y xite_fast
  touch "$VENV/.ready"
elif [ "$SET" = newest ]; then
  "$PY" -m pip install -q --upgrade --upgrade-strategy eager "$WHEEL[assets]"
  "$PY" -m pip uninstall -q -y xite_fast
fi
echo "smoke[$SET]: stack ready ($((SECONDS - t))s, $(du -sh "$VENV" | cut -f1))"

# 2. install check
"$PY" -m pip freeze --all > "$TMP/before.txt"
"$PY" -m pip install -q --dry-run --report "$TMP/core.json" "$WHEEL[assets]"
"$PY" -m pip install -q --dry-run --report "$TMP/gpu.json" "$WHEEL[gpu]"
"$PY" "$ROOT/scripts/ci_install_check.py" "$TMP/before.txt" "$TMP/core.json" "$TMP/gpu.json"
"$PY" -m pip install -q "$WHEEL[assets]"
"$PY" -m pip freeze --all > "$TMP/after.txt"
"$PY" -m pip check
if ! diff <(grep -v -i '^xite[-_]fast' "$TMP/before.txt") <(grep -v -i '^xite[-_]fast' "$TMP/after.txt"); then
  echo "smoke[$SET]: installing the wheel changed the packages above" >&2
  exit 1
fi
echo "smoke[$SET]: install check ok (the wheel added only xite_fast; [gpu] leaves torch/triton alone)"

# 3. the smoke, from outside the checkout
cd "$TMP"
"$PY" "$ROOT/scripts/ci_smoke.py" --max-rows "$MAX_ROWS"
echo "smoke[$SET]: passed in $((SECONDS - t0))s"
