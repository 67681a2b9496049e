"""Every registered mixer, and every preset's pattern, on a study ladder from 16 to 1024
channels: the spec validates (every option valid, every model built), and each mixer's
options in the built model are its own width rule's (``Mixer.width_options``; the rules'
properties are tested in tests/arch/test_width_rules.py), so scaling/ applies the rule of
a mixer it has never heard of."""

from __future__ import annotations

import pytest
import torch

from postformer.arch import MIXERS, PRESETS, Block
from postformer.arch.flops import param_counts
from postformer.scaling.spec import study_from_dict

#: the default study's widths, the GPU studies', and powers of two to 1024
WIDTHS = sorted({16, 18, 20, 22, 24, 26, 28, 32, 36, 40, 44, 48, 56, 64, 80, 96, 128, 160, 192,
                 256, 320, 384, 448, 512, 640, 768, 1024})


def _study(head_dim: int, d_state: int | None):
    archs = {name: name for name in PRESETS}
    archs |= {f"only-{m}": {"pattern": [m]} for m in MIXERS}
    ladder = {"knob": "width", "d_model": WIDTHS, "n_layers": 4, "head_dim": head_dim}
    if d_state is not None:
        ladder["d_state"] = d_state
    spec = {"name": "widths", "archs": archs, "ladder": ladder, "budgets": {"tokens": [1e6]},
            "model": {"vocab_size": 256}, "data": {"batch_size": 1, "seq_len": 64}}
    return study_from_dict(spec, source="widths.yaml")


@pytest.mark.parametrize(("head_dim", "d_state"), [(16, 16), (16, None), (64, 128)])
def test_every_mixer_and_preset_builds_with_its_rule_at_every_width(head_dim, d_state):
    study = _study(head_dim, d_state)  # validation builds every (arch, width) config
    seen = set()
    for label in study.archs:
        for shape in study.shapes[label]:
            cfg, d = shape.config, shape.config.d_model
            for name in cfg.pattern:
                cls = MIXERS[name]
                rule = cls.resolve_options(d, cls.width_options(d, head_dim=head_dim, d_state=d_state))
                assert cfg.mixer_options(name) == rule, (label, d, name)
                key = (name, d, repr(cfg.mixer_options(name)), cfg.block_has_mlp(name), cfg.ff_dim)
                if key not in seen:  # each distinct block built once
                    seen.add(key)
                    with torch.device("meta"):
                        block = Block(cfg, name)
                    assert sum(p.numel() for p in block.parameters()) > 0
            assert (shape.N, shape.N_non_emb) == param_counts(cfg)
    assert {name for label in study.archs for name in study.shapes[label][0].config.pattern} == set(MIXERS)
