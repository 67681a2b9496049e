"""`postformer list` (train/discover.py), presets by name (`--model.preset`) and `fit --help-short`."""

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from postformer.arch.config import ARCHS, PRESETS, ModelConfig
from postformer.arch.mixer import StepSizeOptions
from postformer.arch.model import LanguageModel
from postformer.arch.registry import MIXERS
from postformer.cli import main
from postformer.train.cli import PostformerCLI
from postformer.train.discover import PRESET_VOCAB, option_docs, preset_config, preset_names
from postformer.train.module import LMModule

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY_DATA = ["--data.max_bytes", "150000", "--data.seq_len", "32", "--data.batch_size", "4"]

#: options whose field has no `#:` comment, no comment of an earlier field naming it, and no
#: docstring of its option group naming it: add the comment in arch/, then remove it here
UNDOCUMENTED: set[tuple[str, str]] = set()


def run_list(capsys, *args: str) -> str:
    assert main(["list", *args]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def listed() -> dict:
    """`postformer list --json`, every section, parsed once for the module."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["list", "--json"]) == 0
    return json.loads(out.getvalue())


# -- postformer list ------------------------------------------------------------------------


def test_json_has_every_section(listed):
    assert list(listed) == ["archs", "presets", "mixers", "tokenizers", "configs"]
    assert list(listed["archs"]) == list(ARCHS)
    assert listed["archs"]["gdn-hybrid"]["pattern"] == ["gdn", "gdn", "gdn", "attn"]
    assert "bytes" in listed["tokenizers"]["named"]
    assert "tokenizer.json" in listed["tokenizers"]["file"] and "gpt2" in listed["tokenizers"]["hub"]


def test_every_preset_with_its_shape(listed):
    rows = {r["name"]: r for r in listed["presets"]}
    assert list(rows) == [f"{a}/{s}" for a in PRESETS for s in PRESETS[a]] == preset_names()
    for name, row in rows.items():
        arch, size = name.split("/")
        assert (row["d_model"], row["n_layers"], row["pattern"]) == (
            PRESETS[arch][size]["d_model"], PRESETS[arch][size]["n_layers"], PRESETS[arch][size]["pattern"])
        assert row["vocab_size"] == PRESET_VOCAB
        assert row["params"] > row["params_non_embedding"] > 0


@pytest.mark.parametrize("name", ["gdn/small", "mamba2-hybrid/tiny", "griffin/tiny"])
def test_preset_parameter_count_is_the_models(listed, name):
    arch, size = name.split("/")
    cfg = ModelConfig.from_preset(arch, size, vocab_size=PRESET_VOCAB)
    model = LanguageModel(cfg)
    n = sum(p.numel() for p in model.parameters())
    row = next(r for r in listed["presets"] if r["name"] == name)
    assert row["params"] == n
    assert row["params_non_embedding"] == n - PRESET_VOCAB * cfg.d_model  # tied: counted once


def test_preset_counts_are_kept_per_code_version(tmp_path, monkeypatch):
    """`postformer list` counts the presets' parameters once per version of arch/ and keeps
    them in the cache folder; a damaged cache file is counted again."""
    import postformer.arch.flops as flops
    from postformer.train import discover

    monkeypatch.setenv("POSTFORMER_CACHE", str(tmp_path))
    counted = discover.preset_counts()
    files = list((tmp_path / "presets").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == counted
    assert counted["gdn/small"] == list(flops.param_counts(
        ModelConfig.from_preset("gdn", "small", vocab_size=PRESET_VOCAB)))
    real = flops.param_counts
    monkeypatch.setattr(flops, "param_counts", lambda cfg: pytest.fail("counted again"))
    assert discover.preset_counts() == counted  # read back, nothing built
    files[0].write_text('{"gdn/small": [1, ')  # a write cut short
    monkeypatch.setattr(flops, "param_counts", real)
    assert discover.preset_counts() == counted


def test_presets_text_states_the_vocab(capsys):
    out = run_list(capsys, "presets")
    assert f"{PRESET_VOCAB}-token vocabulary" in out
    for name in preset_names():
        assert f"\n  {name} " in out
    # gdn/small: 256 wide, 4 layers, its parameters in millions
    line = next(ln for ln in out.splitlines() if ln.startswith("  gdn/small "))
    cfg = ModelConfig.from_preset("gdn", "small", vocab_size=PRESET_VOCAB)
    n = sum(p.numel() for p in LanguageModel(cfg).parameters())
    assert line.split()[1:3] == ["256", "4"] and f"{n / 1e6:.1f}M" in line


def test_every_mixer_option_with_its_default(listed, capsys):
    text = run_list(capsys, "mixers")
    assert list(listed["mixers"]) == list(MIXERS)
    for name, cls in MIXERS.items():
        fields = dataclasses.fields(cls.Options)
        assert fields, name
        got = {o["name"]: o for o in listed["mixers"][name]["options"]}
        assert list(got) == [f.name for f in fields], name
        section = text.split(f"\n{name}: ", 1)[1].split("\n\n", 1)[0]
        for f in fields:
            default = getattr(cls.Options(), f.name)
            assert got[f.name]["default"] == default, (name, f.name)
            assert f"\n  {f.name}: {got[f.name]['type']} = {default!r}\n" in section, (name, f.name)


def test_every_option_has_a_meaning():
    missing = {(name, d.name) for name, cls in MIXERS.items() for d in option_docs(cls)[0] if not d.meaning}
    assert missing == UNDOCUMENTED, (
        f"options without a `#:` meaning: {sorted(missing - UNDOCUMENTED)}; documented since: "
        f"{sorted(UNDOCUMENTED - missing)} (update UNDOCUMENTED)")


def test_meanings_come_from_the_comments():
    docs = {d.name: d for d in option_docs(MIXERS["gdn"])[0]}
    assert docs["conv_size"].meaning.startswith("width of the short causal convs on q, k, v")
    assert docs["conv_size"].source == "comment"
    assert docs["expand_v"].meaning == "value channels per head = expand_v * head_dim (2 in the GDN paper / FLA)"
    assert docs["A_init_min"].meaning == "A = exp(A_log) starts uniform in [A_init_min, A_init_max] (floored at 1e-4)"
    # a shared group's comment, plus what the mixer's (inherited) note says of the field
    assert docs["dt_max"].source == "shared" and docs["dt_max"].defined_in == StepSizeOptions.__qualname__
    assert "dt = softplus(dt_bias)" in docs["dt_max"].meaning
    gla = {d.name: d for d in option_docs(MIXERS["gla"])[0]}
    assert gla["expand_k"].meaning == "key dim (q, k, gate) = expand_k * d_model"
    assert "None: 4" in gla["n_heads"].meaning


@dataclasses.dataclass
class _Group:
    """A group of made-up options; b_doc is named here."""

    #: first line of alpha
    #: second line of alpha
    alpha: int = 1
    #: gamma shares this with gamma_too, which names it
    gamma: int = 2
    gamma_too: int = 3

    b_doc: float = 0.5
    nothing: bool = True


@dataclasses.dataclass
class _Options(_Group):
    #: (inherited) gamma (here: 4,
    #: or less), alpha = 1; delta's meaning after the note
    delta: str = "x"
    #: eps's meaning; (inherited) gamma_too: a note
    eps: int = 5
    gamma: int = 4


class _FakeMixer:
    Options = _Options


def test_option_parser_rules():
    docs = {d.name: d for d in option_docs(_FakeMixer)[0]}
    assert list(docs) == ["alpha", "gamma", "gamma_too", "b_doc", "nothing", "delta", "eps"]
    assert docs["alpha"].source == "comment" and docs["alpha"].default == 1 and docs["alpha"].type == "int"
    # an inherited field gets what the mixer's (inherited) notes say of it
    assert docs["alpha"].meaning == ("first line of alpha second line of alpha "
                                     "(here: gamma (here: 4, or less), alpha = 1)")
    # gamma is redefined (default 4) without a comment: read in the class that defines it
    assert docs["gamma"].default == 4 and docs["gamma"].source == "" and docs["gamma"].meaning == ""
    assert docs["gamma_too"].source == "shared"
    assert docs["gamma_too"].meaning == ("gamma shares this with gamma_too, which names it "
                                         "(here: gamma_too: a note)")
    assert docs["b_doc"].source == "docstring" and "b_doc is named here" in docs["b_doc"].meaning
    assert docs["nothing"].meaning == "" and docs["nothing"].source == ""
    assert docs["delta"].meaning == "delta's meaning after the note"
    assert docs["eps"].meaning == "eps's meaning"
    assert option_docs(_FakeMixer)[1] == ["gamma (here: 4, or less), alpha = 1", "gamma_too: a note"]


def test_configs_listed_from_the_repository(listed):
    repo = Path(__file__).resolve().parents[2]
    configs = listed["configs"]
    assert configs["root"] == str(repo)
    files = {f["path"]: f["about"] for kind in configs["files"].values() for f in kind["files"]}
    for kind in ("study", "probe", "smoke"):
        for path in (repo / "configs" / kind).rglob("*.yaml"):
            assert str(path.relative_to(repo)) in files
    assert files["configs/smoke/gdn.yaml"].startswith("Smoke run: a tiny Gated DeltaNet")
    assert files["configs/probe/mad.yaml"].startswith("The MAD protocol (Poli et al. 2024")


def test_sections_by_name(capsys):
    out = run_list(capsys, "archs", "tokenizers")
    assert out.startswith("archs (") and "\ntokenizers (" in out and "presets (" not in out
    data = json.loads(run_list(capsys, "tokenizers", "--json"))
    assert list(data) == ["tokenizers"]
    with pytest.raises(SystemExit) as exc:
        main(["list", "modles"])
    assert exc.value.code == 2
    assert "unknown section 'modles'" in capsys.readouterr().err


# -- presets by name --------------------------------------------------------------------------


def test_preset_config_and_unknown_name():
    fields = preset_config("gdn/small")
    assert "vocab_size" not in fields
    assert ModelConfig(**fields) == ModelConfig.from_preset("gdn", "small")
    with pytest.raises(ValueError, match=r"unknown preset 'gdn/huge'.*gdn-hybrid.*1\.3b"):
        preset_config("gdn/huge")


def test_fit_with_a_preset_from_another_folder(tmp_path, monkeypatch):
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    main(["fit", "--model.preset", "transformer/tiny", "--trainer.max_steps", "2",
          "--trainer.default_root_dir", "run", "--trainer.accelerator", "cpu",
          "--trainer.limit_val_batches", "1", *TINY_DATA, *QUIET])
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 2
    model = LMModule.load_from_checkpoint(ckpt)
    tiny = PRESETS["transformer"]["tiny"]
    assert (model.config.d_model, model.config.n_layers, model.config.pattern) == (
        tiny["d_model"], tiny["n_layers"], tiny["pattern"])
    assert model.config.mixers == tiny["mixers"]
    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert "preset" not in saved["model"] and saved["model"]["config"]["d_model"] == tiny["d_model"]


def built(tmp_path, monkeypatch, *args: str) -> ModelConfig:
    """The model config ``postformer`` builds from ``args`` (no training), run in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():  # args given in process, as postformer itself does
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = PostformerCLI(args=[*args, *TINY_DATA], run=False)
    return cli.model.config


def test_later_arguments_override_a_preset(tmp_path, monkeypatch):
    cfg = built(tmp_path, monkeypatch, "--model.preset", "gdn/small", "--model.config.n_layers", "2")
    assert (cfg.d_model, cfg.n_layers, cfg.pattern, cfg.d_ff) == (256, 2, ["gdn"], 528)
    assert cfg.mixers == {"gdn": {"n_heads": 3, "head_dim": 64}}
    # a preset after an argument replaces it; vocab follows the data (bytes) either way
    cfg = built(tmp_path, monkeypatch, "--model.config.n_layers", "2", "--model.preset", "gdn/small")
    assert (cfg.n_layers, cfg.vocab_size) == (4, 256)


def test_preset_in_a_config_file(tmp_path, monkeypatch):
    # the file's own config keys win over its preset, whatever their order; mixers merge
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump({"model": {
        "config": {"n_layers": 2, "mixers": {"gdn": {"conv_size": 0}}}, "preset": "gdn/small", "lr": 1e-3}},
        sort_keys=False))
    cli_cfg = built(tmp_path, monkeypatch, "--config", str(path))
    assert (cli_cfg.d_model, cli_cfg.n_layers, cli_cfg.pattern) == (256, 2, ["gdn"])
    assert cli_cfg.mixers == {"gdn": {"n_heads": 3, "head_dim": 64, "conv_size": 0}}
    # and the command line after the file overrides both
    cli_cfg = built(tmp_path, monkeypatch, "--config", str(path), "--model.config.d_model", "192")
    assert (cli_cfg.d_model, cli_cfg.n_layers) == (192, 2)


@pytest.mark.parametrize("where", ["argv", "file"])
def test_unknown_preset_is_one_line(tmp_path, capsys, where):
    if where == "argv":
        args = ["--model.preset", "gdn/huge"]
    else:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"model": {"preset": "gdn/huge"}}))
        args = ["--config", str(tmp_path / "bad.yaml")]
    with pytest.raises(SystemExit) as exc:
        main(["fit", *args, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown preset 'gdn/huge'" in err and "mamba2-hybrid" in err and "125m" in err


SECTION = {"preset": "gdn/small", "config": {"n_layers": 2, "mixers": {"gdn": {"conv_size": 0}}}}


def preset_args(tmp_path, where: str, section: dict) -> list[str] | dict:
    """A model section given as ``--model FILE``, an inline ``--config``, or an object."""
    if where == "model file":
        (tmp_path / "model.yaml").write_text(yaml.safe_dump(section))
        return ["--model", str(tmp_path / "model.yaml"), *TINY_DATA]
    if where == "inline config":
        return ["--config", json.dumps({"model": section}), *TINY_DATA]
    return {"model": section, "data": {"max_bytes": 150000, "seq_len": 32, "batch_size": 4}}


@pytest.mark.parametrize("where", ["model file", "inline config", "object"])
def test_preset_wherever_a_model_section_is_read(tmp_path, monkeypatch, where):
    # read by the parser mode's loader (a file, an inline config) or, as an object
    # (LightningCLI's args={...}), by PostformerCLI.parse_arguments
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cfg = PostformerCLI(args=preset_args(tmp_path, where, SECTION), run=False).model.config
    assert (cfg.d_model, cfg.n_layers, cfg.pattern) == (256, 2, ["gdn"])
    assert cfg.mixers == {"gdn": {"n_heads": 3, "head_dim": 64, "conv_size": 0}}


@pytest.mark.parametrize("where", ["model file", "inline config", "object"])
def test_unknown_preset_is_one_line_wherever_given(tmp_path, monkeypatch, capsys, where):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        PostformerCLI(args=preset_args(tmp_path, where, {"preset": "gdn/huge"}), run=False)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "error: model.preset: unknown preset 'gdn/huge'" in err and "125m" in err


def test_print_config_of_a_preset_is_yaml_with_its_fields(tmp_path, capsys):
    """The parser mode has no dumper of its own: --print_config (as config.yaml) is yaml."""
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump({"model": SECTION}))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(path), "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("# lightning.pytorch==")
    model = yaml.safe_load(out)["model"]
    assert "preset" not in model
    assert (model["config"]["d_model"], model["config"]["n_layers"]) == (256, 2)
    assert model["config"]["mixers"] == {"gdn": {"n_heads": 3, "head_dim": 64, "conv_size": 0}}


# -- fit --help-short ---------------------------------------------------------------------


def test_help_short_lists_the_projects_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help-short"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) < 120
    flags = {ln.split()[0] for ln in lines if ln.startswith("  --")}
    for flag in ("--model.lr", "--model.preset", "--model.schedule", "--model.config.d_model",
                 "--data.seq_len", "--data.tokenizer", "--checkpoint.every_n_train_steps",
                 "--trainer.max_steps", "--config"):
        assert flag in flags, flag
    assert "--trainer.gradient_clip_val" not in flags  # Lightning's: in --help only
    assert "`postformer fit --help` gives the full Lightning help" in out
    assert "--model.lr float = 0.003" in out and "--checkpoint.every_n_train_steps int | None = 500" in out


def test_full_help_still_there(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--trainer.gradient_clip_val", "--model.preset", "--help-short", "--data.help"):
        assert flag in out, flag


def help_short(capsys, subcommand: str) -> dict[str, str]:
    """``postformer SUBCOMMAND --help-short``: each option's line by flag."""
    with pytest.raises(SystemExit) as exc:
        main([subcommand, "--help-short"])
    assert exc.value.code == 0
    return {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  --")}


def test_help_short_reads_signatures_docstrings_and_parser_defaults(capsys):
    lines = help_short(capsys, "fit")
    assert list(lines)[:2] == ["--model.preset", "--model.lr"]
    assert lines["--model.config.d_model"].split() == ["--model.config.d_model", "int", "=", "256",
                                                      "residual", "stream", "width"]
    assert "--model.config" not in lines  # its fields have their own section
    assert lines["--data.seq_len"].startswith("  --data.seq_len int = 256 ")
    # the defaults PostformerCLI sets, not the signatures'
    assert "--checkpoint.save_top_k int = 0 " in lines["--checkpoint.save_top_k"]
    assert "--seed_everything bool | int = 0 " in lines["--seed_everything"]
    # Lightning's docstrings: ModelCheckpoint's, Trainer's and the subcommand method's
    assert lines["--checkpoint.dirpath"].endswith(" Directory to save the model file")
    assert lines["--trainer.precision"].startswith("  --trainer.precision {64,32,16} | ")
    assert "Path/URL of the checkpoint" in lines["--ckpt_path"]
    assert '"best"' in help_short(capsys, "validate")["--ckpt_path"]
