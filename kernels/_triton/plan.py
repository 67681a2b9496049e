"""Host-side chunk tables shared by the chunked Triton ops (gla, delta_rule), the packed
offsets every Triton launcher starts from (``packed_offsets``) and the chunk-local cumulative sum
of the gates, the first forward phase of both families (``chunk_cumsum``).

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

    @functools.cached_property
    def aligned(self) -> bool:
        """Every chunk is full (every sequence's length a multiple of ``chunk``): the chunk layout
        ``[n_chunks * chunk]`` is then the packed row layout itself."""
        return len(self.seq_of_row) == self.n_chunks * self.chunk

    @functools.cached_property
    def row_slot(self) -> torch.Tensor:
        """``[rows]``: the position of every packed row in the chunk layout ``[n_chunks * chunk]``
        (``chunk index * chunk + offset in the chunk``); gathers a chunk-layout tensor back into
        rows."""
        rows, valid = self.chunk_rows
        slots = torch.arange(self.n_chunks * self.chunk, device=rows.device).view(self.n_chunks, self.chunk)
        return slots[valid]  # chunks are in row order and cover every row once


def chunk_cumsum(g: torch.Tensor, plan: ChunkPlan, layout: str = "rows") -> torch.Tensor:
    """The chunk-local cumulative sum of the log gates, ``G_i = g_1 + .. + g_i`` from each chunk's
    first row (chunks never cross a sequence), in fp32: the first forward phase of gla and
    delta_rule.

    g: packed gates ``[rows, H]`` (scalar) or ``[rows, H, K]`` (per key). ``layout="rows"``
    returns G in g's row layout (``[rows, H(, K)]``, gla's kernels); ``"chunks"`` in the chunk
    layout ``[n_chunks * chunk, H(, K)]`` (delta_rule's), where a padded row past a chunk's end
    adds 0 and so repeats the chunk's last G. A memory-bound elementwise pass, in PyTorch: a
    reshape and a cumsum when every chunk is full, else a gather into chunks first (and back)."""
    if layout not in ("rows", "chunks"):
        raise ValueError(f"layout={layout!r} is not one of ('rows', 'chunks')")
    tail = g.shape[1:]
    g = g.float()
    if plan.aligned:
        return g.reshape(plan.n_chunks, plan.chunk, *tail).cumsum(1).reshape(g.shape).contiguous()
    rows, valid = plan.chunk_rows
    valid = valid.view(*valid.shape, *(1,) * len(tail))
    G = torch.where(valid, g[rows], 0.0).cumsum(1).reshape(-1, *tail)  # [n_chunks * chunk, H(, K)]
    return (G[plan.row_slot] if layout == "rows" else G).contiguous()


@functools.lru_cache(maxsize=64)
def chunk_plan(offsets: tuple[int, ...], device: torch.device, chunk: int = 64) -> ChunkPlan:
    """Plans are cached by shape: a decoding loop (T=1 every step) builds its tables once instead
    of copying small tensors to the device per call."""
    return ChunkPlan(list(offsets), device, chunk)
