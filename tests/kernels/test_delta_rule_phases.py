"""delta_rule's Triton phases one at a time against their PyTorch twins in
``kernels/delta_rule/chunk.py``.

Each phase's host-side launcher (``kernels/delta_rule/triton/__init__.py``) runs under the
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA) on packed rows, and the
twin runs in float64 one sequence at a time in the chunk layout, with the kernels' 64-step
chunks. Each phase gets the twin's output of the phase before it, so a failure names the phase:
the chunk-local cumulative gates in the chunk layout (``chunk_cumsum``, shared with gla), the
WY/UT preparation (``_wy_fwd``: the inverse Tm, U, W), the state pass (``_state_fwd``: the state
entering every chunk, the written values u, the final states) and the output (``_output_fwd``).
Cases: a dense batch (two sequences of 130 steps) and a packed one (lengths 5, 0, 65, 125),
with and without gates. fp32 kernels against float64: 1e-5 relative error (they reach
~1e-7; a wrong chunk boundary, decay or state is off by O(1)).
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from kernel_testing import rel_err  # noqa: E402

from postformer.kernels._common import to_chunks  # noqa: E402
from postformer.kernels._triton.plan import chunk_plan  # noqa: E402

twin = importlib.import_module("postformer.kernels.delta_rule.chunk")
tri = importlib.import_module("postformer.kernels.delta_rule.triton")

H, K, V, SCALE, C = 2, 20, 12, 0.3, 64
OFFSETS = {"dense": (0, 130, 260), "packed": (0, 5, 5, 70, 195)}
TOL = 1e-5


def inputs(offsets, gated, seed=0):
    """Packed rows: q, k ``[rows, H, K]`` (k L2-normalised), v ``[rows, H, V]``, beta in (0, 1)
    and g (log gates in about (-4, 0)) ``[rows, H]``, h0 ``[n_seqs, H, K, V]``."""
    gen = torch.Generator().manual_seed(seed)
    rows = offsets[-1]
    q = torch.randn(rows, H, K, generator=gen)
    k = F.normalize(torch.randn(rows, H, K, generator=gen), dim=-1)
    v = torch.randn(rows, H, V, generator=gen)
    beta = torch.sigmoid(torch.randn(rows, H, generator=gen))
    g = F.logsigmoid(torch.randn(rows, H, generator=gen) + 1) if gated else None
    h0 = torch.randn(len(offsets) - 1, H, K, V, generator=gen)
    return q, k, v, beta, g, h0


def seqs(x, offsets):
    """Packed rows -> the non-empty sequences as float64 chunk layouts ``[1, H, N, C, *D]``."""
    return [to_chunks(x[a:b].double().unsqueeze(0), C)
            for a, b in zip(offsets[:-1], offsets[1:]) if b > a]


def rows(x, length):
    """The twin's chunk layout ``[1, H, N, C, *D]`` -> rows ``[L, H, *D]``."""
    return x.movedim(1, 3).flatten(1, 2)[0, :length]


def chunks(x):
    """The twin's ``[1, H, N, ...]`` -> the kernels' chunk-major ``[N, H, ...]``."""
    return x[0].transpose(0, 1)


def twin_phases(q, k, v, beta, g, h0, offsets):
    """Every non-empty sequence through the twin phases in float64; per-row tensors back in rows,
    per-chunk ones in the kernels' chunk order: G ``[n_chunks, C, H]``, Tm, U, W, the entering
    states, u, the final states (the initial one for an empty sequence) and o."""
    out = {name: [] for name in ("G", "Tm", "U", "W", "S_in", "u", "o")}
    S_T = [h0[i].double() for i in range(len(offsets) - 1)]
    lens = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    nonempty = [i for i, n in enumerate(lens) if n]
    for i, qs, ks, vs, bs in zip(nonempty, *(seqs(x, offsets) for x in (q, k, v, beta))):
        L = lens[i]
        G = None if g is None else twin.chunk_gates(g[offsets[i]:offsets[i + 1]].double().unsqueeze(0), C)
        U, W = twin.wy_prepare(ks, vs, bs, G)
        S_in, u, S_T[i] = twin.state_pass(ks, G, U, W, h0[i : i + 1].double())
        o = twin.output(qs, ks, G, u, S_in, SCALE)
        S_T[i] = S_T[i][0]
        if G is not None:
            out["G"].append(chunks(G).transpose(1, 2))  # [N, C, H]
        out["Tm"].append(chunks(twin.wy_inverse(ks, bs, G)))
        for name, x in (("U", U), ("W", W), ("u", u), ("o", o)):
            out[name].append(rows(x, L))
        out["S_in"].append(chunks(S_in))
    out = {name: torch.cat(x) if x else None for name, x in out.items()}
    out["S_T"] = torch.stack(S_T)
    return out


def f32(x):
    return x.float().contiguous()


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("case", list(OFFSETS))
def test_phases_match_their_twins(case, gated):
    offsets = OFFSETS[case]
    q, k, v, beta, g, h0 = inputs(offsets, gated)
    ref = twin_phases(q, k, v, beta, g, h0, offsets)
    plan = chunk_plan(offsets, q.device, tri.CHUNK)
    dot = tri._dot_mode(q)
    assert ref["S_in"].shape == (plan.n_chunks, H, K, V)

    # 1. chunk-local cumulative gates, in the chunk layout (padded rows repeat the chunk's last G)
    G = tri._chunk_gates(g, plan)
    if g is None:
        assert G is None
    else:
        assert G.shape == (plan.n_chunks * C, H) and G.dtype == torch.float32
        assert rel_err(G.view(plan.n_chunks, C, H), ref["G"]) < 1e-6, "chunk_cumsum"
        G = f32(ref["G"]).view(-1, H)  # the twin's G from here on

    # 2. WY/UT preparation: Tm = (I + A)^{-1} per chunk (the identity on padded rows), U, W
    Tm, U, W = tri._wy_prepare(k, v, beta, G, plan, dot)
    for i in range(plan.n_chunks):  # each chunk on its own: a well-conditioned one hides nothing
        assert rel_err(Tm[i], ref["Tm"][i]) < TOL, f"_wy_fwd: Tm of chunk {i}"
    assert rel_err(U, ref["U"]) < TOL, "_wy_fwd: U"
    assert rel_err(W, ref["W"]) < TOL, "_wy_fwd: W"

    # 3. the state pass from the twin's U and W
    S_in, u, S_T = tri._state_pass(k, G, f32(ref["U"]), f32(ref["W"]), h0, plan, dot)
    assert rel_err(S_in, ref["S_in"]) < TOL, "_state_fwd: entering states"
    assert rel_err(u, ref["u"]) < TOL, "_state_fwd: written values u"
    assert rel_err(S_T, ref["S_T"]) < TOL, "_state_fwd: final states"

    # 4. the output from the twin's entering states and written values
    o = tri._output(q, k, G, f32(ref["u"]), f32(ref["S_in"]), SCALE, plan)
    assert rel_err(o, ref["o"]) < TOL, "_output_fwd"
