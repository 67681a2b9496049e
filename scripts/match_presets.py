"""Print the (n_layers, d_ff) table that matches every preset's parameter count to Transformer++.

    python scripts/match_presets.py          # paste the printed _MATCHED into arch/config.py

The count compared is the one without embeddings (Kaplan's N), which does not depend on the
vocabulary. An arch whose blocks have no MLP is matched by depth (the number of layers closest
to the target, at least one full pattern); the others keep the Transformer++ depth and are matched
by the SwiGLU width d_ff (a multiple of 64; of 16 for tiny and small), which the parameter count
is linear in. Presets already within 5% (10% for depths) keep the shape of
their paper (Mamba: twice the layers).
"""

from __future__ import annotations

from postformer.arch.config import ARCHS, PRESETS, ModelConfig
from postformer.arch.flops import param_counts

#: presets within this relative distance of Transformer++ keep their paper's shape: MLP widths
#: are free to adjust, so they are matched closer than depths
TOLERANCE_D_FF = 0.05
TOLERANCE_DEPTH = 0.10


def n_nonemb(fields: dict) -> int:
    return param_counts(ModelConfig(**fields))[1]


def match(arch: str, size: str) -> tuple[tuple[int | None, int | None], float]:
    base = dict(PRESETS[arch][size])
    base.pop("d_ff", None)
    target = n_nonemb(PRESETS["transformer"][size])
    cfg = ModelConfig(**base)
    L = PRESETS["transformer"][size]["n_layers"]
    has_mlp = any(cfg.block_has_mlp(m) for m in cfg.pattern)
    if abs(n_nonemb(base) / target - 1) <= (TOLERANCE_D_FF if has_mlp else TOLERANCE_DEPTH):
        return (None, None), n_nonemb(base) / target  # the defaults already match
    if not has_mlp:
        best = min(range(len(cfg.pattern), 3 * L + 1), key=lambda n: abs(n_nonemb({**base, "n_layers": n}) - target))
        return (best, None), n_nonemb({**base, "n_layers": best}) / target
    n_layers = max(L, len(cfg.pattern))
    base["n_layers"] = n_layers
    step = 16 if size in ("tiny", "small") else 64
    a, b = n_nonemb({**base, "d_ff": step}), n_nonemb({**base, "d_ff": 2 * step})
    slope = (b - a) / step
    ff = max(step, step * round((step + (target - a) / slope) / step))
    return (None, ff), n_nonemb({**base, "d_ff": ff}) / target


def main() -> None:
    print("_MATCHED: dict[str, dict[str, tuple[int | None, int | None]]] = {")
    for arch in ARCHS:
        if arch == "transformer":
            continue
        row = {}
        for size in PRESETS[arch]:
            (n, ff), ratio = match(arch, size)
            row[size] = (n, ff)
            print(f"    # {arch} {size}: {ratio:.3f} x Transformer++", flush=True)
        if any(v != (None, None) for v in row.values()):
            print(f"    \"{arch}\": {{" + ", ".join(f"\"{s}\": {v}" for s, v in row.items()) + "},")
    print("}")


if __name__ == "__main__":
    main()
