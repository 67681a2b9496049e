"""`postformer eval` (train/evaluate.py) on a tiny random export with the local lm-eval tasks of
tests/train/data/lm_eval_task (multiple choice, rolling log-likelihood, generation): what
lm-eval reports is checked against the model's own forward, computed here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing here may download
pytest.importorskip("lm_eval")

from test_hf import tiny_model, write_export  # noqa: E402  (tests/train is on pythonpath)

from postformer.cli import main as cli_main  # noqa: E402
from postformer.train import evaluate  # noqa: E402
from postformer.train.tokenizer import ByteTokenizer  # noqa: E402

TASKS = Path(__file__).parent / "data" / "lm_eval_task"
DOCS = [json.loads(line) for line in (TASKS / "docs.jsonl").read_text().splitlines() if line.strip()]
ALL = "postformer_tiny_mc,postformer_tiny_ppl,postformer_tiny_gen"


def logprob(model, context: list[int], continuation: list[int]) -> float:
    """Sum of log-softmax of the model's forward over the continuation's tokens."""
    tokens = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens[:, :-1]), dim=-1)[0]
    positions = torch.arange(len(context) - 1, tokens.shape[1] - 1)
    return logp[positions, torch.tensor(continuation)].sum().item()


def greedy_until(model, prompt: str, stop: str, max_new: int) -> str:
    """Greedy bytes by full recompute, stopped at ``stop``, NUL (end of text) or ``max_new``."""
    ids, new = list(prompt.encode()), []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(torch.tensor([ids + new]))[0, -1].argmax())
            if token == 0:
                break
            new.append(token)
            if stop in bytes(new).decode("utf-8", "replace"):
                break
    return bytes(new).decode("utf-8", "replace").split(stop)[0]


@pytest.fixture
def export(tmp_path) -> tuple[Path, torch.nn.Module]:
    model = tiny_model()
    return write_export(model, tmp_path / "export"), model


def test_eval_local_tasks_match_the_model(export, capsys):
    folder, model = export
    rc = cli_main(["eval", str(folder), "--tasks", ALL, "--include_path", str(TASKS),
                   "--limit", "3", "--batch_size", "2", "--log_samples"])
    assert rc == 0
    out = folder / "eval" / f"{ALL}.json"
    assert str(out) in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert set(record["results"]) == set(ALL.split(","))
    assert record["source"] == "export" and record["tokenizer"] == "bytes"

    # multiple choice: every choice's log-likelihood, and acc from them
    for sample in record["samples"]["postformer_tiny_mc"]:
        doc = DOCS[sample["doc_id"]]
        scores = [resp[0][0] for resp in sample["resps"]]
        expected = [logprob(model, list(doc["question"].encode()), list(c.encode())) for c in doc["choices"]]
        assert scores == pytest.approx(expected, abs=1e-4)
        assert sample["acc"] == float(max(range(len(expected)), key=expected.__getitem__) == doc["answer"])
    # rolling: the whole text after the end-of-text token
    for sample in record["samples"]["postformer_tiny_ppl"]:
        text = list(DOCS[sample["doc_id"]]["text"].encode())
        assert sample["resps"][0][0] == pytest.approx(logprob(model, [0], text), abs=1e-4)
    # generation: greedy with the recurrent cache = greedy by full recompute
    for sample in record["samples"]["postformer_tiny_gen"]:
        doc = DOCS[sample["doc_id"]]
        assert sample["resps"][0][0] == greedy_until(model, doc["prompt"], "\n", 6)


def test_loglikelihood_request_and_batching(export):
    """One request through lm-eval's Instance, and batch sizes that pad agree with batch 1."""
    from lm_eval.api.instance import Instance

    folder, model = export
    lm = evaluate.PostformerLM(pretrained=str(folder), batch_size=1)
    req = Instance("loglikelihood", doc={}, arguments=("The sky is ", "blue"), idx=0)
    (score, greedy), = lm.loglikelihood([req])
    # the context's trailing space joins the continuation, as in lm-eval's own models
    assert score == pytest.approx(logprob(model, list(b"The sky is"), list(b" blue")), abs=1e-5)
    assert isinstance(greedy, bool)
    pairs = [(list(b"ab"), list(b"cde")), ([], list(b"x")), (list(b"a longer context"), list(b"!")),
             (list(b"q"), [])]
    ones = lm.score(pairs)
    lm.batch_size = 3
    assert [s for s, _ in lm.score(pairs)] == pytest.approx([s for s, _ in ones], abs=1e-5)
    assert ones[1][0] == pytest.approx(logprob(model, [0], list(b"x")), abs=1e-5)
    assert ones[3] == (0.0, True)
    lm.max_length = 4  # left truncation: only the last 4 inputs are seen
    truncated = lm.score([(list(b"a longer context"), list(b"!"))])[0][0]
    assert truncated == pytest.approx(logprob(model, list(b"text"), list(b"!")), abs=1e-5)


def test_registered_with_lm_eval(export):
    from lm_eval.api.registry import get_model

    folder, _ = export
    cls = get_model("postformer")
    assert cls is evaluate.PostformerLM
    lm = cls.create_from_arg_string(f"pretrained={folder},max_length=64", {"batch_size": 2})
    assert lm.max_length == 64 and lm.batch_size == 2 and isinstance(lm.tok, ByteTokenizer)


def test_out_and_default_paths(export, tmp_path):
    from postformer.train.export import Source

    folder, _ = export
    target = tmp_path / "results" / "mc.json"
    evaluate.eval_main([str(folder), "--tasks", "postformer_tiny_mc", "--include_path", str(TASKS),
                        "--limit", "2", "--out", str(target)])
    assert json.loads(target.read_text())["results"]["postformer_tiny_mc"]["sample_len"] == 2
    assert not (folder / "eval").exists()
    ckpt = Source("checkpoint", tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert evaluate.default_out(ckpt, ["a", "b"], 120) == tmp_path / "run" / "eval" / "a,b-step120.json"


@pytest.mark.parametrize("case", ["missing", "unknown"])
def test_errors_are_one_line_exit_2(export, tmp_path, capsys, case):
    folder, _ = export
    if case == "missing":
        argv = [str(tmp_path / "nope"), "--tasks", "postformer_tiny_mc"]
    else:
        argv = [str(folder), "--tasks", "postformer_tiny_mc,no_such_task_xyz", "--include_path", str(TASKS)]
    with pytest.raises(SystemExit) as exc:
        evaluate.eval_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("postformer eval: error:")
    assert ("nope" in err[0]) if case == "missing" else ("no_such_task_xyz" in err[0])
