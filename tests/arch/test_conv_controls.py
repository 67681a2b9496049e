"""Conv controls: Mamba-2 ``conv_size=0``, DeltaNet / Gated DeltaNet ``conv_size=0`` (no short conv)
and attention ``conv_size >= 2`` (Primer's depthwise causal convs on q, k, v).

Each option trains, decodes through its cache like the parallel forward, has the parameter
count its shapes give by hand, and has the FLOPs PyTorch's counter sees; attention's conv is
checked against a naive forward written here and against plain attention with identity convs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_testing import (
    assert_cached_equals_full,  # tests/arch/mixer_testing.py
    not_matmul_flops,
)

from postformer.arch import MIXERS, LanguageModel, ModelConfig
from postformer.arch.flops import flops_breakdown, param_counts

VOCAB, D, LAYERS = 64, 32, 2
#: name -> (mixer, options of the default, options of the control). The shapes at d_model 32:
#: mamba2 d_inner 64, conv over xBC of 64 + 2 * 8 = 80 channels; gdn key dim 2 * 16 = 32, value
#: dim 2 * 32 = 64; deltanet 2 heads of 16, key = value dim 32; attn q 32, k = v 16 (GQA 2:1).
CONTROLS = {
    "mamba2-d_conv0": ("mamba2", {"d_state": 8, "head_dim": 16}, {"conv_size": 0}),
    "gdn-conv_size0": ("gdn", {"n_heads": 2, "head_dim": 16}, {"conv_size": 0}),
    "deltanet-conv_size0": ("deltanet", {"n_heads": 2}, {"conv_size": 0}),
    "attn-conv_size4": ("attn", {"n_heads": 2, "n_kv_heads": 1}, {"conv_size": 4}),
    "swa-conv_size3": ("swa", {"n_heads": 2, "window": 5}, {"conv_size": 3}),
}
#: parameters of the control minus those of the default, per layer, from the shapes above
PARAM_DIFF_PER_LAYER = {
    "mamba2-d_conv0": -(80 * 4 + 80),  # conv1d weight [80, 1, 4] and bias [80]
    "gdn-conv_size0": -(32 + 32 + 64) * 4,  # q, k, v conv weights [C, 1, 4]
    "deltanet-conv_size0": -(32 + 32 + 32) * 4,
    "attn-conv_size4": (32 + 16 + 16) * 4,  # new q, k, v conv weights [C, 1, 4]
    "swa-conv_size3": (32 + 32 + 32) * 3,
}


def config(name: str, control: bool = True, **overrides) -> ModelConfig:
    mixer, base, extra = CONTROLS[name]
    opts = base | extra if control else base
    kwargs = dict(vocab_size=VOCAB, d_model=D, n_layers=LAYERS, pattern=[mixer], mixers={mixer: opts})
    return ModelConfig(**(kwargs | overrides))


def build(cfg: ModelConfig, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(cfg)


@pytest.mark.parametrize("name", list(CONTROLS))
def test_control_trains_one_step(name):
    model = build(config(name))
    tokens = torch.randint(0, VOCAB, (2, 25))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    opt.step()
    assert torch.isfinite(model(tokens)).all()


@pytest.mark.parametrize("name", list(CONTROLS))
def test_control_parameters(name):
    cfg, default = config(name), config(name, control=False)
    model = build(cfg)
    n, n_default = model.num_params(), build(default).num_params()
    assert n - n_default == LAYERS * PARAM_DIFF_PER_LAYER[name]
    assert param_counts(cfg) == (n, model.num_params(include_embeddings=False))
    has_conv = any("conv" in pname for pname, _ in model.named_parameters())
    assert has_conv == (PARAM_DIFF_PER_LAYER[name] > 0)
    cache = model.new_cache(2).layers[0]
    states = [getattr(cache, a) for a in ("conv_state", "q_conv_state", "k_conv_state", "v_conv_state")
              if hasattr(cache, a)] + list(getattr(cache, "conv_states", None) or [])
    assert all(s is None for s in states) != has_conv


@pytest.mark.parametrize("name", list(CONTROLS))
def test_control_flops_match_pytorch_flop_counter(name):
    """As ``test_flops.test_matmul_work_matches_pytorch_flop_counter``: FlopCounterMode sees
    the linears, the convs and the matmuls of the chunked recurrences, not SDPA on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg, T = config(name), 96
    model = build(cfg).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, VOCAB, (1, T)))
    parts = {k: v / 3 for k, v in flops_breakdown(cfg, T).items()}  # forward
    expected = parts["linear"] + parts["lm_head"] + parts["conv"] + parts["recurrence"] - not_matmul_flops(cfg, T)
    assert counter.get_total_flops() / T == pytest.approx(expected, rel=1e-3)
    # the conv term by hand: 2 * channels * width per layer, or nothing for the no-conv controls
    conv_per_layer = 2 * max(PARAM_DIFF_PER_LAYER[name], 0)
    assert parts["conv"] == pytest.approx(LAYERS * conv_per_layer)


@pytest.mark.parametrize("name", list(CONTROLS))
def test_control_cached_decoding_equals_full_forward(name):
    model = build(config(name, init_std=0.2)).eval()
    tokens = assert_cached_equals_full(model, VOCAB)
    # token by token from the first token on, and greedy generation against recomputation
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2)
        steps = torch.cat([model(tokens[:, t : t + 1], cache) for t in range(17)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)
    model = model.double()
    prompt = tokens[:, :5]
    out = model.generate(prompt, 10)
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("mixer", ["attn", "swa"])
def test_attention_conv_size_0_is_the_plain_module(mixer):
    opts = {"n_heads": 2, "window": 5} if mixer == "swa" else {"n_heads": 2}
    plain = build(ModelConfig(vocab_size=VOCAB, d_model=D, n_layers=LAYERS, pattern=[mixer], mixers={mixer: opts}))
    zero = build(ModelConfig(vocab_size=VOCAB, d_model=D, n_layers=LAYERS, pattern=[mixer],
                             mixers={mixer: opts | {"conv_size": 0}}))
    a, b = plain.state_dict(), zero.state_dict()
    assert list(a) == list(b) and not any("conv" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    tokens = torch.randint(0, VOCAB, (2, 12))
    assert torch.equal(plain(tokens), zero(tokens))
    assert plain.new_cache(2).layers[0].conv_states is None


def identity_conv_(conv: torch.nn.Conv1d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, -1] = 1.0  # the last tap multiplies the current step


@pytest.mark.parametrize("mixer", ["attn", "swa"])
def test_attention_identity_conv_equals_plain_attention(mixer):
    opts = {"n_heads": 2, "n_kv_heads": 1} | ({"window": 5} if mixer == "swa" else {})
    plain = build(ModelConfig(vocab_size=VOCAB, d_model=D, n_layers=LAYERS, pattern=[mixer], mixers={mixer: opts}))
    conv = build(ModelConfig(vocab_size=VOCAB, d_model=D, n_layers=LAYERS, pattern=[mixer],
                             mixers={mixer: opts | {"conv_size": 4}}), seed=1)
    missing, unexpected = conv.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.endswith("_conv.weight") for k in missing)
    tokens = torch.randint(0, VOCAB, (2, 15))
    with torch.no_grad():
        assert not torch.allclose(conv(tokens), plain(tokens), atol=1e-3)  # random convs differ
        for block in conv.blocks:
            for c in (block.mixer.q_conv, block.mixer.k_conv, block.mixer.v_conv):
                identity_conv_(c)
        torch.testing.assert_close(conv(tokens), plain(tokens), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["mamba2-d_conv0", "gdn-conv_size0", "deltanet-conv_size0"])
def test_no_conv_control_equals_the_block_with_identity_convs(name):
    """Without its conv the block applies the activation the conv path applies after the conv
    (SiLU): the same as the full block whose convs pass the current step through unchanged."""
    control, full = build(config(name)), build(config(name, control=False), seed=1)
    missing, unexpected = full.load_state_dict(control.state_dict(), strict=False)
    assert not unexpected and missing and all("conv" in k for k in missing)
    tokens = torch.randint(0, VOCAB, (2, 15))
    with torch.no_grad():
        assert not torch.allclose(full(tokens), control(tokens), atol=1e-3)  # random convs differ
        for module in full.modules():
            if isinstance(module, torch.nn.Conv1d):
                identity_conv_(module)
                if module.bias is not None:
                    module.bias.zero_()
        torch.testing.assert_close(full(tokens), control(tokens), atol=1e-5, rtol=1e-5)  # float32 rounding at the width-rule init (logits ~1)


def attention_conv_naive(m, x: torch.Tensor) -> torch.Tensor:
    """Primer's multi-dconv-head attention written out: projections, depthwise causal conv tap by
    tap, RoPE, explicit causal softmax, output projection."""
    B, T, _ = x.shape
    H, Hkv, Dh = m.n_heads, m.n_kv_heads, m.head_dim

    def conv(y: torch.Tensor, c: torch.nn.Conv1d) -> torch.Tensor:
        W = c.weight.shape[-1]
        padded = F.pad(y, (0, 0, W - 1, 0))  # W - 1 zeros before the first step
        return sum(padded[:, j : j + T] * c.weight[:, 0, j] for j in range(W))

    q = conv(x @ m.q_proj.weight.T, m.q_conv).reshape(B, T, H, Dh)
    k = conv(x @ m.k_proj.weight.T, m.k_conv).reshape(B, T, Hkv, Dh)
    v = conv(x @ m.v_proj.weight.T, m.v_conv).reshape(B, T, Hkv, Dh)
    q, k = m.rotary(q, 0), m.rotary(k, 0)
    k, v = k.repeat_interleave(H // Hkv, dim=2), v.repeat_interleave(H // Hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(Dh)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    o = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, T, H * Dh)
    return o @ m.out_proj.weight.T


def test_attention_conv_matches_naive_forward():
    cls = MIXERS["attn"]
    torch.manual_seed(0)
    m = cls(D, cls.resolve_options(D, {"n_heads": 4, "n_kv_heads": 2, "conv_size": 3})).double().eval()
    x = torch.randn(2, 11, D, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), attention_conv_naive(m, x), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    ("mixer", "opts", "match"),
    [
        ("attn", {"conv_size": 1}, "mixer 'attn': conv_size must be 0 .* or >= 2, got 1"),
        ("attn", {"conv_size": -1}, "mixer 'attn': conv_size must be 0 .* or >= 2, got -1"),
        ("swa", {"conv_size": 1}, "mixer 'swa': conv_size must be 0 .* or >= 2, got 1"),
        ("mamba2", {"conv_size": -1}, "mixer 'mamba2': conv_size must be >= 0 .*got -1"),
        ("gdn", {"conv_size": -1}, "mixer 'gdn': conv_size must be 0 .* or >= 2, got -1"),
        ("deltanet", {"conv_size": 1}, "mixer 'deltanet': conv_size must be 0 .* or >= 2, got 1"),
    ],
)
def test_bad_conv_widths_are_clear_errors(mixer, opts, match):
    with pytest.raises(ValueError, match=match):
        MIXERS[mixer].resolve_options(D, opts)
