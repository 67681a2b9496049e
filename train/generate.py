"""``postformer generate``: sample text from a checkpoint or an export, streamed as it comes.

    postformer generate --ckpt RUN/checkpoints/last.ckpt --prompt "def main(" \\
        [--max_new_tokens 256] [--temperature 1.0] [--top_k K] [--top_p P] [--seed S]
    postformer generate EXPORT_DIR --prompt "..."        (or --model EXPORT_DIR, or a RUN folder)

The prompt is prefilled with the parallel form, then every new token is one recurrent step
through the model's cache (``LanguageModel.stream``; nothing is recomputed), sampled by
``postformer.arch.model.sample_next``. The text goes to stdout as soon as it decodes
(``StreamDecoder``: a character split across byte tokens waits for its last byte); a line on
stderr says what was loaded, another how many tokens came and why it stopped (the
tokenizer's end-of-text id, unless ``--ignore_eos``, or ``--max_new_tokens``). An empty
prompt starts from the end-of-text token, as a document does in training.
"""

from __future__ import annotations

import codecs
import os
import sys
import time
from collections.abc import Sequence
from typing import IO

import torch

from .export import OneLineParser, fail, load_model_and_tokenizer
from .tokenizer import ByteTokenizer, Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class StreamDecoder:
    """Token ids in, text out as soon as it is complete: ``push(id)`` returns the text that
    became final (often ``""``), ``flush()`` the rest at the end. Joined, the pieces equal
    ``tokenizer.decode(ids)``.

    When every token stands for exact bytes (the byte tokenizer; a byte-level BPE, through
    ``id_to_bytes``) the bytes go through an incremental UTF-8 decoder, so a character split
    across tokens is held until its last byte (invalid bytes become U+FFFD, as ``decode``
    makes them). Otherwise the ids since the last complete piece are decoded again at each
    step, and text is released once it does not end in U+FFFD (an unfinished character).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._bytes = self._byte_table(tokenizer)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._prefix = self._read = 0  # the ids decoded for context / already released

    @staticmethod
    def _byte_table(tokenizer: Tokenizer) -> list[bytes] | None:
        if isinstance(tokenizer, ByteTokenizer):
            return [bytes([i]) for i in range(256)]
        id_to_bytes = getattr(tokenizer, "id_to_bytes", None)
        if id_to_bytes is None:
            return None
        table = [id_to_bytes(i) for i in range(tokenizer.vocab_size)]
        return None if any(b is None for b in table) else table

    def push(self, token_id: int) -> str:
        if self._bytes is not None:
            return self._utf8.decode(self._bytes[token_id])
        self._ids.append(int(token_id))
        before = self.tokenizer.decode(self._ids[self._prefix:self._read])
        text = self.tokenizer.decode(self._ids[self._prefix:])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(before):]
        return ""

    def flush(self) -> str:
        if self._bytes is not None:
            return self._utf8.decode(b"", final=True)
        before = self.tokenizer.decode(self._ids[self._prefix:self._read])
        text = self.tokenizer.decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return text[len(before):]


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def generate_text(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = True,
    out: IO[str] | None = None,
) -> tuple[list[int], str]:
    """Continue ``prompt`` with ``model`` (eval mode, on its device), writing each piece of
    text to ``out`` (flushed) as soon as it decodes. Returns the new ids (without the
    end-of-text id that stopped it) and why it stopped (``"eos"`` or ``"max_new_tokens"``)."""
    ids = [int(i) for i in tokenizer.encode(prompt)] or [int(tokenizer.eos_id)]
    device = next(model.parameters()).device
    tokens = torch.tensor([ids], dtype=torch.long, device=device)
    decoder = StreamDecoder(tokenizer)
    new: list[int] = []
    stopped = "max_new_tokens"
    steps = model.stream(tokens, max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, generator=generator)
    for token in steps:
        i = int(token)
        if stop_at_eos and i == tokenizer.eos_id:
            stopped = "eos"
            break
        new.append(i)
        piece = decoder.push(i)
        if piece and out is not None:
            out.write(piece)
            out.flush()
    piece = decoder.flush()
    if piece and out is not None:
        out.write(piece)
        out.flush()
    return new, stopped


def generate_main(argv: Sequence[str]) -> None:
    """``postformer generate [PATH] [--ckpt CKPT | --model DIR] --prompt TEXT [...]``."""
    prog = "postformer generate"
    parser = OneLineParser(
        prog=prog,
        description="Sample text from a checkpoint or an export folder with the recurrent "
                    "state, streamed to stdout as it is produced, with the run's tokenizer.")
    parser.add_argument("path", nargs="?", help="a checkpoint, a run folder (its "
                        "checkpoints/last.ckpt) or an export folder (with config.json)")
    parser.add_argument("--ckpt", help="a checkpoint of `postformer fit`")
    parser.add_argument("--model", help="an export folder (`postformer export`)")
    parser.add_argument("--prompt", default="", help="the text to continue (default: empty, "
                        "which starts from the end-of-text token)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy (default 1.0)")
    parser.add_argument("--top_k", type=int, help="sample among the k most likely tokens")
    parser.add_argument("--top_p", type=float, help="sample in the nucleus of mass p")
    parser.add_argument("--seed", type=int, help="seed of the sampler (default: fresh randomness)")
    parser.add_argument("--ignore_eos", action="store_true",
                        help="do not stop at the tokenizer's end-of-text token")
    parser.add_argument("--tokenizer", help="the tokenizer spec (bytes, a tokenizer.json, a hub "
                        "name); default: the one the run's config.yaml or the export names")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="the model's dtype (default float32)")
    args = parser.parse_args(list(argv))

    given = [(k, v) for k, v in (("PATH", args.path), ("--ckpt", args.ckpt), ("--model", args.model))
             if v is not None]
    if len(given) != 1:
        fail(prog, "give exactly one of PATH, --ckpt CKPT, --model DIR"
             + (f" (got {', '.join(k for k, _ in given)})" if given else ""))
    if args.max_new_tokens < 0:
        fail(prog, f"--max_new_tokens must be >= 0, got {args.max_new_tokens}")
    if args.temperature < 0:
        fail(prog, f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        fail(prog, f"--top_k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        fail(prog, f"--top_p must be in (0, 1], got {args.top_p}")
    try:
        device = pick_device(args.device)
        loaded = load_model_and_tokenizer(given[0][1], args.tokenizer)
    except (OSError, ValueError, RuntimeError) as err:
        fail(prog, str(err))
    if given[0][0] == "--model" and loaded.source.kind != "export":
        fail(prog, f"--model {args.model}: not an export folder (no config.json); use --ckpt")
    if given[0][0] == "--ckpt" and loaded.source.kind != "checkpoint":
        fail(prog, f"--ckpt {args.ckpt}: an export folder; use --model")
    model = loaded.model.to(device=device, dtype=DTYPES[args.dtype]).eval()
    generator = torch.Generator(device=device)
    if args.seed is None:
        generator.seed()
    else:
        generator.manual_seed(args.seed)
    step = f" (step {loaded.step})" if loaded.step is not None else ""
    print(f"{prog}: {loaded.source.path}{step} on {device} ({args.dtype}), tokenizer "
          f"{loaded.tokenizer.name!r} from {loaded.tokenizer_from}", file=sys.stderr)

    out = sys.stdout
    start = time.perf_counter()
    try:
        new, stopped = generate_text(
            model, loaded.tokenizer, args.prompt, args.max_new_tokens,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            generator=generator, stop_at_eos=not args.ignore_eos, out=out)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    seconds = time.perf_counter() - start
    if out.isatty():
        out.write("\n")
        out.flush()
    why = "the end-of-text token" if stopped == "eos" else "--max_new_tokens"
    print(f"{prog}: {len(new)} tokens in {seconds:.2f} s ({len(new) / max(seconds, 1e-9):.1f} "
          f"tokens/s), stopped at {why}", file=sys.stderr)
