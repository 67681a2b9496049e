"""``postformer eval PATH --tasks a,b``: lm-evaluation-harness tasks on a trained model.

    postformer eval PATH --tasks hellaswag,arc_easy [--limit N] [--batch_size N]
                    [--device cpu] [--include_path DIR] [--num_fewshot K] [--max_length N]
                    [--tokenizer SPEC] [--log_samples] [--out FILE]

PATH is an export folder (``postformer export``), a checkpoint or a run folder (its
``checkpoints/last.ckpt``); the model and its tokenizer are read as ``postformer generate``
reads them (``train.export.load_model_and_tokenizer``), no export needed. The tasks run
through lm-eval's Python API (``simple_evaluate``) on ``PostformerLM``, an lm-eval ``LM`` of
ours (registered as ``postformer``, so ``lm_eval --model postformer --model_args
pretrained=DIR`` works too): it scores with our ``LanguageModel`` and tokenizer directly, byte
level included, without transformers' model classes.

Results (lm-eval's ``results``, ``versions``, ``n-shot``, ``configs``, and what was evaluated)
go beside the run, atomically: ``DIR/eval/<tasks>.json`` for an export, ``RUN/eval/<tasks>
[-step<N>].json`` for a checkpoint, or ``--out FILE``; ``--log_samples`` adds every request
and its response. lm-eval's table is printed. ``--include_path DIR`` adds task YAMLs from a
folder (with it, the built-in task index, slow to build, is read only when a task is not
found there). Nothing is downloaded by this command; tasks whose data is not local need the
hub (``datasets``' cache or a network). A missing path or an unknown task: one line on
stderr, exit 2.

Scoring: a request's context and continuation are tokenised as lm-eval's own models do
(trailing whitespace of the context moves to the continuation; the continuation's tokens are
those of the whole minus those of the context) and, left-truncated to ``max_length + 1``
tokens, scored in one forward pass: the sum of ``log_softmax`` over the continuation's
tokens, and whether each was the argmax. An empty context is the end-of-text token.
Rolling log-likelihoods use lm-eval's disjoint windows of ``max_length`` tokens.
``generate_until`` decodes with the recurrent cache (greedy unless ``do_sample`` with a
temperature), stopping at the ``until`` strings, the end-of-text token or ``max_gen_toks``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F

PROG = "postformer eval"
DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_GEN_TOKS = 256


def _fail(message: str) -> NoReturn:
    first = (str(message).strip().splitlines() or [""])[0]
    print(f"{PROG}: error: {first}", file=sys.stderr)
    raise SystemExit(2)


def _import_lm_eval() -> Any:
    """lm_eval, imported after the ``kernels`` shadowing is undone (lm-eval imports
    transformers; see ``train.hf.unshadow_kernels``)."""
    try:
        from postformer.train.hf import unshadow_kernels  # noqa: F401  (runs on import)
    except ImportError:  # no transformers: lm-eval may still work without it
        pass
    import lm_eval

    return lm_eval


_import_lm_eval()

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402


@register_model("postformer")
class PostformerLM(LM):
    """lm-eval's ``LM`` over our ``LanguageModel`` and tokenizer.

    Either ``model`` and ``tokenizer`` objects, or ``pretrained`` (a path: export folder,
    checkpoint or run folder; ``tokenizer`` then an optional spec that overrides the one the
    path names), as ``--model_args pretrained=DIR`` gives it.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        pretrained: str | None = None,
        batch_size: int | str | None = 1,
        max_length: int | str | None = None,
        device: str | None = None,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if pretrained is not None:
            from postformer.train.export import load_model_and_tokenizer

            loaded = load_model_and_tokenizer(pretrained, tokenizer)
            model, tokenizer = loaded.model, loaded.tokenizer
        if model is None or tokenizer is None:
            raise ValueError("PostformerLM needs pretrained=PATH, or model and tokenizer")
        self._device = torch.device(device or "cpu")
        self.model = model.to(self._device).eval()
        self.tok = tokenizer
        # "auto" (lm-eval's --batch_size auto) is taken as 1: there is no memory probe here
        self.batch_size = int(batch_size) if str(batch_size or "1").isdigit() else 1
        self.max_length = int(max_length or DEFAULT_MAX_LENGTH)
        self.max_gen_toks = int(max_gen_toks)

    # -- tokens --------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eos_id)

    @property
    def tokenizer_name(self) -> str:
        return str(self.tok.name)

    def tok_encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tok.encode(text)]

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """As lm-eval's TemplateLM: the context's trailing whitespace joins the continuation,
        whose tokens are the whole's beyond the context's (so merges across the seam count)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        context_enc = self.tok_encode(context)
        return context_enc, whole[len(context_enc):]

    # -- scoring -------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """``(context tokens, continuation tokens)`` -> (sum of the continuation's log-probs,
        whether every continuation token was the argmax), batched by length."""
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        items = []
        for i, (context, continuation) in enumerate(pairs):
            if not continuation:
                results[i] = (0.0, True)
                continue
            if not context:
                context = [self.eot_token_id]
            inp = (context + continuation)[-(self.max_length + 1):][:-1]
            items.append((i, inp, continuation))
        items.sort(key=lambda it: -len(it[1]))  # longest first: padding stays small
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            width = len(batch[0][1])
            # right padding: a causal model's earlier positions never see it
            tokens = torch.full((len(batch), width), self.eot_token_id, dtype=torch.long)
            for row, (_, inp, _) in enumerate(batch):
                tokens[row, :len(inp)] = torch.tensor(inp, dtype=torch.long)
            logprobs = F.log_softmax(self.model(tokens.to(self._device)).float(), dim=-1).cpu()
            for row, (i, inp, continuation) in enumerate(batch):
                n = len(continuation)
                span = logprobs[row, len(inp) - n:len(inp)]  # (n, vocab): predicts continuation
                target = torch.tensor(continuation, dtype=torch.long)
                total = span.gather(-1, target[:, None]).sum().item()
                greedy = bool((span.argmax(-1) == target).all())
                results[i] = (total, greedy)
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args[:2]) for req in requests]
        out = self.score(pairs)
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in requests:
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(req.args[0]), prefix_token=self.eot_token_id,
                    max_seq_len=self.max_length, context_len=1)
            ]
            total = sum(lp for lp, _ in self.score(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            out.append(total)
        return out

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from postformer.arch.model import sample_next

        out = []
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1] if len(req.args) > 1 else {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
            if not gen_kwargs.pop("do_sample", False):
                temperature = 0.0
            ids = self.tok_encode(context) or [self.eot_token_id]
            ids = ids[-max(1, self.max_length - max_new):]
            cache = self.model.new_cache(1)
            logits = self.model(torch.tensor([ids], device=self._device), cache)[:, -1]
            new: list[int] = []
            text = ""
            for _ in range(max_new):
                token = int(sample_next(logits, temperature).item())
                if token == self.eot_token_id:
                    break
                new.append(token)
                text = self.tok_decode(new)
                if any(stop in text for stop in until):
                    break
                logits = self.model(torch.tensor([[token]], device=self._device), cache)[:, -1]
            for stop in until:  # cut at the first stop string
                text = text.split(stop)[0] if stop else text
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out


# ---- the command ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from postformer.train.export import OneLineParser

    p = OneLineParser(prog=PROG, description="Evaluate a checkpoint or an export with "
                      "lm-evaluation-harness tasks (results saved beside the run).")
    p.add_argument("path", help="an export folder, a checkpoint (.ckpt) or a run folder")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task or group names")
    p.add_argument("--limit", type=float, default=None,
                   help="examples per task (a fraction of the task below 1)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--include_path", default=None, help="a folder of extra task YAMLs")
    p.add_argument("--num_fewshot", type=int, default=None)
    p.add_argument("--max_length", type=int, default=DEFAULT_MAX_LENGTH,
                   help="tokens scored per forward pass (longer inputs are left-truncated)")
    p.add_argument("--tokenizer", default=None, help="override the tokenizer the path names")
    p.add_argument("--log_samples", action="store_true",
                   help="also save every request and the model's response")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results JSON (default: beside the run, in eval/)")
    return p


def task_manager(tasks: list[str], include_path: str | None) -> Any:
    """A TaskManager that knows ``tasks``: the ``include_path`` folder's alone when it holds them
    all (the built-in index takes seconds to build), else the built-in tasks plus it.
    ValueError naming the unknown tasks."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise ValueError(f"--include_path {include_path} is not a folder")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" (nor in {include_path})" if include_path else ""
        raise ValueError(f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{where}; "
                         "`lm_eval ls tasks` lists them")
    return manager


def default_out(source: Any, tasks: list[str], step: int | None) -> Path:
    """``DIR/eval/<tasks>.json`` (an export) or ``RUN/eval/<tasks>[-step<N>].json``."""
    from postformer.train.export import run_folder

    name = re.sub(r"[^A-Za-z0-9_.,-]+", "_", ",".join(tasks))[:150]
    if source.kind == "export":
        return source.path / "eval" / f"{name}.json"
    suffix = f"-step{step}" if step is not None else f"-{source.path.stem}"
    return run_folder(source.path) / "eval" / f"{name}{suffix}.json"


def evaluate(lm: PostformerLM, tasks: list[str], manager: Any, limit: float | None = None,
             num_fewshot: int | None = None, log_samples: bool = False, seed: int = 0) -> dict:
    """lm-eval's ``simple_evaluate`` on ``lm``; its result dict."""
    from lm_eval import simple_evaluate

    if limit is not None and limit >= 1:
        limit = int(limit)
    return simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        log_samples=log_samples, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )


def eval_main(argv: Sequence[str]) -> None:
    """``postformer eval PATH --tasks a,b ...``; see the module docstring."""
    args = _parser().parse_args(list(argv))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        _fail("--tasks names no task")
    from postformer.train.export import load_model_and_tokenizer

    try:
        loaded = load_model_and_tokenizer(args.path, args.tokenizer)
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    try:
        manager = task_manager(tasks, args.include_path)
    except ValueError as err:
        _fail(err)
    try:
        torch.device(args.device)
    except RuntimeError as err:
        _fail(f"--device {args.device}: {err}")
    lm = PostformerLM(loaded.model, loaded.tokenizer, batch_size=args.batch_size,
                      max_length=args.max_length, device=args.device)
    results = evaluate(lm, tasks, manager, args.limit, args.num_fewshot, args.log_samples, args.seed)
    if results is None:  # lm-eval returns None off rank 0
        return
    from lm_eval.utils import handle_non_serializable, make_table

    record = {
        "path": str(Path(args.path).resolve()),
        "source": loaded.source.kind,
        "step": loaded.step,
        "tokenizer": loaded.tokenizer.name,
        "tasks": tasks,
        "limit": args.limit,
        "num_fewshot": args.num_fewshot,
        "max_length": args.max_length,
        **{k: results[k] for k in ("results", "groups", "versions", "n-shot", "higher_is_better",
                                   "n-samples", "configs") if k in results},
    }
    if args.log_samples:
        record["samples"] = results.get("samples", {})
    out = Path(args.out) if args.out else default_out(loaded.source, tasks, loaded.step)
    from postformer.train.fileio import atomic_write

    atomic_write(out, json.dumps(record, indent=2, default=handle_non_serializable) + "\n")
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    print(f"results: {out}")
