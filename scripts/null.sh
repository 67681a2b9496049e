#!/usr/bin/env bash
# The calibration study (configs/study/null.yaml): the baseline against itself under another
# seed stream (A/A) and against itself at a quarter of its tuned LR (a known handicap). Reuses
# the baseline's finished runs of the main job's folder (default runs/study) when they are
# there, so only the two other arms train. Usage: bash scripts/null.sh [OUT] [MAIN_OUT]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
out="${1:-runs/null}"
main_out="${2:-runs/study}"
mkdir -p "$out/tune" "$out/runs"
for stage in tune runs; do
  for run in "$main_out/$stage"/transformer-w*; do
    [ -e "$run/result.json" ] || continue
    dest="$out/$stage/$(basename "$run")"
    [ -e "$dest/result.json" ] && continue
    rm -rf "$dest"  # laid out (or half-trained) here: the main job's finished run replaces it
    cp -r "$run" "$dest"
  done
done
postformer study configs/study/null.yaml --out "$out" --jobs "${POSTFORMER_JOBS:-2}"
echo
echo "report: $out/report.html (also $out/report.md, report.json)"
