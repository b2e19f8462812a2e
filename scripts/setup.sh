#!/usr/bin/env bash
# Set up edh on a fresh Debian 12 machine: data packages, a virtual environment, edh and its tools.
# Idempotent: running it again only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# EDH_EXTRA_APT adds packages (the tests add chromium, for the browser test of the demo report).
APT_PACKAGES="dataset-fashion-mnist trans-de-en espeak-ng ${EDH_EXTRA_APT:-}"

if [ "${EDH_SKIP_APT:-0}" != "1" ]; then
  missing=""
  for pkg in $APT_PACKAGES; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing Debian data packages:$missing"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing; } >/dev/null; then
      echo "setup: could not install$missing; fashion-mnist / de-en will say how to get their files" >&2
    fi
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v -i "warning" || true
# The CPU machines here carry these two wheels on disk; pip takes them from there.
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v -i "warning" || true
python -m pip install -q -e ".[dev]" 2>&1 | grep -v -i "warning" || true
python -c "import edh, torch; print(f'setup: edh {edh.__version__}, torch {torch.__version__} ready in .venv')"
