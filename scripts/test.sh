#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
exec .venv/bin/python -m pytest "$@"
