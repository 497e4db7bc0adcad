#!/usr/bin/env bash
# Install the fulfiller, then run the whole loop locally with sample masters.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/fulfiller demo "$@"
