"""The language model: token embedding, pre-norm residual blocks, final norm, LM head.

    x = embed(tokens)                                  (B, T, d_model)
    for each block:  x = x + mixer(norm(x));  x = x + mlp(norm(x))   (mlp if the block has one)
    logits = head(norm(x))                             (B, T, vocab)

Decoding: ``new_cache(B)`` makes one state per layer; ``forward(tokens, cache)`` consumes the
tokens as the continuation of what the cache has seen (a prompt of any length on an empty
cache is a prefill with the parallel form; one token is a recurrent step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .layers import RMSNorm, SwiGLU
from .registry import get_mixer


class Block(nn.Module):
    """Pre-norm residual block ``[B, T, d_model] -> [B, T, d_model]`` around one mixer."""

    def __init__(self, cfg: ModelConfig, mixer_name: str, layer_idx: int = 0) -> None:
        super().__init__()
        self.mixer_name = mixer_name
        self.mixer_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = get_mixer(mixer_name)(
            cfg.d_model, cfg.mixer_options(mixer_name), cfg.norm_eps,
            layer_idx=layer_idx, n_layers=cfg.n_layers,
        )
        if cfg.block_has_mlp(mixer_name):
            self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.mlp = SwiGLU(cfg.d_model, cfg.ff_dim)
        else:
            self.mlp_norm = self.mlp = None

    def forward(self, x: torch.Tensor, cache: Any = None) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x), cache)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x


class ModelCache:
    """Decoding state of a whole model: one mixer cache per layer, for ``batch_size`` sequences
    (each mixer's cache counts the positions it has seen where it needs them: attention, RoPE)."""

    def __init__(self, layers: list[Any], batch_size: int) -> None:
        self.layers = layers
        self.batch_size = batch_size


class LanguageModel(nn.Module):
    """A decoder-only LM built from a ``ModelConfig``: ``tokens [B, T] -> logits [B, T, vocab]``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, name, i) for i, name in enumerate(cfg.layer_mixers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.embedding.weight._no_weight_decay = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, init_std) for linears and the embedding, zero biases; the residual output
        projections (each mixer's and MLP's ``out_proj``) get ``init_std / sqrt(2 * n_layers)``
        (GPT-2), so the residual stream's variance does not grow with depth. Norms, convs and
        the mixers' own parameters (A_log, dt_bias, D) keep the init their modules gave them,
        and so does any linear a mixer marks ``_keep_init = True`` (Mamba's ``dt_proj``, whose
        bias encodes the initial time steps).
        """
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear) and not getattr(module, "_keep_init", False):
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.embedding.weight, 0.0, std)
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for block in self.blocks:
            for module in (getattr(block.mixer, "out_proj", None), getattr(block.mlp, "out_proj", None)):
                if module is not None:
                    nn.init.normal_(module.weight, 0.0, out_std)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Number of parameters; a tied embedding/head matrix is counted once.

        ``include_embeddings=False`` follows Kaplan et al. (2020): it drops the token
        embedding matrix and, when untied, the LM head matrix too (both are lookups into the
        vocabulary, not compute per token that scales with depth); the final norm stays in.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields shared ones once
        if not include_embeddings:
            n -= self.embedding.weight.numel()
            if self.lm_head.weight is not self.embedding.weight:
                n -= self.lm_head.weight.numel()
        return n

    def new_cache(
        self,
        batch_size: int,
        max_seq_len: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ModelCache:
        """An empty decoding cache for ``batch_size`` sequences, on the model's device and dtype
        unless given. ``max_seq_len`` preallocates attention's KV buffers (they grow otherwise).
        """
        ref = self.embedding.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        layers = [
            block.mixer.new_cache(batch_size, device=device, dtype=dtype, max_seq_len=max_seq_len)
            for block in self.blocks
        ]
        return ModelCache(layers, batch_size)

    def forward(self, tokens: torch.Tensor, cache: ModelCache | None = None) -> torch.Tensor:
        """tokens: ``[B, T]`` int -> logits ``[B, T, vocab]`` float32.

        With a cache, ``tokens`` continue the sequences it has seen (any ``T >= 1``) and the
        cache is updated in place.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens has shape {list(tokens.shape)}, expected [B, T]")
        if cache is not None and tokens.shape[0] != cache.batch_size:
            raise ValueError(f"cache was made for batch size {cache.batch_size}, tokens have {tokens.shape[0]}")
        x = self.embedding(tokens)  # (B, T, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])
        return self.lm_head(self.norm(x)).float()  # (B, T, vocab)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``prompt [B, T]`` (T >= 1) by ``max_new_tokens``; returns ``[B, T + max_new_tokens]``.

        The prompt is prefilled with the parallel form, then each new token is one recurrent
        step through the cache. ``temperature=0`` is greedy argmax; otherwise sample from
        ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens.
        Runs in eval mode and restores the previous mode afterwards.
        """
        if prompt.dim() != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt has shape {list(prompt.shape)}, expected [B, T] with T >= 1")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        was_training = self.training
        self.eval()
        try:
            B, T = prompt.shape
            cache = self.new_cache(B, max_seq_len=T + max_new_tokens)
            out = [prompt]
            logits = self(prompt, cache)[:, -1]  # (B, vocab)
            for i in range(max_new_tokens):
                token = self._sample(logits, temperature, top_k, generator)  # (B, 1)
                out.append(token)
                if i + 1 < max_new_tokens:
                    logits = self(token, cache)[:, -1]
            return torch.cat(out, dim=1)
        finally:
            self.train(was_training)

    @staticmethod
    def _sample(
        logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """logits ``[B, vocab]`` -> tokens ``[B, 1]``."""
        if temperature <= 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)
