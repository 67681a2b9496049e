#!/usr/bin/env bash
# The test command: sets up ./.venv if needed, then runs the whole CPU test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/kernels -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
exec python -m pytest -q "$@"
