"""Probe tasks through the language-modelling trainer: the DataModule's batches, the scoring
of answers only (loss and accuracy), and `postformer fit` on a task config."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from postformer.arch import ModelConfig
from postformer.cli import main
from postformer.train.module import IGNORE, LMModule
from postformer.train.probes.data import ProbeDataModule
from postformer.train.probes.tasks import IGNORE as TASK_IGNORE
from postformer.train.probes.tasks import make_split, model_vocab

REPO = Path(__file__).resolve().parents[2]
SMALL = {"seq_len": 64, "num_kv_pairs": 4, "num_train": 256, "num_test": 64}


def test_batches_are_the_task_examples_with_answers_scored(tmp_path):
    assert TASK_IGNORE == IGNORE
    dm = ProbeDataModule("mqar", SMALL, seed=3, batch_size=8)
    split = make_split("mqar", 3, **dm.settings)
    x, y = next(iter(dm.val_dataloader()))  # the test set in order
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x, torch.as_tensor(split["test"][0][:8])) and torch.equal(y, torch.as_tensor(split["test"][1][:8]))
    assert ((y != IGNORE).sum(1) == 4).all()  # one answer per query
    seen = [x for x, _ in dm.train_dataloader()]
    assert sum(len(b) for b in seen) == 256  # one epoch: every training example once
    assert dm.vocab_size == model_vocab("mqar", **dm.settings) and dm.seq_len == 64
    assert ProbeDataModule.planned_vocab({"task": "mqar", "settings": SMALL}) == dm.vocab_size


def _evaluate_with(logits_fn, dm):
    model = LMModule(ModelConfig(vocab_size=dm.vocab_size, d_model=16, n_layers=1, pattern=["attn"],
                                 mixers={"attn": {"n_heads": 1}}))
    model.model.forward = logits_fn
    return model.evaluate(dm.val_dataloader())


def test_accuracy_and_loss_count_the_answers_only():
    dm = ProbeDataModule("mqar", SMALL, seed=1, batch_size=16)
    xs, ys = (np.concatenate(a) for a in zip(*[(x.numpy(), y.numpy()) for x, y in dm.val_dataloader()]))
    V = dm.vocab_size
    answers = ys[ys != IGNORE]
    # an oracle that knows the targets: every answer right, loss ~ 0
    lookup = {tuple(x): y for x, y in zip(xs, ys)}

    def oracle(inputs):
        t = torch.as_tensor(np.stack([lookup[tuple(r)] for r in inputs.numpy()])).clamp(min=0)
        return torch.nn.functional.one_hot(t, V).float() * 50.0

    out = _evaluate_with(oracle, dm)
    assert out["accuracy"] == 1.0 and out["loss"] < 1e-6 and out["tokens"] == len(answers)
    # a constant guess: right exactly where the answer is that token; loss ln V
    guess = int(np.bincount(answers).argmax())

    def constant(inputs):
        logits = torch.zeros(*inputs.shape, V)
        logits[..., guess] = 1e-3  # the argmax, and a loss of about ln V
        return logits

    out = _evaluate_with(constant, dm)
    assert math.isclose(out["accuracy"], float((answers == guess).mean()), abs_tol=1e-12)
    assert math.isclose(out["loss"], math.log(V), rel_tol=1e-3)


def test_fit_trains_a_probe_task_from_a_config(tmp_path):
    run = tmp_path / "run"
    main(["fit", "--config", str(REPO / "configs" / "probe" / "fit" / "mqar.yaml"),
          "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false"])
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    acc = [float(r["val/accuracy"]) for r in rows if r.get("val/accuracy")]
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert acc and 0.0 <= acc[-1] <= 1.0
    assert losses[-1] < losses[0]  # it learns something about the answers
    model = LMModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.config.vocab_size == ProbeDataModule.planned_vocab(
        {"task": "mqar", "settings": {"seq_len": 64, "num_kv_pairs": 4}})


def test_bad_task_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="num_kv"):
        ProbeDataModule("mqar", {"num_kv_pairs": 1000, "seq_len": 64})
    with pytest.raises((ValueError, KeyError), match="not_a_task|unknown"):
        ProbeDataModule("not_a_task")
