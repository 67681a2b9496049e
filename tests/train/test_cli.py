"""The `postformer` command in process: smoke configs, errors, exact resume, NaN guard, compare."""

import ast
import csv
import math
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tiny_fit import TINY  # tests/train/tiny_fit.py

from postformer.cli import main
from postformer.train import cli as train_cli
from postformer.train.callbacks import NonFiniteGuard, NonFiniteLossError, RunCheckpoint
from postformer.train.data import TextDataModule
from postformer.train.module import LMModule

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], name: str) -> dict[int, float]:
    return {int(r["step"]): float(r[name]) for r in rows if r.get(name)}


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "compare"):
        assert name in out
    assert main(["frobnicate"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err
    # LMModule has no predict step and the DataModules no predict data: not offered
    assert "predict" not in out
    assert main(["predict", "--config", "x.yaml"]) == 2


def test_version(capsys):
    from postformer import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"postformer {__version__}"


@pytest.mark.parametrize("arch", sorted(p.stem for p in SMOKE.glob("*.yaml")))
def test_smoke_config(arch, tmp_path):
    run = tmp_path / arch
    main(["fit", "--config", str(SMOKE / f"{arch}.yaml"), "--trainer.default_root_dir", str(run),
          "--trainer.max_steps", "4", "--trainer.limit_val_batches", "2", *QUIET])
    rows = read_metrics(run)
    losses = column(rows, "train/loss")
    assert sorted(losses) == [0, 1, 2, 3] and all(math.isfinite(v) for v in losses.values())
    bpb = column(rows, "val/bpb")
    assert list(bpb) == [3] and 0 < bpb[3] < 10
    assert column(rows, "train/tokens_per_sec") and column(rows, "train/lr")
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "config.yaml").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    model = LMModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.config.pattern == yaml.safe_load((SMOKE / f"{arch}.yaml").read_text())["model"]["config"]["pattern"]


def test_unknown_config_key(tmp_path, capsys):
    cfg = write_config(tmp_path / "bad.yaml", TINY | {"model": TINY["model"] | {"lrr": 1.0}})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", cfg, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exc.value.code != 0
    assert "lrr" in capsys.readouterr().err


def test_unknown_mixer(tmp_path, capsys):
    model = TINY["model"] | {"config": TINY["model"]["config"] | {"pattern": ["transfomer"]}}
    cfg = write_config(tmp_path / "bad.yaml", TINY | {"model": model})
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", cfg, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "transfomer" in err and "mamba2" in err  # names the bad mixer and lists known ones


def test_missing_data_path(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", TINY | {"data": TINY["data"] | {"path": str(tmp_path / "nowhere")}})
    with pytest.raises(SystemExit):
        main(["fit", "--config", cfg, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_exact_resume(tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    main(["fit", "--config", cfg, "--trainer.default_root_dir", str(straight), *QUIET])

    stop = TINY | {"trainer": TINY["trainer"] | {"callbacks": [
        {"class_path": "postformer.train.callbacks.StopAtStep", "init_args": {"stop_at": 4}}]}}
    main(["fit", "--config", write_config(tmp_path / "stop.yaml", stop),
          "--trainer.default_root_dir", str(halves), *QUIET])
    first = torch.load(halves / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 4
    main(["fit", "--config", cfg, "--trainer.default_root_dir", str(halves), *QUIET,
          "--ckpt_path", str(halves / "checkpoints" / "last.ckpt")])

    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(halves / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    for name, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][name], rtol=0, atol=1e-6), name
    loss_a, loss_b = column(read_metrics(straight), "train/loss"), column(read_metrics(halves), "train/loss")
    assert sorted(loss_b) == list(range(8))  # the resumed run appended steps 4..7
    for step in range(4, 8):
        assert loss_a[step] == pytest.approx(loss_b[step], abs=1e-6), step
    lr_a, lr_b = column(read_metrics(straight), "train/lr"), column(read_metrics(halves), "train/lr")
    assert all(lr_a[s] == pytest.approx(lr_b[s]) for s in range(8))


def test_fresh_fit_into_a_used_run_folder_is_refused(tmp_path, capsys):
    """A second fit without --ckpt_path would replace metrics.csv and write last-v1.ckpt
    beside the old last.ckpt (which a resume then picks): refused, naming how to resume;
    --overwrite replaces the run instead."""
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    main(["fit", "--config", cfg, "--trainer.default_root_dir", str(run), *QUIET])
    before = {p: p.read_bytes() for p in (run / "metrics.csv", ckpts / "last.ckpt")}
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", cfg, "--trainer.default_root_dir", str(run), *QUIET])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{run} holds a run already" in err and "--overwrite" in err
    assert f"resume it with --ckpt_path {ckpts / 'last.ckpt'}" in err
    assert {p: p.read_bytes() for p in before} == before
    assert [p.name for p in ckpts.iterdir()] == ["last.ckpt"]

    main(["fit", "--config", cfg, "--trainer.default_root_dir", str(run), *QUIET,
          "--trainer.max_steps", "4", "--overwrite"])
    assert [p.name for p in ckpts.iterdir()] == ["last.ckpt"]  # no last-v1.ckpt
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert sorted(column(read_metrics(run), "train/loss")) == [0, 1, 2, 3]
    # the saved config reruns without clobbering anything
    assert yaml.safe_load((run / "config.yaml").read_text())["overwrite"] is False


@pytest.mark.parametrize("option", [["--optimizer", "SGD"],
                                    ["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "2"]])
def test_optimizer_options_are_refused(tmp_path, capsys, option):
    """LightningCLI's --optimizer/--lr_scheduler would silently replace AdamW, its decay
    split and the schedule: refused before anything trains."""
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", cfg, "--trainer.default_root_dir", str(tmp_path / "run"), *option])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{option[0][2:]}: not supported" in err and "AdamW" in err and "model.schedule" in err
    assert not (tmp_path / "run" / "metrics.csv").exists()


def fit_error(tmp_path, capsys, cfg: dict, *args: str) -> str:
    """The one line a refused `postformer fit` prints (exit 2, no traceback, no usage)."""
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", write_config(tmp_path / "c.yaml", cfg),
              "--trainer.default_root_dir", str(tmp_path / "run"), *QUIET, *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("postformer fit: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("args", "message"), [
    (["--model.lr", "-1"], "model.lr: expected a positive learning rate, got -1.0"),
    (["--trainer.max_steps", "-3"], "trainer.max_steps: expected an integer >= 1"),
    (["--trainer.max_steps", "0"], "trainer.max_steps: expected an integer >= 1"),
    (["--data.seq_len", "long"], "data.seq_len: expected int, got 'long'"),
    (["--data.seq_len", "0"], "data.seq_len: expected an integer >= 1, got 0"),
    (["--data.batch_size", "-2"], "data.batch_size: expected an integer >= 1, got -2"),
    (["--data.max_bytes", "-5"], "data.max_bytes must be >= 1"),
])
def test_bad_numbers_are_one_line(tmp_path, capsys, args, message):
    assert message in fit_error(tmp_path, capsys, TINY, *args)


@pytest.mark.parametrize("content", [b"", b"abcd"])
def test_too_little_data_is_one_line_without_the_wrong_advice(tmp_path, capsys, content):
    """An empty or 4-byte file: more max_bytes would not help, so it is not advised."""
    (tmp_path / "tiny.txt").write_bytes(content)
    cfg = TINY | {"data": TINY["data"] | {"path": str(tmp_path / "tiny.txt")}}
    line = fit_error(tmp_path, capsys, cfg)
    assert f"data.path '{tmp_path / 'tiny.txt'}': the train split has {len(content)} tokens" in line
    assert "give more text" in line and "max_bytes" not in line


def test_malformed_jsonl_is_one_line(tmp_path, capsys):
    (tmp_path / "docs.jsonl").write_text('{"text": "fine"}\n{"text": "cut sh\n')
    cfg = TINY | {"data": TINY["data"] | {"path": str(tmp_path / "docs.jsonl")}}
    line = fit_error(tmp_path, capsys, cfg)
    assert f"data.path '{tmp_path / 'docs.jsonl'}': a file does not parse as json" in line
    assert "expected one JSON object per line, each with a 'text' field" in line


def test_truncated_checkpoint_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 4, "state_dict": {"w": torch.zeros(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    line = fit_error(tmp_path, capsys, TINY, "--ckpt_path", str(ckpt))
    assert f"ckpt_path: {ckpt} cannot be read" in line and "truncated or damaged" in line


class NaNAtStep3(LMModule):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == 3 else loss


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    module = NaNAtStep3(LMModule(**{"config": TINY["model"]["config"]}).config)
    ckpts = tmp_path / "checkpoints"
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
        callbacks=[NonFiniteGuard(), RunCheckpoint(dirpath=ckpts, every_n_train_steps=2,
                                                   save_last=True, save_top_k=0)],
    )
    with pytest.raises(NonFiniteLossError, match="global step 3"):
        trainer.fit(module, datamodule=TextDataModule(**TINY["data"]))
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    restored = LMModule.load_from_checkpoint(ckpts / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_eval_at_steps_logs_the_validation_at_chosen_steps(tmp_path):
    """EvalAtSteps validates after steps 3 and 8 (Lightning's own loop off) and logs at the
    last optimizer step trained; the final value equals an evaluation by hand of the saved
    weights over the same validation windows."""
    cfg = TINY | {"data": TINY["data"] | {"val_tokens": 200},
                  "trainer": {k: v for k, v in TINY["trainer"].items()
                              if k not in ("check_val_every_n_epoch", "val_check_interval")}
                  | {"limit_val_batches": 0, "callbacks": [
                      {"class_path": "postformer.train.callbacks.EvalAtSteps",
                       "init_args": {"steps": [3, 8]}}]}}
    run = tmp_path / "run"
    main(["fit", "--config", write_config(tmp_path / "c.yaml", cfg),
          "--trainer.default_root_dir", str(run), *QUIET])
    rows = read_metrics(run)
    val = column(rows, "val/loss")
    assert sorted(val) == [2, 7]  # after 3 and 8 optimizer steps
    assert val[7] < val[2]
    model = LMModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    dm = TextDataModule(**cfg["data"])
    dm.setup()
    nats = tokens = 0.0
    with torch.no_grad():
        for i in dm.val_windows():
            window = dm.dataset("val")[int(i)]
            logits = model(window[None, :-1])
            nats += torch.nn.functional.cross_entropy(logits[0], window[1:], reduction="sum").item()
            tokens += len(window) - 1
    assert tokens == 7 * 32  # ceil(200 / 32) windows
    assert val[7] == pytest.approx(nats / tokens, rel=1e-5)
    assert column(rows, "val/bpb")[7] == pytest.approx(nats / tokens / math.log(2), rel=1e-5)


CTRL_C = """import lightning as L


class CtrlC(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= 2:
            raise KeyboardInterrupt
"""


def test_ctrl_c_exits_130_with_a_word(tmp_path, capsys, monkeypatch):
    """Lightning turns Ctrl-C into exit 1 without a message and ignores SIGINT afterwards;
    `postformer fit` says it was interrupted, exits 130 and leaves Ctrl-C working."""
    (tmp_path / "ctrl_c.py").write_text(CTRL_C)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = TINY | {"trainer": TINY["trainer"] | {"callbacks": [{"class_path": "ctrl_c.CtrlC"}]}}
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", write_config(tmp_path / "c.yaml", cfg),
              "--trainer.default_root_dir", str(tmp_path / "run"), *QUIET])
    assert exc.value.code == 130
    assert "postformer fit: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler


def test_train_cli_uses_no_private_attribute_of_another_object():
    """Only jsonargparse's and Lightning's public APIs: no ``obj._name`` but the CLI's own."""
    def private(name: object) -> bool:
        return isinstance(name, str) and name.startswith("_") and not name.startswith("__")

    tree = ast.parse(Path(train_cli.__file__).read_text())
    found = sorted({ast.unparse(node) for node in ast.walk(tree)
                    if isinstance(node, ast.Attribute) and private(node.attr)
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")
                    or isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "hasattr")
                    and len(node.args) > 1 and private(getattr(node.args[1], "value", None))})
    assert found == []


@pytest.mark.parametrize(("message", "line"), [
    # a model file that is not there: the key once
    ('Parser key "model":\nUnable to load config \'m.yaml\'\n  - Parser key "model": Unable to load '
     'config "m.yaml"', "model: Unable to load config 'm.yaml'"),
    # a bad value in it: what was wrong, under the full key
    ('Parser key "model":\nUnable to load config \'m.yaml\'\n  - Parser key "model.preset":\n'
     "    unknown preset 'x'", "model.preset: unknown preset 'x'"),
    # an inline --config: its keys are the config's own
    ('Parser key "config": Parser key "model.preset":\nunknown preset \'x\'',
     "model.preset: unknown preset 'x'"),
    ('Parser key "data":\n  - Parser key "seq_len":\n    Expected a <class \'int\'>. Got value: long',
     "data.seq_len: expected int, got 'long'"),
])
def test_one_line(message, line):
    assert train_cli.one_line(message) == line
