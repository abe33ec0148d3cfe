#!/usr/bin/env bash
# Set up everything, then run the whole test suite (unit, real MinIO + FUSE, real clients).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
