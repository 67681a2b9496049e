"""The language model: token embedding, pre-norm residual blocks, final norm, LM head.

    x = embed(tokens)                                  (B, T, d_model)
    for each block:  x = x + mixer(norm(x));  x = x + mlp(norm(x))   (mlp if the block has one)
    logits = head(norm(x))                             (B, T, vocab)

Decoding: ``new_cache(B)`` makes one state per layer (and one per stateful MLP: RWKV-7's channel
mix carries the previous token); ``forward(tokens, cache)`` consumes the
tokens as the continuation of what the cache has seen (a prompt of any length on an empty
cache is a prefill with the parallel form; one token is a recurrent step). ``stream`` yields
the new tokens one step at a time, ``generate`` collects them; ``sample_next`` is their one
sampling step (greedy, temperature, top-k, top-p).

Saving: ``save_pretrained(DIR)`` writes ``DIR/config.json`` (the ``ModelConfig`` under
``"model"``) and ``DIR/model.safetensors`` (the state dict, float32); ``from_pretrained(DIR)``
reads them back. ``postformer export`` adds the run's tokenizer beside them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .layers import RMSNorm, RWKV7ChannelMix, SwiGLU
from .registry import get_mixer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One sampling step: logits ``[B, vocab]`` -> tokens ``[B, 1]``.

    ``temperature <= 0`` is greedy argmax (``top_k``, ``top_p`` and ``generator`` unused).
    Otherwise sample from ``softmax(logits / temperature)`` restricted to the ``top_k`` most
    likely tokens (ties with the k-th kept) and then to the nucleus: the most likely tokens
    whose probabilities, in descending order, first reach ``top_p`` (the most likely token
    always stays). ``generator`` makes the draw reproducible (on the logits' device).
    """
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the mass before a token already reaches top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def _atomic_replace(path: Path, write: Any) -> None:
    """``write(tmp)`` writes a temporary file beside ``path``, then it is renamed to ``path``:
    a reader sees the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Block(nn.Module):
    """Pre-norm residual block ``[B, T, d_model] -> [B, T, d_model]`` around one mixer; its MLP
    (where it has one) is of ``cfg.mlp_kind``: SwiGLU, or RWKV-7's channel mix (which has a
    decoding state of its own, ``new_mlp_cache``)."""

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
            if cfg.mlp_kind == "rwkv7":
                self.mlp = RWKV7ChannelMix(cfg.d_model, cfg.ff_dim, layer_idx=layer_idx, n_layers=cfg.n_layers)
            else:
                self.mlp = SwiGLU(cfg.d_model, cfg.ff_dim)
        else:
            self.mlp_norm = self.mlp = None

    def new_mlp_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> Any:
        """The MLP's decoding state (RWKV-7's channel mix: the previous token), None if it has none."""
        if isinstance(self.mlp, RWKV7ChannelMix):
            return self.mlp.new_cache(batch_size, device=device, dtype=dtype)
        return None

    def forward(self, x: torch.Tensor, cache: Any = None, mlp_cache: Any = None) -> torch.Tensor:
        """``cache``: the mixer's decoding state; ``mlp_cache``: the MLP's (``new_mlp_cache``),
        None without one."""
        x = x + self.mixer(self.mixer_norm(x), cache)
        if self.mlp is not None:
            h = self.mlp_norm(x)
            x = x + (self.mlp(h) if mlp_cache is None else self.mlp(h, mlp_cache))
        return x


class ModelCache:
    """Decoding state of a whole model: one mixer cache per layer (``layers``), for ``batch_size``
    sequences (each mixer's cache counts the positions it has seen where it needs them:
    attention, RoPE), and per layer the MLP's state (``mlp_layers``: None for a stateless MLP or
    none; all None when not given)."""

    def __init__(self, layers: list[Any], batch_size: int, mlp_layers: list[Any] | None = None) -> None:
        self.layers = layers
        self.batch_size = batch_size
        self.mlp_layers = [None] * len(layers) if mlp_layers is None else mlp_layers


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
        """normal(0, ``cfg.init_scale``) (``init_std``, or ``sqrt(2 / (5 d_model))`` when it is
        None) for linears and the embedding, zero biases; the residual output
        projections (each mixer's and MLP's ``out_proj``) get ``init_std / sqrt(2 * n_layers)``
        (GPT-2), so the residual stream's variance does not grow with depth. Norms, convs and
        the mixers' own parameters (A_log, dt_bias, D) keep the init their modules gave them,
        and so does any linear a mixer marks ``_keep_init = True`` (Mamba's ``dt_proj``, whose
        bias encodes the initial time steps).
        """
        std = self.cfg.init_scale
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
        mlp_layers = [block.new_mlp_cache(batch_size, device=device, dtype=dtype) for block in self.blocks]
        return ModelCache(layers, batch_size, mlp_layers)

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
            x = block(x, None, None) if cache is None else block(x, cache.layers[i], cache.mlp_layers[i])
        return self.lm_head(self.norm(x)).float()  # (B, T, vocab)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
    ) -> torch.Tensor:
        """Continue ``prompt [B, T]`` (T >= 1) by ``max_new_tokens``; returns ``[B, T + max_new_tokens]``.

        The prompt is prefilled with the parallel form, then each new token is one recurrent
        step through the cache. ``temperature=0`` is greedy argmax; otherwise sample from
        ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and
        the ``top_p`` nucleus (``sample_next``). Runs in eval mode and restores the previous
        mode afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            steps = self.stream(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, generator=generator)
            return torch.cat([prompt, *steps], dim=1)
        finally:
            self.train(was_training)

    def stream(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the ``max_new_tokens`` tokens that continue ``prompt [B, T]`` (T >= 1), one
        ``[B, 1]`` tensor per step, each as soon as it is sampled: the prompt is prefilled with
        the parallel form, each new token is one recurrent step through the cache, and the
        next step runs only when the next token is asked for (stop early by not asking).
        Sampling as ``generate``; the model's mode is left as it is (use eval mode).
        """
        if prompt.dim() != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt has shape {list(prompt.shape)}, expected [B, T] with T >= 1")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        return self._stream(prompt, max_new_tokens, temperature, top_k, top_p, generator)

    @torch.no_grad()
    def _stream(
        self, prompt: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
        top_p: float | None, generator: torch.Generator | None,
    ) -> Iterator[torch.Tensor]:
        if max_new_tokens == 0:
            return
        B, T = prompt.shape
        cache = self.new_cache(B, max_seq_len=T + max_new_tokens)
        logits = self(prompt, cache)[:, -1]  # (B, vocab)
        for i in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
            yield token
            if i + 1 < max_new_tokens:
                logits = self(token, cache)[:, -1]

    # ---- saving and loading ----------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``DIR/model.safetensors`` (the state dict; a tied embedding/head matrix
        stored once) and then ``DIR/config.json``::

            {"model_type": "postformer", "architectures": ["PostformerForCausalLM"],
             "postformer_version": ..., "vocab_size": ..., "model": {ModelConfig's fields},
             **extra, "torch_dtype": "float32"}

        each file atomically (a temporary name in the folder, then a rename), config.json last,
        so a folder with a config.json is whole. ``extra`` adds keys (``postformer export``:
        the tokenizer and ``eos_token_id``); it may not replace ``"model"``. The weights are
        saved in the parameters' dtype, which ``torch_dtype`` records (float32 unless the model
        was cast). Creates the folder; returns it.
        """
        from safetensors.torch import save_model

        from postformer import __version__

        extra = dict(extra or {})
        if "model" in extra:
            raise ValueError("save_pretrained: extra may not replace the 'model' entry (the ModelConfig)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        dtype = str(self.embedding.weight.dtype).removeprefix("torch.")
        config = {
            "model_type": "postformer", "architectures": ["PostformerForCausalLM"],
            "postformer_version": __version__, "vocab_size": self.cfg.vocab_size,
            "model": dataclasses.asdict(self.cfg), **extra,
        }
        config.setdefault("torch_dtype", dtype)
        _atomic_replace(directory / WEIGHTS_FILE,
                        lambda tmp: save_model(self, str(tmp), metadata={"format": "pt"}))
        text = json.dumps(config, indent=2) + "\n"
        _atomic_replace(directory / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: torch.device | str | None = None
    ) -> LanguageModel:
        """The model ``save_pretrained`` (or ``postformer export``) wrote to ``directory``, in
        float32 on ``device`` (CPU by default), in eval mode. Raises FileNotFoundError for a
        missing folder or file, ValueError for a config.json without a usable ``"model"``
        entry or weights that do not fit it; each message names the file."""
        from safetensors.torch import load_model

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such folder (from_pretrained reads a folder "
                                    "written by save_pretrained or `postformer export`)")
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (from_pretrained reads a folder "
                                        "written by save_pretrained or `postformer export`)")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_path} is not valid JSON ({err})") from None
        fields = config.get("model") if isinstance(config, dict) else None
        if not isinstance(fields, dict):
            raise ValueError(f"{config_path} has no 'model' entry (the ModelConfig's fields); "
                             "it was not written by save_pretrained or `postformer export`")
        try:
            cfg = ModelConfig(**fields)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{config_path}: 'model' is not a valid ModelConfig ({err})") from None
        model = cls(cfg)
        try:
            load_model(model, str(weights_path), strict=True)
        except Exception as err:  # safetensors and load_state_dict raise several types
            first = (str(err).strip().splitlines() or [""])[0]
            raise ValueError(f"{weights_path} does not fit the model of {config_path} "
                             f"({type(err).__name__}: {first})") from None
        if device is not None:
            model.to(device)
        return model.eval()
