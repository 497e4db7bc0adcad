#!/usr/bin/env bash
# Install the fulfiller into ./.venv on a Debian machine.
# Usage: scripts/install.sh [--test]   (--test adds what the test suite needs)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# libmagic sniffs masters' real types; the test suite also needs PostgreSQL
# (fleet-mode tests start a throwaway cluster when none is reachable) and
# Chromium (the operator console's browser test) and Caddy (the deployment
# example's Caddyfile is checked with it).
missing=()
ldconfig -p | grep -q 'libmagic\.so\.1' || missing+=(libmagic1)
if [ "${1:-}" = "--test" ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v caddy >/dev/null 2>&1 || missing+=(caddy)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
