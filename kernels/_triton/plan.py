"""Host-side chunk tables shared by the chunked Triton ops (gla, delta_rule), and the packed
offsets every Triton launcher starts from (``packed_offsets``).

Every call is flattened to packed sequences (``[B, T, H, D]`` -> ``[B*T, H, D]`` with offsets
``0, T, 2T, ...``; varlen calls pass their ``cu_seqlens``) and each sequence is cut into chunks of
``chunk`` rows starting at its first row, so no chunk crosses a sequence boundary.
"""

from __future__ import annotations

import functools

import torch


def packed_offsets(cu_seqlens: torch.Tensor | None, B: int, T: int) -> list[int]:
    """A call's sequences as offsets into its packed rows ``[B*T]``: ``cu_seqlens`` as given, or
    a batch of B sequences of T steps, ``0, T, 2T, ..., B*T``."""
    return [b * T for b in range(B + 1)] if cu_seqlens is None else cu_seqlens.tolist()


class ChunkPlan:
    """Which rows every chunk covers, per sequence.

    Attributes (int64 tensors on ``device`` unless noted):
        cu: the offsets ``[n_seqs + 1]``.
        coff: each sequence's first global chunk ``[n_seqs + 1]`` (chunks of sequence s are
            ``coff[s] .. coff[s+1] - 1``).
        cstart, cend: each chunk's first and one-past-last row ``[n_chunks]`` (``[1]`` zeros when
            there are no chunks, so kernels always get a valid pointer).
        n_seqs, n_chunks, max_len (ints); last_rows, nonempty (lists): the last row and the index
            of every non-empty sequence; seq_of_row ``[rows]``: the sequence of every row.
    """

    def __init__(self, offsets: list[int], device: torch.device, chunk: int = 64) -> None:
        starts, ends, first = [], [], [0]
        for bos, eos in zip(offsets[:-1], offsets[1:]):
            for s in range(bos, eos, chunk):
                starts.append(s)
                ends.append(min(s + chunk, eos))
            first.append(len(starts))
        self.chunk = chunk
        self.n_seqs = len(offsets) - 1
        self.n_chunks = len(starts)
        self.max_len = max((b - a for a, b in zip(offsets[:-1], offsets[1:])), default=0)
        self.last_rows = [eos - 1 for bos, eos in zip(offsets[:-1], offsets[1:]) if eos > bos]
        self.nonempty = [i for i, (bos, eos) in enumerate(zip(offsets[:-1], offsets[1:])) if eos > bos]
        i64 = dict(device=device, dtype=torch.int64)
        self.cu = torch.tensor(offsets, **i64)
        self.coff = torch.tensor(first, **i64)
        self.cstart = torch.tensor(starts or [0], **i64)
        self.cend = torch.tensor(ends or [0], **i64)
        lens = torch.tensor([b - a for a, b in zip(offsets[:-1], offsets[1:])], **i64)
        self.seq_of_row = torch.repeat_interleave(torch.arange(self.n_seqs, **i64), lens)

    @functools.cached_property
    def chunk_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, valid)``, both ``[n_chunks, chunk]``: the packed row of every position of every
        chunk (clamped into range past a chunk's end) and whether it is a real row. Gathers a
        per-row tensor into the chunk layout and scatters it back."""
        r = torch.arange(self.chunk, device=self.cstart.device)
        rows = self.cstart[: self.n_chunks, None] + r
        valid = rows < self.cend[: self.n_chunks, None]
        return torch.where(valid, rows, self.cstart[: self.n_chunks, None]), valid


@functools.lru_cache(maxsize=64)
def chunk_plan(offsets: tuple[int, ...], device: torch.device, chunk: int = 64) -> ChunkPlan:
    """Plans are cached by shape: a decoding loop (T=1 every step) builds its tables once instead
    of copying small tensors to the device per call."""
    return ChunkPlan(list(offsets), device, chunk)
