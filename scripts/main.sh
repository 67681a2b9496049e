#!/usr/bin/env bash
# The main job: sets up ./.venv if needed, then runs the default scaling study on the embedded
# corpus (the Python standard library's own sources): Transformer++ against Mamba-2, Gated
# DeltaNet, the [gdn, gdn, gdn, attn] hybrid and a conv control, with LR tuning, three IsoFLOP
# budgets and 3 seeds at the middle of each (configs/study/default.yaml), then writes the
# verdict: runs/study/report.html (report.md, report.json, figures/). Running it again skips
# the finished runs and resumes an interrupted one. Two runs train side by side
# (POSTFORMER_JOBS, default 2: one per core).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
out="${1:-runs/study}"
postformer study configs/study/default.yaml --out "$out" --jobs "${POSTFORMER_JOBS:-2}"
echo
echo "report: $out/report.html (also $out/report.md, report.json; figures in $out/figures/)"
