"""arch.flops against independent counts: the model's own linear layers, Kaplan/Chinchilla, and
PyTorch's FlopCounterMode running the model's forward."""

import pytest
import torch
from mixer_testing import not_matmul_flops
from torch import nn

from postformer.arch import LanguageModel, ModelConfig
from postformer.arch.flops import (
    flops_breakdown,
    flops_per_token,
    flops_per_token_by_convention,
    forward_flops_breakdown,
    forward_flops_per_token,
    matmul_params,
    param_counts,
)

CONFIGS = {
    "transformer": ModelConfig(d_model=128, n_layers=4, pattern=["attn"], mixers={"attn": {"n_heads": 4}}),
    "mamba2": ModelConfig(d_model=128, n_layers=4, pattern=["mamba2"],
                          mixers={"mamba2": {"d_state": 16, "head_dim": 32}}),
    "gla": ModelConfig(d_model=128, n_layers=4, pattern=["gla"]),
    "hybrid": ModelConfig(d_model=128, n_layers=4, pattern=["mamba2", "mamba2", "mamba2", "attn"],
                          mixers={"mamba2": {"d_state": 16, "head_dim": 32}, "attn": {"n_heads": 4}}),
    "swa": ModelConfig(d_model=128, n_layers=2, pattern=["swa"], mixers={"swa": {"window": 32}}),
    "mamba": ModelConfig(d_model=128, n_layers=2, pattern=["mamba"]),
    "retnet": ModelConfig(d_model=128, n_layers=2, pattern=["retnet"]),
    "deltanet": ModelConfig(d_model=128, n_layers=2, pattern=["deltanet"]),
    "gdn": ModelConfig(d_model=128, n_layers=2, pattern=["gdn"]),
    "hgrn2": ModelConfig(d_model=128, n_layers=2, pattern=["hgrn2"]),
    "rglru": ModelConfig(d_model=128, n_layers=2, pattern=["rglru"], mixers={"rglru": {"n_heads": 2}}),
    "griffin": ModelConfig(d_model=128, n_layers=3, pattern=["rglru", "rglru", "swa"]),
    "gdn-hybrid": ModelConfig(d_model=128, n_layers=4, pattern=["gdn", "gdn", "gdn", "attn"]),
    "gated_attn": ModelConfig(d_model=128, n_layers=2, pattern=["gated_attn"]),
    "gated_attn-headwise": ModelConfig(d_model=128, n_layers=2, pattern=["gated_attn"],
                                       mixers={"gated_attn": {"gate": "headwise"}}),
    "mlstm": ModelConfig(d_model=128, n_layers=2, pattern=["mlstm"]),
    "rwkv7": ModelConfig(d_model=128, n_layers=2, pattern=["rwkv7"], mlp_kind="rwkv7"),
    "rwkv7-swiglu": ModelConfig(d_model=128, n_layers=2, pattern=["rwkv7"]),
    "mamba3": ModelConfig(d_model=128, n_layers=2, pattern=["mamba3"],
                          mixers={"mamba3": {"d_state": 16, "head_dim": 32, "ngroups": 2}}),
    "kda": ModelConfig(d_model=128, n_layers=2, pattern=["kda"], mixers={"kda": {"n_heads": 2}}),
    "kimi-linear": ModelConfig(d_model=128, n_layers=4, pattern=["kda", "kda", "kda", "attn"]),
    "deltaproduct": ModelConfig(d_model=128, n_layers=2, pattern=["deltaproduct"],
                                mixers={"deltaproduct": {"n_householder": 3}}),
}
#: recurrences whose work is elementwise (no matmul): FlopCounterMode does not see them
ELEMENTWISE_RECURRENCE = {"mamba", "rglru"}


def linear_weights(model: nn.Module) -> int:
    """Weights of every nn.Linear, the LM head included even when tied (its matmul happens),
    RG-LRU's block-diagonal gate matrices (a matmul written as an einsum) and RWKV-7's LoRA
    factors (matmuls with parameters)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return linear + sum(p.numel() for name, p in model.named_parameters()
                        if name.endswith(("gate_weight", "lora.w1", "lora.w2")))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_linear_part_is_six_times_matmul_params(name):
    cfg = CONFIGS[name]
    model = LanguageModel(cfg)
    expected = linear_weights(model)
    parts = flops_breakdown(cfg, 512)
    assert parts["linear"] + parts["lm_head"] == 6 * expected
    assert matmul_params(cfg) == expected
    assert param_counts(cfg) == (model.num_params(), model.num_params(include_embeddings=False))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matmul_work_matches_pytorch_flop_counter(name):
    """FlopCounterMode counts every matmul and conv the forward actually runs (through the chunk
    paths of the ops), independently of our formulas. It does not see SDPA on CPU nor
    elementwise work, so attention, elementwise scans and the non-matmul parts of the chunked
    recurrences (``not_matmul_flops``) are left out of the comparison."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg, T = CONFIGS[name], 128
    torch.manual_seed(0)
    model = LanguageModel(cfg).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (1, T)))
    parts = {k: v / 3 for k, v in flops_breakdown(cfg, T).items()}  # forward
    expected = parts["linear"] + parts["lm_head"] + parts["conv"]
    if not set(cfg.pattern) & ELEMENTWISE_RECURRENCE:
        expected += parts["recurrence"] - not_matmul_flops(cfg, T)
    assert counter.get_total_flops() / T == pytest.approx(expected, rel=1e-3)


def test_dense_transformer_matches_kaplan_and_chinchilla():
    # GPT-3 125m shape at T = 2048, GPT-2 vocabulary: the textbook case.
    cfg = ModelConfig.from_preset("transformer", "125m", vocab_size=50257, tie_embeddings=False)
    T, L, d = 2048, cfg.n_layers, cfg.d_model
    N = param_counts(cfg)[1] + cfg.vocab_size * d  # non-embedding + head
    # Chinchilla (App. F) counts the full T x T scores and their reduction: 6N + 12 L T d.
    chinchilla = 6 * N + 12 * L * T * d
    assert flops_per_token(cfg, T) == pytest.approx(chinchilla, rel=0.02)
    # Kaplan et al. (2020, Table 1): 6N + 6 L T d, the causal average context.
    kaplan = 6 * N + 6 * L * T * d
    assert flops_per_token(cfg, T, causal=True) == pytest.approx(kaplan, rel=0.02)
    assert flops_per_token(cfg, T) == 3 * forward_flops_per_token(cfg, T)


def test_short_sequences_approach_six_n():
    cfg = CONFIGS["transformer"]
    N = matmul_params(cfg)
    assert flops_per_token(cfg, 1) == pytest.approx(6 * N, rel=0.01)
    # and the attention share grows with T
    assert flops_per_token(cfg, 4096) > 2 * flops_per_token(cfg, 1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_positive_and_linear_in_layers(name):
    cfg = CONFIGS[name]
    deeper = ModelConfig(**{**cfg.__dict__, "n_layers": 3 * cfg.n_layers})
    for T in (1, 100, 1024):
        parts, parts3 = flops_breakdown(cfg, T), flops_breakdown(deeper, T)
        assert all(v >= 0 for v in parts.values()) and flops_per_token(cfg, T) > 0
        for key in parts:
            expected = parts[key] if key == "lm_head" else 3 * parts[key]
            assert parts3[key] == pytest.approx(expected)
    if not set(cfg.pattern) <= {"attn", "swa", "gated_attn"}:
        assert flops_breakdown(cfg, 1024)["recurrence"] > 0
    if any(m in cfg.pattern for m in ("mamba2", "mamba", "deltanet", "gdn", "rglru", "deltaproduct", "kda")):
        assert flops_breakdown(cfg, 1024)["conv"] > 0


def test_recurrence_uses_the_chunk_sizes_of_the_chunk_path():
    # Mamba-2: scalar gate, chunks of 64; per head C^2 (K + V) + 2 C K V + K V MACs per chunk.
    cfg = ModelConfig(d_model=64, n_layers=1, pattern=["mamba2"], mixers={"mamba2": {"d_state": 16, "head_dim": 32}})
    H, K, V, C, T = 4, 16, 32, 64, 256
    per_token = (T // C) * (C * C * (K + V) + 2 * C * K * V + K * V) / T
    assert flops_breakdown(cfg, T)["recurrence"] == pytest.approx(6 * H * per_token)
    # GLA: per-key gates, chunks of 16; a ragged tail is padded to a whole chunk.
    cfg = ModelConfig(d_model=64, n_layers=1, pattern=["gla"], mixers={"gla": {"n_heads": 2}})
    H, K, V, C, T = 2, 16, 32, 16, 40
    per_token = 3 * (C * C * (K + V) + 2 * C * K * V + K * V) / T
    assert flops_breakdown(cfg, T)["recurrence"] == pytest.approx(6 * H * per_token)


def test_recurrent_cost_is_linear_in_length_attention_quadratic():
    for name, key in (("mamba2", "recurrence"), ("gla", "recurrence"), ("transformer", "attention")):
        cfg = CONFIGS[name]
        short, long = flops_breakdown(cfg, 1024)[key], flops_breakdown(cfg, 8192)[key]
        if key == "attention":
            assert long == pytest.approx(8 * short)  # per token, linear in T
        else:
            assert long == pytest.approx(short)  # per token, constant in T


def test_unknown_mixer_is_a_clear_error(monkeypatch):
    from postformer.arch import flops

    monkeypatch.delitem(flops.MIXER_MACS, "gla")
    with pytest.raises(ValueError, match="no FLOP count for mixer 'gla'"):
        flops_per_token(CONFIGS["gla"], 64)


def test_meta_build_costs_no_memory():
    cfg = ModelConfig.from_preset("transformer", "1.3b")
    n, n_non = param_counts(cfg)
    assert n > 1.2e9 and n - n_non == cfg.vocab_size * cfg.d_model
    assert torch.empty(0).device.type == "cpu"  # the meta device did not leak out


def test_sliding_window_caps_the_attention_context():
    swa, full = CONFIGS["swa"], CONFIGS["transformer"]
    W, d, L = 32, swa.d_model, swa.n_layers
    # beyond the window the per-token attention cost stops growing: 2 (QK^T, AV) x 2 FLOPs x 3 (training)
    for T in (64, 1024):
        assert flops_breakdown(swa, T)["attention"] == pytest.approx(12 * L * W * d)
    assert flops_breakdown(swa, 16)["attention"] == pytest.approx(12 * L * 16 * d)  # short: like full attention
    # causal: mean over t = 1..T of min(t, W)
    T = 100
    mean_ctx = sum(min(t, W) for t in range(1, T + 1)) / T
    assert flops_breakdown(swa, T, causal=True)["attention"] == pytest.approx(12 * L * mean_ctx * d)
    assert flops_breakdown(full, 16)["attention"] == pytest.approx(12 * full.n_layers * 16 * d)


# ------------------------------------------------- the causal convention for every mixer alike


def lower_pairs(C: int, *, diagonal: bool) -> int:
    """Pairs (i, j) of a C x C block with j <= i (``diagonal``) or j < i, by brute force."""
    return sum(1 for i in range(C) for j in range(C) if (j <= i if diagonal else j < i))


def chunk_shapes(cfg: ModelConfig) -> list[tuple[str, int, int, int, int, int]]:
    """(form, heads, K, V, chunk, sub-steps per token) of every chunked-recurrence layer of
    ``cfg``, read off the mixer options here, independently of arch.flops: the chunk lengths
    are the kernels' (64 scalar gate, 16 per-key gate, 16 DPLR)."""
    d, out = cfg.d_model, []
    for name in cfg.layer_mixers:
        o = cfg.mixer_options(name)
        if name in ("mamba2", "mamba3"):
            out.append(("gla", o.expand * d // o.head_dim, o.d_state, o.head_dim, 64, 1))
        elif name in ("gla", "retnet", "mlstm"):
            H = o.n_heads
            K, V = int(d * o.expand_k) // H, int(d * o.expand_v) // H + (name == "mlstm")
            out.append(("gla", H, K, V, 16 if name == "gla" else 64, 1))
        elif name == "hgrn2":
            out.append(("gla", d // o.expand_ratio, o.expand_ratio, o.expand_ratio, 16, 1))
        elif name in ("deltanet", "gdn", "kda", "deltaproduct"):
            K = o.head_dim
            out.append(("delta", o.n_heads, K, int(o.expand_v * K), 16 if name == "kda" else 64,
                        getattr(o, "n_householder", 1)))
        elif name == "rwkv7":
            out.append(("dplr", d // o.head_dim, o.head_dim, o.head_dim, 16, 1))
    return out


def per_chunk_macs(form: str, C: int, K: int, V: int, *, causal: bool) -> float:
    """MACs of one chunk of one head, each term written out. Causal: the products masked to
    ``i >= j`` over the lower triangle with its diagonal (le), those masked to ``i > j``
    (the delta rule's ``(beta k) k^T``, DPLR's ``b a^T``, ``b k^T``, ``M v``) without it (lt),
    and the unit-triangular solve's forward substitution: lt multiply-adds per column."""
    if causal:
        le, lt = lower_pairs(C, diagonal=True), lower_pairs(C, diagonal=False)
        solve = lt
    else:
        le = lt = C * C
        solve = C * C / 2
    state = 2 * C * K * V + K * V  # gla: k^T v, q S; a S + U. delta: W S, q S; the step's + S
    if form == "gla":  # q k^T, (.) v, state
        return le * K + le * V + state
    if form == "delta":  # q k^T, (beta k) k^T, solve, Kd^T [U | W], (Kd^T W) S, state, P u
        return le * K + lt * K + solve * (K + V) + C * K * (K + V) + K * K * V + state + le * V
    # dplr: b a^T, b k^T, q a^T, q k^T, M v, solve, a^T P, a^T R + k^T v, step, P S and q S, A u + Q v
    return (2 * lt * K + 2 * le * K + lt * V + solve * (K + V) + C * K * K + 2 * C * K * V
            + K * K * V + K * V + 2 * C * K * V + 2 * le * V)


def recurrence_flops(cfg: ModelConfig, T: int, *, causal: bool) -> float:
    """Training FLOPs per token of the chunked recurrences of ``cfg``: 2 FLOPs a MAC, 3 x forward,
    ragged last chunks padded."""
    total = 0.0
    for form, H, K, V, C, n in chunk_shapes(cfg):
        steps = T * n
        C = min(C, steps)
        n_chunks = -(-steps // C)
        total += H * n_chunks * per_chunk_macs(form, C, K, V, causal=causal) / T
    return 6 * total


CHUNKED = [name for name, cfg in CONFIGS.items() if chunk_shapes(cfg)]
ATTENTION = {"attn", "swa", "gated_attn"}


def test_lower_pairs_by_brute_force_are_the_masks_triangles():
    for C in (1, 2, 7, 16, 64):
        ones = torch.ones(C, C)
        assert lower_pairs(C, diagonal=True) == torch.tril(ones).sum() == C * (C + 1) / 2
        assert lower_pairs(C, diagonal=False) == torch.tril(ones, -1).sum() == C * (C - 1) / 2
    assert set(CHUNKED) >= {"mamba2", "mamba3", "mlstm", "gla", "retnet", "hgrn2", "deltanet",
                            "gdn", "kda", "deltaproduct", "rwkv7"}


@pytest.mark.parametrize("T", [128, 100, 7])
@pytest.mark.parametrize("name", CHUNKED)
def test_recurrence_counts_match_the_written_out_terms(name, T):
    """Both conventions against the terms written out above: full C x C blocks (today's numbers,
    which committed results depend on) and, under causal, the lower triangles only. T = 100
    leaves a ragged last chunk, T = 7 a single short one."""
    cfg = CONFIGS[name]
    assert flops_breakdown(cfg, T)["recurrence"] == pytest.approx(
        recurrence_flops(cfg, T, causal=False), rel=1e-12)
    assert flops_breakdown(cfg, T, causal=True)["recurrence"] == pytest.approx(
        recurrence_flops(cfg, T, causal=True), rel=1e-12)


@pytest.mark.parametrize("name", CHUNKED)
def test_causal_is_full_minus_the_masked_upper_triangles(name):
    """full - causal = exactly the MACs of the masked upper triangles, counted from torch.triu:
    above the diagonal for the products that keep it, on and above it for those that do not,
    and the solve's C / 2 per column (the full count's C^2 / 2 against forward substitution's
    C (C - 1) / 2)."""
    cfg, T = CONFIGS[name], 128
    masked = 0.0
    for form, H, K, V, C, n in chunk_shapes(cfg):
        C = min(C, T * n)
        ones = torch.ones(C, C)
        up, up_diag = torch.triu(ones, 1).sum().item(), torch.triu(ones).sum().item()
        if form == "gla":
            per_chunk = up * (K + V)
        elif form == "delta":
            per_chunk = up * K + up_diag * K + C / 2 * (K + V) + up * V
        else:
            per_chunk = 2 * up_diag * K + 2 * up * K + up_diag * V + C / 2 * (K + V) + 2 * up * V
        masked += H * (-(-T * n // C)) * per_chunk / T
    full, causal = flops_breakdown(cfg, T), flops_breakdown(cfg, T, causal=True)
    assert full["recurrence"] - causal["recurrence"] == pytest.approx(6 * masked, rel=1e-12)
    assert causal["recurrence"] < full["recurrence"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_changes_only_the_masked_components(name):
    cfg = CONFIGS[name]
    for T in (1, 128, 1000):
        full, causal = flops_breakdown(cfg, T), flops_breakdown(cfg, T, causal=True)
        for key in ("linear", "lm_head", "conv"):
            assert causal[key] == full[key]
        assert causal["attention"] <= full["attention"] and causal["recurrence"] <= full["recurrence"]
        if not set(cfg.pattern) & ATTENTION:
            assert causal["attention"] == full["attention"] == 0
        if not chunk_shapes(cfg):  # attention only, or elementwise scans: no C x C block
            assert causal["recurrence"] == full["recurrence"]


@pytest.mark.parametrize("name", [n for n in CHUNKED if not set(CONFIGS[n].pattern) & ATTENTION])
def test_causal_count_is_flop_counter_minus_the_masked_triangles(name):
    """The PyTorch chunk paths compute the full C x C blocks and mask them, so FlopCounterMode
    sees the full count's matmuls (test_matmul_work_matches_pytorch_flop_counter); the causal
    count is that, plus the work FlopCounterMode cannot see, minus the masked triangles."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg, T = CONFIGS[name], 128  # hybrids with attention: the SDPA test below covers attention
    torch.manual_seed(0)
    model = LanguageModel(cfg).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (1, T)))
    seen = counter.get_total_flops() / T + not_matmul_flops(cfg, T)  # forward, full count
    masked = (recurrence_flops(cfg, T, causal=False) - recurrence_flops(cfg, T, causal=True)) / 3
    assert forward_flops_per_token(cfg, T, causal=True) == pytest.approx(seen - masked, rel=1e-3)
    assert forward_flops_per_token(cfg, T) == pytest.approx(seen, rel=1e-3)


@pytest.mark.parametrize("name", ["transformer", "gated_attn"])
def test_sdpa_under_flop_counter_is_the_full_count(name):
    """What FlopCounterMode counts for ``scaled_dot_product_attention(is_causal=True)``: on CPU
    the default fused kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no FLOP
    formula and counts 0; the math backend runs two bmm over the whole T x T scores (masked
    after the fact) and counts the full count, 4 T^2 head_dim per head. (On CUDA the flash and
    memory-efficient kernels' formula, ``sdpa_flop``, also counts the full T x T: it ignores
    is_causal.) So FlopCounterMode reports the full (Chinchilla) convention for attention, and
    the causal one is that minus the masked upper triangle, T (T - 1) / 2 pairs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg, T = CONFIGS[name], 128
    torch.manual_seed(0)
    model = LanguageModel(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (1, T))
    with FlopCounterMode(display=False) as fused, torch.no_grad():
        model(x)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math_path, torch.no_grad():
        model(x)
    full, causal = forward_flops_breakdown(cfg, T), forward_flops_breakdown(cfg, T, causal=True)
    others = full["linear"] + full["lm_head"] + full["conv"]
    assert fused.get_total_flops() / T == pytest.approx(others, rel=1e-9)  # SDPA unseen
    assert math_path.get_total_flops() / T == pytest.approx(others + full["attention"], rel=1e-9)
    o = cfg.mixer_options(cfg.pattern[0])
    masked = 2 * 2 * cfg.n_layers * o.n_heads * (cfg.d_model // o.n_heads) * torch.triu(
        torch.ones(T, T), 1).sum().item() / T  # QK^T and AV over the upper triangle, 2 FLOPs a MAC
    assert full["attention"] - causal["attention"] == pytest.approx(masked, rel=1e-12)


def test_one_chunk_costs_what_causal_attention_does_over_it():
    """Symmetry: over one chunk (T = C) the causal count's scores and their product with v cover
    the C (C + 1) / 2 pairs that causal attention's (T + 1) / 2 mean context covers."""
    T, d, H = 64, 128, 4
    attn = ModelConfig(d_model=d, n_layers=1, pattern=["attn"], mixers={"attn": {"n_heads": H}})
    # retnet with K = V = head_dim: its intra-chunk products are attention's
    ret = ModelConfig(d_model=d, n_layers=1, pattern=["retnet"],
                      mixers={"retnet": {"n_heads": H, "expand_k": 1.0, "expand_v": 1.0}})
    K = d // H
    state = 6 * H * (2 * T * K * K + K * K) / T  # k^T v, q S and the state passing
    for causal in (False, True):
        rec = flops_breakdown(ret, T, causal=causal)["recurrence"] - state
        assert rec == pytest.approx(flops_breakdown(attn, T, causal=causal)["attention"], rel=1e-12)


def test_flops_per_token_by_convention():
    cfg = ModelConfig.from_preset("transformer", "125m", vocab_size=50257, tie_embeddings=False)
    T = 2048
    conv = flops_per_token_by_convention(cfg, T)
    assert set(conv) == {"causal", "chinchilla", "6ND"}
    assert conv["causal"] == flops_per_token(cfg, T, causal=True)
    assert conv["chinchilla"] == flops_per_token(cfg, T)
    # N counts every parameter, the embeddings included (LanguageModel.num_params' default)
    assert conv["6ND"] == 6 * param_counts(cfg)[0]
    for name in ("gdn", "mamba2", "rwkv7"):
        c = CONFIGS[name]
        by = flops_per_token_by_convention(c, 512)
        assert by["6ND"] == 6 * LanguageModel(c).num_params()
        assert by["causal"] < by["chinchilla"]
    assert conv["causal"] < conv["chinchilla"]
