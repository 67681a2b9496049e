"""The smallest fit config the train tests share: a 2-layer attention LM on 150 KB of the
stdlib, a few steps in a second or two on one CPU."""

import copy

TINY = {
    "seed_everything": 0,
    "model": {
        "config": {"d_model": 32, "n_layers": 2, "pattern": ["attn"], "mixers": {"attn": {"n_heads": 2}}},
        "lr": 3e-3, "warmup_steps": 2,
    },
    "data": {"max_bytes": 150_000, "seq_len": 32, "batch_size": 4},
    "trainer": {
        "accelerator": "cpu", "devices": 1, "max_steps": 8, "log_every_n_steps": 1,
        "check_val_every_n_epoch": None, "val_check_interval": 100, "limit_val_batches": 2,
        "gradient_clip_val": 1.0,
    },
    "checkpoint": {"every_n_train_steps": 4},
}


def tiny_config(**sections: dict) -> dict:
    """A deep copy of ``TINY`` with each given section's keys updated (``None`` removes one)."""
    cfg = copy.deepcopy(TINY)
    for name, updates in sections.items():
        part = cfg.setdefault(name, {})
        for k, v in updates.items():
            if v is None:
                part.pop(k, None)
            else:
                part[k] = v
    return cfg
