"""Synthetic IsoFLOP studies whose answer is known, for testing the analysis.

The baseline follows Chinchilla's fitted law L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann
et al. 2022, Approach 3), with C = 6ND. An architecture with efficiency factor m has the
baseline's loss at m times the data, L_m(N, D) = L(N, m D): minimising over N at fixed C,
its IsoFLOP minima lie on the baseline's frontier shifted by m in compute,
L_m*(C) = L*(m C), which is exactly the law the joint fit assumes, with the true m.

Noise has the structure of a real study: one log-normal term per trajectory (a seed's run
and the cooldowns branched off it, shared across the budgets a size appears in) and one per
run. The middle size of each budget gets extra seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def law(N, D):
    return E + A / np.asarray(N, float) ** ALPHA + B / np.asarray(D, float) ** BETA


def optimal_n(C: float) -> float:
    """The baseline's compute-optimal N at C = 6ND (on a fine grid)."""
    Ns = np.geomspace(1e5, 1e12, 20000)
    return float(Ns[np.argmin(law(Ns, C / (6 * Ns)))])


def frontier(C, m: float = 1.0):
    """The true IsoFLOP minimum loss of an arch with efficiency m at compute C."""
    return np.array([law(n, m * c / (6 * n)) for c in np.atleast_1d(C) for n in [optimal_n(m * c)]])


def simulate(effs: dict[str, float], seed: int = 0, *, budgets=(1e18, 4e18, 1.6e19),
             n_sizes: int = 5, span: float = 2.2, sd_traj: float = 0.004, sd_run: float = 0.002,
             extra_seeds: int = 2, tune: bool = False) -> pd.DataFrame:
    """A results table: for each arch and budget, ``n_sizes`` sizes log-spaced over
    ``[N_opt / span, N_opt * span]`` around the baseline's optimum (with a random shift of up
    to 20%, the same for every arch), each trained to D = C / (6N); the middle size with
    ``extra_seeds`` more seeds. Columns: arch, size, N, N_non_emb, D, C, C_6ND, loss, seed,
    budget_flops, trajectory, stage, tokens_per_s (and lr, for ``tune`` rows)."""
    rng = np.random.default_rng(seed)
    rows = []
    shift = {b: np.exp(rng.uniform(-0.2, 0.2)) for b in budgets}
    for arch, m in effs.items():
        traj = {}
        for b in budgets:
            sizes = optimal_n(b) * shift[b] * np.geomspace(1 / span, span, n_sizes)
            for i, N in enumerate(sizes):
                seeds = [0] + (list(range(1, 1 + extra_seeds)) if i == n_sizes // 2 else [])
                for s in seeds:
                    key = (int(round(float(np.log(N)) * 1000)), s)
                    if key not in traj:
                        traj[key] = rng.standard_normal() * sd_traj
                    D = b / (6 * N)
                    loss = law(N, m * D) * np.exp(traj[key] + rng.standard_normal() * sd_run)
                    rows.append({"arch": arch, "size": f"n{key[0]}", "N": N, "N_non_emb": 0.9 * N,
                                 "D": D, "C": b, "C_6ND": 6 * N * D, "loss": loss, "seed": s,
                                 "budget_flops": b, "trajectory": f"{key[0]}-s{s}",
                                 "stage": "main", "tokens_per_s": 1e6})
        if tune:
            N0 = optimal_n(min(budgets)) / 2
            for N in (N0, 4 * N0):
                best = 3e-3 * (N / N0) ** -0.3
                for lr in best * 2.0 ** np.arange(-2, 3):
                    D = 20 * N
                    loss = law(N, m * D) + 0.05 * np.log(lr / best) ** 2
                    rows.append({"arch": arch, "size": f"t{int(N)}", "N": N, "N_non_emb": 0.9 * N,
                                 "D": D, "C": 6 * N * D, "C_6ND": 6 * N * D, "loss": loss,
                                 "seed": 0, "budget_flops": np.nan, "trajectory": f"tune-{lr:.3g}",
                                 "stage": "tune", "tokens_per_s": 1e6, "lr": lr})
    df = pd.DataFrame(rows)
    if "lr" not in df:
        df["lr"] = np.nan
    return df
