#!/usr/bin/env bash
# The main job: sets up ./.venv if needed, then runs the default scaling study on the embedded
# corpus (the Python standard library's own sources): Transformer++, Mamba-2, GLA and a
# Mamba-2/attention hybrid at four sizes and three token budgets, fits their scaling laws and
# writes the report. About 30 minutes on 2 CPU cores. The report lands in
# runs/study/report.html (and report.md); running it again skips the finished runs and
# resumes an interrupted one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
out="${1:-runs/study}"
postformer study configs/study/default.yaml --out "$out"
echo
echo "report: $out/report.html (also $out/report.md; figures in $out/figures/)"
