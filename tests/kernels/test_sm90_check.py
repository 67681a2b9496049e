"""scripts/sm90_check.py compiles one small kernel (rms_norm's forward) for sm_90 offline.

Runs the script's function in a subprocess without TRITON_INTERPRET (tests/conftest.py sets it on
CPU machines, and Triton reads it when the kernel modules are imported)."""

from __future__ import annotations

import json
import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _tools() -> bool:
    try:
        import triton
    except Exception:
        return False
    bin_dir = osp.join(osp.dirname(triton.__file__), "backends", "nvidia", "bin")
    return all(osp.exists(osp.join(bin_dir, t)) for t in ("ptxas", "cuobjdump"))


@pytest.mark.skipif(not _tools(), reason="needs triton with its bundled ptxas and cuobjdump")
def test_rms_norm_fwd_compiles_for_sm90(tmp_path):
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import sm90_check as s; "
        "print(json.dumps(s.check_op('rms_norm', kernels=['_fwd'], T=64)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    p = subprocess.run([sys.executable, "-c", code, osp.join(ROOT, "scripts")], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    assert rows and all("error" not in r for r in rows), rows
    for r in rows:
        assert r["kernel"] == "_fwd" and r["regs"] > 0 and r["stack"] >= 0
        assert {"FFMA", "HMMA", "HGMMA", "LDL", "STL"} <= set(r)
