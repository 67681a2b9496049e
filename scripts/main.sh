#!/usr/bin/env bash
# The main job: sets up ./.venv if needed, trains the tiny Transformer++ and the tiny Mamba-2 on
# the embedded corpus (the Python standard library's own sources) and prints their validation
# bits-per-byte side by side. Runs land in runs/main/<config>/; a finished run is not redone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
# 300 steps instead of the smoke configs' 50: long enough for the two to separate (~1 min each).
exec postformer compare configs/smoke/transformer.yaml configs/smoke/mamba2.yaml \
    --max_steps 300 --out "${1:-runs/main}"
