#!/usr/bin/env bash
# Creates ./.venv and installs postformer with its dev tools and fla-core (peer checks), once;
# later calls reuse it.
# Sourced by scripts/main.sh and scripts/test.sh. Set PYTHON to choose the interpreter.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.postformer-installed"
want="$(cat "$root/pyproject.toml" "$root/setup.py" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "== setting up $venv (once) =="
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # torch first, pinned: here it resolves to the CPU build that lies on disk; on a CUDA
    # machine the same pin takes PyPI's CUDA build. Nothing else changes between the two.
    "$venv/bin/python" -m pip install -q "torch==2.13.0"
    "$venv/bin/python" -m pip install -q -e "$root[dev,peers]"
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
