"""gla's Triton phases one at a time against their PyTorch twins in ``kernels/gla/chunk.py``.

Each phase's host-side launcher (``kernels/gla/triton/__init__.py``) runs under the interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 without CUDA) on packed rows, and the twin runs in
float64 one sequence at a time in the chunk layout, with chunks of the kernels' 64 steps. Each
phase gets the twin's output of the phase before it, so a failure names the phase: the
chunk-local cumulative gates (``chunk_cumsum``, shared with delta_rule), the state entering every
chunk and the final states (``_state_fwd``), the output given the entering states
(``_scores_fwd`` / ``_output_fwd``). Cases: a dense batch (two sequences of 130 steps) and a
packed one (lengths 5, 0, 65, 125: a short chunk, an empty sequence, a one-step last chunk),
with no gate, a scalar and a per-key gate. fp32 kernels against float64: 1e-5 relative error
(they reach ~1e-7; a wrong chunk boundary, decay or state is off by O(1)).
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

twin = importlib.import_module("postformer.kernels.gla.chunk")
tri = importlib.import_module("postformer.kernels.gla.triton")

H, K, V, SCALE = 2, 20, 12, 0.3
OFFSETS = {"dense": (0, 130, 260), "packed": (0, 5, 5, 70, 195)}
GATES = ["none", "scalar", "per_key"]
TOL = 1e-5


def inputs(offsets, gate, seed=0):
    """Packed rows: q, k ``[rows, H, K]``, v ``[rows, H, V]``, g None / ``[rows, H]`` /
    ``[rows, H, K]`` (log gates in about (-4, 0)), h0 ``[n_seqs, H, K, V]``."""
    gen = torch.Generator().manual_seed(seed)
    rows = offsets[-1]
    q, k = (torch.randn(rows, H, K, generator=gen) for _ in range(2))
    v = torch.randn(rows, H, V, generator=gen)
    shape = {"none": None, "scalar": (rows, H), "per_key": (rows, H, K)}[gate]
    g = None if shape is None else F.logsigmoid(torch.randn(shape, generator=gen) + 1)
    h0 = torch.randn(len(offsets) - 1, H, K, V, generator=gen)
    return q, k, v, g, h0


def seqs(x, offsets):
    """Packed rows -> each sequence as a float64 batch of one ``[1, L, H, *D]`` (None stays None)."""
    return [None if x is None else x[a:b].double().unsqueeze(0) for a, b in zip(offsets[:-1], offsets[1:])]


def rows(x, length):
    """The twin's chunk layout ``[1, H, N, C, *D]`` -> rows ``[L, H, *D]``."""
    return x.movedim(1, 3).flatten(1, 2)[0, :length]


def chunks(x):
    """The twin's ``[1, H, N, ...]`` -> the kernels' chunk-major ``[N, H, ...]``."""
    return x[0].transpose(0, 1)


def twin_phases(q, k, v, g, h0, offsets):
    """Every sequence through the twin phases in float64: G in rows, the entering states of
    every chunk (concatenated in the kernels' chunk order), the final states and the output
    given the entering states, plus the entering states in fp32 (the kernels' input)."""
    Gs, S_ins, S_Ts, os = [], [], [], []
    for i, (qs, ks, vs, gs) in enumerate(zip(*(seqs(x, offsets) for x in (q, k, v, g)))):
        L = qs.shape[1]
        if L == 0:
            S_Ts.append(h0[i].double())
            continue
        qc, kc, vc = (to_chunks(x, tri.BT) for x in (qs, ks, vs))
        G = None if gs is None else twin.chunk_gates(gs, tri.BT)
        S_in, S_T = twin.state_pass(kc, vc, G, h0[i : i + 1].double())
        qc = qc * SCALE
        o = twin.output(qc, vc, G, twin.scores(qc, kc, G), S_in)
        Gs.append(None if G is None else rows(G, L))
        S_ins.append(chunks(S_in))
        S_Ts.append(S_T[0])
        os.append(rows(o, L))
    G = None if g is None else torch.cat(Gs)
    return G, torch.cat(S_ins), torch.stack(S_Ts), torch.cat(os)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("case", list(OFFSETS))
def test_phases_match_their_twins(case, gate):
    offsets = OFFSETS[case]
    q, k, v, g, h0 = inputs(offsets, gate)
    G64, S_in64, S_T64, o64 = twin_phases(q, k, v, g, h0, offsets)
    plan = chunk_plan(offsets, q.device, tri.BT)
    GATE, prec = tri._gate_kind(g), tri.dot_precision(q.dtype)
    assert S_in64.shape == (plan.n_chunks, H, K, V)

    # 1. chunk-local cumulative gates, in the packed row layout
    gc = tri._chunk_gates(g, plan)
    if g is None:
        assert gc is None
    else:
        assert gc.shape == g.shape and gc.dtype == torch.float32
        assert rel_err(gc, G64) < 1e-6, "chunk_cumsum"
    G = None if g is None else G64.float().contiguous()  # the twin's G from here on

    # 2. the state pass: the state entering every chunk, and the final states
    hbuf, ht = tri._chunk_states(k, v, G, h0, plan, H, K, V, GATE, prec, want_ht=True)
    assert rel_err(hbuf, S_in64) < TOL, "_state_fwd: entering states"
    assert rel_err(ht, S_T64) < TOL, "_state_fwd: final states"

    # 3. the output given the (twin's) entering states
    o = torch.empty(q.shape[0], H, V)
    tri._output(q, k, v, G, S_in64.float().contiguous(), o, SCALE, plan, GATE, prec)
    assert rel_err(o, o64) < TOL, "_output_fwd"


def test_chunk_cumsum_strong_decay_exact_per_chunk():
    """Gates down to -10 per step (Mamba-2's range), packed: G restarts at each chunk's first row,
    so |G| stays under 640 and the fp32 sum matches float64 to fp32 rounding."""
    offsets = (0, 64, 64, 200)
    gen = torch.Generator().manual_seed(5)
    g = -10 * torch.rand(offsets[-1], H, K, generator=gen)
    plan = chunk_plan(offsets, g.device, tri.BT)
    G = tri._chunk_gates(g, plan)
    G64 = torch.cat([rows(twin.chunk_gates(gs, tri.BT), gs.shape[1]) for gs in seqs(g, offsets) if gs.shape[1]])
    assert (G64 >= -640).all()
    assert rel_err(G, G64) < 1e-6
    assert torch.equal(G[64], g[64]) and torch.equal(G[128], g[128])  # chunk starts: G = g there
